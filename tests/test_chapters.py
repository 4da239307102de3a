"""Every numbered equation of every chapter names the code that implements it and the test that checks it,
and both exist."""
import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]-*.md"))
TAG = re.compile(r"\\tag\{(\d+)\.(\d+)\}")
REF = re.compile(r"^>\s*code:\s*(?P<code>.+?)\s*·\s*test:\s*(?P<test>.+?)\s*$")
TICKED = re.compile(r"`([^`]+)`")


@lru_cache(maxsize=None)
def names_in(path: Path):
    """Dotted names defined in a Python file: functions, classes, Class.method, module-level assignments."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        names.add(f"{node.name}.{item.name}")
                    elif isinstance(item, ast.ClassDef):
                        names.add(f"{node.name}.{item.name}")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return frozenset(names)


def check_reference(ref: str, kind: str):
    path, sep, name = ref.partition("::")
    if not sep:
        return f"{kind} reference {ref!r} is not of the form path::name"
    file = ROOT / path
    if not file.is_file():
        return f"{kind} reference {ref!r}: no file {path}"
    name = name.replace("::", ".")
    if re.search(r"\[.*\]$", name):  # a parametrised test id
        name = name[: name.index("[")]
    if name not in names_in(file):
        return f"{kind} reference {ref!r}: {path} defines no {name!r}"
    if kind == "test" and not name.split(".")[-1].startswith("test"):
        return f"test reference {ref!r} does not name a test"
    return None


def equation_references(text: str):
    """(label, code refs, test refs) for each numbered equation: the first non-blank line after the
    display that holds the tag must be the reference line."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        for major, minor in TAG.findall(line):
            j = i
            if not line.rstrip().endswith("$$"):
                while j + 1 < len(lines) and "$$" not in lines[j + 1]:
                    j += 1
                j += 1
            k = j + 1
            while k < len(lines) and not lines[k].strip():
                k += 1
            m = REF.match(lines[k]) if k < len(lines) else None
            code = TICKED.findall(m.group("code")) if m else []
            test = TICKED.findall(m.group("test")) if m else []
            out.append((f"{major}.{minor}", code, test))
    return out


def test_there_are_chapters():
    assert CHAPTERS, "no chapters found in chapters/"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_every_numbered_equation_names_existing_code_and_tests(chapter):
    number = int(chapter.name[:2])
    problems, seen = [], set()
    for label, code, tests in equation_references(chapter.read_text()):
        if int(label.split(".")[0]) != number:
            problems.append(f"({label}) is numbered for another chapter")
        if label in seen:
            problems.append(f"({label}) is used twice")
        seen.add(label)
        if not code or not tests:
            problems.append(f"({label}) lacks a '> code: `...` · test: `...`' line right below it")
        problems += [f"({label}) {p}" for p in (check_reference(r, "code") for r in code) if p]
        problems += [f"({label}) {p}" for p in (check_reference(r, "test") for r in tests) if p]
    assert not problems, "\n".join(problems)


def out_of_order(text: str):
    """The equation numbers that appear after a larger one: a chapter numbers its equations as they appear."""
    minors = [int(minor) for _, minor in TAG.findall(text)]
    return [f"(.{m}) after (.{max(minors[:i])})" for i, m in enumerate(minors) if i and m < max(minors[:i])]


# Chapter 05 is renumbered on another branch (issue 24): drop it from here once that branch is merged.
RENUMBERED_ELSEWHERE = {"05-rlhf.md"}


@pytest.mark.parametrize("chapter", [pytest.param(c, marks=pytest.mark.xfail(reason="renumbered on another branch",
                                                                             strict=False))
                                     if c.name in RENUMBERED_ELSEWHERE else c for c in CHAPTERS],
                         ids=lambda p: p.name)
def test_equations_are_numbered_in_the_order_they_appear(chapter):
    assert not out_of_order(chapter.read_text())


def test_the_order_check_can_fail():
    assert out_of_order("$$ a \\tag{8.1} $$ $$ b \\tag{8.16} $$ $$ c \\tag{8.15} $$") == ["(.15) after (.16)"]
    assert not out_of_order("$$ a \\tag{8.1} $$ $$ b \\tag{8.2} $$ $$ c \\tag{8.10} $$")


def test_the_checker_rejects_missing_and_dangling_references():
    """The checker itself must be able to fail."""
    bad = "$$ x = 1 \\tag{1.1} $$\n\nno reference here\n\n$$ y \\tag{1.2} $$\n> code: `minialign/tensor.py::nope` · test: `tests/test_tensor.py::test_nope`\n"
    refs = equation_references(bad)
    assert refs[0] == ("1.1", [], [])
    assert check_reference(refs[1][1][0], "code") and check_reference(refs[1][2][0], "test")
    good = "$$\nx \\tag{1.3}\n$$\n> code: `minialign/tensor.py::unbroadcast` · test: `tests/test_tensor.py::test_unbroadcast_sums_back_to_the_input_shape`\n"
    (label, code, tests), = equation_references(good)
    assert check_reference(code[0], "code") is None and check_reference(tests[0], "test") is None


TEXT_FILES = CHAPTERS + sorted((ROOT / "notebooks").glob("*.ipynb")) + [ROOT / "README.md", ROOT / "ARCHITECTURE.md"]


@pytest.mark.parametrize("path", TEXT_FILES, ids=lambda p: p.name)
def test_text_holds_no_control_characters(path):
    """A LaTeX command written through a non-raw string loses its backslash to an escape (\\tag → tab + "ag",
    \\frac → form feed + "rac", \\beta → backspace + "eta"): the equation then renders wrong and its \\tag escapes
    the reference check. Chapters, notebooks and the READMEs hold no control character but the newline."""
    text = path.read_text(encoding="utf-8")
    bad = sorted({f"{ord(c):#04x}" for c in text if ord(c) < 32 and c != "\n"})
    assert not bad, f"{path.name} contains control characters {bad}"
    broken = re.findall(r"\n(?:abla|eq|ot|u)\\", text) if path.suffix == ".md" else []
    assert not broken, f"{path.name}: a line starts where a '\\n…' LaTeX command was split: {broken}"


def test_the_control_character_check_can_fail(tmp_path):
    bad = tmp_path / "bad.md"
    bad.write_text("$$ x \tag{1.1} $$\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="0x09"):
        test_text_holds_no_control_characters(bad)
