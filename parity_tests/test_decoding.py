"""Decoding: the key/value cache reproduces the full forward; greedy, beam search and sampling; errors."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity_tests.strategies import examples, normal, seeds
from parity_tests.tolerances import CLOSED_FORM, assert_close
from reference.decoding import _pick, beam_search, generate, gnmt_length_penalty, greedy_decode
from reference.encoder import Encoder
from reference.kv_cache import KVCache
from reference.language_model import DecoderLM
from reference.multi_head_attention import MultiHeadAttention
from reference.transformer import Transformer

F64 = np.float64
VOCAB, D, HEADS, D_FF, MAX_LEN = 7, 8, 2, 16, 10  # tiny configurations: every test stays fast
BOS, EOS = 0, 1


def token_ids(seed, shape, vocab=VOCAB):
    return np.random.default_rng(seed).integers(0, vocab, shape)


def tiny_transformer(seed, vocab=VOCAB, **options):
    config = {"num_encoder_layers": 1, "num_decoder_layers": 2, "dropout": 0.0, "max_len": MAX_LEN}
    return Transformer(vocab, vocab, D, HEADS, D_FF, **{**config, **options}, seed=seed, dtype=F64)


def tiny_lm(kind, seed, num_kv_heads=1):
    if kind == "llama":  # RMSNorm, SwiGLU, rotary positions, grouped kv heads
        return DecoderLM.llama(VOCAB, D, HEADS, D_FF, 2, num_kv_heads=num_kv_heads, max_len=MAX_LEN, seed=seed,
                               dtype=F64)
    return DecoderLM(VOCAB, D, HEADS, D_FF, 2, positional=kind, num_kv_heads=num_kv_heads, max_len=MAX_LEN,
                     seed=seed, dtype=F64)


def chunks(length, first):
    """[0, first), then one position at a time: a prompt, then decoding steps."""
    return [(0, first)] + [(t, t + 1) for t in range(first, length)]


def log_prob_score(model, src, tokens, alpha, src_key_padding_mask=None):
    """log P(tokens[1:] up to the first EOS | src) / lp(length), from one full forward per sequence."""
    memory = model.encode(src, src_key_padding_mask)
    logits = model.decode(tokens[:, :-1], memory, src_key_padding_mask)  # (B, T−1, V)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, tokens[:, 1:, None], -1)[..., 0]  # (B, T−1)
    is_eos = tokens[:, 1:] == EOS
    before_end = np.cumsum(is_eos, axis=1) - is_eos == 0  # positions up to and including the first EOS
    lengths = before_end.sum(1)
    return (picked * before_end).sum(1) / gnmt_length_penalty(lengths, alpha)


# ---- the cache reproduces the full forward ------------------------------------------------------------------


@examples(0.4)
@given(st.booleans(), st.booleans(), st.integers(1, 4), st.booleans(), seeds)
def test_transformer_cached_logits_equal_full_forward(norm_first, tie, first, padded, seed):
    model = tiny_transformer(seed, norm_first=norm_first, tie_embeddings=tie)
    src, tgt = token_ids(seed, (3, 5)), token_ids(seed + 1, (3, 6))
    src_pad = np.arange(5)[None, :] >= np.array([5, 3, 1])[:, None] if padded else None
    memory = model.encode(src, src_pad)
    full = model.decode(tgt, memory, src_pad)  # (B, T, V)
    cache = KVCache()
    for start, end in chunks(6, first):
        assert cache.length == start
        step = model.decode(tgt[:, start:end], memory, src_pad, cache=cache)
        assert_close(step, full[:, start:end], F64, f"logits of positions {start}..{end - 1}")
    assert cache.length == 6


@examples(0.5)
@given(st.sampled_from(["learned", "sinusoidal", "llama"]), st.sampled_from([1, 2]), st.integers(1, 4), seeds)
def test_lm_cached_logits_equal_full_forward(kind, num_kv_heads, first, seed):
    model = tiny_lm(kind, seed, num_kv_heads)
    ids = token_ids(seed, (2, 7))
    full = model(ids)  # (B, N, V)
    cache = KVCache()
    for start, end in chunks(7, first):
        assert_close(model(ids[:, start:end], cache=cache), full[:, start:end], F64, f"{kind} logits {start}..{end}")


def test_lm_cached_key_padding_mask_covers_cached_keys():
    model = tiny_lm("learned", 3, 2)
    ids = token_ids(3, (2, 5))
    pad = np.array([[False, True, False, False, False], [False, False, False, False, False]])
    full = model(ids, key_padding_mask=pad)
    cache = KVCache()
    assert_close(model(ids[:, :2], key_padding_mask=pad[:, :2], cache=cache), full[:, :2], F64, "prompt")
    for t in range(2, 5):
        assert_close(model(ids[:, t:t + 1], key_padding_mask=pad[:, :t + 1], cache=cache), full[:, t:t + 1], F64,
                     f"step {t}")


@examples(0.4)
@given(st.sampled_from([("window", 2), ("window", 3), ("block_size", 2), ("block_size", 3)]), st.booleans(),
       st.integers(1, 3), seeds)
def test_encoder_cached_window_and_block_masks(option, rotary, first, seed):
    name, size = option
    stack = Encoder(D, HEADS, D_FF, 2, dropout=0.0, norm_first=True, rotary=rotary, positional="learned",
                    max_len=MAX_LEN, vocab_size=VOCAB, seed=seed, dtype=F64, **{name: size})
    ids = token_ids(seed, (2, 6))
    full = stack(ids, is_causal=True)
    cache = KVCache()
    for start, end in chunks(6, first):
        assert_close(stack(ids[:, start:end], is_causal=True, cache=cache), full[:, start:end], F64, f"{name}")


@examples(0.3)
@given(st.booleans(), seeds)
def test_cross_attention_projects_memory_once(rotary, seed):
    mha = MultiHeadAttention(D, HEADS, num_kv_heads=1, rotary=rotary, seed=seed, dtype=F64)
    query, memory = normal(seed, (2, 4, D)), normal(seed + 1, (2, 5, D))
    full = mha(query, memory)
    cache = KVCache()
    first = mha(query[:, :2], memory, cache=cache)
    keys, _ = cache.memory(mha)
    rest = [mha(query[:, t:t + 1], memory * 0.0, cache=cache) for t in (2, 3)]  # memory is not read again
    assert cache.memory(mha)[0] is keys
    assert_close(np.concatenate([first, *rest], axis=1), full, F64, "cross-attention with a cache")


def test_cache_reorder_and_length():
    model = tiny_lm("learned", 5, 2)
    ids = token_ids(5, (3, 4))
    cache = KVCache()
    model(ids[:, :3], cache=cache)
    assert cache.length == 3
    cache.reorder(np.array([2, 0]))  # keep rows 2 and 0, in that order
    step = model(ids[[2, 0], 3:], cache=cache)
    assert_close(step, model(ids[[2, 0]])[:, 3:], F64, "reordered cache")
    assert "length=4" in repr(cache)


# ---- greedy decoding ------------------------------------------------------------------------------------------


@examples(0.4)
@given(st.booleans(), st.booleans(), seeds)
def test_greedy_cached_equals_uncached(norm_first, padded, seed):
    model = tiny_transformer(seed, norm_first=norm_first)
    src = token_ids(seed, (3, 5))
    src_pad = np.arange(5)[None, :] >= np.array([5, 2, 4])[:, None] if padded else None
    cached = greedy_decode(model, src, MAX_LEN, BOS, EOS, src_key_padding_mask=src_pad)
    uncached = greedy_decode(model, src, MAX_LEN, BOS, EOS, src_key_padding_mask=src_pad, use_cache=False)
    assert cached.dtype == np.int64 and cached.shape[0] == 3 and cached.shape[1] <= MAX_LEN
    np.testing.assert_array_equal(cached, uncached)
    assert (cached[:, 0] == BOS).all()
    # every token is the argmax of the full forward's logits at its position (until the row ends)
    logits = model.decode(cached[:, :-1], model.encode(src, src_pad), src_pad)
    alive = np.cumsum(cached[:, :-1] == EOS, axis=1) == 0  # the row had not ended before this position
    np.testing.assert_array_equal(np.where(alive, logits.argmax(-1), EOS), cached[:, 1:])


@examples(0.4)
@given(st.sampled_from(["learned", "sinusoidal", "llama"]), st.integers(1, 3), seeds)
def test_lm_greedy_cached_equals_uncached(kind, prompt_len, seed):
    model = tiny_lm(kind, seed)
    prompt = token_ids(seed, (3, prompt_len))
    cached = generate(model, prompt, MAX_LEN - prompt_len, temperature=0.0)
    uncached = generate(model, prompt, MAX_LEN - prompt_len, temperature=0.0, use_cache=False)
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_array_equal(cached[:, :prompt_len], prompt)
    np.testing.assert_array_equal(model(cached[:, :-1]).argmax(-1)[:, prompt_len - 1:], cached[:, prompt_len:])


def test_greedy_stops_at_eos_and_pads():
    model = tiny_transformer(11)
    src = token_ids(11, (4, 5))
    free = greedy_decode(model, src, MAX_LEN, BOS, EOS)
    eos = int(free[0, 2])  # the token row 0 produces at step 2 becomes the end token
    tokens = greedy_decode(model, src, MAX_LEN, BOS, eos)
    ends = []
    for row, free_row in zip(tokens, free):
        hits = np.flatnonzero(row[1:] == eos)
        end = hits[0] + 1 if hits.size else len(row)  # position of the row's first EOS
        np.testing.assert_array_equal(row[:end + 1], free_row[:end + 1])  # the same tokens up to its end
        assert (row[end:] == eos).all()  # then padding
        ends.append(end)
    assert ends[0] <= 2
    # decoding stops at the step where the last row ends, or at max_len
    assert tokens.shape[1] == (max(ends) + 1 if max(ends) < len(tokens[0]) else MAX_LEN)


def test_greedy_stops_early_when_every_row_ends():
    model = tiny_transformer(12)
    src = token_ids(12, (1, 4))
    free = greedy_decode(model, src, MAX_LEN, BOS, EOS)
    eos = int(free[0, 1])  # the very first prediction ends the only row
    tokens = greedy_decode(model, src, MAX_LEN, BOS, eos)
    np.testing.assert_array_equal(tokens, [[BOS, eos]])
    assert greedy_decode(model, src, 1, BOS, EOS).tolist() == [[BOS]]


def test_decoding_runs_in_eval_mode_and_restores_it():
    model = tiny_transformer(13, dropout=0.5)
    src = token_ids(13, (2, 4))
    model.train()
    first = greedy_decode(model, src, MAX_LEN, BOS, EOS)
    np.testing.assert_array_equal(first, greedy_decode(model, src, MAX_LEN, BOS, EOS, use_cache=False))
    assert all(m.training for m in model.modules())


# ---- beam search --------------------------------------------------------------------------------------------


@examples(0.4)
@given(st.floats(0.0, 1.5), st.booleans(), seeds)
def test_beam_size_one_is_greedy(alpha, padded, seed):
    model = tiny_transformer(seed)
    src = token_ids(seed, (3, 5))
    src_pad = np.arange(5)[None, :] >= np.array([5, 2, 4])[:, None] if padded else None
    tokens, scores = beam_search(model, src, MAX_LEN, BOS, EOS, beam_size=1, length_penalty=alpha,
                                 src_key_padding_mask=src_pad)
    greedy = greedy_decode(model, src, MAX_LEN, BOS, EOS, src_key_padding_mask=src_pad)
    assert tokens.shape[:2] == (3, 1) and scores.shape == (3, 1)
    np.testing.assert_array_equal(tokens[:, 0, :greedy.shape[1]], greedy)
    assert (tokens[:, 0, greedy.shape[1]:] == EOS).all()


@examples(0.4)
@given(st.integers(2, 5), st.floats(0.0, 1.5), seeds)
def test_beam_scores_are_sorted_and_match_the_tokens(beam_size, alpha, seed):
    model = tiny_transformer(seed)
    src = token_ids(seed, (2, 4))
    tokens, scores = beam_search(model, src, 6, BOS, EOS, beam_size=beam_size, length_penalty=alpha)
    assert tokens.dtype == np.int64 and tokens.shape[:2] == (2, beam_size) and (tokens[..., 0] == BOS).all()
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    for b in range(2):
        recomputed = log_prob_score(model, np.repeat(src[b:b + 1], beam_size, 0), tokens[b], alpha)
        assert_close(scores[b], recomputed, F64, "beam scores against a full forward of their tokens")
        ends = np.cumsum(tokens[b, :, 1:] == EOS, axis=1)
        assert ((ends == 0) | (tokens[b, :, 1:] == EOS)).all()  # after EOS only EOS
        assert len({tuple(row) for row in tokens[b]}) == beam_size  # distinct hypotheses


def all_hypotheses(vocab, steps):
    """Every distinct output of `steps` decoding steps: ended at its first EOS (then padded), or not ended."""
    out = []
    for seq in itertools.product(range(vocab), repeat=steps):
        seq = list(seq)
        if EOS in seq:
            end = seq.index(EOS) + 1
            seq = seq[:end] + [EOS] * (steps - end)
        out.append(tuple(seq))
    return sorted(set(out))


@examples(0.25)
@given(st.floats(0.0, 1.5), seeds)
def test_exhaustive_beam_finds_the_best_sequence(alpha, seed):
    """A beam as wide as the number of hypotheses is exact search: it must beat (or tie) greedy."""
    vocab, steps = 4, 3
    model = tiny_transformer(seed, vocab=vocab)
    src = token_ids(seed, (1, 4), vocab)
    hypotheses = np.array([[BOS, *h] for h in all_hypotheses(vocab, steps)])  # (n, steps + 1)
    exact = np.sort(log_prob_score(model, np.repeat(src, len(hypotheses), 0), hypotheses, alpha))[::-1]
    _, scores = beam_search(model, src, steps + 1, BOS, EOS, beam_size=len(hypotheses), length_penalty=alpha)
    assert_close(scores[0], exact, F64, "exhaustive beam scores")
    greedy = greedy_decode(model, src, steps + 1, BOS, EOS)
    greedy_score = log_prob_score(model, src, greedy, alpha)[0]
    assert scores[0, 0] >= greedy_score - CLOSED_FORM
    _, narrow_scores = beam_search(model, src, steps + 1, BOS, EOS, beam_size=2, length_penalty=alpha)
    assert narrow_scores[0, 0] <= scores[0, 0] + CLOSED_FORM


def test_beam_search_fills_missing_hypotheses_with_minus_inf():
    model = tiny_transformer(4, vocab=3)
    tokens, scores = beam_search(model, token_ids(4, (1, 3), 3), 2, BOS, EOS, beam_size=5)  # one step: 3 hypotheses
    assert np.isfinite(scores[0, :3]).all() and np.isneginf(scores[0, 3:]).all()
    assert sorted(tokens[0, :3, 1].tolist()) == [0, 1, 2]


# ---- sampling -------------------------------------------------------------------------------------------------


@examples(0.4)
@given(st.sampled_from(["learned", "sinusoidal", "llama"]), st.sampled_from([0.5, 1.0, 2.0]),
       st.sampled_from([None, 2, 5]), seeds)
def test_sampling_is_reproducible_and_cache_independent(kind, temperature, top_k, seed):
    model = tiny_lm(kind, seed)
    prompt = token_ids(seed, (3, 2))
    args = {"temperature": temperature, "top_k": top_k, "seed": seed}
    first = generate(model, prompt, 6, **args)
    np.testing.assert_array_equal(first, generate(model, prompt, 6, **args))
    np.testing.assert_array_equal(first, generate(model, prompt, 6, use_cache=False, **args))
    assert first.dtype == np.int64 and first.shape == (3, 8)


@examples(0.3)
@given(st.sampled_from(["learned", "llama"]), st.sampled_from([0.3, 1.0, 3.0]), seeds)
def test_top_k_one_is_greedy(kind, temperature, seed):
    model = tiny_lm(kind, seed)
    prompt = token_ids(seed, (3, 2))
    greedy = generate(model, prompt, 7, temperature=0.0)
    np.testing.assert_array_equal(generate(model, prompt, 7, temperature=temperature, top_k=1, seed=seed), greedy)


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.5, None), (2.0, 3)])
def test_sampling_frequencies_follow_the_distribution(temperature, top_k):
    logits = np.array([1.0, -0.5, 2.0, 0.0, 0.7])
    n = 40000
    picks = _pick(np.tile(logits, (n, 1)), temperature, top_k, np.random.default_rng(0), np)
    scaled = logits / temperature
    if top_k is not None:
        scaled = np.where(np.argsort(np.argsort(-scaled)) < top_k, scaled, -np.inf)
    expected = np.exp(scaled - scaled.max())
    expected /= expected.sum()
    freq = np.bincount(picks, minlength=len(logits)) / n
    assert np.abs(freq - expected).max() < 5 * np.sqrt(0.25 / n)  # five standard deviations at most
    assert (freq[expected == 0] == 0).all()


def test_generate_stops_at_eos_and_pads():
    model = tiny_lm("learned", 21)
    prompt = token_ids(21, (3, 2))
    free = generate(model, prompt, 6, temperature=0.0)
    eos = int(free[1, 3])  # row 1's second generated token becomes the end token
    tokens = generate(model, prompt, 6, temperature=0.0, eos_id=eos)
    for row, free_row in zip(tokens, free):
        hits = np.flatnonzero(row[2:] == eos)
        end = hits[0] + 2 if hits.size else len(row)
        np.testing.assert_array_equal(row[:end + 1], free_row[:end + 1])
        assert (row[end:] == eos).all()
    one = generate(model, prompt[:1], 6, temperature=0.0, eos_id=int(free[0, 2]))
    np.testing.assert_array_equal(one, free[:1, :3])  # the only row ends at once: generation stops


def cut_at_eos(free, eos, prompt_len):
    """Each row of a free-running continuation up to its first token among eos, then eos[0] (transformers' pad
    when pad_token_id is unset), cut after the longest row: what generate(eos_id=eos) gives for the same draws."""
    rows, ends = free.copy(), []
    for row in rows:
        hits = np.flatnonzero(np.isin(row[prompt_len:], eos))
        end = prompt_len + hits[0] + 1 if hits.size else len(row)
        row[end:] = eos[0]
        ends.append(end)
    return rows[:, :max(ends)]


@examples(0.3)
@given(st.sampled_from([0.0, 1.0]), st.lists(st.integers(0, 7), min_size=1, max_size=3), seeds)
def test_generate_stops_at_any_of_several_eos_ids(temperature, steps, seed):
    """eos_id=[a, b, ...] (tokens the free run draws at the given steps; steps 6, 7: the last id): each row
    ends at its first token among them and is padded with the first; one id alone is the same as eos_id=a."""
    model, prompt = tiny_lm("learned", seed), token_ids(seed, (3, 2))
    free = generate(model, prompt, 8, temperature=temperature, seed=seed)
    eos = list(dict.fromkeys(int(free[i % 3, 2 + step]) if step < 6 else VOCAB - 1 for i, step in enumerate(steps)))
    got = generate(model, prompt, 8, temperature=temperature, seed=seed, eos_id=eos)
    np.testing.assert_array_equal(got, cut_at_eos(free, eos, 2))
    if len(eos) == 1:
        np.testing.assert_array_equal(got, generate(model, prompt, 8, temperature=temperature, seed=seed,
                                                    eos_id=eos[0]))


# ---- errors -------------------------------------------------------------------------------------------------


def test_decoding_argument_errors():
    model, lm = tiny_transformer(1), tiny_lm("learned", 1)
    src, prompt = token_ids(1, (2, 3)), token_ids(1, (2, 2))
    with pytest.raises(TypeError, match="model"):
        greedy_decode(lm, src, 5, BOS, EOS)
    with pytest.raises(TypeError, match="model"):
        beam_search(lm, src, 5, BOS, EOS)
    with pytest.raises(TypeError, match="model"):
        generate(model, prompt, 3)
    with pytest.raises(ValueError, match="max_len"):
        greedy_decode(model, src, 0, BOS, EOS)
    with pytest.raises(ValueError, match="max_len"):
        greedy_decode(model, src, MAX_LEN + 1, BOS, EOS)
    with pytest.raises(TypeError, match="max_len"):
        beam_search(model, src, 4.0, BOS, EOS)
    with pytest.raises(ValueError, match="bos_id"):
        greedy_decode(model, src, 5, VOCAB, EOS)
    with pytest.raises(TypeError, match="bos_id"):
        greedy_decode(model, src, 5, 0.0, EOS)
    with pytest.raises(ValueError, match="eos_id"):
        beam_search(model, src, 5, BOS, -1)
    with pytest.raises(TypeError, match="use_cache"):
        greedy_decode(model, src, 5, BOS, EOS, use_cache=1)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, src, 5, BOS, EOS, beam_size=0)
    with pytest.raises(ValueError, match="length_penalty"):
        beam_search(model, src, 5, BOS, EOS, length_penalty=-0.1)
    with pytest.raises(TypeError, match="length_penalty"):
        beam_search(model, src, 5, BOS, EOS, length_penalty="0.6")
    with pytest.raises(ValueError, match="src"):
        greedy_decode(model, src[0], 5, BOS, EOS)
    with pytest.raises(ValueError, match="src_key_padding_mask"):
        beam_search(model, src, 5, BOS, EOS, src_key_padding_mask=np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="temperature"):
        generate(lm, prompt, 3, temperature=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        generate(lm, prompt, 3, temperature=float("inf"))
    with pytest.raises(ValueError, match="top_k"):
        generate(lm, prompt, 3, top_k=0)
    with pytest.raises(ValueError, match="top_k"):
        generate(lm, prompt, 3, top_k=VOCAB + 1)
    with pytest.raises(TypeError, match="seed"):
        generate(lm, prompt, 3, seed="1")
    with pytest.raises(ValueError, match="eos_id"):
        generate(lm, prompt, 3, eos_id=VOCAB)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(lm, prompt, MAX_LEN - 1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(lm, prompt, 0)
    with pytest.raises(TypeError, match="prompt"):
        generate(lm, prompt.astype(F64), 3)
    with pytest.raises(ValueError, match="prompt"):
        generate(lm, prompt[:, :0], 3)


def test_cache_errors():
    model, lm = tiny_transformer(2), tiny_lm("learned", 2)
    src, ids = token_ids(2, (2, 3)), token_ids(2, (2, 4))
    memory = model.encode(src)
    with pytest.raises(TypeError, match="cache"):
        model.decode(ids, memory, cache={})
    with pytest.raises(TypeError, match="cache"):
        lm(ids, cache=[])
    cache = KVCache()
    lm(ids, cache=cache)
    with pytest.raises(ValueError, match="ids"):
        lm(token_ids(3, (2, MAX_LEN - 3)), cache=cache)  # positions 4 … 10: past max_len
    with pytest.raises(ValueError, match="key_padding_mask"):
        lm(ids[:, :1], key_padding_mask=np.zeros((2, 1), bool), cache=cache)  # must cover the 5 keys
    with pytest.raises(ValueError, match="cache"):
        lm(ids[:1, :1], cache=cache)  # another batch size
    with pytest.raises(ValueError, match="backward"):
        lm.backward(np.ones((2, 4, VOCAB)))
    with pytest.raises(ValueError, match="index"):
        cache.reorder(np.array([0, 2]))
    with pytest.raises(TypeError, match="index"):
        cache.reorder(np.array([0.0]))
    decode_cache = KVCache()
    model.decode(ids[:, :2], memory, cache=decode_cache)
    with pytest.raises(ValueError, match="tgt"):
        model.decode(token_ids(4, (2, MAX_LEN - 1)), memory, cache=decode_cache)
    with pytest.raises(ValueError, match="key"):
        model.decode(ids[:, 2:3], model.encode(token_ids(5, (2, 5))), cache=decode_cache)  # another memory
    mha = MultiHeadAttention(D, HEADS, seed=0, dtype=F64)
    x = normal(0, (2, 3, D))
    mixed = KVCache()
    mha(x, cache=mixed)
    with pytest.raises(ValueError, match="cross-attention"):
        mha(x, x, cache=mixed)
    with pytest.raises(ValueError, match="backward"):
        mha.backward(np.ones((2, 3, D)))
    windowed = MultiHeadAttention(D, HEADS, window=2, seed=0, dtype=F64)
    with pytest.raises(ValueError, match="window"):
        windowed(x, normal(1, (2, 4, D)), cache=KVCache())
