"""The CuPy backend's CUDA kernels: they compile (nvcc), the launcher's helpers, and GPU parity with the reference."""

from __future__ import annotations

import importlib.util
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parity_tests.strategies import normal, seeds
from parity_tests.tolerances import FORWARD_TOL, GRADIENT_TOL, assert_close
from reference.attention import ScaledDotProductAttention

ROOT = Path(__file__).resolve().parents[1]
KERNEL_DIR = ROOT / "accelerated" / "cupy" / "kernels"
ARCHS = ("sm_80", "sm_90")


def _load_by_path(name: str, filename: str):
    """accelerated/cupy/<filename> by path: the package's __init__ needs a GPU, these helpers do not."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "accelerated" / "cupy" / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _load_launcher():
    return _load_by_path("rosetta_flash_attention_kernels", "flash_attention_kernels.py")


fa = _load_launcher()
nvrtc = _load_by_path("rosetta_nvrtc", "nvrtc.py")


# ------------------------------------------------------------------------------------------------
# nvcc compilation (no GPU needed)
# ------------------------------------------------------------------------------------------------

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: the CUDA kernels cannot be compiled here")


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """compile(file, arch) -> CompletedProcess, each (file, arch) compiled once per session."""
    cache = {}
    out_dir = tmp_path_factory.mktemp("cuda_objects")

    def compile_(path: Path, arch: str):
        key = (path.name, arch)
        if key not in cache:
            cache[key] = subprocess.run(
                [NVCC, "-c", "--std=c++17", f"-arch={arch}", "-Xptxas", "-v", str(path),
                 "-o", str(out_dir / f"{path.stem}_{arch}.o")],
                capture_output=True, text=True, timeout=300, check=False,
            )
        return cache[key]

    return compile_


def _kernel_files():
    return sorted(KERNEL_DIR.glob("*.cu"))


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path", _kernel_files(), ids=lambda p: p.name)
def test_kernel_file_compiles(compiled, path, arch):
    result = compiled(path, arch)
    assert result.returncode == 0, f"nvcc -arch={arch} {path.name} failed:\n{result.stderr[-4000:]}"


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_flash_attention_entry_points_compiled(compiled, arch):
    """ptxas compiles exactly the kernels the launcher names, none spilling registers to local memory."""
    result = compiled(fa.KERNEL_FILE, arch)
    assert result.returncode == 0, result.stderr[-4000:]
    entries = re.findall(r"Compiling entry function '(\w+)'", result.stderr)
    assert sorted(entries) == sorted(fa.all_kernel_names())
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", result.stderr)
    assert spills and all(s == ("0", "0") for s in spills), result.stderr[-4000:]


# ------------------------------------------------------------------------------------------------
# NVRTC compilation, exactly as cupy.RawModule compiles at run time (no GPU, no CuPy needed)
# ------------------------------------------------------------------------------------------------

def _nvrtc_missing():
    if nvrtc.load_nvrtc() is None:
        return "no NVRTC library (pip install nvidia-cuda-nvrtc; the test extra does on Linux x86-64)"
    if nvrtc.cuda_include_dir() is None:
        return "no CUDA headers (cuda_fp16.h) found (pip install nvidia-cuda-runtime, or set CUDA_PATH)"
    return None


needs_nvrtc = pytest.mark.skipif(_nvrtc_missing() is not None, reason=str(_nvrtc_missing()))
NVRTC_ARCHS = ("compute_80", "compute_90")


@pytest.fixture(scope="session")
def nvrtc_ptx():
    """ptx(file, arch) -> the PTX NVRTC makes of it with the launchers' options, once per session."""
    cache = {}

    def ptx(path: Path, arch: str) -> str:
        if (path.name, arch) not in cache:
            cache[(path.name, arch)] = nvrtc.compile_ptx(path.read_text(), path.name, arch=arch)
        return cache[(path.name, arch)]

    return ptx


@needs_nvrtc
@pytest.mark.parametrize("arch", NVRTC_ARCHS)
@pytest.mark.parametrize("path", _kernel_files(), ids=lambda p: p.name)
def test_kernel_file_compiles_under_nvrtc(nvrtc_ptx, path, arch):
    """Every file compiles with NVRTC and the run-time options, and defines each extern "C" kernel it declares."""
    ptx = nvrtc_ptx(path, arch)
    entries = set(re.findall(r"^\.visible \.entry (\w+)\(", ptx, re.MULTILINE))
    assert entries, f"NVRTC made no kernels of {path.name}"
    if path == fa.KERNEL_FILE:
        assert entries == set(fa.all_kernel_names())


@needs_nvrtc
def test_nvrtc_errors_carry_the_log():
    with pytest.raises(nvrtc.NvrtcError, match="undefined_name"):
        nvrtc.compile_ptx('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }', "broken.cu")


def test_compile_options_name_the_cuda_headers(monkeypatch, tmp_path):
    (tmp_path / "cuda_fp16.h").write_text("// a stand-in\n")
    monkeypatch.setenv(nvrtc.INCLUDE_ENV, str(tmp_path))
    nvrtc.cuda_include_dir.cache_clear()
    try:
        assert nvrtc.compile_options() == ("--std=c++17", f"-I{KERNEL_DIR}", f"-I{tmp_path}")
    finally:
        nvrtc.cuda_include_dir.cache_clear()


def test_compile_options_skip_a_folder_without_the_headers(monkeypatch, tmp_path):
    monkeypatch.setenv(nvrtc.INCLUDE_ENV, str(tmp_path))  # empty: not the CUDA headers
    nvrtc.cuda_include_dir.cache_clear()
    try:
        assert nvrtc.cuda_include_dir() != tmp_path
    finally:
        nvrtc.cuda_include_dir.cache_clear()


# ------------------------------------------------------------------------------------------------
# Launcher helpers (pure Python)
# ------------------------------------------------------------------------------------------------

def test_kernel_names_match_the_source():
    source = fa.KERNEL_FILE.read_text()
    tags = {"float": "f32", "__half": "f16", "__nv_bfloat16": "bf16"}
    defined = set()
    for macro, ctype, tag, d in re.findall(r"^FA_DEFINE_(MMA|SIMT)\((\w+), (\w+), (\d+), \d+\)", source, re.MULTILINE):
        assert tags[ctype] == tag
        defined |= {f"flash_fwd_{tag}_d{d}", f"flash_bwd_{tag}_d{d}", f"flash_bwd_preprocess_{tag}_d{d}"}
        assert (macro == "SIMT") == (tag == "f32"), "tensor cores for half types, FMA for float32"
    defined |= {f"flash_bwd_convert_dq_{tag}" for _, tag in re.findall(r"^FA_DEFINE_CONVERT\((\w+), (\w+)\)", source, re.MULTILINE)}
    assert defined == set(fa.all_kernel_names())
    assert len(fa.all_kernel_names()) == 3 * 3 * 3 + 2


@pytest.mark.parametrize("element_type", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_kernel_name(element_type, head_dim):
    tag = fa.DTYPE_TAGS[element_type]
    assert fa.kernel_name("fwd", element_type, head_dim) == f"flash_fwd_{tag}_d{head_dim}"
    assert fa.kernel_name("bwd_preprocess", element_type, head_dim) == f"flash_bwd_preprocess_{tag}_d{head_dim}"
    assert fa.kernel_name("bwd", element_type, head_dim) == f"flash_bwd_{tag}_d{head_dim}"
    assert fa.convert_kernel_name(element_type) == (None if tag == "f32" else f"flash_bwd_convert_dq_{tag}")


def test_kernel_name_rejects_unknown():
    with pytest.raises(ValueError, match="head_dim"):
        fa.kernel_name("fwd", "float16", 96)
    with pytest.raises(ValueError, match="head_dim"):
        fa.kernel_name("fwd", "float16", True)
    with pytest.raises(TypeError, match="element_type"):
        fa.kernel_name("fwd", "float64", 64)
    with pytest.raises(ValueError, match="kind"):
        fa.kernel_name("forward", "float16", 64)


@given(B=st.integers(1, 5), H=st.integers(1, 8), L=st.integers(0, 1000), element_type=st.sampled_from(sorted(fa.DTYPE_TAGS)))
def test_forward_grid_covers_every_row(B, H, L, element_type):
    grid, block = fa.forward_grid(B, H, L, element_type)
    bm = fa.FORWARD_BLOCK_M[element_type]
    assert block == (128, 1, 1)
    assert grid[1] == B * H and grid[2] == 1
    assert grid[0] * bm >= L and (grid[0] - 1) * bm < max(L, 1)


def test_grids_keep_batch_times_heads_within_cuda_grid_y():
    assert fa.forward_grid(65535, 1, 10, "float16")[0][1] == 65535
    with pytest.raises(ValueError, match=r"batch × heads must be <= 65535.*got 4097 × 16 = 65552"):
        fa.forward_grid(4097, 16, 10, "float16")
    with pytest.raises(ValueError, match="batch × heads"):
        fa.backward_grid(65536, 1, 10, 64, "float16")
    big = np.empty((0,), dtype=np.float16)  # supports() reads shapes and dtypes only
    shape_q, shape_kv = (4096, 16, 1, 64), (4096, 16, 1, 64)  # 65536 (batch, head) pairs: one too many
    as_array = lambda shape: np.lib.stride_tricks.as_strided(big, shape=shape, strides=(0,) * 4)
    assert not fa.supports(as_array(shape_q), as_array(shape_kv), as_array(shape_kv))  # → the unfused path
    assert fa.supports(as_array((4095, 16, 1, 64)), as_array((4095, 16, 1, 64)), as_array((4095, 16, 1, 64)))


@given(B=st.integers(1, 5), Hkv=st.integers(1, 8), S=st.integers(0, 1000), head_dim=st.sampled_from(fa.HEAD_DIMS),
       element_type=st.sampled_from(sorted(fa.DTYPE_TAGS)))
def test_backward_grids_cover_every_key_and_row(B, Hkv, S, head_dim, element_type):
    grid, block = fa.backward_grid(B, Hkv, S, head_dim, element_type)
    bn = fa.backward_block(head_dim, element_type)
    assert grid[1] == B * Hkv and block == (128, 1, 1)
    assert grid[0] * bn >= S and (grid[0] - 1) * bn < max(S, 1)
    grid, block = fa.preprocess_grid(B, Hkv, S)
    assert grid[0] * block[0] // 32 >= B * Hkv * S
    grid, block = fa.convert_grid(S)
    assert grid[0] * block[0] >= S


def _mma_backward_query_blocks():
    """{head dim: BM}, the query rows per tile of the tensor-core backward (FA_DEFINE_MMA's last argument)."""
    source = fa.KERNEL_FILE.read_text()
    found = {}
    for ctype, d, bm in re.findall(r"^FA_DEFINE_MMA\((\w+), \w+, (\d+), (\d+)\)", source, re.MULTILINE):
        assert found.setdefault(int(d), int(bm)) == int(bm), "f16 and bf16 share the tiling"
    assert sorted(found) == list(fa.HEAD_DIMS)
    return found


def test_backward_block_fits_shared_memory():
    for d in fa.HEAD_DIMS:  # float32: bwd_simt's fp32 tiles
        bn = fa.backward_block(d, "float32")
        shared = 4 * (4 * bn * (d + 1) + 2 * bn * (bn + 1) + 2 * bn) + bn
        assert shared <= 48 * 1024, (d, shared)
        assert 128 % bn == 0 and d % (128 // bn) == 0
    bn = fa.MMA_BACKWARD_BLOCK
    for d, bm in _mma_backward_query_blocks().items():  # float16 / bfloat16: bwd_mma's 16-bit tiles
        assert fa.backward_block(d, "float16") == fa.backward_block(d, "bfloat16") == bn == 16 * (128 // 32)
        # K, V (bn rows), Q, dO (bm rows) with rows of d + 8; dS (bm × (bn + 8)); lse, δ; a flag
        shared = 2 * (2 * bn * (d + 8) + 2 * bm * (d + 8) + bm * (bn + 8)) + 8 * bm + 4
        assert shared <= 48 * 1024, (d, bm, shared)
        assert bm % 16 == 0 and 4 % (bm // 16) == 0 and (bm * d // 8) % 128 == 0, (d, bm)


def test_check_shapes():
    assert fa.check_shapes((2, 4, 5, 64), (2, 2, 7, 64), (2, 2, 7, 16), (2, 7)) == (2, 4, 2, 5, 7, 64, 16)
    with pytest.raises(ValueError, match="query"):
        fa.check_shapes((4, 5, 64), (2, 2, 7, 64), (2, 2, 7, 64))
    with pytest.raises(ValueError, match="head_dim"):
        fa.check_shapes((2, 4, 5, 130), (2, 2, 7, 130), (2, 2, 7, 130))
    with pytest.raises(ValueError, match="head_dim"):
        fa.check_shapes((2, 4, 5, 64), (2, 2, 7, 64), (2, 2, 7, 256))
    with pytest.raises(ValueError, match="key"):
        fa.check_shapes((2, 4, 5, 64), (3, 2, 7, 64), (3, 2, 7, 64))
    with pytest.raises(ValueError, match="key"):
        fa.check_shapes((2, 4, 5, 64), (2, 3, 7, 64), (2, 3, 7, 64))
    with pytest.raises(ValueError, match="value"):
        fa.check_shapes((2, 4, 5, 64), (2, 2, 7, 64), (2, 2, 6, 64))
    with pytest.raises(ValueError, match="key_valid"):
        fa.check_shapes((2, 4, 5, 64), (2, 2, 7, 64), (2, 2, 7, 64), (2, 5))


@pytest.mark.parametrize("head_dim, padded", [(1, 32), (8, 32), (32, 32), (33, 64), (64, 64), (80, 128), (128, 128)])
def test_padded_head_dim(head_dim, padded):
    assert fa.padded_head_dim(head_dim) == padded


def test_supports():
    def arr(shape, dtype):
        return np.zeros(shape, dtype=dtype)

    assert fa.supports(arr((1, 2, 3, 16), "float16"), arr((1, 1, 4, 16), "float16"), arr((1, 1, 4, 8), "float16"))
    assert not fa.supports(arr((1, 2, 3, 16), "float64"), arr((1, 1, 4, 16), "float64"), arr((1, 1, 4, 16), "float64"))
    assert not fa.supports(arr((1, 2, 3, 16), "float32"), arr((1, 1, 4, 16), "float16"), arr((1, 1, 4, 16), "float32"))
    assert not fa.supports(arr((2, 3, 16), "float32"), arr((1, 4, 16), "float32"), arr((1, 4, 16), "float32"))
    assert not fa.supports(arr((1, 2, 3, 192), "float32"), arr((1, 1, 4, 192), "float32"), arr((1, 1, 4, 192), "float32"))


def test_resolve_scale_and_element_type():
    assert fa.resolve_scale(None, 64) == 0.125
    assert fa.resolve_scale(2, 64) == 2.0
    with pytest.raises(ValueError, match="scale"):
        fa.resolve_scale(math.inf, 64)
    with pytest.raises(TypeError, match="scale"):
        fa.resolve_scale("0.5", 64)
    assert fa.element_type_of(np.dtype(np.float16)) == "float16"
    assert fa.element_type_of(np.dtype(np.uint16), "bfloat16") == "bfloat16"
    with pytest.raises(TypeError, match="query"):
        fa.element_type_of(np.dtype(np.float64))
    with pytest.raises(TypeError, match="query"):
        fa.element_type_of(np.dtype(np.float32), "bfloat16")


# ------------------------------------------------------------------------------------------------
# GPU parity with the reference (runs only where CuPy and a CUDA device are usable)
# ------------------------------------------------------------------------------------------------

def _gpu_skip_reason():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() == 0:
            return "no CUDA device / CuPy: no CUDA device"
    except Exception as error:  # noqa: BLE001  ImportError, or CUDA not usable (no driver, old driver)
        return f"no CUDA device / CuPy: {error}"
    return None


_GPU_SKIP = _gpu_skip_reason()
needs_gpu = pytest.mark.skipif(_GPU_SKIP is not None, reason=_GPU_SKIP or "")


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def _from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def _to_device(x64: np.ndarray, element_type: str):
    """(device array, the float64 values it holds)."""
    import cupy

    if element_type == "bfloat16":
        bits = _to_bf16_bits(x64.astype(np.float32))
        return cupy.asarray(bits), _from_bf16_bits(bits).astype(np.float64)
    host = x64.astype(element_type)
    return cupy.asarray(host), host.astype(np.float64)


def _to_host(x, element_type: str) -> np.ndarray:
    host = x.get()
    return _from_bf16_bits(host).astype(np.float64) if element_type == "bfloat16" else host.astype(np.float64)


def _tol_key(element_type):
    return "bfloat16" if element_type == "bfloat16" else np.dtype(element_type)


@needs_gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("head_dim", [32, 64, 128, 20])  # 20: zero-padded to 32
@pytest.mark.parametrize("element_type", ["float32", "float16", "bfloat16"])
@settings(max_examples=4)
@given(
    B=st.integers(1, 3), Hkv=st.integers(1, 2), group=st.sampled_from([1, 2, 3]),
    L=st.integers(1, 150), S=st.integers(1, 150), padding=st.booleans(), seed=seeds,
)
def test_flash_attention_matches_reference(element_type, head_dim, causal, B, Hkv, group, L, S, padding, seed):
    import cupy

    H = Hkv * group
    rng = np.random.default_rng(seed)
    q64, k64, v64 = normal(seed, (B, H, L, head_dim)), normal(seed + 1, (B, Hkv, S, head_dim)), normal(seed + 2, (B, Hkv, S, head_dim))
    d_out64 = normal(seed + 3, (B, H, L, head_dim))
    keep = None
    if padding:
        keep = rng.random((B, S)) < 0.7
        keep[0, :] = False  # batch 0: every row fully masked
    q, qh = _to_device(q64, element_type)
    k, kh = _to_device(k64, element_type)
    v, vh = _to_device(v64, element_type)
    d_out, doh = _to_device(d_out64, element_type)
    mask = None if keep is None else cupy.asarray(keep)
    etype = element_type if element_type == "bfloat16" else None

    out, lse = fa.flash_attention_forward(q, k, v, causal=causal, key_valid=mask, element_type=etype)
    dq, dk, dv = fa.flash_attention_backward(q, k, v, out, lse, d_out, causal=causal, key_valid=mask,
                                             element_type=etype)
    cupy.cuda.runtime.deviceSynchronize()

    sdpa = ScaledDotProductAttention()
    attn_mask = None if keep is None else keep[:, None, None, :]  # (B, 1, 1, S) True = may attend
    expected = sdpa(qh, kh, vh, attn_mask=attn_mask, is_causal=causal, enable_gqa=True)  # (B, H, L, d)
    edq, edk, edv = sdpa.backward(doh)
    what = f"{element_type} d={head_dim} causal={causal} B={B} H={H} Hkv={Hkv} L={L} S={S} padding={padding}"
    key = _tol_key(element_type)
    assert_close(_to_host(out, element_type), expected, key, f"out {what}", table=FORWARD_TOL)
    for name, got, want in (("dq", dq, edq), ("dk", dk, edk), ("dv", dv, edv)):
        assert_close(_to_host(got, element_type), want, key, f"{name} {what}", table=GRADIENT_TOL)

    # lse: the log-sum-exp of the allowed scaled scores, −inf exactly on fully masked rows
    scores = (qh @ np.swapaxes(np.repeat(kh, group, axis=1), -1, -2)) / math.sqrt(head_dim)  # (B, H, L, S)
    allowed = np.ones((B, H, L, S), dtype=bool)
    if keep is not None:
        allowed &= keep[:, None, None, :]
    if causal:
        allowed &= np.tril(np.ones((L, S), dtype=bool))
    masked = np.where(allowed, scores, -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        top = np.max(masked, axis=-1, keepdims=True)
        want_lse = np.where(allowed.any(-1), (np.log(np.sum(np.exp(masked - np.where(np.isfinite(top), top, 0)), -1))
                                              + np.where(np.isfinite(top), top, 0)[..., 0]), -np.inf)
    got_lse = lse.get().astype(np.float64)
    rows_dead = ~allowed.any(-1)
    assert np.all(np.isneginf(got_lse[rows_dead]))
    assert np.allclose(got_lse[~rows_dead], want_lse[~rows_dead], atol=1e-2 if element_type != "float32" else 1e-4)
    assert np.all(_to_host(out, element_type)[rows_dead] == 0)
    assert np.all(_to_host(dq, element_type)[rows_dead] == 0)
