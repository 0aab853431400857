"""Beam search of a DecoderLM against transformers' ``generate(num_beams=K, do_sample=False)``.

rosetta's ``generate(..., temperature=0.0, num_beams=K, length_penalty=, early_stopping=)`` runs
transformers' algorithm (reference/decoding.py lm_beam_search_on): K running hypotheses, a pool of
the K best finished ones scored log P / n^length_penalty (n: generated tokens, EOS included, prompt
not), transformers' early-stopping rules. The tiny random checkpoints are test_hf_decoder's; the
EOS id is drawn among the likely first tokens so that hypotheses end at different lengths.

* the returned tokens equal transformers' (hypothesis over sizes, beams, penalties, early
  stopping, EOS or none; reference and torch in float64; the emulated CuPy backend in float32);
* every pooled hypothesis and its score (num_return_sequences=K) equal transformers', rows of a
  batch ending at different lengths (EOS-padded);
* bad beam arguments are refused by name, alike on every backend.

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


def hf_beam_search(hf, prompt, max_new_tokens, num_beams, eos_id, length_penalty, early_stopping, returned=1):
    """transformers' (sequences (B·returned, T), sequences_scores (B·returned,)) as NumPy arrays."""
    B, P = prompt.shape
    with torch.no_grad():
        out = hf.generate(torch.tensor(prompt), attention_mask=torch.ones(B, P, dtype=torch.long), do_sample=False,
                          num_beams=num_beams, max_new_tokens=max_new_tokens, eos_token_id=eos_id,
                          pad_token_id=0 if eos_id is None else eos_id, length_penalty=length_penalty,
                          early_stopping=early_stopping, num_return_sequences=returned,
                          return_dict_in_generate=True, output_scores=True)
    return out.sequences.numpy(), out.sequences_scores.numpy()


cases = st.fixed_dictionaries({
    "arch": st.sampled_from(["gpt2", "llama", "llama3"]), "beams": st.integers(2, 4),
    "length_penalty": st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0]),
    "early_stopping": st.sampled_from([False, True, "never"]),
    "eos_rank": st.sampled_from([None, 0, 1, 3]),  # None: no EOS, hypotheses end at max_new_tokens
    "batch": st.integers(1, 3), "length": st.integers(1, 5), "new": st.integers(1, 8), "seed": st.integers(0, 99),
})


@examples(0.6)
@given(case=cases)
def test_beam_search_matches_transformers(case):
    folder, hf = checkpoint(case["arch"])
    prompt = np.random.default_rng(case["seed"]).integers(0, VOCAB, (case["batch"], case["length"]))
    eos = None if case["eos_rank"] is None else likely_token(hf, prompt, case["eos_rank"])
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


@pytest.mark.skipif(EMULATION_MISSING is not None, reason=f"CuPy on the CUDA host emulator: {EMULATION_MISSING}")
def test_beam_search_on_emulated_cupy_matches_transformers():
    folder, hf = checkpoint("llama")
    prompt = np.random.default_rng(3).integers(0, VOCAB, (2, 3))
    eos = likely_token(hf, prompt, 2)
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
    arguments = {"temperature": 0.0, **arguments}

    def check(rt, dtype):
        model = rt.DecoderLM.gpt(VOCAB, 8, 2, num_layers=1, max_len=16, seed=0, dtype=dtype)
        with pytest.raises(error, match=message):
            rt.generate(model, rt.asarray(np.zeros((1, 2), dtype=np.int64)), 3, **arguments)

    for rt in (R, torch_rt()):
        check(rt, "float64")
    if EMULATION_MISSING is None:
        with cupy_emulator.emulated_cupy() as rt:
            check(rt, "float32")


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
