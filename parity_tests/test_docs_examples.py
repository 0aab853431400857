"""Every example in README.md and docs/**/*.md runs as written; a failing example fails the suite.

What counts as an example: a fenced code block (```lang ... ```) whose language is

* ``python`` / ``py`` / ``python3``: the Python blocks of one file run in order in one namespace (a later
  block may use the names an earlier one defined), in a fresh temporary working directory, with
  ``MPLBACKEND=Agg``. Blocks marked ``exec="on"`` (``` ```python exec="on" ```) are skipped here: the
  MkDocs build runs them (markdown-exec) and its strict build fails if one raises, so running them here
  too would run them twice (the same holds for a shell block marked ``exec="on"``).
* ``bash`` / ``sh`` / ``shell`` / ``console``: run command by command (``bash -c``, each must exit 0) in the
  same temporary directory, with this interpreter's ``bin/`` first on PATH (``rosetta``, ``python``). In a
  ``console`` block only the lines after a ``$ `` prompt are commands (the other lines are their output);
  a line ending in ``\\`` continues on the next.

Before the examples of a file run, every ``runs/<name>/`` folder they name (``runs/reverse/model.safetensors``)
is filled with a run trained once per session: the ``tiny`` preset with the small preset's 10 symbols a..j, so
that examples such as ``"c a f e"`` decode, and few steps (the examples check that commands run, not what the
model learned); the main job itself (about a minute) is not run.

Everything else (``text``, ``json``, an unnamed language, ...) is output or data, not code; so is a block
made only of snippet includes (``--8<-- "reference/rotary.py:rotary"``), which the site build fills with
source code from the repository: a listing of definitions, not an example.

A block that cannot run in CI (it needs a GPU, the network, or a long run such as the main job itself) is
marked in the Markdown by an HTML comment on the line right before it (blank lines allowed between)::

    <!-- example: skip (needs a GPU) -->

and is reported here as a skipped test with its reason (``pytest -ra`` lists them). A block without the
marker must run. A command in an indented (unfenced) code block (``$ ...``, ``rosetta ...``, ``python ...``)
cannot run here and must carry a skip marker (README's two set-up commands, read by ``.ci/run``); one without
is an error: it would escape this test.
"""

import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
BIN = Path(sys.executable).parent

PYTHON = {"python", "py", "python3"}
SHELL = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[^\s`{]*)(?P<info>.*)$")
SKIP = re.compile(r"^\s*<!--\s*example:\s*skip\s*\((?P<reason>.+)\)\s*-->\s*$")
#: an indented (unfenced) code line that is a command: a prompt, a command of this project, an env assignment
UNFENCED_COMMAND = re.compile(r"^( {4,}|\t)(\$ |(rosetta|python3?|pip|torchrun|pytest|bash)\s|[A-Z_]+=\S* )")
#: a pymdownx.snippets include (--8<-- "reference/rotary.py:rotary"): the build pastes source code there
SNIPPET = re.compile(r"""^\s*-{1,3}8<-{1,3}\s""")
INDENTED = re.compile(r"^( {4,}|\t)\S")
RUN_DIR = re.compile(r"\bruns/([A-Za-z0-9_.-]+)/")
#: each command of a shell example gets this long (the slowest, `rosetta gradcheck`, takes about 10 s)
COMMAND_TIMEOUT_S = 300


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    info: str
    code: str
    skip: str  # the reason of a skip marker, or ""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        if all(SNIPPET.match(line) for line in self.code.splitlines() if line.strip()) and self.code.strip():
            return "listing"
        if self.lang in PYTHON | SHELL and re.search(r"""\bexec=["']?(on|true|1)\b""", self.info):
            return "exec"
        return "python" if self.lang in PYTHON else "shell" if self.lang in SHELL else "text"


def blocks(path: Path) -> list:
    """The fenced code blocks of a Markdown file, with the skip marker that precedes each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent"))
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence[0] * len(fence))
                                      and not lines[j].strip().strip(fence[0])):
            j += 1
        body = "\n".join(line[indent:] if line[:indent].strip() == "" else line for line in lines[i + 1:j])
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = SKIP.match(lines[k]) if k >= 0 else None
        out.append(Block(path, i + 1, m.group("lang").lower(), m.group("info"), body,
                         marker.group("reason").strip() if marker else ""))
        i = j + 1
    return out


def indented_commands(path: Path) -> list:
    """Indented (unfenced) code blocks that hold a command, as console blocks with the skip marker before each.

    They cannot run here (nothing marks which of their lines are output); one with a skip marker is reported
    as skipped, one without is an error. README.md keeps its two set-up commands in this form: ``.ci/run``
    reads the test command from the indented line ``    $ ...  # tests``.
    """
    lines, inside, found = path.read_text(encoding="utf-8").splitlines(), None, {}
    for n, line in enumerate(lines):
        m = FENCE.match(line)
        if m and inside is None:
            inside = m.group("fence")
        elif inside and line.strip().startswith(inside) and not line.strip().strip(inside[0]):
            inside = None
        elif inside is None and UNFENCED_COMMAND.match(line):
            start = n
            while start > 0 and lines[start - 1].strip() and INDENTED.match(lines[start - 1]):
                start -= 1
            if start in found:
                continue
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            marker = SKIP.match(lines[k]) if k >= 0 else None
            end = start
            while end < len(lines) and INDENTED.match(lines[end]):
                end += 1
            found[start] = Block(path, start + 1, "console", "(indented)", "\n".join(l.strip() for l in lines[start:end]),
                                 marker.group("reason").strip() if marker else "")
    return list(found.values())


def commands(block: Block) -> list:
    """The commands of a shell block, continuation lines joined."""
    out, pending = [], ""
    for raw in block.code.splitlines():
        line = raw.rstrip()
        if not pending:
            if block.lang == "console":
                if not line.lstrip().startswith("$ "):
                    continue  # output
                line = line.lstrip()[2:]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        out.append(pending + line.strip())
        pending = ""
    if pending:
        out.append(pending)
    return out


ALL = {path: blocks(path) for path in DOCS}
CODE = {path: [b for b in bs if b.kind in ("python", "shell")] for path, bs in ALL.items()}
RUNNABLE = [path for path, bs in CODE.items() if any(not b.skip for b in bs)]
INDENTED_COMMANDS = [b for path in DOCS for b in indented_commands(path)]
SKIPPED = [b for bs in CODE.values() for b in bs if b.skip] + [b for b in INDENTED_COMMANDS if b.skip]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A run folder (model.safetensors, run.json, loss_curve.png) of the tiny preset, trained once."""
    where = tmp_path_factory.mktemp("docs_model")
    result = subprocess.run(
        [str(BIN / "rosetta"), "train", "--task", "reverse", "--config", "tiny", "num_symbols=10",
         "--steps", "20", "--quiet", "--out", str(where / "run")],
        cwd=where, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, env=environment())
    assert result.returncode == 0, result.stdout + result.stderr
    return where / "run"


def environment() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MPLBACKEND"] = "Agg"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(ROOT)
    return env


def run_python(block: Block, namespace: dict) -> None:
    try:
        exec(compile(block.code, block.where, "exec"), namespace)
    except Exception as error:
        raise AssertionError(f"the example at {block.where} raised {type(error).__name__}: {error}") from error


def run_shell(block: Block, cwd: Path) -> None:
    for command in commands(block):
        result = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT_S, env=environment())
        if result.returncode != 0:
            raise AssertionError(f"the example at {block.where}: `{command}` exited with {result.returncode}\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run(path, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.syspath_prepend(str(ROOT))
    todo = [b for b in CODE[path] if not b.skip]
    for name in sorted({name for b in todo for name in RUN_DIR.findall(b.code)}):
        shutil.copytree(request.getfixturevalue("trained_run"), tmp_path / "runs" / name, dirs_exist_ok=True)
    namespace = {"__name__": "__main__"}
    torch = sys.modules.get("torch")
    torch_dtype = torch.get_default_dtype() if torch else None
    try:
        with np.errstate(), warnings.catch_warnings():  # an example's global settings stay in its test
            for block in todo:
                if block.kind == "python":
                    run_python(block, namespace)
                else:
                    run_shell(block, tmp_path)
    finally:
        if torch_dtype is not None:
            torch.set_default_dtype(torch_dtype)
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")


@pytest.mark.parametrize("block", SKIPPED, ids=lambda b: b.where)
def test_skipped_examples_are_reported(block):
    pytest.skip(f"{block.where} ({block.lang}) not run: {block.skip}")


def test_every_command_is_in_a_fenced_block():
    found = [b.where for b in INDENTED_COMMANDS if not b.skip]
    assert not found, (f"commands in indented code blocks escape the examples test; fence them (or mark them "
                       f"<!-- example: skip (reason) -->): {found}")


def test_the_parser_finds_blocks_and_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```python\nx = 1\n```\n\n<!-- example: skip (needs a GPU) -->\n\n"
                    "```console\n$ rosetta info \\\n  --x\noutput\n$ echo hi\n```\n\n"
                    '```python exec="on"\nprint(1)\n```\n\n```text\nout\n```\n\n'
                    '```python\n--8<-- "reference/rotary.py:rotary"\n```\n', encoding="utf-8")
    found = blocks(page)
    assert [(b.line, b.kind, b.skip) for b in found] == [
        (3, "python", ""), (9, "shell", "needs a GPU"), (16, "exec", ""), (20, "text", ""), (24, "listing", "")]
    assert commands(found[1]) == ["rosetta info --x", "echo hi"]


def test_indented_commands_need_a_marker(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n<!-- example: skip (network) -->\n\n    $ pip install x  # setup\n\nmore\n\n"
                    "    rosetta info\n    rosetta gradcheck\n\n* a list item\n\n    continued prose\n", encoding="utf-8")
    found = indented_commands(page)
    assert [(b.line, b.skip, b.code) for b in found] == [
        (5, "network", "$ pip install x  # setup"), (9, "", "rosetta info\nrosetta gradcheck")]
