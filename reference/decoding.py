"""Decoding: greedy and beam search for the Transformer, temperature/top-k/top-p sampling for the language model."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

from .checks import check_array, check_flag, check_id_range, check_name, check_positive_int, describe
from .kv_cache import KVCache
from .language_model import DecoderLM
from .transformer import Transformer


@dataclass(frozen=True)
class DecodingBackend:
    """What the decoding algorithms below need from an array backend; they are written once.

    The algorithms compute with ``xp = namespace(model)`` in NumPy's spelling (``xp.argmax(x,
    axis=-1)``, ``xp.asarray(x, dtype=...)``, indexing); NumPy and CuPy are such namespaces
    (``model.xp``), and accelerated/torch/decoding.py gives torch one. A backend also names its
    model and cache classes, its array check, and the context inference runs in (torch:
    ``torch.no_grad``). ``REFERENCE`` below is this package's.
    """

    transformer: type  # the encoder-decoder model class greedy_decode and beam_search accept
    language_model: type  # the DecoderLM class generate accepts
    cache: type  # the KVCache class
    namespace: Callable  # model -> xp, the array namespace decoding computes in
    check_array: Callable  # check_array(name, x, *, ndim, kind, xp): raises TypeError / ValueError
    no_grad: Callable = nullcontext  # a context manager that turns gradient tracking off


REFERENCE = DecodingBackend(Transformer, DecoderLM, KVCache, namespace=lambda model: model.xp, check_array=check_array)


#: beam_search's methods: GNMT's (finished hypotheses stay in the beam) and transformers' (they leave it)
BEAM_METHODS = ("gnmt", "transformers")
#: early_stopping values of transformers' beam search (GenerationConfig.early_stopping)
EARLY_STOPPING = (False, True, "never")


def gnmt_length_penalty(length, alpha: float):
    """GNMT's length penalty lp(n) = ((5 + n) / 6)^α; a hypothesis scores log P(y) / lp(|y|)."""
    return ((5.0 + length) / 6.0) ** alpha


def greedy_decode(model, src, max_len, bos_id, eos_id, src_key_padding_mask=None, use_cache=True):
    r"""Pick the most likely next token at every step, for a batch of sources at once.

    memory = encode(src) once;  y₀ = BOS;  y_t = argmax_v logits(y_<t, memory)[v]
    A row stops at its first EOS (later positions are filled with eos_id); decoding stops when
    every row has stopped or the output holds max_len tokens. With use_cache=True (see
    kv_cache.py) each step feeds only the last token; use_cache=False runs the decoder on
    the whole prefix every step (the same tokens, slower).

    src (B, S) int ids  →  tokens (B, T) int64, T <= max_len, starting with BOS.
    The model runs in eval mode (no dropout) during decoding; its modes are restored after.
    """
    return greedy_decode_on(REFERENCE, model, src, max_len, bos_id, eos_id, src_key_padding_mask, use_cache)


# --8<-- [start:greedy_decode_on]
def greedy_decode_on(backend, model, src, max_len, bos_id, eos_id, src_key_padding_mask=None, use_cache=True):
    """greedy_decode for a model of ``backend`` (a DecodingBackend)."""
    _check_model("model", model, backend.transformer)
    max_len = _check_max_len("max_len", max_len, model.max_len)
    bos_id = _check_token("bos_id", bos_id, model.tgt_vocab_size)
    eos_id = _check_token("eos_id", eos_id, model.tgt_vocab_size)
    check_flag("use_cache", use_cache)
    xp = backend.namespace(model)
    with _inference(model, backend):
        memory = model.encode(src, src_key_padding_mask)  # (B, S, d)  encoded once
        B = memory.shape[0]
        tokens = xp.full((B, 1), bos_id, dtype=xp.int64)  # (B, 1)
        finished = xp.zeros(B, dtype=bool)  # (B,)
        cache = backend.cache() if use_cache else None
        for _ in range(max_len - 1):
            step = tokens[:, -1:] if use_cache else tokens  # (B, 1) new token, or (B, t) whole prefix
            logits = model.decode(step, memory, src_key_padding_mask, cache=cache)[:, -1]  # (B, V)
            next_token = xp.asarray(xp.argmax(logits, axis=-1), dtype=xp.int64)  # (B,)
            next_token = xp.where(finished, eos_id, next_token)  # (B,)  finished rows: padding
            tokens = xp.concatenate([tokens, next_token[:, None]], axis=1)  # (B, t + 1)
            finished = finished | (next_token == eos_id)  # (B,)
            if bool(xp.all(finished)):
                break
    return tokens
# --8<-- [end:greedy_decode_on]


def beam_search(model, src, max_len, bos_id, eos_id, beam_size=4, length_penalty=0.6, src_key_padding_mask=None, *,
                method="gnmt", early_stopping=False):
    r"""Keep the beam_size best hypotheses per source, batched over sources and beams.

    score(y) = log P(y | x) / lp(|y|),   lp(n) = ((5 + n) / 6)^α   (GNMT, α = length_penalty)
    |y| counts the generated tokens, EOS included, BOS not. Each step every hypothesis of the
    beam proposes its V extensions (a finished one only EOS, at no cost and no added length),
    and the beam_size best by score survive; the cache follows them (KVCache.reorder).
    Stops when every hypothesis has ended with EOS or the output holds max_len tokens.

    src (B, S)  →  tokens (B, beam_size, T) int64 (BOS first, EOS-padded after the end) and
    scores (B, beam_size) float64, each source's hypotheses sorted best first. beam_size=1 is
    greedy decoding. A score of −inf marks a slot with no hypothesis (fewer than beam_size
    sequences of that length exist). The model runs in eval mode during the search.

    method="transformers" runs transformers' algorithm instead (lm_beam_search_on: finished
    hypotheses leave the beam for a pool, score log P / n^length_penalty, early_stopping True,
    False or "never"), as MarianMTModel.generate(num_beams=beam_size, length_penalty=,
    early_stopping=) does (transformers' default length_penalty is 1.0); tokens (B, beam_size, T)
    are then the pool, best first.
    """
    return beam_search_on(REFERENCE, model, src, max_len, bos_id, eos_id, beam_size, length_penalty,
                          src_key_padding_mask, method=method, early_stopping=early_stopping)


def beam_search_on(backend, model, src, max_len, bos_id, eos_id, beam_size=4, length_penalty=0.6,
                   src_key_padding_mask=None, *, method="gnmt", early_stopping=False):
    """beam_search for a model of ``backend`` (a DecodingBackend)."""
    _check_model("model", model, backend.transformer)
    max_len = _check_max_len("max_len", max_len, model.max_len)
    bos_id = _check_token("bos_id", bos_id, model.tgt_vocab_size)
    eos_id = _check_token("eos_id", eos_id, model.tgt_vocab_size)
    K = check_positive_int("beam_size", beam_size)
    method = check_name("method", method, BEAM_METHODS)
    alpha = _check_real("length_penalty", length_penalty, minimum=0.0 if method == "gnmt" else -math.inf)
    _check_early_stopping(early_stopping)
    if method == "gnmt" and early_stopping is not False:
        raise ValueError(f"early_stopping={early_stopping!r} needs method='transformers' (GNMT's search stops when "
                         f"every hypothesis has ended)")
    xp, V = backend.namespace(model), model.tgt_vocab_size
    with _inference(model, backend):
        memory = model.encode(src, src_key_padding_mask)  # (B, S, d)  encoded once
        B = memory.shape[0]
        rows = xp.repeat(xp.arange(B), K)  # (B·K,)  the source of each beam row
        memory = memory[rows]  # (B·K, S, d)
        memory_mask = None if src_key_padding_mask is None else src_key_padding_mask[rows]  # (B·K, S)
        if method == "transformers":
            tokens, scores, _ = pooled_beam_search(
                xp, backend.cache(), xp.full((B, 1), bos_id, dtype=xp.int64),
                lambda step, cache: model.decode(step, memory, memory_mask, cache=cache)[:, -1], V, max_len - 1, K,
                (eos_id,), alpha, early_stopping)
            return tokens, scores
        b = xp.arange(B)[:, None]  # (B, 1)
        tokens = xp.full((B, K, 1), bos_id, dtype=xp.int64)  # (B, K, 1)
        sums = xp.full((B, K), -xp.inf, dtype=xp.float64)  # (B, K)  log P of each hypothesis
        sums[:, 0] = 0.0  # one live hypothesis (BOS) per source at the start
        lengths = xp.zeros((B, K), dtype=xp.float64)  # (B, K)  generated tokens, EOS included (float: lp's input)
        finished = xp.zeros((B, K), dtype=bool)  # (B, K)
        eos_only = xp.full(V, -xp.inf, dtype=xp.float64)  # (V,)  a finished hypothesis may only append EOS, cost 0
        eos_only[eos_id] = 0.0
        cache = backend.cache()
        for _ in range(max_len - 1):
            if bool(xp.all(finished | (sums == -xp.inf))):
                break
            logits = model.decode(tokens[:, :, -1].reshape(B * K, 1), memory, memory_mask,
                                  cache=cache)[:, -1]  # (B·K, V)
            log_probs = _log_softmax(xp.asarray(logits, dtype=xp.float64), xp).reshape(B, K, V)  # (B, K, V)
            log_probs = xp.where(finished[..., None], eos_only, log_probs)  # (B, K, V)
            cand_sums = sums[..., None] + log_probs  # (B, K, V)  log P of every extension
            cand_lengths = lengths + ~finished  # (B, K)  a finished hypothesis does not grow
            cand_scores = cand_sums / gnmt_length_penalty(cand_lengths, alpha)[..., None]  # (B, K, V)
            best = xp.argsort(-cand_scores.reshape(B, K * V), axis=1, kind="stable")[:, :K]  # (B, K)
            beam, token = best // V, best % V  # (B, K) ×2  which hypothesis, which token
            sums = cand_sums.reshape(B, K * V)[b, best]  # (B, K)
            lengths = cand_lengths[b, beam]  # (B, K)
            finished = finished[b, beam] | (token == eos_id)  # (B, K)
            tokens = xp.concatenate([tokens[b, beam], token[..., None]], axis=-1)  # (B, K, t + 1)
            cache.reorder((b * K + beam).reshape(-1))  # the cache rows follow their hypotheses
        scores = sums / gnmt_length_penalty(lengths, alpha)  # (B, K)
        order = xp.argsort(-scores, axis=1, kind="stable")  # (B, K)  best first
    return tokens[b, order], scores[b, order]


def lm_beam_search_on(backend, model, prompt, max_new_tokens, num_beams, eos_id=None, length_penalty=1.0,
                      early_stopping=False, use_cache=True):
    r"""Beam search for a DecoderLM as transformers' ``generate(num_beams=K, do_sample=False)`` does it.

    Hypotheses are scored by  score(y) = log P(y | prompt) / n^length_penalty,  n = the generated
    tokens, EOS included, prompt not. K running hypotheses (never finished ones) are kept by their
    sum of log-probabilities; each step the max(2, 1 + #EOS ids)·K best extensions of all of them are
    ranked (enough that K of them go on even if every EOS id is among them), those that end (any
    EOS id, or the max_new_tokens-th token) among the first K enter a pool of the K best
    finished hypotheses (by score), and the K best that do not end keep running. A source is done
    when its pool is full and (early_stopping=True) at once, or (False) when the best running
    hypothesis scored at its current length, or ("never", with length_penalty > 0) at the longest
    length, cannot beat the worst pooled one. Ties rank the lower (beam, token) first.

    This is not beam_search's GNMT scoring, where finished hypotheses stay in the beam and compete
    with running ones: it is the Hugging Face algorithm, so that rosetta and transformers agree.
    eos_id: an id, a sequence of ids (any of them ends a hypothesis) or None.
    prompt (B, P) int ids  →  tokens (B, K, P + n) int64 (the pool, best first; the first EOS id after
    each end), scores (B, K) float64 (−inf: an empty slot) and each one's n (B, K) int64,
    n <= max_new_tokens.
    Checked by generate_on (eos_id here too); the model runs in eval mode. The search itself is
    pooled_beam_search (beam_search(method="transformers") runs it for the encoder-decoder Transformer).
    """
    xp, eos_ids = backend.namespace(model), _check_eos("eos_id", eos_id, model.vocab_size)
    with _inference(model, backend):
        return pooled_beam_search(xp, backend.cache() if use_cache else None, xp.asarray(prompt, dtype=xp.int64),
                                  lambda step, cache: next_token_logits(model, step, cache), model.vocab_size,
                                  max_new_tokens, num_beams, eos_ids, length_penalty, early_stopping)


def pooled_beam_search(xp, cache, start, next_logits, V, max_new_tokens, K, eos_ids, length_penalty, early_stopping):
    """lm_beam_search_on's search (transformers' algorithm), for any model that gives next-token logits.

    start (B, P) int64: each source's first tokens (the prompt; the Transformer: BOS). next_logits(step,
    cache) → (B·K, V): the logits after each of the B·K rows' tokens, given step, the new tokens (B·K, t)
    (all of them the first time or when cache is None). eos_ids: a tuple of ids (any ends a hypothesis)
    or None. Returns (tokens (B, K, P + n), scores (B, K), lengths (B, K)) as lm_beam_search_on.
    """
    B, P = start.shape
    b = xp.arange(B)[:, None]  # (B, 1)
    fill = 0 if eos_ids is None else eos_ids[0]  # after a hypothesis' end (transformers' pad: the first EOS id)
    ranked = max(2, 1 + len(eos_ids or ())) * K  # extensions ranked per step: K go on even if all EOS ids rank
    running = xp.asarray(start[xp.repeat(xp.arange(B), K)].reshape(B, K, P), dtype=xp.int64)  # (B, K, P)
    sums = xp.full((B, K), -xp.inf, dtype=xp.float64)  # (B, K)  log P of each running hypothesis
    sums[:, 0] = 0.0  # one live hypothesis (the prompt) per source at the start
    pool = xp.full((B, K, P), fill, dtype=xp.int64)  # (B, K, P + t)  the finished hypotheses
    pool_scores = xp.full((B, K), -xp.inf, dtype=xp.float64)  # (B, K)  best first
    pool_lengths = xp.zeros((B, K), dtype=xp.int64)  # (B, K)  n of each pooled hypothesis
    open_ = xp.full(B, True, dtype=bool)  # (B,)  may a source's pool still change?
    step = running.reshape(B * K, P)  # the first step feeds the whole prompt
    for n in range(1, max_new_tokens + 1):  # n: the generated length of this step's extensions
        logits = next_logits(step, cache)  # (B·K, V)
        log_probs = _log_softmax(xp.asarray(logits, dtype=xp.float64), xp).reshape(B, K, V)  # (B, K, V)
        extended = (sums[..., None] + log_probs).reshape(B, K * V)  # (B, K·V)  log P of every extension
        top = xp.argsort(-extended, axis=1, kind="stable")[:, :ranked]  # (B, R)  the R best extensions
        beam, token = top // V, top % V  # (B, R) ×2
        top_sums = extended[b, top]  # (B, R)
        candidates = xp.concatenate([running[b, beam], token[..., None]], axis=-1)  # (B, R, P + n)
        ends = _is_eos(token, eos_ids) | (n == max_new_tokens)  # (B, R)  the last step ends every hypothesis
        # the pool: the first K candidates that end, scored by their length, merged with the pool
        full = xp.all(pool_scores > -xp.inf, axis=1)  # (B,)
        may_enter = open_ & ~(full & (early_stopping is True))  # (B,)
        entering = ends[:, :K] & may_enter[:, None]  # (B, K)
        new_scores = xp.where(entering, top_sums[:, :K] / float(n) ** length_penalty, -xp.inf)  # (B, K)
        merged_scores = xp.concatenate([pool_scores, new_scores], axis=1)  # (B, 2K)
        merged = xp.concatenate([xp.concatenate([pool, xp.full((B, K, 1), fill, dtype=xp.int64)], axis=-1),
                                 candidates[:, :K]], axis=1)  # (B, 2K, P + n)
        merged_lengths = xp.concatenate([pool_lengths, xp.full((B, K), n, dtype=xp.int64)], axis=1)  # (B, 2K)
        keep = xp.argsort(-merged_scores, axis=1, kind="stable")[:, :K]  # (B, K)  the pool first on ties
        pool, pool_scores, pool_lengths = merged[b, keep], merged_scores[b, keep], merged_lengths[b, keep]
        # the running hypotheses: the K best extensions that do not end
        live = xp.argsort(-xp.where(ends, -xp.inf, top_sums), axis=1, kind="stable")[:, :K]  # (B, K)
        running, sums = candidates[b, live], xp.where(ends, -xp.inf, top_sums)[b, live]  # (B, K, P + n), (B, K)
        if cache is not None:
            cache.reorder((b * K + beam[b, live]).reshape(-1))  # the cache rows follow their hypotheses
        step = running[:, :, -1:].reshape(B * K, 1) if cache is not None else running.reshape(B * K, P + n)
        # can a running hypothesis still beat the worst pooled one? (transformers' heuristic)
        horizon = max_new_tokens if early_stopping == "never" and length_penalty > 0 else n
        best_running = sums[:, 0] / float(horizon) ** length_penalty  # (B,)
        full = xp.all(pool_scores > -xp.inf, axis=1)  # (B,)
        open_ = open_ & (~full | (best_running > xp.min(pool_scores, axis=1)))  # (B,)
        if n == max_new_tokens or not bool(xp.any(open_)) or (early_stopping is True and bool(xp.all(full))):
            break
    longest = int(pool_lengths.max()) if B else 0  # (no sources: no tokens)
    return pool[:, :, :P + longest], pool_scores, pool_lengths


def generate(model, prompt, max_new_tokens, temperature=1.0, top_k=None, eos_id=None, seed=None, use_cache=True, *,
             top_p=None, num_beams=1, length_penalty=1.0, early_stopping=False):
    r"""Continue each prompt of a DecoderLM by sampling (or greedy picking) one token at a time.

    p = softmax(logits / temperature) over the top_k most likely tokens (all when None), then
    over the nucleus: the smallest set of most likely tokens whose probability sums to >= top_p
    (at least one; None or 1: all), renormalized. This is transformers' order (temperature,
    top-k, top-p); ties rank the lower id first, as argmax does. temperature = 0 picks the
    argmax (greedy). top_p is keyword-only (the positional order predates it), 0 < top_p <= 1.
    Sampling is by inverse CDF with one uniform per row from numpy's default_rng(seed): the same
    seed gives the same tokens. eos_id is an id or a sequence of ids (instruct models list
    several, e.g. [128001, 128008, 128009]): a row stops at its first token that is any of them
    (later positions hold the first one, transformers' pad when pad_token_id is unset) and
    generation stops when every row has. With use_cache=True the prompt is fed once, then one
    token per step.

    num_beams > 1 (with temperature 0, no top_k/top_p) is beam search as transformers'
    ``generate(num_beams=, do_sample=False, length_penalty=, early_stopping=)``: any EOS id ends a
    hypothesis; each row gets its best one by log P / n^length_penalty (see lm_beam_search_on),
    padded with the first EOS id.

    prompt (B, P) int ids  →  tokens (B, P + n) int64, n <= max_new_tokens, prompt included.
    The model runs in eval mode (no dropout) during generation; its modes are restored after.
    """
    return generate_on(REFERENCE, model, prompt, max_new_tokens, temperature, top_k, eos_id, seed, use_cache,
                       top_p=top_p, num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping)


def next_token_logits(model, ids, cache=None):
    """(B, V): a DecoderLM's logits at the last position only, model(ids, cache=cache)[:, -1].

    Decoding's step (ids already checked): the lm_head multiplies one row per sequence by W_h,
    not every prompt position.
    """
    h = model.decoder(ids, is_causal=True, cache=cache)  # (B, N, d)
    return model.lm_head(h[:, -1:])[:, 0]  # (B, V)  logits = h W_hᵀ at the last position


def generate_on(backend, model, prompt, max_new_tokens, temperature=1.0, top_k=None, eos_id=None, seed=None,
                use_cache=True, *, top_p=None, num_beams=1, length_penalty=1.0, early_stopping=False):
    """generate for a model of ``backend`` (a DecodingBackend)."""
    _check_model("model", model, backend.language_model)
    xp = backend.namespace(model)
    backend.check_array("prompt", prompt, ndim=2, kind="iu", xp=xp)
    if prompt.shape[1] < 1:
        raise ValueError(f"prompt must hold at least one token per row, got shape {tuple(prompt.shape)}")
    if prompt.shape[0]:  # by its own name (the model would call it ids)
        check_id_range("prompt", int(prompt.min()), int(prompt.max()), model.vocab_size)
    max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
    if prompt.shape[1] + max_new_tokens > model.max_len:
        raise ValueError(
            f"max_new_tokens must be at most {model.max_len - prompt.shape[1]} (model max_len {model.max_len} minus "
            f"the prompt's {prompt.shape[1]} tokens), got {max_new_tokens}"
        )
    temperature = _check_real("temperature", temperature, minimum=0.0)
    if top_k is not None:
        top_k = check_positive_int("top_k", top_k)
        if top_k > model.vocab_size:
            raise ValueError(f"top_k must be at most {model.vocab_size} (the vocabulary), got {top_k}")
    if top_p is not None:
        top_p = _check_real("top_p", top_p, minimum=0.0)
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1] (a probability mass), got {top_p}")
    eos_ids = _check_eos("eos_id", eos_id, model.vocab_size)  # a tuple of ids, or None
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed must be an int or None, got {describe(seed)}")
    check_flag("use_cache", use_cache)
    if _check_beams(num_beams, length_penalty, early_stopping, temperature, top_k, top_p) > 1:
        tokens, _, lengths = lm_beam_search_on(backend, model, prompt, max_new_tokens, num_beams, eos_ids,
                                               length_penalty, early_stopping, use_cache)
        longest = int(lengths[:, 0].max()) if lengths.shape[0] else 0
        return tokens[:, 0, :prompt.shape[1] + longest]  # (B, P + n)  each row's best
    rng = np.random.default_rng(seed)
    with _inference(model, backend):
        tokens = xp.asarray(prompt, dtype=xp.int64)  # (B, P)
        B = tokens.shape[0]
        finished = xp.zeros(B, dtype=bool)  # (B,)
        cache = backend.cache() if use_cache else None
        step = tokens  # the first step feeds the whole prompt
        for _ in range(max_new_tokens):
            logits = next_token_logits(model, step, cache)  # (B, V)  model(step)[:, -1]
            next_token = _pick(logits, temperature, top_k, rng, xp, top_p)  # (B,)
            if eos_ids is not None:
                next_token = xp.where(finished, eos_ids[0], next_token)  # (B,)  finished rows: padding
                finished = finished | _is_eos(next_token, eos_ids)  # (B,)  any EOS id ends a row
            tokens = xp.concatenate([tokens, next_token[:, None]], axis=1)  # (B, t + 1)
            step = next_token[:, None] if use_cache else tokens  # (B, 1), or the whole sequence
            if eos_ids is not None and bool(xp.all(finished)):
                break
    return tokens


# ---- helpers ----------------------------------------------------------------------------------


def _pick(logits, temperature, top_k, rng, xp, top_p=None):
    """The next token of each row: argmax (temperature 0), or a sample of softmax(logits / T) over top k, then top p."""
    if temperature == 0.0:
        return xp.asarray(xp.argmax(logits, axis=-1), dtype=xp.int64)  # (B,)
    scaled = xp.asarray(logits, dtype=xp.float64) / temperature  # (B, V)
    if top_k is not None:  # keep exactly the k largest (ties: the lower id first, as argmax)
        rank = xp.argsort(xp.argsort(-scaled, axis=-1, kind="stable"), axis=-1, kind="stable")  # (B, V)
        scaled = xp.where(rank < top_k, scaled, -xp.inf)  # (B, V)
    probs = xp.exp(_log_softmax(scaled, xp))  # (B, V)  0 outside the top k
    if top_p is not None and top_p < 1.0:  # keep the smallest most-likely set of mass >= top_p
        scaled = xp.where(_nucleus(probs, top_p, xp), scaled, -xp.inf)  # (B, V)
        probs = xp.exp(_log_softmax(scaled, xp))  # (B, V)  renormalized over the nucleus
    cdf = xp.cumsum(probs, axis=-1)  # (B, V)  non-decreasing, ends at ≈ 1
    u = xp.asarray(rng.random(probs.shape[0])) * cdf[:, -1]  # (B,)  uniform in [0, total)
    index = xp.sum(cdf <= u[:, None], axis=-1)  # (B,)  first v with cdf[v] > u
    return xp.asarray(xp.minimum(index, probs.shape[-1] - 1), dtype=xp.int64)  # (B,)


def _nucleus(probs, top_p, xp):
    """(B, V) bool: True at the tokens of each row's nucleus.

    Sorted by probability (descending; ties: the lower id first), token i is kept iff the mass
    of the tokens before it is < top_p, so the most likely token always is, and the kept set is
    the smallest whose mass reaches top_p (transformers' TopPLogitsWarper, min_tokens_to_keep=1).
    """
    B = probs.shape[0]
    rows = xp.arange(B)[:, None]  # (B, 1)
    order = xp.argsort(-probs, axis=-1, kind="stable")  # (B, V)  most likely first
    mass = xp.cumsum(probs[rows, order], axis=-1)  # (B, V)  mass of the first i + 1 in that order
    keep_sorted = xp.concatenate([xp.full((B, 1), True, dtype=bool), mass[:, :-1] < top_p], axis=1)  # (B, V)
    rank = xp.argsort(order, axis=-1, kind="stable")  # (B, V)  each token's place in the order
    return keep_sorted[rows, rank]  # (B, V)


def _is_eos(token, eos_ids):
    """token ∈ eos_ids, elementwise (all False for None): one comparison per EOS id, on any array backend."""
    ends = token != token  # (...)  False
    for eos in eos_ids or ():
        ends = ends | (token == eos)  # (...)
    return ends


def _log_softmax(x, xp):
    """log softmax over the last axis; −inf entries stay −inf."""
    shifted = x - xp.max(x, axis=-1, keepdims=True)  # (..., V)  <= 0
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))  # (..., V)


@contextmanager
def _inference(model, backend):
    """Run with every module in eval mode (no dropout) and no gradient tracking, then restore each module's mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with backend.no_grad():
            yield
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)


def _check_beams(num_beams, length_penalty, early_stopping, temperature, top_k, top_p) -> int:
    """generate's beam arguments; num_beams > 1 is deterministic beam search (no temperature, top_k, top_p)."""
    num_beams = check_positive_int("num_beams", num_beams)
    _check_real("length_penalty", length_penalty, minimum=-math.inf)  # < 0 favours short hypotheses
    _check_early_stopping(early_stopping)
    if num_beams > 1 and (temperature != 0.0 or top_k is not None or top_p is not None):
        raise ValueError(f"num_beams={num_beams} is beam search, which does not sample: it needs temperature=0 and "
                         f"no top_k/top_p, got temperature={temperature}, top_k={top_k}, top_p={top_p}")
    return num_beams


def _check_early_stopping(early_stopping) -> None:
    if not isinstance(early_stopping, (bool, str)):
        raise TypeError(f"early_stopping must be True, False or 'never', got {describe(early_stopping)}")
    if early_stopping not in EARLY_STOPPING:
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")


def _check_model(name, model, cls):
    if not isinstance(model, cls):
        raise TypeError(f"{name} must be a {cls.__name__}, got {describe(model)}")


def _check_max_len(name, value, model_max_len):
    value = check_positive_int(name, value)
    if value > model_max_len:
        raise ValueError(f"{name} must be at most {model_max_len} (the model's max_len), got {value}")
    return value


def _check_token(name, value, vocab_size):
    value = check_positive_int(name, value, minimum=0)
    if value >= vocab_size:
        raise ValueError(f"{name} must lie in [0, {vocab_size}) (the vocabulary), got {value}")
    return value


def _check_eos(name, value, vocab_size):
    """An EOS id, or a non-empty sequence of them (list, tuple, 1-D array), as a tuple of ints; None stays None."""
    if value is None:
        return None
    if getattr(value, "ndim", None) in (0, 1):  # a NumPy / CuPy / torch id or array of ids
        value = value.tolist()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, list, tuple)):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {describe(value)}")
    if not isinstance(value, (list, tuple)):
        return (_check_token(name, value, vocab_size),)
    if not value:
        raise ValueError(f"{name} must be an id or a non-empty sequence of ids, got {value!r}")
    return tuple(_check_token(f"{name}[{i}]", e, vocab_size) for i, e in enumerate(value))


def _check_real(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a float, got {describe(value)}")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value}")
    return float(value)
