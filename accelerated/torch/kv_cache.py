"""A key/value cache on torch: the projected keys and values of earlier positions, for decoding."""

from __future__ import annotations

import torch

from reference import kv_cache as reference

from .checks import check_tensor, describe


class KVCache(reference.KVCache):
    r"""The reference's cache (reference/kv_cache.py) holding torch tensors.

        self-attention:   K ← cat(K, K_new), V ← cat(V, V_new) along S          (B, Hkv, S, d)
        cross-attention:  K, V = project(memory) on the first call, reused afterwards
    Positions seen per layer (``seen``, ``length``), the cross-attention memory and the
    bookkeeping are the reference's; only concatenation and reordering touch tensors.
    """

    def append(self, module, keys, values):
        """Append new self-attention keys/values (B, Hkv, N, d); return all of them (B, Hkv, S + N, d)."""
        entry = self._entries.get(id(module))
        if entry is None:
            self._entries[id(module)] = [module, keys, values, keys.shape[-2], False]
            return keys, values
        self._check_kind(module, entry, cross=False)
        old = entry[1]
        if old.shape[:2] != keys.shape[:2] or old.shape[-1] != keys.shape[-1]:
            raise ValueError(
                f"cache holds keys of shape {tuple(old.shape)} (batch, kv heads, seq, head_dim) for this layer, "
                f"cannot append keys of shape {tuple(keys.shape)}: a cache serves one batch of one model"
            )
        entry[1] = torch.cat([old, keys], dim=-2)  # (B, Hkv, S + N, d)
        entry[2] = torch.cat([entry[2], values], dim=-2)  # (B, Hkv, S + N, d)
        entry[3] += keys.shape[-2]
        return entry[1], entry[2]

    def reorder(self, index) -> None:
        """Keep the batch rows ``index`` (an integer tensor (B',)) of every cached key and value."""
        for entry in self._entries.values():
            check_tensor("index", index, ndim=1, kind="iu")
            batch = entry[1].shape[0]
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= batch):
                raise ValueError(f"index must lie in [0, {batch}) (the cached batch rows), got {index.tolist()}")
            entry[1] = entry[1][index.to(entry[1].device)]  # (B', Hkv, S, d)
            entry[2] = entry[2][index.to(entry[2].device)]  # (B', Hkv, S, d)


def check_cache(cache):
    """cache must be None or a KVCache of this backend."""
    if cache is not None and not isinstance(cache, KVCache):
        raise TypeError(f"cache must be a KVCache (accelerated.torch's) or None, got {describe(cache)}")
    return cache
