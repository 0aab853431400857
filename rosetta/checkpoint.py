"""Checkpoints: a Rosetta model's parameters as safetensors, its config as JSON in the file's metadata.

A checkpoint holds one model ``kind`` (Transformer, EncoderModel or DecoderLM; config["model"]
holds that class's constructor arguments), float or quantized: a quantized checkpoint records
its ``quantization`` settings ({"bits", "group_size", "outlier_threshold"}) and holds the
integer weights and scales of reference.quantization's QuantizedLinear. ``load_checkpoint``
builds the float model on the requested backend, quantizes it with the recorded settings, then
loads the stored tensors, so every backend loads every checkpoint.

Integrity: the metadata carries a SHA-256 digest of the config, kind, quantization and every
tensor (name, dtype, shape, bytes; integer tensors included); ``load_checkpoint`` recomputes it
and refuses a file whose content changed (a flipped byte in a weight, an edited config). Writing
is atomic and durable: a temporary file beside the destination, fsynced, renamed over it, then
the folder fsynced; the file gets the mode a new file of the user gets (0666 less the umask),
not mkstemp's 0600. Version-2 files (Transformer only, float only) still load.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

import reference
from reference.arrays import resolve_dtype, to_numpy
from reference.checks import describe

from .hf import backend_namespace  # "numpy", "torch", "cupy" or a namespace module (emulated CuPy's)

FORMAT = "rosetta-transformer-checkpoint"
VERSION = "3"  # 3: a model kind and a quantization entry; 2: Transformer only, with the "sha256" digest
READABLE_VERSIONS = ("2", "3")
#: the model classes a checkpoint may hold (config["model"] = the constructor arguments of one of them)
KINDS = ("Transformer", "EncoderModel", "DecoderLM")
#: the arguments of rosetta's Hugging Face import that are not weights (kept to write the folder back)
HF_CONFIG = "hf_config"


def model_keys(kind: str) -> tuple:
    """The constructor arguments config["model"] may hold for ``kind`` (the reference class's, with dtype)."""
    return tuple(name for name in inspect.signature(getattr(reference, kind)).parameters if name != "seed")


def required_keys(kind: str) -> tuple:
    """The constructor arguments config["model"] must hold for ``kind`` (those without a default)."""
    parameters = inspect.signature(getattr(reference, kind)).parameters.values()
    return tuple(p.name for p in parameters if p.default is inspect.Parameter.empty and p.kind != p.KEYWORD_ONLY)


#: the Transformer arguments a checkpoint's config["model"] may hold (src/tgt vocabulary sizes are required)
MODEL_KEYS = model_keys("Transformer")


def check_kind(kind) -> str:
    """``kind`` if it is one of KINDS, else a ValueError naming it."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def model_kind(model) -> str:
    """The checkpoint kind of a model of any backend (by its blueprint, which every backend's class shares)."""
    from reference import blueprints

    for kind in KINDS:
        if isinstance(model, getattr(blueprints, f"{kind}Blueprint")):
            return kind
    raise TypeError(f"model must be a Transformer, EncoderModel or DecoderLM of any backend, got {describe(model)}")


def _check_config(config, kind: str = "Transformer") -> dict:
    """A checkpoint config: a JSON-serializable dict whose "model" entry holds ``kind``'s arguments."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict with a 'model' entry of {kind} arguments, got {describe(config)}")
    model = config.get("model")
    if not isinstance(model, dict):
        raise ValueError(  # noqa: TRY004 - a bad config in a file is a bad checkpoint: ValueError, as the rest
            f"config['model'] must be a dict of {kind} arguments, got {describe(model)}"
        )
    unknown = sorted(set(model) - set(model_keys(kind)))
    missing = [key for key in required_keys(kind) if key not in model]
    if unknown or missing:
        raise ValueError(
            f"config['model'] must hold {kind} arguments among {list(model_keys(kind))} including "
            f"{', '.join(required_keys(kind))}, got unknown keys {unknown} and missing keys {missing}"
        )
    try:
        text = json.dumps(config, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise TypeError(f"config must be JSON-serializable (plain dicts, lists, str, numbers, bools), {error}") from None
    return json.loads(text)  # a plain copy: what load_checkpoint will see


def build_model(config: dict, kind: str = "Transformer", *, backend="numpy", quantization=None):
    """The model config["model"] describes (freshly initialized, seed 0) on ``backend``, quantized
    with ``quantization`` (the settings dict of quantize_model) when it is not None."""
    kind = check_kind(kind)
    model_args = dict(_check_config(config, kind)["model"])
    model_args["dtype"] = resolve_dtype(model_args.get("dtype", "float32"), "config['model']['dtype']")
    rt = backend_namespace(backend)
    try:
        model = getattr(rt, kind)(**model_args, seed=0)
    except (TypeError, ValueError) as error:
        raise ValueError(f"config['model'] does not describe a valid {kind}: {error}") from None
    if quantization is not None:
        model = _quantize(rt, model, quantization)
    return model


def _quantize(rt, model, quantization):
    """quantize_model(model, **quantization), refusing settings that are not a dict of its arguments."""
    keys = ("bits", "group_size", "outlier_threshold")
    if not isinstance(quantization, dict) or set(quantization) - set(keys):
        raise ValueError(f"quantization must be None or a dict with keys among {list(keys)}, got {quantization!r}")
    try:
        return rt.quantize_model(model, **quantization)
    except (TypeError, ValueError) as error:
        raise ValueError(f"quantization {quantization!r} cannot be applied: {error}") from None


def pretrained_config(model) -> dict:
    """A checkpoint config for a model made by rosetta.hf.load_pretrained: {"model": its constructor
    arguments (with dtype), "hf_config": the Hugging Face config, to write the folder back}."""
    from rosetta.hf import architecture

    hf_config = getattr(model, HF_CONFIG, None)
    if not isinstance(hf_config, dict):
        raise ValueError("model must be made by rosetta.hf.load_pretrained (it remembers its Hugging Face config in "
                         f"model.hf_config), got {describe(model)} without one")
    module = architecture(hf_config)
    arguments = getattr(module, "arguments", None) or module.check  # BERT, Marian: arguments; GPT-2, Llama: check
    dtype = next(str(to_numpy(v).dtype) for v in model.state_dict().values()
                 if np.issubdtype(to_numpy(v).dtype, np.floating))
    return {"model": dict(arguments(hf_config), dtype=dtype), HF_CONFIG: hf_config}


def save_checkpoint(path, model, config: dict) -> Path:
    """Write model's parameters and config to ``path`` (safetensors), atomically; returns the path.

    ``model`` is a Transformer, EncoderModel or DecoderLM of any backend, float or quantized by
    quantize_model (its kind and ``model.quantization`` are recorded beside the config).
    config["model"] must rebuild ``model`` (its keys, shapes and dtypes are checked against it
    before anything is written). The file is written beside its destination under a temporary
    name, flushed to disk, then renamed over ``path``: a reader never sees half a checkpoint,
    and a failure leaves an existing file untouched.
    """
    path = Path(path)
    if path.is_dir():  # os.replace would fail late, with a traceback, after the work is done
        raise ValueError(f"path must be a file to write the checkpoint to, got {str(path)!r}, an existing folder")
    kind = model_kind(model)
    config = _check_config(config, kind)
    quantization = getattr(model, "quantization", None)
    expected = build_model(config, kind, quantization=quantization).state_dict()  # what load_checkpoint will build
    tensors = {name: np.ascontiguousarray(to_numpy(value)) for name, value in model.state_dict().items()}
    _check_tensors(tensors, expected, where="model", kind=kind)
    metadata = {"format": FORMAT, "version": VERSION, "model_class": kind, "config": json.dumps(config, sort_keys=True),
                "quantization": json.dumps(quantization, sort_keys=True)}
    metadata["sha256"] = content_digest(_signed_text(metadata), tensors)
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


def _signed_text(metadata: dict) -> str:
    """What the digest covers besides the tensors: the config (version 2), and the kind and quantization (3)."""
    if metadata.get("version") == "2":
        return metadata["config"]
    return "\0".join((metadata["config"], metadata["model_class"], metadata.get("quantization", "null")))


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


def checkpoint_info(path) -> tuple:
    """(kind, quantization, config) of a checkpoint, from its metadata alone (no tensor is read or checked).

    quantization is None for a float checkpoint. Raises ValueError naming the file when it is not a
    complete Rosetta checkpoint of a version this code reads.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint must be an existing file, got {str(path)!r} (no such file)")
    metadata = _read_metadata(path.read_bytes(), path)
    return _describe(metadata, path)


def _describe(metadata: dict, path: Path) -> tuple:
    """(kind, quantization, config) of a checkpoint's metadata, every entry checked."""
    kind = metadata.get("model_class")
    if metadata.get("format") != FORMAT or kind not in KINDS:
        raise ValueError(
            f"checkpoint {str(path)!r} must be a {FORMAT} of a {', '.join(KINDS)}, got metadata format="
            f"{metadata.get('format')!r}, model_class={kind!r}"
        )
    version = metadata.get("version")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"checkpoint {str(path)!r} must have format version {' or '.join(READABLE_VERSIONS)}, "
                         f"got {version!r}")
    if version == "2" and kind != "Transformer":
        raise ValueError(f"checkpoint {str(path)!r} of format version 2 must hold a Transformer, got {kind!r}")
    try:
        config = json.loads(metadata.get("config", ""))
        quantization = json.loads(metadata.get("quantization", "null"))  # absent: float (the digest agrees)
    except json.JSONDecodeError as error:
        raise ValueError(f"checkpoint {str(path)!r} must hold its config and quantization as JSON in its "
                         f"metadata: {error}") from None
    return kind, quantization, config


def load_checkpoint(path, backend="numpy", *, quantized=None):
    """(model, config) from a checkpoint written by save_checkpoint; every check runs first.

    The model is built on ``backend`` ("numpy", "torch", "cupy" or a namespace module such as
    the emulated CuPy one) as the kind the file records; a quantized checkpoint gives a model
    quantized with the recorded settings (inference only). ``quantized`` = False (a float model
    is needed, e.g. to train or to quantize) or True (a quantized one is needed) refuses the
    other sort of checkpoint by name; None accepts both.

    Raises ValueError naming the file when it is not a complete safetensors file, is not a
    Rosetta checkpoint, when its tensors' names, shapes or dtypes differ from the model its
    config describes, or when its content no longer matches the digest it was written with.
    """
    path = Path(path)
    if quantized not in (None, True, False):
        raise TypeError(f"quantized must be None, True or False, got {describe(quantized)}")
    if not path.is_file():
        raise ValueError(f"checkpoint must be an existing file, got {str(path)!r} (no such file)")
    data = path.read_bytes()
    metadata = _read_metadata(data, path)
    kind, quantization, config = _describe(metadata, path)
    if quantized is not None and (quantization is not None) != quantized:
        raise ValueError(
            f"checkpoint {str(path)!r} must hold a {'quantized' if quantized else 'float'} model "
            + ("(written by rosetta quantize)" if quantized else "(quantized models are for inference only: use the "
               "float checkpoint it was quantized from)")
            + f", got a {'float' if quantization is None else 'quantized'} {kind} (quantization {quantization!r})"
        )
    backend = backend_namespace(backend)  # an unavailable backend is said as such, not as a bad config
    try:
        model = build_model(config, kind, backend=backend, quantization=quantization)
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint {str(path)!r} has an invalid config: {error}") from None
    try:
        tensors = safetensors.numpy.load(data)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error type
        raise ValueError(f"checkpoint {str(path)!r} is not a readable safetensors file: {error}") from None
    _check_tensors(tensors, model.state_dict(), where=f"checkpoint {str(path)!r}", kind=kind)
    stored = metadata.get("sha256")
    if stored != content_digest(_signed_text(metadata), tensors):
        raise ValueError(
            f"checkpoint {str(path)!r} is corrupt: the SHA-256 of its config and tensors does not match the digest "
            f"it was written with (got {str(stored)[:16]!r}...); it was changed after it was saved"
        )
    model.load_state_dict(tensors)
    if isinstance(config.get(HF_CONFIG), dict):
        model.hf_config = dict(config[HF_CONFIG])  # rosetta.hf.save_pretrained writes a float one back
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


def _check_tensors(tensors: dict, expected: dict, *, where: str, kind: str = "Transformer") -> None:
    """Same names, shapes and dtypes as the expected state dict (of any backend), or a ValueError listing
    the differences. Integer tensors (a quantized model's weights) are checked like float ones."""
    missing = [name for name in expected if name not in tensors]
    unexpected = [name for name in tensors if name not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{where} does not match the {kind} of its config: missing tensors {missing}, "
            f"unexpected tensors {unexpected}"
        )
    for name, want in expected.items():
        got = tensors[name]
        want_dtype = to_numpy(want.reshape(-1)[:0]).dtype  # NumPy's name for any backend's dtype, nothing copied
        if tuple(got.shape) != tuple(want.shape):
            raise ValueError(f"{where}: tensor {name!r} must have shape {tuple(want.shape)}, got {tuple(got.shape)}")
        if np.dtype(got.dtype) != want_dtype:
            raise ValueError(f"{where}: tensor {name!r} must have dtype {want_dtype}, got {got.dtype}")
