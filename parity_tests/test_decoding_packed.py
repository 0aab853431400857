"""accelerated.torch.decoding.pack_for_decoding: the (in, out) copies give the same logits and tokens, are
never used while gradients are tracked, follow every change of the weights, and leave parameters alone."""

import copy
import pickle
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity_tests.strategies import examples, seeds
from parity_tests.tolerances import CLOSED_FORM, assert_close

torch = pytest.importorskip("torch")

import accelerated.torch as at  # noqa: E402
from accelerated.torch.decoding import pack_for_decoding  # noqa: E402
from accelerated.torch import attention  # noqa: E402
from accelerated.torch.linear import packed_weights  # noqa: E402

F64 = np.float64
VOCAB, D, HEADS, D_FF, MAX_LEN = 13, 8, 2, 16, 12


def tiny_lm(kind, seed, num_kv_heads=1):
    if kind == "llama":  # RMSNorm, SwiGLU, rotary positions, grouped kv heads, no biases, untied head
        return at.DecoderLM.llama(VOCAB, D, HEADS, D_FF, 2, num_kv_heads=num_kv_heads, max_len=MAX_LEN, seed=seed,
                                  dtype=torch.float64)
    return at.DecoderLM.gpt(VOCAB, D, HEADS, D_FF, 2, dropout=0.0, max_len=MAX_LEN, seed=seed,
                            dtype=torch.float64)  # biases, tied head


def ids(seed, shape):
    return torch.as_tensor(np.random.default_rng(seed).integers(0, VOCAB, shape))


def packed_modules(model):
    return [m for m in model.modules() if "_packed" in m.__dict__]


@examples(0.4)
@given(st.sampled_from(["gpt", "llama"]), st.sampled_from([1, 2]), st.integers(1, 5), seeds)
def test_packed_decoding_gives_the_same_logits_and_tokens(kind, num_kv_heads, prompt_len, seed):
    model = tiny_lm(kind, seed, num_kv_heads)
    prompt = ids(seed, (2, prompt_len))
    expected = at.generate(model, prompt, 4, temperature=0.0)
    with torch.no_grad():
        full = model(expected)  # (B, N, V)  unpacked
    pack_for_decoding(model)
    assert packed_modules(model)  # every Linear and each attention's stacked q/k/v
    with torch.no_grad():
        assert_close(model(expected).numpy(), full.numpy(), F64, f"{kind} packed logits", table={
            np.dtype(F64): CLOSED_FORM})  # the same products summed in another order by BLAS
    assert torch.equal(at.generate(model, prompt, 4, temperature=0.0), expected)
    cache = at.KVCache()
    with torch.no_grad():
        step = model(expected[:, :prompt_len], cache=cache)
        assert_close(step.numpy(), full[:, :prompt_len].numpy(), F64, "cached prompt", table={
            np.dtype(F64): CLOSED_FORM})
        for t in range(prompt_len, expected.shape[1]):
            assert_close(model(expected[:, t:t + 1], cache=cache).numpy(), full[:, t:t + 1].numpy(), F64,
                         f"cached step {t}", table={np.dtype(F64): CLOSED_FORM})


def test_the_copies_are_stored_in_out_and_leave_parameters_and_state_dict_alone():
    model = tiny_lm("gpt", 0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    parameters = [id(p) for p in model.parameters()]
    pack_for_decoding(model)
    assert [id(p) for p in model.parameters()] == parameters
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    with torch.no_grad():
        head = packed_weights(model.lm_head, (model.lm_head.weight,))
        attention = model.decoder.layers[0].self_attn
        stacked = packed_weights(attention, attention._self_projection_parameters())
    assert head[0].t().is_contiguous() and torch.equal(head[0], model.lm_head.weight)  # (V, d) over (d, V)
    assert stacked[0].shape == (3 * D, D) and stacked[0].t().is_contiguous()
    assert torch.equal(stacked[1], torch.cat([attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias]))
    assert packed_weights(model.lm_head, (model.lm_head.weight,)) is None  # gradients tracked: never used
    pack_for_decoding(model, pack=False)
    assert not packed_modules(model)


def test_training_ignores_the_copies_and_a_step_retires_them():
    model, twin = tiny_lm("llama", 1, 2), tiny_lm("llama", 1, 2)
    pack_for_decoding(model)
    x, target = ids(1, (2, 6)), ids(2, (12,))
    for m in (model, twin):  # the same step on both: gradients come from the parameters, not the copies
        loss = torch.nn.functional.cross_entropy(m(x).reshape(-1, VOCAB), target)
        loss.backward()
        with torch.no_grad():
            for p in m.parameters():
                p -= 0.5 * p.grad  # in place: a new version of every weight
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p.grad, q.grad)
    with torch.no_grad():
        assert_close(model(x).numpy(), twin(x).numpy(), F64, "after the step", table={np.dtype(F64): CLOSED_FORM})
        cache, twin_cache = at.KVCache(), at.KVCache()  # the cached step reads the stacked q/k/v copy
        assert_close(model(x, cache=cache).numpy(), twin(x, cache=twin_cache).numpy(), F64, "cached, after the step",
                     table={np.dtype(F64): CLOSED_FORM})
    assert not packed_modules(model)  # each stale copy was dropped when first met


def test_load_state_dict_and_to_retire_the_copies():
    model, other = tiny_lm("gpt", 3), tiny_lm("gpt", 4)
    x = ids(3, (1, 5))
    pack_for_decoding(model)
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert_close(model(x, cache=at.KVCache()).numpy(), other(x).numpy(), F64, "after load_state_dict",
                     table={np.dtype(F64): CLOSED_FORM})
    assert not packed_modules(model)
    pack_for_decoding(model)
    model.to(torch.float32)
    assert at.generate(model, x, 3, temperature=0.0).shape == (1, 8)  # float32 throughout: no float64 copy read
    assert not packed_modules(model)


def test_copies_are_neither_pickled_nor_deep_copied():
    model = pack_for_decoding(tiny_lm("gpt", 5))
    assert not packed_modules(copy.deepcopy(model))
    assert not packed_modules(pickle.loads(pickle.dumps(model)))


@examples(0.3)
@given(st.sampled_from([1, 2]), st.booleans(), st.booleans(), st.sampled_from(["query", "cached key", "weight"]),
       st.integers(0, 1), seeds)
def test_a_nan_reaches_the_output_of_the_lean_cached_step(num_kv_heads, rotary, packed, where, row, seed):
    """The cached one-token step attends without the fused kernel's NaN fix-up (no row of it can be fully
    masked): a NaN in the new token, in a cached key / value or in a weight must still reach its output rows."""
    m = at.MultiHeadAttention(D, HEADS, num_kv_heads=num_kv_heads, rotary=rotary, seed=seed, dtype=torch.float64)
    x = torch.as_tensor(np.random.default_rng(seed).standard_normal((2, 4, D)))  # (B, N, D)
    with torch.no_grad():
        expected = m(x, is_causal=True)[:, 3]  # (B, D)  the last position, uncached
        if where == "cached key":
            x[row, 1, 0] = float("nan")  # an earlier token: its key and value are read from the cache
        elif where == "query":
            x[row, 3, 0] = float("nan")  # the new token
        else:
            m.q_proj.weight[row, 0] = float("nan")  # one query feature of one head, every batch row
        if packed:
            pack_for_decoding(m)
        cache = at.KVCache()
        m(x[:, :3], is_causal=True, cache=cache)
        with mock.patch.object(attention, "_one_query", wraps=attention._one_query) as lean:
            y = m(x[:, 3:], is_causal=True, cache=cache)[:, 0]  # (B, D)  the one-token step
    assert lean.call_count == 1  # the step took the lean path (and only the step: the prompt has 3 queries)
    nan_rows = torch.isnan(y).any(dim=-1).tolist()
    assert nan_rows == ([True, True] if where == "weight" else [r == row for r in range(2)])
    for r in range(2):
        if not nan_rows[r]:  # the other row is untouched: as the uncached forward
            assert_close(y[r].numpy(), expected[r].numpy(), F64, f"finite row {r}", table={
                np.dtype(F64): CLOSED_FORM})


def test_the_cache_appends_into_room_without_touching_keys_handed_out_before():
    m = at.MultiHeadAttention(D, HEADS, seed=0, dtype=torch.float64).eval()
    x = torch.as_tensor(np.random.default_rng(0).standard_normal((2, 6, D)))
    cache, handed = at.KVCache(), []
    with torch.no_grad():
        for t in range(6):  # one token a step, as decoding: each append after the first writes into room
            m(x[:, t:t + 1], is_causal=True, cache=cache)
            keys, values = cache._entries[id(m)][1:3]
            handed.append((keys, keys.clone(), values.clone()))
        cache.reorder(torch.tensor([1, 0]))  # beam search: fresh tensors, appended to by copying again
        m(x[:, :1], is_causal=True, cache=cache)
    for keys, kept, _ in handed:
        assert torch.equal(keys, kept)  # later steps wrote past them only
    full = m.k_proj(x).reshape(2, 6, HEADS, D // HEADS).transpose(1, 2)  # (B, H, 6, d)  every key at once
    assert_close(handed[-1][1].numpy(), full.detach().numpy(), F64, "appended keys", table={
        np.dtype(F64): CLOSED_FORM})  # one row at a time against six at once: BLAS may sum in another order
    assert torch.equal(cache._entries[id(m)][1][:, :, :6], handed[-1][1][[1, 0]])
