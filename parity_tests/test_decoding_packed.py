"""accelerated.torch.decoding.pack_for_decoding: the (in, out) copies give the same logits and tokens, are
never used while gradients are tracked, follow every change of the weights, and leave parameters alone."""

import copy
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity_tests.strategies import examples, seeds
from parity_tests.tolerances import CLOSED_FORM, assert_close

torch = pytest.importorskip("torch")

import accelerated.torch as at  # noqa: E402
from accelerated.torch.decoding import pack_for_decoding  # noqa: E402
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
