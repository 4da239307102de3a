"""The course as a book: the chapters, the notebooks (executed, their outputs and figures inline), the assignments'
handouts and an API reference from the docstrings, built into one static site that reads offline.

    python -m minialign.book --out site            # then open site/index.html

The stack is Sphinx with MyST-NB (Markdown and notebooks) and the book theme, chosen for the long run: Sphinx has
been maintained for well over a decade and MyST-NB by the Executable Books project; MyST-NB executes notebooks
through a cache (jupyter-cache: a notebook whose code has not changed is not run again); autodoc reads the
docstrings; the search index is Sphinx's own, a file in the site. MkDocs with Material builds faster, but Material
for MkDocs has announced its end of maintenance and MkDocs itself has had no release since 2024; Jupyter Book 2
(mystmd) fetches its theme from the network at build time, which an offline build cannot do. The chapters stay plain
Markdown: they are copied into a staging folder and only the copy is changed: each numbered equation gets an
anchor (``#eq-5-3``), each "(5.3)" of the prose becomes a link to it, and each chapter's page opens with links to its
notebook and its assignment. MathJax comes from the package index (``django-static-mathjax``, MathJax 3 as static
files) and is copied into the site, SVG output, so that no font and no network is needed to read the math.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAG = re.compile(r"\\tag\{([0-9]+\.[0-9]+[a-z]?)\}")
EQREF = re.compile(r"\(([0-9]+\.[0-9]+[a-z]?)\)")


def anchor(tag: str) -> str:
    return "eq-" + tag.replace(".", "-")


def equation_tags(chapters: list) -> dict:
    """tag → the chapter (file name) that numbers it."""
    return {tag: path.name for path in chapters for tag in TAG.findall(path.read_text())}


def _link_refs(line: str, here: str, tags: dict) -> str:
    """Each "(5.3)" of the prose that is an equation's number becomes a link to it (not inside math or code)."""
    def one(m):
        tag = m.group(1)
        if tag not in tags:
            return m.group(0)
        page = "" if tags[tag] == here else Path(tags[tag]).with_suffix(".html").name
        return f'<a class="eqref" href="{page}#{anchor(tag)}">({tag})</a>'

    parts = re.split(r"(\$[^$]*\$|`[^`]*`|\[[^\]]*\]\([^)]*\))", line)
    return "".join(part if k % 2 else EQREF.sub(one, part) for k, part in enumerate(parts))


def chapter_page(text: str, name: str, tags: dict, notebook: str | None, handout: str | None) -> str:
    """The chapter's Markdown for the site: anchors before numbered equations, equation references as links, and
    links to its notebook and assignment under the title."""
    out, fenced, in_math = [], False, False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and not in_math:
            if line.lstrip().startswith("$$"):
                block_tags = TAG.findall(line)
                if line.count("$$") == 1:  # a display block over several lines: collect its tags ahead
                    in_math = True
                out += [f'<span id="{anchor(t)}"></span>' for t in block_tags]
                if block_tags:
                    out.append("")
            else:
                line = _link_refs(line, name, tags)
        elif in_math and "$$" in line:
            in_math = False
        out.append(line)
        if line.startswith("# ") and len(out) == 1:
            links = []
            if notebook:
                links.append(f"[the notebook](../notebooks/{notebook})")
            if handout:
                links.append(f"[the assignment](../handouts/{handout})")
            if links:
                out += ["", "*This chapter's " + " · ".join(links) + ".*"]
    text = "\n".join(out) + "\n"
    # a multi-line display block: its anchors go before the block (found above only on its first line)
    return _anchor_multiline_blocks(text)


def _anchor_multiline_blocks(text: str) -> str:
    def put(m):
        block = m.group(0)
        tags = TAG.findall(block)
        if not tags or "\n" not in block:
            return block
        return "\n".join(f'<span id="{anchor(t)}"></span>' for t in tags) + "\n\n" + block

    return re.sub(r"(?m)^\$\$(?:(?!\$\$).)*\n(?:(?!\$\$).)*?\$\$", put, text, flags=re.S)


CONF = '''
project = "minialign"
author = "the minialign authors"
copyright = "the minialign authors, MIT licence"
extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.mathjax"]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
nb_execution_mode = "cache"
nb_execution_cache_path = {cache!r}
nb_execution_excludepatterns = {exclude!r}
nb_execution_timeout = 900
nb_execution_raise_on_error = False
nb_merge_streams = True
autodoc_mock_imports = ["triton", "torch"]
autodoc_member_order = "bysource"
html_theme = "sphinx_book_theme"
html_title = "minialign: aligning language models with preferences, from scratch"
html_static_path = ["_static"]
html_theme_options = {{"show_toc_level": 2, "use_download_button": False}}
mathjax_path = "mathjax/tex-svg-full.js"
mathjax3_config = {{"tex": {{"tags": "none"}}, "svg": {{"fontCache": "global"}}}}
suppress_warnings = ["myst.header", "myst.xref_missing", "docutils", "autodoc", "misc.highlighting_failure"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_context = {{"default_mode": "light"}}
html_show_search_summary = False  # a summary is fetched from the page, which a browser refuses under file://


def setup(app):
    from minialign.book import plain_docstring

    app.connect("autodoc-process-docstring", lambda app, what, name, obj, options, lines: plain_docstring(lines))
'''


def plain_docstring(lines: list) -> None:
    """Our docstrings are plain text with mathematics in it (π(y|x), a*b), not reStructuredText: outside ``code``,
    a bar or a lone star is escaped so that it is shown as written (not read as a substitution or emphasis)."""
    for i, line in enumerate(lines):
        parts = re.split(r"(``.*?``)", line)
        lines[i] = "".join(part if k % 2 else re.sub(r"(?<!\*)\*(?!\*)", r"\\*", part.replace("|", "\\|"))
                           for k, part in enumerate(parts))


def titled_notebook(text: str, title: str) -> str:
    """The notebook with one page title: where it has no top-level heading, or several (one per section), it opens
    with "# <chapter title> — experiments" (the others a level down), so that it is one page of the book."""
    import json

    nb = json.loads(text)
    cells = [c for c in nb["cells"] if c["cell_type"] == "markdown"]
    heads = [line for c in cells for line in "".join(c["source"]).splitlines() if line.startswith("# ")]
    first = "".join(cells[0]["source"]).lstrip() if cells else ""
    if len(heads) == 1 and first.startswith("# "):
        return text
    for c in cells if heads else ():  # several top-level headings: each goes down a level
        c["source"] = ["#" + line if line.startswith("#") else line for line in "".join(c["source"]).splitlines(True)]
    cell = {"cell_type": "markdown", "metadata": {}, "source": [f"# {title} — experiments"]}
    if nb.get("nbformat_minor", 0) >= 5:  # from 4.5 on, every cell has an id
        cell["id"] = "book-title"
    nb["cells"].insert(0, cell)
    return json.dumps(nb, indent=1, ensure_ascii=False)


def api_page() -> str:
    """The API reference: every module of the package, its docstrings as written."""
    import pkgutil

    import minialign

    names = sorted(m.name for m in pkgutil.walk_packages(minialign.__path__, "minialign.")
                   if not m.name.endswith(("__main__", ".book")))
    parts = ["# API reference", "", "Every module of `minialign`, from its docstrings (each states the equation it "
             "implements with its chapter number).", ""]
    for name in names:
        parts += [f"## `{name}`", "", "```{eval-rst}", f".. automodule:: {name}", "   :members:", "```", ""]
    return "\n".join(parts)


def index_page(chapters, notebooks, handouts) -> str:
    readme = (ROOT / "README.md").read_text().split("\n\n")[1].strip()
    toc = lambda caption, items: ["```{toctree}", ":maxdepth: 1", f":caption: {caption}", "", *items, "```", ""]  # noqa: E731
    return "\n".join(["# minialign", "", readme, "",
                      "Each chapter links its notebook (the experiments, executed here with their outputs) and its "
                      "assignment (the coding problems, graded by the library's own tests). The search box finds "
                      "any word of the book.", ""]
                     + toc("Chapters", [f"chapters/{p.stem}" for p in chapters])
                     + toc("Notebooks", [f"notebooks/{p.stem}" for p in notebooks])
                     + toc("Assignments", [f"handouts/{p.stem}" for p in handouts])
                     + toc("Reference", ["api"]))


def stage(src: Path, cache: Path, execute: str) -> None:
    """Lay out the book's sources in ``src`` (the chapters as changed for the site, the rest as they are)."""
    chapters = sorted((ROOT / "chapters").glob("[0-9][0-9]-*.md"))
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))
    handouts = sorted((ROOT / "course" / "handouts").glob("[0-9][0-9]-*.md"))
    tags = equation_tags(chapters)
    (src / "chapters").mkdir(parents=True)
    shutil.copytree(ROOT / "chapters" / "figures", src / "chapters" / "figures")
    for path in chapters:
        nb = next((p.name for p in notebooks if p.stem == path.stem), None)
        ho = next((p.name for p in handouts if p.name[:3] == path.name[:3]), None)
        (src / "chapters" / path.name).write_text(chapter_page(path.read_text(), path.name, tags, nb, ho))
    (src / "notebooks").mkdir()
    for path in notebooks:
        chapter = next((c for c in chapters if c.stem == path.stem), None)
        title = chapter.read_text().splitlines()[0].lstrip("# ").strip() if chapter else path.stem
        (src / "notebooks" / path.name).write_text(titled_notebook(path.read_text(), title))
    shutil.copytree(ROOT / "course" / "handouts", src / "handouts")
    (src / "api.md").write_text(api_page())
    (src / "index.md").write_text(index_page(chapters, notebooks, handouts))
    if execute == "all":
        exclude = []
    elif execute == "none":
        exclude = ["notebooks/*"]
    else:
        wanted = {w.strip() for w in execute.split(",")}
        exclude = [f"notebooks/{p.name}" for p in notebooks if p.stem not in wanted and p.stem[:2] not in wanted]
    (src / "conf.py").write_text(CONF.format(cache=str(cache), exclude=exclude))
    static = src / "_static" / "mathjax"
    static.mkdir(parents=True)
    shutil.copy(mathjax_file(), static / "tex-svg-full.js")


def mathjax_file() -> Path:
    """MathJax 3's single-file TeX → SVG component, from the installed ``django-static-mathjax`` package."""
    try:
        from importlib.resources import files

        path = Path(str(files("mathjax") / "static" / "mathjax" / "es5" / "tex-svg-full.js"))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.exists():
        raise SystemExit("minialign book: MathJax is not installed; run: pip install -e '.[book]'")
    return path


def build(out: Path, execute: str = "all", cache: Path | None = None, quiet: bool = True) -> Path:
    """Build the site into ``out``; returns ``out / "index.html"``."""
    try:
        from sphinx.cmd.build import build_main
    except ModuleNotFoundError:
        raise SystemExit("minialign book: Sphinx is not installed; run: pip install -e '.[book]'") from None
    out = Path(out).resolve()
    shutil.rmtree(out / "reports", ignore_errors=True)  # tracebacks of an earlier build's failed notebooks
    cache = Path(cache or out.parent / ".book-cache").resolve()
    os.environ.setdefault("MINIALIGN_OUT", tempfile.mkdtemp(prefix="minialign-book-figures-"))  # notebooks' files
    backend = os.environ.pop("MPLBACKEND", None)  # the notebooks' kernels draw inline, whatever the caller uses
    try:
        with tempfile.TemporaryDirectory(prefix="minialign-book-") as tmp:
            src = Path(tmp) / "src"
            stage(src, cache, execute)
            args = ["-b", "html", "-j", "1", "-d", str(Path(tmp) / "doctrees"), str(src), str(out)]
            rc = build_main((["-q"] if quiet else []) + args)
    finally:
        if backend is not None:
            os.environ["MPLBACKEND"] = backend
    if rc != 0:
        raise SystemExit(f"minialign book: Sphinx failed (exit status {rc})")
    failed = sorted(p.name.removesuffix(".err.log") for p in (out / "reports").rglob("*.err.log"))
    if failed:  # the site is built, each failing cell shown with its traceback; the build still says so
        raise SystemExit(f"minialign book: {len(failed)} notebook(s) failed to execute: {', '.join(failed)} "
                         f"(tracebacks in {out / 'reports'}); the site is in {out}")
    return out / "index.html"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minialign.book",
                                     description="Build the course as a book: a static site that reads offline.")
    parser.add_argument("--out", type=Path, default=Path("site"), metavar="DIR",
                        help="folder for the site; open DIR/index.html (default: site)")
    parser.add_argument("--execute", default="all", metavar="WHICH",
                        help="notebooks to execute: all, none, or names such as 00-map,01-autograd; the others are "
                             "shown as committed; outputs are cached, so a rebuild runs only changed notebooks "
                             "(default: all)")
    parser.add_argument("--cache", type=Path, default=None, metavar="DIR",
                        help="folder of the notebook execution cache (default: .book-cache beside --out)")
    parser.add_argument("--verbose", action="store_true", help="show Sphinx's messages and warnings")
    args = parser.parse_args(argv)
    index = build(args.out, args.execute, args.cache, quiet=not args.verbose)
    print(f"the book: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
