"""``python -m minialign.experiments STUDY [options]``: run one study (``STUDY --help`` lists its options)."""
import sys
from importlib import import_module

from . import STUDIES


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in STUDIES:
        print("usage: python -m minialign.experiments STUDY [options]\n\nstudies:", file=sys.stderr)
        for name, what in STUDIES.items():
            print(f"  {name:12s} {what}", file=sys.stderr)
        return 2
    from threadpoolctl import threadpool_limits

    from ..backend import tune_allocator

    threadpool_limits(limits=1, user_api="blas")  # small matrices: extra BLAS threads only fight over the cores
    tune_allocator()
    return import_module(f".{argv[0]}", __package__).main(argv[1:])


raise SystemExit(main())
