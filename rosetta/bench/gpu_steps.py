"""The GPU run's benchmark steps, as small command lines over the suites (rosetta.bench.attention,
rosetta.bench.training) and one check of their own:

    python -m rosetta.bench.gpu_steps attention --out DIR [--seq-lens 4096] [--budget-s 60] ...
        attention.run with errors against an fp32 SDPA; DIR/attention.json + .png at the end and
        DIR/attention.progress.json after every row
    python -m rosetta.bench.gpu_steps training --out DIR --compiled no|yes [--budget-s 45] ...
        training.run at the base config; DIR/training_base_<eager|compiled>.json + .png (+ .progress.json)
    python -m rosetta.bench.gpu_steps flash64 --out DIR
        one forward + backward of the flash kernels on tensors of more than 2**31 elements (64-bit
        offsets), checked against torch SDPA on the first head, the head that straddles element 2**31,
        and the last head; DIR/flash64.json

Each writes a ``summary`` line into its JSON for the run's table (rosetta/bench/gpu_run.py).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from . import attention, common, plots, training

#: the 64-bit check's shape (B, H, N, d), float16: 2 × 16400 × 512 × 128 = 2 149 580 800 elements per
#: tensor (> 2**31 = 2 147 483 648), B·H = 32 800 within the kernels' grid.y (65 535); about 4.3 GB
#: a tensor, 43 GB for q, k, v, out, d_out, the fp32 dq accumulator, dq, dk and dv.
FLASH64_SHAPE = (2, 16400, 512, 128)
#: the 64-bit check passes when every error is finite and at most this many times torch SDPA's (float16)
FLASH64_ERROR_RATIO = 10.0


def _ints(text: str) -> tuple:
    return tuple(int(part) for part in text.split(",") if part)


def _row_key(row) -> tuple:
    return (row.get("N"), row.get("d"), row.get("dtype"), row.get("causal"), row.get("pass"))


def attention_summary(document: dict) -> str:
    """'rows: a ok, b failed, c skipped; cupy-flash: x–y × torch-sdpa's TFLOP/s, errors ≤ z × SDPA's'."""
    rows = [r for r in document["results"] if "N" in r]
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"].startswith(("failed", "out of memory"))]
    text = f"{len(rows)} rows: {len(ok)} ok, {len(failed)} failed, {len(rows) - len(ok) - len(failed)} skipped"
    sdpa = {_row_key(r): r for r in ok if r["implementation"] == "torch-sdpa"}
    speed = [r["tflops"] / sdpa[_row_key(r)]["tflops"] for r in ok
             if r["implementation"] == "cupy-flash" and _row_key(r) in sdpa]
    if speed:
        text += f"; cupy-flash at {min(speed):.2f}–{max(speed):.2f}× torch-sdpa's TFLOP/s"
    errors = [r["error_vs_sdpa"] for r in ok if r["implementation"] == "cupy-flash" and r.get("error_vs_sdpa") is not None]
    if errors:
        text += f", max error ≤ {max(errors):.2f}× SDPA's"
    if failed:
        text += "; first failure: " + f"{failed[0]['implementation']} N={failed[0]['N']} d={failed[0]['d']} " \
                                       f"{failed[0]['dtype']}: {failed[0]['status'][:120]}"
    return text


def training_summary(document: dict) -> str:
    parts = []
    for row in document["results"]:
        if row.get("median_ms"):
            ratio = row.get("ratio_to_baseline")
            parts.append(f"{row['label']} {row['median_ms']:.1f} ms" + (f" ({ratio:.2f}×)" if ratio else ""))
        else:
            parts.append(f"{row['label']}: {row['status'][:80]}")
    return "; ".join(parts)


def attention_step(args) -> int:
    out = Path(args.out)
    document = attention.run(args.seq_lens, args.head_dims, tuple(args.dtypes.split(",")),
                             {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal],
                             tuple(args.passes.split(",")), args.batch_heads, tuple(args.implementations.split(",")),
                             warmup=args.warmup, reps=args.reps, errors=not args.no_errors,
                             error_heads=args.error_heads, budget_s=args.budget_s, max_row_s=args.max_row_s,
                             progress=out / f"{args.name}.progress.json")
    document["command"] = "python -m rosetta.bench.gpu_steps " + " ".join(sys.argv[1:])
    document["summary"] = attention_summary(document)
    print(attention.report(document))
    drawn = plots.attention_plot(document, out / f"{args.name}.png")
    document["files"] = {"json": str(out / f"{args.name}.json"), "png": str(drawn) if drawn else None}
    print(f"wrote {common.write_json(document, out, args.name)}\n{document['summary']}")
    return 0


def training_step(args) -> int:
    out = Path(args.out)
    name = f"training_{args.config}_{'compiled' if args.compiled == 'yes' else 'eager'}"
    try:
        document = training.run(args.config, args.warmup, args.reps, training.ROW_SETS[args.compiled],
                                budget_s=args.budget_s, progress=out / f"{name}.progress.json")
    except RuntimeError as error:
        print(f"training: {error}", file=sys.stderr)
        return 2
    document["command"] = "python -m rosetta.bench.gpu_steps " + " ".join(sys.argv[1:])
    document["summary"] = training_summary(document)
    print(training.report(document))
    drawn = plots.bars(document, out / f"{name}.png", "label",
                       f"training step, config {args.config}, {document['device']['name']}")
    document["files"] = {"json": str(out / f"{name}.json"), "png": str(drawn) if drawn else None}
    print(f"wrote {common.write_json(document, out, name)}\n{document['summary']}")
    failed = [r for r in document["results"] if r["status"].startswith("failed")]
    return 1 if failed else 0


# ---- 64-bit offsets ----------------------------------------------------------------------------------

def flash64_heads(shape, boundary: int = 2**31) -> list:
    """(batch, head) pairs to check: the first, the one holding element ``boundary`` of a (B, H, N, d)
    tensor (when it has one), the last."""
    B, H, N, d = shape
    heads = [(0, 0)]
    if boundary < B * H * N * d:
        heads.append(divmod(boundary // (N * d), H))
    heads.append((B - 1, H - 1))
    return list(dict.fromkeys((int(b), int(h)) for b, h in heads))


def check_heads(inputs, outputs, shape, dtype: str, boundary: int = 2**31) -> list:
    """Each of flash64_heads' heads: the kernels' out, dq, dk, dv (``outputs``, CuPy arrays (B, H, N, d))
    against an fp32 SDPA on the same head of ``inputs`` (q, k, v, d_out), beside torch SDPA's error."""
    B, H, N, d = shape
    checks = []
    for b, h in flash64_heads(shape, boundary):
        sliced = [attention.to_torch(x[b:b + 1, h:h + 1], dtype) for x in inputs]
        ours = [attention.to_torch(x[b:b + 1, h:h + 1], dtype) for x in outputs]
        reference = attention.reference_outputs(*sliced, False, True)
        sdpa = attention.compare(attention.implementation_outputs("torch-sdpa", *sliced, False, True), reference)
        errors = attention.compare(ours, reference)
        ratio = attention.ratio_to(errors, sdpa)
        finite = all(math.isfinite(value) for value in errors["max_abs"].values())
        first = (b * H + h) * N * d
        checks.append({"batch": b, "head": h, "first_element": first, "last_element": first + N * d - 1,
                       "error": errors, "sdpa_error": sdpa, "error_vs_sdpa": ratio,
                       "passed": bool(finite and ratio is not None and ratio <= FLASH64_ERROR_RATIO)})
    return checks


def flash64(out: Path, shape=FLASH64_SHAPE, dtype: str = "float16") -> int:
    import cupy
    import torch

    from accelerated.cupy import flash_attention_kernels as fk

    B, H, N, d = shape
    elements = B * H * N * d
    record = {"suite": "flash64", "shape": list(shape), "dtype": dtype, "elements_per_tensor": elements,
              "above_2_31": elements > 2**31, "causal": False, "status": "running",
              "pass_rule": f"every error finite and <= {FLASH64_ERROR_RATIO}× torch SDPA's ({dtype}) against "
                           "an fp32 SDPA on the same heads"}
    path = out / "flash64.json"

    def write():
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")

    write()
    free, total = cupy.cuda.Device().mem_info
    record["memory_free_gib"] = round(free / 2**30, 2)
    rng = cupy.random.default_rng(0)
    chunk = max(1, 2**28 // (N * d))  # heads drawn at a time: 2**28 float32 temporaries (1 GiB), each below 2**31

    def draw():
        y = cupy.empty(shape, dtype=dtype)
        flat = y.reshape(B * H, N, d)
        for first in range(0, B * H, chunk):
            count = min(chunk, B * H - first)
            flat[first:first + count] = rng.standard_normal((count, N, d), dtype=cupy.float32).astype(dtype)
        return y

    start = time.perf_counter()
    q, k, v, d_out = (draw() for _ in range(4))
    cupy.cuda.Device().synchronize()
    record["inputs_s"] = round(time.perf_counter() - start, 2)
    events = [cupy.cuda.Event() for _ in range(3)]
    events[0].record()
    o, lse = fk.flash_attention_forward(q, k, v, causal=False)
    events[1].record()
    dq, dk, dv = fk.flash_attention_backward(q, k, v, o, lse, d_out, causal=False)
    events[2].record()
    events[2].synchronize()
    forward_ms = cupy.cuda.get_elapsed_time(events[0], events[1])
    backward_ms = cupy.cuda.get_elapsed_time(events[1], events[2])
    flops = common.attention_flops(B * H, N, d)
    record.update(forward_ms=round(forward_ms, 2), backward_ms=round(backward_ms, 2),
                  forward_tflops=round(flops / forward_ms * 1e-9, 2),
                  backward_tflops=round(2.5 * flops / backward_ms * 1e-9, 2),
                  peak_pool_gib=round(cupy.get_default_memory_pool().total_bytes() / 2**30, 2))
    write()
    checks = record["checks"] = check_heads((q, k, v, d_out), (o, dq, dk, dv), shape, dtype)
    torch.cuda.synchronize()
    passed = all(c["passed"] for c in checks)
    record["status"] = "passed" if passed else "failed"
    record["summary"] = (f"{record['status']}: {elements:,} elements a tensor; heads "
                         + ", ".join(f"({c['batch']},{c['head']}) {c['error_vs_sdpa']:.2f}× SDPA's error"
                                     if c["error_vs_sdpa"] is not None else f"({c['batch']},{c['head']}) no ratio"
                                     for c in checks)
                         + f"; forward {forward_ms:.0f} ms, backward {backward_ms:.0f} ms")
    write()
    print(record["summary"])
    return 0 if passed else 1


def flash64_step(args) -> int:
    shape = _ints(args.shape) if args.shape else FLASH64_SHAPE
    try:
        return flash64(Path(args.out), shape, args.dtype)
    except Exception as error:  # noqa: BLE001 - recorded in the JSON, then the exit status says it failed
        path = Path(args.out) / "flash64.json"
        record = json.loads(path.read_text()) if path.exists() else {"suite": "flash64", "shape": list(shape)}
        record["status"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        record["summary"] = record["status"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(record["summary"], file=sys.stderr)
        return 1


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m rosetta.bench.gpu_steps", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    att = sub.add_parser("attention", help="attention.run with errors, a time budget and progress")
    att.add_argument("--name", default="attention", help="file stem of the JSON/PNG (default attention)")
    att.add_argument("--seq-lens", type=_ints, default=(4096,))
    att.add_argument("--head-dims", type=_ints, default=(64, 128))
    att.add_argument("--dtypes", default="float16,bfloat16")
    att.add_argument("--causal", default="both", choices=("both", "yes", "no"))
    att.add_argument("--passes", default="forward,forward+backward")
    att.add_argument("--batch-heads", type=int, default=128)
    att.add_argument("--implementations", default="cupy-flash,torch-sdpa,torch-sdpa-flash,torch-sdpa-cudnn")
    att.add_argument("--warmup", type=int, default=2)
    att.add_argument("--reps", type=int, default=5)
    att.add_argument("--no-errors", action="store_true")
    att.add_argument("--error-heads", type=int, default=2)
    att.add_argument("--budget-s", type=float)
    att.add_argument("--max-row-s", type=float, default=2.0)
    tr = sub.add_parser("training", help="training.run at the base config, eager or compiled rows")
    tr.add_argument("--config", default="base", choices=tuple(training.CONFIGS))
    tr.add_argument("--compiled", default="no", choices=("no", "yes"))
    tr.add_argument("--warmup", type=int, default=3)
    tr.add_argument("--reps", type=int, default=10)
    tr.add_argument("--budget-s", type=float)
    f64 = sub.add_parser("flash64", help="the flash kernels on > 2**31 elements against torch SDPA")
    f64.add_argument("--shape", help=f"B,H,N,d (default {','.join(map(str, FLASH64_SHAPE))})")
    f64.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    for p in (att, tr, f64):
        p.add_argument("--out", default=".", help="folder for the JSON (and PNG)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return {"attention": attention_step, "training": training_step, "flash64": flash64_step}[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
