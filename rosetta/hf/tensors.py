"""What the architecture modules share: a model's weights as NumPy arrays, the exported config."""

from __future__ import annotations

import numpy as np

from reference.arrays import to_numpy


def model_tensors(model) -> dict[str, np.ndarray]:
    """The model's state dict as NumPy arrays (from any backend), each its own contiguous copy."""
    return {name: np.ascontiguousarray(np.array(to_numpy(value))) for name, value in model.state_dict().items()}


def model_dtype(model) -> str:
    """The name of the floating dtype the model's weights are in ("float32", "float64", ...)."""
    first = next(iter(model.state_dict().values()))
    return str(np.asarray(to_numpy(first)).dtype)


def export_config(config: dict, model, architecture: str) -> dict:
    """The checkpoint's config as it is written back: its architecture and the weights' dtype."""
    config = dict(config)
    config["architectures"] = [architecture]
    config["dtype"] = model_dtype(model)
    config.pop("torch_dtype", None)
    return config
