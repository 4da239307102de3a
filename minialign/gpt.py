"""A small GPT on the minialign engine (chapter 02): pre-LayerNorm blocks, causal attention, GELU MLP.

Beyond the usual model it gives the exact log-probability of whole sequences, Eq. (2.7), which every
alignment method needs, and samples with a KV cache.

Finite horizon: a sequence is at most ``block_size`` tokens long, its EOS included. At the last position
(index ``block_size − 1``) the EOS is forced: the model's distribution there is a point mass on EOS. So
``generate``, ``sequence_logprob`` and the exact enumeration of the lab agree, and the probabilities of all
EOS-terminated sequences of length ≤ ``block_size`` sum to exactly 1 (Eq. 2.8).

Prompts (chapter 05, §12): a prompt x is a prefix of a row, P tokens none of which is EOS; the response y is
the rest of the row, its EOS included. ``prompt_len`` leaves the prompt's tokens out of the sum, so that
``sequence_logprob(rows, prompt_len)`` is log π(y | x) (Eq. 5.19), and ``generate(n, prompts=...)`` primes the
KV cache on BOS and the prompt and samples y. Without a prompt (``prompt_len`` None or 0) nothing changes.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from . import functional as F
from .io import config_from, kind_error, load, save, weights_into
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
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bos_id", "eos_id"):
            value = getattr(self, name)
            least = 0 if name.endswith("_id") else 1
            if not _whole(value) or value < least:
                raise ValueError(f"GPTConfig.{name} must be a whole number ≥ {least}; got {value!r}")
            setattr(self, name, int(value))
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:  # NaN fails this too
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        for name in ("bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} must be a token id in [0, {self.vocab_size}); got {getattr(self, name)}")


def _whole(value) -> bool:
    """An int (or a NumPy integer), not a bool, a float or a string."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


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
        return F.linear(self.hidden_states(idx, cache, start), self.wte.weight)

    def hidden_states(self, idx, cache=None, start: int = 0):
        """The features ``[B, T, C]`` after the last LayerNorm, which the output head (the token embedding,
        shared) turns into logits."""
        idx = self._check_ids(idx, "idx")
        b, t = idx.shape
        if start + t > self.config.block_size:
            raise ValueError(f"sequence of {start + t} positions exceeds block_size {self.config.block_size}")
        pos = self.wpe.weight.bk.arange(t, like=self.wpe.weight.data) + start
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for i, block in enumerate(self.h):
            x = block(x, None if cache is None else cache[i])
        return self.ln_f(x)

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
            raise ValueError(f"{what} must be token ids in [0, {v}); got values in [{int(idx.min())}, "
                             f"{int(idx.max())}]")
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

    def _shift(self, x, prompt_len=None):
        """Inputs (BOS then x without its last column), targets x, and the mask of counted positions (the
        prompt's positions excluded when ``prompt_len`` is given)."""
        x, first_eos = self.check_rows(x)
        cfg = self.config
        b, length = x.shape
        t = np.arange(length)
        counted = (t[None, :] <= first_eos[:, None]) & (t[None, :] < cfg.block_size - 1)
        if prompt_len is not None:
            counted &= t[None, :] >= self.check_prompt_len(prompt_len, first_eos)[:, None]
        inp = np.concatenate([np.full((b, 1), cfg.bos_id, dtype=x.dtype), x[:, :-1]], axis=1)
        return inp, x, counted

    def check_prompt_len(self, prompt_len, first_eos) -> np.ndarray:
        """``prompt_len [B]``: whole numbers with 0 ≤ P ≤ the row's first EOS (a prompt holds no EOS) and
        P ≤ block_size − 1 (the response needs the position of its EOS)."""
        arr = np.asarray(prompt_len)
        if arr.dtype.kind not in "iu" or arr.shape != first_eos.shape:
            raise ValueError(f"prompt_len must be whole numbers, one per row, shape {first_eos.shape}; got dtype "
                             f"{arr.dtype}, shape {arr.shape}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > self.config.block_size - 1):
            raise ValueError(f"prompt lengths must lie in [0, {self.config.block_size - 1}] (block_size − 1: the "
                             f"response needs room for its EOS); got values in [{int(arr.min())}, {int(arr.max())}]")
        if (arr > first_eos).any():
            row = int(np.flatnonzero(arr > first_eos)[0])
            raise ValueError(f"row {row}: its prompt of {int(arr[row])} tokens runs past the row's end-of-sequence "
                             f"token at position {int(first_eos[row])}; a prompt cannot contain EOS")
        return arr.astype(np.int64)

    def check_prompts(self, prompts, n: int) -> np.ndarray:
        """Prompts for :meth:`generate`: token ids ``[n, P]`` (or ``[P]``, the same prompt for every row), no EOS
        among them, and P ≤ block_size − 1."""
        arr = np.asarray(prompts)
        if arr.ndim == 1:
            arr = np.broadcast_to(arr, (n, arr.shape[0]))
        if arr.size == 0 and arr.ndim == 2 and arr.shape[0] == n:
            arr = arr.astype(np.int64)
        arr = np.asarray(self._check_ids(arr, "prompts"))
        if arr.shape[0] != n:
            raise ValueError(f"prompts must have one row per sample ({n}); got shape {arr.shape}")
        if arr.shape[1] > self.config.block_size - 1:
            raise ValueError(f"a prompt of {arr.shape[1]} tokens leaves no room for the response's EOS: prompts "
                             f"may hold at most block_size − 1 = {self.config.block_size - 1} tokens")
        if (arr == self.config.eos_id).any():
            raise ValueError(f"a prompt is a prefix of a sequence and cannot contain the EOS token (id "
                             f"{self.config.eos_id})")
        return arr.astype(np.int64)

    def token_logprobs(self, x, prompt_len=None) -> Tensor:
        """log π(x_t | x_<t) for every position of rows ``x [B, L]``: a Tensor ``[B, L]`` that is zero at padding
        and at the forced EOS (log 1), so that its row sums are Eq. (2.7); zero too at the first
        ``prompt_len[b]`` positions of row b when given, so that the row sums are log π(y | x), Eq. (5.19)."""
        inp, targets, counted = self._shift(x, prompt_len)
        # the head and the log-probabilities in one op: a backend with the chunked kernel never holds all logits
        return F.linear_logprobs(self.hidden_states(inp), self.wte.weight, np.where(counted, targets, -100))

    def next_token_logits(self, x, prompt_len=None):
        """The logits ``[B, L, V]`` of every next-token distribution along rows ``x [B, L]`` (position t is
        π(· | x_<t)) and the targets ``[B, L]``: x_t where it counts, −100 at padding, at the forced EOS and in the
        prompt (the first ``prompt_len[b]`` positions of row b, when given)."""
        inp, targets, counted = self._shift(x, prompt_len)
        return self(inp), np.where(counted, targets, -100)

    def sequence_logprob(self, x, prompt_len=None) -> Tensor:
        """Eq. (2.7): log π(x) = Σ_t log π(x_t | x_<t) over each row's tokens up to and including its first
        EOS (later columns are padding); the forced EOS at position block_size − 1 contributes log 1 = 0.
        With ``prompt_len [B]``, Eq. (5.19): log π(y | x), the sum from position ``prompt_len[b]`` on.

        Differentiable: returns a Tensor ``[B]``.
        """
        return self.token_logprobs(x, prompt_len).sum(axis=1)

    # ------------------------------------------------------------------ sampling
    def generate(self, num_samples: int, rng=None, temperature: float = 1.0, top_k=None, use_cache: bool = True,
                 prompts=None):
        """Sample ``num_samples`` sequences; returns (tokens ``[B, block_size]`` padded with EOS, log π(x) ``[B]``).

        Each step draws u ~ U(0,1) per row and takes the token where the cumulative probability passes u, so the
        same seed gives the same samples with and without the KV cache. The returned log-probabilities are the
        model's own (temperature 1, no top-k), accumulated step by step: they equal :meth:`sequence_logprob`.

        ``prompts`` (ids ``[B, P]``, see :meth:`check_prompts`): each row starts with its prompt, the KV cache is
        primed on BOS and the prompt in one pass, and the returned log-probability is log π(y | x), Eq. (5.19).
        """
        cfg = self.config
        if not _whole(num_samples) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive whole number; got {num_samples!r}")
        if not (isinstance(temperature, (int, float, np.number)) and np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0; got {temperature!r}")
        if top_k is not None and not (_whole(top_k) and 1 <= top_k <= cfg.vocab_size):
            raise ValueError(f"top_k must be a whole number in [1, {cfg.vocab_size}] (the vocabulary); got {top_k!r}")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        was_training = self.training
        self.eval()
        n, horizon = num_samples, cfg.block_size
        prompts = np.zeros((n, 0), dtype=np.int64) if prompts is None else self.check_prompts(prompts, n)
        out = np.full((n, horizon), cfg.eos_id, dtype=np.int64)
        out[:, :prompts.shape[1]] = prompts
        logprob = np.zeros(n, dtype=np.float64)
        done = np.zeros(n, dtype=bool)
        cache = self.new_cache() if use_cache else None
        inp = np.concatenate([np.full((n, 1), cfg.bos_id, dtype=np.int64), prompts], axis=1)
        fed = 0  # positions already in the cache
        try:
            with no_grad():
                for t in range(prompts.shape[1], horizon):
                    u = rng.random(n)
                    if t == horizon - 1:
                        break  # EOS forced at the last position: out already holds it
                    if use_cache:
                        logits = self(inp[:, fed:], cache=cache, start=fed).numpy()[:, -1]
                        fed = inp.shape[1]
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
        """A GPT from a checkpoint written by :meth:`save` (or by a run); anything else — a damaged file, another
        kind of model, a configuration or weights that do not fit, NaN or infinite weights — is a
        :class:`~minialign.io.NotACheckpoint` naming the path and what is wrong."""
        state = load(path)
        if state.get("kind", "gpt") != "gpt" or "config" not in state or "weights" not in state:
            raise kind_error(path, state, "a GPT checkpoint")
        model = cls(config_from(path, state["config"], GPTConfig), seed=int(state.get("seed", 0)))
        return weights_into(model, state, path)


def _sample_rows(logits, u, top_k=None):
    """Inverse-CDF sampling of one token per row from softmax(logits), optionally keeping only the top k."""
    if top_k is not None:
        kth = np.sort(logits, axis=-1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    p = np.exp(logits - logsumexp(logits, keepdims=True))
    cdf = np.cumsum(p, axis=-1)
    tok = (cdf < (u * cdf[:, -1])[:, None]).sum(axis=-1)
    return np.minimum(tok, logits.shape[-1] - 1)
