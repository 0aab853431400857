"""A key/value cache: the projected keys and values of earlier positions, kept for decoding step by step."""

from __future__ import annotations

from .arrays import array_namespace
from .checks import check_array, describe


# --8<-- [start:KVCache]
class KVCache:
    r"""Per attention layer, the keys and values already computed (inference only, no backward).

    Decoding feeds the model one new token per step. Without a cache, step t projects and
    attends all t tokens again; with it, each layer projects only the new token and appends
    its key and value to the ones kept from earlier steps:

        self-attention:   K ← concat(K, K_new),  V ← concat(V, V_new)  along S     (B, Hkv, S, d)
                          the new queries read every cached key and the causal part of the new ones
        cross-attention:  K, V = project(memory) on the first call, reused on every later call

    Each entry also counts the query positions its layer has seen: the next call starts at
    that position (rotary angles, rows of the causal / window / block mask). ``length`` is
    that count for the stack (how many tokens are cached), the offset of the absolute
    positional encoding; stacks read it before their layers run.

    ``reorder(index)`` keeps batch rows ``index`` of every entry (beam search follows the
    beams it keeps). One cache serves one model and one decoding run; start a new one for
    the next batch. Entries are keyed by the attention module object.
    """

    def __init__(self):
        self._entries = {}  # id(module) -> [module, keys, values, seen, cross]

    @property
    def length(self) -> int:
        """Tokens already cached: the positions seen by the layers (0 for a new cache)."""
        return max((entry[3] for entry in self._entries.values()), default=0)

    def seen(self, module) -> int:
        """Query positions ``module`` has seen so far (the position of its next query)."""
        entry = self._entries.get(id(module))
        return 0 if entry is None else entry[3]

    def memory(self, module):
        """(keys, values) a cross-attention module stored from its memory, or None on its first call."""
        entry = self._entries.get(id(module))
        if entry is None:
            return None
        self._check_kind(module, entry, cross=True)
        return entry[1], entry[2]

    def store_memory(self, module, keys, values, num_queries: int):
        """Keep the projected memory of a cross-attention module; count its first queries."""
        self._entries[id(module)] = [module, keys, values, num_queries, True]

    def advance(self, module, num_queries: int) -> None:
        """Count ``num_queries`` more query positions for a cross-attention module."""
        self._entries[id(module)][3] += num_queries

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
        entry[1] = self._concatenate(old, keys)  # (B, Hkv, S + N, d)
        entry[2] = self._concatenate(entry[2], values)  # (B, Hkv, S + N, d)
        entry[3] += keys.shape[-2]
        return entry[1], entry[2]

    def reorder(self, index) -> None:
        """Keep the batch rows ``index`` (an integer array (B',)) of every cached key and value."""
        for entry in self._entries.values():
            self._check_index(index, entry[1])
            batch = entry[1].shape[0]
            if len(index) and (int(index.min()) < 0 or int(index.max()) >= batch):
                raise ValueError(f"index must lie in [0, {batch}) (the cached batch rows), got {index.tolist()}")
            entry[1] = self._rows(entry[1], index)  # (B', Hkv, S, d)
            entry[2] = self._rows(entry[2], index)  # (B', Hkv, S, d)

    # ---- the array operations a backend's cache replaces (torch: torch.cat, tensors on a device) ----

    def project(self, module, query, key, value, inputs):
        """The new Q, K, V projections of ``module`` (its ``_project``); a backend may reuse work across steps."""
        return module._project(query, key, value, inputs)

    @staticmethod
    def _concatenate(old, new):
        """old (B, Hkv, S, d) then new (B, Hkv, N, d) along the sequence: (B, Hkv, S + N, d)."""
        return array_namespace(old).concatenate([old, new], axis=-2)

    @staticmethod
    def _check_index(index, cached) -> None:
        """index must be a 1-D integer array of the cached arrays' backend."""
        check_array("index", index, ndim=1, kind="iu", xp=array_namespace(cached))

    @staticmethod
    def _rows(x, index):
        """Batch rows ``index`` of x."""
        return x[index]

    @staticmethod
    def _check_kind(module, entry, cross: bool) -> None:
        if entry[4] != cross:
            used, now = ("cross", "self") if entry[4] else ("self", "cross")
            raise ValueError(
                f"cache holds {used}-attention keys for this {type(module).__name__}, "
                f"which is now called as {now}-attention"
            )

    def __repr__(self) -> str:
        return f"KVCache(length={self.length}, layers={len(self._entries)})"
# --8<-- [end:KVCache]


def check_cache(cache, cache_type=None, what: str = "KVCache"):
    """cache must be None or a ``cache_type`` (default: KVCache); ``what`` names it in the error."""
    if cache is not None and not isinstance(cache, cache_type or KVCache):
        raise TypeError(f"cache must be a {what} or None, got {describe(cache)}")
    return cache


# --8<-- [start:cached_heads]
def cached_heads(module, cache: KVCache, query, key, value, inputs: str, offset: int, split_heads) -> tuple:
    r"""MultiHeadAttention's Q, K, V through the cache (inference): (B, H, L, d), (B, Hkv, S, d) ×2.

    The L new queries sit at positions offset, offset + 1, ... (rotary angles).

        self-attention ("self"):  K_new, V_new = split_h(x W_kᵀ + b_k), split_h(x W_vᵀ + b_v)
                                  (Q, K_new ← RoPE at positions offset, ...)
                                  K, V = cache.append(K_new, V_new): every cached key, then the new
        cross-attention:          first call: K, V = split_h(memory W_kᵀ + b_k), ... kept in the cache
                                  later calls: K, V from the cache; the memory is not projected again

    module: the MultiHeadAttention of any backend (its projections, rotary and head counts are
    read); its projections and rotary compute, the cache keeps the arrays. split_heads(x, heads):
    (B, N, heads·d) → (B, heads, N, d) (multi_head_attention.split_heads).
    """
    H, Hkv = module.num_heads, module.num_kv_heads
    if inputs == "self":
        q, k, v = cache.project(module, query, key, value, inputs)  # (B, L, D), (B, L, Hkv·d) ×2
        q, k, v = split_heads(q, H), split_heads(k, Hkv), split_heads(v, Hkv)  # the new keys only
        if module.rotary is not None:
            q, k = module.rotary(q, k, offset)  # (B, H, L, d), (B, Hkv, L, d)  positions offset, ...
        k, v = cache.append(module, k, v)  # (B, Hkv, offset + L, d) ×2  cached keys, then the new
        return q, k, v
    q = split_heads(module.q_proj(query), H)  # (B, H, L, d)
    L = q.shape[2]
    stored = cache.memory(module)
    if stored is None:  # first call: project the memory once
        k = split_heads(module.k_proj(key), Hkv)  # (B, Hkv, S, d)
        v = split_heads(module.v_proj(value), Hkv)  # (B, Hkv, S, d)
        if module.rotary is not None:
            q, k = module.rotary(q, k)  # (B, H, L, d), (B, Hkv, S, d)  positions 0, 1, ...
        cache.store_memory(module, k, v, L)
        return q, k, v
    k, v = stored  # (B, Hkv, S, d) ×2
    B, d = q.shape[0], q.shape[3]
    if tuple(k.shape) != (B, Hkv, key.shape[1], d):
        raise ValueError(
            f"key has batch {B} and length {key.shape[1]} but the cache holds this layer's memory keys of "
            f"shape {tuple(k.shape)} (batch, kv heads, seq, head_dim): a cache serves one memory"
        )
    if module.rotary is not None:
        q, _ = module.rotary(q, q[:, :0], offset)  # (B, H, L, d)  positions offset, ...
    cache.advance(module, L)
    return q, k, v
# --8<-- [end:cached_heads]
