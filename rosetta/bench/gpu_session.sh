#!/usr/bin/env bash
# One GPU session's work, in phases that each fit a 10-minute call on a lent machine:
#
#   bash rosetta/bench/gpu_session.sh check       # the GPU parity tests (CuPy kernels, torch on CUDA)
#   bash rosetta/bench/gpu_session.sh attention        # fused kernel vs SDPA vs plain, N <= 4096
#   bash rosetta/bench/gpu_session.sh attention-long   # N 8192 and 16384: speed and peak memory
#   bash rosetta/bench/gpu_session.sh training    # base-config training steps, eager (+ CuPy), MFU
#   bash rosetta/bench/gpu_session.sh training-compiled  # the same with torch.compile, both sides
#
# Results go to $OUT (the device tool's folder that comes back) or ./gpu_results; commit the
# benchmark JSON and PNG under docs/benchmarks/. Run from the repository root.
set -uo pipefail
phase=${1:?"phase: check, attention, attention-long, training or training-compiled"}
out=${OUT:-gpu_results}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  python -c "import sys, numpy, torch; print('python', sys.version.split()[0], 'numpy', numpy.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  python -c "import cupy; print('cupy', cupy.__version__, 'cuda path', cupy.cuda.get_cuda_path())" 2>&1
} | tee "$out/environment_$phase.txt"

case "$phase" in
  check)
    # CuPy first: its kernels have only run on the CPU emulator before.
    ROSETTA_BACKENDS=cupy timeout 300 python -m pytest -q -x -p no:cacheprovider \
      parity_tests/test_kernels_compile.py parity_tests/test_fused_kernels_compile.py \
      parity_tests/test_cupy_parity.py parity_tests/test_api_conformance.py 2>&1 | tail -40 | tee "$out/check_cupy.txt"
    ROSETTA_BACKENDS=torch-cuda timeout 200 python -m pytest -q -p no:cacheprovider \
      parity_tests/test_torch_parity.py parity_tests/test_torch_models.py 2>&1 | tail -20 | tee "$out/check_torch_cuda.txt"
    # the training command on the CuPy backend (it has only run on the host emulator)
    timeout 60 python -m rosetta.cli train --backend cupy --config tiny --steps 100 --out "$out/train_cupy" \
      --quiet 2>&1 | tail -5 | tee "$out/check_train_cupy.txt"
    ;;
  attention)  # the targets: fp16/bf16, N up to 4096
    timeout 580 python -m rosetta.bench attention --seq-lens 512,1024,2048,4096 --dtypes float16,bfloat16 \
      --warmup 2 --reps 5 --out "$out/attention" 2>&1 | tee "$out/attention.txt"
    ;;
  attention-long)  # N 8192 and 16384 (peak memory target), fp16, fewer reps
    timeout 580 python -m rosetta.bench attention --seq-lens 8192,16384 --dtypes float16 \
      --warmup 1 --reps 3 --out "$out/attention_long" 2>&1 | tee "$out/attention_long.txt"
    ;;
  training)  # eager rows and CuPy: ratios against eager torch.nn.Transformer
    timeout 580 python -m rosetta.bench training --compiled no --out "$out" 2>&1 | tee "$out/training.txt"
    ;;
  training-compiled)  # torch.compile on both sides (four compilations of the base model)
    timeout 580 python -m rosetta.bench training --compiled yes --out "$out" 2>&1 | tee "$out/training_compiled.txt"
    ;;
  *)
    echo "unknown phase $phase (check, attention, attention-long, training, training-compiled)" >&2
    exit 2
    ;;
esac
