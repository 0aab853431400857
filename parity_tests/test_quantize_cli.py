"""Quantized checkpoints (rosetta/checkpoint.py), ``rosetta quantize`` (rosetta/quantize.py) and the
quantization benchmark (rosetta/bench/quantization.py).

(a) checkpoints of every model kind: EncoderModel and DecoderLM read from tiny Hugging Face folders
(GPT-2, Llama, BERT, written by rosetta.hf.save_pretrained, so transformers is not needed) are saved as
Rosetta checkpoints and load back equal; version-2 files still load. (b) a quantized checkpoint loads on
the reference, torch (CPU) and CuPy (on the CUDA host emulator) and gives the in-memory quantized model's
logits; its integer tensors are covered by the digest. (c) ``rosetta quantize`` end to end on a tiny
checkpoint and a tiny GPT-2 folder, then ``rosetta decode`` on the result. (d) every bad input: one line,
exit status 2, naming it. (e) a tiny benchmark run: schema, rows, report, plot.
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given
from hypothesis import strategies as st

import reference as R
from parity_tests.backends import cpu_backend_params, cpu_namespace
from parity_tests.strategies import examples
from parity_tests.tolerances import FORWARD_TOL, relative_error
from rosetta import checkpoint
from rosetta.checkpoint import checkpoint_info, load_checkpoint, pretrained_config, save_checkpoint
from rosetta.cli import main
from rosetta.quantize import model_outputs, probe_inputs
from rosetta.tasks import BOS, EOS, SyntheticTask
from rosetta.train import decode_text

F64 = np.float64
TASK = SyntheticTask("reverse", 4, 2, 4, seed=0, heldout_size=0)  # symbols a b c d: ids 3..6
MODEL = {"src_vocab_size": TASK.vocab_size, "tgt_vocab_size": TASK.vocab_size, "d_model": 32, "num_heads": 2,
         "d_ff": 64, "num_encoder_layers": 1, "num_decoder_layers": 1, "max_len": 16, "dropout": 0.0,
         "padding_idx": 0, "dtype": "float64"}
CONFIG = {"model": MODEL, "task": TASK.spec()}
SETTINGS = [{"bits": 8}, {"bits": 8, "outlier_threshold": 0.5}, {"bits": 4, "group_size": 32}]
HF_CONFIGS = {  # the smallest folders each architecture module accepts; 64 features: 4-bit groups of 32 and 64
    "gpt2": {"model_type": "gpt2", "vocab_size": 40, "n_embd": 64, "n_layer": 1, "n_head": 2, "n_positions": 16},
    "llama": {"model_type": "llama", "vocab_size": 40, "hidden_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 128,
              "max_position_embeddings": 16},
    "bert": {"model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": 40, "hidden_size": 64,
             "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128,
             "max_position_embeddings": 16, "hidden_act": "gelu", "type_vocab_size": 2, "layer_norm_eps": 1e-12},
}


def float_checkpoint(folder, seed: int = 0):
    """A tiny float64 Transformer for TASK, saved with save_checkpoint (no training: the tests check plumbing)."""
    model = R.Transformer(**{k: v for k, v in MODEL.items() if k != "dtype"}, seed=seed, dtype=F64)
    return save_checkpoint(folder / f"float{seed}.safetensors", model, CONFIG), model


def quantized(model, settings):
    return R.quantize_model(model, **settings)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """folder(arch): a tiny random Hugging Face folder of arch, written once."""
    from rosetta.hf import architecture, save_pretrained

    root = tmp_path_factory.mktemp("hf")

    def make(arch: str):
        path = root / arch
        if not path.exists():
            config = HF_CONFIGS[arch]
            model = architecture(config).build(config, R, None)
            model.hf_config = dict(config)
            save_pretrained(model, path)
        return path

    return make


def run_cli(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


# ---- (a) every model kind, and version-2 files ------------------------------------------------------


@pytest.mark.parametrize("arch, kind", [("gpt2", "DecoderLM"), ("llama", "DecoderLM"), ("bert", "EncoderModel")])
def test_models_of_every_kind_round_trip(hf_folder, tmp_path, arch, kind):
    from rosetta.hf import load_pretrained

    model = load_pretrained(hf_folder(arch))
    path = save_checkpoint(tmp_path / "m.safetensors", model, pretrained_config(model))
    assert checkpoint_info(path)[:2] == (kind, None)
    loaded, config = load_checkpoint(path)
    assert type(loaded).__name__ == kind and loaded.hf_config == model.hf_config
    assert config["model"]["dtype"] == "float32"
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value, name)
    inputs = probe_inputs(model)
    np.testing.assert_array_equal(model_outputs(loaded, inputs), model_outputs(model, inputs))


def _rewrite(path, tensors, metadata):
    path.write_bytes(safetensors.numpy.save(tensors, metadata=metadata))


def test_version_2_files_still_load(tmp_path):
    path, model = float_checkpoint(tmp_path)
    tensors = safetensors.numpy.load(path.read_bytes())
    config_text = json.dumps(CONFIG, sort_keys=True)
    old = tmp_path / "v2.safetensors"  # what version 2 wrote: no quantization entry, the digest of config + tensors
    _rewrite(old, tensors, {"format": checkpoint.FORMAT, "version": "2", "model_class": "Transformer",
                            "config": config_text, "sha256": checkpoint.content_digest(config_text, tensors)})
    loaded, config = load_checkpoint(old)
    assert config == CONFIG and loaded.quantization is None
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value, name)
    _rewrite(old, tensors, {"format": checkpoint.FORMAT, "version": "2", "model_class": "DecoderLM",
                            "config": config_text, "sha256": checkpoint.content_digest(config_text, tensors)})
    with pytest.raises(ValueError, match="version 2 must hold a Transformer"):
        load_checkpoint(old)
    _rewrite(old, tensors, {"format": checkpoint.FORMAT, "version": "9", "model_class": "Transformer",
                            "config": config_text})
    with pytest.raises(ValueError, match="format version 2 or 3, got '9'"):
        load_checkpoint(old)


# ---- (b) quantized checkpoints on every backend --------------------------------------------------------


@given(seed=st.integers(0, 2**16), settings=st.sampled_from(SETTINGS))
@examples(0.3)
def test_a_quantized_checkpoint_loads_back_exactly(tmp_path_factory, seed, settings):
    folder = tmp_path_factory.mktemp("q")
    _, model = float_checkpoint(folder, seed)
    model = quantized(model, settings)
    path = save_checkpoint(folder / "q.safetensors", model, CONFIG)
    assert checkpoint_info(path)[:2] == ("Transformer", dict(model.quantization))
    loaded, _ = load_checkpoint(path, quantized=True)
    assert loaded.quantization == model.quantization
    for name, value in model.state_dict().items():
        got = loaded.state_dict()[name]
        assert got.dtype == value.dtype, name
        np.testing.assert_array_equal(got, value, name)
    inputs = probe_inputs(model)
    np.testing.assert_array_equal(model_outputs(loaded, inputs), model_outputs(model, inputs))


@pytest.mark.parametrize("backend", cpu_backend_params(include_reference=False))
def test_a_quantized_checkpoint_loads_on_every_backend(tmp_path, backend):
    _, model = float_checkpoint(tmp_path)
    inputs = probe_inputs(model)
    for i, settings in enumerate(SETTINGS[::2]):  # int8 and 4-bit (LLM.int8's row rounding is the layer tests')
        reference_model = quantized(float_checkpoint(tmp_path)[1], settings)
        path = save_checkpoint(tmp_path / f"q{i}.safetensors", reference_model, CONFIG)
        with cpu_namespace(backend) as rt:
            loaded, _ = load_checkpoint(path, backend=rt)
            assert loaded.quantization == reference_model.quantization
            got = model_outputs(loaded, inputs, rt)
        want = model_outputs(reference_model, inputs)
        assert relative_error(got, want) <= FORWARD_TOL[np.dtype(F64)], (backend, settings)
        with pytest.raises(ValueError, match="quantized and inference-only"):
            reference_model.backward(np.ones((4, 16, TASK.vocab_size)))


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed: the cupy backend loads")
def test_an_unavailable_backend_is_named_not_blamed_on_the_config(tmp_path):
    path, _ = float_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="backend 'cupy' is not available") as error:
        load_checkpoint(path, backend="cupy")
    assert "invalid config" not in str(error.value)


def test_the_digest_covers_integer_tensors_and_the_settings(tmp_path):
    _, model = float_checkpoint(tmp_path)
    path = save_checkpoint(tmp_path / "q.safetensors", quantized(model, {"bits": 8}), CONFIG)
    data = path.read_bytes()
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    name = "encoder.layers.0.self_attn.q_proj.weight"  # int8 codes
    begin = header_end + json.loads(data[8:header_end])[name]["data_offsets"][0]
    flipped = bytearray(data)
    flipped[begin] ^= 0x01  # one bit of one int8 code
    path.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"corrupt.*SHA-256") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)
    # the same tensors, the settings edited to LLM.int8 (which they also fit): only the digest can tell
    header = data[:header_end].decode()
    edited = header.replace('\\"outlier_threshold\\": null', '\\"outlier_threshold\\": 0.25', 1)  # same length
    assert edited != header and len(edited) == len(header)
    path.write_bytes(edited.encode() + data[header_end:])
    with pytest.raises(ValueError, match=r"corrupt.*SHA-256"):
        load_checkpoint(path)


# ---- (c) the command line -----------------------------------------------------------------------------


def test_quantize_then_decode_on_numpy_and_torch(tmp_path, capsys):
    source, model = float_checkpoint(tmp_path)
    out = tmp_path / "q4.safetensors"
    code, printed, err = run_cli(capsys, "quantize", "--checkpoint", source, "--bits", 4, "--group-size", 32,
                                 "--out", out)
    assert code == 0, err
    loaded, config = load_checkpoint(out, quantized=True)
    want = np.abs(model_outputs(loaded, probe_inputs(loaded)) - model_outputs(model, probe_inputs(model))).max()
    linears = sum(name.endswith(".weight_scale") for name in loaded.state_dict())
    assert f"quantized {linears} linear maps of the Transformer" in printed
    assert f"{source.stat().st_size:,} -> {out.stat().st_size:,} bytes" in printed
    assert f"max |error| {want:.3e}" in printed
    assert config["task"] == TASK.spec() and config["quantized_from"]["source"] == str(source)
    assert out.stat().st_size < 0.35 * source.stat().st_size  # float64 weights -> 4 bits plus scales

    code, printed, err = run_cli(capsys, "decode", "--checkpoint", out, "a b c d")
    assert code == 0, err
    generated, text = decode_text(loaded, TASK, "a b c d")  # (an untrained model: any symbols)
    assert printed.strip() == text
    torch_rt = pytest.importorskip("accelerated.torch")
    on_torch, _ = load_checkpoint(out, backend=torch_rt)
    src = torch_rt.asarray(np.array([[3, 4, 5, 6, 2]]))  # a b c d EOS
    max_len = 2 * src.shape[1] + 2  # decode_text's default
    np.testing.assert_array_equal(torch_rt.to_numpy(torch_rt.greedy_decode(on_torch, src, max_len, BOS, EOS,
                                                                           use_cache=True))[0], generated)


def test_quantize_a_hugging_face_folder(hf_folder, tmp_path, capsys):
    out = tmp_path / "gpt2-int8.safetensors"
    code, printed, err = run_cli(capsys, "quantize", "--model", hf_folder("gpt2"), "--bits", 8,
                                 "--outlier-threshold", 6, "--out", out)
    assert code == 0, err
    assert "linear maps of the DecoderLM" in printed and "LLM.int8 outliers above 6" in printed
    kind, settings, config = checkpoint_info(out)
    assert (kind, settings) == ("DecoderLM", {"bits": 8, "group_size": None, "outlier_threshold": 6.0})
    assert config["hf_config"]["model_type"] == "gpt2"
    model, _ = load_checkpoint(out)
    assert model.lm_head.weight is model.decoder.embedding.weight  # the tied head stays float, shared


def test_a_quantized_model_is_not_exported_as_a_hugging_face_folder(hf_folder, tmp_path):
    """Regression: save_pretrained wrote the packed codes as float weights (and dropped the scales), a folder
    that neither transformers nor load_pretrained could read; it now refuses, writing nothing."""
    from rosetta.hf import load_pretrained, save_pretrained

    model = R.quantize_model(load_pretrained(hf_folder("llama")), bits=4, group_size=32)
    with pytest.raises(ValueError, match="model must be a float model.*quantized with.*'bits': 4"):
        save_pretrained(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- (d) bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (("--bits", 3), "bits must be 8 or 4, got 3"),
    (("--bits", 4, "--group-size", 64), "must be divisible by group_size=64, got 32"),
    (("--bits", 4, "--group-size", 48), "group_size must be one of [32, 64], got 48"),
    (("--bits", 4, "--group-size", 32, "--outlier-threshold", 6), "outlier_threshold (LLM.int8) is for bits=8 only"),
    (("--bits", 8, "--group-size", 32), "group_size is for bits=4 only"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, args, message):
    source, _ = float_checkpoint(tmp_path)
    code, printed, err = run_cli(capsys, "quantize", "--checkpoint", source, *args, "--out", tmp_path / "x")
    assert code == 2 and printed == ""
    assert err.startswith("rosetta quantize: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_bits_4_without_a_group_size_uses_groups_of_32(tmp_path, capsys):
    """`rosetta quantize --checkpoint FILE --bits 8|4 --out FILE` (the issue's and README's form) runs with 4 bits
    too: the command defaults to groups of 32 (the layer API keeps group_size required)."""
    source, _ = float_checkpoint(tmp_path)
    code, printed, err = run_cli(capsys, "quantize", "--checkpoint", source, "--bits", 4, "--out", tmp_path / "q.sft")
    assert code == 0, err
    assert "4 bits per group of 32 input features" in printed
    assert checkpoint_info(tmp_path / "q.sft")[1] == {"bits": 4, "group_size": 32, "outlier_threshold": None}


def test_an_out_that_is_a_folder_is_a_one_line_error(tmp_path, capsys):
    """Regression: --out naming an existing folder ended in an IsADirectoryError traceback (status 1)."""
    source, _ = float_checkpoint(tmp_path)
    (tmp_path / "folder").mkdir()
    code, printed, err = run_cli(capsys, "quantize", "--checkpoint", source, "--bits", 8, "--out", tmp_path / "folder")
    assert code == 2 and printed == "" and err.count("\n") == 1
    assert "path must be a file" in err and "an existing folder" in err
    assert list((tmp_path / "folder").iterdir()) == []


def test_float_and_quantized_files_are_not_mixed_up(tmp_path, capsys):
    source, model = float_checkpoint(tmp_path)
    target = tmp_path / "q.safetensors"
    assert run_cli(capsys, "quantize", "--checkpoint", source, "--bits", 8, "--out", target)[0] == 0
    code, _, err = run_cli(capsys, "quantize", "--checkpoint", target, "--bits", 8, "--out", tmp_path / "again")
    assert code == 2 and str(target) in err and "must hold a float model" in err and "quantized Transformer" in err
    with pytest.raises(ValueError, match=f"{target}.*must hold a float model"):
        load_checkpoint(target, quantized=False)  # what training or quantizing needs
    with pytest.raises(ValueError, match=f"{source}.*must hold a quantized model.*got a float Transformer"):
        load_checkpoint(source, quantized=True)
    q_tensors = safetensors.numpy.load(target.read_bytes())
    with pytest.raises(ValueError, match="unexpected keys.*weight_scale"):
        model.load_state_dict(q_tensors)  # a quantized model's tensors into a float model
    with pytest.raises(TypeError, match="encoder.layers.0.self_attn.q_proj.weight.*floating dtype.*int8"):
        model.load_state_dict(q_tensors, strict=False)  # integer codes into a float weight
    q_model = quantized(float_checkpoint(tmp_path, seed=1)[1], {"bits": 8})
    f_tensors = safetensors.numpy.load(source.read_bytes())
    with pytest.raises(ValueError, match="missing keys.*weight_scale"):
        q_model.load_state_dict(f_tensors)  # a float model's tensors into a quantized one
    with pytest.raises(TypeError, match="q_proj.weight.*must have dtype int8.*float64"):
        q_model.load_state_dict(f_tensors, strict=False)  # a float weight into integer codes
    with pytest.raises(ValueError, match="already quantized"):
        save_checkpoint(tmp_path / "x.safetensors", quantized(q_model, {"bits": 8}), CONFIG)
    before = source.read_bytes()
    code, _, err = run_cli(capsys, "quantize", "--checkpoint", source, "--bits", 8, "--out", source)
    assert code == 2 and "out must differ from checkpoint" in err and source.read_bytes() == before
    with pytest.raises(SystemExit):
        main(["quantize", "--checkpoint", str(source), "--model", "x", "--bits", "8", "--out", "y"])
    assert "not allowed with argument" in capsys.readouterr().err


# ---- (e) the benchmark, at a tiny size ------------------------------------------------------------------


def test_the_benchmark_suite_runs_tiny(tmp_path):
    pytest.importorskip("threadpoolctl")
    from rosetta.bench import common
    from rosetta.bench import quantization as suite
    from rosetta.bench.__main__ import build_parser

    document = suite.run(preset="tiny", overrides={"steps": 5, "d_model": 64, "d_ff": 64, "heldout_size": 16,
                                                   "num_encoder_layers": 1, "num_decoder_layers": 1},
                         warmup=0, reps=1)
    common.validate(document)
    rows = {row["variant"]: row for row in document["results"]}
    assert list(rows) == [name for name, _ in suite.variants()]
    assert rows["float"]["max_abs_logits_error"] == 0 and rows["float"]["forward_ratio"] == 1
    for name, row in rows.items():
        assert row["median_ms"] > 0 and 0 <= row["exact_match"] <= 1 and row["heldout_sequences"] == 16
        assert row["perplexity"] == math.exp(row["loss"])  # the same function: exactly
        if name != "float":
            assert row["max_abs_logits_error"] > 0 and row["file_bytes"] < rows["float"]["file_bytes"]
            assert row["tensor_bytes"] < rows["float"]["tensor_bytes"]
    assert rows["4-bit g32"]["file_bytes"] < rows["int8"]["file_bytes"]
    assert 0 <= rows["int8 + LLM.int8 τ=3"]["outlier_column_fraction"] <= 1
    assert rows["int8"]["outlier_column_fraction"] is None  # no outlier split: nothing counted
    assert "4-bit g64" in suite.report(document)
    path = common.write_json(document, tmp_path, "quantization")
    assert json.loads(path.read_text())["suite"] == "quantization"
    pytest.importorskip("matplotlib")
    png = suite.plot(document, tmp_path / "quantization.png")
    assert png.exists() and png.stat().st_size > 0
    args = build_parser().parse_args(["quantization", "--checkpoint", "m.safetensors", "--reps", "2",
                                      "--outlier-thresholds", "6,2.5"])
    assert (args.suite, args.checkpoint, args.reps, args.outlier_thresholds) == ("quantization", "m.safetensors", 2,
                                                                                (6.0, 2.5))
