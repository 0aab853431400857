"""docs/docstring_markdown.py: the plain-text docstrings become Markdown that renders as they are laid out.

The API pages (docs/api/*.md, mkdocstrings) render each docstring as Markdown; the Griffe extension
rewrites it first. Checked here without building the site (about 1 s): representative docstrings
in, the exact Markdown out; and over every docstring of reference/, accelerated/ and rosetta/
(read with ast, nothing imported), that every formula line (indented or column-aligned) comes out
whole, on a line of its own, in a preformatted block, and that no word is lost or added.
"""

from __future__ import annotations

import ast
import html
import importlib.util
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity_tests.strategies import examples

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("griffe", reason="the extension is a Griffe extension: griffe comes with the docs extra")


def _load():
    spec = importlib.util.spec_from_file_location("docstring_markdown", ROOT / "docs" / "docstring_markdown.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert = _load().docstring_to_markdown


def _docstrings(*packages: str):
    """(where, cleaned docstring) of every module, class and function of the packages, read statically."""
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in [tree, *ast.walk(tree)]:
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=True)
                    if doc:
                        yield f"{path.relative_to(ROOT)}:{getattr(node, 'name', '<module>')}", doc


DOCSTRINGS = list(_docstrings("reference", "accelerated", "rosetta"))


_MARKER = re.compile(r"^([-*+•]|\d{1,2}[.)])$")


def _output_lines(markdown: str) -> list[tuple[str, str]]:
    """(where, text) of each line of the Markdown as a reader sees it: where is "fence" (inside a ```
    block, verbatim), "list" (an item or its continuation) or "prose"; escapes and entities undone."""
    lines, fence = [], None
    for line in markdown.splitlines():
        m = re.match(r"^\s*(`{3,})", line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and line.strip() == fence:
            fence = None
        elif fence is not None:
            lines.append(("fence", line.strip()))
        else:
            where = "list" if re.match(r"^(\s+\S|([-*+•]|\d{1,2}[.)])\s)", line) else "prose"
            lines.append((where, html.unescape(re.sub(r"\\(.)", r"\1", line)).strip()))
    return lines


def _formula_lines(doc: str) -> list[tuple[str, bool]]:
    """The lines a reader of the source sees as laid out (indented, or aligned in columns), each with
    whether it may be a list's line (its paragraph has bullets or steps) rather than a block's."""
    lines = []
    for paragraph in re.split(r"\n\s*\n", doc):
        in_list = any(re.match(r"^([-*+•]|\d{1,2}[.)])\s", line) for line in paragraph.splitlines())
        lines += [(line.strip(), in_list) for line in paragraph.splitlines()
                  if line.strip() and (line.startswith(" ") or re.search(r"\S {3,}\S", line))]
    return lines


def _words(text: str) -> list[str]:
    """The words, without list markers, Sphinx roles and bold marks (the conversion turns them into Markdown's)."""
    text = re.sub(r":[a-z]+:`", "`", text).replace("**", "")
    return [w for w in text.split() if not _MARKER.match(w)]


def _item_text(line: str) -> str:
    return re.sub(r"^([-*+•]|\d{1,2}[.)])\s+", "", line)


# ---- representative docstrings ------------------------------------------------------------------------

CASES = {
    "formula block after a lead-in line": (
        "Linear map.\n\nForward:\n    y = x Wᵀ + b        x: (..., in)\n    dx = dy W           dy: (..., out)",
        "Linear map.\n\nForward:\n\n```text\ny = x Wᵀ + b        x: (..., in)\ndx = dy W           dy: (..., out)\n```",
    ),
    "a label with aligned continuation lines is one block": (
        "Norm.\n\nForward:   r = 1/√(mean(x²) + ε)\n           y = x r\nBackward:  dx = r (dy − x̂ mean(dy ⊙ x̂))",
        "Norm.\n\n```text\nForward:   r = 1/√(mean(x²) + ε)\n           y = x r\n"
        "Backward:  dx = r (dy − x̂ mean(dy ⊙ x̂))\n```",
    ),
    "wrapped prose is joined, name: meaning lines keep their breaks": (
        "inputs: the positional inputs (float arrays are differentiated; integer arrays such as\n"
        "token ids are passed through). kwargs: keyword inputs, never differentiated.\n"
        "max_entries: at most this many entries per tensor.",
        "inputs: the positional inputs (float arrays are differentiated; integer arrays such as\n"
        "token ids are passed through). kwargs: keyword inputs, never differentiated.  \n"
        "max\\_entries: at most this many entries per tensor.",
    ),
    "a short line where the next word would have fit keeps its break": (
        "memory = encode(src) once;  y₀ = BOS\nA row stops at its first EOS; decoding stops when every row has\n"
        "stopped.",
        "memory = encode(src) once;  y₀ = BOS  \nA row stops at its first EOS; decoding stops when every row has\n"
        "stopped.",
    ),
    "Markdown's characters are shown literally, code spans stay code": (
        "s = max_i |W_oi| / 127, a*b*c, y_<t, x[i][j], $HOME and :func:`gradcheck` or ``a*b``, **a_b**.",
        "s = max\\_i |W\\_oi| / 127, a\\*b\\*c, y\\_&lt;t, x&#91;i&#93;&#91;j&#93;, \\$HOME and `gradcheck` or ``a*b``, "
        "**a\\_b**.",
    ),
    "bullets with hanging lines become a list": (
        "Sections:\n\n- ``versions``: python, numpy and\n  torch.\n- ``device``: its name\n  - nested: a detail",
        "Sections:\n\n- ``versions``: python, numpy and\n    torch.\n- ``device``: its name\n    - nested: a detail",
    ),
    "numbered steps laid out in columns stay as typed": (
        "By |x|:\n\n1. |x| < ½:       the Taylor series\n                  and the subnormals.\n2. The sign:      erf is odd.",
        "By |x|:\n\n```text\n1. |x| < ½:       the Taylor series\n                  and the subnormals.\n"
        "2. The sign:      erf is odd.\n```",
    ),
    "doctest examples become a console block": (
        "Add.\n\nFor example:\n>>> add(1, 2)\n3",
        "Add.\n\nFor example:\n\n```pycon\n>>> add(1, 2)\n3\n```",
    ),
    "a sentence before an indented formula stays prose": (
        "Softmax over the last axis.\n    p = exp(z − max z) / Σ exp(z − max z)",
        "Softmax over the last axis.\n\n```text\np = exp(z − max z) / Σ exp(z − max z)\n```",
    ),
    "a code example in two parts is one block; an existing fence is kept": (
        "Run:\n\n    a = 1\n\n    b = 2\n\n```python\nx = a*b\n```",
        "Run:\n\n```text\na = 1\n\nb = 2\n```\n\n```python\nx = a*b\n```",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_representative_docstrings(name):
    source, expected = CASES[name]
    assert convert(source) == expected


def test_the_extension_is_registered():
    """mkdocs.yml loads it for the python handler (else the API pages get the raw docstrings)."""
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert "- docs/docstring_markdown.py:DocstringMarkdown" in config
    assert "docstring_markdown.py" in config.split("exclude_docs:")[1].split("\n\n")[0], "not a page of the site"


# ---- every docstring of the project ------------------------------------------------------------------------

def test_every_formula_line_is_kept_whole_in_a_block():
    """In order, each one a whole line of a ``` block (or of a list item, for a bullet's hanging lines)."""
    assert len(DOCSTRINGS) > 300, "the sources were not found"
    checked = 0
    for where, doc in DOCSTRINGS:
        out = _output_lines(convert(doc))
        position = 0
        for formula, in_list in _formula_lines(doc):
            found = next((i for i in range(position, len(out)) if out[i][0] == "fence" and out[i][1] == formula
                          or in_list and out[i][0] == "list" and _item_text(out[i][1]) == _item_text(formula)),
                         None)
            assert found is not None, f"{where}: formula line lost or merged: {formula!r}"
            checked += out[found][0] == "fence"
            position = found + 1
    assert checked > 500, "the check should have seen the project's formulas"


def test_no_word_is_lost_or_added():
    for where, doc in DOCSTRINGS:
        shown = "\n".join(text for _, text in _output_lines(convert(doc)))
        assert _words(shown) == _words(doc), where


# Markdown's special characters, list markers, colons, spaces; no backtick (a ``` line is a fence)
_LINE = st.text(alphabet="ab_*<>$[]|&#\\ :=1.-•", min_size=0, max_size=30)


@examples(2)
@given(st.lists(st.tuples(st.integers(0, 6), _LINE), min_size=1, max_size=12))
def test_any_text_keeps_its_words_and_indented_lines(lines):
    """Whatever the layout: no word lost or added, each indented line whole in a block."""
    doc = "\n".join(" " * indent + text.strip() if text.strip() else "" for indent, text in lines).strip("\n")
    out = _output_lines(convert(doc))
    assert _words("\n".join(text for _, text in out)) == _words(doc), convert(doc)
    indented = [line.strip() for line in doc.splitlines() if line.startswith(" ") and line.strip()]
    assert all(any(where != "prose" and _item_text(text) == _item_text(line) for where, text in out)
               for line in indented), convert(doc)
