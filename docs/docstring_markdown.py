"""A Griffe extension: plain-text docstrings become Markdown that renders as their authors laid them out.

The docstrings of reference/, accelerated/ and rosetta/ are written for people reading the source:
formulas and shape tables on indented or column-aligned lines, ``name: meaning`` lists, numbered
steps, ``>>>`` examples. mkdocstrings renders a docstring as Markdown (``docstring_style: null``),
which would join those lines into one paragraph and read ``*``, ``_``, ``<`` in formulas as markup.
mkdocs.yml registers this module under the python handler's ``extensions:``; it rewrites every
docstring Griffe loads with :func:`docstring_to_markdown`, once, before rendering. The sources
are not changed.

The rules, per paragraph (lines between blank lines), general and without per-file exceptions:

- Indented lines become a preformatted block (a ```` ```text ```` fence), verbatim. The flush line
  just before them joins the block, unless it ends with ``:`` or ``.`` (then it is a lead-in or a
  sentence that stays prose): ``Forward:   Q = ...`` with its aligned continuation lines is one block.
- A flush line with a run of three or more spaces inside (column alignment) is preformatted too,
  and so is one with two spaces inside right after such a block (``Backward:  dx = ...``).
- From a ``>>>`` line to the paragraph's end: a ```` ```pycon ```` block (an interactive session).
- ``- item`` / ``1. step`` lines become a Markdown list (their hanging continuation lines are the
  item's text); a list whose lines are column-aligned stays preformatted instead.
- The rest is prose: Markdown's special characters are escaped (outside ``code`` spans; ``**bold**``
  stays bold), and a line break is kept where the author clearly meant one: before a ``name:
  meaning`` line, and after a line that stops short although the next word would have fit (the
  docstring's longest lines show how wide the author wraps).
- Fenced code blocks already in a docstring are left as they are.
"""

from __future__ import annotations

import re

import griffe

# a bullet ("- ", "* ", "+ ", "• ") or a numbered step ("1. ", "2) ")
_ITEM = re.compile(r"^(\s*)([-*+•]|\d{1,2}[.)])\s+(\S.*)$")
# a fence opening or closing: ``` or ~~~ (three or more)
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
# column alignment inside a line: three spaces or more between two words
_ALIGNED = re.compile(r"\S {3,}\S")
# two spaces inside a line: the way these docstrings set a formula apart
_SPACED = re.compile(r"\S {2,}\S")
# "name: meaning" (name, name(args) or name.attr, then ": ")
_LABEL = re.compile(r"^[A-Za-z_][\w.]*(\([^()]*\))?(, [A-Za-z_][\w.]*(\([^()]*\))?)*:(\s|$)")
# inline code: ``x`` or `x` (kept as it is; an RST role before it, :func:`x`, is dropped), or
# **emphasis** (bold in plain text too: kept); a single * stays a literal star (a*b in a formula)
_CODE_SPAN = re.compile(r"(?::[a-z]+:)?(``.+?``|`[^`]+`)|\*\*(\S(?:[^*]*?\S)?)\*\*")
# a line break is kept when the next word would have fit with this much room to spare
_WRAP_SLACK = 4


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _escape(text: str) -> str:
    """Plain text as Markdown that shows it literally (its code spans stay code, its **bold** bold)."""
    out, start = [], 0
    for m in _CODE_SPAN.finditer(text):
        out.append(_escape_plain(text[start:m.start()]))
        out.append(m.group(1) if m.group(1) else "**" + _escape_plain(m.group(2)) + "**")
        start = m.end()
    out.append(_escape_plain(text[start:]))
    return "".join(out)


def _escape_plain(text: str) -> str:
    text = text.replace("\\", "\\\\")  # first: the escapes below add backslashes
    for char in "*_$":
        text = text.replace(char, "\\" + char)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # brackets as entities: "\\[" would open display math (arithmatex), "x[i][j]" a cross-reference (autorefs)
    return text.replace("[", "&#91;").replace("]", "&#93;")


def _escape_line_start(line: str) -> str:
    """What Markdown would read as a heading, a quote or a list at the start of a line, shown literally."""
    if re.match(r"^(#|\d+[.)]\s|[-+]+\s*$)", line):
        return re.sub(r"^(\d+)([.)])", r"\1\\\2", line) if line[0].isdigit() else "\\" + line
    if re.match(r"^=+\s*$", line):  # a setext underline ("=" has no backslash escape)
        return "&#61;" + line[1:]
    return line


def _fence(lines: list[str], language: str) -> str:
    """A fenced block holding ``lines`` verbatim (dedented), its fence longer than any inside."""
    width = min((_indent(line) for line in lines if line.strip()), default=0)
    body = [line[width:].rstrip() for line in lines]
    ticks = "`" * max([3] + [len(run) + 1 for line in body for run in re.findall(r"`{3,}", line)])
    return "\n".join([ticks + language, *body, ticks])


def _wrap_width(prose: list[list[str]]) -> int:
    """How wide the author wraps: the longest line that is not its paragraph's last, the odd overlong one left out."""
    lengths = sorted(len(line) for lines in prose for line in lines[:-1]) or [
        len(line) for lines in prose for line in lines]
    if not lengths:
        return 0
    median = lengths[len(lengths) // 2]
    return max(n for n in lengths if n <= 1.1 * median)


def _breaks(lines: list[str], width: int) -> list[bool]:
    """For each line but the last: does the author's line break after it carry meaning?"""
    keep = []
    for line, following in zip(lines, lines[1:]):
        fits = len(line) + 1 + len(following.split()[0]) + _WRAP_SLACK <= width  # the line stops short
        # "name: meaning" lines: a list, unless the label is a wrapped sentence's next word
        listed = bool(_LABEL.match(following)) and (line.rstrip()[-1] in ".;:,)!?'\"`" or bool(_LABEL.match(line)))
        keep.append(fits or listed)
    return keep


def _prose(lines: list[str], width: int) -> str:
    """Flush lines of text: escaped, joined, with the meaningful line breaks kept (Markdown's "  \\n")."""
    breaks = _breaks(lines, width) + [False]
    escaped = [_escape_line_start(_escape(line.strip())) for line in lines]
    return "".join(text + ("  \n" if brk else "\n") for text, brk in zip(escaped, breaks)).rstrip("\n")


def _list(lines: list[str]) -> str:
    """Bullets or numbered steps (with their hanging continuation lines) as a Markdown list."""
    out, levels = [], []  # levels: the indents of the open items, outermost first
    for line in lines:
        m = _ITEM.match(line)
        if m:
            indent = len(m.group(1))
            while levels and levels[-1] > indent:
                levels.pop()
            if not levels or indent > levels[-1]:
                levels.append(indent)
            depth = len(levels) - 1
            marker = "-" if not m.group(2)[0].isdigit() else m.group(2)[:-1] + "."
            out.append("    " * depth + marker + " " + _escape_line_start(_escape(m.group(3))))
        else:  # a continuation line: part of the open item's paragraph
            out.append("    " * len(levels) + _escape_line_start(_escape(line.strip())))
    return "\n".join(out)


def _is_list(lines: list[str]) -> bool:
    """Lines starting with an item, every other line a hanging continuation, nothing column-aligned."""
    if not _ITEM.match(lines[0]) or _indent(lines[0]) > 0:
        return False
    content = len(lines[0]) - len(_ITEM.match(lines[0]).group(3))  # where the item's text starts
    for line in lines:
        item = _ITEM.match(line)
        if _ALIGNED.search(line.strip()):
            return False
        if not item and _indent(line) > content + 2:  # deeper than a hanging indent: a laid-out block
            return False
    return True


def _segments(paragraph: list[str]) -> list[tuple[str, list[str]]]:
    """Split a paragraph into ("pre" | "list" | "prose" | "pycon", lines) runs, in order."""
    doctest = next((i for i, line in enumerate(paragraph) if line.lstrip().startswith(">>>")), None)
    if doctest is not None:  # from the first ">>>" on: an interactive session
        return (_segments(paragraph[:doctest]) if doctest else []) + [("pycon", paragraph[doctest:])]
    segments: list[tuple[str, list[str]]] = []

    def add(kind: str, line: str) -> None:
        if segments and segments[-1][0] == kind:
            segments[-1][1].append(line)
        else:
            segments.append((kind, [line]))

    for line in paragraph:
        flush = _indent(line) == 0
        if segments and segments[-1][0] == "list" and (not flush or _ITEM.match(line)):
            add("list", line)
        elif flush and _ITEM.match(line):
            add("list", line)
        elif not flush:
            if segments and segments[-1][0] == "prose" and not segments[-1][1][-1].rstrip().endswith((":", ".")):
                lead = segments[-1][1].pop()  # "Forward:  y = ..." and its aligned continuation: one block
                if not segments[-1][1]:
                    segments.pop()
                add("pre", lead)
            add("pre", line)
        elif _ALIGNED.search(line) or (segments and segments[-1][0] == "pre" and _SPACED.search(line)):
            add("pre", line)  # laid out in columns, or a next "Backward:  dx = ..." right after a block
        else:
            add("prose", line)
    # a list laid out in columns reads best as it was typed
    return [("pre", lines) if kind == "list" and not _is_list(lines) else (kind, lines) for kind, lines in segments]


def docstring_to_markdown(text: str) -> str:
    """The Markdown that shows a plain-text docstring (already dedented, as Griffe keeps it) as laid out."""
    lines = text.expandtabs().splitlines()
    blocks: list[tuple[str, list[str]]] = []  # (kind, lines): "fence" (verbatim) or a paragraph
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m:  # an existing fence: verbatim up to its closing line
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(m.group(1))),
                       len(lines) - 1)
            blocks.append(("fence", lines[i:end + 1]))
            i = end + 1
        elif not lines[i].strip():
            i += 1
        else:
            j = i
            while j < len(lines) and lines[j].strip() and not _FENCE.match(lines[j]):
                j += 1
            blocks.append(("paragraph", lines[i:j]))
            i = j
    out: list[tuple[str, list[str]]] = []
    for kind, block in blocks:
        for seg_kind, seg in ([(kind, block)] if kind == "fence" else _segments(block)):
            # an indented block interrupted by a blank line (a code example in two parts) stays one block
            if seg_kind == "pre" and out and out[-1][0] == "pre" and all(
                    _indent(line) > 0 for line in seg + out[-1][1] if line):
                out[-1][1].extend(["", *seg])
            else:
                out.append((seg_kind, list(seg)))
    width = _wrap_width([seg for kind, seg in out if kind == "prose"])
    rendered = []
    for kind, seg in out:
        if kind == "fence":
            rendered.append("\n".join(seg))
        elif kind in ("pre", "pycon"):
            rendered.append(_fence(seg, "text" if kind == "pre" else "pycon"))
        elif kind == "list":
            rendered.append(_list(seg))
        else:
            rendered.append(_prose(seg, width))
    return "\n\n".join(rendered)


class DocstringMarkdown(griffe.Extension):
    """Rewrite each docstring as Markdown (docstring_to_markdown) when Griffe creates its object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None and obj.docstring.value:
            obj.docstring.value = docstring_to_markdown(obj.docstring.value)
