"""A few SGD steps of a tiny regressor with accelerated.torch.distributed; run by test_distributed.py.

    python -m torch.distributed.run --nproc_per_node=2 -m parity_tests.distributed_worker OUT.npz

Every rank trains on its shard of the same global batches; rank 0 gathers every rank's final
parameters and writes them, with the losses, to OUT.npz. ``train(context)`` is also called by
the test in its own process with a world of one, on the whole batches, for comparison.
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


def train(context) -> dict:
    """SGD with momentum on the masked mean squared error; losses are the global batches' (reduced)."""
    torch.set_num_threads(1)
    model = Regressor()
    ddp = context.wrap(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
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
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])  # (P,)  every parameter, in order
    return {"losses": np.array(losses), "flat": flat}


def main(out_path: str) -> None:
    with setup_distributed() as context:
        result = train(context)
        every_rank = [torch.empty_like(result["flat"]) for _ in range(context.world_size)]
        torch_dist.all_gather(every_rank, result["flat"])  # rank r's final parameters in every_rank[r]
        if context.is_main:  # one rank writes
            np.savez(out_path, losses=result["losses"], ranks=torch.stack(every_rank).cpu().numpy(),
                     world_size=context.world_size, backend=context.backend)


if __name__ == "__main__":
    main(sys.argv[1])
