"""Helpers shared by the BERT and Marian converters (bert.py, marian.py): activations, linear
layers, tied copies, refusals of config fields."""

from __future__ import annotations

import numpy as np

from .folder import refuse
from .tensors import model_dtype, model_tensors

#: Hugging Face ``hidden_act`` / ``activation_function`` -> Rosetta ``activation``
ACTIVATIONS = {
    "gelu": "gelu",  # exact, erf
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",  # opus-mt's name for SiLU
    "gelu_new": "gelu_tanh",  # the tanh approximation (GPT-2's formula)
    "gelu_pytorch_tanh": "gelu_tanh",
}
#: Rosetta ``activation`` -> the name written back to config.json
EXPORT_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}


def activation(field: str, value) -> str:
    """The Rosetta activation of a Hugging Face activation name; refuses any other."""
    if not isinstance(value, str) or value not in ACTIVATIONS:
        refuse(field, value, f"rosetta knows the activations {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[value]


def export_activation(name: str) -> str:
    if name not in EXPORT_ACTIVATIONS:
        raise ValueError(f"activation {name!r} has no Hugging Face equivalent in this architecture "
                         f"(exportable: {sorted(EXPORT_ACTIVATIONS)})")
    return EXPORT_ACTIVATIONS[name]


def require(config: dict, field: str):
    """config[field]; ValueError naming the field when the config lacks it."""
    if field not in config:
        raise ValueError(f"config field {field!r} is missing")
    return config[field]


def refuse_unless(config: dict, field: str, allowed, reason: str) -> None:
    """Refuse ``field`` when the config holds it with a value outside ``allowed`` (absent: its default, allowed)."""
    if field in config and config[field] not in allowed:
        refuse(field, config[field], reason)


def check_architecture(config: dict, known: dict, default=None) -> str:
    """The one architecture name of config["architectures"] (one of ``known``); refuses others."""
    names = config.get("architectures") or ([default] if default else None)
    if not isinstance(names, list) or len(names) != 1 or names[0] not in known:
        refuse("architectures", config.get("architectures"), f"rosetta reads {sorted(known)} here")
    return names[0]


def take_linear(source, at: str, out: dict, to: str, d_out: int, d_in: int, bias: bool = True) -> None:
    """Hugging Face ``at`` (weight (d_out, d_in), bias (d_out,)) -> Rosetta ``to`` (the same layout)."""
    out[f"{to}.weight"] = source.take(f"{at}.weight", (d_out, d_in))
    if bias:
        out[f"{to}.bias"] = source.take(f"{at}.bias", (d_out,))


def take_norm(source, at: str, out: dict, to: str, d: int) -> None:
    """A LayerNorm's weight and bias (d,)."""
    out[f"{to}.weight"] = source.take(f"{at}.weight", (d,))
    out[f"{to}.bias"] = source.take(f"{at}.bias", (d,))


def take_copy(source, name: str, expected: np.ndarray, what: str, atol: float = 0.0) -> None:
    """Take tensor ``name`` if the checkpoint holds it; refuse it unless it equals ``expected``
    (a tied copy, a constant table) within ``atol``."""
    if name not in source:
        return
    value = np.asarray(source.take(name, expected.shape), dtype=np.float64)
    if not np.allclose(value, np.asarray(expected, dtype=np.float64), rtol=0.0, atol=atol):
        raise ValueError(f"{source.where}: tensor {name!r} must equal {what} (rosetta ties them), but it differs")


def numpy_state(model) -> dict:
    """The model's state dict as NumPy arrays (any backend)."""
    return model_tensors(model)


def dtype_name(model) -> str:
    """"float32", "float64", ... of the model's weights (config.json's "dtype")."""
    return model_dtype(model)
