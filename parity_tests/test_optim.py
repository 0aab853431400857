"""SGD, AdamW, clip_grad_norm_ and the schedules: torch agreement, state dicts, closed forms, errors."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity_tests.strategies import normal, seeds
from parity_tests.tolerances import (
    ADAM_STEP_WITHOUT_EPS,
    CLOSED_FORM,
    FEW_ROUNDINGS,
    FLOAT32_ROUNDOFF,
    SHORT_CHAIN,
    relative_error,
)
from reference.module import Parameter
from reference.optim import SGD, AdamW, WarmupCosine, WarmupInverseSqrt, clip_grad_norm_

SHAPES = [(3, 4), (5,), (2, 1, 3)]
STEPS = 10


def assert_agrees(actual, expected, what, rtol=CLOSED_FORM):
    """Agreement relative to the tensor's largest entry (tolerances.relative_error): entry by entry, a weight
    that happens to pass near 0 would show a large relative error made of nothing but roundoff."""
    error = relative_error(actual, expected)
    assert error <= rtol, f"{what}: relative error {error:.2e} > {rtol:.0e}"
    return error


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch is not installed: comparing with torch.optim needs it")


def gradient_stream(seed, steps=STEPS, skip=True):
    """Per step, one gradient per parameter; with ``skip``, some are None (that parameter sits the step out)."""
    rng = np.random.default_rng([seed, 2])
    return [
        [None if skip and rng.random() < 0.2 else rng.standard_normal(shape) for shape in SHAPES]
        for _ in range(steps)
    ]


def make_params(seed, dtype=np.float64):
    return [Parameter(normal(seed + i, shape, dtype)) for i, shape in enumerate(SHAPES)]


def torch_params(torch, params):
    return [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in params]


def run_both(torch, ours, theirs, params, tparams, grads):
    """Step both optimizers on the same gradients; after each step the parameters must agree."""
    worst = 0.0
    for step_grads in grads:
        for p, tp, g in zip(params, tparams, step_grads):
            p.grad = None if g is None else g.astype(p.dtype)
            tp.grad = None if g is None else torch.from_numpy(g.astype(p.dtype))
        ours.step()
        theirs.step()
        for p, tp in zip(params, tparams):
            worst = max(worst, assert_agrees(p.data, tp.detach().numpy(), "parameter"))
    return worst


sgd_config = st.fixed_dictionaries(
    {
        "lr": st.sampled_from([0.1, 0.01, 1.3]),
        "momentum": st.sampled_from([0.0, 0.5, 0.9]),
        "weight_decay": st.sampled_from([0.0, 0.05]),
        "nesterov": st.booleans(),
    }
).map(lambda c: {**c, "nesterov": c["nesterov"] and c["momentum"] > 0})

adamw_config = st.fixed_dictionaries(
    {
        "lr": st.sampled_from([1e-3, 0.05]),
        "betas": st.sampled_from([(0.9, 0.999), (0.3, 0.9), (0.0, 0.5)]),
        "eps": st.sampled_from([1e-8, 1e-3]),
        "weight_decay": st.sampled_from([0.0, 0.01, 0.3]),
    }
)


@given(sgd_config, seeds)
def test_sgd_matches_torch(torch, config, seed):
    params = make_params(seed)
    tparams = torch_params(torch, params)
    ours, theirs = SGD(params, **config), torch.optim.SGD(tparams, **config)
    run_both(torch, ours, theirs, params, tparams, gradient_stream(seed))
    if config["momentum"]:
        for index, tp in enumerate(tparams):
            if index in ours.state:
                expected = theirs.state[tp]["momentum_buffer"].numpy()
                assert_agrees(ours.state[index]["momentum_buffer"], expected, "momentum_buffer")


@given(adamw_config, seeds)
def test_adamw_matches_torch(torch, config, seed):
    params = make_params(seed)
    tparams = torch_params(torch, params)
    ours, theirs = AdamW(params, **config), torch.optim.AdamW(tparams, **config)
    run_both(torch, ours, theirs, params, tparams, gradient_stream(seed))
    for index, tp in enumerate(tparams):
        assert (index in ours.state) == bool(theirs.state[tp])  # a parameter never stepped has no state
        if index in ours.state:
            assert ours.state[index]["step"] == int(theirs.state[tp]["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                assert_agrees(ours.state[index][key], theirs.state[tp][key].numpy(), key)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_float32_parameters_stay_float32_and_match_torch(torch, name):
    params = make_params(3, np.float32)
    tparams = torch_params(torch, params)
    if name == "sgd":
        ours, theirs = SGD(params, 0.1, momentum=0.9, weight_decay=0.01), torch.optim.SGD(tparams, 0.1, 0.9, weight_decay=0.01)
    else:
        ours, theirs = AdamW(params, 0.01), torch.optim.AdamW(tparams, 0.01)
    for step_grads in gradient_stream(3, skip=False):
        for p, tp, g in zip(params, tparams, step_grads):
            p.grad, tp.grad = g.astype(np.float32), torch.from_numpy(g.astype(np.float32))
        ours.step()
        theirs.step()
    for p, tp in zip(params, tparams):
        assert p.data.dtype == np.float32
        assert_agrees(p.data, tp.detach().numpy(), "float32 parameter", rtol=FLOAT32_ROUNDOFF)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_state_dict_resumes_exactly(name):
    make = (lambda ps: SGD(ps, 0.1, momentum=0.9, nesterov=True)) if name == "sgd" else (lambda ps: AdamW(ps, 0.01))
    grads = gradient_stream(5)
    straight = make_params(5)
    opt = make(straight)
    for step_grads in grads:
        for p, g in zip(straight, step_grads):
            p.grad = g
        opt.step()

    first = make_params(5)
    opt = make(first)
    for step_grads in grads[:5]:
        for p, g in zip(first, step_grads):
            p.grad = g
        opt.step()
    snapshot = opt.state_dict()
    weights = [p.data.copy() for p in first]  # a checkpoint: parameters and optimizer state
    assert snapshot["param_groups"][0]["params"] == [0, 1, 2]
    assert set(snapshot["state"]) <= {0, 1, 2}
    expected_keys = {"momentum_buffer"} if name == "sgd" else {"step", "exp_avg", "exp_avg_sq"}
    assert all(set(entry) == expected_keys for entry in snapshot["state"].values())
    opt.step()  # a snapshot is a copy: later steps do not change it
    resumed = [Parameter(w) for w in weights]
    opt = make(resumed)
    opt.load_state_dict(snapshot)
    for step_grads in grads[5:]:
        for p, g in zip(resumed, step_grads):
            p.grad = g
        opt.step()
    for p, q in zip(resumed, straight):
        np.testing.assert_array_equal(p.data, q.data)


def test_loads_a_torch_optimizer_state_dict(torch):
    grads = gradient_stream(7, skip=False)
    params = make_params(7)
    tparams = torch_params(torch, params)
    theirs = torch.optim.AdamW(tparams, 0.02, weight_decay=0.1)
    for step_grads in grads[:4]:
        for tp, g in zip(tparams, step_grads):
            tp.grad = torch.from_numpy(g)
        theirs.step()
    for p, tp in zip(params, tparams):
        p.data = tp.detach().numpy().copy()
    ours = AdamW(params)
    ours.load_state_dict(theirs.state_dict())
    assert ours.lr == 0.02 and ours.weight_decay == 0.1 and ours.state[0]["step"] == 4
    run_both(torch, ours, theirs, params, tparams, grads[4:])

    tparams = torch_params(torch, params)
    sgd = torch.optim.SGD(tparams, 0.1)  # momentum 0: torch stores momentum_buffer=None
    for tp, g in zip(tparams, grads[0]):
        tp.grad = torch.from_numpy(g)
    sgd.step()
    ours = SGD(params, 0.5)
    ours.load_state_dict(sgd.state_dict())
    assert ours.lr == 0.1 and ours.state == {}
    with pytest.raises(ValueError, match=r"\['amsgrad'\] must be False"):
        AdamW(params).load_state_dict(torch.optim.AdamW(tparams, amsgrad=True).state_dict())
    with pytest.raises(ValueError, match=r"\['dampening'\] must be 0"):
        SGD(params, 0.1).load_state_dict(torch.optim.SGD(tparams, 0.1, momentum=0.9, dampening=0.5).state_dict())


def test_load_state_dict_checks_everything_before_changing_anything():
    params = make_params(1)
    for p, g in zip(params, gradient_stream(1, steps=1, skip=False)[0]):
        p.grad = g
    opt = AdamW(params, 0.01)
    opt.step()
    good = opt.state_dict()

    def broken(change):
        sd = opt.state_dict()
        change(sd)
        return sd

    cases = [
        (ValueError, r"must have shape \(3, 4\)", lambda sd: sd["state"][0].update(exp_avg=np.zeros((4, 3)))),
        (ValueError, r"must have the keys \['exp_avg', 'exp_avg_sq', 'step'\]", lambda sd: sd["state"][0].pop("exp_avg")),
        (ValueError, r"keyed by parameter index in \[0, 3\)", lambda sd: sd["state"].update({3: sd["state"][0]})),
        (ValueError, r"must list 3 parameters", lambda sd: sd["param_groups"][0].update(params=[0, 1])),
        (ValueError, r"missing the hyperparameters \['eps'\]", lambda sd: sd["param_groups"][0].pop("eps")),
        (ValueError, r"lr must be a finite number >= 0", lambda sd: sd["param_groups"][0].update(lr=-1.0)),
        (ValueError, r"'step'\] must be a non-negative whole number", lambda sd: sd["state"][0].update(step=1.5)),
        (TypeError, r"\['exp_avg'\] must be an array", lambda sd: sd["state"][0].update(exp_avg=[0.0])),
        (ValueError, r"must be a list of one group", lambda sd: sd.update(param_groups=sd["param_groups"] * 2)),
    ]
    for error, message, change in cases:
        target = AdamW(params, 0.5)
        with pytest.raises(error, match=message):
            target.load_state_dict(broken(change))
        assert target.lr == 0.5 and target.state == {}  # untouched
    with pytest.raises(TypeError, match="state_dict must be a mapping with keys 'state' and 'param_groups'"):
        AdamW(params).load_state_dict({"state": {}})
    with pytest.raises(ValueError, match="must have the keys"):  # SGD's state is not AdamW's
        SGD(params, 0.1, momentum=0.9).load_state_dict(dict(good, param_groups=[dict(good["param_groups"][0], momentum=0.9, nesterov=False)]))


@given(
    st.sampled_from([2.0, 1.0, 3.0, math.inf, "inf", 2]),
    st.sampled_from([0.1, 1.0, 100.0]),
    st.sampled_from([np.float64, np.float32]),
    seeds,
)
def test_clip_grad_norm_matches_torch(torch, norm_type, max_norm, dtype, seed):
    params = make_params(seed, dtype)
    tparams = torch_params(torch, params)
    for p, tp, g in zip(params, tparams, gradient_stream(seed, steps=1)[0]):
        p.grad = None if g is None else g.astype(dtype)
        tp.grad = None if g is None else torch.from_numpy(g.astype(dtype))
    ours = clip_grad_norm_(params + params[:1], max_norm, norm_type)  # a tied parameter listed twice counts once
    theirs = torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type)
    assert isinstance(ours, float)
    rtol = CLOSED_FORM if dtype == np.float64 else FLOAT32_ROUNDOFF
    np.testing.assert_allclose(ours, float(theirs), rtol=rtol)
    for p, tp in zip(params, tparams):
        assert (p.grad is None) == (tp.grad is None)
        if p.grad is not None:
            assert p.grad.dtype == dtype
            assert_agrees(p.grad, tp.grad.numpy(), "clipped gradient", rtol)


def test_clip_grad_norm_rule():
    p, q = Parameter(np.zeros(2)), Parameter(np.zeros(1))
    p.grad, q.grad = np.array([3.0, 0.0]), np.array([4.0])  # total 2-norm 5
    assert clip_grad_norm_([p, q], 10.0) == 5.0
    np.testing.assert_array_equal(p.grad, [3.0, 0.0])  # under the limit: unchanged
    assert clip_grad_norm_([p, q], 1.0) == 5.0
    np.testing.assert_allclose(np.sqrt(np.sum(p.grad**2) + np.sum(q.grad**2)), 1.0 * 5 / (5 + 1e-6),
                               rtol=FEW_ROUNDINGS)
    assert clip_grad_norm_([Parameter(np.zeros(3))], 1.0) == 0.0  # no gradients at all
    assert clip_grad_norm_(Parameter(np.zeros(3)), 1.0) == 0.0  # a single Parameter is accepted, as torch


def test_sgd_and_adamw_by_hand():
    p = Parameter(np.array([1.0, -2.0]))
    opt = SGD([p], 0.1, momentum=0.5, weight_decay=0.1)
    p.grad = np.array([1.0, 1.0])
    opt.step()  # d = g + 0.1 θ = (1.1, 0.8); b = d; θ -= 0.1 b
    np.testing.assert_allclose(p.data, [1.0 - 0.11, -2.0 - 0.08], rtol=FEW_ROUNDINGS)
    opt.step()  # d = g + 0.1 θ; b = 0.5 b + d
    d = np.array([1.0, 1.0]) + 0.1 * np.array([0.89, -2.08])
    np.testing.assert_allclose(p.data, np.array([0.89, -2.08]) - 0.1 * (0.5 * np.array([1.1, 0.8]) + d),
                               rtol=FEW_ROUNDINGS)

    p = Parameter(np.array([1.0, -2.0]))
    opt = AdamW([p], lr=0.1, weight_decay=0.0)
    p.grad = np.array([0.3, -4.0])
    opt.step()  # first step: m̂ = g, v̂ = g², so θ moves by lr · g/(|g| + ε) ≈ lr · sign(g)
    np.testing.assert_allclose(p.data, [0.9, -1.9], rtol=ADAM_STEP_WITHOUT_EPS)


def test_skips_missing_gradients_and_duplicates_and_zero_grad():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(3))
    opt = AdamW([a, b, a], lr=0.1)  # a listed twice is one parameter
    assert len(opt.params) == 2
    a.grad = np.ones(2)
    opt.step()
    np.testing.assert_array_equal(b.data, np.ones(3))  # no gradient: untouched, no state
    assert set(opt.state) == {0} and opt.state[0]["step"] == 1
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(a.grad, 0.0)
    assert b.grad is None
    opt.zero_grad()
    assert a.grad is None
    assert repr(SGD([a], 0.1)) == "SGD(1 parameters, lr=0.1, momentum=0.0, weight_decay=0.0, nesterov=False)"


@given(st.integers(1, 1024), st.integers(1, 500), st.sampled_from([1.0, 2.0, 0.5]))
def test_warmup_inverse_sqrt_closed_form_and_peak(d_model, warmup, factor):
    schedule = WarmupInverseSqrt(d_model, warmup, factor)
    steps = np.arange(1, 3 * warmup + 2)
    lrs = np.array([schedule.lr_at(int(t)) for t in steps])
    closed = factor * d_model**-0.5 * np.minimum(steps**-0.5, steps * warmup**-1.5)
    np.testing.assert_allclose(lrs, closed, rtol=SHORT_CHAIN)
    assert int(steps[np.argmax(lrs)]) == warmup
    np.testing.assert_allclose(lrs.max(), factor / math.sqrt(d_model * warmup), rtol=SHORT_CHAIN)
    assert np.all(np.diff(lrs[:warmup]) > 0) and np.all(np.diff(lrs[warmup - 1:]) < 0)


def test_paper_schedule_values():
    schedule = WarmupInverseSqrt(512, 4000)
    assert schedule.lr_at(1) == pytest.approx(512**-0.5 * 4000**-1.5, rel=FEW_ROUNDINGS)
    assert schedule.lr_at(4000) == pytest.approx(512**-0.5 * 4000**-0.5, rel=FEW_ROUNDINGS)  # ≈ 7.0e-4, the peak
    assert schedule.lr_at(16000) == pytest.approx(schedule.lr_at(4000) / 2, rel=FEW_ROUNDINGS)


@given(st.integers(0, 50), st.integers(1, 100), st.sampled_from([0.0, 1e-5]))
def test_warmup_cosine_closed_form(warmup, decay, min_lr):
    total, max_lr = warmup + decay, 3e-4
    schedule = WarmupCosine(max_lr, warmup, total, min_lr)
    for t in range(1, total + 5):
        if t <= warmup:
            expected = max_lr * t / warmup
        elif t <= total:
            expected = min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * (t - warmup) / decay))
        else:
            expected = min_lr
        # 1 + cos(·) cancels near the end of the decay: compare on the scale of max_lr there
        assert schedule.lr_at(t) == pytest.approx(expected, rel=SHORT_CHAIN, abs=SHORT_CHAIN * max_lr)
    lrs = [schedule.lr_at(t) for t in range(1, total + 5)]
    if warmup:
        assert schedule.lr_at(warmup) == max_lr and int(np.argmax(lrs)) + 1 == warmup
    assert schedule.lr_at(total) == pytest.approx(min_lr, abs=FEW_ROUNDINGS * max_lr)


def test_schedule_drives_the_optimizer():
    p = Parameter(np.zeros(1))
    opt = SGD([p], lr=123.0)
    schedule = WarmupInverseSqrt(16, warmup_steps=3, optimizer=opt)
    assert opt.lr == schedule.lr_at(1) and schedule.last_step == 0
    before = 0.0
    for t in range(1, 8):  # update t moves θ by lr_at(t) (grad 1)
        p.grad = np.ones(1)
        opt.step()
        assert before - p.data[0] == pytest.approx(schedule.lr_at(t), rel=CLOSED_FORM)
        before = p.data[0]
        assert schedule.step() == schedule.lr_at(t + 1) == opt.lr
    saved = schedule.state_dict()
    resumed = WarmupInverseSqrt(16, warmup_steps=3, optimizer=SGD([p], lr=1.0))
    resumed.load_state_dict(saved)
    assert resumed.last_step == 7 and resumed.optimizer.lr == schedule.lr_at(8)


def test_schedule_drives_a_torch_optimizer(torch):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = WarmupCosine(1e-3, 10, 100, optimizer=opt)
    schedule.step()
    assert opt.param_groups[0]["lr"] == schedule.lr_at(2) == 2e-4


def test_bad_input():
    p = Parameter(np.zeros(2))
    cases = [
        (ValueError, "lr must be a finite number >= 0", lambda: SGD([p], -0.1)),
        (TypeError, "lr must be a float", lambda: SGD([p], "0.1")),
        (ValueError, "momentum must be a finite number >= 0", lambda: SGD([p], 0.1, momentum=-0.5)),
        (ValueError, "weight_decay must be a finite number >= 0", lambda: SGD([p], 0.1, weight_decay=-1.0)),
        (ValueError, "nesterov=True requires momentum > 0", lambda: SGD([p], 0.1, nesterov=True)),
        (TypeError, "nesterov must be a bool", lambda: SGD([p], 0.1, momentum=0.9, nesterov="yes")),
        (ValueError, "params must contain at least one Parameter", lambda: SGD([], 0.1)),
        (TypeError, "params must contain only Parameters", lambda: SGD([np.zeros(2)], 0.1)),
        (TypeError, "params must be an iterable of Parameters", lambda: SGD(p, 0.1)),
        (ValueError, r"betas\[0\] must be a finite number >= 0.0 and < 1.0", lambda: AdamW([p], betas=(1.0, 0.9))),
        (ValueError, r"betas\[1\] must be a finite number >= 0.0 and < 1.0", lambda: AdamW([p], betas=(0.9, -0.1))),
        (TypeError, "betas must be a pair", lambda: AdamW([p], betas=0.9)),
        (ValueError, "eps must be a finite number >= 0", lambda: AdamW([p], eps=-1e-8)),
        (ValueError, "lr must be a finite number >= 0", lambda: AdamW([p], lr=math.nan)),
        (ValueError, "weight_decay must be a finite number >= 0", lambda: AdamW([p], weight_decay=-0.01)),
        (ValueError, "max_norm must be a finite number >= 0", lambda: clip_grad_norm_([p], -1.0)),
        (ValueError, "norm_type must be a positive float or inf", lambda: clip_grad_norm_([p], 1.0, 0.0)),
        (TypeError, "norm_type must be a positive float or inf", lambda: clip_grad_norm_([p], 1.0, "two")),
        (TypeError, "params must contain only Parameters", lambda: clip_grad_norm_([np.zeros(2)], 1.0)),
        (ValueError, "d_model must be >= 1", lambda: WarmupInverseSqrt(0)),
        (ValueError, "warmup_steps must be >= 1", lambda: WarmupInverseSqrt(512, 0)),
        (ValueError, "factor must be a finite number >= 0", lambda: WarmupInverseSqrt(512, factor=-2.0)),
        (ValueError, "step must be >= 1", lambda: WarmupInverseSqrt(512).lr_at(0)),
        (TypeError, "step must be an int", lambda: WarmupCosine(1.0, 1, 2).lr_at(1.5)),
        (ValueError, "total_steps must be >= 10", lambda: WarmupCosine(1.0, 10, 5)),
        (ValueError, "warmup_steps must be >= 0", lambda: WarmupCosine(1.0, -1, 5)),
        (ValueError, r"min_lr must be <= max_lr \(0.001\)", lambda: WarmupCosine(1e-3, 1, 5, min_lr=0.1)),
        (ValueError, "max_lr must be a finite number >= 0", lambda: WarmupCosine(-1e-3, 1, 5)),
        (TypeError, "optimizer must be an optimizer", lambda: WarmupCosine(1e-3, 1, 5, optimizer="adam")),
        (TypeError, "state_dict must be a mapping with key 'last_step'", lambda: WarmupCosine(1e-3, 1, 5).load_state_dict({})),
        (ValueError, r"state_dict\['last_step'\] must be >= 0", lambda: WarmupCosine(1e-3, 1, 5).load_state_dict({"last_step": -1})),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()
