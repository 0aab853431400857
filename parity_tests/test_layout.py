"""The house rules of the layout (SPEC, Layout): imports only go down.

    rosetta/       the application      may import accelerated, reference, third-party packages
    accelerated/   torch and CuPy       may import reference; never rosetta or parity_tests
    reference/     the specification    imports NumPy and the standard library, nothing else
    parity_tests/  the tests            imported by nothing else, and not an installed package

Each rule is checked on the source (every import statement, at module level or inside a
function) and, for the reference, on a running interpreter: what `sys.modules` holds after a
whole training step, decoding and a gradient check.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("reference", "accelerated", "rosetta")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in a file; relative imports stay in their package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
                "__import__", "import_module") and node.args and isinstance(node.args[0], ast.Constant):
            found.append((node.lineno, str(node.args[0].value).split(".")[0]))
    return found


def violations(package: str, allowed) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line} imports {module}"
            for path in sorted((ROOT / package).rglob("*.py"))
            for line, module in imported_modules(path) if not allowed(module)]


def test_reference_source_imports_numpy_and_the_standard_library_only():
    allowed = {"numpy", "reference"} | set(sys.stdlib_module_names)
    assert violations("reference", lambda module: module in allowed) == []


def test_accelerated_never_imports_the_application_or_the_tests():
    assert violations("accelerated", lambda module: module not in ("rosetta", "parity_tests")) == []


def test_product_code_never_imports_the_tests():
    for package in PACKAGES:
        assert violations(package, lambda module: module != "parity_tests") == [], package


def test_the_checker_sees_every_kind_of_import(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text(textwrap.dedent("""
        import torch.nn
        from cupy import ndarray
        from . import sibling
        def late():
            import matplotlib.pyplot
            return __import__("tqdm"), importlib.import_module("safetensors.numpy")
    """))
    assert sorted(module for _, module in imported_modules(source)) == [
        "cupy", "matplotlib", "safetensors", "torch", "tqdm"]


RUN_THE_SPECIFICATION = """
import sys
import numpy as np
np.random.default_rng(0), np.linalg.norm(np.ones(2))  # NumPy's own modules load before the count
before = set(sys.modules)
import reference as rt
from reference import flash_attention, gradcheck_suite

model = rt.Transformer(12, 12, d_model=16, num_heads=2, d_ff=32, num_encoder_layers=1, num_decoder_layers=1,
                       max_len=16, seed=0, dtype=np.float64)
lm = rt.DecoderLM(12, 16, 4, 32, 1, num_kv_heads=2, rotary=True, norm="rmsnorm", activation="swiglu",
                  positional=None, max_len=16, seed=0, dtype=np.float64)
rng = np.random.default_rng(0)
src, tgt = rng.integers(3, 12, (2, 5)), rng.integers(3, 12, (2, 4))
loss_fn, optimizer = rt.CrossEntropyLoss(label_smoothing=0.1), rt.AdamW(model.parameters(), lr=1e-3)
loss = loss_fn(model(src, tgt), tgt)
model.backward(loss_fn.backward()[0])
rt.clip_grad_norm_(model.parameters(), 1.0)
optimizer.step()
rt.greedy_decode(model, src, 6, 1, 2, use_cache=True)
rt.generate(lm, tgt, 3, temperature=0.8, top_k=4, seed=0)
rt.beam_search(model, src[:1], 6, 1, 2, beam_size=2)
q = rng.standard_normal((1, 2, 9, 8))
flash_attention.flash_attention_forward(q, q, q, block_q=4, block_k=4)
rt.GELU()(q)
for row in gradcheck_suite.run_suite(max_entries=2, names=["GELU", "MultiHeadAttention"]):
    assert row.passed, row
loaded = {name.split(".")[0] for name in set(sys.modules) - before}
print(" ".join(sorted(loaded - set(sys.stdlib_module_names))))
"""


def test_reference_runs_with_numpy_alone():
    """A training step, decoding and a gradient check load nothing but NumPy beside the standard library."""
    result = subprocess.run([sys.executable, "-c", RUN_THE_SPECIFICATION], cwd=ROOT, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(result.stdout.split()) - {"numpy", "reference"} == set(), result.stdout


def test_parity_tests_is_not_an_installed_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = pytest.importorskip("setuptools", reason="setuptools finds the packages pyproject installs")
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    installed = setuptools.find_packages(str(ROOT), include=include)
    assert "parity_tests" not in installed and not any(p.startswith("parity_tests.") for p in installed)
    for package in ("reference", "accelerated", "accelerated.cupy", "accelerated.cupy.emulator", "accelerated.torch",
                    "rosetta", "rosetta.bench"):
        assert package in installed, package
    assert config["project"]["scripts"]["rosetta"] == "rosetta.cli:main"
