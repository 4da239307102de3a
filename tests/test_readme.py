"""README's two commands stay true: the test command is the one CI runs, and the tour command exists."""
import re
from pathlib import Path

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


def readme_command_lines():
    """The lines of README's command-line block that run ``minialign`` (continuation lines joined)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Command line\s+```\n(.*?)```", text, flags=re.S).group(1)
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.split("#")[0].strip() for line in joined.splitlines() if line.strip().startswith("minialign ")]


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_readme_command_line_section_matches_the_parser():
    """Every command of the parser appears in README's command-line section, and every flag written there is
    an option of the command it is written for."""
    from minialign.cli import build_parser

    lines = readme_command_lines()
    commands = _subparsers(build_parser())
    problems = []
    for name, parser in commands.items():
        subs = _subparsers(parser)
        for sub in subs or [None]:
            words = ["minialign", name] + ([sub] if sub else [])
            if not any(line.split()[: len(words)] == words for line in lines):
                problems.append(f"README's command line section has no line for `{' '.join(words)}`")
    for line in lines:
        words = line.split()
        parser = commands.get(words[1])
        if parser is None:
            problems.append(f"`{line}`: no command {words[1]!r}")
            continue
        subs = _subparsers(parser)
        if subs:
            parser = subs.get(words[2])
            if parser is None:
                problems.append(f"`{line}`: no {words[1]} method {words[2]!r}")
                continue
        known = {s for a in parser._actions for s in a.option_strings}
        problems += [f"`{line}`: {flag} is not an option of this command"
                     for flag in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", line) if flag not in known]
    assert not problems, "\n".join(problems)
