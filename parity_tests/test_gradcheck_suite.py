"""README's main job: the float64 gradient check of every layer passes."""

from rosetta.cli import main
from reference.gradcheck_suite import TOLERANCE, run_suite


def test_every_layer_of_the_suite_passes():
    rows = list(run_suite(max_entries=10))
    assert len(rows) >= 35
    failures = [(r.layer, r.worst) for r in rows if not r.worst <= TOLERANCE]
    assert not failures


def test_the_command_prints_a_table_and_exits_zero(capsys):
    assert main(["gradcheck", "--only", "Linear", "LayerNorm"]) == 0
    out = capsys.readouterr().out
    assert "Linear" in out and "LayerNorm" in out and "all layers pass" in out
