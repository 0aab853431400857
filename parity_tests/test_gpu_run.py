"""The GPU run (rosetta/bench/gpu_run.py and its step scripts), as far as a CPU can check it.

The time budget: the device tool lends 15 min = 900 s of device time per session (start-up,
idle time and every call counted), at most 10 min a call, and a machine takes about 2 min to
start. The main mode's step timeouts add up to 370 s; with 2 s a step for starting and killing
it (9 steps) the run ends within 388 s <= its 390 s budget, under the issue's 8 min = 480 s
ceiling; start-up plus the run plus one rerun is 120 + 2 × 390 = 900 s = 15 min. The extra mode
(torch.compile, N 8192/16384) is a call of its own: 450 s of timeouts within its 470 s budget.
test_budgets checks these sums against the tables themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parity_tests.tolerances import KERNEL_TOL, relative_error
from rosetta.bench import attention, gpu_probe, gpu_run, gpu_sanitize, gpu_steps, training

ROOT = Path(__file__).resolve().parents[1]


# ---- the step tables and the budget ---------------------------------------------------------------

def test_budgets():
    """Main: the timeouts plus each step's grace fit the mode's budget, which fits 8 min, and start-up
    plus two runs fit the device's 15 min; extra: one call within 8 min; no step above one call's limit."""
    main = gpu_run.main_steps()
    total = sum(s.timeout_s for s in main)
    assert total + gpu_run.GRACE_S * len(main) <= gpu_run.BUDGET_S["main"] <= gpu_run.RUN_CEILING_S == 480
    assert gpu_run.START_S + 2 * gpu_run.BUDGET_S["main"] <= gpu_run.DEVICE_BUDGET_S == 900
    extra = gpu_run.extra_steps()
    assert sum(s.timeout_s for s in extra) + gpu_run.GRACE_S * len(extra) <= gpu_run.BUDGET_S["extra"] <= 480
    for steps in (main, extra):
        assert len({s.name for s in steps}) == len(steps)
        assert all(0 < s.timeout_s <= gpu_run.CALL_LIMIT_S for s in steps)
    assert total == 370 and "370 s" in gpu_run.__doc__ and "370 s" in __doc__  # the sum the docstrings state


def test_main_mode_covers_the_issue_in_order():
    names = [s.name for s in gpu_run.main_steps()]
    assert names == ["probe", "parity-flash", "parity-fused", "parity-backend", "attention", "training", "flash64",
                     "memcheck", "racecheck"]
    steps = {s.name: s for s in gpu_run.main_steps()}
    assert not steps["probe"].needs_gpu and all(s.needs_gpu for n, s in steps.items() if n != "probe")
    assert "no" in steps["training"].argv and "4096" in steps["attention"].argv
    for name in ("parity-flash", "parity-fused", "parity-backend"):
        assert ("ROSETTA_BACKENDS", "cupy") in steps[name].env and "-k" in steps[name].argv
    assert "yes" in {s.name: s for s in gpu_run.extra_steps()}["training-compiled"].argv


def test_pytest_steps_select_gpu_cases_only():
    """The -k of each parity step keeps the GPU cases and drops the emulated ones and the nvcc compiles."""
    steps = {s.name: s for s in gpu_run.main_steps()}
    argv = [a.replace("{python}", sys.executable) for a in steps["parity-fused"].argv if not a.startswith("--junit")]
    listing = subprocess.run(argv + ["--collect-only"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, ROSETTA_BACKENDS="cupy", ROSETTA_GPU_RUN_RESULTS=""))
    ids = [line for line in listing.stdout.splitlines() if "::" in line]
    assert ids and not [i for i in ids if "emulated" in i or "test_kernel_compiles" in i]
    assert any("[cupy-float16" in i or "-cupy-float16" in i for i in ids), ids


# ---- the orchestrator, on fake steps ---------------------------------------------------------------

def _python_step(name, code, timeout_s, needs_gpu=False, results=()):
    return gpu_run.Step(name, ("{python}", "-c", code), timeout_s, needs_gpu=needs_gpu, results=results)


def test_a_hanging_step_is_killed_at_its_timeout_and_the_next_steps_run(tmp_path):
    """The hanging step and the child it started are killed; what it wrote stays; later steps run; the
    step needing a GPU is skipped; the summary (JSON and Markdown) names every outcome."""
    pid_file = tmp_path / "child.pid"
    hang = ("import pathlib, subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))\n"
            "print('working', flush=True)\n"
            "time.sleep(60)")
    steps = (
        _python_step("first", "import json, pathlib, sys; print('ok')", 20),
        _python_step("hang", hang, 2),
        _python_step("fails", "import sys; sys.exit(3)", 20),
        _python_step("gpu-only", "print('never')", 20, needs_gpu=True),
        gpu_run.Step("writes", ("{python}", "-c", "import json, sys, pathlib; pathlib.Path(sys.argv[1], 'r.json')"
                                ".write_text(json.dumps({'summary': 'all good'}))", "{out}"), 20, needs_gpu=False,
                     results=("r.json",)),
    )
    start = time.monotonic()
    summary = gpu_run.run(steps, tmp_path / "out", mode="test", gpu=False, budget_s=120)
    assert time.monotonic() - start < 15
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status == {"first": "passed", "hang": "timed out after 2 s", "fails": "failed (exit 3)",
                      "gpu-only": "skipped: no CUDA device", "writes": "passed"}
    assert "working" in (tmp_path / "out" / "hang" / "log.txt").read_text()
    child = int(pid_file.read_text())
    assert _dead(child), f"the hanging step's child {child} is still running"
    assert {s["name"]: s.get("notes") for s in summary["steps"]}["writes"] == "all good"
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["counts"] == {"passed": 2, "timed out": 1, "failed": 1, "skipped": 1}
    table = (tmp_path / "out" / "summary.md").read_text()
    assert "| hang | timed out after 2 s |" in table and "| gpu-only | skipped: no CUDA device |" in table
    for name in status:
        record = json.loads((tmp_path / "out" / name / "step.json").read_text())
        assert record["status"] == status[name] and record["timeout_s"] > 0 and record["command"]


def _dead(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return True
        if "\nState:\tZ" in state:
            return True  # a zombie: killed, waiting for its (re)parent to reap it
        time.sleep(0.1)
    return False


def test_the_run_stops_at_its_budget(tmp_path, monkeypatch):
    """A step never outlives the run's budget: its timeout is cut to what is left, and a step with
    less than MIN_STEP_S left is skipped."""
    monkeypatch.setattr(gpu_run, "MIN_STEP_S", 1)
    monkeypatch.setattr(gpu_run, "GRACE_S", 0.5)
    steps = (_python_step("long", "import time; time.sleep(30)", 60), _python_step("late", "print(1)", 60))
    start = time.monotonic()
    budget = gpu_run.GRACE_S + gpu_run.MIN_STEP_S + 1
    summary = gpu_run.run(steps, tmp_path, mode="test", gpu=True, budget_s=budget)
    assert time.monotonic() - start < budget + gpu_run.KILL_WAIT_S + 5
    assert [s["status"] for s in summary["steps"]] == [f"timed out after {gpu_run.MIN_STEP_S + 1} s",
                                                       f"skipped: the run's budget ({budget} s) is spent"]


def test_dry_run_skips_gpu_steps_and_still_summarizes(tmp_path):
    """On the CPU (or with --dry-run anywhere): the probe's CPU part runs, every other step says why it
    did not, in its own step.json and in the summary."""
    out = tmp_path / "dry"
    result = subprocess.run([sys.executable, "-m", "rosetta.bench.gpu_run", "--dry-run", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and summary["mode"] == "main"
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status["probe"] == "passed"
    skipped = "skipped: no CUDA device" if not summary["gpu"] else "skipped: dry run"
    assert all(v == skipped for k, v in status.items() if k != "probe"), status
    for name in status:
        assert json.loads((out / name / "step.json").read_text())["status"] == status[name]
    probe = json.loads((out / "probe" / "probe.json").read_text())
    assert probe["versions"]["python"] and probe["versions"]["numpy"]
    assert probe["device"]["status"] == "skipped: no CUDA device"
    files = {f["file"]: f for f in probe["kernel_files"]}
    assert files == {p.name: files[p.name] for p in gpu_probe.kernel_files()}  # every .cu file, none named here
    if all("ptx_entries" in f for f in files.values()):  # NVRTC is here: every kernel the launchers call is found
        entries = {name for f in files.values() for name in f["ptx_entries"]}
        assert {"flash_fwd_f16_d64", "flash_bwd_bf16_d128", "adamw_step_f32"} <= entries
    assert "| probe | passed |" in (out / "summary.md").read_text()


def test_pytest_steps_record_each_test_as_it_ends(tmp_path):
    """The parity steps' plugin: one JSON line per test (so a killed run keeps them), a file that fails to
    import counted as an error, and hypothesis without its shrink phase."""
    tests = tmp_path / "test_sample.py"
    tests.write_text(
        "import pytest\n"
        "from hypothesis import Phase, settings\n"
        "def test_ok(): assert Phase.shrink not in settings.default.phases\n"
        "def test_bad(): assert 1 == 2, 'one is not two'\n"
        "def test_skip(): pytest.skip('no GPU here')\n")
    (tmp_path / "test_broken.py").write_text("raise ImportError('a module that does not import')\n")
    step = gpu_run._pytest_step("sample", (str(tests), str(tmp_path / "test_broken.py")), "not nothing", 60, "x")
    summary = gpu_run.run((step,), tmp_path / "out", mode="test", gpu=True, budget_s=100)
    record = summary["steps"][0]
    assert record["status"].startswith("failed (exit")
    found = gpu_run.pytest_counts(tmp_path / "out" / "sample" / "results.jsonl")
    assert found["counts"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 1}, found
    assert any("one is not two" in f["message"] for f in found["failures"])
    assert record["notes"].startswith("1 passed, 1 failed, 1 error, 1 skipped")
    assert (tmp_path / "out" / "sample" / "junit.xml").exists()


def test_list_prints_the_table_and_total():
    result = subprocess.run([sys.executable, "-m", "rosetta.bench.gpu_run", "--list"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0 and "total" in result.stdout and "370 s" in result.stdout


# ---- the steps' own logic -----------------------------------------------------------------------------

def test_probe_finds_kernels_from_ptx():
    ptx = ".visible .entry flash_fwd_f16_d64(\n .param .u64 a\n)\n.visible .entry adamw_step_f32(\n"
    assert gpu_probe.ptx_entries(ptx) == ["flash_fwd_f16_d64", "adamw_step_f32"]
    assert all(p.suffix == ".cu" for p in gpu_probe.kernel_files()) and gpu_probe.kernel_files()


def test_sanitizer_log_parsing():
    clean = "========= COMPUTE-SANITIZER\nok\n========= ERROR SUMMARY: 0 errors\n"
    assert gpu_sanitize.parse_log(clean)["errors"] == 0
    race = ("========= Error: Race reported between Write access at flash_fwd_f16_d64+0x1a0\n"
            "=========     and Read access at flash_fwd_f16_d64+0x2b0 [64 hazards]\n"
            "========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)\n"
            "========= ERROR SUMMARY: 1 error\n")
    found = gpu_sanitize.parse_log(race)
    assert (found["errors"], found["hazards"], found["race_errors"], found["race_warnings"]) == (1, 1, 1, 0)
    assert found["first_errors"][0].startswith("Error: Race reported")
    memcheck = ("========= Invalid __global__ write of size 2 bytes\n=========     at flash_bwd_f16_d64+0x10\n"
                "========= ERROR SUMMARY: 12 errors\n")
    assert gpu_sanitize.parse_log(memcheck)["errors"] == 12
    assert gpu_sanitize.parse_log("killed before the end")["errors"] is None


def _fake_sanitizer(tmp_path, body: str) -> str:
    path = tmp_path / "compute-sanitizer"
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_sanitizer_step_summarizes_and_times_out(tmp_path):
    clean = _fake_sanitizer(tmp_path, "print('========= ERROR SUMMARY: 0 errors')")
    assert gpu_sanitize.sanitize("memcheck", tmp_path / "a", 20, sanitizer=clean) == 0
    record = json.loads((tmp_path / "a" / "sanitizer_memcheck.json").read_text())
    assert record["status"] == "passed" and record["errors"] == 0 and "memcheck" in record["command"]
    dirty = _fake_sanitizer(tmp_path, "print('========= ERROR SUMMARY: 3 errors')")
    assert gpu_sanitize.sanitize("racecheck", tmp_path / "b", 20, sanitizer=dirty) == 1
    assert json.loads((tmp_path / "b" / "sanitizer_racecheck.json").read_text())["errors"] == 3
    hang = _fake_sanitizer(tmp_path, "import time; print('started', flush=True); time.sleep(60)")
    start = time.monotonic()
    assert gpu_sanitize.sanitize("memcheck", tmp_path / "c", 1, sanitizer=hang) == 124
    assert time.monotonic() - start < 10
    record = json.loads((tmp_path / "c" / "sanitizer_memcheck.json").read_text())
    assert record["status"] == "timed out after 1 s" and "started" in (tmp_path / "c" / "sanitizer_memcheck.txt").read_text()


def test_sanitizer_workload_on_the_emulator(tmp_path):
    """The workload compute-sanitizer runs, on the CPU emulator: every case runs, finite, near float64."""
    from accelerated import cupy_emulator

    if cupy_emulator.unavailable_reason() is not None:
        pytest.skip(f"CUDA kernels on the CPU emulator: {cupy_emulator.unavailable_reason()}")
    assert gpu_sanitize.workload_main(True, tmp_path / "w.json") == 0
    cases = json.loads((tmp_path / "w.json").read_text())["cases"]
    assert len(cases) == len(gpu_sanitize.CASES) and {c["dtype"] for c in cases} == {"float16", "bfloat16", "float32"}
    for case in cases:
        assert case["status"] == "ok" and max(case["error"].values()) <= KERNEL_TOL[case["dtype"]], case


def test_flash64_shape_is_above_2_31_and_fits():
    B, H, N, d = gpu_steps.FLASH64_SHAPE
    elements = B * H * N * d
    assert elements > 2**31 and B * H <= 65535
    assert elements * (8 * 2 + 4) < 60 * 2**30  # 8 float16 tensors + the fp32 dq accumulator, of 78 GiB
    heads = gpu_steps.flash64_heads(gpu_steps.FLASH64_SHAPE)
    assert heads[0] == (0, 0) and heads[-1] == (B - 1, H - 1) and len(heads) == 3
    b, h = heads[1]
    first = (b * H + h) * N * d
    assert first <= 2**31 < first + N * d  # the head holding element 2**31


def test_attention_summary_and_errors_ratio():
    ok = {"status": "ok", "N": 4096, "d": 64, "dtype": "float16", "causal": False, "pass": "forward"}
    document = {"results": [
        {"implementation": "torch-sdpa-cudnn", "status": "unavailable: x"},
        dict(ok, implementation="torch-sdpa", tflops=400.0),
        dict(ok, implementation="cupy-flash", tflops=200.0, error_vs_sdpa=1.5),
        dict(ok, implementation="torch-sdpa-flash", status="failed: RuntimeError: No available kernel"),
    ]}
    text = gpu_steps.attention_summary(document)
    assert text.startswith("3 rows: 2 ok, 1 failed, 0 skipped") and "0.50–0.50×" in text and "1.50×" in text
    errors = {"max_abs": {"out": 0.5, "dq": 0.75}}
    assert attention.ratio_to(errors, {"max_abs": {"out": 0.25, "dq": 0.75}}) == 2.0
    assert attention.ratio_to({"max_abs": {"out": float("nan")}}, {"max_abs": {"out": 1e-3}}) == float("inf")


def test_attention_budget_progress_and_new_implementations_on_the_cpu(tmp_path):
    """Without a GPU the forced SDPA backends say why; rows past the budget are skipped; the progress
    file holds the rows so far."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: this checks the CPU behaviour")
    progress = tmp_path / "attention.progress.json"
    document = attention.run((16, 32), (64,), ("float32",), (False,), ("forward",), 8,
                             ("torch-sdpa-flash", "torch-sdpa-cudnn", "numpy-reference"), numpy_batch_heads=2,
                             warmup=0, reps=1, errors=True, budget_s=0.0, progress=progress)
    status = {r["implementation"]: r["status"] for r in document["results"] if "N" not in r}
    assert status == {"torch-sdpa-flash": "unavailable: no CUDA device (torch.cuda.is_available() is False)",
                      "torch-sdpa-cudnn": "unavailable: no CUDA device (torch.cuda.is_available() is False)"}
    rows = [r for r in document["results"] if "N" in r]
    assert [r["N"] for r in rows] == [16, 32]
    assert all(r["status"].startswith("skipped: the time budget") for r in rows)
    assert json.loads(progress.read_text())["results"] == document["results"]


def test_first_call_cuts_the_repetitions_of_a_slow_row():
    calls = []
    once = lambda: (calls.append(1), time.sleep(0.05))  # noqa: E731
    assert attention._first_call(once, lambda: None, 3, 10, None) == (3, 10) and not calls
    warmup, reps = attention._first_call(once, lambda: None, 3, 10, 0.12)
    assert len(calls) == 1 and reps <= 2 and warmup == 0
    assert attention._first_call(once, lambda: None, 2, 5, 0.001) == (0, 1)


def test_training_budget_progress_and_order(tmp_path):
    pytest.importorskip("torch")
    progress = tmp_path / "training.progress.json"
    document = training.run("cpu", 0, 1, training.ROW_SETS["no"], budget_s=0.0, progress=progress)
    keys = [(r["backend"], r["precision"], r["compiled"]) for r in document["results"]]
    assert keys == list(training.ROW_SETS["no"])  # the rows' order, though CuPy runs last
    assert all(r["status"].startswith("skipped") for r in document["results"])
    assert json.loads(progress.read_text())["results"] == document["results"]
    assert "skipped" in gpu_steps.training_summary(document)


def test_error_measurement_on_the_cpu():
    """attention.py's error machinery (the fp32 MATH reference, torch rows, compare, ratio) on CPU tensors."""
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    q, k, v, d_out = (torch.randn(1, 2, 24, 16, generator=gen) for _ in range(4))
    reference = attention.reference_outputs(q, k, v, d_out, True, True)
    assert not q.requires_grad and len(reference) == 4
    plain = attention.implementation_outputs("torch-plain", q, k, v, d_out, True, True)
    assert set(attention.compare(plain, reference)["max_abs"]) == {"out", "dq", "dk", "dv"}
    for got, want in zip(plain, reference):
        assert relative_error(got.double().numpy(), want.double().numpy()) <= KERNEL_TOL["float32"]
    half = [x.to(torch.bfloat16) for x in (q, k, v, d_out)]
    reference = attention.reference_outputs(*half, False, False)
    got = attention.implementation_outputs("torch-sdpa", *half, False, False)
    sdpa = attention.compare(got, reference)
    assert set(sdpa["max_abs"]) == {"out"} and sdpa["max_abs"]["out"] != 0  # bfloat16 rounds
    assert relative_error(got[0].double().numpy(), reference[0].double().numpy()) <= KERNEL_TOL["bfloat16"]
    assert attention.ratio_to(sdpa, sdpa) == 1.0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_flash_outputs_through_dlpack_on_the_emulator(dtype, monkeypatch):
    """attention.flash_outputs (torch tensors -> DLPack -> the launchers -> back, bfloat16 as int16/uint16
    storage), with the CPU emulator's stand-in cupy: its errors are near torch SDPA's."""
    torch = pytest.importorskip("torch")
    from accelerated import cupy_emulator

    if cupy_emulator.unavailable_reason() is not None:
        pytest.skip(f"CUDA kernels on the CPU emulator: {cupy_emulator.unavailable_reason()}")
    gen = torch.Generator().manual_seed(0)
    q, k, v, d_out = (torch.randn(1, 2, 40, 64, generator=gen).to(getattr(torch, dtype)) for _ in range(4))
    reference = attention.reference_outputs(q, k, v, d_out, True, True)
    sdpa = attention.compare(attention.implementation_outputs("torch-sdpa", q, k, v, d_out, True, True), reference)
    with cupy_emulator.emulated_cupy() as rt:
        monkeypatch.setitem(sys.modules, "accelerated.cupy", rt)
        monkeypatch.setattr(rt, "flash_attention_kernels", cupy_emulator.launcher("flash_attention_kernels"),
                            raising=False)
        got = attention.flash_outputs(q, k, v, d_out, True, True)
    assert [x.dtype for x in got] == [q.dtype] * 4 and [x.shape for x in got] == [q.shape] * 4
    for name, a, b in zip(attention.GRADIENT_NAMES, got, reference):
        assert relative_error(a.double().numpy(), b.double().numpy()) <= KERNEL_TOL[dtype], name


def test_flash64_head_checks_on_the_emulator(monkeypatch):
    """The 64-bit step's check (the first, the boundary's and the last head against an fp32 SDPA, beside
    torch SDPA's error) on a small shape with the boundary moved inside it, on the CPU emulator."""
    torch = pytest.importorskip("torch")
    import numpy as np

    from accelerated import cupy_emulator

    if cupy_emulator.unavailable_reason() is not None:
        pytest.skip(f"CUDA kernels on the CPU emulator: {cupy_emulator.unavailable_reason()}")
    shape = (2, 3, 40, 64)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(shape).astype(np.float16) for _ in range(4)]
    with cupy_emulator.emulated_cupy():
        fk = cupy_emulator.launcher("flash_attention_kernels")
        out, lse = fk.flash_attention_forward(*inputs[:3])
        outputs = (out, *fk.flash_attention_backward(*inputs[:3], out, lse, inputs[3]))
        checks = gpu_steps.check_heads(inputs, outputs, shape, "float16", boundary=4 * 40 * 64 + 5)
        outputs[1][1, 1, 3, 7] += np.float16(9.0)  # a wrong dq element in the boundary's head, (1, 1)
        broken = gpu_steps.check_heads(inputs, outputs, shape, "float16", boundary=4 * 40 * 64 + 5)
    assert [(c["batch"], c["head"]) for c in checks] == [(0, 0), (1, 1), (1, 2)]
    assert all(c["passed"] for c in checks), checks
    assert [c["passed"] for c in broken] == [True, False, True]


def test_a_run_stopped_by_sigterm_kills_its_step_and_keeps_its_summary(tmp_path):
    """The device tool may stop the run: the step in flight is killed with its group, the summary says
    which steps were interrupted, and the steps done before keep their results."""
    import signal

    out = tmp_path / "out"
    pid_file = tmp_path / "hang.pid"
    script = (
        "import sys\n"
        "from rosetta.bench import gpu_run\n"
        f"HANG = {f'import os, pathlib, time; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); time.sleep(60)'!r}\n"
        "steps = (gpu_run.Step('quick', ('{python}', '-c', 'print(1)'), 20, needs_gpu=False),\n"
        "         gpu_run.Step('hang', ('{python}', '-c', HANG), 60, needs_gpu=False),\n"
        "         gpu_run.Step('never', ('{python}', '-c', 'print(2)'), 20, needs_gpu=False))\n"
        f"gpu_run.run(steps, {str(out)!r}, mode='test', gpu=False, budget_s=200)\n")
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else None
        if summary and summary["steps"][1]["status"] == "interrupted" and pid_file.exists():  # "hang" runs
            break
        time.sleep(0.1)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    status = [s["status"] for s in json.loads((out / "summary.json").read_text())["steps"]]
    assert status == ["passed", "interrupted (signal 15)", "interrupted (signal 15)"]
    assert _dead(int(pid_file.read_text())), "the step in flight outlived the run"
