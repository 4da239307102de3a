"""The ``minialign`` command line: it parses, calls the library and prints; no math lives here.

Every option is checked when it is parsed (a bad value is an argument error naming the flag, before any
work starts); the methods of ``align`` and their options come from the registry (``registry.py``).
"""
from __future__ import annotations

import argparse
import sys
import warnings

from . import argtypes as A

from . import registry as R

DEFAULT_CHECKPOINT = "runs/base.npz"


def _backend(args):
    """The backend ``--device`` names, checked before any work (a clear error naming the flag otherwise)."""
    from .device import backend_for

    return backend_for(args.device)


def _pretrain(args):
    import time

    from .gpt import GPTConfig
    from .pretrain import PretrainConfig, bigram_baseline, pretrain

    backend = _backend(args)
    if args.n_embd % args.n_head:
        raise ValueError(f"--n-embd ({args.n_embd}) must be divisible by --n-head ({args.n_head})")
    size = A.gpt_parameters(args.n_layer, args.n_embd, args.block_size)
    if size > A.PARAMETER_LIMIT:
        raise ValueError(f"--n-layer {args.n_layer} and --n-embd {args.n_embd} make a model of {size:,} parameters; "
                         f"this engine trains at most {A.PARAMETER_LIMIT:,} (lower --n-layer or --n-embd)")
    model_cfg = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                          block_size=args.block_size, dropout=args.dropout)
    cfg = PretrainConfig(model=model_cfg, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         eval_every=args.eval_every, seed=args.seed)
    t0 = time.perf_counter()
    model, history = pretrain(cfg, out=args.out, progress=not args.quiet, fresh=args.fresh, backend=backend)
    bigram = bigram_baseline(model_cfg.block_size, seed=args.seed)
    print(f"pretrained in {time.perf_counter() - t0:.1f} s on {args.device} -> {args.out}")
    print(f"validation loss  GPT {history['val_loss'][-1]:.4f}  |  bigram (counts) {bigram:.4f}  nats/token")
    _print_samples(model, args.samples, args.seed, 1.0, None)
    return 0


def _sample(args):
    from .tasks import load_base

    model = load_base(args.checkpoint)
    if args.top_k is not None and args.top_k > model.config.vocab_size:
        raise ValueError(f"--top-k must be at most the vocabulary size ({model.config.vocab_size}); got {args.top_k}")
    _print_samples(model, args.n, args.seed, args.temperature, args.top_k)
    return 0


SAMPLE_CHUNK = 4096  # names generated at once: many are printed as they come, in bounded memory


def _print_samples(model, n, seed, temperature, top_k):
    import numpy as np

    from .data import CharTokenizer

    if n == 0:
        return
    tok = CharTokenizer()
    rng = np.random.default_rng(seed)
    print(f"{n} samples (temperature {temperature}, top-k {top_k}):")
    for start in range(0, n, SAMPLE_CHUNK):
        ids, logp = model.generate(min(SAMPLE_CHUNK, n - start), rng=rng, temperature=temperature, top_k=top_k)
        for name, lp in zip(tok.decode_batch(ids), logp):
            print(f"  {name or '(empty)':<16s} log π = {lp:7.3f}")


def _align(args):
    from . import tasks
    from .io import fingerprint
    from .loop import check_resumable
    from .trainers.common import TrainConfig

    spec = R.METHODS[args.method]
    opts = {o.dest: getattr(args, o.dest) for o in spec.options}
    if spec.check is not None:
        spec.check(opts)
    backend = _backend(args)
    out = args.out or A.output_file(".npz")(f"runs/{args.method}.npz")
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      checkpoint_every=args.checkpoint_every)
    if spec.check_train is not None:
        spec.check_train(opts, cfg)
    base_path = args.base or tasks.BASE_CHECKPOINT
    if out.resolve() == base_path.resolve():
        raise ValueError(f"--out {out} is the --base checkpoint; a run must not overwrite its own base model: "
                         "choose another --out")
    base = tasks.load_base(base_path, backend=backend)
    check_resumable(out, {"kind": "align", "base": fingerprint(base), **spec.identity(opts), **cfg.identity()},
                    args.fresh)  # before any work: a damaged checkpoint or another run's is refused now
    print("base samples:", ", ".join(tasks.samples(base, 12, args.seed)))
    ingredients = R.prepare(spec, opts, base, args.seed, progress=not args.quiet)
    result = spec.run(ingredients, opts, cfg, base, out, args.fresh, not args.quiet,
                      {**spec.identity(opts), **ingredients.identity})
    for line in result.report:
        print(line)
    print(f"checkpoint: {out}")
    print("aligned samples:", ", ".join(tasks.samples(result.policy, 12, args.seed)))
    return 0


def _distill(args):
    from . import tasks
    from .trainers.common import TrainConfig

    backend = _backend(args)
    teacher = tasks.load_base(args.teacher, backend=backend)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      checkpoint_every=args.checkpoint_every)
    print("teacher samples:", ", ".join(tasks.samples(teacher, 12, args.seed)))
    student, _ = tasks.run_distill(teacher, f=args.f, samples=args.samples, student_config=args.student_config,
                                   cfg=cfg, out=args.out, progress=not args.quiet, fresh=args.fresh,
                                   identity={"teacher_path": str(args.teacher)})
    for line in tasks.distill_report(student, teacher, args.f, n=args.eval_samples, seed=args.seed):
        print(line)
    print(f"checkpoint: {args.out}")
    print("student samples:", ", ".join(tasks.samples(student, 12, args.seed)))
    return 0


def _tour(args):
    from .tour import run_tour

    return run_tour(out=args.out, quick=args.quick, pretrain=args.pretrain, backend=_backend(args))


def _device_option(parser):
    from .device import DEVICES

    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="cpu: the NumPy engine; cuda: the torch backend with the Triton kernels on a CUDA GPU "
                             "(needs torch and triton)")


class _Help(argparse.HelpFormatter):
    """Every option's line ends with its default, unless the help already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default == argparse.SUPPRESS or default == []:
            return text
        return f"{text} (default: {default})"


def _fmt():
    return lambda prog: _Help(prog, max_help_position=34, width=110)


def _run_options(p, out, out_help, steps, batch, batch_help, lr, lr_help, seed_help):
    """The options every training command shares: where its checkpoint goes, and its optimiser's knobs."""
    p.add_argument("--out", type=A.output_file(".npz"), default=out, metavar="PATH", help=out_help)
    p.add_argument("--fresh", action="store_true", help="start afresh, overwriting a checkpoint at --out")
    p.add_argument("--steps", type=A.positive_int, metavar="N", default=steps, help="optimizer steps")
    p.add_argument("--batch-size", type=A.count(1, R.BATCH_LIMIT), metavar="N", default=batch, help=batch_help)
    p.add_argument("--lr", type=A.learning_rate, metavar="X", default=lr, help=lr_help)
    p.add_argument("--seed", type=A.seed, metavar="N", default=0, help=seed_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minialign", description="Aligning language models, from scratch.")
    parser.add_argument("--threads", type=A.positive_int, metavar="N", default=1,
                        help="BLAS threads (1: the model's matrices are small, and extra threads on a busy machine "
                             "slow every product down)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("pretrain", help="train the GPT on the census names", formatter_class=_fmt())
    _run_options(p, DEFAULT_CHECKPOINT, "checkpoint path (.npz); an existing run there is resumed", 1500, 64,
                 "names per step", 3e-3, "peak learning rate of the cosine schedule", "seed of the weights and batches")
    p.add_argument("--eval-every", type=A.positive_int, metavar="N", default=250, help="steps between validation and checkpoint")
    p.add_argument("--n-layer", type=A.positive_int, metavar="N", default=4, help="transformer blocks")
    p.add_argument("--n-head", type=A.positive_int, metavar="N", default=4, help="attention heads")
    p.add_argument("--n-embd", type=A.positive_int, metavar="N", default=64, help="embedding width")
    p.add_argument("--block-size", type=A.count(12, 256, "the longest name has 11 letters, and its EOS; more "
                                                 "positions are padding"), metavar="N",
                   default=12, help="positions (at least 12 for names)")
    p.add_argument("--dropout", type=A.unit_interval, metavar="X", default=0.1, help="dropout probability")
    p.add_argument("--samples", type=A.nonnegative_int, metavar="N", default=20, help="names to print at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _device_option(p)
    p.set_defaults(fn=_pretrain)

    p = sub.add_parser("sample", help="sample names from a checkpoint", formatter_class=_fmt())
    p.add_argument("--checkpoint", type=A.input_file(".npz"), default=None, metavar="PATH",
                   help="a GPT checkpoint (default: the committed base model)")
    p.add_argument("-n", type=A.positive_int, metavar="N", default=20, help="how many names")
    p.add_argument("--temperature", type=A.positive_float, metavar="X", default=1.0, help="softmax temperature")
    p.add_argument("--top-k", type=A.positive_int, metavar="N", default=None, help="sample among the k likeliest tokens only")
    p.add_argument("--seed", type=A.seed, metavar="N", default=0, help="sampling seed")
    p.set_defaults(fn=_sample)

    p = sub.add_parser("align", help="align the base model: " + ", ".join(R.METHODS))
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD")
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("run")
    g.add_argument("--base", type=A.input_file(".npz"), default=None, metavar="PATH", help="base checkpoint (default: the committed one)")
    _run_options(g, None, "checkpoint path (default: runs/METHOD.npz); an existing run there is resumed",
                 R.TRAIN_DEFAULTS["steps"], R.TRAIN_DEFAULTS["batch_size"], "samples (or pairs) per step",
                 R.TRAIN_DEFAULTS["lr"], "AdamW learning rate", "seed of every sample drawn")
    g.add_argument("--checkpoint-every", type=A.positive_int, metavar="N", default=25, help="steps between checkpoints")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    _device_option(g)
    for spec in R.METHODS.values():
        m = methods.add_parser(spec.name, help=spec.help, description=spec.help, parents=[common],
                               formatter_class=_fmt())
        g = m.add_argument_group(spec.name)
        for o in spec.options:
            g.add_argument(o.flag, **o.kwargs)
        m.set_defaults(fn=_align)

    from .trainers.distill import STUDENT_SIZE

    p = sub.add_parser("distill", help="fit a smaller student to a teacher's next-token distributions, for any f",
                       description="Token-level f-divergence distillation (chapter 07, §9): minimise "
                                   "Σ_t D_f(π_t‖p_t) over the vocabulary at every position of the teacher's (or the "
                                   "student's own) samples.", formatter_class=_fmt())
    p.add_argument("--teacher", type=A.input_file(".npz"), required=True,
                   help="the teacher's checkpoint (e.g. runs/rlhf.npz from minialign align rlhf)")
    p.add_argument("--f", choices=["kl", "reverse_kl", "js", "tv"], default="js",
                   help="D_f(π‖p) per token: kl is KL(student‖teacher), reverse_kl is KL(teacher‖student)")
    p.add_argument("--samples", choices=["teacher", "student"], default="teacher",
                   help="whose samples give the prefixes: the teacher's (off-policy) or the student's own (on-policy)")
    p.add_argument("--student-config", type=A.gpt_size, default={}, metavar="KEY=N,...",
                   help="the student's size, changed from " + ",".join(f"{k}={v}" for k, v in STUDENT_SIZE.items()) +
                        " (any of n_layer, n_head, n_embd; vocabulary and horizon are the teacher's)")
    _run_options(p, "runs/distill.npz", "checkpoint path (.npz); an existing run there is resumed", 300, 64,
                 "samples per step", 3e-3, "AdamW learning rate", "seed of the student's weights and every sample")
    p.add_argument("--checkpoint-every", type=A.positive_int, metavar="N", default=50, help="steps between checkpoints")
    p.add_argument("--eval-samples", type=A.count(2, 1_000_000, "a standard error needs at least two"), metavar="N",
                   default=1000, help="fresh samples for the final report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _device_option(p)
    p.set_defaults(fn=_distill)

    p = sub.add_parser("tour", help="the whole course in one run: base model, reward model, RLHF, DPO, GDC, f-DPG",
                       formatter_class=_fmt())
    p.add_argument("--out", type=A.output_dir, default="runs/tour", metavar="DIR", help="folder for report.md and its plots")
    p.add_argument("--pretrain", action="store_true", help="pretrain the base model instead of loading the committed one")
    p.add_argument("--quick", action="store_true", help="a few steps only (a smoke test)")
    _device_option(p)
    p.set_defaults(fn=_tour)

    _course_parser(sub)
    return parser


# ------------------------------------------------------------------------------------------- minialign course
def _course_list(args):
    from .course import assignments

    for a in assignments().values():
        qpoints = sum(q.points for q in a.questions)
        print(f"{a.name:<18} {a.title}  ({a.points:g} points in {len(a.tasks)} tasks, {qpoints:g} in "
              f"{len(a.questions)} written questions, about {a.hours:g} h)")
        for t in a.tasks:
            print(f"    {t.id:<5} {t.points:>4g} pts  {t.marker:<8}  {t.title}")
    return 0


def _course_make(args):
    import time

    from .course import HANDOUT, load, make, split_spec

    t0 = time.perf_counter()
    a = load(args.name)
    tree = make(args.name, args.out)
    print(f"{tree}: the student repository of {a.name} ({len(a.units())} units stubbed in "
          f"{len({split_spec(u)[0] for u, _ in a.units()})} files), handout {HANDOUT} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


def _course_grade(args):
    import json
    from pathlib import Path

    from .course import grade

    if args.json:
        target = Path(args.json)
        if target.is_dir() or not target.parent.is_dir():
            raise ValueError(f"--json {args.json}: expected a file in an existing folder"
                             + (" (it is a folder)" if target.is_dir() else f" ({target.parent} is not a folder)"))
    g = grade(Path(args.dir), args.assignment, args.extra_tests, timeout=args.timeout)
    print(g.table())
    print(f"graded in {g.seconds:.1f} s; taken from the student: {', '.join(g.student_files)}; "
          f"minialign from {g.modules.get('minialign')}, minialign.kernels from {g.modules.get('minialign.kernels')}")
    if args.json:
        Path(args.json).write_text(json.dumps(g.gradescope(), indent=1, ensure_ascii=False), encoding="utf-8")
        print(f"results: {args.json}")
    return 0


def _course_restore(args):
    from .course import assignment_of, restore

    name = args.assignment or assignment_of(args.dir)
    restore(args.dir, name)
    print(f"{args.dir}: the solution of {name} is back in place of every stub")
    return 0


def _course_check(args):
    from .course.check import check

    problems = check(args.names or None, mutants=args.mutants, all_units=args.all, accept_shrink=args.accept_shrink)
    for p in problems:
        print(f"problem: {p}")
    print("release check passed" if not problems else f"release check failed: {len(problems)} problems")
    return 0 if not problems else 1


def _course_handouts(args):
    from .course import HANDOUTS, ROOT, assignments, handout

    for a in assignments().values():
        path = ROOT / HANDOUTS / f"{a.name}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(handout(a), encoding="utf-8")
        print(path.relative_to(ROOT))
    return 0


def _course_parser(sub):
    """``minialign course``: list, make, grade, restore, check (and handouts, for maintainers)."""
    from .course import DEFAULT_TIMEOUT, HANDOUTS

    p = sub.add_parser("course", help="course assignments: list, make a student repository, grade, release check")
    actions = p.add_subparsers(dest="course_command", required=True, metavar="ACTION")
    c = actions.add_parser("list", help="the assignments, their tasks and points", formatter_class=_fmt())
    c.set_defaults(fn=_course_list)
    c = actions.add_parser("make", help="write a student repository (units stubbed) with its handout",
                           formatter_class=_fmt())
    c.add_argument("name", help="an assignment, e.g. 05-rlhf (see `minialign course list`)")
    c.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    c.set_defaults(fn=_course_make)
    c = actions.add_parser("grade", help="grade a student repository with this repository's tests", formatter_class=_fmt())
    c.add_argument("dir", help="the student's repository")
    c.add_argument("--assignment", default=None, help="the assignment (default: read from the tree's handout)")
    c.add_argument("--extra-tests", default=None, metavar="PATH", help="hidden tests: a test_*.py file or a folder of them")
    c.add_argument("--json", default=None, metavar="PATH", help="write Gradescope's results.json here")
    c.add_argument("--timeout", type=A.positive_float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="seconds the tests may run")
    c.set_defaults(fn=_course_grade)
    c = actions.add_parser("restore", help="put the solution back into an untouched student repository",
                           formatter_class=_fmt())
    c.add_argument("dir", help="a student repository made by `make`, its stubs untouched")
    c.add_argument("--assignment", default=None, help="the assignment (default: read from the tree's handout)")
    c.set_defaults(fn=_course_restore)
    c = actions.add_parser("check", help="the release check of the manifests (a few minutes)", formatter_class=_fmt())
    c.add_argument("names", nargs="*", help="assignments to check (default: all)")
    c.add_argument("--mutants", action="store_true",
                   help="run the mutation pass (course/mutate.py) on the units whose record is stale and rewrite "
                        "course/mutants.json (seconds per mutant); without it the committed record is checked")
    c.add_argument("--all", action="store_true", help="with --mutants: every unit, stale or not")
    c.add_argument("--accept-shrink", action="store_true",
                   help="with --mutants: accept units that shrank below their recorded size (on purpose)")
    c.set_defaults(fn=_course_check)
    c = actions.add_parser("handouts", help=f"regenerate {HANDOUTS}/*.md from the manifests", formatter_class=_fmt())
    c.set_defaults(fn=_course_handouts)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """A library warning on the command line: one plain line, without the warning machinery's file and line."""
    print(f"minialign: warning: {message}", file=sys.stderr if file is None else file)


def main(argv=None):
    with warnings.catch_warnings():
        warnings.simplefilter("once")  # a warning is shown once per run, however often it is raised
        warnings.showwarning = _one_line_warning
        return _main(argv)


def _main(argv):
    args = build_parser().parse_args(argv)
    from threadpoolctl import threadpool_limits

    from .backend import tune_allocator
    from .loop import Interrupted

    threadpool_limits(limits=args.threads, user_api="blas")
    tune_allocator()
    command = " ".join(filter(None, (args.command, getattr(args, "method", None))))
    try:
        return args.fn(args)
    except Interrupted as e:
        print(f"minialign {command}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"minialign {command}: interrupted before training started; nothing was saved", file=sys.stderr)
        return 130
    except MemoryError as e:
        print(f"minialign {command}: error: out of memory ({e or 'an allocation failed'}); use smaller sizes "
              "(--batch-size, the model's, or the number of samples)", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, FloatingPointError) as e:
        print(f"minialign {command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
