"""The benchmark suite (rosetta.bench): FLOP formulas, the JSON schema, a tiny `cpu` run; GPU parts skip."""

import json
import sys

import pytest

from parity_tests.tolerances import FEW_ROUNDINGS
from rosetta.bench import common
from rosetta.bench.__main__ import main as bench_main


def test_attention_flops():
    assert common.attention_flops(128, 1024, 64) == 4 * 128 * 1024**2 * 64
    assert common.attention_flops(128, 1024, 64, causal=True) == 2 * 128 * 1024**2 * 64
    assert common.attention_flops(2, 8, 4, backward=True) == pytest.approx(3.5 * 4 * 2 * 64 * 4, rel=FEW_ROUNDINGS)


def test_transformer_step_flops_matches_parameter_count():
    pytest.importorskip("torch")
    import accelerated.torch as rt

    d, ff, le, ld, v, b, s = 32, 64, 2, 1, 11, 3, 5
    flops = common.transformer_step_flops(d, ff, le, ld, v, b, s, s)
    model = rt.Transformer(v, v, d, 4, ff, le, ld, dropout=0.0, seed=0)
    matmul = sum(p.numel() for name, p in model.named_parameters()
                 if name.endswith("weight") and p.ndim == 2 and "embedding" not in name)
    assert flops["dense"] == 6 * matmul * b * s
    assert flops["attention"] == 12 * b * d * (le * s * s + ld * 2 * s * s)
    assert common.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert common.peak_tflops("NVIDIA H100 80GB HBM3", "tf32") == 494.0
    assert common.peak_tflops("AMD EPYC", "bf16") is None


def test_validate_names_the_missing_key():
    document = common.record("cpu", "cmd", "cpu", {}, [])
    assert common.validate(document) is document
    del document["versions"]["cupy"]
    with pytest.raises(ValueError, match="cupy"):
        common.validate(document)
    with pytest.raises(ValueError, match="results"):
        common.validate({k: v for k, v in document.items() if k != "results"})


def test_tiny_cpu_run_writes_valid_json(tmp_path):
    pytest.importorskip("torch")
    assert bench_main(["cpu", "--steps", "2", "--warmup", "1", "--threads", "1", "--batch-size", "8",
                       "--no-profile", "--out", str(tmp_path)]) == 0
    document = common.validate(json.loads((tmp_path / "cpu.json").read_text()))
    assert document["suite"] == "cpu" and document["device"]["kind"] == "cpu"
    assert document["versions"]["numpy"] and document["versions"]["torch"]
    assert {r["backend"] for r in document["results"]} == {"numpy", "torch"}
    for row in document["results"]:
        assert row["median_ms"] > 0 and row["reps"] == 2 and row["ratio_reference_over_torch"] > 0
    assert (tmp_path / "cpu.png").stat().st_size > 0


def test_rosetta_bench_delegates(tmp_path, capsys):
    pytest.importorskip("torch")
    from rosetta.cli import main

    assert main(["bench", "cpu", "--steps", "1", "--warmup", "0", "--threads", "1", "--batch-size", "4",
                 "--no-profile", "--out", str(tmp_path)]) == 0
    assert "ref/torch" in capsys.readouterr().out


def test_training_needs_a_gpu_without_config_cpu(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CPU refusal does not apply")
    assert bench_main(["training", "--out", str(tmp_path)]) == 2
    assert "needs a GPU" in capsys.readouterr().err


def test_attention_without_gpu_says_why(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: this checks the reasons given without one")
    assert bench_main(["attention", "--seq-lens", "16", "--head-dims", "64", "--dtypes", "float32",
                       "--causal", "no", "--numpy-batch-heads", "2", "--warmup", "0", "--reps", "1",
                       "--out", str(tmp_path)]) == 0
    document = common.validate(json.loads((tmp_path / "attention.json").read_text()))
    status = {r["implementation"]: r["status"] for r in document["results"]}
    assert status["torch-sdpa"].startswith("unavailable: no CUDA device")
    assert status["numpy-reference"] == "ok"


def test_gpu_attention_run(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (the GPU benchmark)")
    assert bench_main(["attention", "--seq-lens", "256", "--head-dims", "64", "--dtypes", "float16",
                       "--implementations", "torch-sdpa,torch-plain", "--warmup", "1", "--reps", "2",
                       "--out", str(tmp_path)]) == 0
    document = common.validate(json.loads((tmp_path / "attention.json").read_text()))
    assert all(r["tflops"] > 0 for r in document["results"])


def test_dispatch_counts_fewer_kernels_than_the_baseline_and_no_graph_break():
    """The `dispatch` suite at one layer a side: accelerated.torch launches fewer kernels per training
    step than torch.nn.Transformer (stacked q/k/v projections), does not read the device again for a
    batch it has checked (test_torch_models.py counts the two reads of a fresh batch), and torch.compile sees the model as two graphs (the token check's read, then the whole model)."""
    pytest.importorskip("torch")
    from rosetta.bench import dispatch

    cfg = {**dispatch.CONFIG, "num_encoder_layers": 1, "num_decoder_layers": 1}
    document = dispatch.run(warmup=1, reps=2, cfg=cfg)
    rows = {(r["backend"], r["precision"]): r for r in document["results"]}
    assert set(rows) == {(b, p) for b, p in dispatch.ROWS} | {("accelerated.cupy", "fp32")}
    for precision in ("fp32", "bf16"):
        ours, base = rows["accelerated.torch", precision], rows["torch.nn.Transformer", precision]
        assert ours["kernels"] < base["kernels"], (precision, ours["kernels_by_op"], base["kernels_by_op"])
        assert ours["host_syncs"] == 0  # one batch, reused: its id ranges were read in the warm-up step
    assert rows["accelerated.torch", "fp32"]["graph_breaks"] == 0
    cupy_row = rows["accelerated.cupy", "fp32"]
    if cupy_row["status"] == "ok":  # the host emulator is there (g++): every fused kernel counted
        launched = {op.split(":")[1].rsplit("_", 1)[0] for op in cupy_row["kernels_by_op"] if op.startswith("kernel:")}
        assert {"adamw_step", "norm_forward", "cross_entropy_forward", "bias_activation_forward"} <= launched
        assert 0 < cupy_row["fused_kernels"] < cupy_row["kernels"]
    assert rows["torch.nn.Transformer", "fp32"]["graph_breaks"] == 0  # the measure sees what it should


def test_dispatch_cli_writes_json_and_png(tmp_path):
    pytest.importorskip("torch")
    assert bench_main(["dispatch", "--reps", "1", "--no-compile-check", "--out", str(tmp_path)]) == 0
    document = common.validate(json.loads((tmp_path / "dispatch.json").read_text()))
    assert document["suite"] == "dispatch" and len(document["results"]) == 5
    assert all(r["kernels"] > 0 and r["median_ms"] > 0 for r in document["results"] if r["backend"] != "accelerated.cupy")
    assert (tmp_path / "dispatch.png").stat().st_size > 0


def test_training_cpu_smoke_rows_and_ratios(tmp_path):
    """--compiled no: the eager rows only, each torch row's ratio against the eager baseline of its precision."""
    pytest.importorskip("torch")
    from rosetta.bench import training

    assert bench_main(["training", "--config", "cpu", "--compiled", "no", "--warmup", "0", "--reps", "1",
                       "--out", str(tmp_path)]) == 0
    document = common.validate(json.loads((tmp_path / "training_cpu_eager.json").read_text()))
    rows = {(r["backend"], r["precision"], r["compiled"]): r for r in document["results"]}
    assert set(rows) == set(training.ROW_SETS["no"])
    for (backend, precision, _), row in rows.items():
        if backend == "accelerated.cupy":
            continue  # skipped without CuPy, with the reason
        base = rows["torch.nn.Transformer", precision, False]
        assert row["ratio_to_baseline"] == pytest.approx(base["median_ms"] / row["median_ms"], rel=FEW_ROUNDINGS)
    assert all(compiled for *_, compiled in training.ROW_SETS["yes"]) and len(training.ROW_SETS["yes"]) == 4


@pytest.mark.parametrize("impl", ["cupy-flash", "cupy-plain"])
def test_attention_bench_cupy_cases_run_on_the_emulator(impl, monkeypatch):
    """The attention suite's CuPy cases (what the GPU session times), run once each on the emulated backend."""
    from rosetta.bench import attention
    from accelerated import cupy_emulator as emulated_cupy

    if emulated_cupy.unavailable_reason() is not None:
        pytest.skip(f"CUDA kernels on the CPU emulator: {emulated_cupy.unavailable_reason()}")
    with emulated_cupy.emulated_cupy() as rt:
        monkeypatch.setitem(sys.modules, "accelerated.cupy", rt)
        monkeypatch.setattr(rt, "flash_attention_kernels", emulated_cupy.launcher("flash_attention_kernels"),
                            raising=False)
        emulated_cupy.LAUNCHES.clear()
        for dtype in ("float16", "float32") + (("bfloat16",) if impl == "cupy-flash" else ()):
            for causal in (False, True):
                attention._cupy_case(impl, 1, 2, 40, 64, dtype, causal, backward=True)()
    launched = {name.split("_")[1] for name in emulated_cupy.LAUNCHES if name.startswith("flash")}
    assert launched == ({"fwd", "bwd"} if impl == "cupy-flash" else set())
