"""Units: where a unit's body lies in a file, the stub that replaces it, and putting the body back."""
from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    pass
else:  # Python 3.10: the same parser, packaged (a dependency of minialign on 3.10)
    pass

from .manifest import BEGIN, END, HANDOUT, UNIT, CourseError, Task


@dataclass(frozen=True)
class Cut:
    """Lines ``[start, stop)`` of a file (0-based) that a unit's stub replaces, and the stub."""
    spec: str
    task: str
    start: int
    stop: int
    stub: str               # one line, with its newline

    def overlaps(self, other: "Cut") -> bool:
        return self.start < other.stop and other.start < self.stop


def split_spec(spec: str):
    m = UNIT.match(spec)
    if not m:
        raise CourseError(f"unit {spec!r} is not of the form path.py::Qual.name or path.py::Qual.name#region")
    return m.group("path"), m.group("qualname"), m.group("region")


def stub_line(indent: str, spec: str, task: Task) -> str:
    return f'{indent}raise NotImplementedError("Task {task.id}: {spec} — {task.title}; see {HANDOUT}")\n'


def _find_function(tree, qualname: str, spec: str):
    nodes, found = tree.body, None
    for part in qualname.split("."):
        found = next((n for n in nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                      and n.name == part), None)
        if found is None:
            owner = ".".join(qualname.split(".")[:-1]) or "the module"
            raise CourseError(f"unit {spec} does not resolve: no {part!r} in {owner}")
        nodes = found.body
    if not isinstance(found, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise CourseError(f"unit {spec} does not resolve: {qualname} is a class, not a function or method")
    return found


def _first_line(stmt) -> int:
    return min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])


def locate(source: str, spec: str, task: Task) -> Cut:
    """Where unit ``spec`` lies in ``source`` and the stub that replaces it. A unit that does not resolve —
    no such function, no such region, a region marked twice — is a :class:`CourseError` naming it."""
    _, qualname, region = split_spec(spec)
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise CourseError(f"unit {spec} does not resolve: the file does not parse ({e})") from None
    fn = _find_function(tree, qualname, spec)
    lines = source.splitlines(keepends=True)
    if region is not None:
        return _locate_region(lines, fn, spec, region, task)
    body = fn.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
        and isinstance(body[0].value.value, str)
    if has_doc and len(body) == 1:
        raise CourseError(f"unit {spec}: the function has a docstring and no body to cut")
    start = body[0].end_lineno if has_doc else _first_line(body[0]) - 1
    first = body[1] if has_doc else body[0]
    if _first_line(first) - 1 < start or first.lineno == fn.lineno:
        raise CourseError(f"unit {spec}: the body must start on a line of its own")
    for line in lines[start:fn.end_lineno]:
        if BEGIN.match(line):
            raise CourseError(f"unit {spec}: the function holds a solution region ({line.strip()}); "
                              "a unit is the whole function or one region of it, not both")
    indent = re.match(r"[ \t]*", lines[_first_line(first) - 1]).group(0)
    return Cut(spec, task.id, start, fn.end_lineno, stub_line(indent, spec, task))


def _function_end(lines, fn) -> int:
    """The line after a function, counting comment lines indented under it that follow its last statement."""
    indent = len(lines[fn.lineno - 1]) - len(lines[fn.lineno - 1].lstrip())
    end = fn.end_lineno
    while end < len(lines) and lines[end].lstrip().startswith("#") \
            and len(lines[end]) - len(lines[end].lstrip()) > indent:
        end += 1
    return end


def _locate_region(lines, fn, spec, region, task) -> Cut:
    lo, hi = _first_line(fn) - 1, _function_end(lines, fn)
    begins = [i for i in range(lo, hi) if (m := BEGIN.match(lines[i])) and m.group("name") == region]
    if len(begins) != 1:
        raise CourseError(f"unit {spec} does not resolve: {len(begins)} lines '# BEGIN SOLUTION {region}' in "
                          f"{fn.name} (expected exactly one)")
    start = begins[0]
    stop = next((i for i in range(start + 1, hi) if END.match(lines[i]) or BEGIN.match(lines[i])), None)
    if stop is None or not END.match(lines[stop]):
        raise CourseError(f"unit {spec}: region {region!r} has no '# END SOLUTION' before the end of {fn.name} "
                          "(regions do not nest)")
    indent = BEGIN.match(lines[start]).group("indent")
    if stop == start + 1:
        raise CourseError(f"unit {spec}: region {region!r} is empty")
    return Cut(spec, task.id, start, stop + 1, stub_line(indent, spec, task))


def region_names(source: str):
    """(line number, name) of every ``# BEGIN SOLUTION name`` line of a file."""
    return [(i + 1, m.group("name")) for i, line in enumerate(source.splitlines()) if (m := BEGIN.match(line))]


def cuts_by_file(units, root: Path):
    """{path: [Cut, ...] in file order} for (spec, task) pairs, every unit resolved against ``root``; overlapping
    units are an error."""
    by_path = {}
    for spec, task in units:
        by_path.setdefault(split_spec(spec)[0], []).append((spec, task))
    out = {}
    for path, items in by_path.items():
        file = Path(root) / path
        if not file.is_file():
            raise CourseError(f"unit {items[0][0]} does not resolve: no file {path}")
        source = file.read_text(encoding="utf-8")
        cuts = sorted((locate(source, spec, task) for spec, task in items), key=lambda c: c.start)
        for a, b in zip(cuts, cuts[1:]):
            if a.overlaps(b):
                raise CourseError(f"units {a.spec} and {b.spec} overlap")
        out[path] = cuts
    return out


def apply_cuts(source: str, cuts) -> str:
    lines = source.splitlines(keepends=True)
    for cut in sorted(cuts, key=lambda c: c.start, reverse=True):
        lines[cut.start:cut.stop] = [cut.stub]
    return "".join(lines)


def restore_cuts(stubbed: str, original: str, cuts) -> str:
    """Put each unit's solution (from ``original``) back in place of its stub line in ``stubbed``."""
    lines = stubbed.splitlines(keepends=True)
    solution = original.splitlines(keepends=True)
    for cut in cuts:
        where = [i for i, line in enumerate(lines) if line == cut.stub]
        if len(where) != 1:
            raise CourseError(f"unit {cut.spec}: its stub appears {len(where)} times in the student's file "
                              "(expected once: was it edited?)")
        lines[where[0]:where[0] + 1] = solution[cut.start:cut.stop]
    return "".join(lines)
