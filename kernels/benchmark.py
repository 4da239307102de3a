"""Benchmarks of the Triton kernels against PyTorch, measured in the same run (``python -m minialign.bench kernels``).

(a) fused log-prob + f-divergence, forward and backward, against the same math in torch eager and under
    ``torch.compile``: time ratios, achieved bandwidth as a fraction of a device-to-device copy of the
    same number of bytes, and the peak extra memory of each path.
(b) causal flash attention, forward and backward, against ``scaled_dot_product_attention`` and eager math.

CUDA only: without a CUDA device it prints a message and exits with status 0.
"""
from __future__ import annotations

import argparse
import math

DEVICE = "cuda"
GOALS = {"fused_vs_eager": 3.0, "fused_vs_copy_bandwidth": 0.85, "attention_vs_sdpa": 0.8}


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m minialign.bench kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16 * 1024, help="rows N of the logits (default 16384)")
    parser.add_argument("--vocab", type=int, default=50_257, help="vocabulary V (default 50257)")
    parser.add_argument("--f", default="kl", choices=["kl", "reverse_kl", "js", "tv"])
    parser.add_argument("--seq", type=int, nargs="+", default=[1024, 2048], help="attention lengths T")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--attn-tokens", type=int, default=16 * 1024, help="B*T per attention run")
    parser.add_argument("--rep", type=int, default=100, help="milliseconds of timed repetitions per case")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--only", choices=["logprob", "attention"], default=None)
    return parser.parse_args(argv)


def _bench(fn, rep):
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=rep)


def _peak_extra_bytes(fn, torch):
    """Peak memory allocated while ``fn`` runs, above what was allocated before it (bytes)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return peak


def _gib(n_bytes):
    return n_bytes / 2**30


def bench_logprob(args, torch):
    from .logprob_fdiv import logprob_fdiv_backward, logprob_fdiv_forward, logprob_fdiv_reference

    n, v, f = args.tokens, args.vocab, args.f
    dev = DEVICE
    gen = torch.Generator(device=dev).manual_seed(0)
    z = torch.randn(n, v, device=dev, generator=gen).mul_(3).to(torch.bfloat16)
    r = torch.randn(n, v, device=dev, generator=gen).mul_(3).to(torch.bfloat16)
    y = torch.randint(0, v, (n,), device=dev, generator=gen)
    w = torch.randn(n, device=dev, generator=gen)
    u = torch.rand(n, device=dev, generator=gen)
    logits_bytes = z.numel() * z.element_size()

    def fused():
        saved = logprob_fdiv_forward(z, r, y, f=f)
        return logprob_fdiv_backward(z, r, y, saved, w, u, f=f)

    def loss_of(zz, rr, yy, ww, uu):
        ref = logprob_fdiv_reference(zz, rr, yy, f=f, dtype=torch.float32)
        return (ww * ref.logp).sum() + (uu * ref.div).sum()

    def make_torch_path(loss_fn):
        def run():
            leaf = z.detach().requires_grad_()
            (grad,) = torch.autograd.grad(loss_fn(leaf, r, y, w, u), leaf)
            return grad
        return run

    paths = {"fused (Triton)": fused, "torch eager": make_torch_path(loss_of)}
    if not args.no_compile:
        paths["torch.compile"] = make_torch_path(torch.compile(loss_of))

    # Correctness first: the fused gradient against eager on the first rows.
    g_fused, g_eager = fused()[:64].float(), paths["torch eager"]()[:64].float()
    err = (g_fused - g_eager).abs().max().item() / max(g_eager.abs().max().item(), 1e-30)

    times, peaks = {}, {}
    for name, fn in paths.items():
        fn()  # compile / autotune outside the timed region
        times[name] = _bench(fn, args.rep)
        peaks[name] = _peak_extra_bytes(fn, torch)

    src = torch.empty(logits_bytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    t_copy = _bench(lambda: dst.copy_(src), args.rep)
    copy_bw = 2 * logits_bytes / (t_copy * 1e-3)  # a copy reads and writes every byte
    # Compulsory traffic of forward + backward: read z and r (forward), read z and r and write dz (backward).
    fused_bytes = 5 * logits_bytes
    fused_bw = fused_bytes / (times["fused (Triton)"] * 1e-3)
    grad_bytes = logits_bytes

    print(f"(a) log-prob + {f} divergence, forward + backward: N = {n}, V = {v}, bf16 logits "
          f"({_gib(logits_bytes):.2f} GiB each for policy and reference)")
    print(f"    fused gradient vs eager on the first 64 rows: max relative error {err:.2e}")
    print(f"    {'path':<16} {'ms':>9} {'x fused':>9} {'peak extra GiB':>15} {'beyond dz GiB':>14}")
    for name in paths:
        print(f"    {name:<16} {times[name]:9.3f} {times[name] / times['fused (Triton)']:9.2f} "
              f"{_gib(peaks[name]):15.3f} {_gib(peaks[name] - grad_bytes):14.3f}")
    print(f"    device-to-device copy of {_gib(logits_bytes):.2f} GiB: {t_copy:.3f} ms = {copy_bw / 1e9:.0f} GB/s")
    print(f"    fused: {fused_bytes / 1e9:.2f} GB of compulsory traffic in {times['fused (Triton)']:.3f} ms = "
          f"{fused_bw / 1e9:.0f} GB/s = {fused_bw / copy_bw:.2f} of copy bandwidth")
    speedup = times["torch eager"] / times["fused (Triton)"]
    print(f"    goals: fused >= {GOALS['fused_vs_eager']}x eager: {speedup:.2f}x "
          f"[{'met' if speedup >= GOALS['fused_vs_eager'] else 'not met'}]; "
          f">= {GOALS['fused_vs_copy_bandwidth']} of copy bandwidth: {fused_bw / copy_bw:.2f} "
          f"[{'met' if fused_bw / copy_bw >= GOALS['fused_vs_copy_bandwidth'] else 'not met'}]; "
          f"extra memory beyond dz: {(peaks['fused (Triton)'] - grad_bytes) / n:.0f} bytes per row")
    return times


def bench_attention(args, torch):
    import torch.nn.functional as F

    from .attention import flash_attention

    d, h = args.head_dim, args.heads
    dev, dtype = DEVICE, torch.bfloat16
    print(f"(b) causal attention, forward + backward: head dim {d}, {h} heads, bf16, B*T = {args.attn_tokens}")
    print(f"    {'T':>6} {'B':>4} {'flash ms':>9} {'SDPA ms':>9} {'eager ms':>9} {'SDPA/flash':>11} "
          f"{'eager/flash':>12} {'flash TFLOP/s':>14} {'max rel err':>12}")
    results = {}
    for t in args.seq:
        b = max(1, args.attn_tokens // t)
        gen = torch.Generator(device=dev).manual_seed(t)
        q, k, v, do = (torch.randn(b, h, t, d, device=dev, generator=gen, dtype=dtype) for _ in range(4))
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        scale = 1.0 / math.sqrt(d)

        def eager(q, k, v):
            s = torch.matmul(q, k.transpose(-1, -2)) * scale
            mask = torch.ones(t, t, dtype=torch.bool, device=dev).tril()
            p = torch.softmax(s.float().masked_fill(~mask, float("-inf")), dim=-1).to(dtype)
            return torch.matmul(p, v)

        impls = {
            "flash": lambda: flash_attention(q, k, v, causal=True),
            "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            "eager": lambda: eager(q, k, v),
        }
        o_flash, o_sdpa = impls["flash"](), impls["sdpa"]()
        err = (o_flash.float() - o_sdpa.float()).abs().max().item() / o_sdpa.float().abs().max().item()
        times = {}
        for name, fwd in impls.items():
            def step(fwd=fwd):
                fwd().backward(do)
            step()
            times[name] = _bench(step, args.rep)
            q.grad = k.grad = v.grad = None
        # Causal fwd + bwd: 2 matmuls forward and 5 backward of B*H*T*T*D multiply-adds, halved by the mask.
        flops = 7 * 2 * b * h * t * t * d / 2
        tflops = flops / (times["flash"] * 1e-3) / 1e12
        print(f"    {t:6d} {b:4d} {times['flash']:9.3f} {times['sdpa']:9.3f} {times['eager']:9.3f} "
              f"{times['sdpa'] / times['flash']:11.2f} {times['eager'] / times['flash']:12.2f} "
              f"{tflops:14.1f} {err:12.2e}")
        results[t] = times
    worst = min(r["sdpa"] / r["flash"] for r in results.values())
    print(f"    goal: flash >= {GOALS['attention_vs_sdpa']}x SDPA speed: worst {worst:.2f}x "
          f"[{'met' if worst >= GOALS['attention_vs_sdpa'] else 'not met'}]")
    return results


def main(argv=None):
    """Run the kernel benchmarks on CUDA and print their tables; return 0 (also when there is no GPU)."""
    args = _parse(argv)
    import torch

    if not torch.cuda.is_available():
        print("The kernel benchmarks need a CUDA device; none is available here, so nothing was measured. "
              "(The kernels themselves are tested on the CPU through Triton's interpreter: "
              "pytest tests/test_kernel_attention.py tests/test_kernel_logprob_fdiv.py.)")
        return 0
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    if args.only in (None, "logprob"):
        bench_logprob(args, torch)
    if args.only in (None, "attention"):
        bench_attention(args, torch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
