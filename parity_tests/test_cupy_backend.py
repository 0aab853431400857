"""The CuPy backend's namespace factory, run on the CPU with NumPy as the array module.

accelerated/cupy/backend.py builds the backend from the reference (``make_namespace(xp)``).
With ``xp = numpy`` every fused path falls back to the shared reference code, so the derived
classes must compute exactly what the reference computes; this runs without CuPy or a GPU.
The package's __init__ refuses to import without a GPU, so its files are loaded under a
stand-in package name.
"""

import inspect

import numpy as np
import pytest

import reference as R
from accelerated.cupy_emulator import cupy_file


def load_backend():
    """accelerated/cupy/backend.py, imported without running accelerated/cupy/__init__.py."""
    return cupy_file("backend")


@pytest.fixture(scope="module")
def rt():
    return load_backend().make_namespace(np)


def test_same_names_kinds_and_signatures(rt):
    assert rt.__all__ == list(R.__all__)
    for name in R.__all__:
        ref_obj, obj = getattr(R, name), getattr(rt, name)
        assert inspect.isclass(ref_obj) == inspect.isclass(obj), name
        assert inspect.signature(obj) == inspect.signature(ref_obj), name
        assert obj.__module__ == "accelerated.cupy", name
        if inspect.isclass(ref_obj):
            assert issubclass(obj, ref_obj) and obj.__name__ == name
            if hasattr(ref_obj, "forward"):
                assert inspect.signature(obj.forward) == inspect.signature(ref_obj.forward), name


def test_reference_objects_are_untouched(rt):
    for name in R.__all__:
        assert getattr(R, name).__module__.startswith("reference"), name
    assert R.Module.xp is np and R.Linear.__module__ == "reference.linear"


def test_module_subclasses_have_xp(rt):
    for name in R.__all__:
        obj = getattr(rt, name)
        if inspect.isclass(obj) and issubclass(obj, R.Module):
            assert obj.__dict__["xp"] is np, name


def build(ns, seed=3, dtype=None):
    return ns.EncoderLayer(16, 4, 32, dropout=0.1, activation="gelu", norm_first=True, seed=seed,
                           dtype=dtype or np.float64)


def test_construction_state_dict_and_adoption(rt):
    ref, mod = build(R), build(rt)
    assert list(mod.state_dict()) == list(ref.state_dict())
    for key, value in ref.state_dict().items():
        np.testing.assert_array_equal(mod.state_dict()[key], value)
    backend = load_backend()
    for _, m in mod.named_modules():  # every submodule is re-classed into the backend's class
        assert type(m).__module__ == "accelerated.cupy", type(m)
        assert m.xp is np
    assert type(mod.self_attn) is rt.MultiHeadAttention
    assert isinstance(mod.self_attn.attention, backend.FlashScaledDotProductAttention)


def test_forward_backward_equal_reference_exactly(rt):
    ref, mod = build(R), build(rt)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 16))
    dy = rng.standard_normal((2, 5, 16))
    pad = np.array([[False] * 5, [False, False, False, True, True]])
    y_ref = ref(x, src_key_padding_mask=pad)
    y = mod(x, src_key_padding_mask=pad)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(mod.backward(dy), ref.backward(dy))
    grads = dict(mod.named_parameters())
    for name, p in ref.named_parameters():
        np.testing.assert_array_equal(grads[name].grad, p.grad, err_msg=name)


@pytest.mark.parametrize("name", ["LayerNorm", "RMSNorm"])
def test_norms_fall_back_to_reference(rt, name):
    ref, mod = getattr(R, name)(8, dtype=np.float32), getattr(rt, name)(8, dtype=np.float32)
    x = np.random.default_rng(1).standard_normal((3, 4, 8)).astype(np.float32)
    np.testing.assert_array_equal(mod(x), ref(x))
    np.testing.assert_array_equal(mod.backward(x), ref.backward(x))
    np.testing.assert_array_equal(mod.weight.grad, ref.weight.grad)
    with pytest.raises(TypeError, match="x"):
        mod(x.astype(np.float64))


def test_loss_and_adamw_equal_reference(rt):
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((4, 7))
    target = np.array([1, -100, 6, 0])
    ref_loss, loss = R.CrossEntropyLoss(label_smoothing=0.1), rt.CrossEntropyLoss(label_smoothing=0.1)
    assert loss(logits, target) == ref_loss(logits, target)
    np.testing.assert_array_equal(loss.backward()[0], ref_loss.backward()[0])
    ref_lin, lin = R.Linear(3, 2, seed=5), rt.Linear(3, 2, seed=5)
    ref_opt, opt = R.AdamW(ref_lin.parameters(), lr=0.1), rt.AdamW(lin.parameters(), lr=0.1)
    for _ in range(3):
        for m, o in ((ref_lin, ref_opt), (lin, opt)):
            m(np.ones((2, 3), np.float32))
            m.backward(np.ones((2, 2), np.float32))
            o.step()
            o.zero_grad()
    for (name, p), q in zip(ref_lin.named_parameters(), lin.parameters()):
        np.testing.assert_array_equal(q.data, p.data, err_msg=name)


def test_functions(rt):
    np.testing.assert_array_equal(rt.causal_mask(4), R.causal_mask(4))
    np.testing.assert_array_equal(rt.padding_mask([2, 3]), R.padding_mask([2, 3]))
    q = np.random.default_rng(3).standard_normal((2, 2, 3, 4))
    np.testing.assert_array_equal(rt.scaled_dot_product_attention(q, q, q, is_causal=True),
                                  R.scaled_dot_product_attention(q, q, q, is_causal=True))
    assert isinstance(rt.asarray([1.0, 2.0]), np.ndarray)
    assert rt.WarmupInverseSqrt(512).lr_at(10) == R.WarmupInverseSqrt(512).lr_at(10)


def test_greedy_decode_equals_reference(rt):
    kwargs = dict(d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32,
                  dropout=0.0)
    params = inspect.signature(R.Transformer).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in params}
    vocab = {k: 11 for k in ("src_vocab_size", "tgt_vocab_size", "vocab_size") if k in params}
    ref = R.Transformer(**vocab, **kwargs, seed=4, dtype=np.float64)
    mod = rt.Transformer(**vocab, **kwargs, seed=4, dtype=np.float64)
    src = np.array([[3, 4, 5, 2]], dtype=np.int64)
    np.testing.assert_array_equal(rt.greedy_decode(mod, src, 6, 1, 2), R.greedy_decode(ref, src, 6, 1, 2))


def test_half_dtype_casts_the_float32_weights(rt):
    mod = rt.LayerNorm(8, dtype="float16")
    assert mod.weight.dtype == np.float16 and mod.dtype == np.float16
    lin32, lin16 = rt.Linear(4, 3, seed=1), rt.Linear(4, 3, seed=1, dtype="float16")
    np.testing.assert_array_equal(lin16.weight.data, lin32.weight.data.astype(np.float16))
    y = lin16(np.ones((2, 4), np.float16))
    assert y.dtype == np.float16


def test_key_padding_detection():
    attention = cupy_file("attention")
    pad = np.array([[True, True, False], [True, False, False]]).reshape(2, 1, 1, 3)
    np.testing.assert_array_equal(attention.key_padding_only(pad, np, 2, 4, 5, 3), pad.reshape(2, 3))
    additive = np.where(pad, 0.0, -np.inf)
    np.testing.assert_array_equal(attention.key_padding_only(additive, np, 2, 4, 5, 3), pad.reshape(2, 3))
    assert attention.key_padding_only(additive + 0.5, np, 2, 4, 5, 3) is None  # a bias: fallback
    assert attention.key_padding_only(np.ones((5, 3), bool), np, 2, 4, 5, 3) is None  # per query: fallback
