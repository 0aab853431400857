"""The CuPy backend against the float64 reference, on every layer case of the gradient-check suite.

Each case's reference module is copied, adopted into the backend (its classes become the
backend's, its parameters move to the device in the tested dtype) and run on the same inputs
rounded to that dtype; outputs, input gradients and every parameter gradient must agree within
parity_tests/tolerances.py. The reference runs on the same rounded inputs and parameters.

The same harness runs in CI on the CPU twice: with the backend factory fed NumPy
(``derived-numpy``: the harness and the shared code), and with a stand-in ``cupy`` whose kernels
run in the host emulator of the CUDA execution model (``emulated-cupy``: the fused routes,
launchers and kernels themselves, see accelerated/cupy/emulator/). The ``cupy`` cases need
CuPy and a CUDA device.
"""

import contextlib
import copy

import numpy as np
import pytest

from accelerated import cupy_emulator as emulated_cupy
from parity_tests.backends import BACKENDS, backend_dtype_params, round_to
from parity_tests.tolerances import (
    ERROR_FLOOR,
    FLOAT16_UNIT,
    FORWARD_TOL,
    GRADIENT_SCALE_FLOOR,
    GRADIENT_TOL,
    assert_close,
)
from reference.gradcheck_suite import _cases

CASES = {case.name: case for case in _cases()}


def derived_numpy_namespace():
    backend = emulated_cupy.cupy_file("backend")  # backend.py without the package's GPU check
    return backend.make_namespace(np, "parity_tests.derived_numpy")


@contextlib.contextmanager
def namespace_for(backend_name: str):
    if backend_name == "emulated-cupy":
        with emulated_cupy.emulated_cupy() as rt:
            yield rt
    elif backend_name == "derived-numpy":
        yield derived_numpy_namespace()
    else:
        yield BACKENDS["cupy"].rt


EMULATION_MISSING = emulated_cupy.unavailable_reason()
#: float16 only for the fused paths: bfloat16 arrays need ml_dtypes, and float32 is the derived-numpy run's
PARAMS = [pytest.param("derived-numpy", dtype, id=f"derived-numpy-{dtype}") for dtype in ("float64", "float32")]
PARAMS += [pytest.param("emulated-cupy", dtype, id=f"emulated-cupy-{dtype}",
                        marks=pytest.mark.skipif(EMULATION_MISSING is not None,
                                                 reason=f"CUDA kernels on the CPU emulator: {EMULATION_MISSING}"))
           for dtype in ("float32", "float16")]
PARAMS += [pytest.param("cupy", p.values[1], id=p.id, marks=p.marks) for p in backend_dtype_params("cupy")]


def _run(module, inputs, kwargs, before_forward, cotangent_seed=0):
    """Forward, a fixed random cotangent, backward: (outputs, cotangents, input grads, param grads)."""
    if before_forward is not None:
        before_forward()
    outputs = module(*inputs, **kwargs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    rng = np.random.default_rng(cotangent_seed)
    cotangents = [rng.standard_normal(tuple(y.shape)) for y in outputs]
    return outputs, cotangents


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


@pytest.mark.parametrize("backend_name,dtype", PARAMS)
@pytest.mark.parametrize("case_name", list(CASES))
def test_backend_matches_reference(case_name, backend_name, dtype):
    with namespace_for(backend_name) as rt:
        check_case(rt, case_name, dtype)


def check_case(rt, case_name: str, dtype: str) -> None:
    case = CASES[case_name]
    floats = [isinstance(x, np.ndarray) and x.dtype.kind == "f" for x in case.inputs]
    inputs = [round_to(x, dtype) if f else x for x, f in zip(case.inputs, floats)]

    reference = copy.deepcopy(case.module)
    for p in reference.parameters():
        p.data = round_to(p.data, dtype)
    backend = copy.deepcopy(reference)
    storage = rt.asarray(np.zeros(1), dtype=dtype).dtype
    rt.deriver.adopt(backend, storage)

    def reseed(module):  # the dropout case re-seeds its own module; find the copy's twin by class
        if case.before_forward is None:
            return None
        return lambda: [m.manual_seed(7) for m in module.modules() if hasattr(m, "manual_seed")]

    want, cotangents = _run(reference, inputs, case.kwargs, reseed(reference))
    reference.zero_grad()
    grad_out = cotangents[0] if len(cotangents) == 1 else tuple(cotangents)
    want_grads = _as_tuple(reference.backward(grad_out))

    backend_inputs = [rt.asarray(x, dtype=dtype) if f else rt.asarray(x) for x, f in zip(inputs, floats)]
    backend_kwargs = {k: (rt.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in case.kwargs.items()}
    got, _ = _run(backend, backend_inputs, backend_kwargs, reseed(backend))
    backend.zero_grad()
    got_grad_out = tuple(rt.asarray(g, dtype=dtype) for g in cotangents)
    got_grads = _as_tuple(backend.backward(got_grad_out[0] if len(got_grad_out) == 1 else got_grad_out))

    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(rt.to_numpy(a).astype(np.float64), b, dtype, f"{case_name}: output {i}", FORWARD_TOL)
    scale = max([float(np.max(np.abs(g))) for g in want_grads if g is not None]
                + [float(np.max(np.abs(p.grad))) for p in reference.parameters() if p.grad is not None] + [0.0])
    floor = max(GRADIENT_SCALE_FLOOR * scale, ERROR_FLOOR)
    for i, (a, b) in enumerate(zip(got_grads, want_grads)):
        assert (a is None) == (b is None), f"{case_name}: input {i} gradient presence differs"
        if b is not None:
            assert_close(rt.to_numpy(a).astype(np.float64), b, dtype, f"{case_name}: d input {i}", GRADIENT_TOL,
                         floor)
    got_params = dict(backend.named_parameters())
    for name, p in reference.named_parameters():
        assert_close(rt.to_numpy(got_params[name].grad).astype(np.float64), p.grad, dtype,
                     f"{case_name}: d {name}", GRADIENT_TOL, floor)


#: gradcheck-suite cases whose CuPy forward and backward take fused kernels (the others share the reference's code)
FUSED_CASES = {
    "LayerNorm": ("norm_forward", "norm_backward_input", "norm_backward_params"),
    "RMSNorm": ("norm_forward", "norm_backward_input", "norm_backward_params"),
    "scaled_dot_product_attention (causal)": ("flash_fwd", "flash_bwd_preprocess", "flash_bwd"),
    "scaled_dot_product_attention (grouped kv)": ("flash_fwd", "flash_bwd_preprocess", "flash_bwd"),
    "MultiHeadAttention (self, causal, padding)": ("flash_fwd", "flash_bwd"),
    "EncoderLayer (pre-norm, rmsnorm)": ("flash_fwd", "flash_bwd", "norm_forward", "norm_backward_input",
                                         "bias_activation_forward", "bias_activation_backward"),
    **{f"FeedForward ({activation})": ("bias_activation_forward", "bias_activation_backward")
       for activation in ("relu", "gelu", "gelu_tanh", "silu")},
}


@pytest.mark.skipif(EMULATION_MISSING is not None, reason=f"CUDA kernels on the CPU emulator: {EMULATION_MISSING}")
@pytest.mark.parametrize("case_name", list(FUSED_CASES))
def test_emulated_cases_take_the_fused_kernels(case_name):
    """The emulated-cupy parity above is about the kernels: these cases must really launch them."""
    emulated_cupy.LAUNCHES.clear()
    with emulated_cupy.emulated_cupy() as rt:
        check_case(rt, case_name, "float16")
    launched = {name.rsplit("_", 2)[0] if name.startswith("flash") else name.rsplit("_", 1)[0]
                for name in emulated_cupy.LAUNCHES}
    missing = [kernel for kernel in FUSED_CASES[case_name] if kernel not in launched]
    assert not missing, f"{case_name}: kernels {missing} never launched (launched: {sorted(emulated_cupy.LAUNCHES)})"


@pytest.mark.skipif(EMULATION_MISSING is not None, reason=f"CUDA kernels on the CPU emulator: {EMULATION_MISSING}")
@pytest.mark.parametrize("call, stacked", [("self", 3), ("kv", 2), ("qkv", 0)])
def test_emulated_attention_stacks_the_projections_of_a_shared_input(call, stacked):
    """m(x) multiplies x by [W_q; W_k; W_v] once, m(q, memory) memory by [W_k; W_v]; separate key and
    value arrays keep three products. Gradients: the parity cases above (self, cross, decoder layers)."""
    import reference as R

    rng = np.random.default_rng(0)
    x, memory = rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 5, 8))
    with emulated_cupy.emulated_cupy() as rt:
        module = copy.deepcopy(R.MultiHeadAttention(8, 2, seed=0, dtype=np.float32))
        rt.deriver.adopt(module, np.dtype(np.float32))
        args = {"self": (x,), "kv": (x, memory), "qkv": (x, memory, memory)}[call]
        y = module(*[rt.asarray(a, dtype=np.float32) for a in args])
        record = module.__dict__["_stacked"]
        assert (0 if record is None else len(record[2])) == stacked
        grads = _as_tuple(module.backward(rt.asarray(np.ones(tuple(y.shape)), dtype=np.float32)))
        assert len(grads) == len(args) and all(tuple(g.shape) == a.shape for g, a in zip(grads, args))


def _training_model(ns, model: str, dtype):
    """The tiny models of the emulated training test: the paper's encoder-decoder, GPT and Llama presets."""
    if model == "transformer":
        return ns.Transformer(11, 11, 16, 2, 32, 1, 1, dropout=0.0, max_len=16, seed=3, dtype=dtype)
    if model == "gpt":
        return ns.DecoderLM.gpt(11, 16, 2, 32, 2, dropout=0.0, max_len=16, seed=3, dtype=dtype)
    return ns.DecoderLM.llama(11, 16, 4, 32, 2, num_kv_heads=2, max_len=16, seed=3, dtype=dtype)


@pytest.mark.skipif(EMULATION_MISSING is not None, reason=f"CUDA kernels on the CPU emulator: {EMULATION_MISSING}")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("model", ["transformer", "gpt", "llama"])
def test_emulated_training_steps_follow_the_reference(model, dtype):
    """Three training steps of a whole model on the CuPy backend (fused kernels, key padding; Llama's grouped
    kv heads and rotary): the losses follow the float64 reference's. In float16 the encoder-decoder used
    to reach NaN at step 3: AdamW kept half-precision moments, v ≈ 10⁻³g² flushed to zero, and an
    embedding row that got no gradient in the next batch moved by m/ε. Moments and master weights are
    float32 now."""
    import reference as R

    rng = np.random.default_rng(0)
    batches = [tuple(rng.integers(0, 11, shape) for shape in ((3, 6), (3, 5), (3, 5))) for _ in range(3)]
    pad = np.zeros((3, 6), bool)
    pad[1, 4:] = True
    lr = 1e-2

    def train(ns, convert, model_dtype):
        network = _training_model(ns, model, model_dtype)
        loss_fn, optimizer = ns.CrossEntropyLoss(label_smoothing=0.1), ns.AdamW(network.parameters(), lr=lr)
        losses = []
        for src, tgt, out in batches:
            if model == "transformer":
                logits = network(convert(src), convert(tgt), src_key_padding_mask=convert(pad),
                                 memory_key_padding_mask=convert(pad))
            else:  # a language model reads src and predicts its next tokens (out's first 5, padded with tgt)
                logits = network(convert(src), key_padding_mask=convert(pad))
                out = np.concatenate([out, tgt[:, :1]], axis=1)
            losses.append(float(loss_fn(logits, convert(out))))
            optimizer.zero_grad()
            network.backward(loss_fn.backward()[0])
            optimizer.step()
        return losses, {name: ns.to_numpy(p.data).astype(np.float64) for name, p in network.named_parameters()}

    want_losses, want_params = train(R, lambda x: x, np.float64)
    emulated_cupy.LAUNCHES.clear()
    with emulated_cupy.emulated_cupy() as rt:
        losses, params = train(rt, rt.asarray, dtype)
    assert_close(np.array(losses), np.array(want_losses), dtype, "losses of three steps", FORWARD_TOL)
    for name, want in want_params.items():  # Adam moves an entry by at most about lr per step
        assert np.all(np.abs(params[name] - want) <= 3 * lr * len(batches)), name
    launched = {name.rsplit("_", 1)[0] for name in emulated_cupy.LAUNCHES}
    fused = {"adamw_step", "cross_entropy_forward", "cross_entropy_backward", "norm_forward", "norm_backward_input"}
    if model != "llama":  # SwiGLU is gated: the reference's code
        fused |= {"bias_activation_forward", "bias_activation_backward"}
    assert fused <= launched, sorted(fused - launched)
    assert any(name.startswith("flash_fwd") for name in launched) and any(name.startswith("flash_bwd") for name in launched)


@pytest.mark.skipif(EMULATION_MISSING is not None, reason=f"CUDA kernels on the CPU emulator: {EMULATION_MISSING}")
def test_emulated_float16_adamw_state_dict_keeps_float32_moments():
    """A float16 model's AdamW keeps float32 moments through state_dict/load_state_dict (cast to float16
    they would flush these small second moments, v ≈ 1e-9, to zero). The float32 master weights are not
    in the state dict: a resumed run restarts them from the float16 parameters, so it stays within one
    float16 unit of the uninterrupted run."""
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((4, 6)), 1e-3 * rng.standard_normal((4, 5))

    def step(rt, linear, optimizer):
        linear(rt.asarray(x, dtype="float16"))
        optimizer.zero_grad()
        linear.backward(rt.asarray(dy, dtype="float16"))
        optimizer.step()

    with emulated_cupy.emulated_cupy() as rt:
        straight, resumed = (rt.Linear(6, 5, seed=2, dtype="float16") for _ in range(2))
        first, second = rt.AdamW(straight.parameters(), lr=1e-3), rt.AdamW(resumed.parameters(), lr=1e-3)
        for _ in range(2):
            step(rt, straight, first)
        resumed.load_state_dict(straight.state_dict())
        second.load_state_dict(first.state_dict())
        for index, entry in first.state.items():
            for key in ("exp_avg", "exp_avg_sq"):
                assert second.state[index][key].dtype == np.float32
                np.testing.assert_array_equal(second.state[index][key], entry[key])
        assert np.all(second.state[0]["exp_avg_sq"] > 0)
        for _ in range(2):
            step(rt, straight, first)
            step(rt, resumed, second)
        for a, b in zip(straight.parameters(), resumed.parameters()):
            np.testing.assert_allclose(rt.to_numpy(b.data).astype(np.float64), rt.to_numpy(a.data).astype(np.float64),
                                       rtol=FLOAT16_UNIT, atol=0)


#: bfloat16 on the stand-in (ml_dtypes' bfloat16, the dtype CuPy uses): the cases that never feed one
#: Linear's output into another layer. NumPy's matmul promotes ml_dtypes bfloat16 to float32 (CuPy's
#: matmul keeps bfloat16), so there the next layer's dtype check refuses the float32 activations.
BF16_EMULATED_CASES = [name for name in CASES if not name.startswith(
    ("FeedForward", "MultiHeadAttention", "LatentAttention", "EncoderLayer", "DecoderLayer", "Encoder", "Decoder",
     "Transformer"))]


@pytest.mark.skipif(EMULATION_MISSING is not None, reason=f"CUDA kernels on the CPU emulator: {EMULATION_MISSING}")
@pytest.mark.parametrize("case_name", BF16_EMULATED_CASES)
def test_emulated_bfloat16_matches_reference(case_name):
    pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes (the test extra installs it)")
    with emulated_cupy.emulated_cupy() as rt:
        check_case(rt, case_name, "bfloat16")
