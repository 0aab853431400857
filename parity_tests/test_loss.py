"""CrossEntropyLoss: gradients, torch agreement, ignore_index, label smoothing, reductions, errors."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity_tests.strategies import normal, seeds
from parity_tests.tolerances import CLOSED_FORM, FEW_ROUNDINGS, GRADCHECK_TOL, REORDERED, SHORT_CHAIN, assert_close
from reference.gradcheck import gradcheck
from reference.loss import CrossEntropyLoss

REDUCTIONS = ["mean", "sum", "none"]


@st.composite
def loss_config(draw):
    """(lead shape, V, ignore_index, label_smoothing, reduction, fraction of targets ignored)."""
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=3)))
    num_classes = draw(st.integers(1, 6))
    ignore_index = draw(st.sampled_from([-100, -1, 0]))  # 0 is a real class: its targets are ignored
    label_smoothing = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    reduction = draw(st.sampled_from(REDUCTIONS))
    ignored = draw(st.sampled_from([0.0, 0.3, 1.0]))
    return lead, num_classes, ignore_index, label_smoothing, reduction, ignored


def make_target(seed, lead, num_classes, ignore_index, ignored):
    """int64 targets in [0, V), a fraction of them set to ignore_index."""
    rng = np.random.default_rng([seed, 1])
    target = rng.integers(0, num_classes, size=lead, dtype=np.int64)
    return np.where(rng.random(lead) < ignored, ignore_index, target).astype(np.int64)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip(
        "torch", reason="torch is not installed: comparing with torch.nn.functional.cross_entropy needs it"
    )


@given(loss_config(), seeds)
def test_gradcheck_float64(config, seed):
    lead, num_classes, ignore_index, label_smoothing, reduction, ignored = config
    loss = CrossEntropyLoss(ignore_index, label_smoothing, reduction)
    logits = normal(seed, lead + (num_classes,), scale=3.0)
    target = make_target(seed, lead, num_classes, ignore_index, ignored)
    report = gradcheck(loss, [logits, target], seed=seed % 2**31)
    assert [row.name for row in report.rows] == ["input 0"]  # the int target passes through
    assert report.worst <= GRADCHECK_TOL, report.table()


@given(loss_config(), seeds)
def test_float32_agrees_with_float64(config, seed):
    lead, num_classes, ignore_index, label_smoothing, reduction, ignored = config
    logits = normal(seed, lead + (num_classes,), scale=3.0)
    target = make_target(seed, lead, num_classes, ignore_index, ignored)
    loss = CrossEntropyLoss(ignore_index, label_smoothing, reduction)
    g = np.asarray(normal(seed + 1, lead)) if reduction == "none" else 0.7
    y64 = loss(logits, target)
    d64, _ = loss.backward(g)
    y32 = loss(logits.astype(np.float32), target)
    d32, _ = loss.backward(g.astype(np.float32) if reduction == "none" else g)
    assert y32.dtype == np.float32 and d32.dtype == np.float32
    assert_close(y32, y64, np.float32, "CrossEntropyLoss float32 loss")
    assert_close(d32, d64, np.float32, "CrossEntropyLoss float32 gradient")


@given(loss_config(), seeds)
def test_matches_torch_cross_entropy(torch, config, seed):
    lead, num_classes, ignore_index, label_smoothing, reduction, ignored = config
    logits = normal(seed, lead + (num_classes,), scale=3.0)
    target = make_target(seed, lead, num_classes, ignore_index, ignored)
    if reduction == "mean" and np.all(target == ignore_index):
        target.reshape(-1)[0] = 0 if ignore_index != 0 else num_classes - 1  # torch gives NaN here (tested below)
        if num_classes == 1 and ignore_index == 0:
            return  # the only class is ignored: no valid target exists
    loss = CrossEntropyLoss(ignore_index, label_smoothing, reduction)
    ours = loss(logits, target)
    g = np.asarray(normal(seed + 1, lead)) if reduction == "none" else 0.7
    dlogits, dtarget = loss.backward(g)
    assert dtarget is None

    z = torch.tensor(logits.reshape(-1, num_classes), requires_grad=True)  # torch: classes in dimension 1
    theirs = torch.nn.functional.cross_entropy(
        z, torch.from_numpy(target.reshape(-1)), ignore_index=ignore_index,
        label_smoothing=label_smoothing, reduction=reduction,
    )
    theirs.backward(torch.from_numpy(np.reshape(g, theirs.shape)) if reduction == "none" else torch.tensor(g, dtype=torch.float64))
    assert ours.shape == (lead if reduction == "none" else ())
    np.testing.assert_allclose(ours.reshape(-1), theirs.detach().numpy().reshape(-1), rtol=CLOSED_FORM,
                               atol=SHORT_CHAIN)
    np.testing.assert_allclose(dlogits.reshape(-1, num_classes), z.grad.numpy(), rtol=CLOSED_FORM, atol=FEW_ROUNDINGS)


def test_all_ignored_gives_zero_loss_and_gradient():
    logits = normal(0, (2, 3, 5))
    target = np.full((2, 3), -100, dtype=np.int64)
    for reduction in REDUCTIONS:
        loss = CrossEntropyLoss(reduction=reduction, label_smoothing=0.2)
        np.testing.assert_array_equal(loss(logits, target), 0.0)
        dlogits, _ = loss.backward(np.ones((2, 3)) if reduction == "none" else 1.0)
        np.testing.assert_array_equal(dlogits, np.zeros_like(logits))


def test_torch_gives_nan_when_all_ignored(torch):
    """The documented difference: torch's mean over zero targets is 0/0 (sum and none agree: 0)."""
    logits = torch.from_numpy(normal(0, (6, 5)))
    target = torch.full((6,), -100, dtype=torch.int64)
    assert math.isnan(float(torch.nn.functional.cross_entropy(logits, target)))
    assert float(torch.nn.functional.cross_entropy(logits, target, reduction="sum")) == 0.0


@given(st.integers(1, 6), st.sampled_from([0.0, 0.3, 1.0]), seeds)
def test_known_values(num_classes, label_smoothing, seed):
    target = np.random.default_rng(seed).integers(0, num_classes, size=(4,), dtype=np.int64)
    loss = CrossEntropyLoss(label_smoothing=label_smoothing)
    # equal logits: p = 1/V everywhere, so every target distribution q costs log V
    np.testing.assert_allclose(loss(np.full((4, num_classes), 1.5), target), math.log(num_classes), atol=FEW_ROUNDINGS)
    # by the definition, one row at a time
    logits = normal(seed, (4, num_classes), scale=2.0)
    expected = []
    for row, t in zip(logits, target):
        log_p = row - math.log(sum(math.exp(v) for v in row))
        expected.append(-(1 - label_smoothing) * log_p[t] - label_smoothing * float(np.mean(log_p)))
    np.testing.assert_allclose(loss(logits, target), np.mean(expected), rtol=REORDERED, atol=FEW_ROUNDINGS)
    # the gradient of each row sums to zero (softmax is unchanged by a constant shift)
    dlogits, _ = loss.backward()
    np.testing.assert_allclose(dlogits.sum(axis=-1), 0.0, atol=FEW_ROUNDINGS)


def test_reductions_relate_and_default_grad_output_is_one():
    logits = normal(1, (3, 4, 6))
    target = make_target(1, (3, 4), 6, -100, 0.3)
    count = int(np.sum(target != -100))
    none = CrossEntropyLoss(reduction="none", label_smoothing=0.1)
    per_position = none(logits, target)
    assert per_position.shape == (3, 4) and np.all(per_position[target == -100] == 0)
    total = CrossEntropyLoss(reduction="sum", label_smoothing=0.1)
    mean = CrossEntropyLoss(label_smoothing=0.1)
    np.testing.assert_allclose(total(logits, target), per_position.sum(), rtol=SHORT_CHAIN)
    np.testing.assert_allclose(mean(logits, target), per_position.sum() / count, rtol=SHORT_CHAIN)
    d_mean, _ = mean.backward()
    mean(logits, target)  # backward runs once per forward (SPEC): forward again before each
    np.testing.assert_allclose(d_mean, mean.backward(np.float64(1.0))[0], rtol=0)
    mean(logits, target)
    np.testing.assert_allclose(d_mean, mean.backward(np.array(1.0))[0], rtol=0)
    np.testing.assert_allclose(total.backward(2)[0], 2 * count * d_mean, rtol=REORDERED)
    total(logits, target)
    np.testing.assert_allclose(none.backward(np.ones((3, 4)))[0], total.backward()[0], rtol=SHORT_CHAIN)


def test_extreme_logits_stay_finite():
    loss = CrossEntropyLoss(label_smoothing=0.1)
    logits = np.array([[1e4, -1e4, 0.0], [-3e4, -3e4 + 1.0, -3e4 + 2.0]])
    target = np.array([1, 2])
    value = float(loss(logits, target))
    dlogits, _ = loss.backward()
    assert np.isfinite(value) and np.all(np.isfinite(dlogits))
    shifted = logits - logits.max(axis=-1, keepdims=True)  # a constant shift changes nothing
    np.testing.assert_allclose(value, float(loss(shifted, target)), rtol=FEW_ROUNDINGS)
    # a -inf logit (a class masked out of the vocabulary) is fine without smoothing
    plain = CrossEntropyLoss()
    value = float(plain(np.array([[0.0, -np.inf, 1.0]]), np.array([2])))
    np.testing.assert_allclose(value, math.log(1 + math.exp(-1.0)), rtol=FEW_ROUNDINGS)
    assert np.all(np.isfinite(plain.backward()[0]))


def test_bad_input():
    loss = CrossEntropyLoss()
    logits = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"target must lie in \[0, 3\).*got 3"):
        loss(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"target must lie in \[0, 3\).*got -1"):
        loss(logits, np.array([-1, 0]))
    with pytest.raises(ValueError, match=r"target must have shape \(2,\).*got \(2, 1\)"):
        loss(logits, np.zeros((2, 1), dtype=np.int64))
    with pytest.raises(TypeError, match="target must have a integer"):
        loss(logits, np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="target must be a numpy.ndarray"):
        loss(logits, [0, 1])
    with pytest.raises(TypeError, match="logits must have a floating dtype"):
        loss(np.zeros((2, 3), dtype=np.int64), np.array([0, 1]))
    with pytest.raises(ValueError, match="logits must have shape"):
        loss(np.array(1.0), np.array(0))
    with pytest.raises(ValueError, match="logits must have shape"):
        loss(np.zeros((2, 0)), np.array([0, 0]))
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(TypeError, match="label_smoothing must be a float"):
        CrossEntropyLoss(label_smoothing="0.1")
    with pytest.raises(ValueError, match="reduction must be one of"):
        CrossEntropyLoss(reduction="average")
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        CrossEntropyLoss(ignore_index=-100.0)
    with pytest.raises(ValueError, match="before forward"):
        CrossEntropyLoss().backward()
    loss(logits, np.array([0, 1]))
    with pytest.raises(TypeError, match="grad_output must be a float or a 0-d"):
        loss.backward("1")
    with pytest.raises(ValueError, match=r"grad_output must have shape \(\)"):
        loss.backward(np.ones(2))
    none = CrossEntropyLoss(reduction="none")
    none(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2,\)"):
        none.backward(np.ones(3))
    with pytest.raises(TypeError, match="grad_output must be a numpy.ndarray"):
        none.backward(1.0)
    with pytest.raises(TypeError, match="grad_output must have a floating dtype"):
        none.backward(np.ones(2, dtype=np.int64))


def test_no_parameters():
    loss = CrossEntropyLoss(ignore_index=0, label_smoothing=0.1, reduction="sum")
    assert loss.state_dict() == {} and list(loss.parameters()) == []
    assert repr(loss) == "CrossEntropyLoss(ignore_index=0, label_smoothing=0.1, reduction='sum')"
