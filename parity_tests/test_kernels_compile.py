"""The CuPy backend's CUDA kernels: they compile (nvcc), the launcher's helpers, and GPU parity with the reference."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity_tests.strategies import examples, normal, seeds
from parity_tests.tolerances import FLASH_LSE_ATOL, FORWARD_TOL, GRADIENT_TOL, assert_close
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


def _kernel_files():
    return sorted(KERNEL_DIR.glob("*.cu"))


def _tile_variant_sets() -> list:
    """Tile overrides ({"fwd": {macro: size}, "bwd": {...}}) that together cover every allowed size
    other than the default: set i takes each macro's i-th non-default size."""
    sets = []
    for prefix, tile in fa.TILES.items():
        for d, (default, allowed) in tile.sizes.items():
            for i, size in enumerate(x for x in allowed if x != default):
                while len(sets) <= i:
                    sets.append({"fwd": {}, "bwd": {}})
                sets[i][tile.kind][fa.tile_macro(prefix, d)] = size
    return sets


TILE_VARIANT_SETS = _tile_variant_sets()
TILE_VARIANT_ARCH = "sm_80"


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """compile(file, arch, defines={}) -> CompletedProcess of nvcc -c (with -D<macro>=<size> per define).

    Every kernel file for every arch, and the flash-attention files with each tile variant set, start
    at once on a pool as wide as the machine; each is compiled once per session."""
    out_dir = tmp_path_factory.mktemp("cuda_objects")
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
    futures = {}

    def submit(path: Path, arch: str, defines=None):
        key = (path.name, arch, tuple(sorted((defines or {}).items())))
        if key not in futures:
            flags = [f"-D{name}={value}" for name, value in (defines or {}).items()]
            futures[key] = pool.submit(
                subprocess.run,
                [NVCC, "-c", "--std=c++17", f"-arch={arch}", "-Xptxas", "-v", *flags, str(path),
                 "-o", str(out_dir / f"{path.stem}_{arch}_{len(futures)}.o")],
                capture_output=True, text=True, timeout=300, check=False)
        return futures[key]

    for path in _kernel_files():
        for arch in ARCHS:
            submit(path, arch)
    for variant in TILE_VARIANT_SETS:
        for kind, defines in variant.items():
            if defines:
                submit(fa.KERNEL_FILES[kind], TILE_VARIANT_ARCH, defines)
    yield lambda path, arch, defines=None: submit(path, arch, defines).result()
    pool.shutdown(cancel_futures=True)


def _defined_in(path: Path) -> set:
    """The launcher's kernel names that ``path`` (one of fa.KERNEL_FILES) must define."""
    return {name for name in fa.all_kernel_names() if fa.kernel_file(name) == path}


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
    every = []
    for path in fa.KERNEL_FILES.values():
        result = compiled(path, arch)
        assert result.returncode == 0, result.stderr[-4000:]
        entries = re.findall(r"Compiling entry function '(\w+)'", result.stderr)
        assert sorted(entries) == sorted(_defined_in(path)), path.name
        every += entries
        spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", result.stderr)
        assert spills and all(s == ("0", "0") for s in spills), result.stderr[-4000:]
    assert sorted(every) == sorted(fa.all_kernel_names())


@needs_nvcc
@pytest.mark.parametrize("kind", ["fwd", "bwd"])
@pytest.mark.parametrize("index", range(len(TILE_VARIANT_SETS)))
def test_flash_attention_tile_variants_compile(compiled, kind, index):
    """Every tile size the lab may choose (fa.TILES, other than the defaults) compiles for sm_80: the
    static asserts hold, ptxas finds the static shared memory within 48 KB, and nothing spills."""
    defines = TILE_VARIANT_SETS[index][kind]
    if not defines:
        pytest.skip(f"no {kind} tile has a {index + 1}th non-default size")
    result = compiled(fa.KERNEL_FILES[kind], TILE_VARIANT_ARCH, defines)
    assert result.returncode == 0, f"nvcc {defines}:\n{result.stderr[-4000:]}"
    assert sorted(re.findall(r"Compiling entry function '(\w+)'", result.stderr)) == sorted(_defined_in(fa.KERNEL_FILES[kind]))
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", result.stderr)
    assert spills and all(x == ("0", "0") for x in spills), result.stderr[-4000:]


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
    """ptx(file, arch) -> the PTX NVRTC makes of it with the launchers' options, once per session (every
    file and arch started at once on a thread pool: the NVRTC calls release the GIL)."""
    nvrtc.load_nvrtc(), nvrtc.cuda_include_dir()  # the cached look-ups, once, before the threads
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
    futures = {(path.name, arch): pool.submit(nvrtc.compile_ptx, path.read_text(), path.name, arch=arch)
               for path in _kernel_files() for arch in NVRTC_ARCHS}
    yield lambda path, arch: futures[(path.name, arch)].result()
    pool.shutdown(cancel_futures=True)


@needs_nvrtc
@pytest.mark.parametrize("arch", NVRTC_ARCHS)
@pytest.mark.parametrize("path", _kernel_files(), ids=lambda p: p.name)
def test_kernel_file_compiles_under_nvrtc(nvrtc_ptx, path, arch):
    """Every file compiles with NVRTC and the run-time options, and defines each extern "C" kernel it declares."""
    ptx = nvrtc_ptx(path, arch)
    entries = set(re.findall(r"^\.visible \.entry (\w+)\(", ptx, re.MULTILINE))
    assert entries, f"NVRTC made no kernels of {path.name}"
    if path in fa.KERNEL_FILES.values():
        assert entries == _defined_in(path)


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
    tags = {"float": "f32", "__half": "f16", "__nv_bfloat16": "bf16"}
    defined = set()
    for kind, path in fa.KERNEL_FILES.items():
        source, found = path.read_text(), set()
        for pass_, impl, ctype, tag, d in re.findall(r"^FA_DEFINE_(FWD|BWD)_(MMA|SIMT)\((\w+), (\w+), (\d+)\)",
                                                     source, re.MULTILINE):
            assert pass_.lower() == kind and tags[ctype] == tag, (path.name, ctype, tag)
            assert (impl == "SIMT") == (tag == "f32"), "tensor cores for half types, FMA for float32"
            found |= {f"flash_fwd_{tag}_d{d}"} if kind == "fwd" else {f"flash_bwd_{tag}_d{d}", f"flash_bwd_preprocess_{tag}_d{d}"}
        found |= {f"flash_bwd_convert_dq_{tag}" for _, tag in re.findall(r"^FA_DEFINE_CONVERT\((\w+), (\w+)\)", source, re.MULTILINE)}
        assert found == _defined_in(path), path.name
        defined |= found
    assert defined == set(fa.all_kernel_names())
    assert len(fa.all_kernel_names()) == 3 * 3 * 3 + 2


def test_tile_defaults_are_the_sources():
    """fa.TILES' defaults are the #ifndef defaults of the kernel files (what they compile to alone)."""
    for prefix, tile in fa.TILES.items():
        source = fa.KERNEL_FILES[tile.kind].read_text()
        for d, (default, allowed) in tile.sizes.items():
            macro = fa.tile_macro(prefix, d)
            found = re.findall(rf"^#ifndef {macro}\n#define {macro} (\d+)\n#endif$", source, re.MULTILINE)
            assert found == [str(default)], (macro, found)
            assert default in allowed and fa.default_tile(prefix, d) == default
        assert f"{prefix}_D##D" in source, f"{prefix}_D<d> is not what the entry points instantiate"


def test_tiles_and_kernel_files():
    assert fa.check_tiles({"FA_FWD_MMA_BN_D64": 32}) == {"FA_FWD_MMA_BN_D64": 32}
    assert fa.check_tiles(None) == {}
    with pytest.raises(ValueError, match="must be one of"):
        fa.check_tiles({"FA_FWD_MMA_BN_D128": 64})  # two stages of 64 × 136 would exceed 48 KB
    with pytest.raises(ValueError, match="tile macro"):
        fa.check_tiles({"FA_FWD_MMA_BM_D64": 64})
    with pytest.raises(ValueError, match="must be one of"):
        fa.check_tiles({"FA_BWD_SIMT_BN_D32": True})
    assert fa.backward_block(64, "float32", {"FA_BWD_SIMT_BN_D64": 16}) == 16
    assert fa.backward_block(64, "float32", {"FA_BWD_SIMT_BN_D32": 16}) == 32  # another head dim's
    assert fa.backward_block(64, "float16", {"FA_BWD_MMA_BM_D64": 16}) == fa.MMA_BACKWARD_BLOCK
    assert fa.backward_grid(1, 2, 100, 64, "float32", {"FA_BWD_SIMT_BN_D64": 16})[0] == (7, 2, 1)
    assert fa.kernel_file("flash_fwd_f16_d64") == fa.KERNEL_FILES["fwd"]
    assert fa.kernel_file("flash_bwd_convert_dq_bf16") == fa.KERNEL_FILES["bwd"]
    with pytest.raises(ValueError, match="flash_fwd"):
        fa.kernel_file("norm_forward_f32")
    source = nvrtc.source_with_defines(fa.KERNEL_FILES["fwd"], {"FA_FWD_MMA_BN_D64": 32})
    assert "#define FA_FWD_MMA_BN_D64 32\n" in source and source.endswith(fa.KERNEL_FILES["fwd"].read_text())
    assert nvrtc.source_with_defines(fa.KERNEL_FILES["fwd"], {}) == fa.KERNEL_FILES["fwd"].read_text()


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


def test_every_allowed_tile_fits_shared_memory():
    """The allowed sizes of fa.TILES, by the kernels' own shared-memory sums and shape rules (the
    static asserts say the same in the sources; the nvcc test above compiles every one)."""
    for d in fa.HEAD_DIMS:
        for bn in fa.TILES["FA_BWD_SIMT_BN"].sizes[d][1]:  # float32: bwd_simt's fp32 tiles, BM = BN
            shared = 4 * (4 * bn * (d + 1) + 2 * bn * (bn + 1) + 2 * bn) + bn
            assert shared <= 48 * 1024, (d, bn, shared)
            assert 128 % bn == 0 and d % (128 // bn) == 0
        assert fa.backward_block(d, "float32") == fa.default_tile("FA_BWD_SIMT_BN", d)
        bn = fa.MMA_BACKWARD_BLOCK
        assert fa.backward_block(d, "float16") == fa.backward_block(d, "bfloat16") == bn == 16 * (128 // 32)
        for bm in fa.TILES["FA_BWD_MMA_BM"].sizes[d][1]:  # float16 / bfloat16: bwd_mma's 16-bit tiles
            # K, V (bn rows), Q, dO (bm rows) with rows of d + 8; dS (bm × (bn + 8)); lse, δ; a flag
            shared = 2 * (2 * bn * (d + 8) + 2 * bm * (d + 8) + bm * (bn + 8)) + 8 * bm + 4
            assert shared <= 48 * 1024, (d, bm, shared)
            assert bm % 16 == 0 and 4 % (bm // 16) == 0 and (bm * d // 8) % 128 == 0, (d, bm)
            assert (d // (4 // (bm // 16))) % 16 == 0, (d, bm)  # dQ columns per warp: whole ldmatrix.x4 pairs
        for bn_fwd in fa.TILES["FA_FWD_MMA_BN"].sizes[d][1]:  # fwd_mma: two K and two V stages, 16-bit
            assert 2 * 2 * bn_fwd * (d + 8) * 2 <= 48 * 1024 and 2 * bn_fwd >= 64 and bn_fwd % 16 == 0, (d, bn_fwd)
            assert bn_fwd % (128 // (d // 8)) == 0, (d, bn_fwd)  # copy_tile_async: whole passes of the block


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
@examples(0.2)
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
    assert np.allclose(got_lse[~rows_dead], want_lse[~rows_dead], atol=FLASH_LSE_ATOL[key])
    assert np.all(_to_host(out, element_type)[rows_dead] == 0)
    assert np.all(_to_host(dq, element_type)[rows_dead] == 0)
