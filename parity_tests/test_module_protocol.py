"""The module protocol: registration, state dicts, gradients, modes, seeds, errors."""

import numpy as np
import pytest

from parity_tests.tolerances import FEW_ROUNDINGS, FLOAT32_ROUNDOFF
from reference.linear import Linear
from reference.module import Module, ModuleList, Parameter, child_seed


class TwoLayers(Module):
    def __init__(self, seed=None):
        super().__init__()
        self.first = Linear(3, 4, seed=child_seed(seed, "first"), dtype=np.float64)
        self.blocks = ModuleList([Linear(4, 4, bias=False, seed=child_seed(seed, f"blocks.{i}"), dtype=np.float64)
                                  for i in range(2)])
        self.scale = Parameter(np.ones(4))

    def forward(self, x):
        h = self.first(x)
        for block in self.blocks:
            h = block(h)
        return h * self.scale.data


def test_dotted_names_follow_assignment_order():
    m = TwoLayers(seed=0)
    assert list(m.state_dict()) == ["scale", "first.weight", "first.bias", "blocks.0.weight", "blocks.1.weight"]
    assert m.num_parameters() == 4 + 12 + 4 + 16 + 16


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = TwoLayers(seed=1), TwoLayers(seed=1), TwoLayers(seed=2)
    for key in a.state_dict():
        np.testing.assert_array_equal(a.state_dict()[key], b.state_dict()[key])
    assert not np.array_equal(a.state_dict()["first.weight"], c.state_dict()["first.weight"])
    # children get different streams from one parent seed
    assert not np.array_equal(a.blocks[0].weight.data, a.blocks[1].weight.data)


def test_load_state_dict_round_trip_and_dtype_cast():
    a, b = TwoLayers(seed=1), TwoLayers(seed=2)
    sd = {k: v.astype(np.float32) for k, v in a.state_dict().items()}
    result = b.load_state_dict(sd)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for key, value in b.state_dict().items():
        assert value.dtype == np.float64
        np.testing.assert_allclose(value, a.state_dict()[key], rtol=FLOAT32_ROUNDOFF)


def test_load_state_dict_rejects_missing_extra_and_misshaped_keys_atomically():
    m = TwoLayers(seed=1)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    good = {k: np.zeros_like(v) for k, v in before.items()}
    missing = dict(good)
    del missing["first.bias"]
    with pytest.raises(ValueError, match="missing keys.*first.bias"):
        m.load_state_dict(missing)
    with pytest.raises(ValueError, match="unexpected keys.*extra"):
        m.load_state_dict({**good, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"first.weight.*shape \(4, 3\).*\(3, 4\)"):
        m.load_state_dict({**good, "first.weight": np.zeros((3, 4))})
    with pytest.raises(TypeError, match="state_dict"):
        m.load_state_dict([1, 2])
    for key, value in m.state_dict().items():  # nothing changed by the failed loads
        np.testing.assert_array_equal(value, before[key])
    result = m.load_state_dict(missing, strict=False)
    assert result.missing_keys == ["first.bias"]


def test_load_state_dict_accepts_torch_tensors():
    torch = pytest.importorskip("torch", reason="torch is not installed: the torch-tensor case needs it")
    a, b = TwoLayers(seed=1), TwoLayers(seed=2)
    b.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in a.state_dict().items()})
    np.testing.assert_array_equal(b.first.weight.data, a.first.weight.data)


def test_gradients_accumulate_and_zero_grad_clears_them():
    lin = Linear(3, 2, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((5, 3))
    g = np.ones((5, 2))
    lin(x)
    lin.backward(g)
    first = lin.weight.grad.copy()
    lin(x)  # backward runs once per forward (SPEC); a second forward's gradient adds up
    lin.backward(g)
    np.testing.assert_allclose(lin.weight.grad, 2 * first, rtol=FEW_ROUNDINGS)
    lin.zero_grad()
    assert lin.weight.grad is None and lin.bias.grad is None


def test_train_and_eval_reach_every_submodule():
    m = TwoLayers()
    assert m.eval() is m
    assert not any(sub.training for sub in m.modules())
    m.train()
    assert all(sub.training for sub in m.modules())


def test_backward_before_forward_is_a_clear_error():
    with pytest.raises(ValueError, match="Linear.backward.*before forward"):
        Linear(3, 2).backward(np.ones((1, 2), np.float32))


def test_grad_output_of_the_wrong_shape_is_rejected():
    lin = Linear(3, 2, dtype=np.float64)
    lin(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"grad_output must have shape \(4, 2\)"):
        lin.backward(np.ones((4, 3)))
    with pytest.raises(TypeError, match="grad_output"):
        lin.backward([[1.0, 2.0]] * 4)


def test_repr_shows_the_tree():
    text = repr(TwoLayers())
    assert "(first): Linear(in_features=3, out_features=4, bias=True)" in text
    assert "(0): Linear(in_features=4, out_features=4, bias=False)" in text


def test_a_tied_parameter_is_listed_once():
    m = TwoLayers(seed=0)
    m.blocks[1].weight = m.blocks[0].weight  # tie the two blocks
    names = [name for name, _ in m.named_parameters()]
    assert names.count("blocks.0.weight") == 1 and "blocks.1.weight" not in names


def test_bfloat16_counts_as_floating():
    """CuPy's bfloat16 is ml_dtypes', which NumPy files under kind 'V': the checks must still call it floating."""
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes (the test extra installs it)")
    from reference.checks import check_array, dtype_kind

    x = np.zeros((2, 3), dtype=ml_dtypes.bfloat16)
    assert x.dtype.kind == "V" and dtype_kind(x.dtype) == "f"
    assert check_array("x", x, kind="f") is x
    with pytest.raises(TypeError, match="x must have a integer dtype, got bfloat16"):
        check_array("x", x, kind="i")
    from reference.activations import ReLU

    layer = ReLU()
    layer(np.ones(3))
    with pytest.raises(TypeError, match="grad_output must have a floating dtype, got int64"):
        layer.backward(np.ones(3, dtype=np.int64))
    with pytest.raises(TypeError, match="grad_output must have dtype float32 or float64"):  # floating, but
        layer.check_grad_output(np.ones(3, dtype=ml_dtypes.bfloat16), (3,))  # not a dtype the reference computes in
