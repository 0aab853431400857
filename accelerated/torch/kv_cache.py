"""A key/value cache on torch: the projected keys and values of earlier positions, for decoding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference import kv_cache as reference

from .checks import check_tensor
from .linear import packed_weights


class KVCache(reference.KVCache):
    r"""The reference's cache (reference/kv_cache.py) holding torch tensors.

        self-attention:   K ← cat(K, K_new), V ← cat(V, V_new) along S          (B, Hkv, S, d)
        cross-attention:  K, V = project(memory) on the first call, reused afterwards
    Positions seen per layer (``seen``, ``length``), the cross-attention memory, appending and
    reordering are the reference's; only the three array operations below touch tensors, and
    ``project`` reads pack_for_decoding's stacked q/k/v weight where there is one.
    """

    def project(self, module, query, key, value, inputs):
        """module's Q, K, V projections: pack_for_decoding's stacked [W_q; W_k; W_v] (one product) where the
        model was packed, else three products (no gradient: the inputs were checked by the caller)."""
        if torch.is_grad_enabled() or inputs != "self" or module.quantization is not None:
            return module._project(query, key, value, inputs)
        packed = packed_weights(module, module._self_projection_parameters())  # pack_for_decoding's, across runs
        if packed is not None:
            return module._project_stacked(key, packed, inputs)
        # unpacked: three products on the weights as they are. Stacking [W_q; W_k; W_v] would cost a copy of
        # the weights per run (~0.1 ms a GPT-2 layer; transposed to (in, out) ~7 ms) to save ~2 µs a token
        return tuple(F.linear(query, p.weight, p.bias) for p in (module.q_proj, module.k_proj, module.v_proj))

    def _concatenate(self, old, new):
        """old then new along S: (B, Hkv, S + N, d), a view of a buffer with room after it (inference).

        torch.cat would copy every cached key at every step; the buffer grows by doubling, so a step
        writes only its new keys. The view returned is the only one written into (past S + N, later);
        any other old tensor, and every call tracking gradients, goes through torch.cat."""
        room = self.__dict__.setdefault("_room", {})  # id(view) -> (view, its buffer)
        held = room.pop(id(old), None)
        if torch.is_grad_enabled() or new.dtype != old.dtype or new.device != old.device:
            return torch.cat([old, new], dim=-2)  # (B, Hkv, S + N, d)
        S, N = old.shape[-2], new.shape[-2]
        if held is not None and held[0] is old and held[1].shape[-2] >= S + N:
            buffer = held[1]  # (B, Hkv, capacity, d)  old is its first S rows
        else:
            buffer = old.new_empty((*old.shape[:-2], 2 * (S + N), old.shape[-1]))  # (B, Hkv, 2(S + N), d)
            buffer[..., :S, :] = old
        buffer[..., S:S + N, :] = new
        out = buffer[..., :S + N, :]  # (B, Hkv, S + N, d)
        room[id(out)] = (out, buffer)
        return out

    @staticmethod
    def _check_index(index, cached) -> None:
        check_tensor("index", index, ndim=1, kind="iu")

    def _rows(self, x, index):
        self.__dict__.get("_room", {}).pop(id(x), None)  # x is replaced: its buffer is no longer written
        return x[index.to(x.device)]  # (B', Hkv, S, d)


def check_cache(cache):
    """cache must be None or a KVCache of this backend."""
    return reference.check_cache(cache, KVCache, "KVCache (accelerated.torch's)")
