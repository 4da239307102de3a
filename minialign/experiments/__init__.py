"""Studies that produce the course's tables and plots, one module per chapter that needs more than a test.

``python -m minialign.experiments STUDY [--out DIR] [--quick]``; the exact-lab studies that chapters and tests call
directly (``rlhf_lab``) have no command of their own.
"""

STUDIES = {
    "gdc_study": "chapter 06: GDC against KL-penalised RLHF at the equivalent β, budgets, distillation onto p",
    "fdpg_study": "chapter 07: f-DPG with each f on the exact lab and on names",
    "overopt": "chapter 05: reward over-optimisation, gold against proxy reward by best-of-n and RLHF",
}


def study_parser(name: str, doc: str, quick_help: str):
    """The command line of a study: ``--out`` (default ``runs/NAME``) and ``--quick``; the study adds its own
    options, with the checked argument types of the main command line (``registry.py``)."""
    import argparse

    from .. import argtypes as A

    parser = argparse.ArgumentParser(prog=f"python -m minialign.experiments {name}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=A.output_dir, default=f"runs/{name}", metavar="DIR", help="folder for the results")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser
