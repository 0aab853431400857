"""`cpu`: one training step of the NumPy reference vs accelerated.torch on the CPU, side by side.

The configuration is rosetta/train.py's ``small`` preset (the default training run): d_model 64,
4 heads, d_ff 128, 2+2 layers, batch 64, sequences of 10–14 symbols. A step is forward, label-
smoothed cross-entropy, backward (``model.backward(loss_fn.backward()[0])``, the training loop's
protocol on both backends) and AdamW; both models start from the same seed and see the same
pre-drawn batches. Each backend runs with one BLAS/torch thread and with the libraries' default
thread counts.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import pstats

import numpy as np

from . import common

TARGET_RATIO = 2.0


def _threads(backend: str, threads):
    """Hold BLAS (NumPy) or torch's pool to ``threads`` (None: the library's default) for a block."""
    stack = contextlib.ExitStack()
    if threads is None:
        return stack
    from threadpoolctl import threadpool_limits

    stack.enter_context(threadpool_limits(limits=threads, user_api="blas"))
    if backend == "torch":
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        stack.callback(torch.set_num_threads, before)
    return stack


def make_step(backend: str, config: dict, batches: list):
    """(step function, parameter count) of one backend: each call trains on the next batch."""
    from rosetta.tasks import PAD
    from rosetta.train import load_backend, model_config

    rt = load_backend(backend)
    vocab = config["vocab_size"]
    model = rt.Transformer(**model_config(config, vocab), seed=config["seed"])
    model.train()
    loss_fn = rt.CrossEntropyLoss(ignore_index=PAD, label_smoothing=config["label_smoothing"])
    optimizer = rt.AdamW(model.parameters(), lr=config["lr"], betas=tuple(config["betas"]), eps=config["eps"],
                         weight_decay=config["weight_decay"])
    data = [tuple(rt.asarray(a) for a in (b.src, b.tgt_in, b.tgt_out, b.src_key_padding_mask)) for b in batches]
    position = [0]

    def step():
        src, tgt_in, tgt_out, mask = data[position[0] % len(data)]
        position[0] += 1
        logits = model(src, tgt_in, src_key_padding_mask=mask, memory_key_padding_mask=mask)  # (B, T, V)
        loss = loss_fn(logits, tgt_out)  # ()
        optimizer.zero_grad()
        model.backward(loss_fn.backward()[0])
        optimizer.step()
        return loss

    params = sum(int(np.prod(tuple(p.shape))) for p in model.parameters())
    return step, params


def cpu_config(preset: str = "small", batch_size=None) -> dict:
    from rosetta.train import parse_overrides

    config = parse_overrides([preset])
    if batch_size is not None:
        config["batch_size"] = batch_size
    return config


def run(steps: int = 30, warmup: int = 5, preset: str = "small", batch_size=None, thread_settings=(1, None),
        profile: bool = True, num_batches: int = 8) -> dict:
    """Measure both backends at each thread setting; returns the JSON document (not yet written)."""
    from rosetta.train import make_task_from_config

    config = cpu_config(preset, batch_size)
    task = make_task_from_config(config)
    config["vocab_size"] = task.vocab_size
    batches = [task.train_batch(config["batch_size"]) for _ in range(num_batches)]
    mean_src = float(np.mean([b.src.shape[1] for b in batches]))
    mean_tgt = float(np.mean([b.tgt_in.shape[1] for b in batches]))
    tokens = float(np.mean([b.num_target_tokens for b in batches]))
    results = []
    for threads in thread_settings:
        by_backend = {}
        for backend in ("numpy", "torch"):
            step, params = make_step(backend, config, batches)
            with _threads(backend, threads):
                timing = common.time_cpu(step, warmup, steps)
            threads_used = _threads_in_effect(backend, threads)
            row = {"backend": backend, "implementation": "reference (NumPy)" if backend == "numpy"
                   else "accelerated.torch", "threads": "1" if threads == 1 else f"default ({threads_used})",
                   "threads_in_effect": threads_used, "parameters": params,
                   "tokens_per_step": tokens, "tokens_per_s": tokens / timing["median_ms"] * 1e3, **timing}
            by_backend[backend] = row
            results.append(row)
        ratio = by_backend["numpy"]["median_ms"] / by_backend["torch"]["median_ms"]
        for row in by_backend.values():
            row["ratio_reference_over_torch"] = ratio
            row["meets_target"] = ratio <= TARGET_RATIO
    document = common.record(
        "cpu", "python -m rosetta.bench cpu", "cpu",
        {"preset": preset, "batch_size": config["batch_size"], "d_model": config["d_model"],
         "num_heads": config["num_heads"], "d_ff": config["d_ff"],
         "num_encoder_layers": config["num_encoder_layers"], "num_decoder_layers": config["num_decoder_layers"],
         "vocab_size": config["vocab_size"], "dtype": config["dtype"], "mean_src_len": mean_src,
         "mean_tgt_len": mean_tgt, "steps": steps, "warmup": warmup, "distinct_batches": num_batches,
         "step": "forward + label-smoothed cross-entropy + backward + AdamW (no gradient clipping)",
         "target_ratio_reference_over_torch": TARGET_RATIO},
        results)
    worst = max(results, key=lambda r: r["ratio_reference_over_torch"])
    if profile and worst["ratio_reference_over_torch"] > TARGET_RATIO:
        threads = 1 if worst["threads"] == "1" else None
        document["profile"] = profile_reference(config, batches, steps=max(5, steps // 3), threads=threads)
    return document


def _threads_in_effect(backend: str, threads):
    if threads is not None:
        return threads
    if backend == "torch":
        import torch

        return torch.get_num_threads()
    from threadpoolctl import threadpool_info

    blas = [info.get("num_threads") for info in threadpool_info() if info.get("user_api") == "blas"]
    return blas[0] if blas else None


def profile_reference(config: dict, batches: list, steps: int = 10, top: int = 25, threads=1) -> dict:
    """cProfile of the reference's step at a thread setting (None: BLAS's default): most own time first."""
    step, _ = make_step("numpy", config, batches)
    with _threads("numpy", threads):
        step()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(steps):
            step()
        profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    rows = []
    for (filename, line, name), (cc, nc, tt, ct, _) in stats.stats.items():
        rows.append({"function": f"{_short(filename)}:{line}({name})", "calls_per_step": nc / steps,
                     "own_ms_per_step": tt / steps * 1e3, "cumulative_ms_per_step": ct / steps * 1e3,
                     "own_share": tt / total if total else 0.0})
    by_own = sorted(rows, key=lambda r: -r["own_ms_per_step"])[:top]
    by_cumulative = sorted((r for r in rows if "reference/" in r["function"]),
                           key=lambda r: -r["cumulative_ms_per_step"])[:top]
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return {"steps": steps, "threads": "1" if threads == 1 else "default", "total_ms_per_step": total / steps * 1e3, "top_own_time": by_own,
            "top_cumulative_reference": by_cumulative}


def _short(filename: str) -> str:
    for marker in ("reference/", "accelerated/", "numpy/"):
        if marker in filename:
            return filename[filename.index(marker):]
    return filename.rsplit("/", 1)[-1]


COLUMNS = [("backend", "implementation", ""), ("threads", "threads", ""), ("ms/step (median)", "median_ms", ".2f"),
           ("min", "min_ms", ".2f"), ("max", "max_ms", ".2f"), ("tokens/s", "tokens_per_s", ",.0f"),
           ("ref/torch", "ratio_reference_over_torch", ".2f")]


def report(document: dict) -> str:
    c = document["config"]
    head = (f"cpu: {document['device']['name']} ({document['device']['cpu_count']} cores); preset {c['preset']}: "
            f"d_model {c['d_model']}, {c['num_heads']} heads, d_ff {c['d_ff']}, "
            f"{c['num_encoder_layers']}+{c['num_decoder_layers']} layers, batch {c['batch_size']}, "
            f"src/tgt len ≈ {c['mean_src_len']:.1f}/{c['mean_tgt_len']:.1f}; median of {c['steps']} steps "
            f"after {c['warmup']} warm-up")
    lines = [head, common.format_table(document["results"], COLUMNS)]
    if "profile" in document:
        lines.append(f"reference above {TARGET_RATIO}× torch: cProfile of its step, {document['profile']['threads']} threads "
                     f"({document['profile']['total_ms_per_step']:.1f} ms/step under the profiler), most own time:")
        lines.append(common.format_table(document["profile"]["top_own_time"][:12],
                                         [("function", "function", ""), ("calls/step", "calls_per_step", ".0f"),
                                          ("own ms/step", "own_ms_per_step", ".2f"), ("share", "own_share", ".1%")]))
    return "\n".join(lines)
