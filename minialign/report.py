"""A Markdown report as one self-contained HTML page: its images embedded as data URIs, so that the page opens in
any browser, mailed or moved, with nothing beside it.

Only the Markdown that the tour writes is understood: headings, paragraphs, pipe tables, bullet lists, fenced
code, images, links, ``**bold**`` and ``code``; anything else is shown as text, escaped.
"""
from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

STYLE = """body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:72rem;margin:2rem auto;
padding:0 1rem;color:#1b1b1b}table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}th,td{border:1px solid #ccc;
padding:.25rem .5rem;text-align:left}th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f8fa;padding:.75rem;
overflow-x:auto}code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em}"""


def _inline(text: str, folder: Path) -> str:
    """Escape ``text`` and turn its images, links, bold and code spans into HTML."""
    out, pos = [], 0
    pattern = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)|\[([^\]]+)\]\(([^)]+)\)|\*\*(.+?)\*\*|`([^`]+)`")
    for m in pattern.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        alt, src, label, href, bold, code = m.groups()
        if src is not None:
            out.append(f'<img alt="{html.escape(alt)}" src="{_data_uri(folder / src)}">')
        elif href is not None:
            out.append(f'<a href="{html.escape(href)}">{html.escape(label)}</a>')
        elif bold is not None:
            out.append(f"<strong>{html.escape(bold)}</strong>")
        else:
            out.append(f"<code>{html.escape(code)}</code>")
        pos = m.end()
    return "".join(out) + html.escape(text[pos:])


def _data_uri(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _cells(row: str) -> list:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def markdown_to_html(text: str, folder: Path, title: str = "report") -> str:
    """The page for the Markdown ``text``, its images read from ``folder`` and embedded."""
    lines, body, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            body.append("<pre><code>" + html.escape("\n".join(lines[i + 1:j])) + "</code></pre>")
            i = j + 1
        elif m := re.match(r"(#{1,6}) (.*)", line):
            level = len(m.group(1))
            body.append(f"<h{level}>{_inline(m.group(2), folder)}</h{level}>")
            i += 1
        elif line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            rows = [r for r in lines[i:j] if not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", r.strip())]
            head = "".join(f"<th>{_inline(c, folder)}</th>" for c in _cells(rows[0]))
            rest = "".join("<tr>" + "".join(f"<td>{_inline(c, folder)}</td>" for c in _cells(r)) + "</tr>"
                           for r in rows[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rest}</tbody></table>")
            i = j
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:], folder)}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
        elif line.strip():
            j = i
            while j < len(lines) and lines[j].strip() and not re.match(r"```|#{1,6} |\||- ", lines[j]):
                j += 1
            body.append("<p>" + _inline(" ".join(lines[i:j]), folder) + "</p>")
            i = j
        else:
            i += 1
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_html(markdown_path: Path, title: str = "report") -> Path:
    """Write ``markdown_path``'s page beside it (``report.md`` → ``report.html``), images embedded."""
    markdown_path = Path(markdown_path)
    out = markdown_path.with_suffix(".html")
    page = markdown_to_html(markdown_path.read_text(), markdown_path.parent, title)
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(page)
    tmp.replace(out)
    return out
