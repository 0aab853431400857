"""accelerated.torch.distributed: two CPU ranks (torchrun, gloo) take exactly the steps one process takes.

The end-to-end test launches ``python -m torch.distributed.run --nproc_per_node=2`` on
parity_tests/distributed_worker.py: a few SGD steps of an EncoderLayer + Linear regressor in
float64 with DistributedDataParallel, or sharded with FSDP2 (fully_shard), each rank on its
(uneven) shard of the same global batches. The final parameters must be identical on both
ranks and equal, within float64's tolerance, to one process trained on the whole batches; so
must the all-reduced losses. ``rosetta train`` under torchrun (DDP and --fsdp) is checked the
same way, and the FSDP run's checkpoint must load on every backend. The rest checks the pieces
without a process group.
"""

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parity_tests.tolerances import FORWARD_TOL, assert_close

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


def subprocess_env() -> dict:
    """This process's environment without torchrun's variables, one thread, the repository importable."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    return env


def torchrun(nproc: int = 2) -> list:
    """The command prefix of a one-node torchrun on a free local port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1", f"--master_port={free_port()}"]


needs_gloo = pytest.mark.skipif(not (torch_dist.is_available() and torch_dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available in this torch build")


@needs_gloo
@pytest.mark.parametrize("mode", ["ddp", "fsdp", "fsdp-bf16"])
def test_two_ranks_take_the_steps_of_one_process(tmp_path, alone, mode):
    """fsdp-bf16 (FSDP2's mixed precision: compute in bfloat16, reduce in float32, float64 shards) takes
    the float64 steps within bfloat16's tolerance."""
    from parity_tests import distributed_worker as worker

    out = tmp_path / "result.npz"
    command = torchrun() + ["-m", "parity_tests.distributed_worker", str(out), mode]
    run = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, f"torchrun failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.npz"]  # rank 0 alone wrote
    result = np.load(out)
    assert int(result["world_size"]) == 2 and str(result["backend"]) == "gloo"
    ranks = result["ranks"]  # (2, P)
    np.testing.assert_array_equal(ranks[0], ranks[1])  # the same averaged gradient, the same steps
    if mode.startswith("fsdp"):
        total = ranks.shape[1]
        held = result["local_numel"]  # (2,)  parameter entries in each rank's shards
        assert held.sum() >= total and held.max() < 0.6 * total  # each rank holds about half, not all
        assert result["backward_refused"].tolist() == [1, 1]  # module.backward refuses the sharded layer

    single = worker.train(setup_distributed())  # this process, a world of one, the whole batches
    initial = torch.cat([p.detach().reshape(-1) for p in worker.Regressor().parameters()]).numpy()
    expected = single["flat"].numpy()
    assert not np.allclose(expected, initial)  # training moved the parameters
    dtype = "bfloat16" if mode.endswith("bf16") else np.float64  # the dtype the ranks computed in
    error = assert_close(ranks[0], expected, dtype, "parameters after 2-rank training vs one process")
    assert_close(result["losses"], single["losses"], dtype, "all-reduced losses vs one process")
    if dtype == "bfloat16":  # and it did compute in bfloat16: not float64's roundoff
        assert error > FORWARD_TOL[np.dtype(np.float64)]


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


TRAIN_ARGS = ["-m", "rosetta.cli", "train", "--task", "reverse", "--backend", "torch", "--config", "tiny",
              "dtype=float64", "--steps", "15", "--quiet"]


def rosetta_train(command: list, out: Path) -> subprocess.CompletedProcess:
    run = subprocess.run(command + ["--out", str(out)], cwd=REPO, env=subprocess_env(), capture_output=True,
                         text=True, timeout=180, check=False)
    assert run.returncode == 0, f"{command} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """`rosetta train --backend torch` in one plain process: the run both torchrun runs must reproduce."""
    out = tmp_path_factory.mktemp("one")
    run = rosetta_train([sys.executable] + TRAIN_ARGS, out)
    assert "processes" not in run.stdout and "FSDP" not in run.stdout  # a single run reports no world
    return out


@needs_gloo
@pytest.mark.parametrize("flags", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_rosetta_train_under_torchrun_matches_one_process(tmp_path, alone, one_process_run, flags):
    """`rosetta train --backend torch [--fsdp]` under torchrun: 2 ranks take the steps of one process.

    The FSDP run's checkpoint is gathered from the shards; it must also load on every backend."""
    from rosetta.checkpoint import load_checkpoint

    run = rosetta_train(torchrun() + TRAIN_ARGS + flags, tmp_path)
    assert "2 processes" + (" (FSDP)" if flags else "") in run.stdout
    summary = json.loads((tmp_path / "run.json").read_text())
    expected_summary = json.loads((one_process_run / "run.json").read_text())
    assert (summary["world_size"], summary["fsdp"]) == (2, bool(flags))
    assert_close(summary["final_loss"], expected_summary["final_loss"], np.float64, "final all-reduced loss")
    state = load_checkpoint(tmp_path / "model.safetensors")[0].state_dict()
    expected = load_checkpoint(one_process_run / "model.safetensors")[0].state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert_close(state[key], value, np.float64, f"{key} after 2-rank vs 1-process training")
    if flags:
        assert_loads_on_every_backend(tmp_path / "model.safetensors", one_process_run / "model.safetensors")


def assert_loads_on_every_backend(path: Path, expected_path: Path) -> None:
    """The checkpoint at path gives expected_path's logits on numpy, torch and CuPy (emulated without a GPU)."""
    import importlib

    from accelerated import cupy_emulator
    from rosetta.checkpoint import load_checkpoint

    src = np.array([[3, 4, 5, 2], [5, 6, 2, 0]], dtype=np.int64)  # (2, 4)  symbols, EOS, padding
    tgt = np.array([[1, 5, 4, 3], [1, 6, 5, 2]], dtype=np.int64)  # (2, 4)  BOS first

    def logits(checkpoint: Path, rt) -> np.ndarray:
        model = load_checkpoint(checkpoint, backend=rt)[0]
        model.eval()
        return rt.to_numpy(model(rt.asarray(src), rt.asarray(tgt)))  # (2, 4, V)

    reference = importlib.import_module("reference")
    expected = logits(expected_path, reference)
    assert_close(logits(path, reference), expected, np.float64, "logits of the FSDP checkpoint on numpy")
    assert_close(logits(path, importlib.import_module("accelerated.torch")), expected, np.float64,
                 "logits of the FSDP checkpoint on torch")
    reason = cupy_emulator.unavailable_reason()
    if reason is not None:
        pytest.skip(f"checked on numpy and torch; CuPy's CUDA host emulator cannot run here: {reason}")
    with cupy_emulator.emulated_cupy() as rt:
        assert_close(logits(path, rt), expected, np.float64, "logits of the FSDP checkpoint on CuPy (emulated)")


def test_fsdp_bad_input_raises_and_names_it(alone, capsys):
    """--fsdp outside torchrun, with another backend or with an unknown precision: a clear error, no run."""
    from rosetta.cli import main
    from rosetta.train import PRESETS, train

    config = dict(PRESETS["tiny"], steps=1)
    with pytest.raises(ValueError, match=r"--fsdp.*torchrun"):
        train(config, backend="torch", fsdp=True, progress=False)
    with pytest.raises(ValueError, match=r"--fsdp needs --backend torch.*numpy"):
        train(config, backend="numpy", fsdp=True, progress=False)
    with pytest.raises(ValueError, match=r"--fsdp-mixed-precision.*needs --fsdp"):
        train(config, backend="torch", mixed_precision="bf16", progress=False)
    with pytest.raises(ValueError, match=r"--fsdp-mixed-precision.*'fp8'"):
        train(config, backend="torch", fsdp=True, mixed_precision="fp8", progress=False)
    with pytest.raises(TypeError, match="fsdp must be a bool"):
        train(config, backend="torch", fsdp="yes", progress=False)
    with pytest.raises(ValueError, match=r"fully_shard.*torchrun"):
        DistributedContext().fully_shard(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="mixed_precision"):
        DistributedContext().fully_shard(torch.nn.Linear(2, 2), mixed_precision="float8")
    for backend in ("numpy", "cupy"):
        assert main(["train", "--backend", backend, "--fsdp", "--config", "tiny", "--steps", "1", "--quiet"]) == 2
        assert f"--fsdp needs --backend torch (FSDP2 shards torch modules), got --backend {backend}" in \
            capsys.readouterr().err
    assert main(["train", "--backend", "torch", "--fsdp", "--config", "tiny", "--steps", "1", "--quiet",
                 "--out", "/nonexistent/never-written"]) == 2
    assert "launched by torchrun" in capsys.readouterr().err


def test_rank_bytes_counts_what_a_rank_holds(alone):
    """rosetta/bench/fsdp_memory.py's count, in a world of one: P parameters, P gradients, 2P AdamW moments."""
    from rosetta.bench.fsdp_memory import measure

    counts = measure(setup_distributed(), "ddp", ["d_model=16", "num_heads=2", "d_ff=32", "num_encoder_layers=1",
                                                  "num_decoder_layers=1", "batch_size=2", "dtype=float64"])
    whole = counts["num_parameters"] * 8  # float64
    assert counts["parameter_bytes"] == counts["gradient_bytes"] == whole
    steps = counts["optimizer_bytes"] - 2 * whole  # AdamW: m and v per parameter, and a step count each
    assert 0 < steps <= 8 * counts["num_parameters"]
    assert counts["parameter_and_optimizer_bytes"] == whole + counts["optimizer_bytes"]


def test_the_committed_memory_table_shows_the_sharding():
    """docs/benchmarks/fsdp_memory.json (docs/distributed.md's table): DDP ranks hold everything, FSDP's half."""
    from rosetta.bench import common

    document = common.validate(json.loads((REPO / "docs/benchmarks/fsdp_memory.json").read_text()))
    rows = {(r["mode"], r["world_size"], r["rank"]): r for r in document["results"]}
    held = {key: r["parameter_and_optimizer_bytes"] for key, r in rows.items()}
    alone_bytes = held[("ddp", 1, 0)]
    assert held[("fsdp", 1, 0)] == held[("ddp", 2, 0)] == held[("ddp", 2, 1)] == alone_bytes
    shards = rows[("fsdp", 2, 0)]["parameter_bytes"] + rows[("fsdp", 2, 1)]["parameter_bytes"]
    assert shards == rows[("ddp", 1, 0)]["parameter_bytes"]  # the shards tile the whole
    assert max(held[("fsdp", 2, 0)], held[("fsdp", 2, 1)]) < 0.51 * alone_bytes  # (each rank counts its steps)
