"""The ``minialign`` command line: it parses, calls the library and prints; no math lives here.

Every option is checked when it is parsed (a bad value is an argument error naming the flag, before any
work starts); the methods of ``align`` and their options come from the method table (``methods.py``).
"""
from __future__ import annotations

import argparse
import sys
import warnings

from . import argtypes as A
from . import methods as M

DEFAULT_CHECKPOINT = "runs/base.npz"


def _backend(args):
    """The backend ``--device`` names, checked before any work (a clear error naming the flag otherwise)."""
    from .device import backend_for

    return backend_for(args.device)


def _claim(out):
    """Before any work: no other run writes ``--out`` (its lock is held until this process ends), and a file can be
    made beside it; an error names the flag and the user's path."""
    from .lock import Locked, acquire

    try:
        acquire(out)
    except Locked:
        raise
    except OSError as e:
        raise ValueError(f"argument --out: {e}") from None


def _budget(args, what, seconds, memory, lower):
    A.check_budget(what, seconds, memory, lower, i_know=args.i_know)


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
    _budget(args, f"pretraining {size:,} parameters for {args.steps:,} steps of {args.batch_size:,} names",
            (A.gpt_flops(model_cfg, args.steps * args.batch_size, 6) + A.gpt_flops(model_cfg, args.samples, 2))
            / A.ENGINE_FLOPS, max(A.train_bytes(model_cfg, args.batch_size), A.generation_bytes(model_cfg, 4096)),
            "--steps, --batch-size, --n-layer or --n-embd")
    _claim(args.out)
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
    _budget(args, f"sampling {args.n:,} names", A.gpt_flops(model.config, args.n, 2) / A.ENGINE_FLOPS,
            A.generation_bytes(model.config, min(args.n, SAMPLE_CHUNK)), "-n")
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
    print(f"{n} samples (temperature {temperature}, " + (f"top-k {top_k}):" if top_k else "every token):"))
    for start in range(0, n, SAMPLE_CHUNK):
        ids, logp = model.generate(min(SAMPLE_CHUNK, n - start), rng=rng, temperature=temperature, top_k=top_k)
        for name, lp in zip(tok.decode_batch(ids), logp):
            print(f"  {name or '(empty)':<16s} log π = {lp:7.3f}")


def _align(args):
    from . import tasks
    from .ingredients import prepare
    from .io import fingerprint
    from .loop import check_resumable
    from .trainers.common import RunContext, TrainConfig

    spec = M.METHODS[args.method]
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
    _claim_inputs(out, base=base_path, pairs=opts.get("pairs"))
    base = tasks.load_base(base_path, backend=backend)
    _align_budget(args, spec, opts, base.config)
    _claim(out)
    done = check_resumable(out, {"kind": "align", "base": fingerprint(base), **spec.identity(opts), **cfg.identity()},
                           args.fresh)  # before any work: a damaged checkpoint or another run's is refused now
    if done is not None and done >= args.steps:  # said before the reward model or the EBM is made again
        print(f"{out}: this run is already complete ({done} of {args.steps} steps); nothing to do (more --steps "
              "continues it, --fresh starts it again)")
        print(f"checkpoint: {out}")
        print("aligned samples:", ", ".join(tasks.samples(tasks.load_base(out, backend=backend), 12, args.seed)))
        return 0
    print("base samples:", ", ".join(tasks.samples(base, 12, args.seed)))
    ingredients = prepare(spec, opts, base, args.seed, progress=not args.quiet)
    ctx = RunContext(cfg, base, out, fresh=args.fresh, progress=not args.quiet,
                     identity={**spec.identity(opts), **ingredients.identity}, backend=backend)
    result = spec.run(ingredients, opts, ctx)
    for line in result.report:
        print(line)
    print(f"checkpoint: {out}")
    print("aligned samples:", ", ".join(tasks.samples(result.policy, 12, args.seed)))
    return 0


def _claim_inputs(out, **inputs):
    """``--out`` is none of the run's inputs (checked before they are read)."""
    from pathlib import Path

    why = {"teacher": "it is the teacher, and the student would be written over it",
           "base": "a run must not overwrite its own base model"}
    for flag, path in inputs.items():
        if path is not None and Path(out).resolve() == Path(path).resolve():
            raise ValueError(f"--out {out} is the --{flag} file: {why.get(flag, 'an input of this run')}; choose "
                             "another --out")


def _align_budget(args, spec, opts, base_cfg):
    """Time and memory of an alignment run, estimated before any work: its ingredients (simulated pairs, the
    reward model's data, the EBM's samples), its steps (sampling, the reference, the policy's forward and
    backward ``--epochs`` times) and the final fresh samples."""
    epochs = opts.get("epochs") or 1
    b, steps = args.batch_size, args.steps
    ops = A.gpt_flops(base_cfg, steps * b, 2 + 2 + 6 * epochs)  # sample, reference, train
    peak = 2 * A.train_bytes(base_cfg, b)
    lower = ["--steps", "--batch-size"] + (["--epochs"] if "epochs" in opts else [])
    for flag, dest, passes in (("--n-pairs", "n_pairs", 4), ("--ebm-samples", "ebm_samples", 2),
                               ("--eval-samples", "eval_samples", 4)):
        n = opts.get(dest)
        if n is not None:
            ops += A.gpt_flops(base_cfg, n, passes)
            peak = max(peak, A.generation_bytes(base_cfg, n))
            lower.append(flag)
    _budget(args, f"align {spec.name} ({steps:,} step{'s' * (steps > 1)} of {b:,} samples"
            + (f", {epochs:,} epochs each" if epochs > 1 else "") + ")", ops / A.ENGINE_FLOPS, peak,
            ", ".join(lower[:-1]) + " or " + lower[-1])


def _distill(args):
    from . import tasks
    from .gpt import GPTConfig
    from .trainers.common import RunContext, TrainConfig
    from .trainers.distill import STUDENT_SIZE

    _claim_inputs(args.out, teacher=args.teacher)
    backend = _backend(args)
    teacher = tasks.load_base(args.teacher, backend=backend)
    t = teacher.config
    size = {**STUDENT_SIZE, **args.student_config}
    if size["n_embd"] % size["n_head"]:
        raise ValueError(f"argument --student-config: n_embd ({size['n_embd']}) must be a multiple of n_head "
                         f"({size['n_head']})")
    student = GPTConfig(**size, vocab_size=t.vocab_size, block_size=t.block_size)
    params = A.gpt_parameters(student.n_layer, student.n_embd, student.block_size, student.vocab_size)
    if params > A.PARAMETER_LIMIT:
        raise ValueError(f"argument --student-config: {','.join(f'{k}={v}' for k, v in size.items())} makes a student "
                         f"of {params:,} parameters; this engine trains at most {A.PARAMETER_LIMIT:,} (lower n_layer "
                         "or n_embd)")
    ops = A.gpt_flops(t, args.steps * args.batch_size, 4) + A.gpt_flops(student, args.steps * args.batch_size, 8) \
        + A.gpt_flops(t, args.eval_samples, 6) + A.gpt_flops(student, args.eval_samples, 6)
    peak = max(A.train_bytes(student, args.batch_size) + A.generation_bytes(t, args.batch_size),
               A.generation_bytes(t, args.eval_samples) + A.generation_bytes(student, args.eval_samples))
    _budget(args, f"distill ({params:,} student parameters, {args.steps:,} steps of {args.batch_size:,} samples, "
            f"{args.eval_samples:,} fresh samples)", ops / A.ENGINE_FLOPS, peak,
            "--steps, --batch-size, --eval-samples or --student-config")
    _claim(args.out)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      checkpoint_every=args.checkpoint_every)
    print("teacher samples:", ", ".join(tasks.samples(teacher, 12, args.seed)))
    ctx = RunContext(cfg, out=args.out, fresh=args.fresh, progress=not args.quiet,
                     identity={"teacher_path": str(args.teacher)}, backend=backend)
    student, _ = tasks.run_distill(teacher, ctx, student_config=args.student_config, f=args.f, samples=args.samples)
    for line in tasks.distill_report(student, teacher, args.f, n=args.eval_samples, seed=args.seed):
        print(line)
    print(f"checkpoint: {args.out}")
    print("student samples:", ", ".join(tasks.samples(student, 12, args.seed)))
    return 0


def _tour(args):
    from pathlib import Path

    from .tour import run_tour

    backend = _backend(args)
    _claim(Path(args.out) / "tour")  # one tour at a time in a folder: the lock is DIR/tour.lock
    return run_tour(out=args.out, quick=args.quick, pretrain=args.pretrain, backend=backend)


def _device_option(parser):
    from .device import DEVICES

    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="cpu: the NumPy engine; cuda: the torch backend with the Triton kernels on a CUDA GPU "
                             "(needs torch and triton)")


class _Help(argparse.HelpFormatter):
    """One style for every option's line: its default last, written "(default: X)" — taken from the help where the
    help says it in words, from the option otherwise."""

    def _get_help_string(self, action):
        return A.with_default(action.help or "", action.default)


def _metavar(kwargs: dict) -> dict:
    """A placeholder in the house style for an option without one: N for whole numbers, X for other numbers."""
    if "choices" in kwargs or kwargs.get("action") in ("store_true", "store_false"):
        return kwargs
    kind = kwargs.get("type")
    if getattr(kind, "__name__", "") == "whole number":
        return {**kwargs, "metavar": "N"}
    if kind in (A.positive_float, A.clip_range, A.unit_interval, A.learning_rate):
        return {**kwargs, "metavar": "X"}
    return kwargs


def _describe(parser) -> None:
    """Every command's --help opens with a description (its one-line help where it has none) in the one style, and
    no command takes an abbreviated flag (``--group 4`` is not silently ``--group-size 4``)."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                said = helps.get(name) or ""
                sub.description = sub.description or said[:1].upper() + said[1:] + ("." if said else "")
                if sub.formatter_class is argparse.HelpFormatter:
                    sub.formatter_class = _fmt()
                _describe(sub)


def _fmt():
    return lambda prog: _Help(prog, max_help_position=34, width=110)


def _i_know(p):
    p.add_argument(A.I_KNOW, action="store_true",
                   help="run even when the estimate says it would not fit in memory or would take more than "
                        f"{A.TIME_LIMIT / 3600:g} h")


def _run_options(p, out, out_help, steps, batch, batch_help, lr, lr_help, seed_help):
    """The options every training command shares: where its checkpoint goes, its optimiser's knobs, and
    ``--i-know`` (past the budget check)."""
    p.add_argument("--out", type=A.output_file(".npz"), default=out, metavar="PATH", help=out_help)
    p.add_argument("--fresh", action="store_true", help="start afresh, overwriting a checkpoint at --out")
    p.add_argument("--steps", type=A.positive_int, metavar="N", default=steps, help="optimizer steps")
    p.add_argument("--batch-size", type=A.count(1, M.BATCH_LIMIT), metavar="N", default=batch, help=batch_help)
    p.add_argument("--lr", type=A.learning_rate, metavar="X", default=lr, help=lr_help)
    p.add_argument("--seed", type=A.seed, metavar="N", default=0, help=seed_help)
    _i_know(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minialign", description="Aligning language models, from scratch.",
                                     formatter_class=_fmt())
    parser.add_argument("--threads", type=A.positive_int, metavar="N", default=1,
                        help="BLAS threads (1: the model's matrices are small, and extra threads on a busy machine "
                             "slow every product down)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("pretrain", help="train the GPT on the census names", formatter_class=_fmt())
    _run_options(p, DEFAULT_CHECKPOINT, "checkpoint path (.npz); an existing run there is resumed", 1500, 64,
                 "names per step", 3e-3, "peak learning rate of the cosine schedule", "seed of the weights and batches")
    p.add_argument("--eval-every", type=A.positive_int, metavar="N", default=250,
                   help="steps between validation and checkpoint")
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
    p.add_argument("--top-k", type=A.positive_int, metavar="N", default=None,
                   help="sample among the k likeliest tokens only (default: every token)")
    p.add_argument("--seed", type=A.seed, metavar="N", default=0, help="sampling seed")
    _i_know(p)
    p.set_defaults(fn=_sample)

    p = sub.add_parser("align", help="align the base model: " + ", ".join(M.METHODS))
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD")
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("run")
    g.add_argument("--base", type=A.input_file(".npz"), default=None, metavar="PATH",
                   help="base checkpoint (default: the committed one)")
    _run_options(g, None, "checkpoint path (default: runs/METHOD.npz); an existing run there is resumed",
                 M.TRAIN_DEFAULTS["steps"], M.TRAIN_DEFAULTS["batch_size"], "samples (or pairs) per step",
                 M.TRAIN_DEFAULTS["lr"], "AdamW learning rate", "seed of every sample drawn")
    g.add_argument("--checkpoint-every", type=A.positive_int, metavar="N", default=25, help="steps between checkpoints")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    _device_option(g)
    for spec in M.METHODS.values():
        m = methods.add_parser(spec.name, help=spec.help, description=spec.help, parents=[common],
                               formatter_class=_fmt())
        g = m.add_argument_group(spec.name)
        for o in spec.options:
            g.add_argument(o.flag, **_metavar(o.kwargs))
        m.set_defaults(fn=_align)

    from .trainers.distill import STUDENT_SIZE

    p = sub.add_parser("distill", help="fit a smaller student to a teacher's next-token distributions, for any f",
                       description="Token-level f-divergence distillation (chapter 07, §9): minimise "
                                   "Σ_t D_f(π_t‖p_t) over the vocabulary at every position of the teacher's (or the "
                                   "student's own) samples.", formatter_class=_fmt())
    p.add_argument("--teacher", type=A.input_file(".npz"), required=True, metavar="PATH",
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
    p.add_argument("--out", type=A.output_dir, default="runs/tour", metavar="DIR",
                   help="folder for report.md and its plots")
    p.add_argument("--pretrain", action="store_true",
                   help="pretrain the base model instead of loading the committed one")
    p.add_argument("--quick", action="store_true", help="a few steps only (a smoke test)")
    _device_option(p)
    p.set_defaults(fn=_tour)

    _course_parser(sub)
    _describe(parser)
    return parser


# ------------------------------------------------------------------------------------------- minialign course
def _course_list(args):
    from .course import assignments

    for a in assignments().values():
        qpoints = sum(q.points for q in a.questions)
        epoints = sum(e.points for e in a.experiments)
        print(f"{a.name:<18} {a.title}  ({a.points:g} points in {len(a.tasks)} tasks, {qpoints:g} in "
              f"{len(a.questions)} written questions, {epoints:g} in {len(a.experiments)} experiment"
              f"{'s' if len(a.experiments) != 1 else ''}, about {a.hours:g} h)")
        for t in a.tasks:
            print(f"    {t.id:<5} {t.points:>4g} pts  {t.marker:<8}  {t.title}")
        for e in a.experiments:
            print(f"    {e.id:<5} {e.points:>4g} pts  {'report':<8}  {e.title}")
    return 0


def _course_make(args):
    import time

    from .course import HANDOUT, load, make, split_spec

    t0 = time.perf_counter()
    a = load(args.name)
    if args.stub_earlier and not args.term:
        raise ValueError("--stub-earlier goes with --term (a term tree); without it only this assignment's units "
                         "are stubbed")
    tree = make(args.name, args.out, term=args.term, stub_earlier=args.stub_earlier)
    what = ("a term tree: this and every later assignment stubbed"
            + (", and every earlier one" if args.stub_earlier else "") + "; a git repository with one commit"
            if args.term else
            f"{len(a.units())} units stubbed in {len({split_spec(u)[0] for u, _ in a.units()})} files")
    print(f"{tree}: the student repository of {a.name} ({what}), handout {HANDOUT} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


def _course_grade(args):
    import json
    from pathlib import Path

    from .course import CourseError, grade, load
    from .course.grade import zero_results

    if args.json:
        target = Path(args.json)
        if target.is_dir() or not target.parent.is_dir():
            raise ValueError(f"--json {args.json}: expected a file in an existing folder"
                             + (" (it is a folder)" if target.is_dir() else f" ({target.parent} is not a folder)"))
    try:
        g = grade(Path(args.dir), args.assignment, args.extra_tests, timeout=args.timeout, jobs=args.jobs)
    except CourseError as e:
        if args.json:  # an autograder always gets its results: 0, and why
            points = load(args.assignment).points if args.assignment else None
            Path(args.json).write_text(json.dumps(zero_results(str(e), points), indent=1), encoding="utf-8")
            print(f"results: {args.json} (0: not graded)")
        raise
    print(g.table())
    print(f"graded in {g.seconds:.1f} s; taken from the student: the units' bodies in {', '.join(g.student_files)}; "
          f"minialign from {g.modules.get('minialign')}, minialign.kernels from {g.modules.get('minialign.kernels')}; "
          f"the tests ran as {g.ran_as}")
    if args.json:  # written here, after every process of the grade is gone; the same numbers as the table
        Path(args.json).write_text(json.dumps(g.gradescope(), indent=1, ensure_ascii=False), encoding="utf-8")
        print(f"results: {args.json}")
    return 0


def _course_grade_all(args):
    import threading
    import time
    from pathlib import Path

    from .course import load
    from .course.grade import grade_all, write_class_csv

    a = load(args.assignment)
    if not Path(args.csv).parent.is_dir() or Path(args.csv).is_dir():
        raise ValueError(f"--csv {args.csv}: expected a file in an existing folder"
                         + (" (it is a folder)" if Path(args.csv).is_dir() else ""))
    lock, done = threading.Lock(), []
    t0 = time.perf_counter()

    def progress(row):
        with lock:
            done.append(row)
            score = f"{row.grade.score:g} / {a.points:g}" if row.grade is not None else f"not graded: {row.error}"
            print(f"[{len(done)}] {row.submission}: {score}", flush=True)

    rows = grade_all(Path(args.submissions), a.name, args.jobs, args.extra_tests, timeout=args.timeout,
                     progress=progress)
    write_class_csv(rows, a, Path(args.csv))
    print(f"{len(rows)} submissions of {a.name} graded in {time.perf_counter() - t0:.1f} s with --jobs {args.jobs}; "
          f"grades: {args.csv}")
    return 0


def _course_autograder(args):
    from .course.bundle import autograder

    target = autograder(args.name, args.out, args.extra_tests)
    print(f"{target}: the Gradescope autograder of {args.name} (setup.sh, run_autograder, the instructor's copy"
          + (", hidden tests" if args.extra_tests else "") + "); upload it as the assignment's autograder")
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
    from .course import HANDOUTS, ROOT, assignments, handout, with_exercises, with_marker_rows
    from .course.handout import MAP

    known = assignments()
    for a in known.values():
        path = ROOT / HANDOUTS / f"{a.name}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(handout(a), encoding="utf-8")
        print(path.relative_to(ROOT))
        _rewrite(ROOT / a.chapter, lambda text, a=a: with_exercises(text, a))
    _rewrite(ROOT / MAP, lambda text: with_marker_rows(text, known))
    return 0


def _rewrite(path, edit):
    """Write ``edit(text)`` over the file when it changes it (a chapter's Exercises, the map's marker table)."""
    text = path.read_text(encoding="utf-8")
    new = edit(text)
    if new != text:
        path.write_text(new, encoding="utf-8")
        print(path.relative_to(path.parent.parent))


def _course_parser(sub):
    """``minialign course``: list, make, grade, restore, check (and handouts, for maintainers)."""
    from .course import HANDOUTS, TASK_TIMEOUT

    p = sub.add_parser("course", help="course assignments: list, make a student repository, grade, release check")
    actions = p.add_subparsers(dest="course_command", required=True, metavar="ACTION")
    c = actions.add_parser("list", help="the assignments, their tasks and points", formatter_class=_fmt())
    c.set_defaults(fn=_course_list)
    c = actions.add_parser("make", help="write a student repository (units stubbed) with its handout",
                           formatter_class=_fmt())
    c.add_argument("name", help="an assignment, e.g. 05-rlhf (see `minialign course list`)")
    c.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    c.add_argument("--term", action="store_true",
                   help="the tree of a term: every later assignment stubbed too, no instructor README or CI, "
                        "a fresh git repository")
    c.add_argument("--stub-earlier", action="store_true", help="with --term: stub the earlier assignments too")
    c.set_defaults(fn=_course_make)
    c = actions.add_parser("grade", help="grade a student repository with this repository's tests",
                           formatter_class=_fmt())
    c.add_argument("dir", help="the student's repository")
    c.add_argument("--assignment", default=None, metavar="NAME",
                   help="the assignment (default: read from the tree's handout)")
    c.add_argument("--extra-tests", default=None, metavar="PATH",
                   help="hidden tests: a test_*.py file or a folder of them")
    c.add_argument("--json", default=None, metavar="PATH", help="write Gradescope's results.json here")
    c.add_argument("--timeout", type=A.positive_float, default=TASK_TIMEOUT, metavar="SECONDS",
                   help="seconds each task's tests may run (a task that runs longer fails its unreported tests)")
    c.add_argument("--jobs", type=A.positive_int, default=1, metavar="N", help="tasks graded at the same time")
    c.set_defaults(fn=_course_grade)
    c = actions.add_parser("grade-all", help="grade a class: every submission folder, in parallel, to a CSV",
                           formatter_class=_fmt())
    c.add_argument("submissions", help="a folder holding one folder per student (a repository or loose files)")
    c.add_argument("--assignment", required=True, metavar="NAME", help="the assignment, e.g. 05-rlhf")
    c.add_argument("--jobs", type=A.positive_int, default=1, metavar="N", help="submissions graded at the same time")
    c.add_argument("--csv", required=True, metavar="PATH", help="where the grades go (one row per student)")
    c.add_argument("--extra-tests", default=None, metavar="PATH",
                   help="hidden tests: a test_*.py file or a folder of them")
    c.add_argument("--timeout", type=A.positive_float, default=TASK_TIMEOUT, metavar="SECONDS",
                   help="seconds each task's tests may run")
    c.set_defaults(fn=_course_grade_all)
    c = actions.add_parser("autograder", help="write the Gradescope autograder bundle (a zip) of an assignment",
                           formatter_class=_fmt())
    c.add_argument("name", help="an assignment, e.g. 05-rlhf")
    c.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    c.add_argument("--extra-tests", default=None, metavar="PATH",
                   help="hidden tests: a test_*.py file or a folder of them")
    c.set_defaults(fn=_course_autograder)
    c = actions.add_parser("restore", help="put the solution back into an untouched student repository",
                           formatter_class=_fmt())
    c.add_argument("dir", help="a student repository made by `make`, its stubs untouched")
    c.add_argument("--assignment", default=None, metavar="NAME",
                   help="the assignment (default: read from the tree's handout)")
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
    c = actions.add_parser("handouts", formatter_class=_fmt(),
                           help=f"regenerate {HANDOUTS}/*.md, the chapters' Exercises and the map's task markers "
                                "from the manifests")
    c.set_defaults(fn=_course_handouts)


def _one_line_warnings():
    """How a library warning shows on the command line: one plain line, without the warning machinery's file and
    line, and once per run however often (and from wherever) it is raised."""
    shown = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if str(message) not in shown:
            shown.add(str(message))
            print(f"minialign: warning: {message}", file=sys.stderr if file is None else file)

    return show


def main(argv=None):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("once")  # a warning is shown once per run, however often it is raised
            warnings.showwarning = _one_line_warnings()
            return _main(argv)
    except KeyboardInterrupt:  # a Ctrl-C that lands between the command's own handlers: still status 130
        _ignore_interrupts()
        return 130


def _main(argv):
    args = build_parser().parse_args(argv)
    from threadpoolctl import threadpool_limits

    from .backend import tune_allocator
    from .lock import Locked, release_all
    from .loop import Interrupted

    threadpool_limits(limits=args.threads, user_api="blas")
    tune_allocator()
    command = " ".join(filter(None, (args.command, getattr(args, "method", None))))
    try:
        return args.fn(args)
    except Interrupted as e:
        _ignore_interrupts()
        print(f"minialign {command}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        _ignore_interrupts()
        print(f"minialign {command}: interrupted; any checkpoint at --out is as it was before", file=sys.stderr)
        return 130
    except MemoryError as e:
        print(f"minialign {command}: error: out of memory ({e or 'an allocation failed'}); use smaller sizes "
              "(--batch-size, the model's, or the number of samples)", file=sys.stderr)
        return 2
    except Locked as e:
        print(f"minialign {command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, FloatingPointError) as e:
        print(f"minialign {command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        release_all()


def _ignore_interrupts():
    """After an interrupt, more Ctrl-C only repeat it: the run ends with its message and status 130."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    raise SystemExit(main())
