"""A key/value cache on torch: the projected keys and values of earlier positions, for decoding."""

from __future__ import annotations

import torch

from reference import kv_cache as reference

from .checks import check_tensor


class KVCache(reference.KVCache):
    r"""The reference's cache (reference/kv_cache.py) holding torch tensors.

        self-attention:   K ← cat(K, K_new), V ← cat(V, V_new) along S          (B, Hkv, S, d)
        cross-attention:  K, V = project(memory) on the first call, reused afterwards
    Positions seen per layer (``seen``, ``length``), the cross-attention memory, appending and
    reordering are the reference's; only the three array operations below touch tensors.
    """

    @staticmethod
    def _concatenate(old, new):
        return torch.cat([old, new], dim=-2)  # (B, Hkv, S + N, d)

    @staticmethod
    def _check_index(index, cached) -> None:
        check_tensor("index", index, ndim=1, kind="iu")

    @staticmethod
    def _rows(x, index):
        return x[index.to(x.device)]  # (B', Hkv, S, d)


def check_cache(cache):
    """cache must be None or a KVCache of this backend."""
    return reference.check_cache(cache, KVCache, "KVCache (accelerated.torch's)")
