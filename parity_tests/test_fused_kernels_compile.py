"""The fused kernels (accelerated/cupy/kernels/*.cu) agree with the reference's layer through the
CuPy backend's API: on a CUDA device with CuPy, and on the CPU with the same kernels run by the host
emulator (accelerated/cupy/emulator/, through accelerated.cupy_emulator). That every kernel file
compiles (nvcc for sm_80 and sm_90, NVRTC) is test_kernels_compile.py's; the tolerance is
parity_tests/tolerances.py KERNEL_LAYER_TOL."""

import contextlib
import importlib.util

import numpy as np
import pytest

import reference as R
from accelerated import cupy_emulator as emulated_cupy
from parity_tests.backends import BACKENDS
from parity_tests.tolerances import KERNEL_LAYER_TOL
from reference.arrays import to_numpy

CUPY = BACKENDS["cupy"]
EMULATION_MISSING = emulated_cupy.unavailable_reason()
DTYPES = ("float32", "float16", "bfloat16")
#: (backend, dtype): CuPy on a GPU and the CPU emulator of the same kernels, in every kernel dtype
#: (bfloat16 arrays are ml_dtypes', as in CuPy)
TARGETS = [pytest.param("cupy", dtype, id=f"cupy-{dtype}",
                        marks=pytest.mark.skipif(not CUPY.available, reason=f"no CUDA device / CuPy ({CUPY.skip_reason})"))
           for dtype in DTYPES]
NO_ML_DTYPES = importlib.util.find_spec("ml_dtypes") is None
TARGETS += [pytest.param("emulated-cupy", dtype, id=f"emulated-cupy-{dtype}",
                         marks=[pytest.mark.skipif(EMULATION_MISSING is not None,
                                                   reason=f"CUDA kernels on the CPU emulator: {EMULATION_MISSING}"),
                                pytest.mark.skipif(dtype == "bfloat16" and NO_ML_DTYPES,
                                                   reason="bfloat16 arrays need ml_dtypes (the test extra installs it)")])
            for dtype in ("float32", "float16", "bfloat16")]


@contextlib.contextmanager
def backend(name: str, kernels: tuple):
    """(namespace, fused_kernels launcher module); on the emulator, also checks ``kernels`` were launched."""
    if name == "cupy":
        from accelerated.cupy import fused_kernels

        yield CUPY.rt, fused_kernels
        return
    emulated_cupy.LAUNCHES.clear()
    with emulated_cupy.emulated_cupy() as rt:
        yield rt, emulated_cupy.launcher("fused_kernels")
    launched = {name.rsplit("_", 1)[0] for name in emulated_cupy.LAUNCHES}
    assert set(kernels) <= launched, f"fused kernels {sorted(set(kernels) - launched)} never ran"


def _close(got, want, dtype, what):
    got = to_numpy(got).astype(np.float64)
    scale = max(1.0, float(np.max(np.abs(want))) if np.size(want) else 1.0)
    err = float(np.max(np.abs(got - want))) / scale if np.size(want) else 0.0
    assert err <= KERNEL_LAYER_TOL[dtype], f"{what} ({dtype}): relative error {err:.3g} > {KERNEL_LAYER_TOL[dtype]}"


def _rounded(x, dtype):
    from parity_tests.backends import round_to

    return round_to(x, dtype)


@pytest.mark.parametrize("target,dtype", TARGETS)
@pytest.mark.parametrize("name", ["LayerNorm", "RMSNorm"])
def test_norm_kernels_match_reference(name, target, dtype):
    with backend(target, ("norm_forward", "norm_backward_input", "norm_backward_params")) as (rt, _):
        rng = np.random.default_rng(0)
        x, dy = _rounded(rng.standard_normal((5, 7, 96)), dtype), _rounded(rng.standard_normal((5, 7, 96)), dtype)
        ref, mod = getattr(R, name)(96, dtype=np.float64), getattr(rt, name)(96, dtype=dtype)
        _close(mod(rt.asarray(x, dtype)), ref(x), dtype, f"{name} forward")
        _close(mod.backward(rt.asarray(dy, dtype)), ref.backward(dy), dtype, f"{name} dx")
        _close(mod.weight.grad, ref.weight.grad, dtype, f"{name} dweight")
        if name == "LayerNorm":
            _close(mod.bias.grad, ref.bias.grad, dtype, f"{name} dbias")


@pytest.mark.parametrize("target,dtype", TARGETS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_kernel_matches_reference(smoothing, target, dtype):
    with backend(target, ("cross_entropy_forward", "cross_entropy_backward")) as (rt, _):
        rng = np.random.default_rng(1)
        logits = _rounded(3 * rng.standard_normal((6, 5, 1000)), dtype)
        target_ids = rng.integers(0, 1000, (6, 5))
        target_ids[0, :2] = -100
        ref, mod = R.CrossEntropyLoss(label_smoothing=smoothing), rt.CrossEntropyLoss(label_smoothing=smoothing)
        _close(mod(rt.asarray(logits, dtype), rt.asarray(target_ids)), ref(logits, target_ids), dtype, "loss")
        _close(mod.backward()[0], ref.backward()[0], dtype, "dlogits")


@pytest.mark.parametrize("target,dtype", TARGETS)
@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "silu"])
def test_bias_activation_kernel_matches_reference(activation, target, dtype):
    with backend(target, ("bias_activation_forward", "bias_activation_backward")) as (rt, fused_kernels):
        rng = np.random.default_rng(2)
        x, b, dy = (_rounded(rng.standard_normal(s), dtype) for s in ((9, 64), (64,), (9, 64)))
        act = {"relu": R.ReLU(), "gelu": R.GELU(), "gelu_tanh": R.GELU(approximate="tanh"),
               "silu": R.SiLU()}[activation]
        want = act(x + b)
        dx_want = act.backward(dy)
        _close(fused_kernels.bias_activation_forward(rt.asarray(x, dtype), rt.asarray(b, dtype), activation), want,
               dtype, "y")
        dx, db = fused_kernels.bias_activation_backward(rt.asarray(dy, dtype), rt.asarray(x, dtype),
                                                        rt.asarray(b, dtype), activation)
        _close(dx, dx_want, dtype, "dx")
        _close(db, dx_want.sum(axis=0), dtype, "dbias")


@pytest.mark.parametrize("target,dtype", [t for t in TARGETS if t.id != "emulated-cupy-bfloat16"])
def test_adamw_kernel_matches_reference(target, dtype):
    # not bfloat16 on the stand-in: NumPy's matmul turns Linear's bfloat16 gradients into float32
    with backend(target, ("adamw_step",)) as (rt, _):
        ref_lin, lin = R.Linear(70, 50, seed=5, dtype=np.float64), rt.Linear(70, 50, seed=5, dtype=dtype)
        ref_lin.load_state_dict({k: _rounded(v, dtype) for k, v in ref_lin.state_dict().items()})
        lin.load_state_dict(ref_lin.state_dict())
        ref_opt, opt = R.AdamW(ref_lin.parameters(), lr=0.01), rt.AdamW(lin.parameters(), lr=0.01)
        rng = np.random.default_rng(3)
        for _ in range(3):
            x, dy = _rounded(rng.standard_normal((4, 70)), dtype), _rounded(rng.standard_normal((4, 50)), dtype)
            ref_lin(x), lin(rt.asarray(x, dtype))
            ref_lin.backward(dy), lin.backward(rt.asarray(dy, dtype))
            ref_opt.step(), opt.step()
            ref_opt.zero_grad(), opt.zero_grad()
        for (name, p), q in zip(ref_lin.named_parameters(), lin.parameters()):
            _close(q.data, p.data, dtype, f"AdamW {name}")
        assert opt.state_dict()["state"][0]["step"] == 3
