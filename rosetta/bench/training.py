"""`training`: one whole-model training step (forward, backward, AdamW) on the GPU, against
torch.nn.Transformer with embeddings and an output projection (fused AdamW) as the baseline.

Configs: ``base`` is the paper's base model (d_model 512, 8 heads, d_ff 2048, 6+6 layers, a
shared 37000-token vocabulary) at batch 32, source and target length 256; ``cpu`` is the small
training preset (runs without a GPU; no MFU). Rows: accelerated.torch in fp32 (TF32 matmuls) and
bf16 autocast, each with and without torch.compile; accelerated.cupy (float32); the baseline in
fp32 and bf16, eager and compiled. ratio = baseline ms / row ms at the same precision, compiled rows
against the compiled baseline (> 1: faster than the baseline).
MFU = model FLOPs per step (common.transformer_step_flops: 6·(P_enc·B·S + P_dec·B·T) plus
12·B·d·(L_enc·S² + L_dec·(T² + T·S))) / time / dense peak (H100/H200: bf16 989, tf32 494 TFLOP/s).
"""

from __future__ import annotations

import numpy as np

from . import common

CONFIGS = {
    "base": {"d_model": 512, "num_heads": 8, "d_ff": 2048, "num_encoder_layers": 6, "num_decoder_layers": 6,
             "vocab_size": 37000, "batch_size": 32, "seq_len": 256},
    "cpu": {"d_model": 64, "num_heads": 4, "d_ff": 128, "num_encoder_layers": 2, "num_decoder_layers": 2,
            "vocab_size": 13, "batch_size": 64, "seq_len": 15},
}
ROWS = (("accelerated.torch", "fp32", False), ("accelerated.torch", "bf16", False),
        ("accelerated.cupy", "fp32", False),
        ("torch.nn.Transformer", "fp32", False), ("torch.nn.Transformer", "bf16", False),
        ("accelerated.torch", "fp32", True), ("accelerated.torch", "bf16", True),
        ("torch.nn.Transformer", "fp32", True), ("torch.nn.Transformer", "bf16", True))
#: --compiled: which rows run (compiling the base model four times may not fit one 10-minute call)
ROW_SETS = {"both": ROWS, "no": tuple(r for r in ROWS if not r[2]), "yes": tuple(r for r in ROWS if r[2])}


class BaselineTransformer:
    """torch.nn.Transformer with token embeddings (×√d), sinusoidal positions and an output projection."""

    def __new__(cls, cfg, device):
        import math

        import torch
        from torch import nn

        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                d = cfg["d_model"]
                self.src_embed = nn.Embedding(cfg["vocab_size"], d)
                self.tgt_embed = nn.Embedding(cfg["vocab_size"], d)
                self.core = nn.Transformer(d, cfg["num_heads"], cfg["num_encoder_layers"],
                                           cfg["num_decoder_layers"], cfg["d_ff"], dropout=0.0, batch_first=True)
                self.out = nn.Linear(d, cfg["vocab_size"])
                position = torch.arange(512.0)[:, None]
                freq = torch.exp(torch.arange(0, d, 2.0) * (-math.log(10000.0) / d))
                pe = torch.zeros(512, d)
                pe[:, 0::2], pe[:, 1::2] = torch.sin(position * freq), torch.cos(position * freq)
                self.register_buffer("pe", pe)
                self.scale = math.sqrt(d)

            def forward(self, src, tgt):
                s = self.src_embed(src) * self.scale + self.pe[: src.shape[1]]
                t = self.tgt_embed(tgt) * self.scale + self.pe[: tgt.shape[1]]
                mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], device=tgt.device)
                return self.out(self.core(s, t, tgt_mask=mask, tgt_is_causal=True))

        return Model().to(device)


def torch_model(backend: str, cfg: dict, device: str):
    """The model a torch row trains: the baseline, or accelerated.torch's Transformer (no dropout)."""
    if backend == "torch.nn.Transformer":
        return BaselineTransformer(cfg, device)
    import accelerated.torch as rt

    V = cfg["vocab_size"]
    return rt.Transformer(V, V, cfg["d_model"], cfg["num_heads"], cfg["d_ff"], cfg["num_encoder_layers"],
                          cfg["num_decoder_layers"], dropout=0.0, max_len=max(512, cfg["seq_len"]), seed=0).to(device)


def _torch_step(backend, precision, compiled, cfg, device):
    import torch

    gen = torch.Generator().manual_seed(0)
    B, N, V = cfg["batch_size"], cfg["seq_len"], cfg["vocab_size"]
    src, tgt_in, tgt_out = (torch.randint(0, V, (B, N), generator=gen).to(device) for _ in range(3))
    model = call = torch_model(backend, cfg, device)
    if backend == "torch.nn.Transformer":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as rt.AdamW (CPU and CUDA)
    else:
        import accelerated.torch as rt

        optimizer = rt.AdamW(model.parameters(), lr=1e-4)
    if compiled:
        call = torch.compile(model)
    model.train()
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = call(src, tgt_in)  # (B, T, V)
            loss = loss_fn(logits.float().reshape(-1, V), tgt_out.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    params = sum(p.numel() for p in model.parameters())
    return step, params


def _cupy_step(cfg):
    import cupy

    from cupy._core import _routines_linalg as linalg

    import accelerated.cupy as rc

    # float32 matmuls on TF32 tensor cores, as the torch fp32 rows (the same precision, compared)
    linalg.set_compute_type(np.dtype(np.float32), linalg.COMPUTE_TYPE_TF32)
    B, N, V = cfg["batch_size"], cfg["seq_len"], cfg["vocab_size"]
    rng = np.random.default_rng(0)
    src, tgt_in, tgt_out = (cupy.asarray(rng.integers(0, V, (B, N))) for _ in range(3))
    model = rc.Transformer(V, V, cfg["d_model"], cfg["num_heads"], cfg["d_ff"], cfg["num_encoder_layers"],
                           cfg["num_decoder_layers"], dropout=0.0, max_len=max(512, N), seed=0)
    model.train()
    loss_fn = rc.CrossEntropyLoss()
    optimizer = rc.AdamW(model.parameters(), lr=1e-4)

    def step():
        logits = model(src, tgt_in)  # (B, T, V)
        loss_fn(logits, tgt_out)
        optimizer.zero_grad()
        model.backward(loss_fn.backward()[0])
        optimizer.step()

    return step, sum(int(np.prod(p.shape)) for p in model.parameters())


def _reason(backend, compiled, device) -> str | None:
    if backend == "accelerated.cupy":
        try:
            import accelerated.cupy  # noqa: F401
        except ImportError as error:
            return str(error)
    if compiled and device != "cuda":
        return "torch.compile is benchmarked on the GPU only"
    return None


def run(config: str = "base", warmup: int = 5, reps: int = 20, rows=ROWS, budget_s=None, progress=None) -> dict:
    """The rows' training steps. The CuPy row runs last (a kernel fault that breaks the CUDA context then
    costs no torch row); results keep the order of ``rows``. budget_s: rows left once it is spent are
    recorded as skipped; progress: a JSON file rewritten after each row with the document so far."""
    import time

    import torch

    start = time.monotonic()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and config != "cpu":
        raise RuntimeError("the training benchmark needs a GPU (torch.cuda.is_available() is False); "
                           "run it with --config cpu for a CPU-sized smoke run")
    cfg = CONFIGS[config]
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 rows: TF32 matmuls (what the tf32 peak assumes)
    torch.backends.cudnn.allow_tf32 = True
    flops = common.transformer_step_flops(cfg["d_model"], cfg["d_ff"], cfg["num_encoder_layers"],
                                          cfg["num_decoder_layers"], cfg["vocab_size"], cfg["batch_size"],
                                          cfg["seq_len"], cfg["seq_len"])
    name = common.gpu_name() if device == "cuda" else None
    results = []
    order = {tuple(r): i for i, r in enumerate(rows)}

    def document():  # the JSON of the rows so far (progress), or of all of them
        return common.record(
            "training", f"python -m rosetta.bench training --config {config}", "gpu" if device == "cuda" else "cpu",
            {"config": config, **cfg, "warmup": warmup, "reps": reps, "budget_s": budget_s, "model_flops": flops,
             "mfu_formula": "MFU = (6·(P_enc·B·S + P_dec·B·T) + 12·B·d·(L_enc·S² + L_dec·(T²+T·S))) / step time / peak",
             "fp32": "TF32 matmuls enabled for torch and CuPy (peak 494 TFLOP/s on H100)",
             "ratio": "baseline ms / row ms at the same precision, compiled against compiled"},
            sorted(results, key=lambda r: order[(r["backend"], r["precision"], r["compiled"])]))

    for backend, precision, compiled in sorted(rows, key=lambda r: r[0] == "accelerated.cupy"):
        if progress is not None and results:
            _write_progress(document(), progress)
        row = {"backend": backend, "precision": precision, "compiled": compiled,
               "label": f"{backend} {precision}{' compile' if compiled else ''}", "status": "ok",
               "model_flops_per_step": flops["total"]}
        reason = _reason(backend, compiled, device)
        if reason is None and budget_s is not None and time.monotonic() - start > budget_s:
            reason = f"the time budget ({budget_s} s) is spent"
        if reason is None and backend == "accelerated.cupy" and precision != "fp32":
            reason = "accelerated.cupy is benchmarked in float32"
        if reason is not None:
            row["status"] = f"skipped: {reason}"
            results.append(row)
            continue
        try:
            if backend == "accelerated.cupy":
                step, params = _cupy_step(cfg)
                timing = common.time_cupy(step, warmup, reps)
            else:
                step, params = _torch_step(backend, precision, compiled, cfg, device)
                timer = common.time_torch_cuda if device == "cuda" else common.time_cpu
                timing = timer(step, warmup, reps)
        except Exception as error:  # noqa: BLE001 - a failing backend is a result, not the end of the run
            row["status"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
            results.append(row)
            continue
        tokens = cfg["batch_size"] * cfg["seq_len"]
        peak = common.peak_tflops(name or "", "bf16" if precision == "bf16" else "tf32")
        row.update(timing, parameters=params, tokens_per_s=tokens / timing["median_ms"] * 1e3,
                   achieved_tflops=flops["total"] / timing["median_ms"] * 1e-9,
                   peak_tflops=peak, mfu=None if peak is None else flops["total"] / timing["median_ms"] * 1e-9 / peak)
        results.append(row)
    for row in results:  # compiled rows against the compiled baseline, eager against eager
        base = next((r for r in results if r["backend"] == "torch.nn.Transformer" and r.get("median_ms")
                     and (r["precision"], r["compiled"]) == (row["precision"], row["compiled"])), None)
        row["ratio_to_baseline"] = base["median_ms"] / row["median_ms"] if base and row.get("median_ms") else None
    final = document()
    if progress is not None:
        _write_progress(final, progress)
    return final


def _write_progress(document: dict, path) -> None:
    """The document so far, written atomically (attention.py's writer)."""
    from .attention import _write_progress as write

    write(document, path)


COLUMNS = [("row", "label", ""), ("ms/step", "median_ms", ".2f"), ("tokens/s", "tokens_per_s", ",.0f"),
           ("vs baseline", "ratio_to_baseline", ".2f"), ("TFLOP/s", "achieved_tflops", ".1f"), ("MFU", "mfu", ".1%"),
           ("status", "status", "")]


def report(document: dict) -> str:
    c = document["config"]
    head = (f"training step on {document['device']['name']}: config {c['config']} (d_model {c['d_model']}, "
            f"{c['num_encoder_layers']}+{c['num_decoder_layers']} layers, batch {c['batch_size']}, seq {c['seq_len']}), "
            f"{c['model_flops']['total'] / 1e12:.3f} model TFLOP/step")
    return head + "\n" + common.format_table(document["results"], COLUMNS)
