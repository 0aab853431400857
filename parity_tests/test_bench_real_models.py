"""The `real-models` benchmark suite at tiny sizes: its JSON schema, its rows, its plot (no timing checks)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("threadpoolctl")

from rosetta.bench import common, real_models  # noqa: E402
from rosetta.bench.__main__ import build_parser  # noqa: E402

TINY = {"bert": {"vocab_size": 97, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
                 "max_position_embeddings": 64},
        "gpt2": {"vocab_size": 101, "n_embd": 32, "n_head": 2, "n_positions": 64}}


@pytest.fixture(scope="module")
def document():
    return real_models.run(thread_settings=(1,), layers=1, batch=2, seq=8, warmup=0, reps=1, prompt_len=4,
                           new_tokens=3, gen_warmup=0, gen_reps=1, sizes=TINY, progress=None)


def test_document_has_the_common_schema(document, tmp_path):
    common.validate(document)
    assert document["suite"] == "real-models"
    assert document["versions"]["transformers"]
    path = common.write_json(document, tmp_path, "real_models")
    assert json.loads(path.read_text())["suite"] == "real-models"


def test_every_model_and_implementation_has_a_row(document):
    rows = document["results"]
    for model in ("bert", "gpt2"):
        got = {r["implementation"] for r in rows if r["model"] == model and r["task"] == "forward+backward"}
        assert got == set(real_models.IMPLEMENTATIONS)
    generation = [r for r in rows if r["task"] == "generation"]
    assert {r["implementation"] for r in generation} == set(real_models.GENERATION_IMPLEMENTATIONS)
    for row in rows:
        for key in ("median_ms", "min_ms", "max_ms", "reps", "tokens_per_s", "threads", "ratio_vs_eager",
                    "ratio_vs_sdpa", "ratio_vs_best_transformers", "target", "meets_target"):
            assert key in row, (key, row)
        assert row["median_ms"] > 0
    for row in generation:
        assert row["generated"] == 3  # EOS is off: every implementation makes every token
        assert row["same_tokens_as_transformers"] is True  # greedy, same weights


def test_targets_are_listed_for_the_judged_rows(document):
    judged = {(t["model"], t["task"], t["implementation"]) for t in document["targets_met"]}
    assert judged == {("bert", "forward+backward", "reference"), ("bert", "forward+backward", "accelerated.torch"),
                      ("gpt2", "forward+backward", "reference"), ("gpt2", "forward+backward", "accelerated.torch"),
                      ("gpt2", "generation", "accelerated.torch"), ("gpt2", "generation", real_models.PACKED)}
    assert all(isinstance(t["met"], bool) for t in document["targets_met"])


def test_report_and_plot(document, tmp_path):
    text = real_models.report(document)
    assert "transformers (sdpa)" in text and "accelerated.torch" in text
    pytest.importorskip("matplotlib")
    png = real_models.plot(document, tmp_path / "real_models.png")
    assert png.exists() and png.stat().st_size > 0


def test_the_command_line_knows_the_suite():
    args = build_parser().parse_args(["real-models", "--threads", "1,2", "--layers", "2", "--reps", "1"])
    assert (args.suite, args.threads, args.layers, args.reps) == ("real-models", (1, 2), 2, 1)
