"""Benchmarks of the Triton kernels against what a user would pick instead, each a ratio measured in one run
(``python -m minialign.bench kernels``; this module holds the kernel-level sections).

(a) ``fdiv``: the fused log-prob + f-divergence kernels, forward and backward, against the same math in torch
    eager and under ``torch.compile``, and — the divergence alone, from the same logits — against Liger-Kernel's
    JSD and KL-divergence losses after ``log_softmax`` (when ``liger-kernel`` is installed): time, peak extra
    memory, and the fused path's achieved bandwidth as a fraction of a device-to-device copy measured in the
    same run; N = 4096-32768 rows, V = 32k-128k, bf16 and fp32.
(b) ``linear``: the output head fused with the log-probabilities, chunk by chunk with the logits recomputed in
    the backward (``linear_logprob_forward``/``backward``, the engine's path), against the head written out
    (``h W^T``, the fused log-prob kernel, two products): where the chunked path starts to pay, in time and in
    memory; and against Liger's fused linear cross-entropy when installed.
(c) ``attention``: causal flash attention, forward and backward, against
    ``scaled_dot_product_attention`` restricted to its flash backend, and eager math; T = 1024-8192, head dims
    64 and 128, bf16.

``--smoke`` runs every section at tiny sizes — on the CPU through Triton's interpreter when there is no CUDA
device — so that CI proves the code paths; its timings mean nothing and it says so. Without CUDA and without
``--smoke`` nothing is measured: a line says so and the exit status is 1.
"""
from __future__ import annotations

import argparse
import math
import os
import time

from .memory import COMPULSORY_PASSES

DESCRIPTION = """The Triton kernels against what a user would pick instead, each a ratio measured in one run on a CUDA
device: (a) fdiv, the fused log-prob + f-divergence kernels vs torch eager, torch.compile and Liger-Kernel;
(b) linear, the chunked output head vs the written-out one; (c) attention, flash attention vs SDPA-flash;
(d) gpt, a GPT training step, engine + kernels vs torch eager; (e) tour, the names tour on the GPU vs the CPU
(only when named in --only). --smoke runs every section at tiny sizes, on the CPU through Triton's interpreter
(its timings mean nothing)."""
GOALS = {"fused_vs_eager": 3.0, "fused_vs_copy_bandwidth": 0.85, "fused_vs_liger": 1.0, "attention_vs_sdpa": 0.8}
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def add_options(parser):
    """The options of ``python -m minialign.bench kernels``, with the checked value types of the main command line."""
    from minialign import argtypes as A

    sizes = A.count(1, 1 << 20)
    parser.add_argument("--only", nargs="+", choices=["fdiv", "linear", "attention", "gpt", "tour"], default=None,
                        metavar="SECTION", help="sections to run: fdiv, linear, attention, gpt, tour (default: fdiv "
                                                "linear attention gpt; tour only when named)")
    parser.add_argument("--cases", nargs="+", type=A.shape_nxv, default=["4096x32000", "16384x50257", "32768x128256"],
                        metavar="NxV", help="(a) logits shapes, rows x vocabulary (default: 4096x32000 16384x50257 "
                                            "32768x128256)")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["bf16", "fp32"], metavar="DTYPE",
                        help="(a) dtypes: bf16, fp32 (default: bf16 fp32)")
    parser.add_argument("--fs", nargs="+", choices=["kl", "reverse_kl", "js", "tv"], default=["js", "reverse_kl"],
                        metavar="F", help="(a) members: kl, reverse_kl, js, tv (default: js reverse_kl, the ones Liger "
                                          "also has)")
    parser.add_argument("--linear-vocabs", type=A.count(2, 1 << 20), nargs="+",
                        default=[4096, 8192, 16384, 32768, 50257, 131072], metavar="V",
                        help="(b) vocabularies of the head crossover (default: 4096 … 131072)")
    parser.add_argument("--linear-tokens", type=sizes, default=16384, metavar="N", help="(b) rows N (default: 16384)")
    parser.add_argument("--linear-dim", type=sizes, default=768, metavar="D", help="(b) hidden size d (default: 768)")
    parser.add_argument("--seq", type=sizes, nargs="+", default=[1024, 2048, 4096, 8192], metavar="T",
                        help="(c) lengths T (default: 1024 2048 4096 8192)")
    parser.add_argument("--head-dims", type=A.count(1, 256), nargs="+", default=[64, 128], metavar="D",
                        help="(c) head dims (default: 64 128)")
    parser.add_argument("--attn-tokens", type=sizes, default=16 * 1024, metavar="N",
                        help="(c) B·T per run (default: 16384)")
    parser.add_argument("--attn-width", type=sizes, default=1024, metavar="N",
                        help="(c) heads × head dim (default: 1024)")
    parser.add_argument("--rep", type=A.count(1, 60_000), default=100, metavar="MS",
                        help="milliseconds of timed repetitions per case on CUDA (default: 100)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; on the CPU through Triton's interpreter")
    return parser


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m minialign.bench kernels", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    return add_options(parser).parse_args(argv)


NO_DEVICE = ("the kernel benchmarks need a CUDA device, and there is none here: nothing was measured (--smoke runs "
             "every section at tiny sizes through Triton's interpreter, to check the code)")


# ------------------------------------------------------------------------------------------- measuring
class Runner:
    """Times and peak memory of callables on one device, and the lines of the tables."""

    def __init__(self, torch, device, rep, smoke):
        self.torch, self.device, self.rep, self.smoke = torch, device, rep, smoke
        self.cuda = device == "cuda"

    def time(self, fn):
        """Milliseconds per call: Triton's do_bench on CUDA; the median of a few calls on the CPU."""
        if self.cuda:
            from triton.testing import do_bench

            return do_bench(fn, warmup=25, rep=self.rep)
        times = []
        for _ in range(1 if self.smoke else 5):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[len(times) // 2]

    def peak(self, fn):
        """Peak bytes allocated while ``fn`` runs, above what was allocated before it (None off CUDA)."""
        if not self.cuda:
            return None
        torch = self.torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        del result
        return torch.cuda.max_memory_allocated() - before

    def measure(self, fn, ours: bool = False):
        """(ms, peak bytes) or the reason it could not run (out of memory, a failed compile). Our own kernels'
        failures other than running out of memory are errors, never a row of the table."""
        try:
            fn()  # compile / autotune outside the timed region
            return self.time(fn), self.peak(fn)
        except Exception as e:  # noqa: BLE001 — a baseline that cannot run is reported, not fatal
            if ours and "out of memory" not in str(e).lower():
                raise
            if self.cuda:
                self.torch.cuda.empty_cache()
            return f"{type(e).__name__}: {str(e).splitlines()[0][:80]}" if str(e) else type(e).__name__

    def copy_bandwidth(self, n_bytes):
        """Bytes per second of a device-to-device copy of ``n_bytes`` (read + write)."""
        src = self.torch.empty(n_bytes, dtype=self.torch.uint8, device=self.device)
        dst = self.torch.empty_like(src)
        ms = self.time(lambda: dst.copy_(src))
        return 2 * n_bytes / (ms * 1e-3)


def _gib(n):
    return "n/a" if n is None else f"{n / 2**30:.3f}"


def _row(name, result, ref_ms, extra=""):
    if isinstance(result, str):
        return f"    {name:<26} {'—':>9} {'—':>8} {'—':>10}  {result}"
    ms, peak = result
    return f"    {name:<26} {ms:9.3f} {ms / ref_ms:8.2f} {_gib(peak):>10}  {extra}"


def _verdict(value, goal):
    return f"{value:.2f} [{'met' if value >= goal else 'not met'}; target {goal}]"


def _liger():
    """Liger-Kernel's losses, or None with the reason (it is optional and never a dependency)."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss, LigerJSD, LigerKLDIVLoss
    except Exception as e:  # noqa: BLE001
        return None, f"liger-kernel not importable ({type(e).__name__}); pip install liger-kernel to compare"
    return {"jsd": LigerJSD, "kl": LigerKLDIVLoss, "flce": LigerFusedLinearCrossEntropyLoss}, None


def _compiled(torch, fn, args):
    if args.no_compile:
        return None, "skipped (--no-compile)"
    if args.smoke:
        return None, "skipped in --smoke (compiling takes longer than the smoke run)"
    try:
        return torch.compile(fn), None
    except Exception as e:  # noqa: BLE001
        return None, f"unavailable: {type(e).__name__}"


# ------------------------------------------------------------------------------------------- (a) fdiv
def bench_fdiv(args, run: Runner):
    """Section (a); returns {(N, V, dtype, f): {path: (ms, peak) or reason, "copy_fraction": x, ...}}."""
    torch = run.torch
    from .logprob_fdiv import logprob_fdiv_backward, logprob_fdiv_forward, logprob_fdiv_reference

    liger, liger_reason = _liger()
    results = {}
    print("(a) fused log-prob + f-divergence, forward + backward (L = sum w log pi(y) + u D_f(pi || a))")
    if liger is None:
        print(f"    Liger: {liger_reason}")
    for case in args.cases:
        n, v = (int(x) for x in case.lower().split("x"))
        for dname in args.dtypes:
            dtype = getattr(torch, DTYPES[dname])
            gen = torch.Generator(device=run.device).manual_seed(0)
            z = (3 * torch.randn(n, v, device=run.device, generator=gen)).to(dtype)
            r = (3 * torch.randn(n, v, device=run.device, generator=gen)).to(dtype)
            y = torch.randint(0, v, (n,), device=run.device, generator=gen)
            w, u = torch.randn(n, device=run.device, generator=gen), torch.rand(n, device=run.device, generator=gen)
            zero = torch.zeros_like(w)
            logits_bytes = z.numel() * z.element_size()
            copy_bw = run.copy_bandwidth(logits_bytes)
            for f in args.fs:
                results[(n, v, dname, f)] = _fdiv_case(torch, run, args, liger, z, r, y, w, u, zero, f,
                                                      logits_bytes, copy_bw, logprob_fdiv_forward,
                                                      logprob_fdiv_backward, logprob_fdiv_reference)
                del_cache(run)
            del z, r
            del_cache(run)
    return results


def del_cache(run):
    if run.cuda:
        run.torch.cuda.empty_cache()


def _fdiv_case(torch, run, args, liger, z, r, y, w, u, zero, f, logits_bytes, copy_bw, fwd, bwd, reference):
    n, v = z.shape

    def fused(weight=w):
        return bwd(z, r, y, fwd(z, r, y, f=f), weight, u, f=f)

    def loss_of(zz, rr, yy, ww, uu):
        ref = reference(zz, rr, yy, f=f, dtype=torch.float32)
        return (ww * ref.logp).sum() + (uu * ref.div).sum()

    def autograd_path(loss_fn):
        def go():
            leaf = z.detach().requires_grad_()
            return torch.autograd.grad(loss_fn(leaf, r, y, w, u), leaf)[0]
        return go

    paths = {"fused (Triton)": fused, "torch eager": autograd_path(loss_of)}
    compiled, why = _compiled(torch, loss_of, args)
    paths["torch.compile"] = autograd_path(compiled) if compiled is not None else why
    out = {name: (run.measure(fn, ours=name == "fused (Triton)") if callable(fn) else fn) for name, fn in paths.items()}
    # the divergence alone, from the same logits: ours with w = 0, Liger's loss after log_softmax
    out["fused, divergence only"] = run.measure(lambda: fused(zero), ours=True)
    liger_name = {"js": "jsd", "reverse_kl": "kl"}.get(f)
    if liger is None or liger_name is None:
        out["Liger"] = "not installed" if liger is None else f"Liger has no {f}"
    else:
        out["Liger"] = run.measure(_liger_path(torch, liger[liger_name], liger_name, z, r, u))
    ref_ms = out["fused (Triton)"][0] if not isinstance(out["fused (Triton)"], str) else float("nan")
    fused_bytes = COMPULSORY_PASSES * logits_bytes  # read z, r (forward); read z, r and write dz (backward)
    out["copy_fraction"] = fused_bytes / (ref_ms * 1e-3) / copy_bw
    out["error"] = _grad_error(torch, fused, autograd_path(loss_of))
    print(f"  N = {n}, V = {v}, {str(z.dtype).removeprefix('torch.')}, f = {f}: "
          f"{logits_bytes / 2**30:.2f} GiB per logits array; fused gradient vs eager, first 64 rows: max relative "
          f"error {out['error']:.1e}")
    print(f"    {'path':<26} {'ms':>9} {'x fused':>8} {'peak GiB':>10}")
    for name in ("fused (Triton)", "torch eager", "torch.compile"):
        print(_row(name, out[name], ref_ms))
    div_ms = out["fused, divergence only"][0] if not isinstance(out["fused, divergence only"], str) else float("nan")
    print(_row("fused, divergence only", out["fused, divergence only"], div_ms))
    print(_row("Liger log_softmax + loss", out["Liger"], div_ms, "(x = Liger / fused divergence only)"))
    eager = out["torch eager"]
    speedup = eager[0] / ref_ms if not isinstance(eager, str) else float("nan")
    extra = None if isinstance(out["fused (Triton)"], str) else out["fused (Triton)"][1]
    per_row = "n/a" if extra is None else f"{(extra - logits_bytes) / n:.0f} bytes per row beyond dz"
    line = (f"    fused: {_verdict(out['copy_fraction'], GOALS['fused_vs_copy_bandwidth'])} of copy bandwidth "
            f"({copy_bw / 1e9:.0f} GB/s copy); vs eager {_verdict(speedup, GOALS['fused_vs_eager'])}; {per_row}")
    if not isinstance(out["Liger"], str):
        line += f"; vs Liger {_verdict(out['Liger'][0] / div_ms, GOALS['fused_vs_liger'])}"
    print(line + (" (smoke: timings mean nothing)" if run.smoke else ""))
    return out


def _liger_path(torch, cls, kind, z, r, u):
    """Liger's loss on log-probabilities from the same logits, differentiated back to the logits."""
    loss_fn = cls(beta=0.5) if kind == "jsd" else cls(reduction="batchmean", log_target=True)

    def go():
        leaf = z.detach().requires_grad_()
        log_q = torch.log_softmax(leaf.float(), -1)
        log_p = torch.log_softmax(r.float(), -1)
        loss = loss_fn(log_q, log_p)  # JSD(student, teacher) or KL(teacher || student), mean over rows
        return torch.autograd.grad(loss, leaf)[0]
    return go


def _grad_error(torch, fused, eager):
    try:
        a, b = fused()[:64].double(), eager()[:64].double()
    except Exception:  # noqa: BLE001
        return float("nan")
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-30)


# ------------------------------------------------------------------------------------------- (b) linear head
def bench_linear(args, run: Runner):
    """Section (b): the written-out head (h W^T, fused log-prob, two products) against the chunked head with
    recomputed logits, over vocabularies; returns {V: {path: (ms, peak)}} and prints the crossover."""
    torch = run.torch
    from .linear_logprob import linear_logprob_backward, linear_logprob_forward
    from .logprob_fdiv import logprob_fdiv_backward, logprob_fdiv_forward

    liger, _ = _liger()
    n, d = args.linear_tokens, args.linear_dim
    dtype = torch.float32 if run.smoke and not run.cuda else torch.bfloat16
    dtype_name = str(dtype).removeprefix("torch.")
    print(f"(b) the output head and log pi(y), forward + backward: N = {n}, d = {d}, {dtype_name}"
          " — written out (logits [N, V] held) vs chunked (logits recomputed chunk by chunk in the backward)")
    print(f"    {'V':>7} {'written ms':>11} {'chunked ms':>11} {'chunked/written':>16} {'written GiB':>12} "
          f"{'chunked GiB':>12} {'Liger FLCE ms':>14}")
    results = {}
    for v in args.linear_vocabs:
        gen = torch.Generator(device=run.device).manual_seed(v)
        h = torch.randn(n, d, device=run.device, generator=gen).to(dtype)
        W = (torch.randn(v, d, device=run.device, generator=gen) / math.sqrt(d)).to(dtype)
        y = torch.randint(0, v, (n,), device=run.device, generator=gen)
        w = torch.ones(n, device=run.device)

        def written():
            z = h @ W.T
            dz = logprob_fdiv_backward(z, None, y, logprob_fdiv_forward(z, None, y), w, None)
            return dz @ W, dz.T @ h

        def chunked():
            _, lse = linear_logprob_forward(h, W, y)
            return linear_logprob_backward(h, W, y, lse, w)

        row = {"written": run.measure(written, ours=True), "chunked": run.measure(chunked, ours=True)}
        row["liger"] = run.measure(_liger_flce(torch, liger["flce"], h, W, y)) if liger else "not installed"
        results[v] = row
        a, b = row["written"], row["chunked"]
        ok = not isinstance(a, str) and not isinstance(b, str)
        lig = f"{row['liger'][0]:14.3f}" if not isinstance(row["liger"], str) else f"{'—':>14}"
        print(f"    {v:7d} {a[0] if ok else float('nan'):11.3f} {b[0] if ok else float('nan'):11.3f} "
              f"{b[0] / a[0] if ok else float('nan'):16.2f} {_gib(a[1]) if ok else '—':>12} "
              f"{_gib(b[1]) if ok else '—':>12} {lig}")
        h = W = None  # release this size's arrays before the next
        del_cache(run)
    faster = [v for v, row in results.items() if _ok(row) and row["chunked"][0] <= row["written"][0]]
    print(f"    time crossover: {'chunked is not faster at any V measured' if not faster else f'V >= {min(faster)}'}"
          f"; memory: the chunked head holds C x V logits instead of N x V (C = N d / V rows), so it saves memory "
          f"only where V > d = {d}" + (" (smoke: timings mean nothing)" if run.smoke else ""))
    return results


def _ok(row):
    return not isinstance(row["written"], str) and not isinstance(row["chunked"], str)


def _liger_flce(torch, cls, h, W, y):
    loss_fn = cls(reduction="sum")

    def go():
        hh, ww = h.detach().requires_grad_(), W.detach().requires_grad_()
        return torch.autograd.grad(loss_fn(ww, hh, y), (hh, ww))
    return go


# ------------------------------------------------------------------------------------------- (c) attention
def bench_attention(args, run: Runner):
    """Section (c): flash attention against SDPA (flash backend on CUDA) and eager; returns {(T, D): times}."""
    torch = run.torch
    import torch.nn.functional as F

    from .attention import flash_attention

    dtype = torch.float32 if run.smoke and not run.cuda else torch.bfloat16
    print(f"(c) causal attention, forward + backward, {str(dtype).removeprefix('torch.')}, B*T = {args.attn_tokens}, "
          f"heads x head dim = {args.attn_width}")
    print(f"    {'T':>6} {'D':>4} {'B':>4} {'H':>4} {'flash ms':>9} {'SDPA ms':>9} {'eager ms':>9} {'SDPA/flash':>11} "
          f"{'eager/flash':>12} {'flash TFLOP/s':>14} {'max rel err':>12}")
    results = {}
    for d in args.head_dims:
        for t in args.seq:
            b, h = max(1, args.attn_tokens // t), max(1, args.attn_width // d)
            gen = torch.Generator(device=run.device).manual_seed(t + d)
            q, k, v, do = (torch.randn(b, h, t, d, device=run.device, generator=gen, dtype=dtype) for _ in range(4))
            q, k, v = (x.requires_grad_() for x in (q, k, v))
            impls = {"flash": lambda: flash_attention(q, k, v, causal=True),
                     "sdpa": _sdpa(torch, F, q, k, v, run), "eager": _eager_attention(torch, q, k, v, t, run)}
            times = {}
            for name, fwd in impls.items():
                def step(fwd=fwd):
                    q.grad = k.grad = v.grad = None
                    fwd().backward(do)
                res = run.measure(step, ours=name == "flash")
                times[name] = res[0] if not isinstance(res, str) else float("nan")
            err = _attention_error(torch, impls)
            flops = 7 * 2 * b * h * t * t * d / 2  # 2 products forward, 5 backward, halved by the mask
            tflops = flops / (times["flash"] * 1e-3) / 1e12
            print(f"    {t:6d} {d:4d} {b:4d} {h:4d} {times['flash']:9.3f} {times['sdpa']:9.3f} {times['eager']:9.3f} "
                  f"{times['sdpa'] / times['flash']:11.2f} {times['eager'] / times['flash']:12.2f} {tflops:14.2f} "
                  f"{err:12.1e}")
            results[(t, d)] = times
            q = k = v = do = None  # release this size's arrays before the next
            del_cache(run)
    ratios = [r["sdpa"] / r["flash"] for r in results.values() if not math.isnan(r["sdpa"])]
    if ratios:
        print(f"    flash vs SDPA-flash speed: worst {_verdict(min(ratios), GOALS['attention_vs_sdpa'])}"
              + (" (smoke: timings mean nothing)" if run.smoke else ""))
    return results


def _sdpa(torch, F, q, k, v, run):
    """SDPA restricted to its flash backend on CUDA (whatever backend the CPU has, in smoke runs)."""
    def go():
        if run.cuda:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return go


def _eager_attention(torch, q, k, v, t, run):
    def go():
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        mask = torch.ones(t, t, dtype=torch.bool, device=run.device).tril()
        p = torch.softmax(s.float().masked_fill(~mask, float("-inf")), dim=-1).to(q.dtype)
        return torch.matmul(p, v)
    return go


def _attention_error(torch, impls):
    try:
        with torch.no_grad():
            a, b = impls["flash"]().float(), impls["sdpa"]().float()
        return (a - b).abs().max().item() / b.abs().max().item()
    except Exception:  # noqa: BLE001
        return float("nan")


# ------------------------------------------------------------------------------------------- entry point
def device_for(smoke: bool):
    """"cuda" when there is a CUDA device; "cpu" for a smoke run without one (the interpreter); else None.
    Sets TRITON_INTERPRET=1 for a CPU smoke run (it must precede the first import of triton)."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        return "cpu"
    return None


def smoke_args(args):
    """Tiny sizes for every section (the interpreter runs each kernel program in Python)."""
    args.cases, args.dtypes = ["6x300"], ["bf16"]
    args.linear_vocabs, args.linear_tokens, args.linear_dim = [64, 256], 8, 32
    args.seq, args.head_dims, args.attn_tokens, args.attn_width = [32], [16], 32, 32
    return args


def run_sections(args, device, sections):
    """Run the kernel-level sections of ``sections`` on ``device``; returns {section: results}."""
    import torch

    run = Runner(torch, device, args.rep, args.smoke)
    out = {}
    for name, fn in (("fdiv", bench_fdiv), ("linear", bench_linear), ("attention", bench_attention)):
        if name in sections:
            out[name] = fn(args, run)
    return out


def main(argv=None):
    """The kernel-level sections alone (``minialign.bench kernels`` adds the GPT step and the tour)."""
    import sys

    args = _parse(argv)
    device = device_for(args.smoke)
    if device is None:
        print(f"python -m minialign.bench kernels: error: {NO_DEVICE}", file=sys.stderr)
        return 1
    if args.smoke:
        smoke_args(args)
    run_sections(args, device, args.only or ["fdiv", "linear", "attention"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
