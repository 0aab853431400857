"""`dispatch`: what one training step asks of the device, counted on the CPU (no GPU needed).

At the paper's base model an eager training step on an H100 spends most of its time outside the
matmuls (about 4 ms of bf16 math in a step of about 50 ms): in the kernels between them and in
launching them. This suite counts, for accelerated.torch and the torch.nn.Transformer baseline of
the `training` suite, the same step (forward, loss, backward, fused AdamW) at the base architecture
(8 heads, 6+6 layers) with tensors small enough that the CPU time is the framework's own:

- aten operations dispatched per step (views included), the kernels among them (views, transposes
  and other metadata operations excluded), and host-device syncs (``aten._local_scalar_dense``);
- the CPU time per step at that size (the host-side cost the GPU would wait for);
- the graphs and graph breaks ``torch.compile`` sees in the model's forward (``torch._dynamo.explain``);
- for accelerated.cupy, run on the repository's CUDA host emulator: its array operations and fused
  kernel launches per step (``cupy_emulated_row``).

Counts are exact and repeatable; times are medians on a possibly busy CPU, side by side in one run.
"""

from __future__ import annotations

import collections

from . import common, training

#: the base architecture (heads, layers, d_ff/d_model ratio) at host-overhead size
CONFIG = {**training.CONFIGS["base"], "d_model": 64, "d_ff": 256, "vocab_size": 100, "batch_size": 2, "seq_len": 16}
#: aten operations that only make views or read metadata: no kernel on a GPU
METADATA_OPS = frozenset({
    "alias", "as_strided", "detach", "expand", "permute", "reshape", "select", "slice", "split", "split_with_sizes",
    "squeeze", "t", "transpose", "unbind", "unflatten", "unsqueeze", "view", "_reshape_alias", "_unsafe_view",
})
ROWS = (("accelerated.torch", "fp32"), ("torch.nn.Transformer", "fp32"),
        ("accelerated.torch", "bf16"), ("torch.nn.Transformer", "bf16"))


def count_ops(fn) -> collections.Counter:
    """aten operations (overload names, e.g. 'aten.mm.default') dispatched while fn() runs, and
    ``Tensor.tolist`` calls under the key 'tolist' (a device read that bypasses the dispatcher)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.counts[str(func)] += 1
            return func(*args, **(kwargs or {}))

    tolist = torch.Tensor.tolist

    def counted_tolist(tensor):
        counter.counts["tolist"] += 1
        return tolist(tensor)

    with Counter() as counter:
        torch.Tensor.tolist = counted_tolist
        try:
            fn()
        finally:
            torch.Tensor.tolist = tolist
    return counter.counts


def host_syncs(counts) -> int:
    """Reads of device values by the host (.item(), int(), .tolist()): each waits for the GPU."""
    return counts.get("aten._local_scalar_dense.default", 0) + counts.get("tolist", 0)


def kernel_ops(counts) -> dict:
    """The operations of ``counts`` that run a kernel (metadata-only operations left out)."""
    return {op: n for op, n in counts.items()
            if op.startswith("aten.") and op.split(".")[1] not in METADATA_OPS and op != "aten._local_scalar_dense.default"}


def graph_breaks(backend: str, cfg: dict) -> dict:
    """Graphs and graph breaks torch.compile's front end (dynamo) sees in the model's forward."""
    import torch

    model, src, tgt = _model_and_batch(backend, cfg)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(src, tgt)
    reasons = sorted({b.reason.splitlines()[0][:120] for b in explanation.break_reasons})
    return {"graphs": explanation.graph_count, "graph_breaks": explanation.graph_break_count, "break_reasons": reasons}


def _model_and_batch(backend, cfg):
    import torch

    gen = torch.Generator().manual_seed(0)
    src, tgt = (torch.randint(0, cfg["vocab_size"], (cfg["batch_size"], cfg["seq_len"]), generator=gen)
                for _ in range(2))
    return training.torch_model(backend, cfg, "cpu"), src, tgt


def cupy_emulated_row(cfg: dict) -> dict:
    """accelerated.cupy's training step (fp32) on the CUDA host emulator (accelerated/cupy/emulator/): the array
    operations it makes (each one or a few kernels on a GPU) plus the fused kernels it launches.

    The heads are 32 wide (the flash kernel's smallest head size: d_model / 32 heads); the number of
    heads does not change the count. No time: the emulator's is meaningless.
    """
    label = "accelerated.cupy fp32 (host emulator)"
    row = {"backend": "accelerated.cupy", "precision": "fp32", "label": label, "status": "ok"}
    from accelerated import cupy_emulator as emulated_cupy

    reason = emulated_cupy.unavailable_reason()
    if reason is not None:
        row["status"] = f"skipped: {reason}"
        return row
    import numpy as np

    V, B, N = cfg["vocab_size"], cfg["batch_size"], cfg["seq_len"]
    with emulated_cupy.emulated_cupy() as rc:
        model = rc.Transformer(V, V, cfg["d_model"], cfg["d_model"] // 32, cfg["d_ff"], cfg["num_encoder_layers"],
                               cfg["num_decoder_layers"], dropout=0.0, max_len=512, seed=0, dtype="float32")
        loss_fn, optimizer = rc.CrossEntropyLoss(), rc.AdamW(model.parameters(), lr=1e-4)
        rng = np.random.default_rng(0)
        src, tgt, out = (rc.asarray(rng.integers(0, V, (B, N))).view(emulated_cupy.CountedArray) for _ in range(3))

        def step():
            loss_fn(model(src, tgt), out)
            optimizer.zero_grad()
            model.backward(loss_fn.backward()[0])
            optimizer.step()

        step()  # optimizer state and compiled kernels exist from here on
        with emulated_cupy.count_operations(model) as counts:
            step()
    fused = sum(n for op, n in counts.items() if op.startswith("kernel:"))
    row.update(kernels=sum(counts.values()), fused_kernels=fused, heads=cfg["d_model"] // 32,
               kernels_by_op=dict(sorted(counts.items(), key=lambda kv: -kv[1])))
    return row


def run(warmup: int = 3, reps: int = 30, compile_check: bool = True, cfg: dict = CONFIG, cupy: bool = True) -> dict:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the framework's own time, not a thread pool's
    results = []
    try:
        for backend, precision in ROWS:
            step, params = training._torch_step(backend, precision, False, cfg, "cpu")
            for _ in range(warmup):
                step()
            counts = count_ops(step)
            kernels = kernel_ops(counts)
            row = {"backend": backend, "precision": precision, "label": f"{backend} {precision}", "status": "ok",
                   "parameters": params, "aten_ops": sum(counts.values()), "kernels": sum(kernels.values()),
                   "host_syncs": host_syncs(counts),
                   "kernels_by_op": dict(sorted(kernels.items(), key=lambda kv: -kv[1]))}
            row.update(common.time_cpu(step, 0, reps))
            results.append(row)
        if cupy:
            results.append(cupy_emulated_row(cfg))
        if compile_check:
            for backend in ("accelerated.torch", "torch.nn.Transformer"):
                found = graph_breaks(backend, cfg)
                for row in results:
                    if row["backend"] == backend:
                        row.update(found)
    finally:
        torch.set_num_threads(threads)
    for row in results:
        base = next(r for r in results if r["backend"] == "torch.nn.Transformer" and r["precision"] == row["precision"])
        row["kernels_vs_baseline"] = row["kernels"] / base["kernels"] if row.get("kernels") else None
        row["cpu_time_vs_baseline"] = row["median_ms"] / base["median_ms"] if row.get("median_ms") else None
    return common.record(
        "dispatch", "python -m rosetta.bench dispatch", "cpu",
        {**cfg, "warmup": warmup, "reps": reps, "threads": 1,
         "kernels": "aten operations other than views and metadata (METADATA_OPS), per training step",
         "ratios": "row / torch.nn.Transformer at the same precision (< 1: fewer, faster)"},
        results)


COLUMNS = [("row", "label", ""), ("aten ops", "aten_ops", "d"), ("kernels", "kernels", "d"),
           ("vs baseline", "kernels_vs_baseline", ".2f"), ("syncs", "host_syncs", "d"),
           ("CPU ms/step", "median_ms", ".2f"), ("vs baseline", "cpu_time_vs_baseline", ".2f"),
           ("compiled graphs", "graphs", "d"), ("graph breaks", "graph_breaks", "d"), ("status", "status", "")]


def report(document: dict) -> str:
    c = document["config"]
    head = (f"one training step's dispatch on {document['device']['name']} (d_model {c['d_model']}, "
            f"{c['num_heads']} heads, {c['num_encoder_layers']}+{c['num_decoder_layers']} layers, "
            f"batch {c['batch_size']}, seq {c['seq_len']}, 1 thread)")
    return head + "\n" + common.format_table(document["results"], COLUMNS)
