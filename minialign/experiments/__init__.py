"""Studies that produce the course's tables and plots, one module per chapter that needs more than a test.

``python -m minialign.experiments STUDY [--out DIR] [--quick]``; the exact-lab studies that chapters and tests call
directly (``rlhf_lab``) have no command of their own.
"""

STUDIES = {
    "gdc_study": "chapter 06: GDC against KL-penalised RLHF at the equivalent β, budgets, distillation onto p",
    "fdpg_study": "chapter 07: f-DPG with each f on the exact lab and on names",
    "overopt": "chapter 05: reward over-optimisation, gold against proxy reward by best-of-n and RLHF",
}


def plain(doc: str) -> str:
    """A module docstring as a --help description: without its usage line and without Markdown or RST markup."""
    import re

    lines = [line for line in doc.strip().splitlines() if not line.startswith("``python -m")]
    text = "\n".join(lines)
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", text)
    text = re.sub(r"``(.+?)``", r"\1", text)
    text = re.sub(r"(?<![\w*])\*([^*\n]+?)\*(?![\w*])", r"\1", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def study_parser(name: str, doc: str, quick_help: str, parser=None):
    """The command line of a study: ``--out`` (default ``runs/NAME``) and ``--quick``; the study adds its own
    options, with the checked argument types of the main command line (``argtypes.py``). ``parser`` is a
    subcommand's parser of ``python -m minialign.experiments`` (a new parser when None)."""
    import argparse

    from .. import argtypes as A

    if parser is None:
        parser = argparse.ArgumentParser(prog=f"python -m minialign.experiments {name}", description=plain(doc),
                                         allow_abbrev=False,
                                         formatter_class=formatter)
    parser.add_argument("--out", type=A.output_dir, default=f"runs/{name}", metavar="DIR",
                        help="folder for the results")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser


def formatter(prog):
    """Paragraphs of the description kept, every option's default written "(default: X)"."""
    import argparse

    from ..argtypes import with_default

    class Help(argparse.RawDescriptionHelpFormatter):
        def _get_help_string(self, action):
            return with_default(action.help or "", action.default)

    return Help(prog, max_help_position=34, width=110)
