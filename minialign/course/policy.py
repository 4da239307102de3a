"""What a unit body may contain: the grader's written policy, checked on the syntax tree before anything runs.

Only the bodies of a manifest's units come from a student (``sandbox.py`` splices them into the instructor's
copy); each body is checked here first. A body that breaks a rule gives its task 0, with the file, the line and
the rule. The rules (``RULES``, also printed in every handout) keep a body to computing with the values it is
given and the module it lives in; they are what stands between a body and the grading process it runs in
(the test harness, its report, the instructor's tests), so they are deliberately narrow:

* no ``import``, ``global``/``nonlocal``, ``class``, ``del`` of anything but a local name;
* no name or attribute that starts and ends with two underscores, and no string holding ``__``;
* no reflection, code or file builtins (``exec``, ``eval``, ``compile``, ``open``, ``__import__``, ``globals``,
  ``locals``, ``vars``, ``getattr``, ``setattr``, ``delattr``, ``type``, ``object``, ``input``, ``breakpoint`` …);
  a name is one bound in the function itself, one of the module's own, or one of ``SAFE_BUILTINS``;
* none of the module's names imported from modules that reach the system (os, sys, io, pathlib, the
  library's file helpers …): the allowed origins are ``ALLOWED_ORIGINS``;
* no attribute outside the library's computing surface: none that starts with ``_`` on anything but
  ``self`` unless the library defines it (``library_privates``), none of ``DENIED_ATTRIBUTES`` (file I/O,
  frames, numpy's global state and test helpers);
* assignment only to local names and to attributes or items of names bound in the function (``self.x = …``,
  ``out[i] = …``), never to a module-level object, and no mutating call (``append``, ``update`` …) on one.

What it does not do (README, "The grader's policy and its limits"): it is not a proof that a body cannot
reach the process — a path through a library's C code would do — and it does not bound time or memory (the
process boundary of ``sandbox.py`` does).
"""
from __future__ import annotations

import ast
import builtins
import re
from dataclasses import dataclass

SAFE_BUILTINS = frozenset({
    "abs", "all", "any", "bool", "callable", "chr", "complex", "dict", "divmod", "enumerate", "filter", "float",
    "format", "frozenset", "hash", "int", "isinstance", "issubclass", "iter", "len", "list", "map", "max", "min",
    "next", "ord", "pow", "print", "range", "repr", "reversed", "round", "set", "slice", "sorted", "str", "sum",
    "super", "tuple", "zip", "id", "bin", "hex", "oct", "property", "staticmethod", "classmethod",
    "ArithmeticError", "AssertionError", "Exception", "FloatingPointError", "IndexError", "KeyError",
    "LookupError", "NotImplementedError", "OverflowError", "RuntimeError", "StopIteration", "TypeError",
    "ValueError", "ZeroDivisionError", "NotImplemented", "Ellipsis", "True", "False", "None",
})
# Modules a unit's module may have imported its names from (the library's own, minus its file helpers).
ALLOWED_ORIGINS = ("numpy", "math", "torch", "triton", "typing", "dataclasses", "numbers", "itertools", "bisect",
                   "minialign", "__future__")
DENIED_ORIGINS = ("minialign.io", "minialign.loop", "minialign.data")
DENIED_NAMES = frozenset({"load", "save", "atomic_write", "open"})
DENIED_ATTRIBUTES = frozenset({
    # files and processes
    "load", "loads", "loadtxt", "save", "savez", "savez_compressed", "savetxt", "fromfile", "tofile", "memmap",
    "genfromtxt", "fromregex", "DataSource", "dump", "dumps", "open", "write_text", "write_bytes", "read_text",
    "system", "popen", "spawn", "fork", "kill", "exit",
    # reaching other modules and the C level through numpy and torch
    "lib", "ctypeslib", "ctypes", "core", "distutils", "f2py", "testing", "ops", "utils", "hub", "library",
    "compiler", "jit", "cuda", "backends", "multiprocessing", "distributed",
    # frames, code and tracebacks
    "f_back", "f_locals", "f_globals", "f_builtins", "f_code", "gi_frame", "gi_code", "cr_frame", "cr_code",
    "ag_frame", "ag_code", "tb_frame", "tb_next", "co_code", "with_traceback",
    # process-wide numeric state
    "seterr", "seterrcall", "setbufsize", "set_printoptions", "printoptions", "set_default_dtype",
    "manual_seed", "set_num_threads", "use_deterministic_algorithms",
})
MUTATORS = frozenset({"append", "extend", "insert", "pop", "popitem", "clear", "update", "setdefault", "remove",
                      "discard", "add", "sort", "reverse", "fill", "resize", "setflags", "put", "itemset"})
DUNDER = re.compile(r"^__\w*__$")

RULES = {
    "import": "no import statements (the module's own imports are there to use)",
    "scope": "no global or nonlocal statements",
    "class": "no class definitions",
    "dunder": "no name or attribute of the form __x__, and no string holding '__'",
    "name": "only names bound in the function, the module's own names and the safe builtins "
            "(abs, len, range, isinstance, the usual exceptions …); no exec, eval, compile, open, __import__, "
            "globals, locals, vars, getattr, setattr, delattr, type, object, input, breakpoint",
    "attribute": "no attribute that starts with '_' (except on self, and those the library itself defines) and "
                 "none that reaches files, processes, frames or process-wide settings (np.load, .tofile, "
                 "np.testing, np.seterr, .f_back …)",
    "assign": "assign only to local names and to attributes or items of names bound in the function "
              "(self.x = …, out[i] = …); never to a module-level object, and no append/update/… on one",
    "delete": "del only local names",
}


@dataclass(frozen=True)
class Violation:
    line: int               # line in the student's file
    rule: str               # a key of RULES
    detail: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.detail} (rule '{self.rule}': {RULES[self.rule]})"


def module_names(module: ast.Module, package: str) -> set:
    """The module-level names a body may use: its own definitions and constants, and what it imported from
    an allowed origin (``package`` resolves relative imports, e.g. ``minialign.trainers``)."""
    names = set()

    def allowed(origin: str) -> bool:
        return any(origin == o or origin.startswith(o + ".") for o in ALLOWED_ORIGINS) and not any(
            origin == o or origin.startswith(o + ".") for o in DENIED_ORIGINS)

    for node in module.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                if allowed(a.name):
                    names.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            origin = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else (node.module or "")
            for a in node.names:
                if allowed(origin) and allowed(f"{origin}.{a.name}"):
                    names.add(a.asname or a.name)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return {n for n in names if not DUNDER.match(n) and n not in DENIED_NAMES}


def module_values(module: ast.Module) -> set:
    """The names a module binds by assignment (its tables and constants: what a body must not mutate)."""
    out = set()
    for node in module.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                out |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return out


def library_privates(sources) -> frozenset:
    """Attribute names starting with '_' that the library itself defines (methods, ``self._x`` attributes,
    ``__slots__`` entries) in ``sources``: the only private attributes a body may use on other objects."""
    out = set()
    for source in sources:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        out.add(item.name)
                    elif isinstance(item, (ast.Assign, ast.AnnAssign)):
                        targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                        out |= {t.id for t in targets if isinstance(t, ast.Name)}
                        if any(isinstance(t, ast.Name) and t.id == "__slots__" for t in targets) and item.value:
                            out |= {c.value for c in ast.walk(item.value) if isinstance(c, ast.Constant)
                                    and isinstance(c.value, str)}
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                    and isinstance(node.value, ast.Name) and node.value.id == "self":
                out.add(node.attr)
    return frozenset(n for n in out if n.startswith("_") and not DUNDER.match(n))


def _bound(function: ast.AST) -> set:
    """Every name the function binds: parameters, assignment and loop targets, comprehension variables,
    ``as`` names, nested functions and lambdas' parameters."""
    out = set()
    for node in ast.walk(function):
        if isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            out.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node is not function:
            out.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            out.add(node.name)
        elif isinstance(node, (ast.alias,)):
            out.add(node.asname or node.name)
        elif isinstance(node, ast.MatchAs) and node.name:
            out.add(node.name)
    return out


def _root(node):
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
        node = node.value
    return node


def check_body(statements, function: ast.AST, module: set, offset: int = 0, values=frozenset(),
               privates=frozenset(), strings=frozenset()) -> list:
    """Violations of the policy in ``statements`` (the student's part of ``function``, as spliced), whose names
    may be the function's own, ``module``'s, or safe builtins. ``values`` are the module's assigned names (not
    to be mutated), ``privates`` the library's own private attribute names. ``offset`` maps the spliced file's
    line numbers back to the student's file. ``strings`` may hold '__' (the task's own stub messages, which
    name units such as ``Tensor.__mul__``)."""
    local = _bound(function)
    allowed = local | module | SAFE_BUILTINS
    out = []

    def bad(node, rule, detail):
        out.append(Violation(getattr(node, "lineno", 0) + offset, rule, detail))

    for stmt in statements:
        for node in ast.walk(stmt):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                bad(node, "import", "an import statement")
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                bad(node, "scope", f"'{type(node).__name__.lower()} {', '.join(node.names)}'")
            elif isinstance(node, ast.ClassDef):
                bad(node, "class", f"class {node.name}")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and DUNDER.match(node.name):
                bad(node, "dunder", f"a function named {node.name}")
            elif isinstance(node, ast.Name):
                if DUNDER.match(node.id):
                    bad(node, "dunder", f"the name {node.id}")
                elif isinstance(node.ctx, ast.Load) and node.id not in allowed:
                    what = "a builtin outside the safe list" if hasattr(builtins, node.id) else "a name"
                    bad(node, "name", f"{what} '{node.id}' that is neither the function's nor the module's")
            elif isinstance(node, ast.Attribute):
                owner = _root(node)
                if DUNDER.match(node.attr):
                    bad(node, "dunder", f"the attribute .{node.attr}")
                elif node.attr in DENIED_ATTRIBUTES:
                    bad(node, "attribute", f"the attribute .{node.attr}")
                elif node.attr.startswith("_") and node.attr not in privates \
                        and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                    bad(node, "attribute", f"the private attribute .{node.attr} of something other than self")
                if isinstance(node.ctx, (ast.Store, ast.Del)) and not (isinstance(owner, ast.Name)
                                                                       and owner.id in local):
                    bad(node, "assign", f"assigning the attribute .{node.attr} of a module-level object")
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del)):
                owner = _root(node)
                if not (isinstance(owner, ast.Name) and owner.id in local):
                    bad(node, "assign", "assigning an item of a module-level object")
            elif isinstance(node, ast.Delete):
                for target in node.targets:
                    if not isinstance(target, ast.Name):
                        bad(node, "delete", "del of something other than a local name")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
                owner = _root(node.func)
                if isinstance(owner, ast.Name) and owner.id not in local and owner.id in values:
                    bad(node, "assign", f"calling .{node.func.attr} on the module-level object {owner.id}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
                text = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
                if "__" in text and node.value not in strings:
                    bad(node, "dunder", "a string holding '__'")
    return sorted(set(out), key=lambda v: (v.line, v.rule, v.detail))


def rules_text() -> str:
    """The policy as the handout states it."""
    return "\n".join(f"- **{rule}**: {text}." for rule, text in RULES.items())
