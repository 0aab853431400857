"""accelerated.torch.distributed: two CPU ranks (torchrun, gloo) take exactly the steps one process takes.

The end-to-end test launches ``python -m torch.distributed.run --nproc_per_node=2`` on
parity_tests/distributed_worker.py: a few SGD steps of an EncoderLayer + Linear regressor in
float64 with DistributedDataParallel, each rank on its (uneven) shard of the same global
batches. The final parameters must be identical on both ranks and equal, within float64's
tolerance, to one process trained on the whole batches; so must the all-reduced losses. The
rest checks the pieces without a process group.
"""

import itertools
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parity_tests.tolerances import assert_close

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'rosetta-transformer[torch]')")
torch_dist = pytest.importorskip("torch.distributed", reason="this torch build has no torch.distributed")

from accelerated.torch.distributed import (  # after the skip: needs torch
    DistributedContext,
    setup_distributed,
    shard_bounds,
)

REPO = Path(__file__).resolve().parents[1]
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def alone(monkeypatch):
    """A process that torchrun did not start."""
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.skipif(not (torch_dist.is_available() and torch_dist.is_gloo_available()),
                    reason="torch.distributed with the gloo backend is not available in this torch build")
def test_two_ranks_take_the_steps_of_one_process(tmp_path, alone):
    from parity_tests import distributed_worker as worker

    out = tmp_path / "result.npz"
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}",
               "-m", "parity_tests.distributed_worker", str(out)]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, f"torchrun failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.npz"]  # rank 0 alone wrote
    result = np.load(out)
    assert int(result["world_size"]) == 2 and str(result["backend"]) == "gloo"
    ranks = result["ranks"]  # (2, P)
    np.testing.assert_array_equal(ranks[0], ranks[1])  # DDP: the same averaged gradient, the same steps

    single = worker.train(setup_distributed())  # this process, a world of one, the whole batches
    initial = torch.cat([p.detach().reshape(-1) for p in worker.Regressor().parameters()]).numpy()
    expected = single["flat"].numpy()
    assert not np.allclose(expected, initial)  # training moved the parameters
    assert_close(ranks[0], expected, np.float64, "parameters after 2-rank training vs one process")
    assert_close(result["losses"], single["losses"], np.float64, "all-reduced losses vs one process")


def test_a_world_of_one_without_torchrun(alone):
    context = setup_distributed()
    assert (context.rank, context.world_size, context.enabled, context.is_main) == (0, 1, False, True)
    model = torch.nn.Linear(3, 1)
    assert context.wrap(model) is model and context.unwrap(model) is model
    x = np.arange(12.0).reshape(4, 3)
    shard, none = context.shard(x, None)
    assert none is None and isinstance(shard, torch.Tensor)
    np.testing.assert_array_equal(shard.numpy(), x)
    assert context.loss_weight(7) == 1.0
    assert context.reduce_mean(2.5, weight=3) == 2.5
    assert context.reduce_mean({"loss": 1.5, "acc": 0.25}) == {"loss": 1.5, "acc": 0.25}
    assert context.reduce_sum({"tokens": 4}) == {"tokens": 4.0}
    loss = (model(shard.float()) ** 2).mean()
    context.backward(loss, count=4)  # plain loss.backward()
    assert model.weight.grad is not None
    context.barrier()
    with context:
        pass  # closing a world of one is a no-op


@pytest.mark.parametrize("batch, world", [(5, 2), (7, 3), (4, 4), (9, 1), (10, 4)])
def test_shards_tile_the_batch_in_rank_order(batch, world):
    bounds = [shard_bounds(batch, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == batch
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))  # contiguous, in rank order
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    context = DistributedContext(rank=world - 1, world_size=world)  # a rank's view, without a process group
    start, stop = bounds[-1]
    np.testing.assert_array_equal(context.shard(np.arange(batch)).numpy(), np.arange(start, stop))


def test_seed_dropout_gives_each_rank_its_own_masks():
    import accelerated.torch as rt

    def masks(rank):
        layer = rt.EncoderLayer(8, 2, 16, dropout=0.5, seed=0, dtype=torch.float64)
        DistributedContext(rank=rank, world_size=2).seed_dropout(layer, seed=3)
        return layer(torch.ones(1, 4, 8, dtype=torch.float64)).detach()

    assert torch.equal(masks(0), masks(0))  # deterministic per rank
    assert not torch.equal(masks(0), masks(1))


def test_bad_input_raises_and_names_it(alone, monkeypatch):
    with pytest.raises(ValueError, match="batch_size"):
        shard_bounds(1, 0, 2)
    with pytest.raises(ValueError, match="rank"):
        shard_bounds(4, 2, 2)
    with pytest.raises(TypeError, match="batch_size"):
        shard_bounds(4.0, 0, 2)
    context = DistributedContext()
    with pytest.raises(ValueError, match="batch size"):
        context.shard(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(TypeError, match=r"arrays\[0\]"):
        context.shard([1, 2, 3])
    with pytest.raises(ValueError, match="count"):
        context.loss_weight(-1)
    with pytest.raises(TypeError, match="loss"):
        context.backward(torch.ones(3), 3)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK"):
        setup_distributed()
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(ValueError, match="RANK"):
        setup_distributed()
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="backend"):
        setup_distributed(backend="mpi")
    with pytest.raises(ValueError, match="nccl"):
        setup_distributed(backend="nccl", device="cpu")
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        setup_distributed(backend="gloo", device="cpu")


@pytest.mark.skipif(not (torch_dist.is_available() and torch_dist.is_gloo_available()),
                    reason="torch.distributed with the gloo backend is not available in this torch build")
def test_rosetta_train_under_torchrun_matches_one_process(tmp_path, alone):
    """`rosetta train --backend torch` under torchrun: 2 ranks take the steps of one process."""
    from rosetta.checkpoint import load_checkpoint

    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    train_args = ["-m", "rosetta.cli", "train", "--task", "reverse", "--backend", "torch", "--config", "tiny",
                  "dtype=float64", "--steps", "15", "--quiet"]
    runs = {
        "two": [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                "--master_addr=127.0.0.1", f"--master_port={free_port()}"] + train_args,
        "one": [sys.executable] + train_args,
    }
    states = {}
    for name, command in runs.items():
        out = tmp_path / name
        run = subprocess.run(command + ["--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=180, check=False)
        assert run.returncode == 0, f"{name} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        states[name] = load_checkpoint(out / "model.safetensors")[0].state_dict()
    assert "2 processes" not in run.stdout  # the single run reports no world
    for key, value in states["one"].items():
        assert_close(states["two"][key], value, np.float64, f"{key} after 2-rank vs 1-process training")
