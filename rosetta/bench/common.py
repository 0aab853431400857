"""What every benchmark shares: FLOP formulas, timing, the environment record, tables and JSON."""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import time
from pathlib import Path

SCHEMA_VERSION = 1
DEFAULT_OUT = "docs/benchmarks"
#: dense peak TFLOP/s of GPUs we know (NVIDIA datasheets, SXM, without sparsity); tf32 is what fp32 matmuls get
PEAK_TFLOPS = {
    "H100": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0},
    "H200": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0},
}
#: keys every benchmark JSON has (parity_tests/test_bench.py checks them)
REQUIRED_KEYS = ("schema_version", "suite", "date", "command", "device", "versions", "config", "results")
REQUIRED_DEVICE_KEYS = ("kind", "name", "cpu", "cpu_count")
REQUIRED_VERSION_KEYS = ("python", "numpy", "torch", "cupy")


# ---- FLOP formulas --------------------------------------------------------------------------

def attention_flops(batch_heads: int, seq_len: int, head_dim: int, causal: bool = False,
                    backward: bool = False) -> float:
    """FLOPs of one attention call: forward 4·B·H·N²·d (QKᵀ and PV, 2 FLOPs per multiply-add),
    halved when causal; the backward counts 2.5× the forward (five N²·d products against two),
    so forward+backward is 3.5× the forward."""
    forward = 4.0 * batch_heads * seq_len * seq_len * head_dim
    if causal:
        forward /= 2.0
    return forward * 3.5 if backward else forward


def transformer_matmul_params(d_model: int, d_ff: int, num_encoder_layers: int, num_decoder_layers: int,
                              vocab_size: int) -> dict:
    """Weights that multiply activations (embedding lookups and biases/norms do no matmul FLOPs).

    encoder layer: Wq, Wk, Wv, Wo (4·d²) + FFN (2·d·d_ff); decoder layer: self + cross attention
    (8·d²) + FFN; output projection d·V (applied on the decoder side).
    """
    encoder = num_encoder_layers * (4 * d_model * d_model + 2 * d_model * d_ff)
    decoder = num_decoder_layers * (8 * d_model * d_model + 2 * d_model * d_ff) + d_model * vocab_size
    return {"encoder": encoder, "decoder": decoder}


def transformer_step_flops(d_model: int, d_ff: int, num_encoder_layers: int, num_decoder_layers: int,
                           vocab_size: int, batch: int, src_len: int, tgt_len: int) -> dict:
    """Model FLOPs of one training step (forward + backward) of the encoder-decoder Transformer.

        dense     = 6 · (P_enc · B·S + P_dec · B·T)            (2 forward + 4 backward FLOPs per weight per token)
        attention = 12 · B · d_model · (L_enc·S² + L_dec·(T² + T·S))   (QKᵀ and PV, ×3 for the backward)

    P_enc, P_dec: matmul weights of each side (transformer_matmul_params). With S = T this is
    the usual 6·params·tokens plus the attention term; no causal discount (as in PaLM's MFU).
    """
    params = transformer_matmul_params(d_model, d_ff, num_encoder_layers, num_decoder_layers, vocab_size)
    dense = 6.0 * (params["encoder"] * batch * src_len + params["decoder"] * batch * tgt_len)
    attention = 12.0 * batch * d_model * (num_encoder_layers * src_len * src_len
                                          + num_decoder_layers * (tgt_len * tgt_len + tgt_len * src_len))
    return {"dense": dense, "attention": attention, "total": dense + attention}


def peak_tflops(device_name: str, precision: str):
    """The dense peak of a known GPU for 'bf16', 'fp16' or 'tf32', else None (MFU not reported)."""
    for key, peaks in PEAK_TFLOPS.items():
        if key in (device_name or ""):
            return peaks.get(precision)
    return None


# ---- timing -----------------------------------------------------------------------------------

def summarize(times_ms) -> dict:
    """Median, min, max and count of a list of per-rep times in milliseconds."""
    times = sorted(float(t) for t in times_ms)
    return {"median_ms": statistics.median(times), "min_ms": times[0], "max_ms": times[-1], "reps": len(times),
            "times_ms": [round(t, 4) for t in times_ms]}


def time_cpu(fn, warmup: int, reps: int) -> dict:
    """Wall-clock time of fn() per call (perf_counter), after warm-up calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return summarize(times)


def time_torch_cuda(fn, warmup: int, reps: int) -> dict:
    """GPU time of fn() per call between CUDA events (each rep its own pair), after warm-up."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return summarize([s.elapsed_time(e) for s, e in pairs])


def time_cupy(fn, warmup: int, reps: int) -> dict:
    """GPU time of fn() per call between CuPy CUDA events, after warm-up."""
    import cupy

    for _ in range(warmup):
        fn()
    cupy.cuda.Device().synchronize()
    pairs = []
    for _ in range(reps):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    cupy.cuda.Device().synchronize()
    return summarize([cupy.cuda.get_elapsed_time(s, e) for s, e in pairs])


# ---- the environment --------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    """python, numpy, torch, cupy versions (None where a package is not installed) and torch's CUDA."""
    import numpy

    found = {"python": platform.python_version(), "numpy": numpy.__version__, "torch": None, "cupy": None,
             "torch_cuda": None}
    try:
        import torch

        found["torch"] = torch.__version__
        found["torch_cuda"] = torch.version.cuda
    except ImportError:
        pass
    try:
        import cupy

        found["cupy"] = cupy.__version__
    except Exception:  # noqa: BLE001 - any failure means CuPy is unusable here
        pass
    return found


def gpu_name():
    """The name of CUDA device 0 (through torch, else CuPy), or None when there is none."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:  # noqa: BLE001
        pass
    return None


def device_record(kind: str) -> dict:
    """What the figures were measured on: kind 'cpu' or 'gpu', the device's name, the CPU."""
    import os

    cpu = cpu_model()
    gpu = gpu_name() if kind == "gpu" else None
    return {"kind": kind, "name": gpu if kind == "gpu" else cpu, "cpu": cpu, "cpu_count": os.cpu_count(),
            "gpu": gpu, "platform": platform.platform()}


def record(suite: str, command: str, device_kind: str, config: dict, results: list, **extra) -> dict:
    """The JSON document of one run."""
    return {"schema_version": SCHEMA_VERSION, "suite": suite,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command, "device": device_record(device_kind), "versions": versions(),
            "config": config, "results": results, **extra}


def validate(document: dict) -> dict:
    """Raise ValueError naming the first missing key of a benchmark JSON document; return it."""
    for key in REQUIRED_KEYS:
        if key not in document:
            raise ValueError(f"benchmark JSON must have key {key!r}, got keys {sorted(document)}")
    for key in REQUIRED_DEVICE_KEYS:
        if key not in document["device"]:
            raise ValueError(f"benchmark JSON device must have key {key!r}, got {sorted(document['device'])}")
    for key in REQUIRED_VERSION_KEYS:
        if key not in document["versions"]:
            raise ValueError(f"benchmark JSON versions must have key {key!r}, got {sorted(document['versions'])}")
    if not isinstance(document["results"], list):
        raise ValueError(f"benchmark JSON results must be a list, got {type(document['results']).__name__}")
    return document


def write_json(document: dict, out_dir, name: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(validate(document), indent=2) + "\n")
    return path


def format_table(rows: list, columns: list) -> str:
    """A plain-text table: columns is a list of (header, key, format) with format a str.format spec."""
    cells = [[header for header, _, _ in columns]]
    for row in rows:
        line = []
        for _, key, fmt in columns:
            value = row.get(key)
            line.append("-" if value is None else (format(value, fmt) if fmt else str(value)))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    text = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)
