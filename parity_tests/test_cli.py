"""The ``rosetta`` command's entry points: the console script's function and ``python -m rosetta``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rosetta.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_every_command_is_listed(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    listed = capsys.readouterr().out
    for command in ("train", "decode", "plot-attention", "gradcheck", "info", "bench", "generate", "embed"):
        assert command in listed


def test_bench_passes_its_arguments_through_help_included(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "--help"])
    assert done.value.code == 0
    assert "attention" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", "no-such-suite"])
    assert "invalid choice" in capsys.readouterr().err


def test_python_dash_m_rosetta_runs_the_same_command():
    result = subprocess.run([sys.executable, "-m", "rosetta", "info"], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("python ")


def test_bench_refuses_an_unknown_implementation_in_one_line(capsys):
    assert main(["bench", "attention", "--implementations", "numpy"]) == 2
    error = capsys.readouterr().err
    assert "implementations" in error and "numpy-reference" in error and "Traceback" not in error
