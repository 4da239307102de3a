"""The ``minialign`` command line: it parses, calls the library and prints; no math lives here.

Every option is checked when it is parsed (a bad value is an argument error naming the flag, before any
work starts); the methods of ``align`` and their options come from the registry (``registry.py``).
"""
from __future__ import annotations

import argparse
import sys

from . import registry as R

DEFAULT_CHECKPOINT = "runs/base.npz"


def _pretrain(args):
    import time

    from .gpt import GPTConfig
    from .pretrain import PretrainConfig, bigram_baseline, pretrain

    if args.n_embd % args.n_head:
        raise ValueError(f"--n-embd ({args.n_embd}) must be divisible by --n-head ({args.n_head})")
    if args.block_size < 12:
        raise ValueError(f"--block-size must be at least 12 (the longest name has 11 letters, and its EOS); "
                         f"got {args.block_size}")
    model_cfg = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                          block_size=args.block_size, dropout=args.dropout)
    cfg = PretrainConfig(model=model_cfg, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         eval_every=args.eval_every, seed=args.seed)
    t0 = time.perf_counter()
    model, history = pretrain(cfg, out=args.out, progress=not args.quiet, fresh=args.fresh)
    bigram = bigram_baseline(model_cfg.block_size, seed=args.seed)
    print(f"pretrained in {time.perf_counter() - t0:.1f} s -> {args.out}")
    print(f"validation loss  GPT {history['val_loss'][-1]:.4f}  |  bigram (counts) {bigram:.4f}  nats/token")
    _print_samples(model, args.samples, args.seed, 1.0, None)
    return 0


def _sample(args):
    from .gpt import GPT
    from .tasks import BASE_CHECKPOINT

    model = GPT.load(args.checkpoint or BASE_CHECKPOINT)
    if args.top_k is not None and args.top_k > model.config.vocab_size:
        raise ValueError(f"--top-k must be at most the vocabulary size ({model.config.vocab_size}); got {args.top_k}")
    _print_samples(model, args.n, args.seed, args.temperature, args.top_k)
    return 0


def _print_samples(model, n, seed, temperature, top_k):
    from .data import CharTokenizer

    if n == 0:
        return
    tok = CharTokenizer()
    ids, logp = model.generate(n, rng=seed, temperature=temperature, top_k=top_k)
    print(f"{n} samples (temperature {temperature}, top-k {top_k}):")
    for name, lp in zip(tok.decode_batch(ids), logp):
        print(f"  {name or '(empty)':<16s} log π = {lp:7.3f}")


def _align(args):
    from . import tasks
    from .trainers.common import TrainConfig

    spec = R.METHODS[args.method]
    opts = {o.dest: getattr(args, o.dest) for o in spec.options}
    if spec.check is not None:
        spec.check(opts)
    out = args.out or R.output_file(".npz")(f"runs/{args.method}.npz")
    base = tasks.load_base(args.base)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      checkpoint_every=args.checkpoint_every)
    print("base samples:", ", ".join(tasks.samples(base, 12, args.seed)))
    ingredients = R.prepare(spec, opts, base, args.seed, progress=not args.quiet)
    result = spec.run(ingredients, opts, cfg, base, out, args.fresh, not args.quiet,
                      {**spec.identity(opts), **ingredients.identity})
    for line in result.report:
        print(line)
    print(f"checkpoint: {out}")
    print("aligned samples:", ", ".join(tasks.samples(result.policy, 12, args.seed)))
    return 0


def _tour(args):
    from .tour import run_tour

    return run_tour(out=args.out, quick=args.quick, pretrain=args.pretrain)


def _fmt():
    return lambda prog: argparse.ArgumentDefaultsHelpFormatter(prog, max_help_position=32, width=110)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minialign", description="Aligning language models, from scratch.")
    parser.add_argument("--threads", type=R.positive_int, default=1,
                        help="BLAS threads (1: the model's matrices are small, and extra threads on a busy machine "
                             "slow every product down)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("pretrain", help="train the GPT on the census names", formatter_class=_fmt())
    p.add_argument("--out", type=R.output_file(".npz"), default=DEFAULT_CHECKPOINT,
                   help="checkpoint path (.npz); an existing run there is resumed")
    p.add_argument("--fresh", action="store_true", help="start afresh, overwriting a checkpoint at --out")
    p.add_argument("--steps", type=R.positive_int, default=1500, help="optimizer steps")
    p.add_argument("--batch-size", type=R.positive_int, default=64, help="names per step")
    p.add_argument("--lr", type=R.positive_float, default=3e-3, help="peak learning rate of the cosine schedule")
    p.add_argument("--eval-every", type=R.positive_int, default=250, help="steps between validation and checkpoint")
    p.add_argument("--n-layer", type=R.positive_int, default=4, help="transformer blocks")
    p.add_argument("--n-head", type=R.positive_int, default=4, help="attention heads")
    p.add_argument("--n-embd", type=R.positive_int, default=64, help="embedding width")
    p.add_argument("--block-size", type=R.positive_int, default=12, help="positions (at least 12 for names)")
    p.add_argument("--dropout", type=R.unit_interval, default=0.1, help="dropout probability")
    p.add_argument("--seed", type=R.nonnegative_int, default=0, help="seed of the weights and batches")
    p.add_argument("--samples", type=R.nonnegative_int, default=20, help="names to print at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=_pretrain)

    p = sub.add_parser("sample", help="sample names from a checkpoint", formatter_class=_fmt())
    p.add_argument("--checkpoint", type=R.input_file(".npz"), default=None,
                   help="a GPT checkpoint (default: the committed base model)")
    p.add_argument("-n", type=R.positive_int, default=20, help="how many names")
    p.add_argument("--temperature", type=R.positive_float, default=1.0, help="softmax temperature")
    p.add_argument("--top-k", type=R.positive_int, default=None, help="sample among the k likeliest tokens only")
    p.add_argument("--seed", type=R.nonnegative_int, default=0, help="sampling seed")
    p.set_defaults(fn=_sample)

    p = sub.add_parser("align", help="align the base model: " + ", ".join(R.METHODS))
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD")
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("run")
    g.add_argument("--base", type=R.input_file(".npz"), default=None, help="base checkpoint (default: the committed one)")
    g.add_argument("--out", type=R.output_file(".npz"), default=None,
                   help="checkpoint path (default: runs/METHOD.npz); an existing run there is resumed")
    g.add_argument("--fresh", action="store_true", help="start afresh, overwriting a checkpoint at --out")
    g.add_argument("--steps", type=R.positive_int, default=R.TRAIN_DEFAULTS["steps"], help="optimizer steps")
    g.add_argument("--batch-size", type=R.positive_int, default=R.TRAIN_DEFAULTS["batch_size"],
                   help="samples (or pairs) per step")
    g.add_argument("--lr", type=R.positive_float, default=R.TRAIN_DEFAULTS["lr"], help="AdamW learning rate")
    g.add_argument("--seed", type=R.nonnegative_int, default=0, help="seed of every sample drawn")
    g.add_argument("--checkpoint-every", type=R.positive_int, default=25, help="steps between checkpoints")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    for spec in R.METHODS.values():
        m = methods.add_parser(spec.name, help=spec.help, description=spec.help, parents=[common],
                               formatter_class=_fmt())
        g = m.add_argument_group(spec.name)
        for o in spec.options:
            g.add_argument(o.flag, **o.kwargs)
        m.set_defaults(fn=_align)

    p = sub.add_parser("tour", help="the whole course in one run: base model, reward model, RLHF, DPO, GDC, f-DPG",
                       formatter_class=_fmt())
    p.add_argument("--out", type=R.output_dir, default="runs/tour", help="folder for report.md and its plots")
    p.add_argument("--pretrain", action="store_true", help="pretrain the base model instead of loading the committed one")
    p.add_argument("--quick", action="store_true", help="a few steps only (a smoke test)")
    p.set_defaults(fn=_tour)

    from .course import add_parser as add_course_parser

    add_course_parser(sub, _fmt)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from threadpoolctl import threadpool_limits

    from .backend import tune_allocator
    from .loop import Interrupted

    threadpool_limits(limits=args.threads, user_api="blas")
    tune_allocator()
    try:
        return args.fn(args)
    except Interrupted as e:
        print(f"minialign {args.command}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"minialign {args.command}: interrupted before training started; nothing was saved", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as e:
        print(f"minialign {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
