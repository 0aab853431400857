"""Rules of the test suite itself, checked on its source.

* Example counts come from the active hypothesis profile: no test writes ``max_examples=``;
  one that is expensive asks for a share of the profile with ``strategies.examples(share)``.
* Every tolerance lives in ``parity_tests/tolerances.py`` with its reasoning: no other file
  passes a literal tolerance (``atol=1e-12``), leaves one implicit (``np.allclose(a, b)`` and
  ``pytest.approx(x)`` carry defaults of their own), names a table of them (``TOL = ...``) or
  compares an error with a small literal (``err < 1e-8``). Exact comparisons
  (``assert_array_equal``, ``==``, ``rtol=0``) are not tolerances and pass.
* A hypothesis strategy drawn in several files is defined once, in ``parity_tests/strategies.py``.
"""

import ast
from pathlib import Path

import pytest
from hypothesis import settings

from parity_tests.strategies import PROFILE_EXAMPLES, examples

HERE = Path(__file__).resolve().parent
SOURCES = sorted(p for p in HERE.rglob("*.py") if "__pycache__" not in p.parts)

#: the one file that turns profiles into example counts
EXAMPLES_HOME = HERE / "strategies.py"
#: the one file that writes tolerances down
TOLERANCES_HOME = HERE / "tolerances.py"
#: this file quotes what the rules forbid, to test them
THIS_FILE = Path(__file__).resolve()

TOLERANCE_KEYWORDS = {"atol", "rtol", "rel", "abs", "tol", "tolerance"}
#: approximate comparisons: name -> how many leading positional arguments are values, not tolerances
APPROXIMATE = {"assert_allclose": 2, "allclose": 2, "isclose": 2, "approx": 1, "assert_almost_equal": 2,
               "assert_array_almost_equal": 2}
#: a float literal this small in an ordering comparison is a tolerance (err < 1e-8, |mean| < 0.01)
SMALL = 0.1


def relative(path: Path) -> str:
    return str(path.relative_to(HERE.parent))


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def read(path: Path) -> tuple:
    """(source, name shown in messages) of a file of the suite."""
    return path.read_text(encoding="utf-8"), relative(path)


def call_name(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def nonzero_literals(node: ast.AST) -> list:
    """Numeric literals other than 0 in an expression (not inside the arguments of a call: atol=k * np.max(g)
    checks k, not g's construction)."""
    found = []

    def visit(n):
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool):
            if n.value != 0:
                found.append(n.value)
        elif isinstance(n, ast.Call):
            visit(n.func)  # float(1e-3) is a literal; f(x, 3) is a call
            if call_name(n) in ("float", "Decimal"):
                for a in n.args:
                    visit(a)
        else:
            for child in ast.iter_child_nodes(n):
                visit(child)

    visit(node)
    return found


def small_floats(node: ast.AST) -> list:
    """Float literals 0 < |v| < SMALL in an arithmetic expression (calls are not entered)."""
    found = []

    def visit(n):
        if isinstance(n, ast.Constant) and isinstance(n.value, float) and 0 < abs(n.value) < SMALL:
            found.append(n.value)
        elif isinstance(n, (ast.BinOp, ast.UnaryOp)):
            for child in ast.iter_child_nodes(n):
                visit(child)

    visit(node)
    return found


def names_a_tolerance(name: str) -> bool:
    """TOL, RTOL, FLOAT64_TOL, rtol, tolerance_table: a variable holding tolerances."""
    return any(part.endswith("TOL") or part.startswith("TOLERANCE") for part in name.upper().split("_"))


def negated(node: ast.Call, parents: dict) -> bool:
    """True for ``assert not allclose(...)``: a check that values differ, not that they agree."""
    parent = parents.get(node)
    return isinstance(parent, ast.UnaryOp) and isinstance(parent.op, ast.Not)


def tolerance_violations(source: str, name: str) -> list:
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out = []
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            function = call_name(node)
            for kw in node.keywords:
                if kw.arg in TOLERANCE_KEYWORDS and nonzero_literals(kw.value):
                    out.append(f"{where}: literal tolerance {kw.arg}={ast.unparse(kw.value)}")
            if function in APPROXIMATE:
                extra = node.args[APPROXIMATE[function]:]
                if any(nonzero_literals(a) for a in extra):
                    out.append(f"{where}: literal positional tolerance in {function}(...)")
                named = {kw.arg for kw in node.keywords} & TOLERANCE_KEYWORDS
                if not named and not extra and not negated(node, parents):
                    out.append(f"{where}: {function}(...) with its default tolerance: name one from tolerances.py")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and names_a_tolerance(t.id) and node.value is not None \
                        and nonzero_literals(node.value):
                    out.append(f"{where}: tolerance {t.id} written outside tolerances.py")
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE))
                                                   for op in node.ops):
            smalls = [v for side in [node.left, *node.comparators] for v in small_floats(side)]
            if smalls:
                out.append(f"{where}: comparison with the literal tolerance {smalls[0]!r}: {ast.unparse(node)}")
    return out


def max_examples_violations(source: str, name: str) -> list:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and any(kw.arg == "max_examples" for kw in node.keywords):
            out.append(f"{name}:{node.lineno}: max_examples= written here; "
                       "use parity_tests.strategies.examples(share)")
        if isinstance(node, ast.Attribute) and node.attr == "max_examples":
            out.append(f"{name}:{node.lineno}: reads max_examples; use parity_tests.strategies.examples(share)")
    return out


def test_examples_are_a_share_of_the_active_profile():
    for name, count in PROFILE_EXAMPLES.items():
        assert settings.get_profile(name).max_examples == count
    active = settings.default.max_examples
    assert active in PROFILE_EXAMPLES.values()  # conftest.py loaded one of them
    for share in (0.01, 0.25, 0.4, 1, 3):
        assert examples(share).max_examples == max(1, round(active * share))
    assert examples(0.4).derandomize == settings.default.derandomize  # the rest of the profile is kept
    with pytest.raises(ValueError, match="share"):
        examples(0)


@pytest.mark.parametrize("path", [p for p in SOURCES if p not in (EXAMPLES_HOME, THIS_FILE)], ids=relative)
def test_example_counts_come_from_the_profile(path):
    problems = max_examples_violations(*read(path))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", [p for p in SOURCES if p not in (TOLERANCES_HOME, THIS_FILE)], ids=relative)
def test_tolerances_are_written_once(path):
    problems = tolerance_violations(*read(path))
    assert not problems, "\n".join(problems)


def test_every_tolerance_has_its_reasoning():
    """Each constant of tolerances.py has a comment saying why that number: on its line, or in the
    block of lines (no blank line between) that it ends."""
    lines = TOLERANCES_HOME.read_text(encoding="utf-8").splitlines()
    missing = []
    for node in parse(TOLERANCES_HOME).body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign)):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = [t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper()]
        if not names:
            continue
        block = [lines[node.lineno - 1]]
        i = node.lineno - 2
        while i >= 0 and lines[i].strip():
            block.append(lines[i])
            i -= 1
        if not any("#" in line for line in block):
            missing.append(f"tolerances.py:{node.lineno}: {names[0]} has no comment saying why")
    assert not missing, "\n".join(missing)


def composite_strategies(path: Path) -> set:
    """Names of the @st.composite functions a file defines."""
    names = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.FunctionDef) and any(
                ast.unparse(d).endswith("composite") for d in node.decorator_list):
            names.add(node.name)
    return names


def test_shared_strategies_are_defined_once():
    """A composite strategy defined in two files belongs in strategies.py (and one named like a shared
    one must not shadow it)."""
    shared = composite_strategies(EXAMPLES_HOME)
    seen = {}
    for path in SOURCES:
        if path == EXAMPLES_HOME:
            continue
        for name in composite_strategies(path):
            seen.setdefault(name, []).append(relative(path))
    problems = [f"{name} defined in {files}" for name, files in seen.items() if len(files) > 1]
    problems += [f"{name} shadows parity_tests.strategies.{name} in {files}" for name, files in seen.items()
                 if name in shared]
    assert not problems, "\n".join(problems)


# ---- the rules catch what they are meant to catch ------------------------------------------------


@pytest.mark.parametrize("source, caught", [
    ("np.testing.assert_allclose(a, b, rtol=1e-12)", True),
    ("np.testing.assert_allclose(a, b, 1e-12)", True),
    ("np.testing.assert_allclose(a, b)", True),
    ("assert torch.allclose(a, b)", True),
    ("assert x == pytest.approx(y)", True),
    ("assert x == pytest.approx(y, abs=1e-20)", True),
    ("assert_close(a, b, dtype, 'w', tol=1e-5 if f else 1e-4)", True),
    ("FLOAT64_TOL = 1e-12", True),
    ("rtol = RTOL if f else 1e-6", True),
    ("total = 1e-3", False),
    ("TOL = {'float32': 1e-5}", True),
    ("assert report.worst < 1e-8", True),
    ("assert abs(a - b) <= 1e-4 * b", True),
    ("np.testing.assert_allclose(a, b, rtol=T.CLOSED_FORM)", False),
    ("np.testing.assert_allclose(a, b, rtol=0)", False),
    ("np.testing.assert_allclose(a, b, rtol=0, atol=T.X * np.max(g))", False),
    ("assert not np.allclose(a, b)", False),
    ("np.testing.assert_array_equal(a, b)", False),
    ("assert x == 1e-5", False),
    ("assert abs(z - p) < 5 * np.sqrt(p * (1 - p) / n)", False),
    ("assert report.worst <= GRADCHECK_TOL", False),
])
def test_tolerance_rule_on_examples(source, caught):
    problems = tolerance_violations(source, "example")
    assert bool(problems) == caught, problems


@pytest.mark.parametrize("source, caught", [
    ("@settings(max_examples=8)\ndef f(): pass", True),
    ("S = settings(max_examples=3 * settings.default.max_examples)", True),
    ("@examples(0.4)\ndef f(): pass", False),
    ("@settings(deadline=None)\ndef f(): pass", False),
])
def test_max_examples_rule_on_examples(source, caught):
    assert bool(max_examples_violations(source, "example")) == caught
