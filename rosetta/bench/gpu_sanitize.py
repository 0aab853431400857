"""Steps `memcheck` and `racecheck` of the GPU run: one small forward + backward of the flash kernels
under NVIDIA's compute-sanitizer, and a summary of what it found.

    python -m rosetta.bench.gpu_sanitize --tool memcheck --out DIR [--timeout-s 25]
        runs  compute-sanitizer --tool memcheck ... python -m rosetta.bench.gpu_sanitize --workload ...
        and writes DIR/sanitizer_<tool>.txt (its log) and DIR/sanitizer_<tool>.json (the summary)
    python -m rosetta.bench.gpu_sanitize --workload [--emulate] [--out FILE]
        the workload alone: on the GPU, or with --emulate on the CPU emulator (its logic, no sanitizer)

The workload launches each flash kernel family once, on small shapes chosen to reach the edges:
lengths that are no multiple of a tile, grouped key/value heads, a padding mask, causal and not,
each element type (bfloat16 as uint16 storage), head dims 32/64/128 and one zero-padded (20). Its
outputs are checked for NaN/inf and against float64 attention in NumPy (the relative error, reported,
not judged: the sanitizer's verdict is the step's). On the GPU it turns CuPy's memory pool off, so
every array is its own cudaMalloc and memcheck sees an access past an array's end.

Exit status: 0 when the sanitizer reports no error (and the workload ran), 1 when it reports
errors or the workload failed, 2 when compute-sanitizer is missing, 124 when it ran out of time.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TOOLS = ("memcheck", "racecheck")
#: (dtype, head_dim, causal, B, H, Hkv, L, S, padded keys): small, odd lengths, one of each kernel family
CASES = (
    ("float16", 64, True, 1, 2, 1, 80, 80, True),
    ("bfloat16", 128, False, 1, 2, 2, 48, 100, False),
    ("float32", 32, True, 1, 2, 2, 70, 70, False),
    ("float16", 20, False, 2, 1, 1, 33, 65, False),
)
ROOT = Path(__file__).resolve().parents[2]


# ---- the workload ---------------------------------------------------------------------------------

def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), by truncation; the values they stand for are _bf16_value's."""
    return (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _bf16_value(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def reference_attention(q, k, v, d_out, causal: bool, key_valid=None) -> tuple:
    """out, dq, dk, dv of softmax(q kᵀ/√E) v in float64 (kv head h // (H/Hkv) for query head h; a
    fully masked row gives 0, as the kernels do)."""
    q, k, v, d_out = (np.asarray(x, dtype=np.float64) for x in (q, k, v, d_out))
    B, H, L, E = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    group = H // Hkv
    k_rep, v_rep = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scale = 1.0 / np.sqrt(E)
    scores = np.einsum("bhle,bhse->bhls", q, k_rep) * scale
    allowed = np.ones((B, 1, L, S), dtype=bool)
    if causal:
        allowed &= np.tril(np.ones((L, S), dtype=bool))[None, None]
    if key_valid is not None:
        allowed &= np.asarray(key_valid, dtype=bool)[:, None, None, :]
    scores = np.where(allowed, scores, -np.inf)
    top = np.max(scores, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    weights = np.where(allowed, np.exp(scores - top), 0.0)
    total = weights.sum(-1, keepdims=True)
    p = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    out = p @ v_rep
    dv_rep = np.einsum("bhls,bhle->bhse", p, d_out)
    dp = np.einsum("bhle,bhse->bhls", d_out, v_rep)
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True)) * scale
    dq = ds @ k_rep
    dk_rep = np.einsum("bhls,bhle->bhse", ds, q)
    fold = lambda x: x.reshape(B, Hkv, group, S, -1).sum(axis=2)  # noqa: E731 - grouped heads' sum
    return out, dq, fold(dk_rep), fold(dv_rep)


def _relative_error(got, want) -> float:
    """max |got − want| / max(max |want|, 1) (the data are of order one), in float64."""
    got = np.asarray(got, dtype=np.float64)
    if not want.size:
        return 0.0
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1.0))


def run_workload(cupy, fk, cases=CASES) -> list:
    """Each case's forward + backward through the launchers ``fk`` on ``cupy`` (real or the
    emulator's stand-in); one dict per case: shapes, finite, and each result's error against
    float64 NumPy, max |got − want| / max(max |want|, 1)."""
    results = []
    for dtype, E, causal, B, H, Hkv, L, S, padded in cases:
        rng = np.random.default_rng(E * 1000 + L)
        host = [rng.standard_normal(shape).astype(np.float32)
                for shape in ((B, H, L, E), (B, Hkv, S, E), (B, Hkv, S, E), (B, H, L, E))]
        if dtype == "bfloat16":
            bits = [_bf16_bits(x) for x in host]
            values = [_bf16_value(b) for b in bits]
            device = [cupy.asarray(b) for b in bits]
        else:
            values = [x.astype(dtype) for x in host]
            device = [cupy.asarray(x) for x in values]
        key_valid = None
        if padded:
            key_valid = np.ones((B, S), dtype=bool)
            key_valid[:, S - S // 3:] = False
        mask = None if key_valid is None else cupy.asarray(key_valid)
        case = {"dtype": dtype, "head_dim": E, "causal": causal, "shape": [B, H, Hkv, L, S], "padded": padded}
        start = time.perf_counter()
        try:
            q, k, v, d_out = device
            out, lse = fk.flash_attention_forward(q, k, v, causal=causal, key_valid=mask, element_type=dtype)
            grads = fk.flash_attention_backward(q, k, v, out, lse, d_out, causal=causal, key_valid=mask,
                                                element_type=dtype)
            got = [np.asarray(cupy.asnumpy(x)) for x in (out, *grads)]
            if dtype == "bfloat16":
                got = [_bf16_value(x) if x.dtype == np.uint16 else x for x in got]
            want = reference_attention(*values, causal, key_valid)
            case["finite"] = bool(all(np.isfinite(x.astype(np.float64)).all() for x in got))
            case["error"] = {name: _relative_error(a, b) for name, a, b in zip(("out", "dq", "dk", "dv"), got, want)}
            case["status"] = "ok" if case["finite"] else "failed: NaN or inf in the results"
        except Exception as error:  # noqa: BLE001 - reported; the sanitizer's log says more
            case["status"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        case["seconds"] = round(time.perf_counter() - start, 3)
        results.append(case)
        print(json.dumps(case), flush=True)
    return results


def workload_main(emulate: bool, out) -> int:
    if emulate:
        from accelerated import cupy_emulator

        with cupy_emulator.emulated_cupy():
            results = run_workload(sys.modules["cupy"], cupy_emulator.launcher("flash_attention_kernels"))
    else:
        import cupy

        from accelerated.cupy import flash_attention_kernels as fk

        cupy.cuda.set_allocator(None)  # every array its own cudaMalloc: memcheck sees accesses past its end
        results = run_workload(cupy, fk)
        cupy.cuda.Device().synchronize()
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"emulated": emulate, "cases": results}, indent=1) + "\n")
    return 0 if all(case["status"] == "ok" for case in results) else 1


# ---- compute-sanitizer ----------------------------------------------------------------------------

def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH, else in the usual CUDA folders (None when there is none)."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    roots = [os.environ.get(name) for name in ("CUDA_HOME", "CUDA_PATH")] + ["/usr/local/cuda"]
    roots += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for root in filter(None, roots):
        for candidate in (Path(root) / "bin" / "compute-sanitizer",
                          Path(root) / "compute-sanitizer" / "compute-sanitizer"):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


_ERROR_SUMMARY = re.compile(r"ERROR SUMMARY:\s*(\d+)\s+errors?")
_RACE_SUMMARY = re.compile(r"RACECHECK SUMMARY:\s*(\d+)\s+hazards? displayed\s*\((\d+)\s+errors?,\s*(\d+)\s+warnings?\)")


def parse_log(text: str) -> dict:
    """What a compute-sanitizer log says: errors (ERROR SUMMARY), racecheck's hazards, errors and
    warnings (RACECHECK SUMMARY), and the first few distinct error lines. None where a summary line
    is missing (the run did not finish)."""
    errors = _ERROR_SUMMARY.findall(text)
    race = _RACE_SUMMARY.findall(text)
    lines = []
    for line in text.splitlines():
        stripped = line.strip("= ").strip()
        if stripped.startswith(("Invalid ", "Error", "Race ", "Program hit", "Uninitialized", "Leaked")) \
                or "hazard" in stripped.lower() and "SUMMARY" not in stripped:
            if stripped not in lines:
                lines.append(stripped)
    return {"errors": int(errors[-1]) if errors else None,
            "hazards": int(race[-1][0]) if race else None,
            "race_errors": int(race[-1][1]) if race else None,
            "race_warnings": int(race[-1][2]) if race else None,
            "first_errors": lines[:10]}


def sanitize(tool: str, out: Path, timeout_s: float, sanitizer: str | None = None) -> int:
    """Run the workload under compute-sanitizer ``tool``; write sanitizer_<tool>.txt and .json in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    log_path, json_path = out / f"sanitizer_{tool}.txt", out / f"sanitizer_{tool}.json"
    sanitizer = sanitizer or find_sanitizer()
    summary = {"tool": tool, "sanitizer": sanitizer, "timeout_s": timeout_s, "cases": [list(c) for c in CASES]}
    if sanitizer is None:
        summary.update(status="failed: compute-sanitizer not found (PATH, CUDA_HOME, /usr/local/cuda)",
                       summary="compute-sanitizer not found")
        json_path.write_text(json.dumps(summary, indent=1) + "\n")
        return 2
    command = [sanitizer, "--tool", tool, "--print-limit", "50"]
    if tool == "memcheck":
        command += ["--leak-check", "no"]
    workload_json = out / f"workload_{tool}.json"
    command += [sys.executable, "-m", "rosetta.bench.gpu_sanitize", "--workload", "--out", str(workload_json)]
    summary["command"] = command
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    start = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            rc = process.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(process)
            rc = 124
    text = log_path.read_text(errors="replace")
    found = parse_log(text)
    summary.update(found, exit_code=rc, wall_s=round(time.monotonic() - start, 2))
    if workload_json.exists():
        summary["workload"] = json.loads(workload_json.read_text())["cases"]
    if timed_out:
        summary["status"] = f"timed out after {timeout_s} s"
    elif found["errors"] is None:
        summary["status"] = f"failed: no ERROR SUMMARY in the log (exit {rc})"
    elif found["errors"] or found.get("race_errors"):
        summary["status"] = "failed: the sanitizer reports errors"
    elif rc != 0:
        summary["status"] = f"failed: the workload exited with {rc}"
    else:
        summary["status"] = "passed"
    summary["summary"] = (f"{tool}: {summary['status']}; errors {found['errors']}"
                          + (f", hazards {found['hazards']} ({found['race_errors']} errors, "
                             f"{found['race_warnings']} warnings)" if found["hazards"] is not None else ""))
    json_path.write_text(json.dumps(summary, indent=1) + "\n")
    print(summary["summary"], flush=True)
    return 0 if summary["status"] == "passed" else (124 if timed_out else 1)


def _kill_group(process) -> None:
    """SIGTERM to the process group we started, then SIGKILL after 2 s."""
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rosetta.bench.gpu_sanitize", description=__doc__.split("\n")[0])
    parser.add_argument("--tool", choices=TOOLS, help="run the workload under compute-sanitizer --tool TOOL")
    parser.add_argument("--workload", action="store_true", help="run the workload itself (what the sanitizer runs)")
    parser.add_argument("--emulate", action="store_true", help="with --workload: on the CPU emulator")
    parser.add_argument("--out", help="--tool: the folder for the log and JSON; --workload: a JSON file")
    parser.add_argument("--timeout-s", type=float, default=25.0, help="--tool: seconds for the sanitized run")
    args = parser.parse_args(argv)
    if args.workload:
        return workload_main(args.emulate, args.out)
    if not args.tool:
        parser.error("give --tool memcheck|racecheck, or --workload")
    return sanitize(args.tool, Path(args.out or "."), args.timeout_s)


if __name__ == "__main__":
    sys.exit(main())
