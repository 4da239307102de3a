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


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_equations_are_numbered_in_the_order_they_appear(chapter):
    assert not out_of_order(chapter.read_text())


def test_the_order_check_can_fail():
    assert out_of_order("$$ a \\tag{8.1} $$ $$ b \\tag{8.16} $$ $$ c \\tag{8.15} $$") == ["(.15) after (.16)"]
    assert not out_of_order("$$ a \\tag{8.1} $$ $$ b \\tag{8.2} $$ $$ c \\tag{8.10} $$")


def test_the_checker_rejects_missing_and_dangling_references():
    """The checker itself must be able to fail."""
    bad = ("$$ x = 1 \\tag{1.1} $$\n\nno reference here\n\n$$ y \\tag{1.2} $$\n"
           "> code: `minialign/tensor.py::nope` · test: `tests/test_tensor.py::test_nope`\n")
    refs = equation_references(bad)
    assert refs[0] == ("1.1", [], [])
    assert check_reference(refs[1][1][0], "code") and check_reference(refs[1][2][0], "test")
    good = ("$$\nx \\tag{1.3}\n$$\n> code: `minialign/tensor.py::unbroadcast` · "
            "test: `tests/test_tensor.py::test_unbroadcast_sums_back_to_the_input_shape`\n")
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


# ---------------------------------------------------------------------------------------------- one notation
# the words right before a symbol that is being defined
INTRODUCED = re.compile(r"\b(?:where|with|let|here|and|call|write|denote|ratio|weight|rate|baseline)\s+$")
DEFINES = re.compile(r"\$(?P<sym>[^$=]{1,30}?)\s*(?:=(?P<value>[^$]{0,40}))?\$"
                     r"\s*(?:(?P<verb>is|be|the|denotes|as)\b)?(?P<what>[^.;:\n$]{0,80})")
RETIRED = re.compile(r"^\s*\$?(\\[a-z]+|[^\s$]+)\$?\s+is used for nothing", re.M)
NEIGHBOURHOOD = 8  # lines either side of a \tag line


def _symbol(latex: str) -> str:
    """`\\tau(c)` → `\\tau`, `P(x)` → `P`, `B_i` stays `B_i`: the symbol without its argument."""
    return re.sub(r"\(.*\)$", "", latex.strip()).strip()


def notation_box(text: str):
    """{symbol: its meaning} from the notation table of chapter 00, and the symbols it retires."""
    box, lines = {}, text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| symbol | meaning"))
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        for latex in re.findall(r"\$([^$]+)\$", cells[0]):
            for part in latex.split(","):
                if _symbol(part) and "\\lvert" not in part:
                    box[_symbol(part)] = cells[1]
    retired = {m.group(1).strip("$") for m in RETIRED.finditer(text)}
    return box, retired


def _words(text: str) -> set:
    return {w.lower() for w in re.findall(r"[A-Za-z]{5,}", text)}


def redefinitions(text: str, box: dict, retired: set):
    """Any use of a symbol the box retires (ρ), and definitions ("where $β$ is …", "let $P$ be …", "with $B_i$ the …")
    within NEIGHBOURHOOD lines of a \\tag line of a box symbol whose defining words share none with its meaning
    there."""
    lines = text.splitlines()
    near = {j for i, line in enumerate(lines) if TAG.search(line)
            for j in range(max(0, i - NEIGHBOURHOOD), min(len(lines), i + NEIGHBOURHOOD + 1))}
    greek = {"ρ": "\\rho", "β": "\\beta", "τ": "\\tau", "κ": "\\kappa", "π": "\\pi", "λ": "\\lambda"}
    retired_latex = {greek.get(r, r) for r in retired}
    found = []
    for j, line in enumerate(lines):  # a retired symbol is used for nothing, anywhere
        if line.startswith("> code:") or RETIRED.match(line):
            continue
        if any(r in line for r in retired | retired_latex):
            found.append(f"line {j + 1}: a symbol the notation box retires ({', '.join(sorted(retired))}): "
                         f"{line.strip()[:80]!r}")
    for j in sorted(near):
        for m in DEFINES.finditer(lines[j]):
            sym, what = _symbol(m.group("sym")), m.group("what")
            if sym not in box and sym not in retired_latex:
                sym = re.sub(r"_.*$", "", sym)  # $\\rho_j$ is ρ, $b_i$ is b, unless the box has the subscripted one
            if not INTRODUCED.search(lines[j][:m.start()]) or not (m.group("verb") or m.group("value") is not None):
                continue  # "with $x$" alone defines nothing
            if sym in box and m.group("value") is None and not (_words(what) & _words(box[sym])):
                found.append(f"line {j + 1}: ${sym}$ means {box[sym][:60]!r} in the box: {m.group(0)!r}")
    return found


BOX = notation_box((ROOT / "chapters" / "00-map.md").read_text())


def test_the_notation_box_defines_the_symbols_the_chapters_share():
    box, retired = BOX
    for sym in ("x", "c", "\\tau", "G", "w", "\\kappa", "M", "B_i", "\\beta", "P", "b"):
        assert sym in box, f"the notation box has no row for ${sym}$"
    assert "ρ" in retired


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_no_symbol_of_the_notation_box_is_redefined_near_an_equation(chapter):
    problems = redefinitions(chapter.read_text(), *BOX)
    assert not problems, "\n".join(problems)


def test_the_notation_check_can_fail():
    planted = ("$$ m \\leftarrow (1-\\kappa)\\,m \\tag{6.11} $$\n> code: x · test: y\n\n"
               "with $\\kappa = 0.1$ the rate, where $\\beta$ is the constant of quasi-rejection sampling,\n"
               "and let $P$ be the length of the prompt.\n")
    problems = redefinitions(planted, *BOX)
    assert len(problems) == 2 and "$\\beta$" in problems[0] and "$P$" in problems[1], problems
    assert not redefinitions(planted.replace("\\tag{6.11}", ""), *BOX)  # far from any equation: not checked
    retired = planted.replace("\\kappa", "\\rho")
    assert sum("retires" in q for q in redefinitions(retired.replace("\\tag{6.11}", ""), *BOX)) == 2  # ρ: anywhere
    fine = "$$ x \\tag{6.13} $$\n($B_i$ the leave-one-out baseline, with $\\beta$ the KL coefficient).\n"
    assert not redefinitions(fine, *BOX)
