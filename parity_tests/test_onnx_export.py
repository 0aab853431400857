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
Last, NaN: a NaN key weight (put in torch and in the graph's initializer) shows at torch's
positions on every kind, the exported attention alone keeps NaN, ±inf and fully masked rows as
torch does, and a graph that would turn NaN into 0 is refused.
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
from accelerated.torch import attention as torch_attention  # noqa: E402
from rosetta.onnx_export import (_quiet_exporter, export_onnx, load_model, nan_hiding_nodes, signature,  # noqa: E402
                                 vocabularies)

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
def graph_folder(tmp_path_factory):
    """Where ``exported`` writes each kind's graph, as f"{kind}.onnx"."""
    return tmp_path_factory.mktemp("onnx-graphs")


@pytest.fixture(scope="module")
def exported(sources, graph_folder):
    """kind -> (torch model, onnxruntime session, what the command printed): each exported once, by the CLI."""
    graphs = {}
    for kind, source in sources.items():
        out = graph_folder / f"{kind}.onnx"
        code, printed, errors = run_cli("export-onnx", *source, "--out", str(out))
        assert code == 0, errors
        model = load_model(**{"checkpoint" if source[0] == "--checkpoint" else "model_dir": source[1]})
        graphs[kind] = (model, ort_session(str(out)), printed)
    return graphs


def ort_session(graph):
    """An onnxruntime CPU session of ``graph`` (a path, or a serialized model), on one thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # tiny graphs: a thread pool would only spin on the shared CPUs
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


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
    outliers = copy.deepcopy(model)
    from accelerated.torch import quantize_model

    quantize_model(outliers, bits=8, outlier_threshold=6.0)  # LLM.int8: its float columns depend on the batch
    with pytest.raises(ValueError, match="model must not use LLM.int8's outlier split"):
        export_onnx(outliers, out)
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


# ---- NaN: the graph keeps the SPEC's rules, as the torch backend does in eager mode ---------------------


def assert_same_as_torch(got, want):
    """NaN and ±inf at the same entries (the same values there), the finite entries within ONNX_LOGITS_TOL."""
    assert got.shape == want.shape, (got.shape, want.shape)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.where(finite, 0, got), np.where(finite, 0, want))  # NaN == NaN here
    error = relative_error(got[finite], want[finite])
    assert error <= ONNX_LOGITS_TOL, f"relative error {error:.2e} on the finite entries"


def with_nan_row(proto, weight: np.ndarray, row: int):
    """A copy of the ONNX model with row ``row`` of the parameter ``weight`` (out, in) set to NaN in the
    initializer that holds it: Wᵀ, alone or as a column block of the stacked q/k/v projection."""
    proto = copy.deepcopy(proto)
    out = weight.shape[0]
    for init in proto.graph.initializer:
        array = onnx.numpy_helper.to_array(init)
        if array.ndim != 2 or array.shape[0] != weight.shape[1]:
            continue
        for start in range(array.shape[1] - out + 1):  # the exporter folds Wᵀ (and the stacking) into one constant
            if np.array_equal(array[:, start:start + out], weight.T):
                array = array.copy()
                array[:, start + row] = np.nan
                init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
                return proto
    raise AssertionError(f"no initializer of the graph holds the weight of shape {weight.shape}")


@contextlib.contextmanager
def nan_row(weight, row: int):
    """Row ``row`` of the torch parameter ``weight`` is NaN inside the block, as it was after."""
    saved = weight.detach()[row].clone()
    with torch.no_grad():
        weight[row] = float("nan")
    try:
        yield
    finally:
        with torch.no_grad():
            weight[row] = saved


@pytest.mark.parametrize("kind", KINDS)
@examples(0.2)
@given(shape=graph_sizes(), which=st.integers(0, 2**16))
@example(shape=(2, dict.fromkeys(("sequence", "src_sequence", "tgt_sequence"), 3), [3, 0], False, 0), which=1)
def test_a_nan_score_shows_in_the_graph_where_it_shows_in_torch(exported, graph_folder, kind, shape, which):
    """A NaN in one row of a key projection W_k makes NaN every score of its head: every query row that may
    attend to a key comes out NaN, in torch and in the graph (torch.onnx's own lowering of attention zeroed
    those probabilities and gave finite logits); a fully padded row stays finite, equal to torch."""
    model, _, _ = exported[kind]
    keys = [p for name, p in model.named_parameters() if name.endswith("k_proj.weight")]
    weight = keys[which % len(keys)]  # self or cross attention, encoder or decoder
    row = (which // len(keys)) % weight.shape[0]
    proto = onnx.load(str(graph_folder / f"{kind}.onnx"))
    session = ort_session(with_nan_row(proto, weight.detach().numpy(), row).SerializeToString())
    inputs = drawn_inputs(model, *shape)
    with nan_row(weight, row):
        want = torch_outputs(model, inputs)
    got = session.run(None, {name: x.numpy() for name, x in inputs.items()})
    for g, w in zip(got, want):
        assert_same_as_torch(g, w)
    batch, lengths, pads = shape[:3]
    if min(pads) == 0:  # a row without padding sees every key: the NaN must show
        assert np.isnan(want[0]).any() and np.isnan(got[0]).any()
    if signature(model).kind == "decoder-only":  # a fully padded row attends to nothing: 0, then finite logits
        for b in range(batch):
            if pads[b] >= lengths["sequence"]:
                assert np.isfinite(got[0][b]).all() and np.isfinite(want[0][b]).all(), (b, pads)


class Attend(torch.nn.Module):
    """The torch backend's attention with grouped kv heads and a boolean mask (True = may attend), as the
    models call it (torch_attention.attend)."""

    def forward(self, query, key, value, allowed):
        return torch_attention.scaled_dot_product_attention(query, key, value, attn_mask=allowed, enable_gqa=True)


@pytest.fixture(scope="module")
def attention_graph():
    """onnxruntime session of Attend: query (B, 4, L, 4), key and value (B, 2, S, 4), allowed (B, 1, L, S)."""
    B, L, S = (torch.export.Dim(name, min=1, max=8) for name in ("batch", "L", "S"))
    q, k, v = torch.ones(2, 4, 3, 4), torch.ones(2, 2, 5, 4), torch.ones(2, 2, 5, 4)  # k, v: two tensors, two inputs
    allowed = torch.ones(2, 1, 3, 5, dtype=torch.bool)
    with _quiet_exporter():
        program = torch.onnx.export(Attend().eval(), (q, k, v, allowed), dynamo=True, opset_version=20, verbose=False,
                                    input_names=["query", "key", "value", "allowed"],
                                    dynamic_shapes=({0: B, 2: L}, {0: B, 2: S}, {0: B, 2: S}, {0: B, 2: L, 3: S}))
    return ort_session(program.model_proto.SerializeToString())


SPECIAL = (float("nan"), float("inf"), float("-inf"), 1e20, -1e20)  # NaN, ±inf, and scores that overflow to ±inf


@st.composite
def attention_inputs(draw):
    """Query, key, value with a few NaN, ±inf and huge entries, and a boolean mask (fully masked rows included)."""
    batch, L, S = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, heads, n in (("query", 4, L), ("key", 2, S), ("value", 2, S)):
        x = rng.standard_normal((batch, heads, n, 4)).astype(np.float32)  # (B, H|Hkv, L|S, 4)
        hit = rng.random(x.shape) < draw(st.sampled_from([0.0, 0.02, 0.1]))
        x[hit] = rng.choice(SPECIAL, hit.sum())
        arrays[name] = x
    arrays["allowed"] = rng.random((batch, 1, L, S)) < draw(st.sampled_from([0.3, 0.7, 1.0]))  # (B, 1, L, S)
    return arrays


@examples(1)
@given(arrays=attention_inputs())
def test_attention_graph_keeps_nan_inf_and_fully_masked_rows_as_torch(attention_graph, arrays):
    """The exported attention itself, on inputs the models' graphs cannot take (float ids do not exist):
    NaN and ±inf in query/key/value, scores that overflow (∞ − ∞: NaN; a row of only −inf: 0), fully masked
    rows (0) — NaN and ±inf at exactly torch's entries, the rest equal."""
    got = attention_graph.run(None, arrays)[0]
    with torch.no_grad():
        want = Attend()(*(torch.from_numpy(arrays[name]) for name in ("query", "key", "value", "allowed"))).numpy()
    assert_same_as_torch(got, want)
    dead = ~arrays["allowed"].any(-1)  # (B, 1, L)  fully masked rows
    assert (got[np.broadcast_to(dead[..., None], got.shape)] == 0).all(), "a fully masked row must give 0"


def test_the_exporter_refuses_a_graph_that_hides_nan(exported, graph_folder, tmp_path, monkeypatch):
    """torch.onnx's own lowering of attention with a boolean mask, Softmax then Where(IsNaN(P), 0, P), is what
    the torch backend writes out around: with it put back the export is refused by name and writes nothing."""
    monkeypatch.setattr(torch_attention, "_sdpa", lambda q, k, v, mask, p, causal, scale, group: (
        torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal,
                                                         scale=scale, enable_gqa=group > 1)))
    out = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match=r"model \(DecoderLM, decoder-only\) cannot be exported to ONNX: the graph "
                                         r"would replace NaN by 0 at .*Where\(IsNaN"):
        export_onnx(exported["decoder-lm"][0], out)
    assert list(tmp_path.iterdir()) == [], "a refused export wrote a file"
    for kind in KINDS:  # the command's graphs passed the same check
        assert nan_hiding_nodes(onnx.load(str(graph_folder / f"{kind}.onnx"))) == [], kind
