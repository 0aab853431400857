"""The ``rosetta`` command line (also ``python -m rosetta``)."""

from __future__ import annotations

import argparse
import platform
import sys


def _gradcheck(args) -> int:
    from reference.gradcheck_suite import TOLERANCE, run_suite

    print(f"Gradient check of every layer: float64 central differences, tolerance {TOLERANCE:.0e}")
    print(f"{'layer':<52} {'tensors':>7} {'entries':>7} {'worst rel err':>13} {'time':>7}  result")
    failed = 0
    for row in run_suite(max_entries=args.max_entries, names=args.only):
        failed += not row.passed
        print(f"{row.layer:<52} {row.tensors:>7} {row.entries:>7} {row.worst:>13.2e} {row.seconds:>6.2f}s  "
              f"{'pass' if row.passed else 'FAIL'}", flush=True)
    print("all layers pass" if not failed else f"{failed} layer(s) FAILED")
    return 1 if failed else 0


def _info(args) -> int:
    import numpy

    print(f"python {platform.python_version()}  numpy {numpy.__version__}")
    try:
        import torch

        cuda = torch.cuda.is_available()
        print(f"torch {torch.__version__}  cuda: {torch.cuda.get_device_name(0) if cuda else 'not available'}")
    except ImportError:
        print("torch: not installed (pip install 'rosetta-transformer[torch]')")
    try:
        import cupy

        print(f"cupy {cupy.__version__}  devices: {cupy.cuda.runtime.getDeviceCount()}")
    except Exception as error:  # noqa: BLE001 - any failure means the backend is unavailable
        print(f"cupy: unavailable ({type(error).__name__}: {error})")
    return 0


def _bench(args) -> int:
    from rosetta.bench.__main__ import main as bench_main

    return bench_main(args.bench_args)


def add_training_commands(sub) -> None:
    from .train import add_commands

    add_commands(sub)


def add_model_commands(sub) -> None:
    from .generate import add_commands

    add_commands(sub)


def add_quantize_commands(sub) -> None:
    from .quantize import add_commands

    add_commands(sub)


def add_export_commands(sub) -> None:
    from .onnx_export import add_commands

    add_commands(sub)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="rosetta", description="Rosetta Transformer")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("gradcheck", help="gradient-check every layer of the reference and print a table")
    check.add_argument("--max-entries", type=int, default=40,
                       help="entries checked per tensor (random sample; default 40, 0 for all)")
    check.add_argument("--only", nargs="*", help="check only layers whose name contains one of these")
    check.set_defaults(run=_gradcheck)
    info = sub.add_parser("info", help="backends, devices and versions")
    info.set_defaults(run=_info)
    add_training_commands(sub)  # train, decode, plot-attention
    add_model_commands(sub)  # generate, embed (Hugging Face folders)
    add_export_commands(sub)  # export-onnx (ONNX graphs for onnxruntime)
    add_quantize_commands(sub)  # quantize (int8 / 4-bit checkpoints)
    bench = sub.add_parser("bench", help="benchmarks (python -m rosetta.bench): attention, training, cpu, dispatch",
                           add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(run=_bench)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after "bench" is the bench suites' own (their --help included)
        return _bench(argparse.Namespace(bench_args=argv[1:]))
    args = parser.parse_args(argv)
    if getattr(args, "max_entries", None) == 0:
        args.max_entries = None
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
