"""The book, built and read in a real browser: every page of the site opens in headless Chromium, offline (file://
URLs, no server), within 5 s, with no console error, every image loaded, every formula typeset by the bundled
MathJax (none left as raw TeX), and every internal link and anchor resolving to a page and an element of the site.

One screenshot per page goes to ``runs/book-screenshots/`` (CI's artefact), for a person to look at. Chromium
comes from Debian's packages (`apt-get update && apt-get install -y chromium`; `.ci/run` installs it); without it
the test is skipped outside CI and fails in CI.
"""
import os
import shutil
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = ROOT / "runs" / "book-screenshots"
RAW_TEX = r"""(() => {
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {acceptNode: n =>
      n.parentElement.closest('pre, code, script, style, mjx-container, .highlight') ? NodeFilter.FILTER_REJECT
                                                                                     : NodeFilter.FILTER_ACCEPT});
  const bad = [];
  while (walker.nextNode()) {
    const t = walker.currentNode.textContent;
    if (/\$\$|\\\(|\\\[|\\tag\{|\\frac|\\mathbb|\\sum_/.test(t)) bad.push(t.trim().slice(0, 80));
  }
  const untypeset = [...document.querySelectorAll('.math')].filter(e => !e.querySelector('mjx-container'));
  return bad.concat(untypeset.map(e => 'not typeset: ' + e.textContent.trim().slice(0, 80)));
})()"""
READY = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  await Promise.all([...document.images].map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
  return true; }"""
BROKEN_IMAGES = "[...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 120))"
LINKS = "[...document.querySelectorAll('a[href]')].map(a => a.href)"
IDS = ("[...document.querySelectorAll('[id]')].map(e => e.id)"
       ".concat([...document.querySelectorAll('a[name]')].map(a => a.name))")


def _browser():
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        if os.environ.get("CI"):
            raise
        pytest.skip("playwright is absent: pip install -e '.[test]'")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is absent: .ci/run installs it (apt-get update && apt-get install -y chromium)")
        pytest.skip("Chromium is absent: apt-get update && apt-get install -y chromium")
    return sync_playwright


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    sync_playwright = _browser()
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=FLAGS,
                                                       headless=True, viewport={"width": 1280, "height": 900})
        yield browser
        browser.close()


def open_page(context, path: Path):
    """Open ``path`` offline; returns (page, seconds to loaded and typeset, console errors)."""
    page = context.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    start = time.perf_counter()
    page.goto(path.as_uri(), wait_until="load", timeout=30_000)
    page.evaluate(READY)
    return page, time.perf_counter() - start, errors


def test_every_page_of_the_book_opens_offline_with_its_math_images_and_links(chromium, tmp_path):
    pytest.importorskip("sphinx", reason="the book's builder is absent: pip install -e '.[book]'")
    from minialign.book import build

    site = tmp_path / "site"
    build(site, execute="00-map", cache=tmp_path / "cache")  # one notebook executed; the others as committed
    pages = sorted(p for p in site.rglob("*.html") if "_static" not in p.parts and "_sources" not in p.parts)
    assert len(pages) >= 9 + 9 + 8 + 2, [p.name for p in pages]
    SHOTS.mkdir(parents=True, exist_ok=True)
    problems, ids, links = [], {}, []
    for path in pages:
        rel = path.relative_to(site).as_posix()
        page, seconds, errors = open_page(chromium, path)
        problems += [f"{rel}: console error: {e}" for e in errors]
        problems += [f"{rel}: image did not load: {src}" for src in page.evaluate(BROKEN_IMAGES)]
        problems += [f"{rel}: raw TeX: {t!r}" for t in page.evaluate(RAW_TEX)]
        if seconds > 5:
            problems.append(f"{rel}: took {seconds:.1f} s to load and typeset (over 5 s)")
        if rel == "notebooks/00-map.html":  # the notebook executed at build time: its outputs and figures inline
            figures = page.evaluate("document.querySelectorAll('.cell_output img').length")
            if not figures:
                problems.append(f"{rel}: executed, yet no figure among its outputs")
        ids[path.resolve()] = set(page.evaluate(IDS))
        links += [(rel, href) for href in page.evaluate(LINKS)]
        page.screenshot(path=str(SHOTS / (rel.replace("/", "__").removesuffix(".html") + ".png")))
        page.close()
    page, _, errors = open_page(chromium, site / "search.html")  # the search index is in the site, offline
    page.goto((site / "search.html").as_uri() + "?q=reward")
    page.wait_for_selector("#search-results li", timeout=5_000)
    problems += [f"search.html?q=reward: console error: {e}" for e in errors]
    page.close()
    for rel, href in links:
        url = urlparse(href)
        if url.scheme != "file":
            continue
        target = Path(unquote(url.path))
        if not target.exists():
            problems.append(f"{rel}: link to a missing file: {href}")
        elif url.fragment and target.suffix == ".html" and unquote(url.fragment) not in ids.get(target.resolve(), ()):
            problems.append(f"{rel}: link to a missing anchor: {href}")
    assert not problems, "\n".join(problems[:60])


def test_the_equation_references_of_a_chapter_are_links_to_numbered_equations():
    from minialign.book import chapter_page, equation_tags

    chapters = sorted((ROOT / "chapters").glob("[0-9][0-9]-*.md"))
    tags = equation_tags(chapters)
    text = "# 09 · X\n\n$$ a = b \\tag{9.1} $$\n\nBy Eq. (9.1) and (5.3), not (9.9), nor `(5.3)` in code.\n"
    page = chapter_page(text, "09-x.md", {**tags, "9.1": "09-x.md"}, "09-x.ipynb", None)
    assert '<span id="eq-9-1"></span>' in page.split("$$")[0]
    assert '<a class="eqref" href="#eq-9-1">(9.1)</a>' in page
    assert '<a class="eqref" href="05-rlhf.html#eq-5-3">(5.3)</a>' in page
    assert "not (9.9), nor `(5.3)` in code" in page  # no such equation; code stays as written
    assert "[the notebook](../notebooks/09-x.ipynb)" in page


def test_the_tour_report_opens_in_chromium_with_its_images(chromium, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minialign.report import write_html

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "curve.png")
    plt.close(fig)
    (tmp_path / "report.md").write_text("# report\n\n| a | b |\n|---|---|\n| 1 ± 0.1 | **2** |\n\n"
                                        "![curve](curve.png)\n")
    html = write_html(tmp_path / "report.md")
    (tmp_path / "curve.png").unlink()  # self-contained: the page needs nothing beside it
    page, _, errors = open_page(chromium, html)
    widths = page.evaluate("[...document.images].map(i => i.naturalWidth)")
    assert widths and all(w > 0 for w in widths) and not errors
    assert page.evaluate("document.querySelector('td').textContent") == "1 ± 0.1"
    page.close()
