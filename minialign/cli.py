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
    from .tasks import BASE_CHECKPOINT

    path = Path(args.checkpoint) if args.checkpoint else BASE_CHECKPOINT
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


def _train_config(args):
    from .trainers.common import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       checkpoint_every=args.checkpoint_every)


def _summary(name, history, keys):
    last = {k: history[k][-1] for k in keys if k in history}
    print(f"{name}: " + "  ".join(f"{k} {v:.4g}" for k, v in last.items()))


def _align(args):
    from . import tasks
    from .ebm import fit_names_ebm, parse_constraint
    from .rewards import annotator_ceiling, evaluate_pairs, fit_reward_model, load_pairs, simulate_preferences, true_reward

    base = tasks.load_base(args.base)
    cfg = _train_config(args)
    out = args.out or f"runs/{args.method}.npz"
    print("base samples:", ", ".join(tasks.samples(base, 12, args.seed)))
    if args.method in ("rlhf", "dpo") or (args.method == "fdpg" and args.target == "reward"):
        if args.beta <= 0:
            raise ValueError(f"--beta must be positive; got {args.beta}")
        pairs = load_pairs(args.pairs, base.config.block_size) if args.pairs else simulate_preferences(base, args.n_pairs, seed=args.seed)
        reward = true_reward
        if args.reward == "model" or args.method == "dpo":
            train_pairs, val_pairs = pairs.split(max(len(pairs) // 4, 1))
            if args.method != "dpo":
                rm, _ = fit_reward_model(train_pairs, val_pairs, seed=args.seed, progress=not args.quiet)
                _, acc = evaluate_pairs(rm, val_pairs)
                ceiling = annotator_ceiling(val_pairs)
                print(f"reward model: held-out pair accuracy {acc:.3f} (annotator ceiling: expected {ceiling.expected:.3f}, "
                      f"realised {ceiling.realised:.3f})")
                rm.normalise(base, seed=args.seed)
                reward = rm.score
    if args.method == "rlhf":
        policy, hist = tasks.run_rlhf(reward, beta=args.beta, kl=args.kl, algo=args.algo, kl_target=args.kl_target,
                                      cfg=cfg, base=base, out=out, progress=not args.quiet)
        _summary("rlhf", hist, ["reward", "kl_k1", "kl_k3", "entropy_est", "distinct_2", "in_corpus"])
    elif args.method == "dpo":
        policy, hist = tasks.run_dpo(train_pairs, beta=args.beta, cfg=cfg, base=base, out=out, progress=not args.quiet)
        _summary("dpo", hist, ["loss", "pair_accuracy", "margin"])
    else:
        if args.method == "gdc" or args.target == "constraints":
            if not args.constraint:
                raise ValueError("give at least one --constraint, e.g. --constraint female=0.5 or --constraint contains:z")
            ebm, report = fit_names_ebm(base, [parse_constraint(c) for c in args.constraint], n_samples=args.ebm_samples,
                                        seed=args.seed)
            print(report)
            target, reward = tasks.ebm_target(ebm), None
        else:
            ebm, target = None, tasks.tilted_target(reward, args.beta)
        if args.method == "gdc":
            policy, hist = tasks.run_gdc(ebm, proposal=args.proposal, baseline=args.baseline, calibrate=args.calibrate,
                                         cfg=cfg, base=base, out=out, progress=not args.quiet)
            _report_constraints(ebm, policy, hist, args, cfg, base)
        else:
            policy, hist = tasks.run_fdpg(args.f, target, ebm=ebm, reward=reward, proposal=args.proposal, cfg=cfg,
                                          base=base, out=out, progress=not args.quiet)
        keys = [k for k in hist if k.startswith("E[")] + ["satisfied", "reward_est", "kl_p_pi_est", "kl_pi_a_est",
                                                             "self_bleu", "distinct_2", "in_corpus"]
        _summary(args.method, hist, keys)
    print(f"checkpoint: {out}")
    print("aligned samples:", ", ".join(tasks.samples(policy, 12, args.seed)))
    return 0


def _report_constraints(ebm, policy, hist, args, cfg, base):
    """Each feature's moment on fresh samples with its binomial tolerance, and KL(π‖a) on the same samples;
    with --compare-reinforce, the same for REINFORCE on the first feature, stopped when it reaches GDC's moment."""
    import numpy as np

    from . import tasks

    names, kl, se = tasks.fresh_samples(policy, base, args.eval_samples, args.seed + 1)
    tol = 2 * np.sqrt(0.25 / len(names))  # two binomial standard errors at the worst case, E[φ] = 1/2
    missed = False
    for i, (f, mu) in enumerate(zip(ebm.features, ebm.mu_bar if ebm.mu_bar is not None else [None] * ebm.k)):
        value = float(np.mean(f(names)))
        met = mu is None or abs(value - mu) <= tol
        missed |= not met
        verdict = "" if mu is None else f" (target {mu:.3f} ± {tol:.3f}, two binomial standard errors: " \
            f"{'met' if met else 'not met'})"
        lam = f"; final λ {hist[f'lambda_{i}'][-1]:.3f}" if f"lambda_{i}" in hist else ""
        print(f"E_π[{f.name}] on {len(names)} fresh samples: {value:.3f}{verdict}{lam}")
    for c in ebm.pointwise:
        print(f"pointwise {c.name}: satisfied by {float(np.mean(c(names))):.3f} of fresh samples")
    print(f"KL(π‖a) on the same samples: {kl:.3f} ± {se:.3f}")
    if missed and args.calibrate is None:
        print("the policy stops where it is closest to p, which here misses μ̄; --calibrate 0.1 moves λ until the "
              "policy itself meets it (chapter 06)")
    elif missed:
        print("λ has to travel before the policy can follow it; train longer (chapter 06 §7 uses --baseline "
              "--steps 250 --batch-size 128 --lr 5e-4)")
    if args.compare_reinforce and ebm.k:
        f = ebm.features[0]
        reached = float(np.mean(f(names)))  # compare at the satisfaction GDC reached
        _, rein, (_, rein_value, rein_kl, rein_se) = tasks.compare_reinforce(
            f, reached, base, n_eval=args.eval_samples, seed=args.seed, batch_size=cfg.batch_size,
            progress=not args.quiet)
        if len(rein["loss"]) < tasks.COMPARE_STEPS:
            print(f"REINFORCE with {f.name} as the reward (lr 1e-4), stopped after {len(rein['loss'])} steps when "
                  f"{args.eval_samples} fresh samples reached E[{f.name}] = {reached:.3f}: {rein_value:.3f} on new samples")
        else:
            print(f"REINFORCE with {f.name} as the reward (lr 1e-4) did not reach E[{f.name}] = {reached:.3f} in "
                  f"{tasks.COMPARE_STEPS} steps: {rein_value:.3f} on fresh samples; the comparison is not at equal fraction")
        print(f"KL(π‖a): GDC {kl:.3f} ± {se:.3f} | REINFORCE {rein_kl:.3f} ± {rein_se:.3f}; distinct-2 "
              f"{hist['distinct_2'][-1]:.3f} | {rein['distinct_2'][-1]:.3f}")


def _tour(args):
    from .tour import run_tour

    return run_tour(out=args.out, quick=args.quick, pretrain=args.pretrain)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="minialign", description="Aligning language models, from scratch.")
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS threads (default 1: the model's matrices are small, and extra threads on a busy "
                             "machine slow every product down)")
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
    p.add_argument("--checkpoint", default=None, help="a GPT checkpoint (default: the committed base model)")
    p.add_argument("-n", type=int, default=20)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_sample)

    p = sub.add_parser("align", help="align the base model: rlhf, dpo, gdc or fdpg")
    p.add_argument("method", choices=["rlhf", "dpo", "gdc", "fdpg"])
    p.add_argument("--base", default=None, help="base checkpoint (default: the committed one)")
    p.add_argument("--out", default=None, help="checkpoint path (.npz; default runs/METHOD.npz); resumes if it exists")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=25)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("rewards (rlhf, dpo, fdpg --target reward)")
    g.add_argument("--reward", choices=["true", "model"], default="model",
                   help="the hidden true reward, or a reward model fitted to simulated preferences")
    g.add_argument("--pairs", default=None, help="a preferences CSV (chosen,rejected); default: simulate them")
    g.add_argument("--n-pairs", type=int, default=3000)
    g.add_argument("--beta", type=float, default=0.1, help="KL coefficient (rlhf, dpo) or target temperature")
    g.add_argument("--kl", choices=["k1_seq", "k1_token", "k2_loss", "k3_loss"], default="k1_seq")
    g.add_argument("--algo", choices=["rloo", "ppo", "reinforce"], default="rloo")
    g.add_argument("--kl-target", type=float, default=None, help="adaptive β (Ziegler et al.) towards this KL")
    g = p.add_argument_group("constraints (gdc, fdpg --target constraints)")
    g.add_argument("--constraint", action="append", default=[], help="e.g. female=0.5, contains:z (repeatable)")
    g.add_argument("--ebm-samples", type=int, default=20000, help="samples of a for fitting λ")
    g.add_argument("--proposal", choices=["adaptive", "fixed", "policy"], default=None)
    g.add_argument("--baseline", action="store_true", help="GDC++ baseline")
    g.add_argument("--calibrate", type=float, default=None, metavar="RATE",
                   help="move λ by dual ascent on the policy's own moments at this rate (e.g. 0.1), so that π, not "
                        "only the target p, meets the distributional constraints (chapter 06)")
    g.add_argument("--eval-samples", type=int, default=1000, help="fresh samples for the final moments")
    g.add_argument("--compare-reinforce", action="store_true",
                   help="also run REINFORCE with the first feature as reward, to the same moment, and print both KLs")
    g = p.add_argument_group("f-DPG")
    g.add_argument("--f", default="js", help="kl, reverse_kl, js, tv, hellinger, chi2 or alpha:<value>")
    g.add_argument("--target", choices=["reward", "constraints"], default="constraints")
    p.set_defaults(fn=_align)

    p = sub.add_parser("tour", help="the whole course in one run: base model, reward model, RLHF, DPO, GDC, f-DPG")
    p.add_argument("--out", default="runs/tour")
    p.add_argument("--pretrain", action="store_true", help="pretrain the base model instead of loading the committed one")
    p.add_argument("--quick", action="store_true", help="a few steps only (a smoke test)")
    p.set_defaults(fn=_tour)

    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    from .backend import tune_allocator

    threadpool_limits(limits=args.threads, user_api="blas")
    tune_allocator()
    if args.command == "align" and args.calibrate is not None and args.method != "gdc":
        parser.error("--calibrate applies to gdc only")
    if args.command == "align" and args.proposal is None:
        args.proposal = "adaptive" if args.method == "gdc" else "policy"
    try:
        return args.fn(args)
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as e:
        print(f"minialign {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
