"""A few SGD steps of a tiny regressor with accelerated.torch.distributed; run by test_distributed.py and test_fsdp.py.

    python -m torch.distributed.run --nproc_per_node=2 -m parity_tests.distributed_worker OUT.npz [ddp|fsdp|fsdp-bf16]

Every rank trains on its shard of the same global batches; rank 0 gathers every rank's final
parameters and writes them, with the losses, to OUT.npz. ``train(context)`` is also called by
the test in its own process with a world of one, on the whole batches, for comparison.
With ``fsdp`` the model is sharded with FSDP2 (DistributedContext.fully_shard) instead of DDP
(``fsdp-bf16``: computing in bfloat16, FSDP2's mixed precision):
each rank's final parameters are then gathered from the shards, and OUT.npz also records how
many parameter entries each rank held and whether ``module.backward`` refused the sharded layer.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.distributed as torch_dist

import accelerated.torch as rt
from accelerated.torch.distributed import setup_distributed

D_MODEL, NUM_HEADS, D_FF = 8, 2, 16
BATCH, LENGTH = 5, 6  # 5 rows: two ranks take 3 and 2, with different numbers of real (unpadded) positions
STEPS, LR, MOMENTUM, SEED = 4, 0.1, 0.9, 0


class Regressor(torch.nn.Module):
    """An encoder layer and a linear head: one number per position, (B, N, d) → (B, N)."""

    def __init__(self):
        super().__init__()
        self.encoder = rt.EncoderLayer(D_MODEL, NUM_HEADS, D_FF, dropout=0.0, seed=SEED, dtype=torch.float64)
        self.head = rt.Linear(D_MODEL, 1, seed=SEED + 1, dtype=torch.float64)

    def forward(self, x, padding):
        return self.head(self.encoder(x, src_key_padding_mask=padding)).squeeze(-1)  # (B, N)


def global_batch(step: int):
    """The same (inputs, padding, targets) on every rank: drawn from (SEED, step), not from the rank."""
    rng = np.random.default_rng([SEED, step])
    x = rng.standard_normal((BATCH, LENGTH, D_MODEL))  # (B, N, d)
    lengths = rng.integers(1, LENGTH + 1, BATCH)  # (B,)
    padding = np.arange(LENGTH)[None, :] >= lengths[:, None]  # (B, N)  True = padding
    target = rng.standard_normal((BATCH, LENGTH))  # (B, N)
    return x, padding, target


def train(context, fsdp: bool = False, mixed_precision=None) -> dict:
    """SGD with momentum on the masked mean squared error; losses are the global batches' (reduced)."""
    torch.set_num_threads(1)
    model = Regressor()
    ddp = model = context.fully_shard(model, mixed_precision) if fsdp else context.wrap(model)  # FSDP: in place
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)  # after sharding: sharded state
    losses = []
    for step in range(STEPS):
        x, padding, target = context.shard(*global_batch(step))  # this rank's rows
        keep = (~padding).to(torch.float64)  # (b, N)  1 = a real position
        count = int(keep.sum())
        loss = (((ddp(x, padding) - target) ** 2) * keep).sum() / count  # ()  mean over this rank's positions
        optimizer.zero_grad()
        context.backward(loss, count)  # DDP's average is now the global batch's gradient
        optimizer.step()
        losses.append(context.reduce_mean(loss, weight=count))  # the global batch's mean loss
    if fsdp:  # every rank gathers the whole parameters from the shards
        whole = context.full_state_dict(model)
        flat = torch.cat([whole[name].reshape(-1) for name, _ in model.named_parameters()])  # (P,)
        return {"losses": np.array(losses), "flat": flat, **_sharding_facts(model, x, padding)}
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])  # (P,)  every parameter, in order
    return {"losses": np.array(losses), "flat": flat}


def _sharding_facts(model, x, padding) -> dict:
    """Parameter entries this rank holds (its DTensor shards), and whether the sharded layer's backward raised."""
    local = sum(p.to_local().numel() for p in model.parameters())
    y = model.encoder(x, src_key_padding_mask=padding)  # (b, N, d)  a forward of the sharded layer alone
    try:
        model.encoder.backward(torch.ones_like(y))
        refused = False
    except ValueError:  # autograd.grad would fire none of FSDP's hooks
        refused = True
    return {"local_numel": local, "backward_refused": refused}


def main(out_path: str, mode: str = "ddp") -> None:
    with setup_distributed() as context:
        fsdp, _, mixed_precision = mode.partition("-")  # "fsdp-bf16" → fsdp, bf16
        result = train(context, fsdp=fsdp == "fsdp", mixed_precision=mixed_precision or None)
        every_rank = [torch.empty_like(result["flat"]) for _ in range(context.world_size)]
        torch_dist.all_gather(every_rank, result["flat"])  # rank r's final parameters in every_rank[r]
        facts = {}
        if fsdp == "fsdp":  # (local entries, backward refused) of every rank
            mine = torch.tensor([result["local_numel"], int(result["backward_refused"])], dtype=torch.int64)
            gathered = [torch.empty_like(mine) for _ in range(context.world_size)]
            torch_dist.all_gather(gathered, mine)
            facts = {"local_numel": torch.stack(gathered)[:, 0].numpy(),
                     "backward_refused": torch.stack(gathered)[:, 1].numpy()}
        if context.is_main:  # one rank writes
            np.savez(out_path, losses=result["losses"], ranks=torch.stack(every_rank).cpu().numpy(),
                     world_size=context.world_size, backend=context.backend, **facts)


if __name__ == "__main__":
    main(*sys.argv[1:3])
