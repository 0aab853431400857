"""``rosetta export-onnx``: a Rosetta model as an ONNX graph, through torch.onnx's exporter (torch.export).

    rosetta export-onnx --checkpoint model.safetensors --out model.onnx   # a `rosetta train` checkpoint
    rosetta export-onnx --model HF_DIR --out model.onnx                   # BERT, GPT-2, Llama, Mistral, Qwen2

The model runs on the torch backend (``accelerated.torch``), in eval mode, and is traced by
``torch.onnx.export(..., dynamo=True)`` with the batch and sequence axes symbolic, so one file
serves every batch size and every length up to the model's ``max_len``. Each model kind has its
graph signature (``SIGNATURES``): named inputs, named outputs, and which of their axes are
dynamic. Padding masks are boolean, True at padding (the models' key_padding_mask).

What the graph does not hold: the key/value cache (a forward over the whole sequence, no
incremental decoding graph), dropout and training (eval mode), and the token-range check (ids
are symbolic during export; docs/onnx.md says what ONNX Runtime does with an id outside the
vocabulary). onnx and onnxscript are needed to export (``pip install 'rosetta-transformer[onnx]'``);
onnxruntime runs the result. Every problem the user can fix is a ValueError or TypeError naming
it, which the command prints as one line, exiting with code 2.

NaN: the graph keeps the SPEC's rules as the torch backend does in eager mode (a NaN score shows in
its row; a fully masked row gives 0). torch.onnx would write attention with a boolean mask as
Softmax then Where(IsNaN(P), 0, P), hiding a NaN score, so the torch backend writes attention out
while exporting (accelerated/torch/attention.py, _sdpa), and the written file is checked for that
pattern (nan_hiding_nodes): an export that would hide NaN is refused, never written.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: the opset the graph is written in (the dynamo exporter writes 18 and later)
OPSET = 20
MIN_OPSET = 18
#: the dtypes a graph may compute in (the CPU builds of torch and onnxruntime run these)
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Signature:
    """A graph's interface: input and output names, and the symbolic axes of each ({axis: name})."""

    kind: str
    inputs: tuple
    outputs: tuple
    axes: dict  # name -> {axis: dimension name}


BATCH, SEQ = {0: "batch"}, {0: "batch", 1: "sequence"}


def signature(model) -> Signature:
    """The graph signature of a torch-backend model: encoder-decoder, encoder-only or decoder-only."""
    import accelerated.torch as T

    if isinstance(model, T.Transformer):
        src, tgt = {0: "batch", 1: "src_sequence"}, {0: "batch", 1: "tgt_sequence"}
        return Signature("encoder-decoder", ("src_ids", "tgt_ids", "src_padding_mask", "tgt_padding_mask"),
                         ("logits",), {"src_ids": src, "src_padding_mask": src, "tgt_ids": tgt,
                                       "tgt_padding_mask": tgt, "logits": tgt})
    if isinstance(model, T.EncoderModel):
        inputs = ("input_ids", "padding_mask") + (("token_type_ids",) if model.num_token_types else ())
        if model.pooler is not None:
            outputs = ("hidden_states", "pooled")
        else:
            outputs = ("hidden_states",) if model.mlm_head is None else ("logits",)
        axes = {name: BATCH if name == "pooled" else SEQ for name in inputs + outputs}
        return Signature("encoder-only", inputs, outputs, axes)
    if isinstance(model, T.DecoderLM):
        return Signature("decoder-only", ("input_ids", "padding_mask"), ("logits",),
                         {name: SEQ for name in ("input_ids", "padding_mask", "logits")})
    raise TypeError(
        "model must be a torch-backend Transformer, EncoderModel or DecoderLM (accelerated.torch; "
        f"load_model gives one), got {type(model).__module__}.{type(model).__name__}"
    )


def _graph_module(model, kind: str):
    """``model`` behind a forward whose positional arguments are the signature's inputs, in order."""
    import torch

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            if kind == "encoder-decoder":
                src, tgt, src_pad, tgt_pad = inputs
                return self.model(src, tgt, src_key_padding_mask=src_pad, tgt_key_padding_mask=tgt_pad,
                                  memory_key_padding_mask=src_pad)  # (B, T, V)
            if kind == "encoder-only":
                ids, pad, types = (*inputs, None)[:3]
                return self.model(ids, token_type_ids=types, key_padding_mask=pad)  # (B, N, d|V) or a pair
            ids, pad = inputs
            return self.model(ids, key_padding_mask=pad)  # (B, N, V)

    return Graph().eval()


def vocabularies(model, sig: Signature) -> dict:
    """id input name -> how many ids it takes (ids lie in [0, that))."""
    if sig.kind == "encoder-decoder":
        return {"src_ids": model.src_vocab_size, "tgt_ids": model.tgt_vocab_size}
    return {"input_ids": model.vocab_size, "token_type_ids": getattr(model, "num_token_types", 0)}


def example_inputs(model, sig: Signature, batch: int = 2, length: int = 3, seed: int = 0) -> dict:
    """Random inputs by name (ids within the vocabulary; the last row's final position is padding)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    vocab = vocabularies(model, sig)
    inputs = {}
    for name in sig.inputs:
        if name.endswith("padding_mask"):
            mask = torch.zeros(batch, length, dtype=torch.bool)  # (B, N)  True at padding
            mask[-1, -1] = length > 1  # never a fully padded row
            inputs[name] = mask
        else:
            inputs[name] = torch.randint(0, vocab[name], (batch, length), generator=generator)  # (B, N)
    return inputs


def _dynamic_shapes(model, sig: Signature) -> tuple:
    """torch.export dimensions of each input: batch and sequence lengths up to the model's max_len."""
    from torch.export import Dim

    dims = {"batch": Dim("batch", min=1, max=2**20)}
    for name in {axes[1] for axes in sig.axes.values() if 1 in axes}:
        dims[name] = Dim(name, min=1, max=model.max_len)
    return tuple({axis: dims[label] for axis, label in sig.axes[name].items()} for name in sig.inputs)


def export_onnx(model, out, *, opset: int = OPSET) -> Path:
    """Write ``model`` (torch backend) to the ONNX file ``out``, batch and sequence axes dynamic; returns the path.

    The graph is the eval-mode forward (the model's train/eval mode is restored afterwards). The
    file is written beside its destination under a temporary name and renamed over it, so a
    failed export leaves no half-written file. Raises TypeError for a model of another backend,
    ValueError for an opset the exporter cannot write, a dtype outside DTYPES, a model quantized with
    LLM.int8's outlier split (int8 and 4-bit weights export, stored dequantized), an unwritable
    destination, missing exporter packages, or a graph that would turn NaN into 0 (check_keeps_nan).
    """
    import torch

    sig = signature(model)
    check_opset(opset)
    dtype = str(model.dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise ValueError(f"model dtype must be one of {', '.join(DTYPES)} for ONNX export on the CPU, got {dtype} "
                         "(convert it with model.float())")
    quantization = getattr(model, "quantization", None) or {}
    if quantization.get("outlier_threshold") is not None:  # which columns go the float way depends on the batch
        raise ValueError(f"model must not use LLM.int8's outlier split for ONNX export, got quantization "
                         f"{quantization}: its column choice depends on the data, which a graph cannot trace; "
                         "quantize without --outlier-threshold, or export the float model")
    out = check_destination(out)
    try:
        import onnxscript  # noqa: F401 - torch.onnx's dynamo exporter writes the graph with it
    except ImportError:
        raise ValueError("ONNX export needs the onnx and onnxscript packages: "
                         "pip install 'rosetta-transformer[onnx]'") from None
    inputs = example_inputs(model, sig)
    training = model.training  # the graph is the eval-mode forward; the model's mode is given back after
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # created by save: a new file's usual mode
    try:
        try:
            with torch.no_grad(), _quiet_exporter():
                program = torch.onnx.export(_graph_module(model, sig.kind), tuple(inputs.values()), dynamo=True,
                                            input_names=list(sig.inputs), output_names=list(sig.outputs),
                                            dynamic_shapes=(_dynamic_shapes(model, sig),), opset_version=opset,
                                            optimize=True, verbose=False)
        except Exception as error:  # noqa: BLE001 - torch.export and the ONNX translation raise many types
            raise ValueError(f"model ({type(model).__name__}, {sig.kind}) cannot be exported to ONNX: "
                             f"{_first_lines(error)}") from error
        program.save(temporary, external_data=False)
        check_keeps_nan(temporary, f"model ({type(model).__name__}, {sig.kind})")
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)
        model.train(training)
    return out


def nan_hiding_nodes(model) -> list[str]:
    """The nodes of an ONNX model (an onnx.ModelProto) that turn a NaN into a number: Where(IsNaN(x), c, x).

    torch.onnx writes that pattern after the softmax of scaled dot-product attention with a boolean
    mask (its answer to fully masked rows), where it also zeroes the probabilities of a NaN score;
    the torch backend writes attention out under export so that it does not appear
    (accelerated/torch/attention.py, _sdpa). Named by node name, or by output where nameless.
    """
    nodes = list(model.graph.node) + [node for function in model.functions for node in function.node]
    producers = {name: node for node in nodes for name in node.output}
    hiding = []
    for node in nodes:
        test = producers.get(node.input[0]) if node.op_type == "Where" else None
        if test is not None and test.op_type == "IsNaN" and test.input[0] in node.input[1:]:
            hiding.append(node.name or node.output[0])
    return hiding


def check_keeps_nan(path, what: str) -> None:
    """Refuse (ValueError) the graph at ``path`` if it hides NaN where the torch backend shows it."""
    import onnx

    hiding = nan_hiding_nodes(onnx.load(str(path), load_external_data=False))
    if hiding:
        raise ValueError(f"{what} cannot be exported to ONNX: the graph would replace NaN by 0 at "
                         f"{', '.join(hiding[:3])} (Where(IsNaN(x), 0, x)), where the torch backend lets a NaN "
                         "show (SPEC: a NaN in an input, a mask or a score propagates)")


def _first_lines(error: Exception) -> str:
    """The exporter's error in one line: its type and the first lines that say what stopped the trace."""
    cause = error
    while cause.__cause__ is not None:  # torch.onnx wraps torch.export's error: the innermost names the code
        cause = cause.__cause__
    text = " ".join(line.strip() for line in str(cause).splitlines() if line.strip())
    return f"{type(cause).__name__}: {text[:400]}"


@contextmanager
def _quiet_exporter():
    """The exporter's notes that are no problem of the user's: optional torchvision kernels not registered,
    dimension names merged (input_names name the axes), a pytree deprecation."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"# The axis name")
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        log.setLevel(level)


def check_opset(opset) -> int:
    """An int opset the dynamo exporter writes (MIN_OPSET or later)."""
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f"opset must be an int, got {type(opset).__name__}")
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} (torch.onnx's dynamo exporter writes opset 18 and later), "
                         f"got {opset}")
    return opset


def check_destination(out) -> Path:
    """The output path: a file name (not a folder) in an existing, writable folder."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"out must be a file path, got {str(out)!r}, which is a folder")
    if not out.parent.is_dir():
        raise ValueError(f"out must be in an existing folder, got {str(out)!r} (no folder {str(out.parent)!r})")
    if not os.access(out.parent, os.W_OK):
        raise ValueError(f"out must be in a writable folder, got {str(out)!r} ({str(out.parent)!r} is not writable)")
    return out


def load_model(checkpoint=None, model_dir=None, dtype=None):
    """The torch-backend model of a rosetta checkpoint (``checkpoint``) or a Hugging Face folder (``model_dir``).

    dtype (None, "float32" or "float64") applies to a Hugging Face folder; a checkpoint is exported in
    the dtype it was saved in. A quantized checkpoint (rosetta quantize) is refused: its integer
    kernels are not ONNX operators here; export the float checkpoint it was made from.
    """
    if (checkpoint is None) == (model_dir is None):
        raise ValueError("give exactly one of checkpoint (a rosetta checkpoint) or model_dir (a Hugging Face "
                         f"folder), got checkpoint={checkpoint!r}, model_dir={model_dir!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} or None, got {dtype!r}")
    if model_dir is not None:
        from .hf import load_pretrained

        return load_pretrained(model_dir, backend="torch", dtype=dtype).eval()
    if dtype is not None:
        raise ValueError(f"dtype applies to Hugging Face folders (--model); a checkpoint is exported in the dtype "
                         f"it was saved in (its config's model dtype), got dtype={dtype!r} with checkpoint "
                         f"{str(checkpoint)!r}")
    from .checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint, backend="torch")  # every check of the file runs here
    if getattr(model, "quantization", None) is not None:
        raise ValueError(f"checkpoint must hold a float model for ONNX export, got {str(checkpoint)!r}, quantized by "
                         f"rosetta quantize ({model.quantization}): its integer kernels are not exported; export the "
                         "float checkpoint it was quantized from")
    return model.eval()


# ---- the command line ----------------------------------------------------------------------------


def describe_graph(path) -> list[str]:
    """One line per graph input and output: name, element type and shape (symbolic axes by name)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    lines = []
    for role, values in (("input", graph.input), ("output", graph.output)):
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_param or str(d.dim_value) for d in tensor.shape.dim]
            kind = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name  # int64, bool, float32
            lines.append(f"  {role:<6} {value.name:<18} {kind:<7} [{', '.join(dims)}]")
    return lines


def run_export(args) -> int:
    try:
        start = time.perf_counter()
        model = load_model(args.checkpoint, args.model, args.dtype)
        kind = signature(model).kind
        path = export_onnx(model, args.out, opset=args.opset)
    except (ValueError, TypeError, OSError) as error:
        print(f"rosetta export-onnx: error: {error}", file=sys.stderr)
        return 2
    size = path.stat().st_size
    print(f"wrote {path} ({kind}, {model.num_parameters():,} parameters, {size / 2**20:.2f} MiB, opset {args.opset}, "
          f"{time.perf_counter() - start:.1f} s)")
    print("\n".join(describe_graph(path)))
    return 0


def add_commands(sub) -> None:
    """Add the export-onnx subcommand to the ``rosetta`` parser."""
    cmd = sub.add_parser("export-onnx", help="write a checkpoint or Hugging Face folder as an ONNX graph")
    source = cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a rosetta checkpoint (rosetta train: encoder-decoder)")
    source.add_argument("--model", help="a Hugging Face folder: bert (encoder-only); gpt2, llama, mistral, qwen2")
    cmd.add_argument("--out", required=True, help="the .onnx file to write")
    cmd.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET}, at least {MIN_OPSET})")
    cmd.add_argument("--dtype", choices=DTYPES, help="with --model: parameter dtype of the graph (default float32)")
    cmd.set_defaults(run=run_export)
