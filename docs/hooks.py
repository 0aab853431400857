"""MkDocs hooks for the documentation site (mkdocs.yml: ``hooks: [docs/hooks.py]``).

Two jobs, both so that the built site works offline and ``mkdocs build --strict`` means something:

1. Links from a page to a file of the repository outside ``docs/`` (``../../reference/linear.py``,
   ``../../accelerated/cupy/kernels/README.md``, ...) cannot work on the built site as they are, since
   the site is built from ``docs/`` alone. A source file (``.py``, ``.cu``, ``.cuh``, ``.h``, ``.sh``,
   ``.toml``, ``.yml``) gets a page of its own in the site, ``source/<path>/`` (the whole file,
   highlighted, included by pymdownx.snippets at build time, so it is never stale), and the link
   points there: it works offline and on any copy of the site. Other files and folders are linked to
   the repository, ``{repository}/blob/main/<path>`` (``tree`` for a folder), where ``repository`` is
   ``extra.repository`` in mkdocs.yml. A link to a path that does not exist in the repository is left
   alone, so the strict build reports it.
2. MathJax is served by the site itself, never by a CDN: the pinned npm package is installed once
   into a cache folder (``npm install mathjax@<version>``; ``$ROSETTA_DOCS_CACHE``, default
   ``~/.cache/rosetta-docs``) and the files the page needs (the ``tex-chtml-full`` component, its
   fonts and the lazily loaded ``a11y``/``ui`` parts) are copied into ``<site>/javascripts/mathjax/``
   after every build. ``docs/javascripts/mathjax-config.js`` configures it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.rosetta")

MATHJAX_VERSION = "3.2.2"
#: files and folders of the npm package's es5/ that the site serves (fonts are loaded from
#: output/chtml/fonts/woff-v2 next to the script; a11y/ and ui/ are loaded on demand by the menu)
MATHJAX_FILES = ["tex-chtml-full.js", "output/chtml/fonts/woff-v2", "a11y", "ui"]
MATHJAX_SITE_DIR = "javascripts/mathjax"

REPO_ROOT = Path(__file__).resolve().parent.parent
#: source files that get a page of their own in the site (suffix -> the code fence's language)
SOURCE_LANGUAGES = {".py": "python", ".cu": "cpp", ".cuh": "cpp", ".h": "cpp", ".sh": "bash", ".toml": "toml",
                    ".yml": "yaml", ".yaml": "yaml"}
SOURCE_PAGES = "source"  # the site folder of those pages

# [text](target) and [text](target "title"); reference definitions "[id]: target"
_INLINE_LINK = re.compile(r"(\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")
_REF_LINK = re.compile(r"^(\s{0,3}\[[^\]]+\]:\s*)(\S+)", re.MULTILINE)
_FENCE = re.compile(r"^(\s*)(```|~~~)")


def _cache_dir() -> Path:
    root = os.environ.get("ROSETTA_DOCS_CACHE") or Path.home() / ".cache" / "rosetta-docs"
    return Path(root) / f"mathjax-{MATHJAX_VERSION}"


def mathjax_dir() -> Path:
    """The es5/ folder of the pinned MathJax, installed with npm into the cache on first use."""
    cache = _cache_dir()
    es5 = cache / "node_modules" / "mathjax" / "es5"
    if (es5 / MATHJAX_FILES[0]).is_file():
        return es5
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            "the docs serve MathJax from the site itself and need npm once to fetch it "
            f"(npm install mathjax@{MATHJAX_VERSION}); install Node.js/npm (Debian: apt-get install npm)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    log.info("installing mathjax@%s into %s", MATHJAX_VERSION, cache)
    subprocess.run(
        [npm, "install", "--silent", "--no-audit", "--no-fund", "--no-save", "--prefix", str(cache),
         f"mathjax@{MATHJAX_VERSION}"],
        check=True, stdout=subprocess.DEVNULL,
    )
    if not (es5 / MATHJAX_FILES[0]).is_file():
        raise RuntimeError(f"npm did not install {es5 / MATHJAX_FILES[0]}")
    return es5


def on_config(config, **kwargs):
    mathjax_dir()  # fail early, before the pages are built
    return config


def _repository(config) -> str:
    repository = (config.get("extra") or {}).get("repository")
    if not repository:
        raise RuntimeError("mkdocs.yml: extra.repository (the repository's URL) is needed for source links")
    return repository.rstrip("/")


def _repository_file(target: str, page_dir: Path, docs_dir: Path) -> Path | None:
    """The repository path a relative link points to, when it leaves docs/ and exists (else None)."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return None
    path_part = target.partition("#")[0]
    if not path_part:
        return None
    resolved = (page_dir / path_part).resolve()
    if resolved.is_relative_to(docs_dir) or not resolved.is_relative_to(REPO_ROOT) or not resolved.exists():
        return None
    return resolved


def _source_page(path: Path) -> str | None:
    """The site page (src path under docs/) that shows repository file ``path``, or None when it has none."""
    if not path.is_file() or path.suffix not in SOURCE_LANGUAGES:
        return None
    return f"{SOURCE_PAGES}/{path.relative_to(REPO_ROOT).as_posix()}.md"


def _links(markdown: str) -> list[str]:
    """Every link target outside fenced code blocks."""
    targets, fence = [], None
    for line in markdown.splitlines():
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(2)
        elif fence is not None:
            if m and m.group(2) == fence:
                fence = None
        else:
            targets += [t.group(2) for t in _INLINE_LINK.finditer(line)]
            targets += [t.group(2) for t in _REF_LINK.finditer(line)]
    return targets


def on_files(files, config, **kwargs):
    """Add a page for every source file some page links to (source/<path>.md: the file, included)."""
    from mkdocs.structure.files import File

    docs_dir = Path(config["docs_dir"]).resolve()
    wanted = set()
    for file in files.documentation_pages():
        page_dir = (docs_dir / file.src_path).parent
        for target in _links(Path(file.abs_src_path).read_text(encoding="utf-8")):
            path = _repository_file(target, page_dir, docs_dir)
            page = _source_page(path) if path is not None else None
            if page is not None:
                wanted.add((page, path.relative_to(REPO_ROOT).as_posix(), SOURCE_LANGUAGES[path.suffix]))
    for page, rel, language in sorted(wanted):
        content = (f"# `{rel}`\n\nThe file as it is in the repository (included when the site was built).\n\n"
                   f'```{language} linenums="1"\n--8<-- "{rel}"\n```\n')
        files.append(File.generated(config, page, content=content))
    return files


def _rewrite(target: str, page_dir: Path, docs_dir: Path, repository: str) -> str:
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return target  # absolute URL, mailto:, anchor or site-absolute path
    path_part, sep, anchor = target.partition("#")
    if not path_part:
        return target
    resolved = (page_dir / path_part).resolve()
    try:
        resolved.relative_to(docs_dir)
        return target  # a page or file of the site: MkDocs checks it
    except ValueError:
        pass
    try:
        rel = resolved.relative_to(REPO_ROOT)
    except ValueError:
        return target  # outside the repository: left for the strict build to report
    if not resolved.exists():
        return target  # a broken link: left for the strict build to report
    page = _source_page(resolved)
    if page is not None:  # a page of the site: relative to the linking page, MkDocs checks it
        url = os.path.relpath(docs_dir / page, page_dir)
        return url + ("#" + anchor if anchor else "")
    kind = "tree" if resolved.is_dir() else "blob"
    url = f"{repository}/{kind}/main/{rel.as_posix()}"
    if anchor:
        url += "#" + anchor
    return url


def on_page_markdown(markdown, page, config, files, **kwargs):
    docs_dir = Path(config["docs_dir"]).resolve()
    page_dir = (docs_dir / page.file.src_path).parent
    repository = _repository(config)

    def fix(match: re.Match) -> str:
        return match.group(1) + _rewrite(match.group(2), page_dir, docs_dir, repository) + (
            match.group(3) if match.lastindex and match.lastindex >= 3 else "")

    out, block, fence = [], [], None
    for line in markdown.splitlines(keepends=True):
        m = _FENCE.match(line)
        if fence is None and m:
            out.append(_REF_LINK.sub(fix, _INLINE_LINK.sub(fix, "".join(block))))
            block, fence = [], m.group(2)
            out.append(line)
        elif fence is not None:
            out.append(line)
            if m and m.group(2) == fence:
                fence = None
        else:
            block.append(line)
    out.append(_REF_LINK.sub(fix, _INLINE_LINK.sub(fix, "".join(block))))
    return "".join(out)


def on_post_build(config, **kwargs):
    es5 = mathjax_dir()
    target = Path(config["site_dir"]) / MATHJAX_SITE_DIR
    for name in MATHJAX_FILES:
        src, dst = es5 / name, target / name
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    license_file = es5.parent / "LICENSE"
    if license_file.is_file():
        shutil.copy2(license_file, target / "LICENSE")
