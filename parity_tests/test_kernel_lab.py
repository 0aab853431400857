"""The kernel lab (accelerated/cupy/lab.py): one flash-attention kernel variant against the NumPy
specification and plain attention, run here on the CPU emulator (its time means nothing; on a GPU
the same code times the kernel with CUDA events)."""

from __future__ import annotations

import pytest

from accelerated import cupy_emulator
from parity_tests.tolerances import KERNEL_LSE_TOL, KERNEL_TOL

REASON = cupy_emulator.unavailable_reason()
needs_emulator = pytest.mark.skipif(REASON is not None, reason=f"CUDA kernels on the CPU emulator: {REASON}")
lab = cupy_emulator.cupy_file("lab")


def test_lab_tolerances_are_the_kernel_tests():
    """accelerated never imports the tests, so the lab keeps its own copy of the table: the same numbers."""
    assert lab.DEFAULT_TOL == KERNEL_TOL
    assert lab.DEFAULT_LSE_TOL == KERNEL_LSE_TOL


def test_tile_arguments():
    assert lab.parse_tiles(["FA_BWD_MMA_BM_D64=32"]) == {"FA_BWD_MMA_BM_D64": 32}
    with pytest.raises(ValueError, match="MACRO=SIZE"):
        lab.parse_tiles(["FA_BWD_MMA_BM_D64"])
    with pytest.raises(ValueError, match="must be one of"):
        lab.parse_tiles(["FA_BWD_MMA_BM_D128=64"])
    info = lab.describe_variant("bwd", "float16", 64, {"FA_BWD_MMA_BM_D64": 32})
    assert info["kernels"] == ["flash_bwd_preprocess_f16_d64", "flash_bwd_f16_d64", "flash_bwd_convert_dq_f16"]
    assert (info["block_q"], info["block_k"], info["file"]) == (32, 64, "flash_attention_bwd.cu")
    assert info["tiles"] == ["FA_BWD_MMA_BM_D64=32 (default 64)"]
    assert lab.describe_variant("fwd", "float32", 128, {})["tiles"] == []
    with pytest.raises(ValueError, match="no kernel of the fwd"):
        lab.describe_variant("fwd", "float16", 64, {"FA_BWD_MMA_BM_D64": 32})  # a backward tile


@needs_emulator
def test_lab_command_line_on_the_emulator(capsys):
    """python -m accelerated.cupy_emulator lab ...: a backward variant with a non-default tile, grouped
    kv heads, causal and key padding, off every block size; it validates and says the time is meaningless."""
    status = cupy_emulator.main(["lab", "--variant", "bwd", "--dtype", "float16", "--head-dim", "64", "--batch", "2",
                                 "--heads", "2", "--kv-heads", "1", "--seq", "40", "--kv-seq", "70", "--causal",
                                 "--padding", "0.3", "--tile", "FA_BWD_MMA_BM_D64=32"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "flash_bwd_f16_d64" in printed and "FA_BWD_MMA_BM_D64=32 (default 64)" in printed
    assert "block_q=32, block_k=64" in printed
    for name in ("dq", "dk", "dv"):
        assert any(line.split()[:1] == [name] and line.rstrip().endswith("ok") for line in printed.splitlines()), printed
    assert "says nothing about a GPU" in printed and printed.rstrip().endswith("result: ok")


@needs_emulator
def test_lab_run_reports_errors_and_fails_beyond_the_tolerance():
    lines = []
    with cupy_emulator.emulated_cupy():
        report = lab.run("fwd", "float32", 32, seq=20, kv_seq=33, heads=2, padding=0.5, seed=3, out=lines.append)
        assert report["ok"] and report["emulated"] and report["time_ms"] is None
        assert report["errors"]["out"]["kernel vs plain"] <= KERNEL_TOL["float32"]
        assert report["errors"]["lse"]["kernel vs spec"] <= KERNEL_LSE_TOL["float32"]
        assert report["variant"]["block_q"] == 16 and report["variant"]["block_k"] == 32
        strict = lab.run("fwd", "float32", 32, seq=20, kv_seq=33, heads=2, padding=0.5, seed=3, tol=0,
                         out=lines.append)
    assert not strict["ok"] and lines[-1] == "result: FAIL"


def test_lab_command_line_refuses_bad_arguments(capsys):
    assert cupy_emulator.main(["bench"]) == 2
    if REASON is None:
        assert cupy_emulator.main(["lab", "--tile", "FA_FWD_MMA_BN_D64=16"]) == 2
        assert "must be one of (32, 64)" in capsys.readouterr().err
