"""Shared hypothesis strategies and input makers.

Inputs are drawn as a seed and then made with NumPy's normal generator, so values are
generic (no exact zeros sitting on a ReLU kink) and shrinking stays on the configuration.
"""

import numpy as np
from hypothesis import strategies as st

seeds = st.integers(min_value=0, max_value=2**32 - 1)


def normal(seed: int, shape, dtype=np.float64, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


@st.composite
def heads_config(draw, max_heads: int = 4, max_head_dim: int = 4, even_head_dim: bool = False):
    """(d_model, num_heads, num_kv_heads) with num_heads divisible by num_kv_heads."""
    num_heads = draw(st.integers(1, max_heads))
    head_dim = draw(st.sampled_from([2, 4] if even_head_dim else list(range(1, max_head_dim + 1))))
    num_kv_heads = draw(st.sampled_from([k for k in range(1, num_heads + 1) if num_heads % k == 0]))
    return num_heads * head_dim, num_heads, num_kv_heads
