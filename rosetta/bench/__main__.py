"""``python -m rosetta.bench {attention,training,cpu,dispatch,real-models,quantization,hf-agreement} [options]`` (also ``rosetta bench ...``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import common, plots


def _ints(text: str) -> tuple:
    return tuple(int(part) for part in text.split(",") if part)


def _floats(text: str) -> tuple:
    return tuple(float(part) for part in text.split(",") if part)


def build_parser(parser=None):
    parser = parser or argparse.ArgumentParser(prog="python -m rosetta.bench",
                                               description="Rosetta Transformer benchmarks (table + JSON + PNG)")
    sub = parser.add_subparsers(dest="suite", required=True)
    att = sub.add_parser("attention", help="attention kernels: TFLOP/s and peak memory against N (GPU)")
    att.add_argument("--seq-lens", type=_ints, default=(512, 1024, 2048, 4096, 8192, 16384), help="N values, e.g. 512,1024")
    att.add_argument("--head-dims", type=_ints, default=(64, 128))
    att.add_argument("--dtypes", default="float16,bfloat16,float32")
    att.add_argument("--causal", default="both", choices=("both", "yes", "no"))
    att.add_argument("--passes", default="forward,forward+backward")
    att.add_argument("--batch-heads", type=int, default=128, help="B·H (default 128)")
    att.add_argument("--implementations", default=",".join(__import__("rosetta.bench.attention",
                                                                      fromlist=["x"]).IMPLEMENTATIONS))
    att.add_argument("--numpy-max-n", type=int, default=1024, help="largest N for the NumPy reference")
    att.add_argument("--numpy-batch-heads", type=int, default=8, help="B·H for the NumPy reference (CPU)")
    att.add_argument("--warmup", type=int, default=3)
    att.add_argument("--reps", type=int, default=10)
    tr = sub.add_parser("training", help="whole-model training step vs torch.nn.Transformer (GPU; --config cpu)")
    tr.add_argument("--config", default="base", choices=("base", "cpu"))
    tr.add_argument("--warmup", type=int, default=5)
    tr.add_argument("--reps", type=int, default=20)
    tr.add_argument("--compiled", default="both", choices=("both", "no", "yes"),
                    help="rows with torch.compile, without, or both (default; writes training_<config>[_eager|_compiled])")
    cpu = sub.add_parser("cpu", help="NumPy reference vs accelerated.torch training step on the CPU")
    cpu.add_argument("--preset", default="small", help="training preset of rosetta/train.py (default small)")
    cpu.add_argument("--batch-size", type=int, help="override the preset's batch size")
    cpu.add_argument("--steps", type=int, default=30, help="timed steps per backend and thread setting")
    cpu.add_argument("--warmup", type=int, default=5)
    cpu.add_argument("--threads", default="1,default", help="thread settings, e.g. 1,default")
    cpu.add_argument("--no-profile", action="store_true", help="skip the cProfile of the reference")
    dispatch = sub.add_parser("dispatch", help="kernels, host syncs and compile graph breaks per training step (CPU)")
    dispatch.add_argument("--reps", type=int, default=30, help="timed steps per row")
    dispatch.add_argument("--no-compile-check", action="store_true", help="skip torch._dynamo.explain")
    real = sub.add_parser("real-models", help="BERT-base / GPT-2-small-sized random models vs transformers (CPU)")
    real.add_argument("--threads", type=_ints, default=(1, 2), help="thread settings, e.g. 1,2")
    real.add_argument("--layers", type=int, help="layers of both models (default 12: the real sizes)")
    real.add_argument("--batch", type=int, default=2)
    real.add_argument("--seq", type=int, default=128)
    real.add_argument("--warmup", type=int, default=1)
    real.add_argument("--reps", type=int, default=3)
    real.add_argument("--prompt-len", type=int, default=16)
    real.add_argument("--new-tokens", type=int, default=32)
    real.add_argument("--gen-reps", type=int, default=3)
    quant = sub.add_parser("quantization", help="int8 / 4-bit checkpoints of the main job vs the float model (CPU)")
    quant.add_argument("--checkpoint", help="a float checkpoint of the main job (default: train one, --preset)")
    quant.add_argument("--preset", default="small", help="training preset when no --checkpoint (default small)")
    quant.add_argument("--outlier-thresholds", type=_floats, default=(6.0, 3.0),
                       help="LLM.int8 thresholds, one row each (default 6,3)")
    quant.add_argument("--warmup", type=int, default=1)
    quant.add_argument("--reps", type=int, default=5)
    agree = sub.add_parser("hf-agreement", help="Hugging Face models vs transformers: worst error per architecture "
                                                "and backend (CPU)")
    agree.add_argument("--seeds", type=int, default=3, help="seeds (checkpoints and inputs) per architecture")
    agree.add_argument("--architectures", default=",".join(__import__("rosetta.bench.hf_agreement",
                                                                      fromlist=["x"]).ARCHITECTURES))
    for p in (att, tr, cpu, dispatch, real, quant, agree):
        p.add_argument("--out", default=common.DEFAULT_OUT, help=f"folder for JSON and PNG (default {common.DEFAULT_OUT})")
    return parser


def run(args) -> int:
    out = Path(args.out)
    if args.suite == "attention":
        from . import attention as suite

        document = suite.run(args.seq_lens, args.head_dims, tuple(args.dtypes.split(",")),
                             {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal],
                             tuple(args.passes.split(",")), args.batch_heads, tuple(args.implementations.split(",")),
                             args.numpy_max_n, args.numpy_batch_heads, args.warmup, args.reps)
    elif args.suite == "training":
        from . import training as suite

        try:
            document = suite.run(args.config, args.warmup, args.reps, suite.ROW_SETS[args.compiled])
        except RuntimeError as error:
            print(f"bench training: {error}", file=sys.stderr)
            return 2
    elif args.suite == "dispatch":
        from . import dispatch as suite

        document = suite.run(reps=args.reps, compile_check=not args.no_compile_check)
    elif args.suite == "real-models":
        from . import real_models as suite

        document = suite.run(args.threads, args.layers, args.batch, args.seq, args.warmup, args.reps,
                             args.prompt_len, args.new_tokens, gen_reps=args.gen_reps)
    elif args.suite == "quantization":
        from . import quantization as suite

        document = suite.run(args.checkpoint, args.preset, outlier_thresholds=args.outlier_thresholds,
                             warmup=args.warmup, reps=args.reps, progress=True)
    elif args.suite == "hf-agreement":
        from . import hf_agreement as suite

        document = suite.run(args.seeds, tuple(args.architectures.split(",")))
    else:
        from . import cpu as suite

        threads = tuple(None if t == "default" else int(t) for t in args.threads.split(","))
        document = suite.run(args.steps, args.warmup, args.preset, args.batch_size, threads,
                             profile=not args.no_profile)
    document["command"] = "python -m rosetta.bench " + " ".join(sys.argv[1:]) if sys.argv[1:] else document["command"]
    print(suite.report(document))
    out.mkdir(parents=True, exist_ok=True)
    name = args.suite.replace("-", "_")
    if args.suite == "training":
        name = f"training_{args.config}" + {"both": "", "no": "_eager", "yes": "_compiled"}[args.compiled]
    png = out / f"{name}.png"
    if args.suite == "attention":
        drawn = plots.attention_plot(document, png)
    elif args.suite == "training":
        drawn = plots.bars(document, png, "label", f"training step, config {args.config}, {document['device']['name']}")
    elif args.suite == "dispatch":
        drawn = plots.dispatch_plot(document, png)
    elif args.suite in ("real-models", "quantization"):
        drawn = suite.plot(document, png)
    elif args.suite == "hf-agreement":
        drawn = None  # a table of figures, no plot
    else:
        drawn = plots.bars(document, png, lambda r: f"{r['implementation']}\n{r['threads']} thr.",
                           f"CPU training step ({document['config']['preset']} preset), {document['device']['name']}")
    document["files"] = {"json": str(out / f"{name}.json"), "png": str(drawn) if drawn else None}
    path = common.write_json(document, out, name)
    print(f"wrote {path}" + (f", {drawn}" if drawn else ""))
    return 0


def main(argv=None) -> int:
    try:
        return run(build_parser().parse_args(argv))
    except ValueError as error:  # a bad option value: one line, not a traceback
        print(f"rosetta bench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
