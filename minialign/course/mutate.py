"""Mutation testing of the course's units: realistic wrong answers planted one at a time in a unit's body, each
graded as the grader grades a student (the task's tests, in a fresh process, on a tree with the mutant in place).
Every mutant must lose points on its own task; one that keeps full marks (a survivor) is a hole in the tests,
unless the manifest lists it as equivalent (``[[equivalent]]``: unit, mutant id, a one-line reason).

The operators (each applied to every place in a unit's body where it fits, never outside the unit):

* ``swap``      ``+`` ↔ ``−``, ``*`` ↔ ``/`` (also in ``+=``, ``-=``, ``*=``, ``/=``); ``and`` ↔ ``or``
* ``drop``      drop a term of a sum or a factor of a product (keep the left or the right operand); drop a unary
                minus or ``not``
* ``const``     0 → 1, 1 → 0, ½ → 1, k → k − 1 (integers and integral floats), ``True`` ↔ ``False``
* ``axis``      ``axis=``/``dim=`` moved to another axis (−1 → −2, 0 → −1, k ≥ 1 → 0)
* ``reduce``    sum → mean, mean → sum, max ↔ min, logsumexp → max
* ``compare``   loosen (< → ≤, ≤ → <, …) or negate (< → ≥, == → !=, ``is`` ↔ ``is not``) a comparison; negate a
                condition that is not a comparison
* ``grad``      drop a ``no_grad()`` block (its body stays) or a ``.detach()``
* ``mask``      drop a mask: ``where(m, a, b)`` → ``a``, a ``mask=`` argument
* ``arg``       drop a keyword argument of a call
* ``refuse``    drop a ``raise`` (a refusal the handout asks for)
* ``call``      drop a call made for its effect (``self._accumulate(...)``)

A mutant's id, ``op@line:col`` with the line counted from the unit's first line, names the same mutant while the
file around the unit changes.
"""
from __future__ import annotations

import ast
import copy
import hashlib
import json
import re
import shutil
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .cut import locate, split_spec
from .manifest import ROOT, Assignment, CourseError, Task, assignments, marked_files, tomllib

RECORD = "course/mutants.json"
# Bump when the operators change: every unit's record is then stale (its mutants are no longer the same ones).
OPERATORS = "1"
# Mutants graded per unit by `course check --mutants`: spread over the operators (see :func:`sample`), so that a
# full pass over the 45 units stays within half an hour on one core; None grades every mutant.
LIMIT = 6
REFRESH = "python -m minialign course check --mutants"


@dataclass(frozen=True)
class Mutant:
    unit: str
    task: str               # "5.2"
    id: str                 # "swap@3:12" (line from the unit's first line, column)
    description: str        # "a + b → a - b"
    path: str               # the unit's file
    source: str             # the whole file with the mutant in place


# ------------------------------------------------------------------------------------------------ operators
SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
REDUCE = {"sum": "mean", "mean": "sum", "max": "min", "min": "max", "amax": "amin", "amin": "amax",
          "nansum": "nanmean", "logsumexp": "max", "prod": "sum"}
LOOSEN = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt}
NEGATE = {ast.Lt: ast.GtE, ast.LtE: ast.Gt, ast.Gt: ast.LtE, ast.GtE: ast.Lt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
          ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
AXIS_KEYWORDS = ("axis", "dim", "axes", "dims")


def _num(node):
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)


def _axis_value(node):
    """The integer of an ``axis=`` value (``-1`` is a unary minus on 1), or None."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and type(node.operand.value) is int:
        return -node.operand.value
    return None


def _int_node(v: int):
    return ast.UnaryOp(ast.USub(), ast.Constant(-v)) if v < 0 else ast.Constant(v)


def expression_mutations(node):
    """(operator, description, replacement node) for one expression node."""
    out = []
    if isinstance(node, ast.BinOp):
        if type(node.op) in SWAP:
            out.append(("swap", ast.BinOp(node.left, SWAP[type(node.op)](), node.right)))
        if isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.MatMult)):
            out += [("drop", node.left), ("drop", node.right)]
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
        out.append(("drop", node.operand))
    elif isinstance(node, ast.BoolOp):
        out.append(("swap", ast.BoolOp(ast.Or() if isinstance(node.op, ast.And) else ast.And(), node.values)))
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
        out.append(("const", ast.Constant(not node.value)))
    elif _num(node):
        v = node.value
        new = {0: 1, 1: 0, 0.5: 1}.get(v)
        if new is None and float(v).is_integer() and abs(v) >= 2:
            new = v - 1
        if new is not None:
            out.append(("const", ast.Constant(type(v)(new))))
    elif isinstance(node, ast.Compare) and len(node.ops) == 1:
        op = type(node.ops[0])
        if op in LOOSEN:
            out.append(("compare", ast.Compare(node.left, [LOOSEN[op]()], node.comparators)))
        if op in NEGATE:
            out.append(("compare", ast.Compare(node.left, [NEGATE[op]()], node.comparators)))
    elif isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in REDUCE:
            new_func = copy.copy(func)
            if isinstance(func, ast.Attribute):
                new_func.attr = REDUCE[name]
            else:
                new_func.id = REDUCE[name]
            out.append(("reduce", ast.Call(new_func, node.args, node.keywords)))
        if name == "detach" and isinstance(func, ast.Attribute) and not node.args:
            out.append(("grad", func.value))
        if name == "where" and len(node.args) == 3:
            out.append(("mask", node.args[1]))
        for i, kw in enumerate(node.keywords):
            if kw.arg in AXIS_KEYWORDS and (a := _axis_value(kw.value)) is not None:
                moved = -2 if a == -1 else -1 if a == 0 else 0
                kws = list(node.keywords)
                kws[i] = ast.keyword(kw.arg, _int_node(moved))
                out.append(("axis", ast.Call(func, node.args, kws)))
            if kw.arg is not None:
                out.append(("mask" if kw.arg == "mask" else "arg",
                            ast.Call(func, node.args, node.keywords[:i] + node.keywords[i + 1:])))
    elif isinstance(node, ast.IfExp) and not isinstance(node.test, (ast.Compare, ast.UnaryOp)):
        out.append(("compare", ast.IfExp(ast.UnaryOp(ast.Not(), node.test), node.body, node.orelse)))
    return out


def statement_mutations(stmt):
    """(operator, replacement statements) for one statement."""
    out = []
    if isinstance(stmt, ast.AugAssign) and type(stmt.op) in SWAP:
        out.append(("swap", [ast.AugAssign(stmt.target, SWAP[type(stmt.op)](), stmt.value)]))
    elif isinstance(stmt, ast.With) and any(re.search(r"no_grad|inference_mode", ast.unparse(i.context_expr))
                                            for i in stmt.items):
        out.append(("grad", stmt.body))
    elif isinstance(stmt, ast.Raise):
        out.append(("refuse", [ast.Pass()]))
    elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        out.append(("call", [ast.Pass()]))
    elif isinstance(stmt, (ast.If, ast.While)) and not isinstance(stmt.test, ast.Compare) \
            and not (isinstance(stmt.test, ast.UnaryOp) and isinstance(stmt.test.op, ast.Not)):
        new = copy.copy(stmt)
        new.test = ast.UnaryOp(ast.Not(), stmt.test)
        out.append(("compare", [new]))
    return out


# ------------------------------------------------------------------------------------------------ planting
def _key(node):
    return (type(node).__name__, node.lineno, node.col_offset, node.end_lineno, node.end_col_offset)


def _replace_in(root, key, new):
    """Replace the node with ``key`` inside ``root`` (a copy) by ``new``; True when found."""
    for parent in ast.walk(root):
        for field, value in ast.iter_fields(parent):
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, ast.AST) and hasattr(item, "lineno") and _key(item) == key:
                        value[i] = new
                        return True
            elif isinstance(value, ast.AST) and hasattr(value, "lineno") and _key(value) == key:
                setattr(parent, field, new)
                return True
    return False


def _statements(fn, lo, hi):
    """Statements of ``fn`` lying wholly on lines [lo, hi) (0-based) that start their own line."""
    return [s for s in ast.walk(fn) if isinstance(s, ast.stmt) and s is not fn and s.lineno - 1 >= lo
            and s.end_lineno <= hi]


def _render(stmts, indent):
    text = "\n".join(ast.unparse(ast.fix_missing_locations(s)) for s in stmts) or "pass"
    return textwrap.indent(text, indent, lambda line: True) + "\n"


def mutants_of(spec: str, task: Task, root: Path = ROOT) -> list:
    """Every mutant of one unit, in source order; mutants that do not compile or change nothing are left out."""
    path, qualname, _ = split_spec(spec)
    source = (Path(root) / path).read_text(encoding="utf-8")
    cut = locate(source, spec, task)
    lines = source.splitlines(keepends=True)
    module = ast.parse(source)
    fn = next(n for n in ast.walk(module) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
              and n.name == qualname.split(".")[-1] and n.lineno - 1 < cut.start < n.end_lineno + 1)
    stmts = _statements(fn, cut.start, cut.stop)

    def own_line(s):
        return lines[s.lineno - 1][:s.col_offset].strip() == ""

    def enclosing(node):
        """The innermost statement of the unit holding ``node`` that starts its own line."""
        best = None
        for s in stmts:
            if own_line(s) and (s.lineno, s.col_offset) <= (node.lineno, node.col_offset) \
                    and (s.end_lineno, s.end_col_offset) >= (node.end_lineno, node.end_col_offset):
                if best is None or (s.end_lineno - s.lineno, s.end_col_offset) <= \
                        (best.end_lineno - best.lineno, best.end_col_offset):
                    best = s
        return best

    out, seen = [], {source}

    def plant(op, where, stmt, new_stmts, description):
        indent = re.match(r"[ \t]*", lines[stmt.lineno - 1]).group(0)
        text = "".join(lines[:stmt.lineno - 1]) + _render(new_stmts, indent) + "".join(lines[stmt.end_lineno:])
        if text in seen:
            return
        try:
            compile(text, path, "exec")
        except SyntaxError:
            return
        seen.add(text)
        mid = f"{op}@{where.lineno - cut.start}:{where.col_offset}"
        n = sum(m.id == mid or m.id.startswith(mid + "#") for m in out)
        out.append(Mutant(spec, task.id, mid if n == 0 else f"{mid}#{n + 1}", description, path, text))

    for stmt in stmts:
        if not own_line(stmt):
            continue
        for op, new in statement_mutations(stmt):
            before = ast.unparse(stmt).splitlines()[0]
            after = "; ".join(ast.unparse(s).splitlines()[0] for s in new) if new else "pass"
            plant(op, stmt, stmt, new, f"{before} → {after}")
    for node in sorted((n for s in stmts for n in ast.walk(s) if isinstance(n, ast.expr)),
                       key=lambda n: (n.lineno, n.col_offset, n.end_lineno, n.end_col_offset)):
        for op, new in expression_mutations(node):
            if node.lineno - 1 < cut.start or node.end_lineno > cut.stop:
                continue
            stmt = enclosing(node)
            if stmt is None:
                continue
            mutated = copy.deepcopy(stmt)
            if _key(stmt) == _key(node) or not _replace_in(mutated, _key(node), copy.deepcopy(new)):
                continue
            plant(op, node, stmt, [mutated], f"{ast.unparse(node)} → {ast.unparse(new)}")
    return _dedup(out)


def _dedup(mutants):
    unique = {}
    for m in mutants:
        unique.setdefault(m.id, m)
    return list(unique.values())


def sample(mutants, limit):
    """At most ``limit`` mutants, spread over the operators (round robin, each operator's mutants in source
    order, evenly spaced) — deterministic, so a record names the same mutants next time."""
    if limit is None or len(mutants) <= limit:
        return list(mutants)
    by_op = {}
    for m in mutants:
        by_op.setdefault(m.id.split("@")[0], []).append(m)
    queues = {op: _spread(ms) for op, ms in by_op.items()}
    chosen = []
    while len(chosen) < limit:
        for op in sorted(queues):
            if queues[op] and len(chosen) < limit:
                chosen.append(queues[op].pop(0))
    order = {m.id: i for i, m in enumerate(mutants)}
    return sorted(chosen, key=lambda m: order[m.id])


def _spread(ms):
    """Items reordered so that any prefix is spread evenly over the list (0, n/2, n/4, 3n/4, …)."""
    order, step = [], len(ms)
    while step >= 1 and len(order) < len(ms):
        for i in range(0, len(ms), max(step, 1)):
            if i not in order:
                order.append(i)
        step //= 2
    order += [i for i in range(len(ms)) if i not in order]
    return [ms[i] for i in order]


# ------------------------------------------------------------------------------------------------ equivalents
def equivalents(name: str, root: Path = ROOT) -> dict:
    """{(unit, mutant id): reason} from the manifest's ``[[equivalent]]`` tables; each needs all three fields."""
    where = f"course/{name}.toml"
    data = tomllib.loads((Path(root) / where).read_text(encoding="utf-8"))
    out = {}
    for i, e in enumerate(data.get("equivalent", [])):
        if not all(isinstance(e.get(k), str) and e.get(k).strip() for k in ("unit", "mutant", "reason")):
            raise CourseError(f"{where}, equivalent {i + 1}: needs unit, mutant and a one-line reason (strings)")
        out[(e["unit"], e["mutant"])] = e["reason"].strip()
    return out


# ------------------------------------------------------------------------------------------------ grading
@dataclass
class Outcome:
    id: str
    description: str
    caught: bool
    by: str                 # the first test of the task that failed (or why the run could not start)
    seconds: float


def grade_mutant(m: Mutant, task: Task, tree: Path) -> Outcome:
    """The mutant in place in ``tree`` (a copy of the repository), the task's tests in a fresh process as the
    grader runs them; caught when a test of the task fails (the run stops at the first), or when the tests
    cannot run at all (a grade of 0). The file is put back afterwards."""
    from .grade import run_tests

    file = Path(tree) / m.path
    original = file.read_text(encoding="utf-8")
    t0 = time.perf_counter()
    try:
        file.write_text(m.source, encoding="utf-8")
        try:
            run = run_tests(tree, ["-x", "-m", task.marker, *marked_files(tree, [task.marker])], timeout=600)
        except CourseError as e:
            return Outcome(m.id, m.description, True, f"the tests could not run: {str(e).splitlines()[0]}",
                           time.perf_counter() - t0)
    finally:
        file.write_text(original, encoding="utf-8")
    mine = run.with_marker(task.marker)
    failed = [t for t in mine if t.outcome != "passed"]
    caught = bool(failed) or bool(run.collect_errors) or not mine
    by = failed[0].nodeid if failed else (run.collect_errors[0]["nodeid"] if run.collect_errors else "")
    return Outcome(m.id, m.description, caught, by, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------ the record
def unit_size(spec: str, task: Task, root: Path = ROOT) -> int:
    """The size of a unit's body in AST nodes (blank lines, comments and formatting do not count)."""
    path = split_spec(spec)[0]
    source = (Path(root) / path).read_text(encoding="utf-8")
    cut = locate(source, spec, task)
    return sum(1 for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.stmt, ast.expr))
               and n.lineno - 1 >= cut.start and n.end_lineno <= cut.stop)


def unit_hash(spec: str, task: Task, root: Path = ROOT) -> str:
    """A hash of what decides a unit's mutants and their outcome: the unit's own lines, its task's test files and
    the operators' version. Code the unit calls, the shared test helpers and other tasks' tests are not in it, so
    that an edit elsewhere does not make every unit stale; a change there that lets a mutant survive shows at the
    next full pass (``REFRESH`` with ``--all``)."""
    root = Path(root)
    path = split_spec(spec)[0]
    source = (root / path).read_text(encoding="utf-8")
    cut = locate(source, spec, task)
    h = hashlib.sha256(f"{OPERATORS}\0{spec}\0".encode())
    h.update("".join(source.splitlines(keepends=True)[cut.start:cut.stop]).encode())
    for rel in marked_files(root, [task.marker]):
        h.update(b"\0" + rel.encode() + b"\0" + _task_source(root / rel, task.marker).encode())
    return h.hexdigest()[:16]


def _task_source(file: Path, marker: str) -> str:
    """A test file's text without the tests of other tasks: its module-level code (imports, helpers, fixtures,
    constants) and the tests that carry ``marker``, so that a test added to another task leaves this one's hash."""
    text = file.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    mark = re.compile(rf"\bmark\.{re.escape(marker)}\b")
    kept = []
    for node in ast.parse(text).body:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        segment = "".join(lines[first - 1:node.end_lineno])
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.startswith(("test", "Test")) \
                and not mark.search("".join(lines[first - 1:node.lineno])):
            continue
        kept.append(segment)
    return "\n".join(kept)


def load_record(root: Path = ROOT) -> dict:
    file = Path(root) / RECORD
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {"limit": None, "units": {}}


def write_record(record: dict, root: Path = ROOT) -> None:
    file = Path(root) / RECORD
    tmp = file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(file)


def mutation_problems(a: Assignment, units: dict, equivalent: dict) -> list:
    """Survivors not listed as equivalent, and listed equivalents that are no longer survivors (stale)."""
    problems = []
    for spec, entry in units.items():
        for o in entry["outcomes"]:
            if not o["caught"] and (spec, o["id"]) not in equivalent:
                problems.append(f"mutant {o['id']} of {spec} (task {entry['task']}: {o['description']}) keeps full "
                                f"marks: strengthen the task's tests, or list it in course/{a.name}.toml as "
                                "[[equivalent]] with a one-line reason")
    alive = {(spec, o["id"]) for spec, e in units.items() for o in e["outcomes"] if not o["caught"]}
    tried = {(spec, o["id"]) for spec, e in units.items() for o in e["outcomes"]}
    for key in equivalent:
        if key[0] in units and key in tried and key not in alive:
            problems.append(f"course/{a.name}.toml lists mutant {key[1]} of {key[0]} as equivalent, but the tests "
                            "catch it: remove the entry")
    return problems


def mutate_assignment(a: Assignment, tree: Path, limit=None, root: Path = ROOT, only=None, out=print,
                      record=None) -> dict:
    """Grade every (sampled) mutant of the assignment's units in ``tree`` (a copy of the repository). Returns
    {unit: {"task", "hash", "tried", "outcomes"}}; units outside ``only`` are taken from ``record``."""
    units = {}
    for spec, task in a.units():
        h = unit_hash(spec, task, tree)
        if only is not None and spec not in only and record and spec in record:
            units[spec] = record[spec]
            continue
        every = mutants_of(spec, task, root)
        chosen = sample(every, limit)
        outcomes = []
        t0 = time.perf_counter()
        for m in chosen:
            o = grade_mutant(m, task, tree)
            outcomes.append(asdict(o))
        caught = sum(o["caught"] for o in outcomes)
        out(f"  {spec} (task {task.id}): {caught} / {len(chosen)} mutants caught (of {len(every)} possible) "
            f"in {time.perf_counter() - t0:.0f} s")
        for o in outcomes:
            if not o["caught"]:
                out(f"    survivor {o['id']}: {o['description']}")
        units[spec] = {"task": task.id, "hash": h, "size": unit_size(spec, task, tree), "possible": len(every),
                       "tried": len(chosen),
                       "outcomes": [{k: (round(v, 2) if k == "seconds" else v) for k, v in o.items()}
                                    for o in outcomes]}
    return units


def summary(a: Assignment, units: dict, equivalent: dict) -> str:
    tried = sum(len(e["outcomes"]) for s, e in units.items() if s in dict(a.units()))
    caught = sum(o["caught"] for s, e in units.items() if s in dict(a.units()) for o in e["outcomes"])
    listed = sum((s, o["id"]) in equivalent for s, e in units.items() for o in e["outcomes"] if not o["caught"])
    return f"{a.name}: {tried} mutants tried, {caught} caught, {listed} listed equivalent"


def stale_units(root: Path = ROOT) -> list:
    """(assignment, unit) of every unit whose record is missing or whose hash no longer matches."""
    record = load_record(root).get("units", {})
    return [(a.name, spec) for a in assignments(root).values() for spec, task in a.units()
            if spec not in record or record[spec]["hash"] != unit_hash(spec, task, root)]


def mutation_pass(names=None, limit=None, only_stale: bool = False, root: Path = ROOT, out=print,
                  write: bool = True) -> list:
    """Grade the mutants of the named assignments' units (all when ``names`` is empty) in a fresh copy of the
    repository, write each unit's outcomes into ``course/mutants.json`` as it finishes (an interrupted pass
    keeps what it did), and return the problems: unlisted survivors and stale equivalents. With
    ``only_stale``, units whose record still matches are not graded again."""
    import tempfile

    from .tree import write_tree

    root = Path(root)
    known = assignments(root)
    chosen = [known[n] for n in (names or known)]
    stale = {spec for _, spec in stale_units(root)}
    record = load_record(root)
    record["limit"] = limit
    problems = []
    with tempfile.TemporaryDirectory(prefix="minialign-mutants-") as tmp:
        for a in chosen:
            out(f"{a.name}:")
            for i, (spec, task) in enumerate(a.units()):
                if only_stale and spec not in stale:
                    continue
                # a fresh copy per unit: the record's hash and the outcomes come from the same files
                tree = write_tree(root, Path(tmp) / f"{a.name}-{i}", [])
                units = mutate_assignment(_only(a, spec), tree, limit, root, out=out)
                shutil.rmtree(tree, ignore_errors=True)
                record["units"].update(units)
                if write:
                    write_record(record, root)
            units = {s: record["units"][s] for s, _ in a.units() if s in record["units"]}
            equivalent = equivalents(a.name, root)
            problems += mutation_problems(a, units, equivalent)
            out(summary(a, units, equivalent))
    return problems


def _only(a: Assignment, spec: str) -> Assignment:
    """The assignment with one unit: a task of its own holding just ``spec``."""
    from dataclasses import replace

    task = next(t for t in a.tasks if spec in t.units)
    return replace(a, tasks=(replace(task, units=(spec,)),))
