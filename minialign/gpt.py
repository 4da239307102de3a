"""A small GPT on the minialign engine (chapter 02): pre-LayerNorm blocks, causal attention, GELU MLP.

Beyond the usual model it gives the exact log-probability of whole sequences, Eq. (2.7), which every
alignment method needs, and samples with a KV cache.

Finite horizon: a sequence is at most ``block_size`` tokens long, its EOS included. At the last position
(index ``block_size − 1``) the EOS is forced: the model's distribution there is a point mass on EOS. So
``generate``, ``sequence_logprob`` and the exact enumeration of the lab agree, and the probabilities of all
EOS-terminated sequences of length ≤ ``block_size`` sum to exactly 1 (Eq. 2.8).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from . import functional as F
from .io import load, save
from .logspace import logsumexp
from .nn import Dropout, Embedding, LayerNorm, Linear, Module, init_std
from .tensor import Tensor, concatenate, no_grad


@dataclass
class GPTConfig:
    vocab_size: int = 27
    block_size: int = 12
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0
    bos_id: int = 0  # the names tokenizer uses one token "." as both BOS and EOS
    eos_id: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer; got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        for name in ("bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} must be a token id in [0, {self.vocab_size}); got {getattr(self, name)}")


class CausalSelfAttention(Module):
    def __init__(self, cfg: GPTConfig, rng, seed):
        self.n_head = cfg.n_head
        self.c_attn = Linear(cfg.n_embd, 3 * cfg.n_embd, rng=rng)
        self.c_proj = Linear(cfg.n_embd, cfg.n_embd, rng=rng, std=init_std(cfg.n_layer))
        self.resid_drop = Dropout(cfg.dropout, seed=seed)

    def forward(self, x, cache=None):
        """Eq. (2.4)–(2.5): multi-head causal attention; with ``cache`` (a dict), keys and values of earlier
        positions are reused and this step's are appended."""
        b, t, c = x.shape
        h = self.n_head
        qkv = self.c_attn(x).reshape(b, t, 3, h, c // h).permute(2, 0, 3, 1, 4)  # [3, B, H, T, D]
        q, k, v = qkv[0], qkv[1], qkv[2]
        if cache is not None:
            # BEGIN SOLUTION kv-cache
            if "k" in cache:
                k = concatenate([cache["k"], k], axis=2)
                v = concatenate([cache["v"], v], axis=2)
            cache["k"], cache["v"] = k.detach(), v.detach()
            # END SOLUTION
        y = F.scaled_dot_product_attention(q, k, v, causal=True)
        y = y.permute(0, 2, 1, 3).reshape(b, t, c)
        return self.resid_drop(self.c_proj(y))


class MLP(Module):
    def __init__(self, cfg: GPTConfig, rng, seed):
        self.c_fc = Linear(cfg.n_embd, 4 * cfg.n_embd, rng=rng)
        self.c_proj = Linear(4 * cfg.n_embd, cfg.n_embd, rng=rng, std=init_std(cfg.n_layer))
        self.drop = Dropout(cfg.dropout, seed=seed)

    def forward(self, x):
        return self.drop(self.c_proj(F.gelu(self.c_fc(x))))


class Block(Module):
    """Eq. (2.6): x ← x + Attn(LN(x)); x ← x + MLP(LN(x))."""

    def __init__(self, cfg: GPTConfig, rng, seed):
        self.ln_1 = LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg, rng, seed)
        self.ln_2 = LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg, rng, seed + 1)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(Module):
    def __init__(self, config: GPTConfig, seed: int = 0):
        self.config = config
        self.seed = seed
        rng = np.random.default_rng(seed)
        self.wte = Embedding(config.vocab_size, config.n_embd, rng=rng)
        self.wpe = Embedding(config.block_size, config.n_embd, rng=rng)
        self.drop = Dropout(config.dropout, seed=seed + 1)
        self.h = [Block(config, rng, seed + 2 + 2 * i) for i in range(config.n_layer)]
        self.ln_f = LayerNorm(config.n_embd)
        # the output head shares the token embedding's weights (as in GPT-2)

    # ------------------------------------------------------------------ the forward pass
    def forward(self, idx, cache=None, start: int = 0):
        """Logits ``[B, T, V]`` for token ids ``idx [B, T]`` read at positions ``start .. start+T−1``.

        ``cache`` is a list of one dict per layer (see :meth:`new_cache`), filled as positions are read.
        """
        idx = self._check_ids(idx, "idx")
        b, t = idx.shape
        if start + t > self.config.block_size:
            raise ValueError(f"sequence of {start + t} positions exceeds block_size {self.config.block_size}")
        pos = self.wpe.weight.bk.arange(t, like=self.wpe.weight.data) + start
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for i, block in enumerate(self.h):
            x = block(x, None if cache is None else cache[i])
        x = self.ln_f(x)
        return F.linear(x, self.wte.weight)

    def new_cache(self):
        return [{} for _ in self.h]

    def _check_ids(self, idx, what):
        if isinstance(idx, Tensor):
            idx = idx.data
        if not hasattr(idx, "dtype"):
            idx = np.asarray(idx)
        if "int" not in str(idx.dtype):
            raise TypeError(f"{what} must be an integer array of token ids; got dtype {idx.dtype}")
        if idx.ndim != 2:
            raise ValueError(f"{what} must have shape [batch, time]; got shape {tuple(idx.shape)}")
        v = self.config.vocab_size
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= v):
            raise ValueError(f"{what} must be token ids in [0, {v}); got values in [{int(idx.min())}, {int(idx.max())}]")
        return idx

    def loss(self, x):
        """Mean next-token cross-entropy over the tokens of EOS-terminated rows ``x [B, L]`` (the pretraining
        objective: −(1/#tokens) Σ log π(x_t | x_<t), EOS included, padding and forced positions excluded)."""
        inp, targets, counted = self._shift(x)
        return F.cross_entropy(self(inp), np.where(counted, targets, -100), ignore_index=-100)

    def check_rows(self, x, what="x"):
        """EOS-terminated rows ``[B, L]`` (L ≤ block_size): returns the ids as an array and each row's first EOS."""
        x = np.asarray(self._check_ids(x, what))
        cfg = self.config
        if x.shape[1] > cfg.block_size:
            raise ValueError(f"rows of {x.shape[1]} tokens exceed block_size {cfg.block_size}")
        is_eos = x == cfg.eos_id
        if not bool(is_eos.any(axis=1).all()):
            row = int(np.flatnonzero(~is_eos.any(axis=1))[0])
            raise ValueError(f"row {row} of {what} has no end-of-sequence token (id {cfg.eos_id}); "
                             "every row must end in EOS")
        return x, is_eos.argmax(axis=1)

    def _shift(self, x):
        """Inputs (BOS then x without its last column), targets x, and the mask of counted positions."""
        x, first_eos = self.check_rows(x)
        cfg = self.config
        b, length = x.shape
        t = np.arange(length)
        counted = (t[None, :] <= first_eos[:, None]) & (t[None, :] < cfg.block_size - 1)
        inp = np.concatenate([np.full((b, 1), cfg.bos_id, dtype=x.dtype), x[:, :-1]], axis=1)
        return inp, x, counted

    def token_logprobs(self, x) -> Tensor:
        """log π(x_t | x_<t) for every position of rows ``x [B, L]``: a Tensor ``[B, L]`` that is zero at padding
        and at the forced EOS (log 1), so that its row sums are Eq. (2.7)."""
        inp, targets, counted = self._shift(x)
        return -F.cross_entropy(self(inp), np.where(counted, targets, -100), ignore_index=-100, reduction="none")

    def sequence_logprob(self, x) -> Tensor:
        """Eq. (2.7): log π(x) = Σ_t log π(x_t | x_<t) over each row's tokens up to and including its first
        EOS (later columns are padding); the forced EOS at position block_size − 1 contributes log 1 = 0.

        Differentiable: returns a Tensor ``[B]``.
        """
        return self.token_logprobs(x).sum(axis=1)

    # ------------------------------------------------------------------ sampling
    def generate(self, num_samples: int, rng=None, temperature: float = 1.0, top_k=None, use_cache: bool = True):
        """Sample ``num_samples`` sequences; returns (tokens ``[B, block_size]`` padded with EOS, log π(x) ``[B]``).

        Each step draws u ~ U(0,1) per row and takes the token where the cumulative probability passes u, so the
        same seed gives the same samples with and without the KV cache. The returned log-probabilities are the
        model's own (temperature 1, no top-k), accumulated step by step: they equal :meth:`sequence_logprob`.
        """
        cfg = self.config
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive; got {num_samples}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive; got {temperature}")
        if top_k is not None and not 1 <= top_k <= cfg.vocab_size:
            raise ValueError(f"top_k must be in [1, {cfg.vocab_size}]; got {top_k}")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        was_training = self.training
        self.eval()
        n, horizon = num_samples, cfg.block_size
        out = np.full((n, horizon), cfg.eos_id, dtype=np.int64)
        logprob = np.zeros(n, dtype=np.float64)
        done = np.zeros(n, dtype=bool)
        cache = self.new_cache() if use_cache else None
        inp = np.full((n, 1), cfg.bos_id, dtype=np.int64)
        try:
            with no_grad():
                for t in range(horizon):
                    u = rng.random(n)
                    if t == horizon - 1:
                        break  # EOS forced at the last position: out already holds it
                    if use_cache:
                        logits = self(inp[:, -1:], cache=cache, start=t).numpy()[:, -1]
                    else:
                        logits = self(inp).numpy()[:, -1]
                    logits = logits.astype(np.float64)
                    logp = logits - logsumexp(logits, keepdims=True)
                    tok = _sample_rows(logits / temperature, u, top_k)
                    tok = np.where(done, cfg.eos_id, tok)
                    logprob += np.where(done, 0.0, logp[np.arange(n), tok])
                    out[:, t] = tok
                    done |= tok == cfg.eos_id
                    if done.all():
                        break
                    inp = np.concatenate([inp, tok[:, None]], axis=1)
        finally:
            self.train(was_training)
        return out, logprob

    # ------------------------------------------------------------------ checkpoints
    def save(self, path, weights=None, **extra):
        """Write config and weights (the model's own, or ``weights`` captured earlier) and any extra arrays or
        dicts to an ``.npz`` checkpoint, atomically."""
        weights = self.state_dict() if weights is None else weights
        return save(path, {"config": json.dumps(asdict(self.config)), "seed": self.seed, "weights": weights, **extra})

    @classmethod
    def load(cls, path) -> "GPT":
        state = load(path)
        if "config" not in state or "weights" not in state:
            raise ValueError(f"{path} is not a GPT checkpoint (it lacks 'config' or 'weights')")
        model = cls(GPTConfig(**json.loads(state["config"])), seed=int(state.get("seed", 0)))
        return model.load_state_dict(state["weights"])


def _sample_rows(logits, u, top_k=None):
    """Inverse-CDF sampling of one token per row from softmax(logits), optionally keeping only the top k."""
    if top_k is not None:
        kth = np.sort(logits, axis=-1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    p = np.exp(logits - logsumexp(logits, keepdims=True))
    cdf = np.cumsum(p, axis=-1)
    tok = (cdf < (u * cdf[:, -1])[:, None]).sum(axis=-1)
    return np.minimum(tok, logits.shape[-1] - 1)
