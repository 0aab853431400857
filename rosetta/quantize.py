"""``rosetta quantize``: a float checkpoint (or a Hugging Face folder) in, a quantized checkpoint out.

    rosetta quantize --checkpoint runs/reverse/model.safetensors --bits 8 --out int8.safetensors
    rosetta quantize --model path/to/gpt2 --bits 4 --group-size 32 --out gpt2-q4.safetensors

Every Linear of the model becomes a QuantizedLinear (reference/quantization.py): 8 bits per
output channel (optionally with the LLM.int8 outlier split), or 4 bits per group of input
features; embeddings, norms and a tied head stay float. The output is a Rosetta checkpoint
(rosetta/checkpoint.py) that records the settings, so every backend loads it (inference only).
The command prints what it did: the linear maps quantized, the file size before and after, and
the logits error of the quantized model against the float one on a fixed probe batch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reference.quantization import check_quantization

from .checkpoint import (backend_namespace, load_checkpoint, model_kind, pretrained_config, save_checkpoint)

#: the probe batch: rows and tokens (at most the model's max_len), drawn once from this seed
PROBE_ROWS, PROBE_TOKENS, PROBE_SEED = 4, 16, 0
#: the command's group size for --bits 4 without --group-size: 32 divides every width that 64 does
DEFAULT_GROUP_SIZE = 32


def probe_inputs(model, rows: int = PROBE_ROWS, tokens: int = PROBE_TOKENS, seed: int = PROBE_SEED) -> tuple:
    """A fixed batch of token ids for ``model``'s kind: (src, tgt) for a Transformer, (ids,) otherwise.

    Ids are drawn from 1..V-1 (id 0 is often padding), so every row is a full-length sequence.
    """
    rng = np.random.default_rng(seed)
    n = min(tokens, model.max_len)
    if model_kind(model) == "Transformer":
        return (rng.integers(1, model.src_vocab_size, (rows, n)), rng.integers(1, model.tgt_vocab_size, (rows, n)))
    return (rng.integers(1, model.vocab_size, (rows, n)),)


def model_outputs(model, inputs, rt=None) -> np.ndarray:
    """Every output of ``model`` on NumPy ``inputs`` (eval mode), flattened into one float64 vector."""
    rt = rt or backend_namespace("numpy")
    model.eval()
    out = model(*(rt.asarray(x) for x in inputs))
    parts = out if isinstance(out, tuple) else (out,)  # an EncoderModel with a pooler returns (h, pooled)
    return np.concatenate([np.asarray(rt.to_numpy(p), dtype=np.float64).ravel() for p in parts])


def tensor_bytes(model) -> int:
    """Bytes of the model's tensors (its state dict): the weight memory, integer weights and scales included."""
    from reference.arrays import to_numpy

    return sum(to_numpy(value).nbytes for value in model.state_dict().values())


def quantized_linears(model) -> list:
    """Names of the model's linear maps that are quantized (those with a weight_scale)."""
    return sorted(name[: -len(".weight_scale")] for name in model.state_dict() if name.endswith(".weight_scale"))


@dataclass
class QuantizeReport:
    """What ``quantize`` did (printed by the command)."""

    kind: str
    source: str
    out: str
    quantization: dict
    linears: int  # linear maps quantized
    bytes_before: int  # the source file(s)
    bytes_after: int  # the quantized checkpoint
    tensor_bytes_before: int
    tensor_bytes_after: int
    max_abs_error: float  # on the probe batch's logits
    mean_abs_error: float
    max_abs_logit: float

    def lines(self) -> list:
        q = self.quantization
        scheme = (f"{q['bits']} bits per group of {q['group_size']} input features" if q["bits"] == 4 else
                  "8 bits per output channel" + (f", LLM.int8 outliers above {q['outlier_threshold']:g}"
                                                 if q.get("outlier_threshold") is not None else ""))
        return [
            f"quantized {self.linears} linear maps of the {self.kind} of {self.source} to {scheme}",
            f"file: {self.bytes_before:,} -> {self.bytes_after:,} bytes ({self.bytes_before / self.bytes_after:.2f}x "
            f"smaller); tensors: {self.tensor_bytes_before:,} -> {self.tensor_bytes_after:,} bytes",
            f"logits on a fixed probe batch ({PROBE_ROWS} x {PROBE_TOKENS} tokens): max |error| "
            f"{self.max_abs_error:.3e}, mean {self.mean_abs_error:.3e} (max |logit| {self.max_abs_logit:.3g})",
            f"wrote {self.out}",
        ]


def _folder_bytes(folder: Path) -> int:
    """Bytes of a Hugging Face folder's weight files (model.safetensors or its shards)."""
    return sum(file.stat().st_size for file in Path(folder).glob("*.safetensors"))


def quantize(out, *, checkpoint=None, model_dir=None, bits: int = 8, group_size=None, outlier_threshold=None,
             backend="numpy") -> QuantizeReport:
    """Quantize a float rosetta checkpoint (``checkpoint``) or a Hugging Face folder (``model_dir``) into
    the rosetta checkpoint ``out``; returns what was done. Exactly one of checkpoint and model_dir."""
    if (checkpoint is None) == (model_dir is None):
        raise ValueError(f"quantize needs exactly one of checkpoint and model_dir, got checkpoint={checkpoint!r} "
                         f"and model_dir={model_dir!r}")
    check_quantization(bits, group_size, outlier_threshold, None)  # before loading: a bad setting fails at once
    if checkpoint is not None and Path(out).resolve() == Path(checkpoint).resolve():
        raise ValueError(f"out must differ from checkpoint (the float model stays), got {str(out)!r} for both")
    rt = backend_namespace(backend)
    if checkpoint is not None:  # a quantized checkpoint is refused by name: quantize the float one it came from
        model, config = load_checkpoint(checkpoint, backend=rt, quantized=False)
        source, bytes_before = str(checkpoint), Path(checkpoint).stat().st_size
    else:
        from .hf import load_pretrained

        model = load_pretrained(model_dir, backend=rt)
        config = pretrained_config(model)
        source, bytes_before = str(model_dir), _folder_bytes(Path(model_dir))
    inputs = probe_inputs(model)
    expected = model_outputs(model, inputs, rt)  # the float model's logits
    tensor_bytes_before = tensor_bytes(model)
    rt.quantize_model(model, bits=bits, group_size=group_size, outlier_threshold=outlier_threshold)
    error = np.abs(model_outputs(model, inputs, rt) - expected)
    config = dict(config, quantized_from={"source": source, "probe_max_abs_error": float(error.max())})
    path = save_checkpoint(out, model, config)
    return QuantizeReport(kind=model_kind(model), source=source, out=str(path), quantization=dict(model.quantization),
                          linears=len(quantized_linears(model)), bytes_before=bytes_before,
                          bytes_after=path.stat().st_size, tensor_bytes_before=tensor_bytes_before,
                          tensor_bytes_after=tensor_bytes(model), max_abs_error=float(error.max()),
                          mean_abs_error=float(error.mean()), max_abs_logit=float(np.abs(expected).max()))


# ---- the command line -------------------------------------------------------------------------

def add_commands(sub) -> None:
    """Add the quantize subcommand to the ``rosetta`` parser."""
    cmd = sub.add_parser("quantize", help="write a quantized (int8 or 4-bit) checkpoint of a float model, "
                                          "for inference on every backend")
    source = cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a float rosetta checkpoint (the model.safetensors of rosetta train, "
                                             "or one written by rosetta.checkpoint.save_checkpoint)")
    source.add_argument("--model", help="a Hugging Face checkpoint folder (GPT-2, Llama, Mistral, Qwen2, BERT)")
    cmd.add_argument("--bits", type=int, required=True, help="8 (per output channel) or 4 (per group)")
    cmd.add_argument("--group-size", type=int,
                     help=f"input features per 4-bit scale: 32 or 64 (with --bits 4; default {DEFAULT_GROUP_SIZE})")
    cmd.add_argument("--outlier-threshold", type=float,
                     help="8 bits only: input features whose |x| exceeds this are multiplied in floating point "
                          "(LLM.int8; e.g. 6.0)")
    cmd.add_argument("--backend", default="numpy", choices=("numpy", "torch"),
                     help="backend that loads and quantizes the model (the tensors written are the same)")
    cmd.add_argument("--out", required=True, help="the quantized checkpoint to write (.safetensors)")
    cmd.set_defaults(run=run_quantize)


def run_quantize(args) -> int:
    group_size = DEFAULT_GROUP_SIZE if args.bits == 4 and args.group_size is None else args.group_size
    try:
        report = quantize(args.out, checkpoint=args.checkpoint, model_dir=args.model, bits=args.bits,
                          group_size=group_size, outlier_threshold=args.outlier_threshold, backend=args.backend)
    except (TypeError, ValueError) as error:
        print(f"rosetta quantize: error: {error}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    return 0
