"""Checkpoints: a Transformer's parameters as safetensors, its config as JSON in the file's metadata.

Integrity: the metadata carries a SHA-256 digest of the config and of every tensor (name, dtype,
shape, bytes); ``load_checkpoint`` recomputes it and refuses a file whose content changed (a
flipped byte in a weight, an edited config). Writing is atomic and durable: a temporary file
beside the destination, fsynced, renamed over it, then the folder fsynced; the file gets the
mode a new file of the user gets (0666 less the umask), not mkstemp's 0600.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from reference.arrays import resolve_dtype, to_numpy
from reference.checks import describe
from reference.transformer import Transformer

FORMAT = "rosetta-transformer-checkpoint"
VERSION = "2"  # 2: with the "sha256" digest
#: the Transformer arguments a checkpoint's config["model"] may hold (src/tgt vocabulary sizes are required)
MODEL_KEYS = ("src_vocab_size", "tgt_vocab_size", "d_model", "num_heads", "d_ff", "num_encoder_layers",
              "num_decoder_layers", "dropout", "activation", "norm_first", "layer_norm_eps", "bias", "max_len",
              "tie_embeddings", "padding_idx", "dtype")


def _check_config(config) -> dict:
    """A checkpoint config: a JSON-serializable dict whose "model" entry holds Transformer arguments."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict with a 'model' entry of Transformer arguments, got {describe(config)}")
    model = config.get("model")
    if not isinstance(model, dict):
        raise ValueError(  # noqa: TRY004 - a bad config in a file is a bad checkpoint: ValueError, as the rest
            f"config['model'] must be a dict of Transformer arguments, got {describe(model)}"
        )
    unknown = sorted(set(model) - set(MODEL_KEYS))
    missing = [key for key in ("src_vocab_size", "tgt_vocab_size") if key not in model]
    if unknown or missing:
        raise ValueError(
            f"config['model'] must hold Transformer arguments among {list(MODEL_KEYS)} including "
            f"src_vocab_size and tgt_vocab_size, got unknown keys {unknown} and missing keys {missing}"
        )
    try:
        text = json.dumps(config, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise TypeError(f"config must be JSON-serializable (plain dicts, lists, str, numbers, bools), {error}") from None
    return json.loads(text)  # a plain copy: what load_checkpoint will see


def build_model(config: dict) -> Transformer:
    """The Transformer that config["model"] describes (freshly initialized, seed 0)."""
    model_args = dict(_check_config(config)["model"])
    model_args["dtype"] = resolve_dtype(model_args.get("dtype", "float32"), "config['model']['dtype']")
    try:
        return Transformer(**model_args, seed=0)
    except (TypeError, ValueError) as error:
        raise ValueError(f"config['model'] does not describe a valid Transformer: {error}") from None


def save_checkpoint(path, model, config: dict) -> Path:
    """Write model's parameters and config to ``path`` (safetensors), atomically; returns the path.

    config["model"] must rebuild ``model`` (its keys, shapes and dtypes are checked against it
    before anything is written). The file is written beside its destination under a temporary
    name, flushed to disk, then renamed over ``path``: a reader never sees half a checkpoint,
    and a failure leaves an existing file untouched.
    """
    path = Path(path)
    config = _check_config(config)
    expected = build_model(config).state_dict()  # what load_checkpoint will build
    tensors = {name: np.ascontiguousarray(to_numpy(value)) for name, value in model.state_dict().items()}
    _check_tensors(tensors, expected, where="model")
    config_text = json.dumps(config, sort_keys=True)
    metadata = {"format": FORMAT, "version": VERSION, "model_class": "Transformer", "config": config_text,
                "sha256": content_digest(config_text, tensors)}
    data = safetensors.numpy.save(tensors, metadata=metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.chmod(temporary, _new_file_mode())  # mkstemp's 0600 → the user's usual mode
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)  # the rename itself reaches the disk
    return path


def content_digest(config_text: str, tensors: dict) -> str:
    """SHA-256 (hex) of the config's JSON and of every tensor: name, dtype, shape and bytes, by name."""
    digest = hashlib.sha256()
    digest.update(config_text.encode())
    for name in sorted(tensors):
        tensor = np.ascontiguousarray(tensors[name])
        digest.update(f"\0{name}\0{tensor.dtype.str}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.tobytes())
    return digest.hexdigest()


def _new_file_mode() -> int:
    """0666 less the process's umask: the mode open() would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk, where the platform allows opening a folder."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder; its rename is already durable enough
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems refuse fsync on a folder
    finally:
        os.close(handle)


def load_checkpoint(path):
    """(model, config) from a checkpoint written by save_checkpoint; every check runs first.

    Raises ValueError naming the file when it is not a complete safetensors file, is not a
    Rosetta checkpoint, when its tensors' names, shapes or dtypes differ from the model its
    config describes, or when its content no longer matches the digest it was written with.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint must be an existing file, got {str(path)!r} (no such file)")
    data = path.read_bytes()
    metadata = _read_metadata(data, path)
    if metadata.get("format") != FORMAT or metadata.get("model_class") != "Transformer":
        raise ValueError(
            f"checkpoint {str(path)!r} must be a {FORMAT} of a Transformer, got metadata format="
            f"{metadata.get('format')!r}, model_class={metadata.get('model_class')!r}"
        )
    if metadata.get("version") != VERSION:
        raise ValueError(f"checkpoint {str(path)!r} must have format version {VERSION}, got {metadata.get('version')!r}")
    try:
        config = json.loads(metadata.get("config", ""))
    except json.JSONDecodeError as error:
        raise ValueError(f"checkpoint {str(path)!r} must hold its config as JSON in its metadata: {error}") from None
    try:
        model = build_model(config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint {str(path)!r} has an invalid config: {error}") from None
    try:
        tensors = safetensors.numpy.load(data)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error type
        raise ValueError(f"checkpoint {str(path)!r} is not a readable safetensors file: {error}") from None
    _check_tensors(tensors, model.state_dict(), where=f"checkpoint {str(path)!r}")
    stored = metadata.get("sha256")
    if stored != content_digest(metadata["config"], tensors):
        raise ValueError(
            f"checkpoint {str(path)!r} is corrupt: the SHA-256 of its config and tensors does not match the digest "
            f"it was written with (got {str(stored)[:16]!r}...); it was changed after it was saved"
        )
    model.load_state_dict(tensors)
    model.eval()
    return model, config


def _read_metadata(data: bytes, path: Path) -> dict:
    """The __metadata__ of a safetensors file, after checking that the file is complete.

    Layout: 8 bytes little-endian header size N, N bytes of JSON header, then the tensor data;
    the header gives each tensor's [begin, end) in the data, and the data must end where the
    last tensor ends.
    """
    where = f"checkpoint {str(path)!r}"
    if len(data) < 8:
        raise ValueError(f"{where} is truncated: {len(data)} bytes, shorter than a safetensors header")
    (size,) = struct.unpack("<Q", data[:8])
    if 8 + size > len(data):
        raise ValueError(f"{where} is truncated: its header needs {8 + size} bytes, the file has {len(data)}")
    try:
        header = json.loads(data[8: 8 + size])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{where} is not a safetensors file: its header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{where} is not a safetensors file: its header is not a JSON object")  # noqa: TRY004
    ends = [entry["data_offsets"][1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    have = len(data) - 8 - size
    if ends and max(ends) != have:
        raise ValueError(
            f"{where} is truncated or corrupt: its tensors need {max(ends)} bytes of data, the file has {have}"
        )
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{where} is not a Rosetta checkpoint: its metadata is not a JSON object")  # noqa: TRY004
    return metadata


def _check_tensors(tensors: dict, expected: dict, *, where: str) -> None:
    """Same names, shapes and dtypes as the expected state dict, or a ValueError listing the differences."""
    missing = [name for name in expected if name not in tensors]
    unexpected = [name for name in tensors if name not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{where} does not match the Transformer of its config: missing tensors {missing}, "
            f"unexpected tensors {unexpected}"
        )
    for name, want in expected.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(want.shape):
            raise ValueError(f"{where}: tensor {name!r} must have shape {tuple(want.shape)}, got {tuple(got.shape)}")
        if np.dtype(got.dtype) != np.dtype(want.dtype):
            raise ValueError(f"{where}: tensor {name!r} must have dtype {np.dtype(want.dtype)}, got {got.dtype}")
