"""What each rank holds under DDP and under FSDP2 (ZeRO-3): parameter, gradient and optimizer-state bytes.

    python -m rosetta.bench.fsdp_memory                      # 1 and 2 ranks, DDP and FSDP, the base architecture
    python -m rosetta.bench.fsdp_memory --ranks 1,2,4 --config d_model=256

For each (mode, world size) the driver launches ``torchrun --nproc_per_node=N`` on this module
(``--worker``): every rank builds the Transformer of ``rosetta train`` (the ``small`` preset with
the overrides, by default the paper's base architecture: d_model 512, 8 heads, d_ff 2048, 6+6
layers), wraps it (DDP: ``DistributedContext.wrap``; FSDP: ``fully_shard``), builds AdamW,
takes one training step on its rows of a batch, and counts the bytes of what it holds
itself: its parameters, their gradients and AdamW's state (for a DTensor, its local shard,
``to_local()``). It also reports the process's peak resident memory (``ru_maxrss``:
everything, torch's own buffers and the model's construction included). Rank 0 gathers the
ranks' counts; the driver prints a table and writes ``fsdp_memory.json`` in ``--out``.
CPU processes over gloo; the counts are the same on GPUs (they are sizes, not timings).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from reference.checks import check_choice

from . import common

MODES = ("ddp", "fsdp")
MODULE = "rosetta.bench.fsdp_memory"  # what each torchrun rank runs (``-m``)
#: the default model: the paper's base architecture on the synthetic task's small vocabulary
BASE_OVERRIDES = ("d_model=512", "num_heads=8", "d_ff=2048", "num_encoder_layers=6", "num_decoder_layers=6",
                  "batch_size=8")


def tensor_bytes(tensor) -> int:
    """Bytes of the part of ``tensor`` this process holds: a DTensor's local shard, or the whole tensor."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def rank_bytes(model, optimizer) -> dict:
    """Parameter, gradient and optimizer-state bytes this rank holds (a tied parameter once)."""
    params = list({id(p): p for p in model.parameters()}.values())
    state = [value for entry in optimizer.state.values() for value in entry.values() if hasattr(value, "numel")]
    counts = {"parameter_bytes": sum(tensor_bytes(p) for p in params),
              "gradient_bytes": sum(tensor_bytes(p.grad) for p in params if p.grad is not None),
              "optimizer_bytes": sum(tensor_bytes(v) for v in state)}
    counts["parameter_and_optimizer_bytes"] = counts["parameter_bytes"] + counts["optimizer_bytes"]
    return counts


def measure(dist, mode: str, overrides) -> dict:
    """One training step of rosetta train's model on this rank; what the rank holds afterwards."""
    import torch

    import accelerated.torch as rt
    from rosetta.tasks import PAD
    from rosetta.train import check_config, make_task_from_config, model_config, parse_overrides

    config = check_config(parse_overrides(["small", *overrides]))
    task = make_task_from_config(dict(config, heldout_size=0))
    model = rt.Transformer(**model_config(config, task.vocab_size), seed=config["seed"])
    num_parameters = model.num_parameters()
    step_model = model = dist.fully_shard(model) if mode == "fsdp" else dist.wrap(model)
    if mode == "ddp":
        model = dist.unwrap(step_model)
    optimizer = rt.AdamW(model.parameters(), lr=config["lr"], betas=tuple(config["betas"]), eps=config["eps"],
                         weight_decay=config["weight_decay"])
    loss_fn = rt.CrossEntropyLoss(ignore_index=PAD, label_smoothing=config["label_smoothing"])
    batch = task.train_batch(config["batch_size"])
    src, tgt_in, tgt_out, mask = dist.shard(batch.src, batch.tgt_in, batch.tgt_out, batch.src_key_padding_mask)
    loss = loss_fn(step_model(src, tgt_in, src_key_padding_mask=mask, memory_key_padding_mask=mask), tgt_out)
    dist.backward(loss, int((tgt_out != PAD).sum()))
    optimizer.step()  # AdamW's state exists from the first step on
    counts = rank_bytes(model, optimizer)
    counts["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"num_parameters": num_parameters, "dtype": str(config["dtype"]), "config": config, **counts,
            "torch_threads": torch.get_num_threads()}


def worker(mode: str, out_path: str, overrides) -> None:
    """Under torchrun: measure this rank; rank 0 writes every rank's counts to out_path (JSON)."""
    import torch
    import torch.distributed as torch_dist

    from accelerated.torch.distributed import setup_distributed

    torch.set_num_threads(1)
    with setup_distributed() as dist:
        mine = measure(dist, mode, overrides)
        ranks = [None] * dist.world_size
        torch_dist.all_gather_object(ranks, {k: v for k, v in mine.items() if k != "config"})
        if dist.is_main:
            Path(out_path).write_text(json.dumps({"config": mine["config"], "ranks": ranks}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world_sizes=(1, 2), modes=MODES, overrides=BASE_OVERRIDES, timeout_s: float = 600) -> dict:
    """Launch one torchrun per (mode, world size); the benchmark document (rows: one per mode and world size)."""
    for mode in modes:
        check_choice("modes", mode, set(MODES))
    if not world_sizes or min(world_sizes) < 1:
        raise ValueError(f"world_sizes must be positive ints, got {world_sizes!r}")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    rows, config = [], None
    with tempfile.TemporaryDirectory() as folder:
        for mode in modes:
            for world in world_sizes:
                out = Path(folder) / f"{mode}_{world}.json"
                command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={world}",
                           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", MODULE, "--worker",
                           mode, str(out), "--config", *overrides]
                done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s,
                                      check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"{mode} on {world} ranks failed ({done.returncode}):\n{done.stderr[-3000:]}")
                measured = json.loads(out.read_text())
                config = measured["config"]
                for rank, counts in enumerate(measured["ranks"]):
                    rows.append({"mode": mode, "world_size": world, "rank": rank, **counts})
    document = common.record("fsdp_memory", "python -m rosetta.bench.fsdp_memory", "cpu",
                             {"overrides": list(overrides), "model": config, "world_sizes": list(world_sizes),
                              "modes": list(modes), "process_group": "gloo"}, rows)
    return document


def report(document: dict) -> str:
    rows = [dict(r, params_mb=r["parameter_bytes"] / 2**20, grads_mb=r["gradient_bytes"] / 2**20,
                 optim_mb=r["optimizer_bytes"] / 2**20, total_mb=r["parameter_and_optimizer_bytes"] / 2**20,
                 rss_mb=r["max_rss_bytes"] / 2**20) for r in document["results"]]
    first = document["results"][0]
    title = f"{first['num_parameters']:,} parameters ({first['dtype']}), bytes held per rank after one AdamW step"
    return title + "\n" + common.format_table(rows, [
        ("mode", "mode", ""), ("ranks", "world_size", "d"), ("rank", "rank", "d"), ("params MiB", "params_mb", ".1f"),
        ("grads MiB", "grads_mb", ".1f"), ("AdamW MiB", "optim_mb", ".1f"), ("params+AdamW MiB", "total_mb", ".1f"),
        ("peak RSS MiB", "rss_mb", ".0f")])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rosetta.bench.fsdp_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", default="1,2", help="world sizes, e.g. 1,2 (default 1,2)")
    parser.add_argument("--modes", default=",".join(MODES), help="ddp, fsdp or both (default)")
    parser.add_argument("--config", nargs="*", default=list(BASE_OVERRIDES), metavar="KEY=VALUE",
                        help="rosetta train config overrides of the small preset (default: the base architecture)")
    parser.add_argument("--out", default=common.DEFAULT_OUT, help=f"folder for the JSON (default {common.DEFAULT_OUT})")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], args.worker[1], args.config)
        return 0
    try:
        world_sizes = tuple(int(part) for part in args.ranks.split(",") if part)
        document = run(world_sizes, tuple(args.modes.split(",")), tuple(args.config))
    except (ValueError, RuntimeError) as error:
        print(f"fsdp_memory: error: {error}", file=sys.stderr)
        return 2
    document["command"] = " ".join(["python -m rosetta.bench.fsdp_memory", *(sys.argv[1:] if argv is None else argv)])
    print(report(document))
    path = common.write_json(document, args.out, "fsdp_memory")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
