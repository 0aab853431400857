"""ONNX export (rosetta/onnx_export.py, ``rosetta export-onnx``) checked by onnxruntime.

Each model kind is exported once, through the command line, by a module-scoped fixture: from
rosetta checkpoints (save_checkpoint) the encoder-decoder and a GPT-like decoder-only model with a
sliding window; from tiny random Hugging Face folders built with transformers (the helpers of
test_hf_decoder.py and test_hf_encoders.py) decoder-only Llama (RMSNorm, SwiGLU, RoPE, grouped kv
heads) and encoder-only BERT (masked-LM head; BertModel with its pooler: two outputs). Hypothesis then draws
batch sizes, lengths and padding, and onnxruntime's logits on the CPU must equal the torch
backend's within ONNX_LOGITS_TOL (float32) on the same .onnx file: one graph for every size is
what proves the axes dynamic. Then: what the graph does with token ids outside the vocabulary
(the check the export leaves out), the eager check still in place, and every refusal by name.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="ONNX export traces the torch backend: pip install torch")
onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install 'rosetta-transformer[onnx]'")
pytest.importorskip("onnxscript", reason="torch.onnx's exporter needs onnxscript: pip install 'rosetta-transformer[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the graphs are run by onnxruntime: pip install onnxruntime")
pytest.importorskip("transformers", reason="the tiny Hugging Face folders are built with transformers")

import reference  # noqa: E402
from accelerated.torch import checks as torch_checks  # noqa: E402
from parity_tests.strategies import examples  # noqa: E402
from parity_tests.test_hf_decoder import checkpoint as decoder_checkpoint  # noqa: E402
from parity_tests.test_hf_encoders import bert_checkpoint  # noqa: E402
from parity_tests.tolerances import ONNX_LOGITS_TOL, relative_error  # noqa: E402
from rosetta.checkpoint import save_checkpoint  # noqa: E402
from rosetta.cli import main  # noqa: E402
from rosetta.onnx_export import export_onnx, load_model, signature, vocabularies  # noqa: E402

ENCODER_DECODER = dict(src_vocab_size=13, tgt_vocab_size=11, d_model=16, num_heads=2, d_ff=32, num_encoder_layers=1,
                       num_decoder_layers=1, max_len=16, dropout=0.0)  # one layer each: the export's time grows with depth
#: a GPT-like DecoderLM with a sliding window of 3 (Mistral's masks), saved as a rosetta checkpoint of kind DecoderLM
DECODER_LM = dict(vocab_size=19, d_model=16, num_heads=4, d_ff=24, num_layers=1, max_len=16, window=3)
KINDS = ["encoder-decoder", "decoder-lm", "llama", "bert-mlm", "bert-pooler"]


def run_cli(*argv) -> tuple:
    """(exit code, stdout, stderr) of ``rosetta *argv``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """kind -> the CLI arguments naming its source: a rosetta checkpoint or a Hugging Face folder."""
    folder = tmp_path_factory.mktemp("onnx-sources")
    model = reference.Transformer(**ENCODER_DECODER, seed=3)
    save_checkpoint(folder / "transformer.safetensors", model, {"model": ENCODER_DECODER})
    save_checkpoint(folder / "decoder-lm.safetensors", reference.DecoderLM(**DECODER_LM, seed=4), {"model": DECODER_LM})
    bert_checkpoint(folder / "bert-mlm", d_model=16, heads=2, masked_lm=True, seed=0)
    bert_checkpoint(folder / "bert-pooler", d_model=16, heads=2, masked_lm=False, seed=1)
    return {"encoder-decoder": ("--checkpoint", str(folder / "transformer.safetensors")),
            "llama": ("--model", str(decoder_checkpoint("llama", layers=1)[0])),
            "decoder-lm": ("--checkpoint", str(folder / "decoder-lm.safetensors")),
            "bert-mlm": ("--model", str(folder / "bert-mlm")), "bert-pooler": ("--model", str(folder / "bert-pooler"))}


@pytest.fixture(scope="module")
def exported(sources, tmp_path_factory):
    """kind -> (torch model, onnxruntime session, what the command printed): each exported once, by the CLI."""
    folder = tmp_path_factory.mktemp("onnx-graphs")
    graphs = {}
    for kind, source in sources.items():
        out = folder / f"{kind}.onnx"
        code, printed, errors = run_cli("export-onnx", *source, "--out", str(out))
        assert code == 0, errors
        model = load_model(**{"checkpoint" if source[0] == "--checkpoint" else "model_dir": source[1]})
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # tiny graphs: a thread pool would only spin on the shared CPUs
        session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
        graphs[kind] = (model, session, printed)
    return graphs


def torch_outputs(model, inputs: dict) -> list:
    """The torch backend's outputs (NumPy) for the graph's named inputs, called as a user calls the model."""
    kind = signature(model).kind
    with torch.no_grad():
        if kind == "encoder-decoder":
            out = model(inputs["src_ids"], inputs["tgt_ids"], src_key_padding_mask=inputs["src_padding_mask"],
                        tgt_key_padding_mask=inputs["tgt_padding_mask"], memory_key_padding_mask=inputs["src_padding_mask"])
        elif kind == "encoder-only":
            out = model(inputs["input_ids"], token_type_ids=inputs.get("token_type_ids"),
                        key_padding_mask=inputs["padding_mask"])
        else:
            out = model(inputs["input_ids"], key_padding_mask=inputs["padding_mask"])
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def drawn_inputs(model, batch: int, lengths: dict, pads: list, left: bool, seed: int) -> dict:
    """The graph's inputs: ids within each vocabulary; row b of each padding mask pads pads[b] positions
    (all of them included: a fully masked row's attention output is 0 in both), on the left or the right."""
    sig = signature(model)
    vocab = vocabularies(model, sig)
    rng = np.random.default_rng(seed)
    inputs = {}
    for name in sig.inputs:
        n = lengths[sig.axes[name][1]]
        if name.endswith("padding_mask"):
            mask = np.zeros((batch, n), dtype=bool)  # (B, N)  True at padding
            for b, p in enumerate(pads):
                p = min(p, n)
                mask[b, slice(0, p) if left else slice(n - p, n)] = True
            inputs[name] = torch.from_numpy(mask)
        else:
            inputs[name] = torch.from_numpy(rng.integers(0, vocab[name], (batch, n)))  # (B, N) int64
    return inputs


@st.composite
def graph_sizes(draw):
    batch = draw(st.integers(1, 4))
    lengths = {axis: draw(st.integers(1, 12)) for axis in ("sequence", "src_sequence", "tgt_sequence")}
    pads = draw(st.lists(st.integers(0, 12), min_size=batch, max_size=batch))
    return batch, lengths, pads, draw(st.booleans()), draw(st.integers(0, 2**31))


@pytest.mark.parametrize("kind", KINDS)
@examples(0.3)
@given(shape=graph_sizes())
@example(shape=(1, dict.fromkeys(("sequence", "src_sequence", "tgt_sequence"), 1), [0], False, 0))  # the smallest
@example(shape=(2, dict.fromkeys(("sequence", "src_sequence", "tgt_sequence"), 3), [3, 1], True, 1))  # a fully padded row
def test_onnxruntime_equals_torch_at_every_batch_and_length(exported, kind, shape):
    model, session, _ = exported[kind]
    inputs = drawn_inputs(model, *shape)
    got = session.run(None, {name: x.numpy() for name, x in inputs.items()})
    want = torch_outputs(model, inputs)
    assert len(got) == len(want)
    for name, g, w in zip(signature(model).outputs, got, want):
        assert g.dtype == np.float32 and g.shape == w.shape, (name, g.dtype, g.shape, w.shape)
        error = relative_error(g, w)
        assert error <= ONNX_LOGITS_TOL, f"{kind} {name}: relative error {error:.2e} at shape {shape}"


def test_graph_names_its_inputs_outputs_and_dynamic_axes(exported):
    """The command prints each input and output; the file holds the same names with symbolic axes."""
    _, _, printed = exported["encoder-decoder"]
    assert "encoder-decoder" in printed and "opset" in printed
    for name in ("src_ids", "tgt_ids", "src_padding_mask", "tgt_padding_mask", "logits"):
        assert name in printed
    model, session, _ = exported["bert-pooler"]
    names = [i.name for i in session.get_inputs()]
    assert names == ["input_ids", "padding_mask", "token_type_ids"]
    assert [o.name for o in session.get_outputs()] == ["hidden_states", "pooled"]
    for value in session.get_inputs() + session.get_outputs():
        shape = value.shape
        assert isinstance(shape[0], str), f"{value.name}: batch axis is fixed ({shape})"
        if value.name != "pooled":
            assert isinstance(shape[1], str), f"{value.name}: sequence axis is fixed ({shape})"
        assert all(isinstance(d, int) for d in shape[2:]), shape  # d_model and the vocabulary stay fixed


def test_ids_outside_the_vocabulary(exported):
    """The graph has no token-range check (ids are symbolic at export): onnxruntime's Gather refuses ids
    ≥ V and < −V, and reads ids in [−V, −1] from the table's end, as the docs say; eager torch refuses them all."""
    model, session, _ = exported["llama"]
    V = model.vocab_size
    mask = np.zeros((1, 3), dtype=bool)
    for bad in (V, -V - 1):
        with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="out of data bounds"):
            session.run(None, {"input_ids": np.array([[1, bad, 2]]), "padding_mask": mask})
    wrapped = session.run(None, {"input_ids": np.array([[1, -1, 2]]), "padding_mask": mask})[0]
    last = session.run(None, {"input_ids": np.array([[1, V - 1, 2]]), "padding_mask": mask})[0]
    np.testing.assert_array_equal(wrapped, last)
    for bad in (V, -1):  # the export left the eager check as it was
        with pytest.raises(ValueError, match=r"ids must lie in \[0, "):
            model(torch.tensor([[1, bad, 2]]))


def test_command_errors_are_one_line_with_exit_code_2(sources, tmp_path):
    checkpoint, folder = sources["encoder-decoder"][1], sources["llama"][1]
    quantized = str(tmp_path / "int8.safetensors")
    assert run_cli("quantize", "--checkpoint", checkpoint, "--bits", "8", "--out", quantized)[0] == 0
    cases = [
        (("--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "m.onnx")),
         "checkpoint must be an existing file"),
        (("--model", str(tmp_path), "--out", str(tmp_path / "m.onnx")), str(tmp_path)),
        (("--checkpoint", checkpoint, "--out", str(tmp_path / "no-folder" / "m.onnx")), "must be in an existing folder"),
        (("--checkpoint", checkpoint, "--out", str(tmp_path)), "which is a folder"),
        (("--checkpoint", checkpoint, "--out", str(tmp_path / "m.onnx"), "--opset", "17"), "opset must be >= 18"),
        (("--checkpoint", checkpoint, "--out", str(tmp_path / "m.onnx"), "--dtype", "float64"),
         "dtype applies to Hugging Face folders"),
        (("--checkpoint", quantized, "--out", str(tmp_path / "m.onnx")), "quantized by rosetta quantize"),
    ]
    for argv, message in cases:
        code, printed, errors = run_cli("export-onnx", *argv)
        assert code == 2 and printed == "", (argv, printed)
        assert errors.startswith("rosetta export-onnx: error: ") and errors.count("\n") == 1, errors
        assert message in errors, (message, errors)
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*.tmp")), "a refused export wrote a file"
    with pytest.raises(SystemExit):  # argparse: one source only
        with contextlib.redirect_stderr(io.StringIO()):
            main(["export-onnx", "--checkpoint", checkpoint, "--model", folder, "--out", str(tmp_path / "m.onnx")])


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root (or a platform without geteuid) writes into read-only folders: nothing to refuse")
def test_unwritable_destination_is_refused(sources, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, errors = run_cli("export-onnx", *sources["encoder-decoder"], "--out", str(locked / "m.onnx"))
    assert code == 2 and "writable" in errors


def test_api_refusals_name_the_argument(exported, tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(TypeError, match="model must be a torch-backend"):
        export_onnx(reference.Transformer(**ENCODER_DECODER, seed=0), out)  # the NumPy reference: nothing to trace
    model = exported["decoder-lm"][0]
    with pytest.raises(TypeError, match="opset must be an int"):
        export_onnx(model, out, opset="20")
    with pytest.raises(ValueError, match="model dtype must be one of float32, float64"):
        export_onnx(torch_half(model), out)
    with pytest.raises(ValueError, match="give exactly one of checkpoint"):
        load_model()
    assert not out.exists()


def torch_half(model):
    """A float16 copy of ``model`` (a dtype the CPU graph does not take)."""
    return copy.deepcopy(model).to(torch.float16)


def test_a_check_that_reads_ids_stops_the_trace_with_a_clear_error(exported, tmp_path, monkeypatch):
    """Why token_range steps aside under torch.export: a range read from the ids (here without that step)
    is a branch on symbolic values; the export fails, as one ValueError naming the model, and writes nothing."""
    monkeypatch.setattr(torch_checks.TENSORS, "token_range", lambda ids: torch.stack(torch.aminmax(ids)).tolist())
    out, model = tmp_path / "m.onnx", exported["decoder-lm"][0]
    model.train()
    with pytest.raises(ValueError, match=r"model \(DecoderLM, decoder-only\) cannot be exported to ONNX: .*data-dependent"):
        export_onnx(model, out)
    assert model.training, "the export traces the eval-mode forward and gives the model its mode back"
    model.eval()
    assert list(tmp_path.iterdir()) == []
