"""Data-parallel training under torchrun: process group from the environment, DDP, batch shards, reduced metrics.

    torchrun --nproc_per_node=N train.py          # every rank runs the same script

    from accelerated.torch.distributed import setup_distributed
    with setup_distributed() as dist:              # gloo on CPU, nccl on CUDA; world of 1 without torchrun
        ddp = dist.wrap(model)                     # DistributedDataParallel (the model itself when alone)
        for step in range(steps):
            src, tgt = dist.shard(*global_batch(step))      # this rank's rows of the same global batch
            loss = loss_fn(ddp(src), tgt)                   # mean over this rank's counted positions
            optimizer.zero_grad()
            dist.backward(loss, count)                      # weighted so DDP's average is the global mean
            optimizer.step()
            mean_loss = dist.reduce_mean(loss, weight=count)   # the global batch's loss (a float)
        if dist.is_main:
            save(...)                              # one rank writes files

Every rank draws the same global batch (same seed) and takes a contiguous slice of its rows,
so N ranks see exactly the batch one process would. DDP averages gradients over ranks; a rank
whose loss is a mean over ``count`` positions (tokens that are not padding) weighs it by
N·count / Σcount first, which makes the average the gradient of the global batch's mean loss,
however unevenly the counted positions fall. With dropout off, N ranks then take the same
steps as one process up to floating-point summation order (docs/distributed.md).

FSDP2 (ZeRO-3) instead of DDP: ``dist.fully_shard(model)`` shards every parameter, its
gradient and (for an optimizer built afterwards) its optimizer state over the ranks; the
training loop is the same, and ``dist.full_state_dict(model)`` gathers whole tensors back for
evaluation and checkpoints:

    model = dist.fully_shard(model)                # each Encoder/DecoderLayer, then the root
    optimizer = AdamW(model.parameters(), ...)     # after sharding: its state is sharded too
    ...                                            # the same loop as above
    state = dist.full_state_dict(model)            # every rank calls it; whole CPU tensors
"""

from __future__ import annotations

import datetime
import gc
import os

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel

from reference.module import child_seed

from .arrays import asarray
from .checks import check_choice, describe

#: the process-group backends this helper sets up: gloo (CPU, and CUDA tensors), nccl (CUDA)
PROCESS_GROUP_BACKENDS = ("gloo", "nccl")
#: FSDP2 mixed precision: the dtype parameters are all-gathered and computed in; gradients reduce in float32
MIXED_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


# --8<-- [start:shard_bounds]
def shard_bounds(batch_size: int, rank: int, world_size: int) -> tuple:
    """The rows [start, stop) of a global batch that ``rank`` takes: contiguous, in rank order.

    Sizes differ by at most one: the first batch_size mod world_size ranks take one row more.
    Every rank needs a row, so batch_size must be at least world_size.
    """
    for name, value in (("batch_size", batch_size), ("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {describe(value)}")
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, {world_size}) (the world size), got {rank}")
    if batch_size < world_size:
        raise ValueError(f"batch_size must be at least the world size {world_size} (a row per rank), "
                         f"got {batch_size}")
    base, extra = divmod(int(batch_size), int(world_size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)
# --8<-- [end:shard_bounds]


class DistributedContext:
    """One process's place in a data-parallel run; a world of one (every method a no-op) without torchrun.

    rank, world_size, local_rank, device, backend (the process group's; None alone), enabled.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, device="cpu", backend=None,
                 *, owns_group: bool = False):
        self.rank, self.world_size, self.local_rank = int(rank), int(world_size), int(local_rank)
        self.device = torch.device(device)
        self.backend = backend
        self._owns_group = owns_group

    @property
    def enabled(self) -> bool:
        """A process group is up (launched by torchrun, or one set up before)."""
        return self.backend is not None and torch_dist.is_available() and torch_dist.is_initialized()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one rank that prints progress and writes files."""
        return self.rank == 0

    # ---- the model ----------------------------------------------------------------------------

    def wrap(self, model, **ddp_options):
        """``model`` on this rank's device, in DistributedDataParallel when the world is larger than one.

        DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts
        equal. Train with the wrapper's forward and ``backward(loss, count)`` (autograd):
        the all-reduce runs in autograd's hooks, which Rosetta's ``module.backward(dy)``
        (torch.autograd.grad underneath) does not fire, so it raises after a forward through the
        wrapper (accelerated/torch/module.py). Keep the unwrapped model for
        evaluation, decoding and checkpoints (its state-dict keys have no "module." prefix).
        """
        model = model.to(self.device)
        if not self.enabled:
            return model
        if self.device.type == "cuda":
            ddp_options.setdefault("device_ids", [self.device.index])
            ddp_options.setdefault("output_device", self.device.index)
        return DistributedDataParallel(model, **ddp_options)

    @staticmethod
    def unwrap(model):
        """The module inside a DistributedDataParallel wrapper (anything else, a fully_shard model too, as it is)."""
        return model.module if isinstance(model, DistributedDataParallel) else model

    # --8<-- [start:fully_shard]
    def fully_shard(self, model, mixed_precision: str | None = None, layers=None):
        """``model`` sharded over the ranks with FSDP2 (ZeRO-3): ``torch.distributed.fsdp.fully_shard``.

        Each module of a class in ``layers`` (default: accelerated.torch's EncoderLayer and
        DecoderLayer) becomes its own unit, then the root takes the rest (embeddings, final
        norms, the output projection, so a tied embedding stays in one unit). Every parameter
        becomes a DTensor of which this rank holds 1/N (dimension 0, padded); a unit's whole
        parameters exist only while its forward or backward runs (all-gather), and its
        gradients are reduce-scattered (averaged over ranks, as DDP's all-reduce) back to
        shards. The model is changed in place (its class becomes an FSDP subclass) and returned.
        Build the optimizer afterwards, from the sharded parameters, so its state is sharded too.

        mixed_precision: None (compute in the parameters' dtype), "bf16" or "fp16": the dtype
        parameters are all-gathered and computed in, gradients reduced in float32 and the
        sharded parameters and optimizer state kept in the model's dtype.
        Needs a process group (torchrun): a world of one without one raises ValueError.
        """
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if mixed_precision is not None:
            check_choice("mixed_precision", mixed_precision, set(MIXED_PRECISION))
        if not self.enabled:
            raise ValueError("fully_shard needs a process group to shard over: expected a run launched by torchrun "
                             "(e.g. torchrun --nproc_per_node=2 ...), got a world of one without one")
        if layers is None:
            from .decoder import DecoderLayer
            from .encoder import EncoderLayer

            layers = (EncoderLayer, DecoderLayer)
        options = {}
        if mixed_precision is not None:
            options["mp_policy"] = MixedPrecisionPolicy(param_dtype=MIXED_PRECISION[mixed_precision],
                                                        reduce_dtype=torch.float32)
        model = model.to(self.device)
        units = [m for m in model.modules() if isinstance(m, tuple(layers)) and m is not model]
        for unit in units:  # innermost first does not matter here: layers do not nest
            fully_shard(unit, **options)
        fully_shard(model, **options)
        return model
    # --8<-- [end:fully_shard]

    @staticmethod
    def full_state_dict(model) -> dict:
        """``model.state_dict()`` with every sharded tensor (DTensor) gathered whole, on the CPU, on every rank.

        Collective for a fully_shard model: every rank must call it (each shard is all-gathered
        in state-dict order). Plain tensors are copied to the CPU as they are, so the result
        loads into an unsharded model on any backend (``load_state_dict``, save_checkpoint).
        """
        from torch.distributed.tensor import DTensor

        return {key: (value.full_tensor() if isinstance(value, DTensor) else value).detach().cpu()
                for key, value in model.state_dict().items()}

    def seed_dropout(self, model, seed: int) -> None:
        """Give every rank its own dropout masks: each seeded module is reseeded from (seed, rank, its name).

        Rosetta's Dropout and attention modules draw from their own generators, built from the
        model's seed, so without this every rank would drop the same positions of its rows.
        torch's global generator (modules built with seed=None) is reseeded from (seed, rank) too.
        """
        torch.manual_seed(child_seed(seed, f"rank{self.rank}"))
        for name, module in self.unwrap(model).named_modules():
            if callable(getattr(module, "manual_seed", None)):
                module.manual_seed(child_seed(seed, f"rank{self.rank}.{name}"))

    # ---- the data -----------------------------------------------------------------------------

    def shard(self, *arrays):
        """This rank's rows of each array (same first dimension), as tensors on this rank's device.

        NumPy, torch or CuPy arrays; None passes through. One array gives one tensor, several a tuple.
        """
        if not arrays:
            raise TypeError("shard() needs at least one array, got none")
        sizes = set()
        for i, a in enumerate(arrays):
            if a is None:
                continue
            if not hasattr(a, "shape"):
                raise TypeError(f"arrays[{i}] must be a NumPy, torch or CuPy array, got {describe(a)}")
            if len(a.shape) == 0:
                raise ValueError(f"arrays[{i}] must have a batch dimension to shard along (dimension 0), "
                                 f"got a 0-d array")
            sizes.add(int(a.shape[0]))
        if len(sizes) > 1:
            raise ValueError(f"arrays must share their batch size (dimension 0), got sizes {sorted(sizes)}")
        if not sizes:
            return arrays[0] if len(arrays) == 1 else arrays
        start, stop = shard_bounds(sizes.pop(), self.rank, self.world_size)
        out = tuple(None if a is None else asarray(a)[start:stop].to(self.device) for a in arrays)
        return out[0] if len(out) == 1 else out

    # ---- gradients and metrics ----------------------------------------------------------------

    def _all_reduce_sum(self, values) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if not self.enabled:
            return values
        tensor = torch.as_tensor(values, dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor.cpu().numpy()

    # --8<-- [start:loss_weight]
    def loss_weight(self, count) -> float:
        """N·count / Σ_ranks count: what this rank's mean loss is multiplied by before backward.

        count: the number of positions this rank's loss averages over (e.g. target tokens that
        are not padding). DDP then averages the N gradients into the global batch's one. 1.0
        in a world of one; 0.0 when no rank counts anything.
        """
        count = _check_count("count", count)
        if not self.enabled:
            return 1.0
        total = float(self._all_reduce_sum([count])[0])
        return self.world_size * count / total if total > 0 else 0.0

    def backward(self, loss, count=1) -> None:
        """``(loss · loss_weight(count)).backward()``: the global batch's gradient in every ``param.grad``."""
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise TypeError(f"loss must be a 0-d torch.Tensor, got {describe(loss)}")
        weight = self.loss_weight(count)
        (loss * weight if weight != 1.0 else loss).backward()

    def reduce_sum(self, value):
        """The sum over ranks of a number (or one-element tensor), or of each entry of a dict, as Python floats."""
        if isinstance(value, dict):
            keys = list(value)
            return dict(zip(keys, self._all_reduce_sum([_number(value[k]) for k in keys]).tolist()))
        return float(self._all_reduce_sum([_number(value)])[0])

    def reduce_mean(self, value, weight=1.0):
        """Σ_r weight_r·value_r / Σ_r weight_r over ranks (each entry of a dict); weight=count: the global mean."""
        weight = _check_count("weight", weight)
        if isinstance(value, dict):
            keys = list(value)
            sums = self._all_reduce_sum([weight * _number(value[k]) for k in keys] + [weight])
            total = sums[-1]
            return {k: (float(s / total) if total > 0 else float("nan")) for k, s in zip(keys, sums[:-1])}
        weighted, total = self._all_reduce_sum([weight * _number(value), weight])
        return float(weighted / total) if total > 0 else float("nan")
    # --8<-- [end:loss_weight]

    def barrier(self) -> None:
        """Wait for every rank (e.g. before reading a file rank 0 wrote)."""
        if self.enabled:
            torch_dist.barrier()

    # ---- the end ------------------------------------------------------------------------------

    def close(self, wait: bool = True) -> None:
        """Tear down the process group this context set up (one set up before is left alone).

        Every rank first waits for the others, so none closes its sockets while a peer still
        talks; then, after the group is destroyed, objects that still hold it (a dropped DDP
        wrapper in a reference cycle) are collected now, while the interpreter is whole:
        gloo's worker threads left to interpreter shutdown abort the process. wait=False skips
        the wait (a rank leaving on an error must not block on peers that may never arrive).
        """
        if self._owns_group and torch_dist.is_initialized():
            if wait:
                torch_dist.barrier()
            torch_dist.destroy_process_group()
            gc.collect()
        self._owns_group = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self.close(wait=exc_type is None)
        return False

    def __repr__(self) -> str:
        return (f"DistributedContext(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank}, "
                f"device={str(self.device)!r}, backend={self.backend!r})")


def _number(value) -> float:
    """A Python float from a number or a one-element tensor (detached: a metric, not part of the graph)."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
    return float(value)


def _check_count(name: str, value) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {describe(value)}")
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def _env_int(name: str, default=None) -> int:
    text = os.environ.get(name)
    if text is None:
        if default is None:
            raise ValueError(f"environment variable {name} must be set when WORLD_SIZE is (torchrun sets both), "
                             f"got it unset")
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None


def setup_distributed(backend: str | None = None, device=None, *, timeout_s: float | None = None):
    """This process's DistributedContext, from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

    Without WORLD_SIZE (a plain ``python`` run) the context is a world of one, unless a process
    group is already up, which is then used. device: default cuda:LOCAL_RANK when CUDA is
    available, else cpu. backend: default nccl on CUDA (when built in), else gloo.
    timeout_s: how long a collective waits for the other ranks (torch's default: 10 minutes).
    """
    if "WORLD_SIZE" not in os.environ:
        if torch_dist.is_available() and torch_dist.is_initialized():  # set up by the caller
            local_rank = _env_int("LOCAL_RANK", 0)
            group_device = torch.device(device) if device is not None else _default_device(local_rank)
            return DistributedContext(torch_dist.get_rank(), torch_dist.get_world_size(), local_rank, group_device,
                                      torch_dist.get_backend())
        return DistributedContext(device=device if device is not None else "cpu")
    world_size = _env_int("WORLD_SIZE")
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"environment variables RANK and WORLD_SIZE must satisfy 0 <= RANK < WORLD_SIZE, "
                         f"got RANK={rank}, WORLD_SIZE={world_size}")
    if not torch_dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build, so WORLD_SIZE="
                           f"{world_size} cannot be honoured: run one process or install a torch with distributed")
    device = _default_device(local_rank) if device is None else torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if backend is None:
        backend = "nccl" if device.type == "cuda" and torch_dist.is_nccl_available() else "gloo"
    check_choice("backend", backend, set(PROCESS_GROUP_BACKENDS))
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"backend 'nccl' needs a CUDA device, got device {str(device)!r}")
    if backend == "gloo" and not torch_dist.is_gloo_available():
        raise RuntimeError("backend 'gloo' is not built into this torch")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not torch_dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise ValueError(f"environment variable {name} must be set when WORLD_SIZE is (torchrun sets it), "
                                 f"got it unset")
        options = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=float(timeout_s))}
        torch_dist.init_process_group(backend, rank=rank, world_size=world_size, **options)
        owns = True
    return DistributedContext(rank, world_size, local_rank, device, backend, owns_group=owns)


def _default_device(local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
