"""Hugging Face GPT-2, Llama, Mistral and Qwen2 checkpoints on every backend, proven against transformers.

Tiny random checkpoints are built here with transformers (``XxxConfig`` + ``XxxForCausalLM`` +
``save_pretrained(safe_serialization=True)``); rosetta.hf.load_pretrained reads them with NumPy
and safetensors alone. transformers is the oracle:

* logits (hypothesis over sizes, heads, kv heads, padding side): float64 on the reference and
  torch within HF_LOGITS_TOL, float32 on the CuPy backend (CUDA host emulator) within FORWARD_TOL;
* gradients of a cross-entropy: the reference's hand-written backward (and torch's autograd of
  rosetta's model) against transformers' autograd, every parameter, in float64;
* 20 greedy tokens with the KV cache against ``generate(do_sample=False)``;
* save_pretrained → transformers' from_pretrained gives the same logits (after a training step too);
* every refusal names what it refuses.

"llama3" and "llama-linear" are Llama checkpoints with scaled RoPE (rope_type "llama3", Llama
3.1's, chosen so that its three regimes occur; rope_type "linear").

transformers computes RMSNorm and the RoPE tables in float32 whatever the model's dtype;
``float64_oracle`` (from rosetta.bench.hf_agreement, which measures the same agreement) recomputes both
(same formulas) in float64 so that it is a float64 oracle (test_scaled_rope_oracle_is_transformers checks
its scaled frequencies against transformers').
"""

from __future__ import annotations

import json
import shutil
import tempfile
import types
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import reference as R  # noqa: E402
from accelerated import cupy_emulator  # noqa: E402
from parity_tests.strategies import examples  # noqa: E402
from parity_tests.test_decoding import cut_at_eos  # noqa: E402
from parity_tests.tolerances import (  # noqa: E402
    FORWARD_TOL,
    HF_GRADIENT_TOL,
    HF_LOGITS_TOL,
    HF_ROPE_FREQUENCY_TOL,
    relative_error,
)
from rosetta.bench.hf_agreement import float64_oracle, inverse_frequencies  # noqa: E402
from rosetta.hf import load_pretrained, read_checkpoint, save_pretrained, write_checkpoint  # noqa: E402
from rosetta.hf.folder import TensorSource  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

ARCHS = ["gpt2", "llama", "llama-tied", "mistral", "qwen2", "llama3", "llama-linear"]
#: the scaled-RoPE archs' rope_parameters (besides rope_theta). llama3: with base 500 and head_dim 8
#: the wavelengths 2π/θ_i are 6.3, 30, 140, 664: below L/β = 8 (kept), between (smoothed), above L/α = 32 (÷ factor)
ROPE_SCALING = {
    "llama3": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32},
    "llama-linear": {"rope_type": "linear", "factor": 2.5},
}
#: head_dim of the fixed-size checkpoints (the llama3 regimes need at least three feature pairs)
HEAD_DIM = {"llama3": 8}
EMULATION_MISSING = cupy_emulator.unavailable_reason()
VOCAB = 64
POSITIONS = 64
_TMP = Path(tempfile.mkdtemp(prefix="rosetta-hf-test-"))


# ---- the oracle --------------------------------------------------------------------------------


def oracle_inverse_frequencies(parameters: dict, dim: int):
    """transformers' RoPE frequencies in float64 (dim/2,), as a tensor (rosetta.bench.hf_agreement's oracle)."""
    return torch.tensor(inverse_frequencies(parameters, dim), dtype=torch.float64)


def hf_config(arch: str, head_dim: int, heads: int, kv_heads: int, layers: int = 2, window=None):
    d = head_dim * heads
    ids = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if arch == "gpt2":
        return transformers.GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=d, n_layer=layers, n_head=heads,
                                       **ids)
    common = dict(vocab_size=VOCAB, hidden_size=d, intermediate_size=d + 8, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=POSITIONS,
                  rope_theta=500.0, **ids)
    if arch in ROPE_SCALING:
        return transformers.LlamaConfig(**common, rope_scaling=dict(ROPE_SCALING[arch]))
    if arch in ("llama", "llama-tied"):
        return transformers.LlamaConfig(**common, tie_word_embeddings=arch == "llama-tied")
    if arch == "mistral":
        return transformers.MistralConfig(**common, sliding_window=window)
    return transformers.Qwen2Config(**common)


@lru_cache(maxsize=None)
def checkpoint(arch: str, head_dim=None, heads: int = 4, kv_heads: int = 2, layers: int = 2, window=3,
               seed: int = 0):
    """(folder, float64 transformers model) of a tiny random checkpoint; weights N(0, 0.3²), so that
    the logits are far from uniform (LayerNorm/RMSNorm gains 1 + N(0, 0.3²)). head_dim None: HEAD_DIM or 4."""
    head_dim = HEAD_DIM.get(arch, 4) if head_dim is None else head_dim
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(arch, head_dim, heads, kv_heads, layers, window),
                                                          attn_implementation="sdpa")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name or "ln_" in name else 0.0, 0.3)
    folder = _TMP / f"{arch}-{head_dim}-{heads}-{kv_heads}-{layers}-{window}-{seed}"
    model.save_pretrained(folder, safe_serialization=True)
    return folder, float64_oracle(model)


def hf_logits(model, ids, mask):
    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


@lru_cache(maxsize=None)
def torch_rt():
    import accelerated.torch as T

    return T


def run_logits(rt, model, ids, mask):
    """rosetta's logits on backend ``rt`` (NumPy result); mask: 1 for tokens, 0 for padding (transformers')."""
    pad = mask == 0
    return np.asarray(rt.to_numpy(model(rt.asarray(ids), key_padding_mask=rt.asarray(pad) if pad.any() else None)),
                      dtype=np.float64)


def padded_batch(seed: int, batch: int, length: int, side: str):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (batch, length))
    mask = np.ones((batch, length), dtype=np.int64)
    if side != "none" and length > 1:
        for row in range(1, batch):  # row 0 stays full
            n = int(rng.integers(1, length))
            if side == "left":
                mask[row, :n] = 0
            else:
                mask[row, length - n:] = 0
    return ids, mask


# ---- (a) logits --------------------------------------------------------------------------------

sizes = st.fixed_dictionaries({
    "head_dim": st.sampled_from([2, 4, 8]), "heads": st.sampled_from([1, 2, 4]), "kv": st.sampled_from([1, 2, 4]),
    "layers": st.integers(1, 2), "batch": st.integers(1, 3), "length": st.integers(1, 12),
    "side": st.sampled_from(["none", "left", "right"]), "window": st.integers(1, 6), "seed": st.integers(0, 3),
})


@pytest.mark.parametrize("arch", ARCHS)
@examples(0.2)
@given(case=sizes)
def test_logits_match_transformers_float64(arch, case):
    kv = case["kv"] if case["heads"] % case["kv"] == 0 else case["heads"]
    folder, hf = checkpoint(arch, case["head_dim"], case["heads"], kv, case["layers"], case["window"], case["seed"])
    ids, mask = padded_batch(case["seed"], case["batch"], case["length"], case["side"])
    expected = hf_logits(hf, ids, mask)
    keep = mask == 1  # padded positions' logits are not defined (transformers and rosetta differ there)
    for rt in (R, torch_rt()):
        model = load_pretrained(folder, backend=rt, dtype="float64")
        got = run_logits(rt, model, ids, mask)
        err = relative_error(got[keep], expected[keep])
        assert err <= HF_LOGITS_TOL, f"{arch} on {rt.__name__}: logits relative error {err:.2e}"


@pytest.mark.skipif(EMULATION_MISSING is not None, reason=f"CuPy on the CUDA host emulator: {EMULATION_MISSING}")
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers_float32_on_cupy(arch):
    folder, hf = checkpoint(arch)
    ids, mask = padded_batch(1, 3, 9, "right" if arch == "gpt2" else "left")
    expected = hf_logits(hf, ids, mask)
    keep = mask == 1
    with cupy_emulator.emulated_cupy() as rt:
        model = load_pretrained(folder, backend=rt, dtype="float32")
        got = run_logits(rt, model, ids, mask)
    err = relative_error(got[keep], expected[keep])
    assert err <= FORWARD_TOL[np.dtype(np.float32)], f"{arch} on emulated CuPy: logits relative error {err:.2e}"


def test_mistral_window_is_transformers_sliding_window():
    """The window is not vacuous (window 3 < 9 tokens changes the logits) and is transformers' (i − w < j <= i)."""
    ids, mask = padded_batch(2, 2, 9, "none")
    windowed, full = checkpoint("mistral", window=3)[1], checkpoint("mistral", window=None)[1]
    assert relative_error(hf_logits(windowed, ids, mask), hf_logits(full, ids, mask)) > FORWARD_TOL[np.dtype(np.float32)]
    model = load_pretrained(checkpoint("mistral", window=3)[0], dtype="float64")
    assert model.decoder.layers[0].self_attn.window == 3
    assert relative_error(run_logits(R, model, ids, mask), hf_logits(windowed, ids, mask)) <= HF_LOGITS_TOL


# ---- (b) gradients -----------------------------------------------------------------------------


def hf_named_gradients(arch, model, grads: dict) -> dict:
    """rosetta's gradients (by rosetta name) under transformers' names, through the exporter's mapping."""
    from rosetta.hf import architecture

    shim = types.SimpleNamespace(hf_config=model.hf_config, state_dict=lambda: grads)
    return architecture(model.hf_config).from_rosetta(shim)[1]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_gradients_match_transformers(arch, backend):
    folder, hf = checkpoint(arch)
    ids, mask = padded_batch(3, 2, 8, "right" if arch == "gpt2" else "left")
    targets = np.where(mask == 1, np.roll(ids, -1, axis=1), -100)
    # transformers: autograd of the mean cross-entropy over the non-padded targets
    hf.zero_grad()
    logits = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), torch.tensor(targets).reshape(-1),
                                      ignore_index=-100).backward()
    expected = {name: p.grad.numpy() for name, p in hf.named_parameters()}
    hf.zero_grad()
    rt = R if backend == "reference" else torch_rt()
    model = load_pretrained(folder, backend=rt, dtype="float64")
    model.train()
    loss_fn = rt.CrossEntropyLoss(ignore_index=-100)
    out = model(rt.asarray(ids), key_padding_mask=rt.asarray(mask == 0))
    loss = loss_fn(out.reshape(-1, VOCAB), rt.asarray(targets.reshape(-1)))
    if backend == "reference":  # the hand-written backward
        model.backward(loss_fn.backward()[0].reshape(out.shape))
        grads = {name: p.grad for name, p in model.named_parameters()}
    else:
        loss.backward()
        grads = {name: p.grad.detach().numpy() for name, p in model.named_parameters()}
    got = hf_named_gradients(arch, model, grads)
    assert set(got) == set(expected), (sorted(set(got) ^ set(expected)))
    for name in expected:
        err = relative_error(got[name], expected[name])
        assert err <= HF_GRADIENT_TOL, f"{arch} on {backend}: gradient of {name}: relative error {err:.2e}"


# ---- (c) generation ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_matches_transformers(arch):
    folder, hf = checkpoint(arch)
    prompt = np.random.default_rng(4).integers(0, VOCAB, (2, 5))
    with torch.no_grad():
        expected = hf.generate(torch.tensor(prompt), attention_mask=torch.ones(2, 5, dtype=torch.long),
                               do_sample=False, max_new_tokens=20, pad_token_id=0).numpy()
    assert expected.shape == (2, 25)
    runs = [("reference", R, "float64"), ("torch", torch_rt(), "float64")]
    for name, rt, dtype in runs:
        model = load_pretrained(folder, backend=rt, dtype=dtype)
        got = np.asarray(rt.to_numpy(rt.generate(model, rt.asarray(prompt), 20, temperature=0.0)))
        np.testing.assert_array_equal(got, expected, err_msg=f"{arch} on {name}")
    if EMULATION_MISSING is None:
        with cupy_emulator.emulated_cupy() as rt:
            model = load_pretrained(folder, backend=rt, dtype="float32")
            got = np.asarray(rt.to_numpy(rt.generate(model, rt.asarray(prompt), 20, temperature=0.0)))
        np.testing.assert_array_equal(got, expected, err_msg=f"{arch} on emulated CuPy (float32)")


def test_greedy_and_sampling_with_several_eos_ids():
    """eos_id=[a, b, c] as transformers' eos_token_id=[...]: each row stops at its first token that is any of
    them, is padded with the first; greedy equals transformers' generate on every backend, sampling with one
    seed draws the same tokens on the reference and torch, those of the free run cut at the ends."""
    folder, hf = checkpoint("llama")
    prompt = np.random.default_rng(4).integers(0, VOCAB, (2, 5))
    with torch.no_grad():
        free = hf.generate(torch.tensor(prompt), attention_mask=torch.ones(2, 5, dtype=torch.long),
                           do_sample=False, max_new_tokens=12, pad_token_id=0).numpy()
    eos = [int(free[1, 5 + 7]), int(free[0, 5 + 4]), int(free[1, 5 + 1])]  # the first (the pad) ends no row
    with torch.no_grad():
        expected = hf.generate(torch.tensor(prompt), attention_mask=torch.ones(2, 5, dtype=torch.long),
                               do_sample=False, max_new_tokens=12, eos_token_id=eos).numpy()
    np.testing.assert_array_equal(expected, cut_at_eos(free, eos, 5))
    assert expected.shape[1] < 5 + 12 and {int(expected[0, -1]), int(expected[1, 6])} == set(eos[1:])
    sample = dict(temperature=0.9, top_k=20, seed=3)
    free_sample = R.generate(load_pretrained(folder, dtype="float64"), prompt, 12, **sample)
    sample_eos = (int(free_sample[0, 5 + 7]), int(free_sample[0, 5 + 3]), int(free_sample[1, 5 + 2]))
    sampled = cut_at_eos(free_sample, sample_eos, 5)
    assert sampled.shape[1] < 5 + 12
    for rt in (R, torch_rt()):
        model = load_pretrained(folder, backend=rt, dtype="float64")
        got = rt.generate(model, rt.asarray(prompt), 12, temperature=0.0, eos_id=eos)
        np.testing.assert_array_equal(rt.to_numpy(got), expected, err_msg=rt.__name__)
        got = rt.generate(model, rt.asarray(prompt), 12, eos_id=sample_eos, **sample)
        np.testing.assert_array_equal(rt.to_numpy(got), sampled, err_msg=rt.__name__)
    if EMULATION_MISSING is None:
        with cupy_emulator.emulated_cupy() as rt:
            model = load_pretrained(folder, backend=rt, dtype="float32")
            got = rt.generate(model, rt.asarray(prompt), 12, temperature=0.0, eos_id=rt.asarray(np.array(eos)))
            np.testing.assert_array_equal(rt.to_numpy(got), expected, err_msg="emulated CuPy (float32)")


# ---- (d) export --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_export_round_trip_through_transformers(arch, tmp_path):
    folder, hf = checkpoint(arch)
    ids, mask = padded_batch(5, 2, 7, "none")
    model = load_pretrained(folder, dtype="float64")
    save_pretrained(model, tmp_path / "same")
    # the same tensors under the same names, the same architecture
    (_, original), (config, written) = read_checkpoint(folder), read_checkpoint(tmp_path / "same")
    assert set(written) == set(original)
    for name in original:
        np.testing.assert_array_equal(written[name], original[name], err_msg=name)
    assert config["model_type"] == hf.config.model_type and config["architectures"] == [type(hf).__name__]
    rope_fields = ("rope_theta", "rope_scaling", "rope_parameters")  # the scaled RoPE goes back out as it came
    assert {f: config.get(f) for f in rope_fields} == {f: read_checkpoint(folder)[0].get(f) for f in rope_fields}
    # a training step (the hand-written backward, SGD), exported: transformers computes what rosetta does
    loss_fn = R.CrossEntropyLoss()
    out = model(ids)
    loss_fn(out.reshape(-1, VOCAB), np.roll(ids, -1, axis=1).reshape(-1))
    model.backward(loss_fn.backward()[0].reshape(out.shape))
    R.SGD(model.parameters(), 0.1).step()
    save_pretrained(model, tmp_path / "trained")
    reloaded = float64_oracle(transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "trained", dtype=torch.float64, attn_implementation="sdpa"))
    assert type(reloaded) is type(hf)
    expected = run_logits(R, model, ids, mask)
    assert not np.array_equal(expected, run_logits(R, load_pretrained(folder, dtype="float64"), ids, mask))
    assert relative_error(hf_logits(reloaded, ids, mask), expected) <= HF_LOGITS_TOL


def test_sharded_bfloat16_checkpoint_reads_exactly(tmp_path):
    folder, hf = checkpoint("llama")
    shutil.copytree(folder, tmp_path / "copy")
    bf16 = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "copy", dtype=torch.bfloat16)
    bf16.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="4KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    _, tensors = read_checkpoint(tmp_path / "sharded")
    for name, p in bf16.state_dict().items():
        assert tensors[name].dtype == np.float32
        np.testing.assert_array_equal(tensors[name], p.float().numpy(), err_msg=name)
    load_pretrained(tmp_path / "sharded")  # and it loads


# ---- (e) refusals ------------------------------------------------------------------------------


def edited(tmp_path, arch, config_edit=None, tensor_edit=None) -> Path:
    """A copy of ``arch``'s checkpoint with its config or tensors edited."""
    config, tensors = read_checkpoint(checkpoint(arch)[0])
    if config_edit:
        config_edit(config)
    if tensor_edit:
        tensor_edit(tensors)
    write_checkpoint(tmp_path / "edited", config, tensors)
    return tmp_path / "edited"


def setter(**fields):
    return lambda config: config.update(fields)


CONFIG_REFUSALS = [
    ("llama", setter(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "rope_scaling"),
    ("llama", setter(rope_parameters={"rope_type": "yarn", "rope_theta": 500.0, "factor": 4.0}), "rope_parameters"),
    ("llama", setter(rope_parameters={"rope_type": "longrope", "rope_theta": 500.0}), "rope_parameters"),
    ("llama", setter(rope_scaling={"type": "su", "factor": 2.0}), "rope_scaling"),
    ("llama", setter(rope_scaling={"rope_type": "new_kind", "factor": 2.0}), "rope_scaling"),
    ("llama3", setter(rope_parameters={**ROPE_SCALING["llama3"], "high_freq_factor": 1.0}), "rope_parameters"),
    ("llama3", setter(rope_parameters={**ROPE_SCALING["llama3"], "partial_rotary_factor": 0.5}), "rope_parameters"),
    ("llama-linear", setter(rope_parameters={"rope_type": "linear", "rope_theta": 500.0}), "rope_parameters"),
    ("llama-linear", setter(rope_parameters={"rope_type": "linear", "factor": -2.0}), "rope_parameters"),
    ("llama", setter(hidden_act="relu"), "hidden_act"),
    ("gpt2", setter(activation_function="quick_gelu"), "activation_function"),
    ("llama", setter(head_dim=16), "head_dim"),
    ("llama", setter(attention_bias=True), "attention_bias"),
    ("llama", setter(quantization_config={"quant_method": "bitsandbytes"}), "quantization_config"),
    ("mistral", setter(some_new_field=1), "some_new_field"),
    ("qwen2", setter(layer_types=["full_attention", "sliding_attention"], sliding_window=4), "layer_types"),
    ("gpt2", setter(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    ("gpt2", setter(scale_attn_weights=False), "scale_attn_weights"),
    ("qwen2", setter(use_mrope=True), "use_mrope"),
    ("gpt2", setter(add_cross_attention=True), "add_cross_attention"),
    ("llama", setter(model_type="gpt_neox"), "model_type"),
]


@pytest.mark.parametrize("arch, edit, field", CONFIG_REFUSALS, ids=[c[2] for c in CONFIG_REFUSALS])
def test_unsupported_config_fields_are_refused_by_name(tmp_path, arch, edit, field):
    folder = edited(tmp_path, arch, config_edit=edit)
    with pytest.raises(ValueError, match=f"config field {field}="):
        load_pretrained(folder)


TENSOR_REFUSALS = [
    ("llama", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), r"'model.layers.1.mlp.up_proj.weight' is missing"),
    ("gpt2", lambda t: t.update({"transformer.h.0.attn.c_attn.weight": np.zeros((16, 16))}),
     r"'transformer.h.0.attn.c_attn.weight' has shape \(16, 16\), expected \(16, 48\)"),
    ("qwen2", lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": np.zeros(16)}),
     r"unexpected tensors .*'model.layers.0.self_attn.o_proj.bias'"),
    ("llama-tied", lambda t: t.update({"lm_head.weight": np.zeros((VOCAB, 16))}), "tie_word_embeddings"),
]


@pytest.mark.parametrize("arch, edit, message", TENSOR_REFUSALS, ids=["missing", "misshaped", "unexpected", "untied"])
def test_tensor_problems_are_refused_by_name(tmp_path, arch, edit, message):
    with pytest.raises(ValueError, match=message):
        load_pretrained(edited(tmp_path, arch, tensor_edit=edit))


def test_folder_problems_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        load_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="has no config.json"):
        load_pretrained(tmp_path)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (pickled / "pytorch_model.bin").write_bytes(b"never unpickled")  # not even a valid pickle: it is never opened
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*save_pretrained\(folder, safe_serialization=True\)"):
        load_pretrained(pickled)
    with pytest.raises(ValueError, match="backend must be one of"):
        load_pretrained(checkpoint("gpt2")[0], backend="jax")
    with pytest.raises(ValueError, match="load_pretrained"):
        save_pretrained(R.DecoderLM.gpt(VOCAB, 8, 2, num_layers=1, max_len=8), tmp_path / "out")



def test_damaged_folders_are_refused_naming_the_file(tmp_path):
    """A shard the index names but the folder lacks, a config.json that is not JSON, a truncated safetensors
    file (an interrupted download): each a ValueError (the commands print it as one line) naming the file."""
    source, _ = checkpoint("gpt2")
    model = transformers.AutoModelForCausalLM.from_pretrained(source)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    shards[1].unlink()
    with pytest.raises(ValueError, match=f"names the shard '{shards[1].name}', which is missing"):
        load_pretrained(tmp_path / "sharded")
    shutil.copytree(source, tmp_path / "config")
    (tmp_path / "config" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_pretrained(tmp_path / "config")
    shutil.copytree(source, tmp_path / "truncated")
    weights = tmp_path / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="model.safetensors is truncated: tensor '.*' needs bytes"):
        load_pretrained(tmp_path / "truncated")

def test_tensor_source_names_what_is_wrong():
    source = TensorSource({"a": np.zeros(2), "b": np.zeros(3), "c": np.zeros(1)}, "here")
    assert source.take("a", (2,)).shape == (2,)
    with pytest.raises(ValueError, match=r"here: tensor 'b' has shape \(3,\), expected \(4,\)"):
        source.take("b", (4,))
    with pytest.raises(ValueError, match="here: tensor 'a' is missing"):
        source.take("a")
    with pytest.raises(ValueError, match=r"\['c'\]"):
        source.finish()


# ---- the constructor arguments the checkpoints need, on every backend -------------------------


def test_decoder_lm_rope_base_window_and_qkv_bias_on_every_backend():
    """DecoderLM(rope_base=, window=, qkv_bias=) reach every self-attention alike on every backend:
    qkv_bias=True with bias=False gives q/k/v biases only (Qwen2)."""
    arguments = dict(activation="swiglu", norm="rmsnorm", bias=False, rotary=True, positional=None, max_len=16,
                     tie_embeddings=False, rope_base=500.0, window=3, qkv_bias=True, seed=7)
    namespaces = [R, torch_rt()]
    keys = []
    for rt in namespaces:
        model = rt.DecoderLM(VOCAB, 8, 2, 12, 2, dtype="float64", **arguments)
        for layer in model.decoder.layers:
            attention = layer.self_attn
            assert attention.window == 3 and attention.rotary.base == 500.0
            assert all(getattr(attention, p).bias is not None for p in ("q_proj", "k_proj", "v_proj"))
            assert attention.out_proj.bias is None and layer.feed_forward.linear1.bias is None
        keys.append(list(model.state_dict()))
    assert keys[0] == keys[1]
    if EMULATION_MISSING is None:
        with cupy_emulator.emulated_cupy() as rt:
            assert list(rt.DecoderLM(VOCAB, 8, 2, 12, 2, dtype="float32", **arguments).state_dict()) == keys[0]
    for rt in namespaces:
        with pytest.raises(TypeError, match="qkv_bias"):
            rt.MultiHeadAttention(8, 2, qkv_bias="yes")
        assert rt.MultiHeadAttention(8, 2, bias=True, qkv_bias=False).out_proj.bias is not None
        assert rt.MultiHeadAttention(8, 2, bias=True, qkv_bias=False).q_proj.bias is None


def test_gpt2_model_checkpoint_without_prefix_and_old_buffers(tmp_path):
    """A GPT2Model checkpoint (the original "gpt2": no "transformer." prefix, causal-mask buffers) loads alike."""
    folder, hf = checkpoint("gpt2")
    config, tensors = read_checkpoint(folder)
    renamed = {name.removeprefix("transformer."): value for name, value in tensors.items()}
    renamed["h.0.attn.bias"] = np.tril(np.ones((1, 1, POSITIONS, POSITIONS)))
    write_checkpoint(tmp_path / "gpt2", config, renamed)
    ids, mask = padded_batch(6, 2, 6, "none")
    model = load_pretrained(tmp_path / "gpt2", dtype="float64")
    assert relative_error(run_logits(R, model, ids, mask), hf_logits(hf, ids, mask)) <= HF_LOGITS_TOL



#: fields that real config.json files hold and transformers does not read: gpt2's n_ctx (1024, kept when a copy
#: shrinks n_positions), distilgpt2's and opus-mt's _num_labels, SmolLM2's is_llama_config and rope_interleaved
REAL_CONFIG_LEFTOVERS = [
    ("gpt2", {"n_ctx": 1024, "_num_labels": 1, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}),
    ("llama-tied", {"is_llama_config": True, "rope_interleaved": False, "_num_labels": 2}),
]


@pytest.mark.parametrize("arch, fields", REAL_CONFIG_LEFTOVERS, ids=[a for a, _ in REAL_CONFIG_LEFTOVERS])
def test_real_config_leftovers_load_as_in_transformers(tmp_path, arch, fields):
    _, hf = checkpoint(arch)
    model = load_pretrained(edited(tmp_path, arch, config_edit=setter(**fields)), dtype="float64")
    ids, mask = padded_batch(8, 2, 6, "none")
    assert relative_error(run_logits(R, model, ids, mask), hf_logits(hf, ids, mask)) <= HF_LOGITS_TOL
    save_pretrained(model, tmp_path / "out")
    assert all(json.loads((tmp_path / "out" / "config.json").read_text())[k] == v for k, v in fields.items())


@pytest.mark.parametrize("arch", ["llama", "llama-tied", "qwen2"])
def test_body_checkpoint_without_model_prefix(tmp_path, arch):
    """A LlamaModel / Qwen2Model checkpoint (the body alone: no "model." prefix) loads as the causal LM, as
    transformers' AutoModelForCausalLM reads it; an untied head keeps its name lm_head.weight."""
    _, hf = checkpoint(arch)

    def strip(tensors):
        renamed = {name.removeprefix("model."): value for name, value in tensors.items()}
        tensors.clear()
        tensors.update(renamed)

    model = load_pretrained(edited(tmp_path, arch, tensor_edit=strip), dtype="float64")
    ids, mask = padded_batch(9, 2, 6, "none")
    assert relative_error(run_logits(R, model, ids, mask), hf_logits(hf, ids, mask)) <= HF_LOGITS_TOL

def test_llama_with_gelu_is_geglu(tmp_path):
    torch.manual_seed(1)
    config = hf_config("llama", 4, 2, 1)
    config.hidden_act = "gelu"
    hf = transformers.LlamaForCausalLM(config)
    hf.save_pretrained(tmp_path / "gelu", safe_serialization=True)
    float64_oracle(hf)
    ids, mask = padded_batch(7, 2, 6, "none")
    model = load_pretrained(tmp_path / "gelu", dtype="float64")
    assert model.decoder.layers[0].feed_forward.activation_name == "geglu"
    assert relative_error(run_logits(R, model, ids, mask), hf_logits(hf, ids, mask)) <= HF_LOGITS_TOL


def test_qwen2_sliding_window_on_every_layer(tmp_path):
    """Qwen2 with use_sliding_window on every layer (max_window_layers=0) is the windowed model."""
    torch.manual_seed(2)
    config = hf_config("qwen2", 4, 2, 1)
    config = transformers.Qwen2Config(**{**config.to_dict(), "use_sliding_window": True, "sliding_window": 3,
                                         "max_window_layers": 0, "layer_types": None})
    assert set(config.layer_types) == {"sliding_attention"}
    hf = transformers.Qwen2ForCausalLM(config)
    hf.save_pretrained(tmp_path / "qwen2", safe_serialization=True)
    float64_oracle(hf)
    ids, mask = padded_batch(8, 2, 9, "none")
    model = load_pretrained(tmp_path / "qwen2", dtype="float64")
    assert model.decoder.layers[1].self_attn.window == 3
    assert relative_error(run_logits(R, model, ids, mask), hf_logits(hf, ids, mask)) <= HF_LOGITS_TOL


# ---- scaled RoPE (rope_type "llama3" and "linear") ----------------------------------------------


@pytest.mark.parametrize("arch", sorted(ROPE_SCALING))
def test_scaled_rope_oracle_is_transformers(arch):
    """The oracle's float64 frequencies are transformers' (float32) ones; llama3's three regimes all occur."""
    _, hf = checkpoint(arch)
    rotary = hf.model.rotary_emb
    assert hf.config.rope_parameters["rope_type"] == ROPE_SCALING[arch]["rope_type"]
    assert relative_error(rotary.inv_freq, rotary.inv_freq64) <= HF_ROPE_FREQUENCY_TOL
    plain = oracle_inverse_frequencies({"rope_theta": 500.0}, HEAD_DIM.get(arch, 4))
    ratio = (rotary.inv_freq64 / plain).numpy()  # 1 kept, 1/factor scaled, in between smoothed
    factor = ROPE_SCALING[arch]["factor"]
    kept, scaled = np.isclose(ratio, 1.0, rtol=0, atol=0), np.isclose(ratio, 1 / factor, rtol=0, atol=0)
    if arch == "llama3":
        assert kept.any() and scaled.any() and (~kept & ~scaled).any(), ratio
    else:
        assert scaled.all(), ratio
    model = load_pretrained(checkpoint(arch)[0], dtype="float64")
    assert model.decoder.layers[1].self_attn.rotary.rope_scaling == {**ROPE_SCALING[arch]}


@pytest.mark.parametrize("arch", sorted(ROPE_SCALING))
def test_scaled_rope_is_not_vacuous(arch, tmp_path):
    """Dropping the scaling from the config changes the logits far beyond the tolerance."""
    folder, hf = checkpoint(arch)
    ids, mask = padded_batch(9, 2, 12, "none")
    plain = load_pretrained(edited(tmp_path, arch, config_edit=setter(rope_parameters={"rope_theta": 500.0})),
                            dtype="float64")
    assert plain.decoder.layers[0].self_attn.rotary.rope_scaling is None
    changed = relative_error(run_logits(R, plain, ids, mask), hf_logits(hf, ids, mask))
    assert changed > FORWARD_TOL[np.dtype(np.float32)], changed


def test_llama3_config_in_the_transformers4_layout(tmp_path):
    """Llama 3.1's own config.json layout: rope_theta beside rope_scaling, and the old "type" key."""
    def transformers4(config):
        parameters = dict(config.pop("rope_parameters"))
        config["rope_theta"] = parameters.pop("rope_theta")
        parameters["type"] = parameters.pop("rope_type")
        config["rope_scaling"] = parameters

    folder, hf = checkpoint("llama3")
    old = edited(tmp_path, "llama3", config_edit=transformers4)
    assert "rope_parameters" not in json.loads((old / "config.json").read_text())
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(old, dtype=torch.float64)
    assert torch.equal(reloaded.model.rotary_emb.inv_freq, hf.model.rotary_emb.inv_freq)  # transformers: the same
    ids, mask = padded_batch(10, 2, 10, "left")
    keep = mask == 1
    for rt in (R, torch_rt()):
        model = load_pretrained(old, backend=rt, dtype="float64")
        got = run_logits(rt, model, ids, mask)
        assert relative_error(got[keep], hf_logits(hf, ids, mask)[keep]) <= HF_LOGITS_TOL, rt.__name__


BAD_ROPE_SCALING = [
    ("linear", TypeError, "rope_scaling must be None or a dict"),
    ({"factor": 2.0}, ValueError, "rope_scaling must have a 'rope_type'"),
    ({"rope_type": "yarn", "factor": 2.0}, ValueError, r"rope_scaling\['rope_type'\] must be one of"),
    ({"rope_type": 3}, TypeError, r"rope_scaling\['rope_type'\] must be a str"),
    ({"rope_type": "linear"}, ValueError, r"rope_scaling\['factor'\] is missing"),
    ({"rope_type": "linear", "factor": 2.0, "beta": 1}, ValueError, r"rope_scaling\['beta'\] is not a field"),
    ({"rope_type": "linear", "factor": 0.0}, ValueError, r"rope_scaling\['factor'\] must be a finite float > 0"),
    ({"rope_type": "linear", "factor": "2"}, TypeError, r"rope_scaling\['factor'\] must be a positive float"),
    ({**ROPE_SCALING["llama3"], "high_freq_factor": 0.5}, ValueError, r"rope_scaling\['high_freq_factor'\] must be"),
    ({**ROPE_SCALING["llama3"], "original_max_position_embeddings": 32.0}, TypeError,
     r"rope_scaling\['original_max_position_embeddings'\] must be an int"),
]


@pytest.mark.parametrize("bad, error, message", BAD_ROPE_SCALING, ids=[
    "not-a-dict", "no-type", "refused-type", "type-not-str", "missing-field", "extra-field", "zero-factor",
    "str-factor", "high-below-low", "float-length"])
def test_rope_scaling_argument_is_checked_alike_on_every_backend(bad, error, message):
    """A bad rope_scaling raises the same error, naming the field, from RotaryEmbedding, MultiHeadAttention
    (with rotary=False too) and DecoderLM on every backend."""
    def constructors(rt):
        yield lambda: rt.RotaryEmbedding(8, 16, rope_scaling=bad)
        yield lambda: rt.MultiHeadAttention(16, 2, rope_scaling=bad)
        yield lambda: rt.DecoderLM(VOCAB, 16, 2, 8, 1, rotary=True, positional=None, max_len=16, rope_scaling=bad)

    namespaces = [R, torch_rt()]
    for rt in namespaces:
        for build in constructors(rt):
            with pytest.raises(error, match=message):
                build()
    if EMULATION_MISSING is None:
        with cupy_emulator.emulated_cupy() as rt:
            for build in constructors(rt):
                with pytest.raises(error, match=message):
                    build()


def test_rope_scaling_tables_agree_on_every_backend():
    """The scaled tables are the reference's everywhere, and differ from the plain ones."""
    scaling = ROPE_SCALING["llama3"]
    reference = R.RotaryEmbedding(8, 64, 500.0, rope_scaling=scaling)
    plain = R.RotaryEmbedding(8, 64, 500.0)
    assert relative_error(reference.cos_table, plain.cos_table) > FORWARD_TOL[np.dtype(np.float32)]

    def check(rt):
        table = rt.RotaryEmbedding(8, 64, 500.0, rope_scaling=scaling)
        np.testing.assert_array_equal(rt.to_numpy(table.cos_table), reference.cos_table, err_msg=str(rt))
        np.testing.assert_array_equal(rt.to_numpy(table.sin_table), reference.sin_table, err_msg=str(rt))
        assert table.rope_scaling == scaling

    check(torch_rt())
    if EMULATION_MISSING is None:
        with cupy_emulator.emulated_cupy() as rt:
            check(rt)
