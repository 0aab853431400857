"""The training command: tasks, checkpoints, a short training run, backends and the CLI."""

import importlib.util
import json
import struct
import sys
import types

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity_tests.strategies import seeds
from parity_tests.tolerances import FEW_ROUNDINGS, FLOAT32_ROUNDOFF
from rosetta.checkpoint import build_model, load_checkpoint, save_checkpoint
from rosetta.cli import main
from rosetta.tasks import BOS, EOS, FIRST_SYMBOL, PAD, TASKS, SyntheticTask, make_task
from rosetta.train import (
    PRESETS,
    BackendUnavailable,
    check_config,
    decode_text,
    exact_match,
    load_backend,
    model_config,
    parse_overrides,
    smoothing_floor,
    task_from_checkpoint,
    train,
)

RULES = {"copy": lambda s: list(s), "reverse": lambda s: list(s)[::-1], "sort": lambda s: sorted(s)}


# ---- tasks ----------------------------------------------------------------------------------------


@given(task=st.sampled_from(TASKS), num_symbols=st.integers(2, 12), min_len=st.integers(1, 6),
       extra=st.integers(0, 5), batch=st.integers(1, 9), seed=seeds)
def test_batches_hold_the_rule_and_the_layout(task, num_symbols, min_len, extra, batch, seed):
    max_len = min_len + extra
    t = SyntheticTask(task, num_symbols, min_len, max_len, seed=seed, heldout_size=0)
    b = t.train_batch(batch)
    B, S = b.src.shape
    assert b.tgt_in.shape == b.tgt_out.shape == (B, S) and B == batch
    for name in ("src", "tgt_in", "tgt_out"):
        assert getattr(b, name).dtype == np.int64
    np.testing.assert_array_equal(b.src_key_padding_mask, b.src == PAD)
    np.testing.assert_array_equal(b.tgt_key_padding_mask, b.tgt_in == PAD)
    for row in range(B):
        src = b.src[row].tolist()
        n = src.index(EOS)
        assert min_len <= n <= max_len
        symbols = src[:n]
        assert all(FIRST_SYMBOL <= s < t.vocab_size for s in symbols)
        assert all(s == PAD for s in src[n + 1:])
        target = RULES[task](symbols)
        assert b.tgt_out[row].tolist() == target + [EOS] + [PAD] * (S - n - 1)
        assert b.tgt_in[row].tolist() == [BOS] + target + [PAD] * (S - n - 1)
        assert t.target(symbols).tolist() == target
    assert b.num_target_tokens == int((b.src != PAD).sum())


@given(task=st.sampled_from(TASKS), seed=seeds)
def test_heldout_split_is_distinct_and_never_trained_on(task, seed):
    t = SyntheticTask(task, 3, 2, 4, seed=seed, heldout_size=30)  # 9 + 27 + 81 = 117 sequences in all
    keys = {tuple(s.tolist()) for s in t.heldout}
    assert len(t.heldout) == len(keys) == 30
    assert all(2 <= len(s) <= 4 for s in t.heldout)
    drawn = {tuple(s.tolist()) for s in t.train_sequences(3000)}
    assert not drawn & keys
    assert len(drawn) == 117 - 30  # a small space: training reaches every other sequence, never a held-out one
    assert all(t.is_heldout(s) for s in t.heldout)


def test_tasks_are_deterministic_given_seed():
    a, b, c = (SyntheticTask("sort", 10, 10, 14, seed=s, heldout_size=50) for s in (7, 7, 8))
    assert [s.tolist() for s in a.heldout] == [s.tolist() for s in b.heldout]
    np.testing.assert_array_equal(a.train_batch(16).src, b.train_batch(16).src)
    assert [s.tolist() for s in a.heldout] != [s.tolist() for s in c.heldout]


def test_heldout_batches_cover_the_split():
    t = SyntheticTask("reverse", 5, 3, 6, seed=0, heldout_size=23)
    batches = t.heldout_batches(10)
    assert [len(b.src) for b in batches] == [10, 10, 3]
    rows = [b.src[i, : b.src[i].tolist().index(EOS)].tolist() for b in batches for i in range(len(b.src))]
    assert rows == [s.tolist() for s in t.heldout]


def test_text_round_trip():
    t = SyntheticTask("reverse", 10, 1, 3, heldout_size=0)
    ids = t.encode_text("a c  j")
    assert ids.tolist() == [FIRST_SYMBOL, FIRST_SYMBOL + 2, FIRST_SYMBOL + 9]
    assert t.decode_ids([BOS, *ids, EOS, PAD]) == "<bos> a c j <eos> <pad>"
    big = SyntheticTask("copy", 30, 1, 2, heldout_size=0)
    assert big.decode_ids(big.encode_text("0 29 7")) == "0 29 7"


def test_task_errors():
    with pytest.raises(ValueError, match="task"):
        make_task("rotate")
    with pytest.raises(ValueError, match="max_len"):
        SyntheticTask("copy", 4, 5, 3)
    with pytest.raises(ValueError, match="heldout_size"):
        SyntheticTask("copy", 2, 1, 2, heldout_size=4)  # 6 sequences in all: at most 3 may be held out
    with pytest.raises(TypeError, match="num_symbols"):
        SyntheticTask("copy", 2.5)
    with pytest.raises(TypeError, match="seed"):
        SyntheticTask("copy", seed=-1)
    t = SyntheticTask("copy", 3, 1, 2, heldout_size=0)
    with pytest.raises(ValueError, match="text"):
        t.encode_text("a q")
    with pytest.raises(ValueError, match="text"):
        t.encode_text("   ")
    with pytest.raises(ValueError, match="sequences"):
        t.make_batch([])


# ---- a short training run, shared by the tests below -----------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny preset trained for its 300 steps (a few seconds), with its outputs on disk."""
    out = tmp_path_factory.mktemp("run")
    config = parse_overrides(["tiny"])
    task = SyntheticTask(config["task"], config["num_symbols"], config["min_len"], config["max_len"],
                         seed=config["seed"], heldout_size=config["heldout_size"])
    import reference as rt

    untrained = rt.Transformer(**model_config(config, task.vocab_size), seed=config["seed"])
    before = exact_match(untrained, task, 64)
    result = train(config, out_dir=out, progress=False)
    return result, before, out


def test_training_lowers_the_loss_and_learns_the_task(trained):
    result, before, _ = trained
    losses = result.losses
    assert len(losses) == PRESETS["tiny"]["steps"] == len(result.learning_rates)
    floor = smoothing_floor(FIRST_SYMBOL + PRESETS["tiny"]["num_symbols"], PRESETS["tiny"]["label_smoothing"])
    assert losses[0] > 1.5  # about log(7) at the start
    assert np.mean(losses[-20:]) < floor + 0.1  # near the least loss label smoothing allows (0.446)
    assert before < 0.2
    assert result.exact_match >= 0.95
    assert result.teacher_forced_exact_match == result.exact_match  # greedy is right iff every step is
    assert result.tokens_per_second > 0 and result.train_seconds < 30
    assert max(result.learning_rates) == pytest.approx(PRESETS["tiny"]["lr"], rel=FEW_ROUNDINGS)


def test_training_writes_checkpoint_plot_and_summary(trained):
    result, _, out = trained
    assert sorted(p.name for p in out.iterdir()) == ["loss_curve.png", "model.safetensors", "run.json"]
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "run.json").read_text())
    assert summary["exact_match"] == result.exact_match and summary["config"] == result.config
    assert summary["total_seconds"] >= summary["train_seconds"] > 0
    _, config = load_checkpoint(out / "model.safetensors")
    assert config["task"]["task"] == "reverse" and config["train"] == result.config
    assert config["results"]["exact_match"] == result.exact_match


def test_checkpoint_round_trip_gives_identical_logits(trained, tmp_path):
    _, _, out = trained
    model, config = load_checkpoint(out / "model.safetensors")
    path = save_checkpoint(tmp_path / "again.safetensors", model, config)
    again, config_again = load_checkpoint(path)
    assert config_again == config
    task = task_from_checkpoint(config)
    batch = SyntheticTask("reverse", 4, 2, 4, seed=5, heldout_size=0).train_batch(8)
    mask = batch.src_key_padding_mask
    logits = [m(batch.src, batch.tgt_in, src_key_padding_mask=mask, memory_key_padding_mask=mask)
              for m in (model, again)]
    np.testing.assert_array_equal(logits[0], logits[1])
    assert all(np.array_equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert task.task == "reverse" and task.heldout == []


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("tied", [False, True])
def test_checkpoint_round_trip_of_fresh_models(tmp_path, dtype, tied):
    config = {"model": {"src_vocab_size": 9, "tgt_vocab_size": 9, "d_model": 8, "num_heads": 2, "d_ff": 16,
                        "num_encoder_layers": 1, "num_decoder_layers": 2, "max_len": 32, "tie_embeddings": tied,
                        "dtype": dtype}, "note": ["any", "json", 1]}
    import reference as rt

    model = rt.Transformer(**{**config["model"], "dtype": dtype}, seed=3)
    loaded, loaded_config = load_checkpoint(save_checkpoint(tmp_path / "m.safetensors", model, config))
    assert loaded_config == config
    assert list(loaded.state_dict()) == list(model.state_dict())
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert a.dtype == b.dtype == np.dtype(dtype) and np.array_equal(a, b), name
    assert not loaded.training
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left


# ---- bad checkpoints -------------------------------------------------------------------------------


@pytest.fixture()
def small_checkpoint(tmp_path):
    config = {"model": {"src_vocab_size": 7, "tgt_vocab_size": 7, "d_model": 8, "num_heads": 2, "d_ff": 8,
                        "num_encoder_layers": 1, "num_decoder_layers": 1, "max_len": 16}}
    model = build_model(config)
    return save_checkpoint(tmp_path / "small.safetensors", model, config), model, config


def _rewrite(path, tensors, metadata):
    import safetensors.numpy

    path.write_bytes(safetensors.numpy.save(tensors, metadata=metadata))


@pytest.mark.parametrize("keep", [0, 5, 8, 40, -1])
def test_truncated_checkpoint_is_refused(small_checkpoint, keep):
    path, _, _ = small_checkpoint
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:-3])
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(path)


def test_mismatched_checkpoints_are_refused(small_checkpoint, tmp_path):
    import safetensors.numpy

    path, _, config = small_checkpoint
    tensors = safetensors.numpy.load(path.read_bytes())
    metadata = {"format": "rosetta-transformer-checkpoint", "version": "2", "model_class": "Transformer",
                "config": json.dumps(config)}
    name = "generator.bias"

    bad = dict(tensors, **{name: np.zeros(8, np.float32)})
    _rewrite(tmp_path / "shape.safetensors", bad, metadata)
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint(tmp_path / "shape.safetensors")

    bad = dict(tensors, **{name: tensors[name].astype(np.float64)})
    _rewrite(tmp_path / "dtype.safetensors", bad, metadata)
    with pytest.raises(ValueError, match="dtype"):
        load_checkpoint(tmp_path / "dtype.safetensors")

    bad = {k: v for k, v in tensors.items() if k != name}
    _rewrite(tmp_path / "missing.safetensors", bad, metadata)
    with pytest.raises(ValueError, match="missing tensors \\['generator.bias'\\]"):
        load_checkpoint(tmp_path / "missing.safetensors")

    bad = dict(tensors, extra=np.zeros(2, np.float32))
    _rewrite(tmp_path / "extra.safetensors", bad, metadata)
    with pytest.raises(ValueError, match="unexpected tensors \\['extra'\\]"):
        load_checkpoint(tmp_path / "extra.safetensors")

    other = dict(metadata, config=json.dumps({"model": dict(config["model"], d_model=16)}))
    _rewrite(tmp_path / "config.safetensors", tensors, other)
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint(tmp_path / "config.safetensors")

    _rewrite(tmp_path / "plain.safetensors", tensors, None)
    with pytest.raises(ValueError, match="rosetta-transformer-checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors")

    _rewrite(tmp_path / "json.safetensors", tensors, dict(metadata, config="{not json"))
    with pytest.raises(ValueError, match="JSON"):
        load_checkpoint(tmp_path / "json.safetensors")

    _rewrite(tmp_path / "args.safetensors", tensors, dict(metadata, config=json.dumps({"model": {"d_model": 8}})))
    with pytest.raises(ValueError, match="src_vocab_size"):
        load_checkpoint(tmp_path / "args.safetensors")

    (tmp_path / "header.safetensors").write_bytes(struct.pack("<Q", 4) + b"nope")
    with pytest.raises(ValueError, match="header"):
        load_checkpoint(tmp_path / "header.safetensors")

    with pytest.raises(ValueError, match="no such file"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_failed_save_changes_nothing(small_checkpoint):
    path, model, config = small_checkpoint
    before = path.read_bytes()
    other = build_model({"model": dict(config["model"], d_ff=16)})
    with pytest.raises(ValueError, match="shape"):
        save_checkpoint(path, other, config)  # the model is not the one config describes
    with pytest.raises(ValueError, match="src_vocab_size"):
        save_checkpoint(path, model, {"model": {"d_model": 8}})
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(path, model, dict(config, extra=object()))
    with pytest.raises(TypeError, match="config"):
        save_checkpoint(path, model, [config])
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_interrupted_save_keeps_the_old_file(small_checkpoint, monkeypatch):
    import rosetta.checkpoint as checkpoint

    path, model, config = small_checkpoint
    before = path.read_bytes()
    model.generator.bias.data += 1.0

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, config)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # the temporary file is gone


# ---- configs and backends --------------------------------------------------------------------------


def test_config_overrides():
    config = parse_overrides(["tiny", "d_model=16", "lr=1e-2", "norm_first=true", "betas=0.8,0.9", "task=sort"])
    assert config["d_model"] == 16 and config["lr"] == 0.01 and config["norm_first"] is True
    assert config["betas"] == [0.8, 0.9] and config["task"] == "sort"
    assert config["steps"] == PRESETS["tiny"]["steps"]
    assert parse_overrides([]) == PRESETS["small"]
    assert PRESETS["small"]["d_model"] == 64  # the presets are not changed by overrides
    with pytest.raises(ValueError, match="config key"):
        parse_overrides(["d_modle=3"])
    with pytest.raises(ValueError, match="'d_model'"):
        parse_overrides(["d_model=big"])
    with pytest.raises(ValueError, match="config"):
        parse_overrides(["huge"])
    with pytest.raises(ValueError, match="one preset"):
        parse_overrides(["tiny", "small"])
    with pytest.raises(ValueError, match="task"):
        check_config(parse_overrides(["task=rotate"]))
    with pytest.raises(ValueError, match="schedule"):
        check_config(parse_overrides(["schedule=linear"]))
    with pytest.raises(ValueError, match="steps"):
        check_config(parse_overrides(["steps=0"]))


def test_unknown_backend_and_task():
    with pytest.raises(ValueError, match="backend"):
        load_backend("jax")
    with pytest.raises(ValueError, match="backend"):
        train(parse_overrides(["tiny"]), backend="jax", progress=False)
    with pytest.raises(ValueError, match="task"):
        train(parse_overrides(["tiny", "task=rotate"]), progress=False)


def test_backend_without_training_api_is_refused(monkeypatch, capsys):
    fake = types.ModuleType("accelerated.torch")  # a backend that has layers but no Transformer or optimizer
    fake.Linear = object
    monkeypatch.setitem(sys.modules, "accelerated.torch", fake)
    with pytest.raises(BackendUnavailable, match="Transformer"):
        load_backend("torch")
    assert main(["train", "--backend", "torch", "--config", "tiny", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "backend 'torch'" in err and "Transformer" in err and "--backend numpy" in err


def test_backend_that_cannot_import_names_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "accelerated.cupy", None)  # import fails with ImportError
    with pytest.raises(BackendUnavailable, match="pip install"):
        load_backend("cupy")
    assert main(["train", "--backend", "cupy", "--quiet"]) == 2
    assert "rosetta-transformer[cuda12]" in capsys.readouterr().err


def test_training_on_the_cupy_backend_on_the_emulator(tmp_path, monkeypatch):
    """`rosetta train --backend cupy`: the whole loop (fused kernels, clipping, schedule, checkpoint, greedy
    scoring with the cache) on the CuPy backend, run by the CUDA host emulator; the checkpoint loads into
    the reference. (Without a GPU, `import accelerated.cupy` refuses; the emulated namespace stands in.)"""
    from accelerated import cupy_emulator as emulated_cupy

    if emulated_cupy.unavailable_reason() is not None:
        pytest.skip(f"CUDA kernels on the CPU emulator: {emulated_cupy.unavailable_reason()}")
    out = tmp_path / "run"
    with emulated_cupy.emulated_cupy() as rt:
        monkeypatch.setitem(sys.modules, "accelerated.cupy", rt)
        emulated_cupy.LAUNCHES.clear()
        code = main(["train", "--backend", "cupy", "--config", "tiny", "batch_size=2", "heldout_size=4",
                     "eval_batch_size=4", "--steps", "3", "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads((out / "run.json").read_text())
    assert summary["backend"] == "cupy" and np.isfinite(summary["final_loss"]) and summary["heldout_sequences"] == 4
    assert {"adamw_step", "norm_forward", "cross_entropy_forward"} <= {n.rsplit("_", 1)[0] for n in emulated_cupy.LAUNCHES}
    model, config = load_checkpoint(out / "model.safetensors")
    assert config["model"]["d_model"] == PRESETS["tiny"]["d_model"]
    assert all(np.all(np.isfinite(p.data)) for p in model.parameters())


# ---- the command line ------------------------------------------------------------------------------


def test_cli_decode_and_plot_attention(trained, tmp_path, capsys):
    result, _, out = trained
    checkpoint = str(out / "model.safetensors")
    assert result.exact_match == 1.0  # so the greedy output below must be the reverse
    assert main(["decode", "--checkpoint", checkpoint, "a b c d"]) == 0
    assert capsys.readouterr().out.strip() == "d c b a"
    assert main(["decode", "--checkpoint", checkpoint, "b", "a", "d"]) == 0
    assert capsys.readouterr().out.strip() == "d a b"
    if importlib.util.find_spec("torch") is not None:  # the same checkpoint decodes on the torch backend
        assert main(["decode", "--backend", "torch", "--checkpoint", checkpoint, "b a d c"]) == 0
        assert capsys.readouterr().out.strip() == "c d a b"
    if importlib.util.find_spec("cupy") is None:  # without CuPy: a clear refusal, exit status 2
        assert main(["decode", "--backend", "cupy", "--checkpoint", checkpoint, "a"]) == 2
        assert "backend 'cupy' is not available" in capsys.readouterr().err
    model, config = load_checkpoint(checkpoint)
    generated, text = decode_text(model, task_from_checkpoint(config), "c a")
    assert generated.tolist() == [BOS, FIRST_SYMBOL, FIRST_SYMBOL + 2, EOS] and text == "a c"

    assert main(["decode", "--checkpoint", checkpoint, "a x"]) == 2
    assert "unknown symbol" in capsys.readouterr().err
    assert main(["decode", "--checkpoint", str(tmp_path / "none.safetensors"), "a"]) == 2
    assert "no such file" in capsys.readouterr().err

    figures = tmp_path / "attention"
    assert main(["plot-attention", "--checkpoint", checkpoint, "--out", str(figures), "a b c"]) == 0
    layers = PRESETS["tiny"]["num_encoder_layers"] + 2 * PRESETS["tiny"]["num_decoder_layers"]
    names = sorted(p.name for p in figures.iterdir())
    assert len(names) == layers == len(capsys.readouterr().out.split())
    assert "decoder_layer0_cross_attention.png" in names and "encoder_layer1_self_attention.png" in names
    assert all((figures / n).read_bytes()[:4] == b"\x89PNG" for n in names)


def test_attention_maps_are_distributions(trained):
    from rosetta.train import attention_maps

    _, _, out = trained
    model, _ = load_checkpoint(out / "model.safetensors")
    src = np.array([[3, 4, 5, EOS]])
    tgt = np.array([[BOS, 5, 4, 3]])
    for name, weights in attention_maps(model, src, tgt):
        heads, rows, cols = weights.shape
        assert (heads, rows, cols) == (PRESETS["tiny"]["num_heads"], 4, 4)
        np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=FLOAT32_ROUNDOFF)
        if "decoder" in name and "self" in name:
            assert np.all(np.triu(weights, k=1) == 0)  # causal


def test_cli_train_smoke(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--task", "sort", "--config", "tiny", "batch_size=8", "--steps", "5", "--seed", "3",
                 "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "held-out exact match" in printed and "target tokens/s" in printed
    summary = json.loads((out / "run.json").read_text())
    assert summary["config"]["task"] == "sort" and summary["config"]["steps"] == 5 and summary["config"]["seed"] == 3
    _, config = load_checkpoint(out / "model.safetensors")
    assert config["task"]["task"] == "sort"
    assert main(["train", "--task", "rotate", "--quiet"]) == 2
    assert "task must be one of" in capsys.readouterr().err
    assert main(["train", "--config", "d_model=3", "--quiet", "--steps", "1", "--out", str(tmp_path / "x")]) == 2
    assert "d_model" in capsys.readouterr().err

