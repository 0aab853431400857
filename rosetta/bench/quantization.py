"""`quantization`: int8 and 4-bit checkpoints of the main job's model against the float model (CPU).

The float model is the main job's (``rosetta train --task reverse``, the ``small`` preset: d 64, 4
heads, d_ff 128, 2+2 layers), trained here with rosetta.train (or read from ``--checkpoint``). Each
variant is written with ``rosetta quantize`` (rosetta/quantize.py) and read back with
``load_checkpoint``, as a user would run it:

* float: the checkpoint itself;
* int8: per-output-channel absmax int8 weights;
* int8 + LLM.int8 τ: the same, with input features whose |x| exceeds τ (``--outlier-thresholds``: 6.0, the
  LLM.int8 paper's, and 3.0, low enough that this small model has outliers) multiplied in floating point,
  the rest int8 × int8;
* 4-bit g32 and g64: one scale per group of 32 or 64 input features, two weights per byte.

Per variant, on the held-out split the model was trained against (the same seed): logits error against
the float model (teacher-forced; max and mean |Δ|), cross-entropy (no label smoothing) and perplexity and
their change, exact match of greedy decoding and its change; the checkpoint's file size; the weight
memory (bytes of the model's tensors, its state dict); and the teacher-forced forward time of one
held-out batch, in rounds (one call of each variant per round, the order rotated) so the load of a
shared machine falls on all alike, with its ratio to the float model's. BLAS runs on one thread. For
LLM.int8, the share of input feature columns that went the floating-point way (outliers).
"""

from __future__ import annotations

import math
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import common
from .real_models import time_interleaved

#: LLM.int8's thresholds: the paper's 6.0, and 3.0, low enough that this small model has outlier columns
OUTLIER_THRESHOLDS = (6.0, 3.0)


def variants(outlier_thresholds=OUTLIER_THRESHOLDS) -> list:
    """(name, quantize keyword arguments) of every variant; None: the float model."""
    return ([("float", None), ("int8", {"bits": 8})]
            + [(f"int8 + LLM.int8 τ={t:g}", {"bits": 8, "outlier_threshold": t}) for t in outlier_thresholds]
            + [("4-bit g32", {"bits": 4, "group_size": 32}), ("4-bit g64", {"bits": 4, "group_size": 64})])


def train_float(folder: Path, preset: str = "small", overrides=None, progress: bool = False) -> Path:
    """Train the main job (rosetta.train, NumPy) into ``folder``; returns its checkpoint."""
    from rosetta.train import parse_overrides, train

    config = parse_overrides([preset] + [f"{k}={v}" for k, v in (overrides or {}).items()])
    train(config, backend="numpy", out_dir=folder, progress=progress)
    return Path(folder) / "model.safetensors"


def heldout_task(config: dict):
    """The task and held-out split a checkpoint was trained against (its training config's seeds)."""
    from rosetta.train import make_task_from_config

    return make_task_from_config(config["train"])


def teacher_forced(model, batches) -> tuple:
    """(logits per batch (float64), summed cross-entropy, target tokens) of teacher-forced forwards."""
    from rosetta.tasks import PAD

    logits, total, count = [], 0.0, 0
    for batch in batches:
        z = np.asarray(model(batch.src, batch.tgt_in, src_key_padding_mask=batch.src_key_padding_mask,
                             memory_key_padding_mask=batch.src_key_padding_mask), dtype=np.float64)  # (B, T, V)
        logits.append(z)
        shifted = z - z.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # (B, T, V)
        picked = np.take_along_axis(log_probs, batch.tgt_out[..., None], axis=-1)[..., 0]  # (B, T)
        keep = batch.tgt_out != PAD  # padding positions are not scored
        total -= float(picked[keep].sum())
        count += int(keep.sum())
    return logits, total, count


@contextmanager
def counting_outliers():
    """Count LLM.int8's outlier columns while the block runs: yields [outlier columns, columns] (summed over
    every quantized Linear call), by wrapping reference.quantization.outlier_columns."""
    from reference import quantization

    counts, original = [0, 0], quantization.outlier_columns

    def counted(x_rows, threshold, xp=np):
        outliers = original(x_rows, threshold, xp)  # (in,)
        counts[0] += int(outliers.sum())
        counts[1] += int(outliers.size)
        return outliers

    quantization.outlier_columns = counted
    try:
        yield counts
    finally:
        quantization.outlier_columns = original


def run(checkpoint=None, preset: str = "small", overrides=None, outlier_thresholds=OUTLIER_THRESHOLDS, warmup: int = 1,
        reps: int = 5, progress: bool = False) -> dict:
    """Quantize the float checkpoint (trained here when None) every way, measure each variant; the JSON document."""
    from threadpoolctl import threadpool_limits

    from rosetta.checkpoint import load_checkpoint
    from rosetta.quantize import quantize, tensor_bytes
    from rosetta.train import exact_match

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rosetta_bench_quantization_") as folder, \
            threadpool_limits(limits=1, user_api="blas"):
        folder = Path(folder)
        trained_here = checkpoint is None
        if trained_here:
            checkpoint = train_float(folder / "float", preset, overrides, progress)
        train_seconds = time.perf_counter() - start
        float_model, config = load_checkpoint(checkpoint, quantized=False)
        task = heldout_task(config)
        batch_size = config["train"]["eval_batch_size"]
        batches = list(task.heldout_batches(batch_size))
        models, rows = {}, []
        for i, (name, settings) in enumerate(variants(outlier_thresholds)):
            if settings is None:
                model, path = float_model, Path(checkpoint)
            else:
                path = folder / f"variant{i}.safetensors"
                quantize(path, checkpoint=checkpoint, **settings)
                model, _ = load_checkpoint(path, quantized=True)
            models[name] = model
            with counting_outliers() as outliers:
                logits, loss_sum, tokens = teacher_forced(model, batches)
            rows.append({"variant": name, "quantization": getattr(model, "quantization", None),
                         "file_bytes": path.stat().st_size, "tensor_bytes": tensor_bytes(model),
                         "loss": loss_sum / tokens, "perplexity": math.exp(loss_sum / tokens), "_logits": logits,
                         "exact_match": exact_match(model, task, batch_size), "heldout_sequences": len(task.heldout),
                         "outlier_column_fraction": outliers[0] / outliers[1] if outliers[1] else None})
        timing_batch = batches[0]
        mask = timing_batch.src_key_padding_mask

        def forward(model):
            return lambda: model(timing_batch.src, timing_batch.tgt_in, src_key_padding_mask=mask,
                                 memory_key_padding_mask=mask)

        times, _ = time_interleaved({name: forward(model) for name, model in models.items()}, warmup, reps)
    base, base_logits = rows[0], rows[0]["_logits"]
    for row in rows:
        error = np.concatenate([np.abs(a - b).ravel() for a, b in zip(row.pop("_logits"), base_logits)])
        row.update(max_abs_logits_error=float(error.max()), mean_abs_logits_error=float(error.mean()),
                   loss_change=row["loss"] - base["loss"], perplexity_change=row["perplexity"] - base["perplexity"],
                   exact_match_change=row["exact_match"] - base["exact_match"],
                   file_ratio=row["file_bytes"] / base["file_bytes"], tensor_ratio=row["tensor_bytes"] /
                   base["tensor_bytes"], **times[row["variant"]])
        row["forward_ratio"] = row["median_ms"] / times[base["variant"]]["median_ms"]
    model_config = config["model"]
    document = common.record(
        "quantization", "python -m rosetta.bench quantization", "cpu",
        {"checkpoint": None if trained_here else str(checkpoint), "preset": preset, "overrides": overrides or {},
         "model": model_config, "task": config["task"], "float_exact_match_at_training": config["results"],
         "heldout_sequences": len(task.heldout), "batch_size": batch_size, "outlier_thresholds": list(outlier_thresholds),
         "timing": {"batch_rows": int(timing_batch.src.shape[0]), "warmup": warmup, "reps": reps, "blas_threads": 1,
                    "what": "teacher-forced forward of one held-out batch, NumPy reference, rounds"},
         "logits_error": "|quantized − float| over every teacher-forced logit of the held-out split",
         "max_abs_float_logit": float(max(np.abs(z).max() for z in base_logits)),
         "outlier_column_fraction": "LLM.int8: input feature columns multiplied in floating point, over all the "
                                    "quantized Linear calls of the teacher-forced held-out pass",
         "loss": "mean cross-entropy (no label smoothing) over the held-out target tokens; perplexity = exp(loss)",
         "tensor_bytes": "bytes of the model's state dict (integer weights, scales, float embeddings, norms, biases)"},
        rows)
    document["seconds"] = {"train": round(train_seconds, 1) if trained_here else 0.0,
                           "total": round(time.perf_counter() - start, 1)}
    return document


COLUMNS = [("variant", "variant", ""), ("max |Δlogit|", "max_abs_logits_error", ".2e"),
           ("mean |Δlogit|", "mean_abs_logits_error", ".2e"), ("loss", "loss", ".4f"), ("Δloss", "loss_change", "+.4f"),
           ("ppl", "perplexity", ".4f"), ("exact match", "exact_match", ".2%"), ("Δ", "exact_match_change", "+.2%"),
           ("file bytes", "file_bytes", ","), ("/float", "file_ratio", ".2f"), ("tensor bytes", "tensor_bytes", ","),
           ("/float", "tensor_ratio", ".2f"), ("forward ms", "median_ms", ".1f"), ("/float", "forward_ratio", ".2f"),
           ("outlier cols", "outlier_column_fraction", ".2%")]


def report(document: dict) -> str:
    c = document["config"]
    m = c["model"]
    head = (f"quantization: {document['device']['name']}, numpy {document['versions']['numpy']}; the "
            f"{c['task']['task']} task's Transformer (d {m['d_model']}, {m['num_heads']} heads, d_ff {m['d_ff']}, "
            f"{m['num_encoder_layers']}+{m['num_decoder_layers']} layers, {m.get('dtype', 'float32')}); "
            f"{c['heldout_sequences']} held-out sequences; forward: median of {c['timing']['reps']} rounds, "
            f"batch {c['timing']['batch_rows']}, 1 BLAS thread; "
            f"largest |float logit| {c['max_abs_float_logit']:.3g}")
    return "\n".join([head, common.format_table(document["results"], COLUMNS),
                      f"time: {document['seconds']['total']:.0f} s (training {document['seconds']['train']:.0f} s)"])


def plot(document: dict, path):
    """Four panels per variant: file size, max logits error, held-out exact match, forward time ratio."""
    from .plots import _pyplot

    rows = document["results"]
    plt = _pyplot()
    names = [r["variant"] for r in rows]
    panels = (("file_bytes", "checkpoint file (kB)", 1e-3), ("max_abs_logits_error", "max |Δ logit| vs float", 1.0),
              ("exact_match", "held-out exact match (greedy)", 1.0), ("forward_ratio", "forward time / float", 1.0))
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8), dpi=100)
    colors = ["tab:gray", "tab:blue", "tab:cyan", "tab:green", "tab:orange", "tab:red"]
    for ax, (key, title, scale) in zip(axes, panels):
        values = [r[key] * scale for r in rows]
        ax.bar(range(len(rows)), values, color=colors[: len(rows)])
        for x, value in enumerate(values):
            ax.text(x, value, f"{value:.3g}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    m = document["config"]["model"]
    fig.suptitle(f"quantized checkpoints of the {document['config']['task']['task']} Transformer "
                 f"(d {m['d_model']}) against float; {document['device']['name']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
