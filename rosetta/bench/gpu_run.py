"""The first GPU run: everything a lent GPU should tell us, in one call that fits the device budget.

    PYTHONPATH=. python -m rosetta.bench.gpu_run --out $OUT                 # main mode, at most 390 s
    PYTHONPATH=. python -m rosetta.bench.gpu_run --out $OUT --mode extra    # torch.compile rows, N 8192/16384
    python -m rosetta.bench.gpu_run --dry-run --out /tmp/gpu_dry            # the plumbing, on any machine
    python -m rosetta.bench.gpu_run --list                                  # the step table

Each step is its own subprocess, in its own process group, with its own timeout: at the timeout
the group gets SIGTERM, then SIGKILL 3 s later, the step is recorded as timed out and the next
step runs. A step that needs a GPU on a machine without one (or in a dry run) is recorded as
``skipped: no CUDA device`` (``skipped: dry run``) and costs nothing. Every step writes into its
own folder ``<out>/<step>/``: ``log.txt`` (its stdout and stderr), ``step.json`` (command, timeout,
status, wall time, a one-line summary of its results) and its results; ``<out>/summary.json`` and
``<out>/summary.md`` (a table: step, status, time, notes) are rewritten after every step, so what
is done survives a later failure, a timeout, or the run itself being killed.

Time budget (the device tool lends a machine for 15 min of device time in all: start-up, idle
time and every call counted; at most 10 min a call). Main mode: the step timeouts add up to
370 s; with GRACE_S = 2 s a step for its start and its kill, the run ends within
370 + 9 × 2 = 388 s <= BUDGET_S["main"] = 390 s (6.5 min; the issue's ceiling is 8 min = 480 s).
With about START_S = 120 s to start the machine, one run and one rerun fit the 15 minutes:
120 + 2 × 390 = 900 s. A rerun on the warm machine is faster: CuPy's kernel cache on disk
already holds the compiled kernels. Extra mode: 450 s of timeouts, BUDGET_S["extra"] = 470 s,
a call of its own (within 480 s), best on a second lent machine. The run also stops itself at its
budget: a step never gets more time than the budget has left (``--budget-s``).

Steps, main mode (what each writes in its folder):

  probe            probe.json: versions, the device, each .cu file's NVRTC compile time, each kernel's
                   registers, shared/local memory, max threads per block, occupancy
  parity-flash     the flash-kernel parity tests on the GPU (test_kernels_compile.py, and
                   test_kernel_lab.py when present): results.jsonl (one line per test, as it ends), junit.xml
  parity-fused     the fused kernels' GPU tests (norms, cross-entropy, bias + activation, AdamW)
  parity-backend   the CuPy backend against the reference (test_cupy_parity.py), API conformance
  attention        attention.json/.png (+ .progress.json after every row): the CuPy flash kernel vs torch
                   SDPA (default, FLASH, cuDNN), fp16/bf16, d 64/128, N 4096, causal or not, forward and
                   forward+backward: TFLOP/s, peak memory, error against an fp32 SDPA beside SDPA's own
  training         training_base_eager.json/.png: the base-config training step, eager rows and CuPy,
                   ms, tokens/s, MFU, ratio to torch.nn.Transformer
  flash64          flash64.json: forward + backward on 2.15e9-element tensors (64-bit offsets) against
                   torch SDPA on the first, the 2**31st-element and the last head
  memcheck         sanitizer_memcheck.json/.txt: compute-sanitizer memcheck on a small forward + backward
  racecheck        sanitizer_racecheck.json/.txt: the same under racecheck (shared-memory hazards)

Extra mode: probe, attention-long (N 8192 and 16384, fp16), training-compiled (torch.compile rows).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: seconds the device tool lends a session (all calls, start-up and idle time), one call's limit, and
#: about how long a fresh machine takes to start
DEVICE_BUDGET_S, CALL_LIMIT_S, START_S = 900, 600, 120
#: the issue's ceiling for one run
RUN_CEILING_S = 480
#: a run's whole budget per mode (see the module docstring for the arithmetic)
BUDGET_S = {"main": 390, "extra": 470}
#: allowance per step for starting it and, at a timeout, SIGTERM then SIGKILL (KILL_WAIT_S later)
GRACE_S, KILL_WAIT_S = 2, 3
#: a step is not started with less than this left of the run's budget
MIN_STEP_S = 5
#: logs longer than this keep their first and last parts
LOG_LIMIT_BYTES = 1_000_000


@dataclass(frozen=True)
class Step:
    """One subprocess of the run. argv may use {python} (this interpreter), {out} (the step's folder),
    {timeout} (its timeout in seconds) and {budget} (that less a margin: what a self-timing step may
    spend before it must write its results)."""

    name: str
    argv: tuple
    timeout_s: int
    needs_gpu: bool = True
    about: str = ""
    env: tuple = ()  # (name, value) pairs; values may use the same placeholders
    results: tuple = field(default=())  # files in the folder that hold its summary, in order of preference


def _pytest_step(name: str, files, keyword: str, timeout_s: int, about: str) -> Step:
    present = [f for f in files if (ROOT / f).exists()]
    argv = ("{python}", "-m", "pytest", "-q", "-rfE", "--tb=short", "-p", "no:cacheprovider",
            "--continue-on-collection-errors",
            "-p", "rosetta.bench.gpu_pytest_plugin", "--junitxml={out}/junit.xml", "-k", keyword, *present)
    return Step(name, argv, timeout_s, about=about,
                env=(("ROSETTA_BACKENDS", "cupy"), ("ROSETTA_GPU_RUN_RESULTS", "{out}/results.jsonl")),
                results=("results.jsonl",))


def main_steps() -> tuple:
    """The main mode's steps, in order (the issue's items a to f; the summary is the run's own)."""
    return (
        Step("probe", ("{python}", "-m", "rosetta.bench.gpu_probe", "--out", "{out}"), 30, needs_gpu=False,
             about="versions, device, NVRTC compile time and registers/shared memory/occupancy of every kernel",
             results=("probe.json",)),
        _pytest_step("parity-flash", ("parity_tests/test_kernels_compile.py", "parity_tests/test_kernel_lab.py"),
                     "not emulated and not file_compiles and not entry_points_compiled", 45,
                     "flash-attention kernels against the reference on the GPU"),
        _pytest_step("parity-fused", ("parity_tests/test_fused_kernels_compile.py",),
                     "not emulated and not test_kernel_compiles", 20,
                     "norm, cross-entropy, bias+activation and AdamW kernels on the GPU"),
        _pytest_step("parity-backend", ("parity_tests/test_cupy_parity.py", "parity_tests/test_api_conformance.py"),
                     "not emulated and not derived", 55,
                     "the CuPy backend against the reference; API conformance"),
        Step("attention", ("{python}", "-m", "rosetta.bench.gpu_steps", "attention", "--out", "{out}",
                           "--seq-lens", "4096", "--budget-s", "{budget}", "--max-row-s", "2"), 75,
             about="flash kernel vs torch SDPA (default, FLASH, cuDNN): TFLOP/s and error vs fp32",
             results=("attention.json", "attention.progress.json")),
        Step("training", ("{python}", "-m", "rosetta.bench.gpu_steps", "training", "--out", "{out}",
                          "--compiled", "no", "--budget-s", "{budget}"), 55,
             about="base-config training step, eager rows and CuPy: ms, tokens/s, MFU, ratios",
             results=("training_base_eager.json", "training_base_eager.progress.json")),
        Step("flash64", ("{python}", "-m", "rosetta.bench.gpu_steps", "flash64", "--out", "{out}"), 30,
             about="forward+backward on > 2**31 elements (64-bit offsets) vs torch SDPA", results=("flash64.json",)),
        Step("memcheck", ("{python}", "-m", "rosetta.bench.gpu_sanitize", "--tool", "memcheck", "--out", "{out}",
                          "--timeout-s", "{budget}"), 30,
             about="compute-sanitizer memcheck, small flash forward+backward", results=("sanitizer_memcheck.json",)),
        Step("racecheck", ("{python}", "-m", "rosetta.bench.gpu_sanitize", "--tool", "racecheck", "--out", "{out}",
                           "--timeout-s", "{budget}"), 30,
             about="compute-sanitizer racecheck, small flash forward+backward", results=("sanitizer_racecheck.json",)),
    )


def extra_steps() -> tuple:
    """The optional second run: long sequences and torch.compile."""
    return (
        main_steps()[0],
        Step("attention-long", ("{python}", "-m", "rosetta.bench.gpu_steps", "attention", "--name", "attention_long",
                                "--out", "{out}", "--seq-lens", "8192,16384", "--dtypes", "float16",
                                "--warmup", "1", "--reps", "3", "--budget-s", "{budget}", "--max-row-s", "4"), 180,
             about="N 8192 and 16384, fp16: TFLOP/s, peak memory, error vs fp32",
             results=("attention_long.json", "attention_long.progress.json")),
        Step("training-compiled", ("{python}", "-m", "rosetta.bench.gpu_steps", "training", "--out", "{out}",
                                   "--compiled", "yes", "--budget-s", "{budget}"), 240,
             about="torch.compile rows of the training step (both sides)",
             results=("training_base_compiled.json", "training_base_compiled.progress.json")),
    )


MODES = {"main": main_steps, "extra": extra_steps}


def budget_margin(timeout_s: float) -> float:
    """What a self-timing step keeps back from its timeout to write its results: 15 %, at least 5 s."""
    return max(5.0, 0.15 * timeout_s)


# ---- running the steps --------------------------------------------------------------------------

def cuda_device_count() -> int:
    from .gpu_probe import cuda_device_count as count

    return count()


def _fill(text: str, values: dict) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def _kill_group(process) -> None:
    """SIGTERM to the step's process group, SIGKILL KILL_WAIT_S later if anything is left."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the group (children that ignored TERM)
    except ProcessLookupError:
        pass
    process.wait()


def _trim_log(path: Path) -> None:
    size = path.stat().st_size if path.exists() else 0
    if size <= LOG_LIMIT_BYTES:
        return
    data = path.read_bytes()
    head, tail = data[: LOG_LIMIT_BYTES // 5], data[-(LOG_LIMIT_BYTES * 3) // 5:]
    path.write_bytes(head + f"\n\n[... {size - len(head) - len(tail)} bytes cut by gpu_run ...]\n\n".encode() + tail)


def run_step(step: Step, folder: Path, timeout_s: float) -> dict:
    """Run one step with ``timeout_s``; the record's status: passed, failed (exit N) or timed out."""
    folder.mkdir(parents=True, exist_ok=True)
    values = {"python": sys.executable, "out": str(folder), "timeout": int(timeout_s),
              "budget": int(max(1.0, timeout_s - budget_margin(timeout_s)))}
    argv = [_fill(part, values) for part in step.argv]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update({name: _fill(value, values) for name, value in step.env})
    record = {"command": argv, "env": {name: _fill(value, values) for name, value in step.env},
              "timeout_s": round(timeout_s, 1)}
    start = time.monotonic()
    with open(folder / "log.txt", "wb") as log:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = process.wait(timeout=timeout_s)
            record["status"] = "passed" if rc == 0 else f"failed (exit {rc})"
            try:
                os.killpg(process.pid, signal.SIGKILL)  # stragglers of a step that exited (its own group only)
            except ProcessLookupError:
                pass
        except subprocess.TimeoutExpired:
            _kill_group(process)
            rc = process.returncode
            record["status"] = f"timed out after {timeout_s:.0f} s"
        except BaseException:  # the run itself is stopped (SIGTERM, Ctrl-C): the step goes with it
            _kill_group(process)
            raise
    record.update(exit_code=rc, wall_s=round(time.monotonic() - start, 2))
    _trim_log(folder / "log.txt")
    return record


# ---- summaries ------------------------------------------------------------------------------------

def pytest_counts(path: Path) -> dict:
    """Outcomes in a results.jsonl of gpu_pytest_plugin: counts and the first failures."""
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    failures = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
        if entry["outcome"] in ("failed", "error"):
            failures.append({"nodeid": entry["nodeid"], "message": entry.get("message", "")[:300]})
    return {"counts": counts, "failures": failures}


def step_summary(step: Step, folder: Path):
    """One line about a step's results, from the first of its result files that exists (None if none)."""
    for name in step.results:
        path = folder / name
        if not path.exists():
            continue
        if name.endswith(".jsonl"):
            found = pytest_counts(path)
            text = ", ".join(f"{n} {k}" for k, n in found["counts"].items() if n)
            if found["failures"]:
                text += f"; first failure: {found['failures'][0]['nodeid']}"
            return text or "no test ran"
        try:
            document = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            return f"unreadable {name}: {type(error).__name__}"
        if document.get("summary"):
            return document["summary"]
        if document.get("suite") in ("attention", "training"):  # a progress file: rows so far
            from . import gpu_steps

            text = (gpu_steps.attention_summary if document["suite"] == "attention"
                    else gpu_steps.training_summary)(document)
            return f"(partial) {text}"
        return f"{name}: status {document.get('status')}"
    return None


def _category(status: str) -> str:
    for key in ("passed", "failed", "timed out", "skipped", "interrupted", "pending"):
        if status.startswith(key):
            return key
    return "other"


def device_name(out: Path):
    try:
        probe = json.loads((out / "probe" / "probe.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    device = probe.get("device", {})
    return device.get("name") if device.get("status") == "ok" else device.get("status")


def write_summary(out: Path, meta: dict, records: list) -> dict:
    counts = {}
    for record in records:
        counts[_category(record["status"])] = counts.get(_category(record["status"]), 0) + 1
    summary = {**meta, "device": device_name(out), "counts": counts, "steps": records}
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "summary.json.tmp"
    partial.write_text(json.dumps(summary, indent=1) + "\n")
    partial.replace(out / "summary.json")
    (out / "summary.md").write_text(markdown(summary))
    return summary


def markdown(summary: dict) -> str:
    lines = [f"# GPU run, mode {summary['mode']}{' (dry run)' if summary['dry_run'] else ''}",
             "",
             f"{summary['date']} on {summary['host']}; device: {summary['device'] or 'none'}; "
             f"wall {summary['wall_s']:.0f} s of a {summary['budget_s']} s budget "
             f"(step timeouts {summary['timeouts_s']} s). "
             + ", ".join(f"{n} {k}" for k, n in summary["counts"].items()),
             "",
             "| step | status | wall s | timeout s | notes |",
             "|---|---|---|---|---|"]
    for r in summary["steps"]:
        notes = (r.get("notes") or "").replace("|", "\\|").replace("\n", " ")
        wall = f"{r['wall_s']:.1f}" if r.get("wall_s") is not None else ""
        lines.append(f"| {r['name']} | {r['status']} | {wall} | {r['timeout_s']} | {notes} |")
    return "\n".join(lines) + "\n"


class _Interrupted(Exception):
    pass


def _on_sigterm(signum, frame):
    raise _Interrupted(f"signal {signum}")


def run(steps, out, mode: str = "main", gpu: bool | None = None, dry_run: bool = False, budget_s=None) -> dict:
    """Run ``steps`` in order into ``out``; returns the summary (also in out/summary.json and .md)."""
    out = Path(out)
    budget_s = BUDGET_S.get(mode, RUN_CEILING_S) if budget_s is None else budget_s
    gpu = cuda_device_count() > 0 if gpu is None else gpu
    start = time.monotonic()
    meta = {"mode": mode, "dry_run": dry_run, "gpu": gpu, "budget_s": budget_s,
            "timeouts_s": sum(s.timeout_s for s in steps),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "python": sys.executable, "root": str(ROOT), "wall_s": 0.0}
    records = [{"name": s.name, "about": s.about, "needs_gpu": s.needs_gpu, "timeout_s": s.timeout_s,
                "status": "pending"} for s in steps]
    write_summary(out, meta, records)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        for step, record in zip(steps, records):
            folder = out / step.name
            folder.mkdir(parents=True, exist_ok=True)
            left = budget_s - (time.monotonic() - start) - GRACE_S
            record["command"] = [_fill(part, {"python": sys.executable, "out": folder}) for part in step.argv]
            if step.needs_gpu and not gpu:
                record["status"] = "skipped: no CUDA device"
            elif step.needs_gpu and dry_run:
                record["status"] = "skipped: dry run"
            elif left < MIN_STEP_S:
                record["status"] = f"skipped: the run's budget ({budget_s} s) is spent"
            else:
                print(f"[gpu_run] {step.name} (timeout {min(step.timeout_s, left):.0f} s) ...", flush=True)
                record["status"] = "interrupted"
                write_summary(out, dict(meta, wall_s=time.monotonic() - start), records)
                record.update(run_step(step, folder, min(step.timeout_s, left)))
            record["notes"] = step_summary(step, folder)
            (folder / "step.json").write_text(json.dumps(record, indent=1) + "\n")
            print(f"[gpu_run] {step.name}: {record['status']}"
                  + (f" ({record['wall_s']:.1f} s)" if "wall_s" in record else "")
                  + (f" — {record['notes']}" if record.get("notes") else ""), flush=True)
            write_summary(out, dict(meta, wall_s=time.monotonic() - start), records)
    except (_Interrupted, KeyboardInterrupt) as error:  # run_step has killed the step's process group
        for step, record in zip(steps, records):
            if record["status"] in ("pending", "interrupted"):
                if record["status"] == "interrupted":
                    record["notes"] = step_summary(step, out / step.name)
                record["status"] = f"interrupted ({error or 'KeyboardInterrupt'})"
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return write_summary(out, dict(meta, wall_s=round(time.monotonic() - start, 2)), records)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def step_table(steps) -> str:
    rows = [f"{s.name:<18} {s.timeout_s:>4} s  {'GPU' if s.needs_gpu else 'any':<4} {s.about}" for s in steps]
    return "\n".join(rows + [f"{'total':<18} {sum(s.timeout_s for s in steps):>4} s"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rosetta.bench.gpu_run", description=__doc__.split("\n")[0])
    parser.add_argument("--mode", default="main", choices=tuple(MODES))
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_results",
                        help="folder for the results (default $OUT, else ./gpu_results)")
    parser.add_argument("--dry-run", action="store_true",
                        help="run only the steps that need no GPU, on any machine; the others are recorded as skipped")
    parser.add_argument("--only", help="comma-separated step names to run (default: all of the mode's)")
    parser.add_argument("--budget-s", type=float, help="the run's budget in seconds (default: the mode's)")
    parser.add_argument("--list", action="store_true", help="print the step table and exit")
    args = parser.parse_args(argv)
    steps = MODES[args.mode]()
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {s.name for s in steps})
        if unknown:
            parser.error(f"unknown steps {unknown} for mode {args.mode}: {[s.name for s in steps]}")
        steps = tuple(s for s in steps if s.name in wanted)
    print(step_table(steps), flush=True)
    if args.list:
        return 0
    if args.dry_run:
        os.environ["ROSETTA_GPU_RUN_NO_GPU"] = "1"  # the probe then does its CPU part only
    summary = run(steps, args.out, args.mode, dry_run=args.dry_run, budget_s=args.budget_s)
    print(markdown(summary), flush=True)
    return 0 if all(_category(r["status"]) in ("passed", "skipped") for r in summary["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
