"""``python -m minialign.experiments STUDY [options]``: run one study (``STUDY --help`` lists its options)."""
import argparse
import sys
from importlib import import_module

from . import STUDIES, formatter


def build_parser() -> argparse.ArgumentParser:
    """The studies as subcommands, each with its own checked options (unknown flags and studies are refused)."""
    from . import plain

    parser = argparse.ArgumentParser(prog="python -m minialign.experiments", formatter_class=formatter,
                                     allow_abbrev=False,
                                     description="Studies that produce the course's tables and plots. "
                                                 "`python -m minialign.experiments STUDY --help` lists a study's "
                                                 "options.")
    sub = parser.add_subparsers(dest="study", required=True, metavar="STUDY")
    usages = []
    for name, what in STUDIES.items():
        module = import_module(f".{name}", __package__)
        study = module.options(sub.add_parser(name, help=what, description=plain(module.__doc__),
                                              formatter_class=formatter, allow_abbrev=False))
        usages.append("  " + " ".join(study.format_usage().split()[1:]))
    parser.epilog = "the studies' options:\n" + "\n".join(usages)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    from threadpoolctl import threadpool_limits

    from ..backend import tune_allocator

    threadpool_limits(limits=1, user_api="blas")  # small matrices: extra BLAS threads only fight over the cores
    tune_allocator()
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
