"""Beam search of a DecoderLM against transformers' ``generate(num_beams=K, do_sample=False)``.

rosetta's ``generate(..., temperature=0.0, num_beams=K, length_penalty=, early_stopping=)`` runs
transformers' algorithm (reference/decoding.py lm_beam_search_on): K running hypotheses, a pool of
the K best finished ones scored log P / n^length_penalty (n: generated tokens, EOS included, prompt
not), transformers' early-stopping rules. The tiny random checkpoints are test_hf_decoder's; the
EOS ids (one, or several as instruct models list them) are drawn among the likely first tokens so
that hypotheses end at different lengths.

* the returned tokens equal transformers' (hypothesis over sizes, beams, penalties, early
  stopping, EOS or none; reference and torch in float64; the emulated CuPy backend in float32);
* every pooled hypothesis and its score (num_return_sequences=K) equal transformers', rows of a
  batch ending at different lengths (EOS-padded);
* with several EOS ids any of them ends a hypothesis, the pool is padded with the first, as
  transformers' ``generate(eos_token_id=[...])``, and the later ids change the result;
* bad beam and EOS arguments are refused by name, alike on every backend.

transformers sums the log-probabilities in float32, rosetta in float64: scores agree within
HF_BEAM_SCORE_TOL.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import reference as R  # noqa: E402
from accelerated import cupy_emulator  # noqa: E402
from parity_tests.strategies import examples  # noqa: E402
from parity_tests.test_hf_decoder import VOCAB, checkpoint, torch_rt  # noqa: E402
from parity_tests.tolerances import HF_BEAM_SCORE_TOL, relative_error  # noqa: E402
from reference import decoding  # noqa: E402
from rosetta.hf import load_pretrained  # noqa: E402

EMULATION_MISSING = cupy_emulator.unavailable_reason()


def likely_token(hf, prompt, rank: int) -> int:
    """The token of the given rank (0: the most likely) after the first prompt, by transformers."""
    with torch.no_grad():
        logits = hf(torch.tensor(prompt[:1])).logits[0, -1]
    return int(torch.argsort(logits, descending=True, stable=True)[rank])


def likely_eos(hf, prompt, rank):
    """None, the token of that rank (an int), or the tokens of a tuple of ranks (a list, the EOS ids)."""
    if rank is None:
        return None
    return likely_token(hf, prompt, rank) if isinstance(rank, int) else [likely_token(hf, prompt, r) for r in rank]


def hf_beam_search(hf, prompt, max_new_tokens, num_beams, eos_id, length_penalty, early_stopping, returned=1):
    """transformers' (sequences (B·returned, T), sequences_scores (B·returned,)) as NumPy arrays; eos_id: None,
    an id or a list of ids. The pad id is left unset with EOS ids (transformers then pads with the first one)."""
    B, P = prompt.shape
    with torch.no_grad():
        out = hf.generate(torch.tensor(prompt), attention_mask=torch.ones(B, P, dtype=torch.long), do_sample=False,
                          num_beams=num_beams, max_new_tokens=max_new_tokens, eos_token_id=eos_id,
                          pad_token_id=0 if eos_id is None else None, length_penalty=length_penalty,
                          early_stopping=early_stopping, num_return_sequences=returned,
                          return_dict_in_generate=True, output_scores=True)
    return out.sequences.numpy(), out.sequences_scores.numpy()


cases = st.fixed_dictionaries({
    "arch": st.sampled_from(["gpt2", "llama", "llama3"]), "beams": st.integers(2, 4),
    "length_penalty": st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0]),
    "early_stopping": st.sampled_from([False, True, "never"]),
    # None: no EOS, hypotheses end at max_new_tokens; a tuple: several EOS ids (the first ranks lowest)
    "eos_rank": st.sampled_from([None, 0, 1, 3, (3, 0), (4, 1, 0)]),
    "batch": st.integers(1, 3), "length": st.integers(1, 5), "new": st.integers(1, 8), "seed": st.integers(0, 99),
})


@examples(0.6)
@given(case=cases)
def test_beam_search_matches_transformers(case):
    folder, hf = checkpoint(case["arch"])
    prompt = np.random.default_rng(case["seed"]).integers(0, VOCAB, (case["batch"], case["length"]))
    eos = likely_eos(hf, prompt, case["eos_rank"])
    settings = dict(num_beams=case["beams"], length_penalty=case["length_penalty"],
                    early_stopping=case["early_stopping"])
    expected, expected_scores = hf_beam_search(hf, prompt, case["new"], case["beams"], eos, case["length_penalty"],
                                               case["early_stopping"])
    for rt in (R, torch_rt()):
        model = load_pretrained(folder, backend=rt, dtype="float64")
        got = rt.to_numpy(rt.generate(model, rt.asarray(prompt), case["new"], temperature=0.0, eos_id=eos, **settings))
        np.testing.assert_array_equal(got, expected, err_msg=f"{case} on {rt.__name__}")
    _, scores, _ = decoding.lm_beam_search_on(decoding.REFERENCE, load_pretrained(folder, dtype="float64"), prompt,
                                              case["new"], case["beams"], eos, case["length_penalty"],
                                              case["early_stopping"])
    assert relative_error(scores[:, 0], expected_scores) <= HF_BEAM_SCORE_TOL, case


@pytest.mark.parametrize("arch, seed, rank", [("gpt2", 3, 0), ("llama", 2, 1)])
def test_every_pooled_hypothesis_and_score_match_transformers(arch, seed, rank):
    """num_return_sequences=K: the whole pool, best first, with hypotheses (and batch rows) that end
    at different lengths, EOS-padded; the scores are log P / n^length_penalty of each."""
    folder, hf = checkpoint(arch)
    K, new = 3, 8
    prompt = np.random.default_rng(seed).integers(0, VOCAB, (2, 4))
    eos = likely_token(hf, prompt, rank)
    expected, expected_scores = hf_beam_search(hf, prompt, new, K, eos, 1.0, False, returned=K)
    model = load_pretrained(folder, dtype="float64")
    tokens, scores, lengths = decoding.lm_beam_search_on(decoding.REFERENCE, model, prompt, new, K, eos, 1.0, False)
    assert len(set(lengths.ravel().tolist())) > 1 and lengths.min() < new, lengths  # EOS ended some early
    np.testing.assert_array_equal(tokens.reshape(2 * K, -1), expected)
    assert relative_error(scores.ravel(), expected_scores) <= HF_BEAM_SCORE_TOL
    for row, (sequence, n) in enumerate(zip(tokens.reshape(2 * K, -1), lengths.ravel())):
        assert sequence[4 + n - 1] == eos or n == new, row  # each ends with EOS or at max_new_tokens
        assert (sequence[4 + n:] == eos).all(), row  # then EOS padding
    best = R.generate(model, prompt, new, temperature=0.0, eos_id=eos, num_beams=K)
    np.testing.assert_array_equal(best, tokens[:, 0, :4 + lengths[:, 0].max()])


# the third case needs transformers' max(2, 1 + #EOS)·K ranked extensions: with 2K, beams die and the best differs
# (its pool holds only max_new_tokens-long hypotheses: length_penalty 2 favours them)
@pytest.mark.parametrize("arch, seed, shape, new, ranks, length_penalty, early_stopping, later_ends", [
    ("gpt2", 3, (2, 4), 8, (3, 0), 1.0, False, True), ("llama", 1, (2, 4), 8, (2, 5, 1), 1.0, False, True),
    ("gpt2", 1, (1, 3), 10, (0, 1, 2), 2.0, "never", False)])
def test_several_eos_ids_end_hypotheses_as_in_transformers(arch, seed, shape, new, ranks, length_penalty,
                                                           early_stopping, later_ends):
    """eos_id=[a, b, ...] as transformers' eos_token_id=[...]: any of them ends a hypothesis (later_ends: a
    pooled one ends with a later id), the pool is padded with the first, and the later ids matter (transformers
    with the first id alone gives other tokens)."""
    folder, hf = checkpoint(arch)
    K, B, P = 3, *shape
    prompt = np.random.default_rng(seed).integers(0, VOCAB, shape)
    eos = likely_eos(hf, prompt, ranks)
    expected, expected_scores = hf_beam_search(hf, prompt, new, K, eos, length_penalty, early_stopping, returned=K)
    model = load_pretrained(folder, dtype="float64")
    tokens, scores, lengths = decoding.lm_beam_search_on(decoding.REFERENCE, model, prompt, new, K, eos,
                                                         length_penalty, early_stopping)
    np.testing.assert_array_equal(tokens.reshape(B * K, -1), expected)
    assert relative_error(scores.ravel(), expected_scores) <= HF_BEAM_SCORE_TOL
    ends = [int(sequence[P + n - 1]) for sequence, n in zip(tokens.reshape(B * K, -1), lengths.ravel()) if n < new]
    assert set(ends) <= set(eos) and bool(set(ends) & set(eos[1:])) == later_ends, ends
    for sequence, n in zip(tokens.reshape(B * K, -1), lengths.ravel()):
        assert (sequence[P + n:] == eos[0]).all()  # padded with the first id
    best, _ = hf_beam_search(hf, prompt, new, K, eos, length_penalty, early_stopping)
    settings = dict(temperature=0.0, num_beams=K, length_penalty=length_penalty, early_stopping=early_stopping)
    for rt in (R, torch_rt()):
        got = rt.generate(load_pretrained(folder, backend=rt, dtype="float64"), rt.asarray(prompt), new,
                          eos_id=rt.asarray(np.array(eos)) if rt is not R else tuple(eos), **settings)
        np.testing.assert_array_equal(rt.to_numpy(got), best, err_msg=rt.__name__)
    first_only, _ = hf_beam_search(hf, prompt, new, K, eos[0], length_penalty, early_stopping)
    assert first_only.shape != best.shape or (first_only != best).any()


@pytest.mark.skipif(EMULATION_MISSING is not None, reason=f"CuPy on the CUDA host emulator: {EMULATION_MISSING}")
@pytest.mark.parametrize("rank", [2, (2, 0)])
def test_beam_search_on_emulated_cupy_matches_transformers(rank):
    folder, hf = checkpoint("llama")
    prompt = np.random.default_rng(3).integers(0, VOCAB, (2, 3))
    eos = likely_eos(hf, prompt, rank)
    expected, _ = hf_beam_search(hf, prompt, 6, 3, eos, 1.0, False)
    with cupy_emulator.emulated_cupy() as rt:
        model = load_pretrained(folder, backend=rt, dtype="float32")
        got = rt.to_numpy(rt.generate(model, rt.asarray(prompt), 6, temperature=0.0, eos_id=eos, num_beams=3))
    np.testing.assert_array_equal(got, expected)


BAD_BEAM_ARGUMENTS = [
    (dict(num_beams=0), ValueError, "num_beams must be >= 1"),
    (dict(num_beams=2.0), TypeError, "num_beams must be an int"),
    (dict(num_beams=2, temperature=1.0), ValueError, "num_beams=2 is beam search"),
    (dict(num_beams=2, top_k=3), ValueError, "num_beams=2 is beam search"),
    (dict(num_beams=2, early_stopping="sometimes"), ValueError, "early_stopping must be True, False or 'never'"),
    (dict(num_beams=2, early_stopping=1), TypeError, "early_stopping must be True, False or 'never'"),
    (dict(num_beams=2, length_penalty="long"), TypeError, "length_penalty must be a float"),
    (dict(num_beams=2, length_penalty=float("nan")), ValueError, "length_penalty must be a finite number"),
]


@pytest.mark.parametrize("arguments, error, message", BAD_BEAM_ARGUMENTS,
                         ids=["zero", "float", "temperature", "top_k", "early-word", "early-int", "penalty-str",
                              "penalty-nan"])
def test_bad_beam_arguments_are_refused_alike(arguments, error, message):
    refused_alike({"temperature": 0.0, **arguments}, error, message)


def refused_alike(arguments, error, message):
    """generate(**arguments) raises error matching message on the reference, torch and (emulated) CuPy."""

    def check(rt, dtype):
        model = rt.DecoderLM.gpt(VOCAB, 8, 2, num_layers=1, max_len=16, seed=0, dtype=dtype)
        with pytest.raises(error, match=message):
            rt.generate(model, rt.asarray(np.zeros((1, 2), dtype=np.int64)), 3, **arguments)

    for rt in (R, torch_rt()):
        check(rt, "float64")
    if EMULATION_MISSING is None:
        with cupy_emulator.emulated_cupy() as rt:
            check(rt, "float32")


BAD_EOS_ARGUMENTS = [
    ([], ValueError, r"eos_id must be an id or a non-empty sequence of ids, got \[\]"),
    ([3, VOCAB], ValueError, rf"eos_id\[1\] must lie in \[0, {VOCAB}\) \(the vocabulary\), got {VOCAB}"),
    ((3, -1), ValueError, r"eos_id\[1\] must be >= 0, got -1"),
    ([3, 4.0], TypeError, r"eos_id\[1\] must be an int, got float"),
    (np.array([3.0]), TypeError, r"eos_id\[0\] must be an int, got float"),
    ([[3]], TypeError, r"eos_id\[0\] must be an int, got list"),
    ("3", TypeError, "eos_id must be an int or a sequence of ints, got str"),
    (True, TypeError, "eos_id must be an int or a sequence of ints, got bool"),
    (VOCAB, ValueError, rf"eos_id must lie in \[0, {VOCAB}\)"),
]


@pytest.mark.parametrize("num_beams", [1, 2])
@pytest.mark.parametrize("eos_id, error, message", BAD_EOS_ARGUMENTS,
                         ids=["empty", "outside", "negative", "float", "float-array", "nested", "str", "bool", "int"])
def test_bad_eos_ids_are_refused_alike(eos_id, error, message, num_beams):
    refused_alike({"temperature": 0.0, "num_beams": num_beams, "eos_id": eos_id}, error, message)


def test_rosetta_generate_num_beams_equals_transformers(capsys):
    """``rosetta generate --num-beams K`` prints transformers' beam-search continuation, ending at the config's EOS."""
    from parity_tests.test_hf_cli import PROMPT, decoder_folder, text
    from rosetta.cli import main
    from rosetta.generate import generate_ids

    folder, hf, eos = decoder_folder("llama")
    expected, _ = hf_beam_search(hf, np.array([PROMPT]), 12, 3, eos, 0.5, False)
    ids, new, _, _ = generate_ids(folder, text(PROMPT), dtype="float64", max_new_tokens=12, temperature=0.0,
                                  num_beams=3, length_penalty=0.5)
    np.testing.assert_array_equal(ids + new, expected[0][:len(ids) + len(new)])
    assert (expected[0][len(ids) + len(new):] == eos).all()  # transformers pads the row with EOS after its end
    argv = ["generate", "--model", str(folder), "--dtype", "float64", "--max-new-tokens", "12", "--num-beams", "3",
            "--length-penalty", "0.5", text(PROMPT)]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == text(ids + new)
    assert main(argv[:-1] + ["--temperature", "0.5", text(PROMPT)]) == 2
    assert "--num-beams 3 is beam search" in capsys.readouterr().err


# ---- the encoder-decoder Transformer: beam_search(method="transformers") against MarianMTModel ----------


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("seed, init_std, beams, length_penalty, early_stopping", [
    (1, 0.1, 3, 1.0, False), (2, 0.3, 2, 2.0, "never"), (5, 0.02, 3, 0.0, True)])
def test_transformer_beam_search_matches_marian_generate(tmp_path, backend, seed, init_std, beams, length_penalty,
                                                          early_stopping):
    """Padded sources (lengths 5, 2, 4); transformers pads ended rows with the pad id, rosetta with EOS."""
    from parity_tests.test_hf_encoders import VOCAB as MARIAN_VOCAB
    from parity_tests.test_hf_encoders import marian_checkpoint, padding

    hf = marian_checkpoint(tmp_path, d_model=16, heads=2, seed=seed, init_std=init_std, scale_embedding=False,
                           bias_std=0.0)
    pad, eos, new = MARIAN_VOCAB - 1, 0, 8
    src = np.random.default_rng(seed).integers(1, pad, (3, 5))
    attention_mask, key_padding_mask = padding([5, 2, 4], 5)
    with torch.no_grad():
        out = hf.generate(input_ids=torch.from_numpy(src), attention_mask=torch.from_numpy(attention_mask),
                          do_sample=False, num_beams=beams, max_new_tokens=new, length_penalty=length_penalty,
                          early_stopping=early_stopping, return_dict_in_generate=True, output_scores=True)
    expected = out.sequences.numpy()
    expected[:, 1:][expected[:, 1:] == pad] = eos  # rosetta's padding after the end
    rt = R if backend == "reference" else torch_rt()
    model = load_pretrained(tmp_path, backend=rt, dtype="float64")
    tokens, scores = rt.beam_search(model, rt.asarray(src), new + 1, pad, eos, beams, length_penalty,
                                    src_key_padding_mask=rt.asarray(key_padding_mask), method="transformers",
                                    early_stopping=early_stopping)
    np.testing.assert_array_equal(rt.to_numpy(tokens)[:, 0], expected)
    assert relative_error(rt.to_numpy(scores)[:, 0], out.sequences_scores.numpy()) <= HF_BEAM_SCORE_TOL


def test_transformer_beam_search_method_is_checked():
    model = R.Transformer(12, 12, 8, 2, 16, 1, 1, max_len=8, seed=0, dtype="float64")
    src = np.ones((1, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="method must be one of"):
        R.beam_search(model, src, 4, 1, 2, method="hf")
    with pytest.raises(ValueError, match="early_stopping=True needs method='transformers'"):
        R.beam_search(model, src, 4, 1, 2, early_stopping=True)
    with pytest.raises(ValueError, match="length_penalty must be a finite number >= 0.0"):
        R.beam_search(model, src, 4, 1, 2, length_penalty=-1.0)
    tokens, scores = R.beam_search(model, src, 4, 1, 2, length_penalty=-1.0, method="transformers")
    assert tokens.shape[:2] == (1, 4) and np.all(np.diff(scores[0]) <= 0)  # the pool, best first
