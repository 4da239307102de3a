"""Benchmarks, printed as ratios against a reference measured in the same run.

``python -m minialign.bench engine``   a GPT training step on our engine vs the same model in torch eager (CPU)
``python -m minialign.bench kernels``  on a CUDA device: (a) the fused log-prob/f-divergence kernels vs torch
                                       eager, torch.compile and Liger-Kernel; (b) the chunked output head vs the
                                       written-out one; (c) flash attention vs SDPA-flash; (d) a GPT training step,
                                       engine + kernels vs the same model in torch eager on the GPU; and, with
                                       ``--only tour``, (e) the names tour's wall time on the GPU vs the CPU.
                                       ``--smoke`` runs every section at tiny sizes (interpreter on the CPU).
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from .gpt import GPT, GPTConfig
from .optim import AdamW


def torch_reference_gpt(model: GPT, device="cpu"):
    """The same GPT written with plain torch ops, holding copies of ``model``'s weights as leaf tensors on
    ``device``.

    Returns (params dict name → torch tensor, forward(idx) → logits). Used by the benchmark and as an
    oracle in the tests.
    """
    import torch

    cfg = model.config
    params = {name: torch.tensor(arr, requires_grad=True, device=device) for name, arr in model.state_dict().items()}

    def ln(x, prefix):
        weight, bias = params[prefix + ".weight"], params[prefix + ".bias"]
        return torch.nn.functional.layer_norm(x, (cfg.n_embd,), weight, bias, 1e-5)

    def lin(x, prefix):
        return x @ params[prefix + ".weight"].T + params[prefix + ".bias"]

    def forward(idx):
        idx = torch.as_tensor(idx, device=device)
        b, t = idx.shape
        x = params["wte.weight"][idx] + params["wpe.weight"][torch.arange(t, device=device)]
        for i in range(cfg.n_layer):
            p = f"h.{i}."
            h = ln(x, p + "ln_1")
            qkv = lin(h, p + "attn.c_attn").reshape(b, t, 3, cfg.n_head, cfg.n_embd // cfg.n_head)
            qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
            q, k, v = qkv[0], qkv[1], qkv[2]
            s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=device).triu(1), float("-inf"))
            y = (torch.softmax(s, -1) @ v).permute(0, 2, 1, 3).reshape(b, t, cfg.n_embd)
            x = x + lin(y, p + "attn.c_proj")
            h = ln(x, p + "ln_2")
            h = torch.nn.functional.gelu(lin(h, p + "mlp.c_fc"), approximate="tanh")
            x = x + lin(h, p + "mlp.c_proj")
        x = ln(x, "ln_f")
        return x @ params["wte.weight"].T

    return params, forward


def _time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def training_steps(model, x, device="cpu", backend=None):
    """One training step (forward, backward, AdamW at lr 1e-3) of ``model`` on rows ``x``, and the same step of the
    same model written in torch eager on ``device``, from the same weights: two closures (ours, theirs). With
    ``backend`` our model runs there (the torch backend with the kernels)."""
    import torch

    params, forward = torch_reference_gpt(model, device=device)
    if backend is not None:
        model.to(backend)
    opt = AdamW(model.parameters(), lr=1e-3)
    topt = torch.optim.AdamW(list(params.values()), lr=1e-3)
    inp, targets, counted = model._shift(x)
    tin = torch.as_tensor(inp, device=device)
    ttarget = torch.as_tensor(np.where(counted, targets, -100), device=device)
    v = model.config.vocab_size

    def ours():
        loss = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def theirs():
        loss = torch.nn.functional.cross_entropy(forward(tin).reshape(-1, v), ttarget.reshape(-1), ignore_index=-100)
        topt.zero_grad()
        loss.backward()
        topt.step()

    return ours, theirs


def bench_engine(batch_size=64, repeats=20, config=None, threads=1):
    """Median seconds per training step (forward, backward, AdamW) for ours and torch eager, same weights,
    both limited to the same number of threads (NumPy's BLAS and torch's intra-op pool)."""
    import torch
    from threadpoolctl import threadpool_limits

    from .backend import tune_allocator

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads, user_api="blas")
    tune_allocator()  # process-wide: it applies to the torch reference measured in the same run too
    cfg = config or GPTConfig()
    ours, theirs = training_steps(GPT(cfg, seed=0), _rows(cfg, batch_size))
    t_ours = _time(ours, repeats)
    t_torch = _time(theirs, repeats)
    return cfg, batch_size, t_ours, t_torch


def _rows(cfg, batch_size, seed=0):
    """Random EOS-terminated rows [batch_size, block_size] (lengths 3 .. block_size)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, cfg.block_size + 1, batch_size)
    x = rng.integers(1, cfg.vocab_size, (batch_size, cfg.block_size))
    x[np.arange(cfg.block_size)[None, :] >= (lengths[:, None] - 1)] = cfg.eos_id
    return x


def bench_gpt_step(run, configs):
    """(d) A training step (forward, backward, AdamW) of our engine with the kernels (the torch backend on
    ``run.device``) against the same model in torch eager on the same device, same weights and batch."""

    from .torch_backend import TorchBackend

    print(f"(d) GPT training step (forward + backward + AdamW) on {run.device}: engine + kernels vs torch eager")
    print(f"    {'model':<34} {'batch':>9} {'engine ms':>10} {'eager ms':>9} {'engine/eager':>13}")
    results = {}
    for name, cfg, batch_size in configs:
        ours, theirs = training_steps(GPT(cfg, seed=0), _rows(cfg, batch_size), run.device, TorchBackend(run.device))
        t_ours, t_torch = run.time(ours), run.time(theirs)
        results[name] = (t_ours, t_torch)
        size = f"{batch_size} x {cfg.block_size}"
        print(f"    {name:<34} {size:>9} {t_ours:10.3f} {t_torch:9.3f} {t_ours / t_torch:13.2f}")
    if run.smoke:
        print("    (smoke: timings mean nothing)")
    return results


def bench_tour(device, threads, smoke):
    """(e) The names tour (full, not --quick) on the NumPy engine and on the GPU path: wall time of each."""
    import contextlib
    import io
    import tempfile

    from .device import backend_for
    from .tour import run_tour

    if smoke or device != "cuda":
        print("(e) tour: skipped (it runs the whole course on both devices; "
              "`python -m minialign.bench kernels --only tour` on a machine with a CUDA device)")
        return None
    walls = {}
    for name, backend in (("cpu (NumPy engine)", None), ("cuda (engine + kernels)", backend_for("cuda"))):
        with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
            t0 = time.perf_counter()
            run_tour(out=out, backend=backend)
            walls[name] = time.perf_counter() - t0
    cpu, gpu = walls.values()
    print(f"(e) names tour, full: cpu ({threads} BLAS thread(s)) {cpu:.1f} s, cuda {gpu:.1f} s: "
          f"cuda/cpu {gpu / cpu:.2f}")
    return walls


GPT_CONFIGS = [("names GPT (4 layers, 64 wide, V 27)", GPTConfig(), 64),
               ("GPT 6 x 512, V 8192, T 256", GPTConfig(vocab_size=8192, block_size=256, n_layer=6, n_head=8,
                                                       n_embd=512), 16)]
SMOKE_GPT = [("tiny GPT (1 layer, 16 wide)", GPTConfig(n_layer=1, n_head=1, n_embd=16), 2)]


def bench_kernels(args):
    """``python -m minialign.bench kernels``: the kernel sections (kernels/benchmark.py), the GPT step and the tour.
    Without a CUDA device (and without ``--smoke``) nothing is measured: None."""
    import sys

    from threadpoolctl import threadpool_limits

    from .kernels import benchmark as kb

    device = kb.device_for(args.smoke)
    if device is None:
        print(f"python -m minialign.bench kernels: error: {kb.NO_DEVICE}", file=sys.stderr)
        return None
    import torch

    threadpool_limits(limits=1, user_api="blas")
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu (Triton interpreter)'}, "
          f"torch {torch.__version__}" + (", smoke sizes" if args.smoke else ""))
    if args.smoke:
        kb.smoke_args(args)
    sections = args.only or ["fdiv", "linear", "attention", "gpt"] + (["tour"] if args.smoke else [])
    out = kb.run_sections(args, device, sections)
    run = kb.Runner(torch, device, args.rep, args.smoke)
    if "gpt" in sections:
        out["gpt"] = bench_gpt_step(run, SMOKE_GPT if args.smoke else GPT_CONFIGS)
    if "tour" in sections:
        out["tour"] = bench_tour(device, 1, args.smoke)
    return out


def build_parser():
    """``python -m minialign.bench engine|kernels``, with the checked value types of the main command line."""
    import os

    from . import argtypes as A
    from .cli import _fmt, _i_know
    from .kernels import benchmark as kb

    parser = argparse.ArgumentParser(prog="python -m minialign.bench", formatter_class=_fmt(),
                                     description="Benchmarks, printed as ratios against a reference measured in the "
                                                 "same run.")
    sub = parser.add_subparsers(dest="what", required=True, metavar="BENCH")
    e = sub.add_parser("engine", formatter_class=_fmt(),
                       help="a GPT training step on our engine vs the same model in torch eager (CPU)",
                       description="A GPT training step (forward, backward, AdamW) of the names model on the NumPy "
                                   "engine vs the same model in torch eager on the CPU, same weights, same threads: "
                                   "the median of --repeats steps of each, and their ratio.")
    e.add_argument("--batch-size", type=A.count(1, 4096), default=64, metavar="N", help="names per step")
    e.add_argument("--repeats", type=A.count(1, 10_000), default=20, metavar="N",
                   help="timed steps of each (the median is printed)")
    e.add_argument("--threads", type=A.count(1, os.cpu_count() or 1, "the cores of this machine"), default=1,
                   metavar="N", help="threads for both NumPy's BLAS and torch")
    _i_know(e)
    k = sub.add_parser("kernels", formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=110),
                       help="the Triton kernels vs torch eager, torch.compile and Liger-Kernel (CUDA; --smoke on the "
                            "CPU)", description=kb.DESCRIPTION)
    kb.add_options(k)
    for p in (parser, e, k):
        p.allow_abbrev = False  # an abbreviated or misspelt flag is refused, never taken for another
    return parser


def main(argv=None):
    import sys

    from . import argtypes as A

    args = build_parser().parse_args(argv)
    if args.what == "kernels":
        return 0 if bench_kernels(args) is not None else 1
    cfg = GPTConfig()
    try:
        A.check_budget(f"bench engine ({args.repeats:,} steps of {args.batch_size:,} names, twice)",
                       A.gpt_flops(cfg, 2 * (args.repeats + 1) * args.batch_size, 6) / A.ENGINE_FLOPS,
                       2 * A.train_bytes(cfg, args.batch_size), "--repeats or --batch-size", args.i_know)
    except A.OverBudget as e:
        print(f"python -m minialign.bench engine: error: {e}", file=sys.stderr)
        return 2
    cfg, b, t_ours, t_torch = bench_engine(args.batch_size, args.repeats, threads=args.threads)
    print(f"GPT training step (forward + backward + AdamW), CPU, {args.threads} thread(s), batch {b} x "
          f"{cfg.block_size} tokens, {cfg.n_layer} layers, {cfg.n_head} heads, n_embd {cfg.n_embd}, "
          f"vocab {cfg.vocab_size}")
    print(f"  minialign engine : {t_ours * 1e3:8.2f} ms/step (median of {args.repeats})")
    print(f"  torch eager      : {t_torch * 1e3:8.2f} ms/step (median of {args.repeats})")
    print(f"  ratio ours/torch : {t_ours / t_torch:8.3f}  (<= 1.0 means at least as fast as torch eager)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
