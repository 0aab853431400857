"""The gradient checker itself: it passes a right backward and catches wrong ones."""

import numpy as np
import pytest

from parity_tests.tolerances import GRADCHECK_DETECTS, GRADCHECK_TARGET
from reference.gradcheck import assert_gradcheck, gradcheck
from reference.linear import Linear
from reference.module import Module


class Cube(Module):
    """y = x³ with a deliberately configurable backward."""

    def __init__(self, factor=3.0):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        self.save_for_backward(x=x)
        return x**3

    def backward(self, grad_output):
        return grad_output * self.factor * self.saved()["x"] ** 2


class BrokenLinear(Linear):
    """A Linear whose weight gradient forgets a transpose-free sum over one row."""

    def backward(self, grad_output):
        dx = super().backward(grad_output)
        self.weight.grad[0, 0] += 1e-3
        return dx


def test_a_correct_backward_passes_to_roundoff():
    x = np.random.default_rng(0).standard_normal((3, 4))
    assert gradcheck(Cube(), [x]).worst < GRADCHECK_TARGET


def test_a_wrong_input_gradient_fails():
    x = np.random.default_rng(0).standard_normal((3, 4))
    with pytest.raises(AssertionError, match="gradient check failed"):
        assert_gradcheck(Cube(factor=3.001), [x])


def test_a_wrong_parameter_gradient_fails():
    x = np.random.default_rng(0).standard_normal((3, 4))
    report = gradcheck(BrokenLinear(4, 2, seed=0, dtype=np.float64), [x])
    rows = {r.name: r for r in report.rows}
    assert rows["input 0"].rel_error < GRADCHECK_TARGET
    assert rows["weight"].rel_error > GRADCHECK_DETECTS


def test_sampling_checks_the_requested_number_of_entries():
    x = np.random.default_rng(0).standard_normal((10, 10))
    report = gradcheck(Cube(), [x], max_entries=7)
    assert report.rows[0].checked == 7


def test_aliased_inputs_are_refused():
    from reference.multi_head_attention import MultiHeadAttention

    x = np.random.default_rng(0).standard_normal((1, 3, 4))
    with pytest.raises(ValueError, match="inputs 1 and 2 share memory"):
        gradcheck(MultiHeadAttention(4, 2, dtype=np.float64), [x.copy(), x, x])
