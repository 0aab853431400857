"""Hugging Face checkpoint folders in and out of the Rosetta models, on every backend.

    from rosetta.hf import load_pretrained, save_pretrained
    model = load_pretrained("path/to/gpt2-folder", backend="torch", dtype="float32")
    ...                                  # run, fine-tune (the hand-written backward on numpy)
    save_pretrained(model, "path/to/out")  # transformers' from_pretrained reads it back

Only NumPy and safetensors are needed (folder.py); transformers is a test oracle, never
imported here. Each architecture module (gpt2, llama, bert, marian) provides
``build(config, rt, dtype)``, ``to_rosetta(config, source)`` and ``from_rosetta(model)``; it
refuses, by name, every config field the Rosetta model cannot honour.
"""

from __future__ import annotations

import importlib

from .folder import TensorSource, read_checkpoint, refuse, write_checkpoint

__all__ = ["ARCHITECTURES", "load_pretrained", "save_pretrained", "read_checkpoint", "write_checkpoint",
           "TensorSource", "refuse", "architecture"]

#: config["model_type"] -> the module (in this package) that maps it
ARCHITECTURES = {"gpt2": ".gpt2", "llama": ".llama", "mistral": ".llama", "qwen2": ".llama", "bert": ".bert",
                 "marian": ".marian"}
#: backend name -> its namespace package
BACKENDS = {"numpy": "reference", "torch": "accelerated.torch", "cupy": "accelerated.cupy"}


def architecture(config: dict):
    """The module mapping ``config``'s model_type; ValueError naming model_type for any other."""
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        refuse("model_type", model_type, f"rosetta reads {', '.join(sorted(ARCHITECTURES))}")
    return importlib.import_module(ARCHITECTURES[model_type], __name__)


def backend_namespace(backend):
    """The namespace of backend ``backend``: "numpy", "torch", "cupy", or a namespace module itself
    (e.g. the ``rt`` of ``accelerated.cupy_emulator.emulated_cupy()``)."""
    if not isinstance(backend, str):
        return backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    try:
        return importlib.import_module(BACKENDS[backend])
    except Exception as error:  # noqa: BLE001 - e.g. CuPy without a GPU raises at import
        raise ValueError(f"backend {backend!r} is not available: {error}") from None


def load_pretrained(path, backend="numpy", dtype=None):
    """The Rosetta model of the Hugging Face checkpoint folder ``path``, with its weights, on ``backend``.

    The model remembers the checkpoint's config (``model.hf_config``) so that save_pretrained
    writes the same architecture back.
    """
    config, tensors = read_checkpoint(path)
    module = architecture(config)
    rt = backend_namespace(backend)
    model = module.build(config, rt, dtype)  # refuses what it cannot honour before reading any weight
    source = TensorSource(tensors, f"checkpoint {str(path)!r}")
    state = module.to_rosetta(config, source)
    source.finish()
    model.load_state_dict(state)
    model.hf_config = dict(config)
    model.eval()
    return model


def save_pretrained(model, path) -> None:
    """Write ``model`` (loaded by load_pretrained, possibly trained since) as a Hugging Face folder."""
    config = getattr(model, "hf_config", None)
    if config is None:
        raise ValueError("save_pretrained needs a model made by rosetta.hf.load_pretrained (it remembers the "
                         "checkpoint's architecture in model.hf_config)")
    if getattr(model, "quantization", None) is not None:  # its integer codes are not Hugging Face float weights
        raise ValueError(f"model must be a float model to save as a Hugging Face folder, got one quantized with "
                         f"{model.quantization} (save it with rosetta.checkpoint.save_checkpoint, or save the float "
                         "model it was quantized from)")
    config, tensors = architecture(config).from_rosetta(model)
    write_checkpoint(path, config, tensors)
