"""The ``minialign`` command line: it parses, calls the library and prints; no math lives here."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_CHECKPOINT = "runs/base.npz"


def _pretrain(args):
    from .gpt import GPTConfig
    from .pretrain import PretrainConfig, bigram_baseline, pretrain

    model_cfg = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                          block_size=args.block_size, dropout=args.dropout)
    cfg = PretrainConfig(model=model_cfg, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         eval_every=args.eval_every, seed=args.seed)
    t0 = time.perf_counter()
    model, history = pretrain(cfg, out=args.out, progress=not args.quiet)
    bigram = bigram_baseline(model_cfg.block_size, seed=args.seed)
    print(f"pretrained in {time.perf_counter() - t0:.1f} s -> {args.out}")
    print(f"validation loss  GPT {history['val_loss'][-1]:.4f}  |  bigram (counts) {bigram:.4f}  nats/token")
    _print_samples(model, args.samples, args.seed, 1.0, None)
    return 0


def _sample(args):
    from .gpt import GPT

    path = Path(args.checkpoint)
    if not path.exists():
        print(f"no checkpoint at {path}; train one with `minialign pretrain --out {path}`", file=sys.stderr)
        return 2
    _print_samples(GPT.load(path), args.n, args.seed, args.temperature, args.top_k)
    return 0


def _print_samples(model, n, seed, temperature, top_k):
    from .data import CharTokenizer

    tok = CharTokenizer()
    ids, logp = model.generate(n, rng=seed, temperature=temperature, top_k=top_k)
    print(f"{n} samples (temperature {temperature}, top-k {top_k}):")
    for name, lp in zip(tok.decode_batch(ids), logp):
        print(f"  {name or '(empty)':<16s} log π = {lp:7.3f}")


def _tour(args):
    from .tour import run_tour

    return run_tour(out=args.out, quick=args.quick)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="minialign", description="Aligning language models, from scratch.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train the GPT on the census names")
    p.add_argument("--out", default=DEFAULT_CHECKPOINT, help="checkpoint path (.npz); resumes if it exists")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=64)
    p.add_argument("--block-size", type=int, default=12)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=_pretrain)

    p = sub.add_parser("sample", help="sample names from a checkpoint")
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    p.add_argument("-n", type=int, default=20)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_sample)

    p = sub.add_parser("tour", help="the whole course in one run: pretrain, then sample")
    p.add_argument("--out", default="runs/tour")
    p.add_argument("--quick", action="store_true", help="a few steps only (for tests)")
    p.set_defaults(fn=_tour)

    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"minialign {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
