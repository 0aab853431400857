"""Top-p sampling in ``generate`` (every backend) and the commands built on it: ``rosetta generate`` / ``embed``.

(a) top-p (nucleus) sampling, reference/decoding.py: top_p=1 is plain sampling, a tiny top_p is
greedy, the nucleus equals a direct NumPy computation and transformers' TopPLogitsWarper, the
sampled frequencies follow the renormalized nucleus, and the reference, torch (CPU) and CuPy
(on the CUDA host emulator) draw the same tokens. (b) ``rosetta generate`` on tiny random GPT-2
and Llama folders with a WordLevel tokenizer (built with the tokenizers library): greedy text
equals transformers' ``generate(do_sample=False)`` decoded, up to the config's EOS. (c) ``rosetta
embed`` on BertModel / BertForMaskedLM folders equals transformers' last hidden states mean-pooled
over the non-padding tokens. (d) every error the commands report: exit code 2, one line, naming it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import accelerated.torch as torch_rt  # noqa: E402
import reference as R  # noqa: E402
from accelerated import cupy_emulator  # noqa: E402
from parity_tests.strategies import examples, seeds  # noqa: E402
from parity_tests.tolerances import HF_LOGITS_TOL, SAMPLE_SIGMAS, relative_error  # noqa: E402
from reference.decoding import _nucleus, _pick  # noqa: E402
from rosetta.cli import main  # noqa: E402
from rosetta.generate import embed, generate_ids, load_tokenizer  # noqa: E402

transformers.logging.set_verbosity_error()
try:  # the progress bars of save_pretrained / from_pretrained
    transformers.utils.logging.disable_progress_bar()
except AttributeError:  # pragma: no cover
    pass

EMULATION_MISSING = cupy_emulator.unavailable_reason()
F64 = np.float64
VOCAB, POSITIONS = 24, 24
WORDS = ["[PAD]", "[UNK]"] + [f"w{i}" for i in range(VOCAB - 2)]  # id i is WORDS[i]
_TMP = Path(tempfile.mkdtemp(prefix="rosetta-hf-cli-"))


# ---- (a) top-p sampling ------------------------------------------------------------------------------


def tiny_lm(ns, seed, dtype=F64):
    return ns.DecoderLM.llama(VOCAB, 16, 4, 32, 2, num_kv_heads=2, max_len=POSITIONS, seed=seed, dtype=dtype)


def direct_nucleus(logits, temperature, top_k, top_p):
    """The kept tokens of one row, computed the plain way: softmax, the k best, then add tokens by falling
    probability (ties: lower id first) until the mass reaches p."""
    scaled = logits / temperature
    order = sorted(range(len(scaled)), key=lambda v: (-scaled[v], v))
    if top_k is not None:
        order = order[:top_k]
    probs = np.exp(scaled[order] - scaled[order].max())
    probs /= probs.sum()
    kept, mass = [], 0.0
    for v, p in zip(order, probs):
        kept.append(v)
        mass += p
        if mass >= top_p:
            break
    return set(kept)


@examples(0.3)
@given(st.sampled_from([0.5, 1.0, 2.0]), st.sampled_from([None, 3]), seeds)
def test_top_p_one_is_plain_sampling(temperature, top_k, seed):
    model = tiny_lm(R, seed % 7)
    prompt = np.random.default_rng(seed).integers(0, VOCAB, (3, 2))
    args = {"temperature": temperature, "top_k": top_k, "seed": seed}
    np.testing.assert_array_equal(R.generate(model, prompt, 6, top_p=1.0, **args), R.generate(model, prompt, 6, **args))


@examples(0.3)
@given(st.sampled_from([0.3, 1.0, 3.0]), st.sampled_from([None, 5]), seeds)
def test_tiny_top_p_is_greedy(temperature, top_k, seed):
    model = tiny_lm(R, seed % 7)
    prompt = np.random.default_rng(seed).integers(0, VOCAB, (3, 2))
    greedy = R.generate(model, prompt, 7, temperature=0.0)
    got = R.generate(model, prompt, 7, temperature=temperature, top_k=top_k, top_p=1e-9, seed=seed)
    np.testing.assert_array_equal(got, greedy)


@examples(0.5)
@given(seeds, st.sampled_from([0.5, 1.0, 2.0]), st.sampled_from([None, 2, 6]),
       st.sampled_from([0.05, 0.3, 0.5, 0.8, 0.95, 0.999]))
def test_nucleus_equals_a_direct_computation_and_transformers(seed, temperature, top_k, top_p):
    logits = np.random.default_rng(seed).normal(0.0, 2.0, (4, 12))
    scaled = logits / temperature
    if top_k is not None:
        rank = np.argsort(np.argsort(-scaled, axis=-1, kind="stable"), axis=-1, kind="stable")
        scaled = np.where(rank < top_k, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    kept = _nucleus(probs, top_p, np)
    warpers = [transformers.TemperatureLogitsWarper(temperature)]
    warpers += [transformers.TopKLogitsWarper(top_k)] if top_k is not None else []
    warpers += [transformers.TopPLogitsWarper(top_p)]
    scores = torch.tensor(logits)
    for warper in warpers:
        scores = warper(None, scores)
    hf_kept = torch.isfinite(scores).numpy()
    for row in range(len(logits)):
        want = direct_nucleus(logits[row], temperature, top_k, top_p)
        assert set(np.flatnonzero(kept[row])) == want, row
    np.testing.assert_array_equal(kept, hf_kept)


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, 0.6), (0.7, None, 0.9), (2.0, 4, 0.5)])
def test_sampling_frequencies_follow_the_renormalized_nucleus(temperature, top_k, top_p):
    logits = np.array([1.0, -0.5, 2.0, 0.0, 0.7, 1.5])
    n = 40000
    picks = _pick(np.tile(logits, (n, 1)), temperature, top_k, np.random.default_rng(0), np, top_p)
    kept = sorted(direct_nucleus(logits, temperature, top_k, top_p))
    expected = np.zeros(len(logits))
    expected[kept] = np.exp(logits[kept] / temperature - (logits[kept] / temperature).max())
    expected /= expected.sum()
    freq = np.bincount(picks, minlength=len(logits)) / n
    assert np.abs(freq - expected).max() < SAMPLE_SIGMAS * np.sqrt(0.25 / n)
    assert (freq[expected == 0] == 0).all()


def _backend_samples(rt, state, prompt, dtype, args):
    model = tiny_lm(rt, 0, dtype)
    model.load_state_dict(state)
    return np.asarray(rt.to_numpy(rt.generate(model, rt.asarray(prompt), 10, **args)))


@pytest.mark.parametrize("args", [
    {"temperature": 1.0, "top_p": 0.7, "seed": 3},
    {"temperature": 0.8, "top_k": 6, "top_p": 0.9, "seed": 11},
    {"temperature": 1.5, "top_p": 0.5, "seed": 5, "eos_id": 2},
])
def test_backends_draw_the_same_tokens(args):
    reference_model = tiny_lm(R, 0)
    state = {k: np.asarray(v) for k, v in reference_model.state_dict().items()}
    prompt = np.random.default_rng(1).integers(0, VOCAB, (3, 3))
    want = R.generate(reference_model, prompt, 10, **args)
    np.testing.assert_array_equal(_backend_samples(torch_rt, state, prompt, torch.float64, args), want, "torch")
    if EMULATION_MISSING is None:
        with cupy_emulator.emulated_cupy() as rt:
            got = _backend_samples(rt, state, prompt, "float64", args)
        np.testing.assert_array_equal(got, want, "emulated CuPy")


@pytest.mark.parametrize("top_p, error", [(0.0, ValueError), (-0.1, ValueError), (1.5, ValueError),
                                          (float("nan"), ValueError), ("0.5", TypeError), (True, TypeError)])
def test_top_p_errors_name_it(top_p, error):
    model = tiny_lm(R, 0)
    for rt, m in ((R, model), (torch_rt, None)):
        if m is None:
            m = tiny_lm(rt, 0, torch.float64)
        with pytest.raises(error, match="top_p"):
            rt.generate(m, rt.asarray(np.zeros((1, 2), dtype=np.int64)), 3, top_p=top_p)


# ---- checkpoint folders with a tokenizer ------------------------------------------------------------


def save_tokenizer(folder: Path) -> None:
    """A WordLevel tokenizer over WORDS with a whitespace pre-tokenizer, as tokenizer.json."""
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)},
                                                           unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))


def text(ids) -> str:
    return " ".join(WORDS[i] for i in ids)


def _random_weights(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name or "ln_" in name or "LayerNorm" in name else 0.0, 0.3)


PROMPT = [5, 9, 3, 12]


@lru_cache(maxsize=None)
def decoder_folder(arch: str):
    """(folder, float64 transformers model, eos id): a tiny random checkpoint whose config eos_token_id is a
    token greedy decoding of PROMPT first produces at step 3 or later, so that generation stops at it (the
    first seed whose greedy continuation has one: some random models repeat one token)."""
    for seed in range(20):
        found = _decoder_folder(arch, seed)
        if found is not None:
            return found
    raise AssertionError(f"no seed gives a {arch} checkpoint whose greedy continuation varies")


def _decoder_folder(arch: str, seed: int):
    torch.manual_seed(seed)
    if arch == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=16, n_layer=2, n_head=4,
                                         bos_token_id=None, eos_token_id=None, pad_token_id=None)
    else:
        config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=POSITIONS, bos_token_id=None, eos_token_id=None,
                                          pad_token_id=None)
    hf = transformers.AutoModelForCausalLM.from_config(config)
    _random_weights(hf)
    folder = _TMP / arch
    hf.save_pretrained(folder, safe_serialization=True)
    save_tokenizer(folder)
    hf = hf.double().eval()
    with torch.no_grad():
        free = hf.generate(torch.tensor([PROMPT]), attention_mask=torch.ones(1, 4, dtype=torch.long),
                           do_sample=False, max_new_tokens=10, pad_token_id=0).numpy()[0, 4:]
    eos = next((int(t) for i, t in enumerate(free) if i >= 2 and t not in free[:i]), None)
    if eos is None:
        return None
    config_file = folder / "config.json"
    saved = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**saved, "eos_token_id": eos}))
    return folder, hf, eos


@lru_cache(maxsize=None)
def bert_folder(masked_lm: bool):
    torch.manual_seed(1)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=32, max_position_embeddings=POSITIONS, pad_token_id=0)
    hf = transformers.BertForMaskedLM(config) if masked_lm else transformers.BertModel(config)
    _random_weights(hf)
    folder = _TMP / f"bert-{'mlm' if masked_lm else 'base'}"
    hf.save_pretrained(folder, safe_serialization=True)
    save_tokenizer(folder)
    return folder, hf.double().eval()


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- (b) rosetta generate ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_greedy_generate_equals_transformers(arch, backend, capsys):
    folder, hf, eos = decoder_folder(arch)
    with torch.no_grad():
        expected = hf.generate(torch.tensor([PROMPT]), attention_mask=torch.ones(1, 4, dtype=torch.long),
                               do_sample=False, max_new_tokens=12, eos_token_id=eos, pad_token_id=0).numpy()[0]
    assert expected[-1] == eos and len(expected) < 4 + 12  # stopped at EOS
    ids, new, _, _ = generate_ids(folder, text(PROMPT), backend=backend, dtype="float64", max_new_tokens=12,
                                  temperature=0.0)
    np.testing.assert_array_equal(ids + new, expected)
    code, out, err = run_cli(capsys, "generate", "--model", str(folder), "--backend", backend, "--dtype", "float64",
                             "--max-new-tokens", "12", "--greedy", text(PROMPT))
    assert code == 0, err
    assert out.strip() == text(expected)
    assert "tokens/s" in err


def test_sampled_generate_is_reproducible_and_follows_generate(capsys):
    folder, _, eos = decoder_folder("gpt2")
    argv = ["generate", "--model", str(folder), "--dtype", "float64", "--max-new-tokens", "8", "--temperature", "0.9",
            "--top-k", "10", "--top-p", "0.8", "--seed", "7", text(PROMPT)]
    first, second = run_cli(capsys, *argv), run_cli(capsys, *argv)
    assert first[0] == 0 and first[1] == second[1]
    from rosetta.hf import load_pretrained

    model = load_pretrained(folder, dtype="float64")
    tokens = R.generate(model, np.array([PROMPT]), 8, temperature=0.9, top_k=10, top_p=0.8, seed=7, eos_id=eos)[0]
    assert first[1].strip() == text(tokens)


def test_max_new_tokens_is_clipped_to_the_positions_left():
    folder, _, _ = decoder_folder("gpt2")
    prompt = [4] * (POSITIONS - 2)
    ids, new, _, _ = generate_ids(folder, text(prompt), max_new_tokens=50, temperature=0.0)
    assert len(ids) + len(new) <= POSITIONS



def _hf_greedy(folder, prompt, max_new_tokens):
    """transformers' greedy continuation of ``prompt`` by the folder's model, read by from_pretrained (with its
    generation_config.json) in float64."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    with torch.no_grad():
        return hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                           do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=0).numpy()[0]


def test_eos_ids_of_real_configs_and_generation_config(tmp_path):
    """A copy of a real config keeps its EOS id when it shrinks the vocabulary (gpt2's 50256, here with 24 tokens):
    that id is never drawn, and generation runs on as transformers'. generation_config.json's eos_token_id (where
    instruct models such as Qwen2.5-Instruct list their end-of-turn ids) ends the text as in transformers."""
    folder, _, eos = decoder_folder("gpt2")
    copy = tmp_path / "gpt2"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "bos_token_id": 50256, "eos_token_id": 50256}))
    (copy / "generation_config.json").unlink(missing_ok=True)
    ids, new, _, _ = generate_ids(copy, text(PROMPT), dtype="float64", max_new_tokens=8, temperature=0.0)
    np.testing.assert_array_equal(ids + new, _hf_greedy(copy, PROMPT, 8))
    assert len(new) == 8
    (copy / "generation_config.json").write_text(json.dumps({"eos_token_id": [50256, eos]}))
    ids, new, _, _ = generate_ids(copy, text(PROMPT), dtype="float64", max_new_tokens=12, temperature=0.0)
    expected = _hf_greedy(copy, PROMPT, 12)
    assert expected[-1] == eos and len(expected) < len(PROMPT) + 12  # transformers stopped at it too
    np.testing.assert_array_equal(ids + new, expected)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_several_eos_ids_of_generation_config_end_the_text_as_transformers(tmp_path, capsys, num_beams):
    """generation_config.json listing several EOS ids (as Llama 3 / Qwen2.5 instruct folders do): greedy and beam
    search stop at any of them, as transformers' generate reading the same file; a later id ends the text."""
    folder, hf, eos = decoder_folder("llama")
    copy = tmp_path / "llama"
    shutil.copytree(folder, copy)
    with torch.no_grad():
        free = hf.generate(torch.tensor([PROMPT]), attention_mask=torch.ones(1, 4, dtype=torch.long),
                           do_sample=False, max_new_tokens=12, pad_token_id=0).numpy()[0, 4:]
    # the config's id (drawn before the others) last, as transformers reads only this list; beam search with
    # the first id alone, its text then cut at any listed id, gives other tokens (rosetta's former behaviour)
    listed = [int(free[6]), int(free[11]), eos]
    assert len(set(listed)) == 3, listed
    (copy / "generation_config.json").write_text(json.dumps({"eos_token_id": listed}))
    hf = transformers.AutoModelForCausalLM.from_pretrained(copy, dtype=torch.float64).eval()
    with torch.no_grad():
        expected, first_only = (hf.generate(torch.tensor([PROMPT]), attention_mask=torch.ones(1, 4, dtype=torch.long),
                                            do_sample=False, num_beams=num_beams, max_new_tokens=12,
                                            **ids).numpy()[0] for ids in ({}, {"eos_token_id": listed[0]}))
    assert expected[-1] in listed[1:] and len(expected) < 4 + 12 and not np.array_equal(expected, first_only)
    ids, new, _, _ = generate_ids(copy, text(PROMPT), dtype="float64", max_new_tokens=12, temperature=0.0,
                                  num_beams=num_beams)
    np.testing.assert_array_equal(ids + new, expected)
    code, out, err = run_cli(capsys, "generate", "--model", str(copy), "--dtype", "float64", "--max-new-tokens", "12",
                             "--greedy", "--num-beams", str(num_beams), text(PROMPT))
    assert code == 0 and out.strip() == text(expected), err


def test_slow_tokenizer_files_are_read_as_transformers(tmp_path, capsys):
    """Without tokenizer.json, GPT-2's vocab.json + merges.txt and BERT's vocab.txt are read as transformers'
    AutoTokenizer reads them (the same ids), and the commands run on such folders."""
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(decoder_folder("gpt2")[0], gpt2)
    (gpt2 / "tokenizer.json").unlink()
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator([text(PROMPT), "w1 w12 w2 w21 w0"] * 3, tokenizers.trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>"], initial_alphabet=[]))
    bpe.model.save(str(gpt2))
    bert = tmp_path / "bert"
    shutil.copytree(bert_folder(False)[0], bert)
    (bert / "tokenizer.json").unlink()
    (bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "w", "##1"] + WORDS[7:]))
    texts = {gpt2: [text(PROMPT), "w12w1 w2<|endoftext|>w0"], bert: ["W7 w1 w11, w2", "w21w1 x"]}
    for folder, kind in ((gpt2, "gpt2"), (bert, "bert")):
        hf = transformers.AutoTokenizer.from_pretrained(folder)
        ours = load_tokenizer(folder, kind)
        for sentence in texts[folder]:
            assert ours.encode(sentence).ids == hf(sentence).input_ids, (kind, sentence)
    (gpt2 / "generation_config.json").unlink(missing_ok=True)  # both read config's eos_token_id
    hf = transformers.AutoTokenizer.from_pretrained(gpt2)
    expected = hf.decode(_hf_greedy(gpt2, hf(text(PROMPT)).input_ids, 6), skip_special_tokens=True)
    code, out, err = run_cli(capsys, "generate", "--model", str(gpt2), "--greedy", "--max-new-tokens", "6",
                             "--dtype", "float64", text(PROMPT))
    assert code == 0 and out.strip() == expected.strip(), err
    code, out, err = run_cli(capsys, "embed", "--model", str(bert), *texts[bert])
    assert code == 0 and len(out.strip().splitlines()) == 2, err


def test_tokenizer_files_truncation_and_padding_are_not_applied(tmp_path):
    """A tokenizer.json saved with truncation and padding on (sentence-transformers' files set them): transformers'
    tokenizer call applies neither unless asked, so the ids are the whole text, and a text longer than the
    model's positions is refused rather than silently cut."""
    folder = tmp_path / "gpt2"
    shutil.copytree(decoder_folder("gpt2")[0], folder)
    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(3)
    tok.enable_padding(length=10)
    tok.save(str(folder / "tokenizer.json"))
    sentence = text(PROMPT + [7])
    want = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))(sentence).input_ids
    assert load_tokenizer(folder).encode(sentence).ids == want == PROMPT + [7]
    with pytest.raises(ValueError, match="prompt is 24 tokens long"):
        generate_ids(folder, text([4] * POSITIONS), max_new_tokens=2)

# ---- (c) rosetta embed ---------------------------------------------------------------------------------


SENTENCES = ["w1 w2 w3 w4 w5", "w7 w3", "w9 w0 w11 nope"]  # "nope" is [UNK]


def hf_mean_pooled(hf, masked_lm):
    rows = [[WORDS.index(w) if w in WORDS else 1 for w in s.split()] for s in SENTENCES]
    n = max(map(len, rows))
    ids = torch.tensor([r + [0] * (n - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
    with torch.no_grad():
        encoder = hf.bert if masked_lm else hf
        h = encoder(ids, attention_mask=mask).last_hidden_state
    m = mask[..., None].double()
    return ((h * m).sum(1) / m.sum(1)).numpy()


@pytest.mark.parametrize("masked_lm", [False, True], ids=["BertModel", "BertForMaskedLM"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_embed_equals_mean_pooled_transformers(masked_lm, backend, capsys, tmp_path):
    folder, hf = bert_folder(masked_lm)
    want = hf_mean_pooled(hf, masked_lm)
    got = embed(folder, SENTENCES, backend=backend, dtype="float64")
    assert got.shape == (3, 16)
    assert relative_error(got, want) < HF_LOGITS_TOL
    out = tmp_path / "vectors.npy"
    code, printed, err = run_cli(capsys, "embed", "--model", str(folder), "--backend", backend, "--dtype", "float64",
                                 "--out", str(out), *SENTENCES)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(out), got)
    code, printed, err = run_cli(capsys, "embed", "--model", str(folder), "--dtype", "float64", *SENTENCES)
    assert code == 0, err
    rows = [line.split() for line in printed.strip().splitlines()]  # 9 significant digits
    assert rows == [[f"{v:.9g}" for v in vector] for vector in embed(folder, SENTENCES, dtype="float64")]


@pytest.mark.skipif(EMULATION_MISSING is not None, reason=f"CUDA kernels on the CPU emulator: {EMULATION_MISSING}")
def test_embed_and_generate_on_emulated_cupy():
    folder, hf = bert_folder(False)
    with cupy_emulator.emulated_cupy() as rt:
        got = embed(folder, SENTENCES, backend=rt, dtype="float64")
        ids, new, _, _ = generate_ids(decoder_folder("gpt2")[0], text(PROMPT), backend=rt, dtype="float64",
                                      max_new_tokens=12, temperature=0.0)
    assert relative_error(got, hf_mean_pooled(hf, False)) < HF_LOGITS_TOL
    want = generate_ids(decoder_folder("gpt2")[0], text(PROMPT), dtype="float64", max_new_tokens=12,
                        temperature=0.0)
    assert (ids, new) == want[:2]


# ---- (d) errors -----------------------------------------------------------------------------------------


def test_command_errors_are_one_line_with_exit_code_2(capsys, tmp_path):
    gpt2, _, _ = decoder_folder("gpt2")
    bert, _ = bert_folder(False)
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(gpt2, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    cases = [
        (["generate", "--model", str(tmp_path / "nowhere"), "w1"], "is not a checkpoint folder"),
        (["generate", "--model", str(tmp_path), "w1"], "is not a checkpoint folder"),
        (["embed", "--model", str(tmp_path), "w1"], "is not a checkpoint folder"),
        (["generate", "--model", str(no_tokenizer), "w1"], "has no tokenizer.json"),
        (["generate", "--model", str(gpt2), "   "], "prompt is empty"),
        (["generate", "--model", str(gpt2), ""], "prompt is empty"),
        (["generate", "--model", str(gpt2), text([3] * POSITIONS)], f"positions hold {POSITIONS}"),
        (["embed", "--model", str(bert), text([3] * (POSITIONS + 1))], f"positions hold {POSITIONS}"),
        (["embed", "--model", str(bert), "w1", " "], "sentence 2 is empty"),
        (["embed", "--model", str(gpt2), "w1"], "needs a BERT-family encoder"),
        (["generate", "--model", str(bert), "w1"], "needs a decoder-only language model"),
        (["generate", "--model", str(gpt2), "--top-p", "0", "w1"], "top_p"),
        (["generate", "--model", str(gpt2), "--top-k", "0", "w1"], "top_k"),
        (["generate", "--model", str(gpt2), "--temperature", "-1", "w1"], "temperature"),
        (["generate", "--model", str(gpt2), "--max-new-tokens", "0", "w1"], "max-new-tokens"),
    ]
    for argv, message in cases:
        code, out, err = run_cli(capsys, *argv)
        assert code == 2, (argv, out, err)
        assert err.count("\n") == 1 and message in err and err.startswith(f"rosetta {argv[0]}: error: "), (argv, err)
