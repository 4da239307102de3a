"""README's two commands stay true: the test command is the one CI runs, and the tour command exists."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_opens_with_the_tour_and_the_test_commands():
    tour, tests = readme_commands()
    assert tour.endswith("minialign tour")
    assert "pytest" in tests


def test_ci_runs_exactly_the_readme_test_command():
    _, tests = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    setup, _, run = tests.rpartition("&& ")
    assert run.strip() in [line.strip() for line in ci.splitlines()]
    install = re.search(r"pip install (torch==[\d.]+ -e '\.\[[a-z,]+\]')", setup).group(1)
    assert install in ci


PROGRAMS = {"minialign": ("minialign.cli", "build_parser"),
            "python -m minialign.bench": ("minialign.bench", "build_parser"),
            "python -m minialign.experiments": ("minialign.experiments.__main__", "build_parser")}


def readme_command_lines(program: str = "minialign"):
    """The lines of README's command-line block that run ``program`` (continuation lines joined), without it."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Command line\s+```\n(.*?)```", text, flags=re.S).group(1)
    joined = re.sub(r"\\\n\s*", " ", block)
    joined = re.sub(r"\n {4}(?=\[|--)", " ", joined)  # an indented line of options continues the command above
    lines = [line.split("#")[0].strip() for line in joined.splitlines()]
    return [line[len(program):].strip() for line in lines if line.startswith(program + " ")]


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _parser_of(program):
    import importlib

    module, name = PROGRAMS[program]
    return getattr(importlib.import_module(module), name)()


def _skip_options(parser, words):
    """``words`` past the options a parser takes before its command (``minialign --threads 2 pretrain``)."""
    takes_value = {s for a in parser._actions if a.option_strings and a.nargs != 0 for s in a.option_strings}
    while words and words[0].startswith("-"):
        words = words[2:] if words[0] in takes_value else words[1:]
    return words


def command_line_problems(program: str) -> list:
    """Every command (and subcommand) of ``program``'s parser has a line in README's command-line section, and every
    flag written there is an option of the command it is written for."""
    top = _parser_of(program)
    lines = readme_command_lines(program)
    problems = []
    for name, parser in _subparsers(top).items():
        for sub in _subparsers(parser) or [None]:
            words = [name] + ([sub] if sub else [])
            if not any(_skip_options(top, line.split())[: len(words)] == words for line in lines):
                problems.append(f"README's command line section has no line for `{program} {' '.join(words)}`")
    for line in lines:
        words = _skip_options(top, line.split())
        top_flags = {s for a in top._actions for s in a.option_strings}
        problems += [f"`{program} {line}`: {w} is not an option of {program}" for w in line.split()[: len(line.split())
                     - len(words)] if w.startswith("-") and w not in top_flags]
        parser = _subparsers(top).get(words[0]) if words else None
        if parser is None:
            problems.append(f"`{program} {line}`: no command {words[:1]}")
            continue
        subs = _subparsers(parser)
        if subs:
            parser = subs.get(words[1]) if len(words) > 1 else None
            if parser is None:
                problems.append(f"`{program} {line}`: no {words[0]} command {words[1:2]}")
                continue
        known = {s for a in parser._actions for s in a.option_strings}
        problems += [f"`{program} {line}`: {flag} is not an option of this command"
                     for flag in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", " ".join(words)) if flag not in known]
    return problems


@pytest.mark.parametrize("program", list(PROGRAMS))
def test_readme_command_line_section_matches_the_parser(program):
    """Every command of the parser appears in README's command-line section, and every flag written there is
    an option of the command it is written for — for the main command line, the benchmarks and the studies."""
    problems = command_line_problems(program)
    assert not problems, "\n".join(problems)


def test_the_readme_check_finds_a_flag_that_no_parser_has(monkeypatch):
    real = Path.read_text

    def with_a_bad_line(self, *args, **kwargs):
        text = real(self, *args, **kwargs)
        if self.name == "README.md":
            text = text.replace("python -m minialign.bench engine ", "python -m minialign.bench engine --bogus 3 ", 1)
        return text

    monkeypatch.setattr(Path, "read_text", with_a_bad_line)
    assert any("--bogus is not an option" in p for p in command_line_problems("python -m minialign.bench"))


def _all_parsers():
    import argparse

    def walk(parser, name):
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, p in action.choices.items():
                    yield from walk(p, f"{name} {sub}")

    for program in PROGRAMS:
        yield from walk(_parser_of(program), program)


def test_every_help_is_in_one_style():
    """Each command has a description; every option's default is written "(default: X)" once, at the end of its
    line; no placeholder is an option's name in capitals (N, X, PATH… instead); no Markdown or RST markup; no
    Python value (None, {}) where a user reads a default."""
    problems = []
    for name, parser in _all_parsers():
        text = parser.format_help()
        if not parser.description:
            problems.append(f"{name}: no description")
        flat = re.sub(r"\s+", " ", text)
        for bad in ("**", "``", ":func:", ":class:", "(default: None)", "(default: {})", "default {}", "None)"):
            if bad in flat:
                problems.append(f"{name}: {bad!r} in its --help")
        problems += [f"{name}: default written another way: {m!r}"
                     for m in re.findall(r"[;,] default[: ][^)]*\)", flat)]
        problems += [f"{name}: two defaults in one line: {m!r}"
                     for m in re.findall(r"\(default: [^)]*\)[^-]*\(default: ", flat)]
        for action in parser._actions:
            metavar = action.metavar
            if isinstance(metavar, str) and action.option_strings and metavar.replace("_", "") != metavar:
                problems.append(f"{name} {action.option_strings[0]}: placeholder {metavar}")
            if (metavar is None and action.option_strings and action.nargs != 0 and not action.choices
                    and action.dest not in ("help",)):
                problems.append(f"{name} {action.option_strings[0]}: placeholder {action.dest.upper()}")
    assert not problems, "\n".join(problems)
