#!/usr/bin/env bash
# One lent GPU session's work: a thin wrapper of rosetta/bench/gpu_run.py (each step its own subprocess
# with its own timeout; results, step by step, in $OUT or ./gpu_results; a summary.json and summary.md).
#
#   bash rosetta/bench/gpu_session.sh            # main mode: probe, parity, attention, training, 64-bit, sanitizers (<= 390 s)
#   bash rosetta/bench/gpu_session.sh extra      # torch.compile rows, attention at N 8192 and 16384 (<= 470 s)
#   bash rosetta/bench/gpu_session.sh main --dry-run   # any further options go to gpu_run
#
# Run from the repository root. The step table: python -m rosetta.bench.gpu_run --list
set -uo pipefail
mode=${1:-main}
shift || true
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
exec python -m rosetta.bench.gpu_run --mode "$mode" --out "${OUT:-gpu_results}" "$@"
