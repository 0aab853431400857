"""The `hf-agreement` benchmark suite, one architecture and one seed: its JSON schema, rows and table (no bounds:
parity_tests/test_hf_decoder.py and test_hf_encoders.py hold those)."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rosetta.bench import common, hf_agreement  # noqa: E402
from rosetta.bench.__main__ import build_parser  # noqa: E402


@pytest.fixture(scope="module")
def document():
    return hf_agreement.run(seeds=1, architectures=("gpt2",), progress=None)


def test_document_has_the_common_schema(document, tmp_path):
    common.validate(document)
    assert document["suite"] == "hf-agreement"
    assert document["versions"]["transformers"]
    path = common.write_json(document, tmp_path, "hf_agreement")
    assert json.loads(path.read_text())["suite"] == "hf-agreement"


def test_every_backend_has_a_row_with_its_figures(document):
    rows = document["results"]
    assert [(r["backend"], r["dtype"]) for r in rows] == list(hf_agreement.BACKENDS)
    for row in rows:
        if row["skipped"]:  # CuPy's emulator missing: the row says why
            assert row["backend"] == "emulated-cupy" and row["output_error"] is None
            continue
        assert math.isfinite(row["output_error"]) and row["output_error"] >= 0
        assert isinstance(row["generation_identical"], bool) and row["distinct_generated_tokens"] >= 1
        if row["dtype"] == "float64":  # gradients are measured in float64 only, and name their worst parameter
            assert math.isfinite(row["gradient_error"]) and row["worst_gradient_parameter"]
            assert row["gradient_error_nonnull"] <= row["gradient_error"] and row["worst_nonnull_gradient_parameter"]
        else:
            assert row["gradient_error"] is None
    assert len(document["summary"]) == len(hf_agreement.BACKENDS)


def test_report_and_cli_registration(document):
    text = hf_agreement.report(document)
    assert "gpt2" in text and "worst gradient error" in text
    assert hf_agreement.markdown(document).count("\n| gpt2 |") == 1
    args = build_parser().parse_args(["hf-agreement", "--seeds", "1", "--architectures", "qwen2,marian"])
    assert (args.suite, args.seeds, args.architectures) == ("hf-agreement", 1, "qwen2,marian")


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="seeds"):
        hf_agreement.run(seeds=0, progress=None)
    with pytest.raises(ValueError, match="architectures"):
        hf_agreement.run(seeds=1, architectures=("gpt3",), progress=None)
