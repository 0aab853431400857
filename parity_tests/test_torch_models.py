"""accelerated.torch's models, loss, optimizers, decoding and training against the float64 reference.

Tiny configurations (d_model 8, 2 heads, 1–2 layers, vocabulary 7). As in test_torch_parity.py,
each example builds the reference in float64 and the torch model in the tested dtype from one
seed; their state dicts must be identical, then both run on the torch model's (rounded)
weights and every output and parameter gradient must agree within parity_tests/tolerances.py.
Optimizer trajectories, decoded tokens, bad input and a short `rosetta train --backend torch`
run are checked against the reference too.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference as R
from parity_tests.backends import (
    backend_dtype_params,
    backend_params,
    round_to,
)
from parity_tests.strategies import seeds
from parity_tests.test_torch_parity import build_pair, check_bad_input, check_parity, native
from parity_tests.tolerances import CLOSED_FORM, FORWARD_TOL, GRADIENT_TOL, SHORT_CHAIN, assert_close

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'rosetta-transformer[torch]')")
torch.set_num_threads(1)  # tiny tensors: threads only cost time on the shared cores

TORCH = backend_dtype_params("torch")
F64 = np.float64
VOCAB, D, HEADS, D_FF, MAX_LEN = 7, 8, 2, 16, 8


def token_ids(seed, shape, vocab=VOCAB):
    return np.random.default_rng(seed).integers(0, vocab, shape)


def key_padding(rng, batch, length):
    """A boolean key padding mask (True = ignore); a length of 0 hides a whole sequence."""
    lengths = rng.integers(0, length + 1, size=batch)
    return np.arange(length)[None, :] >= lengths[:, None]


def transformer_builder(seed, **options):
    config = dict(num_encoder_layers=1, num_decoder_layers=2, dropout=0.0, max_len=MAX_LEN)
    return lambda ns, dt: ns.Transformer(VOCAB, VOCAB, D, HEADS, D_FF, **{**config, **options}, seed=seed, dtype=dt)


def lm_builder(kind, seed, num_layers=2, **options):
    def build(ns, dt):
        if kind == "gpt":
            return ns.DecoderLM.gpt(VOCAB, D, HEADS, D_FF, num_layers, dropout=0.0, max_len=MAX_LEN, seed=seed,
                                    dtype=dt)
        if kind == "llama":
            return ns.DecoderLM.llama(VOCAB, D, HEADS, D_FF, num_layers, max_len=MAX_LEN, seed=seed, dtype=dt,
                                      **options)
        return ns.DecoderLM(VOCAB, D, HEADS, D_FF, num_layers, max_len=MAX_LEN, seed=seed, dtype=dt, **options)

    return build


# ---- models: initial weights, outputs, every parameter gradient ------------------------------------------


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(tie=st.booleans(), norm_first=st.booleans(), activation=st.sampled_from(["relu", "gelu"]),
       bias=st.booleans(), layers=st.tuples(st.integers(1, 2), st.integers(1, 2)), pad=st.booleans(),
       padding_idx=st.sampled_from([None, 0]), seed=seeds)
def test_transformer(backend, dtype, tie, norm_first, activation, bias, layers, pad, padding_idx, seed):
    build = transformer_builder(seed, tie_embeddings=tie, norm_first=norm_first, activation=activation, bias=bias,
                                num_encoder_layers=layers[0], num_decoder_layers=layers[1], padding_idx=padding_idx)
    rng = np.random.default_rng(seed)
    src, tgt = token_ids(seed, (2, 4)), token_ids(seed + 1, (2, 3))
    kwargs = {}
    if pad:
        src_pad = key_padding(rng, 2, 4)
        kwargs = dict(src_key_padding_mask=src_pad, memory_key_padding_mask=src_pad,
                      tgt_key_padding_mask=key_padding(rng, 2, 3))
    check_parity(backend, dtype, build, [src, tgt], kwargs, seed=seed, what="Transformer")


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(num_token_types=st.sampled_from([0, 2]), pass_types=st.booleans(), pad=st.booleans(),
       num_layers=st.integers(1, 2), seed=seeds)
def test_encoder_model(backend, dtype, num_token_types, pass_types, pad, num_layers, seed):
    def build(ns, dt):
        return ns.EncoderModel(VOCAB, D, HEADS, D_FF, num_layers, dropout=0.0, max_len=MAX_LEN,
                               num_token_types=num_token_types, seed=seed, dtype=dt)

    rng = np.random.default_rng(seed)
    kwargs = {}
    if num_token_types and pass_types:
        kwargs["token_type_ids"] = token_ids(seed + 2, (2, 5), num_token_types)
    if pad:
        kwargs["key_padding_mask"] = key_padding(rng, 2, 5)
    check_parity(backend, dtype, build, [token_ids(seed, (2, 5))], kwargs, seed=seed, what="EncoderModel")


@st.composite
def lm_config(draw):
    kind = draw(st.sampled_from(["gpt", "llama", "custom"]))
    options = {}
    if kind == "llama":
        options["num_kv_heads"] = draw(st.sampled_from([None, 1]))
    if kind == "custom":  # a GPT-like model with the other switches drawn
        options = dict(tie_embeddings=draw(st.booleans()), norm_first=draw(st.booleans()),
                       norm=draw(st.sampled_from(["layernorm", "rmsnorm"])),
                       positional=draw(st.sampled_from(["learned", "sinusoidal", None])),
                       rotary=draw(st.booleans()), activation=draw(st.sampled_from(["gelu", "swiglu"])))
    return kind, options


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(config=lm_config(), num_layers=st.integers(1, 2), pad=st.booleans(), seed=seeds)
def test_decoder_lm(backend, dtype, config, num_layers, pad, seed):
    kind, options = config
    kwargs = {"key_padding_mask": key_padding(np.random.default_rng(seed), 2, 5)} if pad else {}
    check_parity(backend, dtype, lm_builder(kind, seed, num_layers, **options), [token_ids(seed, (2, 5))], kwargs,
                 seed=seed, what=f"DecoderLM({kind})")


@pytest.mark.parametrize("backend", backend_params("torch"))
@pytest.mark.parametrize("model", ["transformer", "transformer_tied", "encoder_model", "gpt"])
def test_float32_models_start_from_the_same_bits(backend, model):
    """Rescaled embedding tables are multiplied in float64 and rounded once on both sides: equal to the bit."""
    build = {
        "transformer": lambda ns, dtype: ns.Transformer(50, 60, 32, 4, 64, 1, 1, seed=3, dtype=dtype),
        "transformer_tied": lambda ns, dtype: ns.Transformer(50, 50, 32, 4, 64, 1, 1, tie_embeddings=True, seed=3,
                                                             dtype=dtype),
        "encoder_model": lambda ns, dtype: ns.EncoderModel(40, 32, 4, 64, 1, num_token_types=2, seed=4, dtype=dtype),
        "gpt": lambda ns, dtype: ns.DecoderLM.gpt(70, d_model=32, num_heads=4, num_layers=1, seed=5, dtype=dtype),
    }[model]
    reference, accelerated = build(R, np.float32), build(backend.rt, torch.float32)
    got = accelerated.state_dict()
    for name, value in reference.state_dict().items():
        np.testing.assert_array_equal(backend.rt.to_numpy(got[name]), value, err_msg=name)


@pytest.mark.parametrize("backend", backend_params("torch"))
def test_tied_parameter_is_one_listed_once_and_loads_everywhere(backend):
    rt = backend.rt
    model = transformer_builder(0, tie_embeddings=True)(rt, torch.float64)
    shared = model.encoder.embedding.weight
    assert model.decoder.embedding.weight is shared and model.generator.weight is shared
    names = [name for name, _ in model.named_parameters()]
    assert "encoder.embedding.weight" in names and "generator.weight" not in names
    assert list(model.state_dict()) == list(R.Transformer(VOCAB, VOCAB, D, HEADS, D_FF, 1, 2, max_len=MAX_LEN,
                                                          tie_embeddings=True, seed=0).state_dict())
    wrapped = torch.nn.ModuleDict({"model": model})  # nested: torch's recursion drops the aliases too
    assert "model.generator.weight" not in wrapped.state_dict() and "model.generator.bias" in wrapped.state_dict()
    reference_model = transformer_builder(5, tie_embeddings=True)(R, F64)
    model.load_state_dict(reference_model.state_dict())
    table = torch.from_numpy(reference_model.encoder.embedding.weight.data)
    assert torch.equal(model.generator.weight, table) and torch.equal(model.decoder.embedding.weight, table)
    lm = lm_builder("gpt", 0)(rt, torch.float32)
    assert lm.lm_head.weight is lm.decoder.embedding.weight and "lm_head.weight" not in lm.state_dict()


@pytest.mark.parametrize("backend", backend_params("torch"))
def test_backward_is_for_forward_only(backend):
    rt = backend.rt
    model = transformer_builder(1)(rt, torch.float64).to(backend.device)
    src = native(backend, token_ids(0, (2, 4)), "float64")
    tgt = native(backend, token_ids(1, (2, 3)), "float64")
    logits = model(src, tgt)
    assert model.backward(torch.ones_like(logits)) == (None, None)
    model(src, tgt)
    model.encode(src)
    with pytest.raises(ValueError, match="forward"):
        model.backward(torch.ones_like(logits))
    lm = lm_builder("llama", 1)(rt, torch.float64).to(backend.device)
    cache = rt.KVCache()
    with torch.no_grad():
        lm(src, cache=cache)
    with pytest.raises(ValueError, match="cache"):
        lm.backward(torch.ones(2, 4, VOCAB, dtype=torch.float64, device=backend.device))


@pytest.mark.parametrize("backend", backend_params("torch"))
def test_token_ids_are_read_once_per_step_and_again_after_a_write(backend):
    """forward checks src and tgt, and the embeddings check them again: one device read each
    (on a GPU every read is a host sync); an in-place write makes the remembered range stale."""
    from rosetta.bench.dispatch import count_ops, host_syncs

    model = transformer_builder(1)(backend.rt, torch.float64).to(backend.device)
    src = native(backend, token_ids(0, (2, 4)), "float64")
    tgt = native(backend, token_ids(1, (2, 3)), "float64")
    counts = count_ops(lambda: model(src, tgt))
    assert counts["aten.aminmax.default"] == 2 and host_syncs(counts) == 2
    assert host_syncs(count_ops(lambda: model(src, tgt))) == 0  # unchanged tensors: remembered
    src[1, 2] = VOCAB  # written in place: read again
    with pytest.raises(ValueError, match=rf"src must lie in \[0, {VOCAB}\) \(the vocabulary\), got id {VOCAB}"):
        model(src, tgt)
    tgt.add_(-10)
    with pytest.raises(ValueError, match="tgt must lie in"):
        model.decode(tgt, model.encode(src[:1, :1] * 0))
    compiled = torch.compile(model, backend="eager")  # the check runs eagerly beside the traced graph
    src[1, 2], tgt = 0, tgt + 10
    compiled(src, tgt)
    assert host_syncs(count_ops(lambda: compiled(src, tgt))) == 0
    src[0, 0] = -1
    with pytest.raises(ValueError, match="src must lie in .* got id -1"):
        compiled(src, tgt)


@pytest.mark.parametrize("backend", backend_params("torch"))
def test_numpy_bools_are_flags_on_every_backend(backend):
    """np.True_ is a bool flag to the reference, so to torch too (NumPy 2 renamed its type to numpy.bool)."""
    x = np.random.default_rng(0).standard_normal((1, 3, 8))
    outputs = []
    for ns, array in ((R, x), (backend.rt, native(backend, x, "float64"))):
        module = ns.MultiHeadAttention(8, 2, bias=np.True_, rotary=np.True_, seed=0, dtype=F64 if ns is R else
                                       torch.float64)
        module = module if ns is R else module.to(backend.device)
        outputs.append(module(array, is_causal=np.True_, need_weights=np.False_))
    assert_close(backend.rt.to_numpy(outputs[1]), outputs[0], "float64", "MultiHeadAttention with NumPy bools",
                 FORWARD_TOL)


# ---- the loss ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), num_classes=st.integers(1, 6),
       label_smoothing=st.sampled_from([0.0, 0.1, 1.0]), reduction=st.sampled_from(["mean", "sum", "none"]),
       ignore_index=st.sampled_from([-100, 0]), ignored=st.sampled_from([0.0, 0.3, 1.0]), seed=seeds)
def test_cross_entropy(backend, dtype, lead, num_classes, label_smoothing, reduction, ignore_index, ignored, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((*lead, num_classes)) * 3
    target = rng.integers(0, num_classes, size=lead)
    target = np.where(rng.random(lead) < ignored, ignore_index, target)  # ignored = 1: every target ignored
    out = check_parity(backend, dtype, lambda ns, dt: ns.CrossEntropyLoss(ignore_index, label_smoothing, reduction),
                       [logits, target], seed=seed, what="CrossEntropyLoss")
    if ignored == 1.0:
        assert not np.any(out[0]), "a loss over ignored targets only is 0"


@pytest.mark.parametrize("backend", backend_params("torch"))
def test_loss_all_ignored_and_default_grad_output(backend):
    rt = backend.rt
    loss_fn = rt.CrossEntropyLoss(ignore_index=2, label_smoothing=0.1)
    logits = torch.randn(3, 4, 5, dtype=torch.float64, device=backend.device)
    loss = loss_fn(logits, torch.full((3, 4), 2, device=backend.device))
    dlogits, dtarget = loss_fn.backward()  # grad_output defaults to 1.0, as on the reference
    assert loss.item() == 0.0 and dtarget is None and torch.equal(dlogits, torch.zeros_like(logits))
    ref_fn = R.CrossEntropyLoss(label_smoothing=0.1)
    target = np.array([[0, 4, 1, 3]] * 3)
    expected = ref_fn(rt.to_numpy(logits), target)
    got = rt.CrossEntropyLoss(label_smoothing=0.1)
    value = got(logits, native(backend, target, "float64"))
    assert_close(rt.to_numpy(value), expected, "float64", "loss", FORWARD_TOL)
    assert_close(rt.to_numpy(got.backward(0.5)[0]), ref_fn.backward(0.5)[0], "float64", "dlogits", GRADIENT_TOL)


# ---- optimizers, clipping and schedules: trajectories -----------------------------------------------------


@st.composite
def optimizer_config(draw):
    name = draw(st.sampled_from(["SGD", "AdamW"]))
    if name == "SGD":
        momentum = draw(st.sampled_from([0.0, 0.9]))
        options = dict(lr=0.1, momentum=momentum, weight_decay=draw(st.sampled_from([0.0, 0.01])),
                       nesterov=momentum > 0 and draw(st.booleans()))
    else:
        options = dict(lr=0.01, betas=(0.9, draw(st.sampled_from([0.98, 0.999]))), eps=1e-8,
                       weight_decay=draw(st.sampled_from([0.0, 0.1])))
    return name, options, draw(st.sampled_from([None, 0.5, 100.0])), draw(st.sampled_from(["none", "cosine", "sqrt"]))


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(config=optimizer_config(), seed=seeds)
def test_optimizer_trajectory(backend, dtype, config, seed):
    """Five steps of SGD / AdamW (with clipping and a schedule) on a tied model's parameters, from the
    same gradients: every parameter, every clipping norm and the optimizer state match the reference."""
    name, options, max_norm, schedule = config
    rt = backend.rt
    ref, mod = build_pair(backend, dtype, lm_builder("gpt", seed, num_layers=1))
    ref_opt, mod_opt = getattr(R, name)(ref.parameters(), **options), getattr(rt, name)(mod.parameters(), **options)
    if schedule == "cosine":
        ref_sched, mod_sched = (ns.WarmupCosine(options["lr"], 2, 4, 0.1 * options["lr"], optimizer=opt)
                                for ns, opt in ((R, ref_opt), (rt, mod_opt)))
    elif schedule == "sqrt":
        ref_sched, mod_sched = (ns.WarmupInverseSqrt(D, 2, options["lr"], optimizer=opt)
                                for ns, opt in ((R, ref_opt), (rt, mod_opt)))
    rng = np.random.default_rng(seed)
    mod_params = dict(mod.named_parameters())
    for step in range(5):
        ref_opt.zero_grad()
        mod_opt.zero_grad()
        for index, (param_name, p) in enumerate(ref.named_parameters()):
            if step == 0 and index == 1:
                continue  # no gradient: the parameter is skipped (and its AdamW step count lags)
            g = round_to(rng.standard_normal(p.shape), dtype)
            p.grad = g.copy()
            mod_params[param_name].grad = native(backend, g, dtype)
        if max_norm is not None:
            expected = R.clip_grad_norm_(ref.parameters(), max_norm)
            got = rt.clip_grad_norm_(mod.parameters(), max_norm)
            assert isinstance(got, float) and abs(got - expected) <= FORWARD_TOL[np.dtype(dtype)] * expected
        ref_opt.step()
        mod_opt.step()
        if schedule != "none":
            assert mod_sched.step() == ref_sched.step()
            assert mod_opt.lr == ref_opt.lr
    for param_name, p in ref.named_parameters():
        assert_close(rt.to_numpy(mod_params[param_name]), p.data, dtype, f"{name} {param_name}", FORWARD_TOL)
    ref_state, mod_state = ref_opt.state_dict(), mod_opt.state_dict()
    assert mod_opt.hyperparameters() == ref_opt.hyperparameters()
    for index, entry in ref_state["state"].items():
        for key, value in entry.items():
            got = rt.to_numpy(mod_state["state"][index][key])
            assert_close(got, value, dtype, f"{name} state {index} {key}", FORWARD_TOL)


@pytest.mark.parametrize("backend", backend_params("torch"))
@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_optimizer_state_dicts_cross_backends(backend, name):
    """A reference optimizer's state dict resumes on torch (and torch's on the reference), exactly."""
    rt = backend.rt
    options = {"SGD": dict(lr=0.1, momentum=0.9, nesterov=True), "AdamW": dict(lr=0.01, weight_decay=0.1)}[name]
    ref = R.Linear(3, 2, seed=0, dtype=F64)
    mod = rt.Linear(3, 2, seed=0, dtype=torch.float64).to(backend.device)
    ref_opt, mod_opt = getattr(R, name)(ref.parameters(), **options), getattr(rt, name)(mod.parameters(), **options)
    rng = np.random.default_rng(0)

    def step(grads):
        for p, q, g in zip(ref.parameters(), mod.parameters(), grads):
            p.grad, q.grad = g.copy(), native(backend, g, "float64")
        ref_opt.step()
        mod_opt.step()

    step([rng.standard_normal(p.shape) for p in ref.parameters()])
    fresh_mod = getattr(rt, name)(mod.parameters(), **options)
    fresh_mod.load_state_dict(ref_opt.state_dict())  # NumPy arrays and integer steps into torch.optim
    fresh_ref = getattr(R, name)(ref.parameters(), **options)
    fresh_ref.load_state_dict(mod_opt.state_dict())  # torch tensors into the reference
    ref_opt, mod_opt = fresh_ref, fresh_mod
    step([rng.standard_normal(p.shape) for p in ref.parameters()])
    for p, q in zip(ref.parameters(), mod.parameters()):
        np.testing.assert_allclose(rt.to_numpy(q), p.data, rtol=CLOSED_FORM, atol=SHORT_CHAIN)


@pytest.mark.parametrize("backend", backend_params("torch"))
def test_training_steps_match_reference(backend):
    """model → label-smoothed loss → backward → clip → AdamW → schedule, five times, in float64."""
    rt = backend.rt
    ref, mod = build_pair(backend, "float64", transformer_builder(3, tie_embeddings=True, padding_idx=0))
    losses = []
    for ns, model in ((R, ref), (rt, mod)):
        loss_fn = ns.CrossEntropyLoss(ignore_index=0, label_smoothing=0.1)
        opt = ns.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.98))
        schedule = ns.WarmupCosine(3e-3, 2, 5, optimizer=opt)
        rng = np.random.default_rng(0)
        run = []
        for _ in range(5):
            src, tgt_in, tgt_out = (rng.integers(0, VOCAB, (3, 4)) for _ in range(3))
            pad = src == 0
            convert = (lambda x: x) if ns is R else (lambda x: native(backend, x, "float64"))
            logits = model(convert(src), convert(tgt_in), src_key_padding_mask=convert(pad),
                           memory_key_padding_mask=convert(pad))
            run.append(float(ns.to_numpy(loss_fn(logits, convert(tgt_out)))))
            opt.zero_grad()
            model.backward(loss_fn.backward()[0])
            ns.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            schedule.step()
        losses.append(run)
    np.testing.assert_allclose(losses[1], losses[0], rtol=FORWARD_TOL[np.dtype(np.float64)])
    mod_params = dict(mod.named_parameters())
    for name, p in ref.named_parameters():
        assert_close(rt.to_numpy(mod_params[name]), p.data, "float64", name, FORWARD_TOL)


# ---- decoding: the same tokens from the same weights --------------------------------------------------------


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(norm_first=st.booleans(), tie=st.booleans(), pad=st.booleans(), use_cache=st.booleans(),
       beam_size=st.integers(1, 3), alpha=st.sampled_from([0.0, 0.6]), seed=seeds)
def test_greedy_and_beam_search(backend, dtype, norm_first, tie, pad, use_cache, beam_size, alpha, seed):
    rt = backend.rt
    ref, mod = build_pair(backend, dtype, transformer_builder(seed, norm_first=norm_first, tie_embeddings=tie))
    src = token_ids(seed, (2, 4))
    mask = key_padding(np.random.default_rng(seed), 2, 4) if pad else None
    m_src, m_mask = native(backend, src, dtype), None if mask is None else native(backend, mask, dtype)
    mod.train()
    expected = R.greedy_decode(ref, src, 6, 1, 2, src_key_padding_mask=mask, use_cache=use_cache)
    got = rt.greedy_decode(mod, m_src, 6, 1, 2, src_key_padding_mask=m_mask, use_cache=use_cache)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int64
    np.testing.assert_array_equal(rt.to_numpy(got), expected)
    assert mod.training and all(m.training for m in mod.modules()), "the model's mode is restored"
    ref_tokens, ref_scores = R.beam_search(ref, src, 6, 1, 2, beam_size, alpha, src_key_padding_mask=mask)
    tokens, scores = rt.beam_search(mod, m_src, 6, 1, 2, beam_size, alpha, src_key_padding_mask=m_mask)
    np.testing.assert_array_equal(rt.to_numpy(tokens), ref_tokens)
    assert_close(rt.to_numpy(scores), ref_scores, dtype, "beam scores", FORWARD_TOL)
    assert all(p.grad is None for p in mod.parameters()), "decoding runs without autograd"


@pytest.mark.parametrize("backend, dtype", TORCH)
@given(config=lm_config(), temperature=st.sampled_from([0.0, 0.7, 1.0]), top_k=st.sampled_from([None, 1, 3]),
       eos=st.booleans(), use_cache=st.booleans(), seed=seeds)
def test_generate(backend, dtype, config, temperature, top_k, eos, use_cache, seed):
    kind, options = config
    ref, mod = build_pair(backend, dtype, lm_builder(kind, seed, 1, **options))
    prompt = token_ids(seed, (3, 2))
    kwargs = dict(temperature=temperature, top_k=top_k, eos_id=2 if eos else None, seed=seed, use_cache=use_cache)
    expected = R.generate(ref, prompt, 5, **kwargs)
    got = backend.rt.generate(mod, native(backend, prompt, dtype), 5, **kwargs)
    np.testing.assert_array_equal(backend.rt.to_numpy(got), expected)


# ---- bad input: the reference's exception types ------------------------------------------------------------


def _tiny(ns, **options):
    return ns.Transformer(VOCAB, VOCAB, D, HEADS, D_FF, 1, 1, max_len=MAX_LEN, seed=0, **options)


def _lm(ns, **options):
    return ns.DecoderLM(VOCAB, D, HEADS, D_FF, 1, max_len=MAX_LEN, seed=0, **options)


def _bert(ns, **options):
    return ns.EncoderModel(VOCAB, D, HEADS, D_FF, 1, max_len=MAX_LEN, seed=0, **options)


def _loss(ns, a, logits, target, **options):
    return ns.CrossEntropyLoss(**options)(a(logits), a(target))


IDS = np.array([[1, 2, 3]])
LOGITS = np.zeros((2, 3), np.float32)
BAD_INPUT = [
    # (label, argument named in the message, call(ns, arr)), arr converts NumPy to the backend's arrays
    ("Transformer tie with two vocabularies", "tie_embeddings",
     lambda ns, a: ns.Transformer(5, 6, D, HEADS, D_FF, tie_embeddings=True)),
    ("Transformer tie type", "tie_embeddings", lambda ns, a: _tiny(ns, tie_embeddings="yes")),
    ("Transformer src id", "src", lambda ns, a: _tiny(ns)(a(np.array([[1, 7]])), a(IDS))),
    ("Transformer src float", "src", lambda ns, a: _tiny(ns)(a(np.ones((1, 3), np.float32)), a(IDS))),
    ("Transformer src rank", "src", lambda ns, a: _tiny(ns)(a(np.array([1, 2])), a(IDS))),
    ("Transformer src too long", "src", lambda ns, a: _tiny(ns)(a(np.zeros((1, MAX_LEN + 1), np.int64)), a(IDS))),
    ("Transformer tgt batch", "tgt", lambda ns, a: _tiny(ns)(a(IDS), a(np.zeros((2, 3), np.int64)))),
    ("Transformer padding mask shape", "src_key_padding_mask", lambda ns, a: _tiny(ns)(
        a(IDS), a(IDS), src_key_padding_mask=a(np.zeros((1, 4), bool)))),
    ("Transformer padding mask dtype", "tgt_key_padding_mask", lambda ns, a: _tiny(ns)(
        a(IDS), a(IDS), tgt_key_padding_mask=a(np.zeros((1, 3), np.int64)))),
    ("Transformer memory dtype", "memory", lambda ns, a: _tiny(ns).decode(a(IDS), a(np.zeros((1, 3, D))))),
    ("Transformer memory batch", "memory", lambda ns, a: _tiny(ns).decode(a(IDS), a(np.zeros((2, 3, D), np.float32)))),
    ("EncoderModel types without a table", "token_type_ids", lambda ns, a: _bert(ns)(a(IDS), a(IDS))),
    ("EncoderModel type id", "token_type_ids", lambda ns, a: _bert(ns, num_token_types=2)(a(IDS), a(IDS))),
    ("EncoderModel type shape", "token_type_ids", lambda ns, a: _bert(ns, num_token_types=2)(
        a(IDS), a(np.zeros((1, 2), np.int64)))),
    ("EncoderModel num_token_types", "num_token_types", lambda ns, a: _bert(ns, num_token_types=-1)),
    ("DecoderLM rotary max_len", "max_len", lambda ns, a: ns.DecoderLM(VOCAB, D, HEADS, D_FF, 1, rotary=True,
                                                                       positional=None, max_len=5000)),
    ("DecoderLM padding mask", "key_padding_mask", lambda ns, a: _lm(ns)(a(IDS), key_padding_mask=a(np.zeros((1, 4), bool)))),
    ("DecoderLM cache type", "cache", lambda ns, a: _lm(ns)(a(IDS), cache={})),
    ("DecoderLM ids", "ids", lambda ns, a: _lm(ns)(a(np.array([[0, -1]])))),
    ("loss label_smoothing", "label_smoothing", lambda ns, a: ns.CrossEntropyLoss(label_smoothing=1.5)),
    ("loss ignore_index", "ignore_index", lambda ns, a: ns.CrossEntropyLoss(ignore_index="pad")),
    ("loss reduction", "reduction", lambda ns, a: ns.CrossEntropyLoss(reduction="avg")),
    ("loss target range", "target", lambda ns, a: _loss(ns, a, LOGITS, np.array([0, 3]))),
    ("loss target shape", "target", lambda ns, a: _loss(ns, a, LOGITS, np.array([0, 1, 2]))),
    ("loss target float", "target", lambda ns, a: _loss(ns, a, LOGITS, np.array([0.0, 1.0]))),
    ("loss logits int", "logits", lambda ns, a: _loss(ns, a, np.zeros((2, 3), np.int64), np.array([0, 1]))),
    ("SGD lr", "lr", lambda ns, a: ns.SGD(ns.Linear(2, 2).parameters(), lr=-1.0)),
    ("SGD nesterov", "nesterov", lambda ns, a: ns.SGD(ns.Linear(2, 2).parameters(), lr=0.1, nesterov=True)),
    ("SGD empty", "params", lambda ns, a: ns.SGD([], lr=0.1)),
    ("SGD a single tensor", "params", lambda ns, a: ns.SGD(next(iter(ns.Linear(2, 2).parameters())), lr=0.1)),
    ("AdamW betas pair", "betas", lambda ns, a: ns.AdamW(ns.Linear(2, 2).parameters(), betas=(0.9,))),
    ("AdamW beta1", "betas[0]", lambda ns, a: ns.AdamW(ns.Linear(2, 2).parameters(), betas=(1.0, 0.9))),
    ("AdamW eps", "eps", lambda ns, a: ns.AdamW(ns.Linear(2, 2).parameters(), eps="small")),
    ("clip max_norm", "max_norm", lambda ns, a: ns.clip_grad_norm_(ns.Linear(2, 2).parameters(), -1.0)),
    ("clip norm_type", "norm_type", lambda ns, a: ns.clip_grad_norm_(ns.Linear(2, 2).parameters(), 1.0, 0)),
    ("schedule warmup", "warmup_steps", lambda ns, a: ns.WarmupCosine(1e-3, -1, 10)),
    ("greedy model type", "model", lambda ns, a: ns.greedy_decode(_lm(ns), a(IDS), 4, 1, 2)),
    ("greedy max_len", "max_len", lambda ns, a: ns.greedy_decode(_tiny(ns), a(IDS), MAX_LEN + 1, 1, 2)),
    ("greedy bos_id", "bos_id", lambda ns, a: ns.greedy_decode(_tiny(ns), a(IDS), 4, VOCAB, 2)),
    ("greedy use_cache", "use_cache", lambda ns, a: ns.greedy_decode(_tiny(ns), a(IDS), 4, 1, 2, use_cache=1)),
    ("beam beam_size", "beam_size", lambda ns, a: ns.beam_search(_tiny(ns), a(IDS), 4, 1, 2, beam_size=0)),
    ("beam length_penalty", "length_penalty", lambda ns, a: ns.beam_search(_tiny(ns), a(IDS), 4, 1, 2,
                                                                           length_penalty=-1.0)),
    ("generate model type", "model", lambda ns, a: ns.generate(_tiny(ns), a(IDS), 2)),
    ("generate prompt float", "prompt", lambda ns, a: ns.generate(_lm(ns), a(np.ones((1, 2), np.float32)), 2)),
    ("generate too long", "max_new_tokens", lambda ns, a: ns.generate(_lm(ns), a(IDS), MAX_LEN)),
    ("generate top_k", "top_k", lambda ns, a: ns.generate(_lm(ns), a(IDS), 2, top_k=VOCAB + 1)),
    ("generate temperature", "temperature", lambda ns, a: ns.generate(_lm(ns), a(IDS), 2, temperature=-1.0)),
    ("generate seed", "seed", lambda ns, a: ns.generate(_lm(ns), a(IDS), 2, seed=1.5)),
]


@pytest.mark.parametrize("backend", backend_params("torch"))
@pytest.mark.parametrize("label, argument, call", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input_raises_like_reference(backend, label, argument, call):
    check_bad_input(backend, label, argument, call)


# ---- rosetta train --backend torch ------------------------------------------------------------------------


def test_training_on_torch_lowers_the_loss(tmp_path):
    """The tiny preset trains on accelerated.torch (CPU) with the reference's loop: the same first loss
    as the NumPy run (same weights and batch), then a falling loss; its checkpoint loads on the reference."""
    from rosetta.checkpoint import load_checkpoint
    from rosetta.cli import main
    from rosetta.train import parse_overrides, train

    config = parse_overrides(["tiny", "steps=60", "heldout_size=16"])
    result = train(config, backend="torch", progress=False)
    numpy_first = train({**config, "steps": 1}, backend="numpy", progress=False).losses[0]
    assert abs(result.losses[0] - numpy_first) <= FORWARD_TOL[np.dtype(np.float32)] * numpy_first  # float32 runs
    assert np.mean(result.losses[-10:]) < 0.8 * np.mean(result.losses[:10]), result.losses
    assert 0.0 <= result.exact_match <= 1.0 and result.backend == "torch"

    out = tmp_path / "run"
    torch.set_num_threads(2)
    assert main(["train", "--backend", "torch", "--config", "tiny", "heldout_size=8", "--steps", "2",
                 "--out", str(out), "--quiet"]) == 0
    model, checkpoint_config = load_checkpoint(out / "model.safetensors")  # a torch run's weights, on NumPy
    assert isinstance(model, R.Transformer) and checkpoint_config["train"]["steps"] == 2
    threads, _ = torch.get_num_threads(), torch.set_num_threads(1)
    assert threads == 2, "the run holds torch to config threads=1, then restores the caller's count"
