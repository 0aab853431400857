"""Hugging Face checkpoint folders: config.json plus safetensors weights, read and written with
NumPy and safetensors alone (transformers is never imported here).

``read_checkpoint`` reads ``model.safetensors`` or a sharded ``model.safetensors.index.json``;
bfloat16 tensors (which safetensors' NumPy loader cannot represent) are widened to float32 from
their raw bytes. A folder with only pickle weights (``pytorch_model.bin``) is refused: pickle runs
code on load, so it is never opened.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")

#: safetensors dtype names -> NumPy dtypes (BF16 is handled apart)
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def refuse(field: str, value, reason: str):
    """Raise the ValueError for a config field the Rosetta model cannot honour."""
    raise ValueError(f"config field {field}={value!r} is not supported: {reason}")


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    """Every tensor of one .safetensors file as a NumPy array (bf16 → float32), by parsing its
    header: an 8-byte little-endian length, a JSON header, then the raw data."""
    data = file.read_bytes()
    if len(data) < 8:
        raise ValueError(f"{file} is not a safetensors file (too short)")
    (header_len,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + header_len])
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{file} is not a safetensors file: {error}") from None
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[base + start:base + end]
        if len(raw) != end - start:  # a truncated file (an interrupted download or copy)
            raise ValueError(f"{file} is truncated: tensor {name!r} needs bytes {start}..{end} of its data, the file "
                             f"holds {len(data) - base}")
        shape = tuple(info["shape"])
        kind = info["dtype"]
        if kind == "BF16":  # the upper 16 bits of a float32
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif kind in _DTYPES:
            array = np.frombuffer(raw, dtype=np.dtype(_DTYPES[kind]).newbyteorder("<")).astype(_DTYPES[kind])
        else:
            raise ValueError(f"{file}: tensor {name!r} has dtype {kind}, which rosetta does not read")
        tensors[name] = np.array(array.reshape(shape))  # writable, owning its memory
    return tensors


def _read_json(file: Path) -> dict:
    """The JSON object in ``file``; ValueError naming the file when it is not one."""
    try:
        value = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{file} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(value).__name__}")
    return value


def read_checkpoint(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(config, tensors) of the Hugging Face checkpoint folder ``path``.

    Raises ValueError naming the path when it is not a folder, has no config.json, holds only
    pickle weights (with how to convert them) or no weights at all.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{str(path)!r} is not a checkpoint folder (a directory with config.json and "
                         f"model.safetensors)")
    if not (folder / CONFIG).is_file():
        raise ValueError(f"checkpoint folder {str(path)!r} has no {CONFIG}")
    config = _read_json(folder / CONFIG)
    if (folder / WEIGHTS).is_file():
        return config, _read_safetensors(folder / WEIGHTS)
    if (folder / INDEX).is_file():
        weight_map = _read_json(folder / INDEX).get("weight_map", {})
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise ValueError(f"checkpoint folder {str(path)!r}: {INDEX} names the shard {shard!r}, which is "
                                 f"missing")
            tensors.update(_read_safetensors(folder / shard))
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise ValueError(f"checkpoint folder {str(path)!r}: {INDEX} lists tensors its shards lack: {missing}")
        return config, {name: tensors[name] for name in weight_map}
    pickles = [name for name in PICKLES if (folder / name).exists()]
    if pickles:
        raise ValueError(
            f"checkpoint folder {str(path)!r} holds only {', '.join(pickles)} (pickle weights, which rosetta never "
            f"opens: unpickling can run arbitrary code); convert it to safetensors first, e.g. with transformers: "
            f"AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)"
        )
    raise ValueError(f"checkpoint folder {str(path)!r} has no {WEIGHTS} or {INDEX}")


def write_checkpoint(path, config: dict, tensors: dict) -> None:
    """Write ``config`` as config.json and ``tensors`` (NumPy arrays) as model.safetensors into
    the folder ``path`` (created if need be)."""
    from safetensors.numpy import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    arrays = {name: np.ascontiguousarray(np.asarray(value)) for name, value in tensors.items()}
    save_file(arrays, str(folder / WEIGHTS), metadata={"format": "pt"})


class TensorSource:
    """The tensors of a checkpoint, taken one by one by name; ``finish`` refuses any left over."""

    def __init__(self, tensors: dict, where: str = "checkpoint"):
        self.tensors = dict(tensors)
        self.where = where

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def take(self, name: str, shape=None) -> np.ndarray:
        """Remove and return tensor ``name``; ValueError when it is missing or its shape is not ``shape``."""
        if name not in self.tensors:
            raise ValueError(f"{self.where}: tensor {name!r} is missing")
        value = self.tensors.pop(name)
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise ValueError(f"{self.where}: tensor {name!r} has shape {tuple(value.shape)}, expected {tuple(shape)}")
        return value

    def add_prefix(self, prefix: str, keep=("lm_head.weight",)) -> None:
        """Name every tensor (but ``keep``) ``prefix`` + its name when none has the prefix: the checkpoint of
        the bare body (GPT2Model, LlamaModel; the real gpt2 folder is one) read as the causal LM's, as transformers
        does."""
        if not any(name.startswith(prefix) for name in self.tensors):
            self.tensors = {(name if name in keep else prefix + name): value for name, value in self.tensors.items()}

    def finish(self) -> None:
        """ValueError naming every tensor that was not taken."""
        if self.tensors:
            raise ValueError(f"{self.where}: unexpected tensors the model does not use: {sorted(self.tensors)}")


#: fields of every transformers config that do not change a causal LM's math (names, ids, output switches)
COMMON_FIELDS = frozenset({
    "_name_or_path", "architectures", "dtype", "torch_dtype", "transformers_version", "model_type", "id2label",
    "label2id", "problem_type", "return_dict", "output_attentions", "output_hidden_states", "torchscript",
    "use_return_dict", "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "bos_token_id",
    "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id", "use_cache", "initializer_range",
    "tokenizer_class", "prefix", "task_specific_params", "finetuning_task", "pruned_heads", "tie_encoder_decoder",
    "cross_attention_hidden_size", "add_cross_attention", "max_length", "min_length", "do_sample", "early_stopping",
    "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "tf_legacy_loss", "use_bfloat16", "_attn_implementation_autoset",
    "_num_labels", "num_labels", "_commit_hash", "xla_device",  # classification label counts, old bookkeeping
})


def check_known_fields(config: dict, known, architecture: str) -> None:
    """Refuse every config field that is neither common (COMMON_FIELDS) nor in ``known``: a field
    rosetta does not know may change the math, so it is never silently ignored."""
    for field in sorted(set(config) - COMMON_FIELDS - set(known)):
        refuse(field, config[field], f"rosetta does not know this {architecture} config field, and an unknown "
                                     f"field may change the model's math")
    if config.get("add_cross_attention"):
        refuse("add_cross_attention", config["add_cross_attention"], "rosetta's decoder-only models have no "
                                                                      "cross-attention")
