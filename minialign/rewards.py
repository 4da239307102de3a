"""Preferences and reward models (chapter 05): a hidden taste, a noisy annotator, and a learned reward.

RLHF does not get a reward function; it gets comparisons. This module plays both sides of that story:

* a hidden "true" reward r*(x) over names, Eq. (5.1), that a reader can state in one line;
* an annotator who, shown two names, prefers a over b with the Bradley–Terry probability
  σ(r*(a) − r*(b)), Eq. (5.2), so labels are informative but noisy;
* the best accuracy any reward model can reach on such labels (the annotator ceiling);
* a reward model r_θ — the GPT trunk with a scalar head — fitted by the Bradley–Terry loss
  −log σ(r_θ(y_w) − r_θ(y_l)), Eq. (5.3), and normalised to mean 0, std 1 under the base model.

Trainers take any ``reward_fn(names) -> np.ndarray``: :func:`true_reward` and :meth:`RewardModel.score`
both accept a list of str and return float64 arrays of the same length.
"""
from __future__ import annotations

import csv
import io as _io
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from . import functional as F
from .data import CharTokenizer
from .gpt import GPT, GPTConfig
from .io import NotACheckpoint, atomic_write, config_from, kind_error, load, save, weights_into
from .logspace import sigmoid, softplus
from .loop import LoopConfig, fit
from .nn import Linear, Module
from .optim import AdamW, clip_grad_norm, cosine_lr
from .tensor import Tensor, no_grad

RewardFn = Callable[[Sequence[str]], np.ndarray]
"""The interface trainers use: names in, one float64 reward per name out."""

VOWELS = frozenset("aeiou")
PREFERRED_LENGTH = 6


# ------------------------------------------------------------------------------ the hidden reward


def _check_names(names, what: str = "names") -> list[str]:
    if isinstance(names, str):
        raise TypeError(f"{what} must be a sequence of str, not a single str ({names!r}); wrap it in a list")
    names = list(names)
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(f"{what}[{i}] must be a str; got {type(name).__name__} {name!r}")
    return names


def true_reward(names: Sequence[str]) -> np.ndarray:
    """Eq. (5.1): the hidden taste the annotator judges by,

        r*(x) = 2·[x ends in a vowel] + [x contains an 'l'] − ½·|len(x) − 6|,

    vowels being a, e, i, o, u: "amelia" scores 3, "ella" 2, "mark" −1, "christopher" −2.5. On base-model
    samples r* spans [−3, 3] with a standard deviation near 1.2, so Bradley–Terry labels, Eq. (5.2), are
    informative yet often flipped: r* itself predicts about three labels in four.
    Returns float64 ``[len(names)]``.
    """
    names = _check_names(names)
    ends_in_vowel = np.array([len(x) > 0 and x[-1] in VOWELS for x in names], dtype=np.float64)
    has_l = np.array(["l" in x for x in names], dtype=np.float64)
    length = np.array([len(x) for x in names], dtype=np.float64)
    return 2.0 * ends_in_vowel + has_l - 0.5 * np.abs(length - PREFERRED_LENGTH)


# ------------------------------------------------------------------------------ the annotator


def preference_probability(names_a: Sequence[str], names_b: Sequence[str], reward: RewardFn = true_reward):
    """Eq. (5.2), Bradley–Terry: P(a ≻ b) = σ(r(a) − r(b)) for each pair, float64 ``[N]``."""
    names_a, names_b = _check_names(names_a, "names_a"), _check_names(names_b, "names_b")
    if len(names_a) != len(names_b):
        raise ValueError(f"names_a and names_b must pair up one to one; got {len(names_a)} and {len(names_b)} names")
    return sigmoid(_checked_rewards(reward, names_a) - _checked_rewards(reward, names_b))


def annotate(names_a: Sequence[str], names_b: Sequence[str], rng, reward: RewardFn = true_reward) -> np.ndarray:
    """A simulated annotator: label i is True when a_i is preferred to b_i, drawn with probability
    σ(r*(a_i) − r*(b_i)) (Bradley–Terry, Eq. (5.2)). Returns a bool array ``[N]``."""
    p = preference_probability(names_a, names_b, reward)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return rng.random(len(p)) < p


def _checked_rewards(reward: RewardFn, names: list[str]) -> np.ndarray:
    r = np.asarray(reward(names), dtype=np.float64)
    if r.shape != (len(names),):
        raise ValueError(f"a reward function must return one value per name: shape ({len(names)},); got {r.shape}")
    _raise_on_nan(r, names)
    return r


def _raise_on_nan(values: np.ndarray, names: Sequence[str]):
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        i = int(bad[0])
        raise FloatingPointError(f"reward of name {names[i]!r} (index {i}) is {values[i]}; "
                                 f"{bad.size} of {len(values)} rewards are not finite")


# ------------------------------------------------------------------------------ preference pairs


@dataclass(frozen=True)
class PreferencePairs:
    """Comparisons y_w ≻ y_l: ``chosen[i]`` was preferred to ``rejected[i]``."""

    chosen: tuple[str, ...]
    rejected: tuple[str, ...]

    def __post_init__(self):
        chosen = tuple(_check_names(self.chosen, "chosen"))
        rejected = tuple(_check_names(self.rejected, "rejected"))
        if len(chosen) != len(rejected):
            raise ValueError(f"chosen and rejected must have the same length; got {len(chosen)} and {len(rejected)}")
        object.__setattr__(self, "chosen", chosen)
        object.__setattr__(self, "rejected", rejected)

    def __len__(self) -> int:
        return len(self.chosen)

    def __getitem__(self, index) -> "PreferencePairs":
        """A subset of the pairs, by slice or by an array of indices."""
        if isinstance(index, slice):
            return PreferencePairs(self.chosen[index], self.rejected[index])
        idx = np.asarray(index).reshape(-1)
        return PreferencePairs(tuple(self.chosen[i] for i in idx), tuple(self.rejected[i] for i in idx))

    def split(self, n_val: int) -> tuple["PreferencePairs", "PreferencePairs"]:
        """The first ``len − n_val`` pairs for training and the last ``n_val`` for validation."""
        if not 0 < n_val < len(self):
            raise ValueError(f"n_val must leave both parts non-empty: 0 < n_val < {len(self)}; got {n_val}")
        return self[: len(self) - n_val], self[len(self) - n_val:]

    def save(self, path) -> Path:
        """Write a CSV with header ``chosen,rejected``, atomically (a temporary file, then a rename)."""
        path = Path(path)
        buf = _io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["chosen", "rejected"])
        writer.writerows(zip(self.chosen, self.rejected))
        return atomic_write(path, lambda fh: fh.write(buf.getvalue()), binary=False)


def load_pairs(path, block_size: int | None = 12) -> PreferencePairs:
    """Read pairs written by :meth:`PreferencePairs.save` (a CSV with the header ``chosen,rejected``).

    Every name must be letters a–z only and fit the model with its EOS (at most ``block_size − 1``
    letters; ``None`` skips that check); the error names the offending line. A file that states no preference
    — every chosen name the same as its rejected one, or fewer than two different pairs — is refused; a few
    such ties are allowed, with a warning.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no preference file at {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory; expected a preferences CSV file (header chosen,rejected)")
    try:
        text = path.read_text(encoding="utf-8-sig")
        if "\0" in text:
            raise UnicodeError
        rows = [row for row in csv.reader(_io.StringIO(text, newline="")) if row]
    except (UnicodeError, csv.Error):
        raise ValueError(f"{path} is not a text CSV file; expected a header 'chosen,rejected' and one row per "
                         "pair") from None
    if not rows:
        raise ValueError(f"{path} is empty; expected a header 'chosen,rejected' and one row per pair")
    header = [h.strip() for h in rows[0]]
    if header != ["chosen", "rejected"]:
        missing = [c for c in ("chosen", "rejected") if c not in header]
        extra = [c for c in header if c not in ("chosen", "rejected")]
        raise ValueError(f"{path}: expected columns chosen,rejected; found {','.join(rows[0]) or '(nothing)'}"
                         + (f" (missing {', '.join(missing)})" if missing else "")
                         + (f" (unexpected {', '.join(extra)})" if extra else ""))
    if len(rows) == 1:
        raise ValueError(f"{path} has a header but no pairs")
    chosen, rejected = [], []
    letters = set("abcdefghijklmnopqrstuvwxyz")
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise ValueError(f"{path}: line {lineno} has {len(row)} fields; expected 2 (chosen,rejected): {row}")
        for column, name in zip(("chosen", "rejected"), row):
            bad = sorted({c for c in name if c not in letters})
            if bad:
                raise ValueError(f"{path}: line {lineno}, column {column}: name {name!r} has characters "
                                 f"{''.join(bad)!r} the tokenizer does not know; expected only a-z")
            if block_size is not None and len(name) + 1 > block_size:
                raise ValueError(f"{path}: line {lineno}, column {column}: name {name!r} has {len(name)} letters; "
                                 f"with its EOS it needs {len(name) + 1} positions but the model reads at most "
                                 f"{block_size} (block_size)")
        chosen.append(row[0])
        rejected.append(row[1])
    _check_informative(path, chosen, rejected)
    return PreferencePairs(tuple(chosen), tuple(rejected))


def _check_informative(path, chosen, rejected) -> None:
    """Refuse pairs that state no preference; warn about ties among informative ones."""
    n = len(chosen)
    ties = sum(c == r for c, r in zip(chosen, rejected))
    if ties == n:
        raise ValueError(f"{path}: in every one of its {n} pair{'s' if n > 1 else ''} the chosen name is the same as "
                         "the rejected one; such pairs state no preference, so there is nothing to learn from")
    distinct = {(c, r) for c, r in zip(chosen, rejected) if c != r}
    if n == 1:
        raise ValueError(f"{path} has 1 pair; at least 2 are needed (a quarter of the pairs is held out to "
                         "measure the reward model)")
    if len(distinct) < 2:
        c, r = next(iter(distinct))
        raise ValueError(f"{path} holds one pair ({c} over {r}) {n - ties} times; at least 2 different pairs "
                         "are needed, or the held-out pairs are the training pairs again")
    if ties:
        warnings.warn(f"{path}: {ties} of {n} pairs have the same name chosen and rejected; they state no "
                      "preference and are kept, but only dilute the others", stacklevel=3)


def sample_names(model: GPT, n: int, seed: int, temperature: float = 1.0, batch_size: int = 2048,
                 progress: bool = False) -> list[str]:
    """``n`` names sampled from ``model`` (decoded, EOS stripped), in batches, reproducible by ``seed``; with
    ``progress``, a bar when there is more than one batch."""
    from tqdm.auto import tqdm

    if n < 1:
        raise ValueError(f"n must be a positive number of samples; got {n}")
    tok = CharTokenizer()
    rng = np.random.default_rng(seed)
    names: list[str] = []
    with tqdm(total=n, desc="sampling names", disable=None if progress and n > batch_size else True) as bar:
        while len(names) < n:
            ids, _ = model.generate(min(batch_size, n - len(names)), rng=rng, temperature=temperature)
            names.extend(tok.decode_batch(ids))
            bar.update(len(ids))
    return names


def simulate_preferences(base_model: GPT, n_pairs: int, seed: int = 0,
                         reward: RewardFn = true_reward, progress: bool = False) -> PreferencePairs:
    """Draw 2·n_pairs names from the base model (temperature 1), pair them up, and let the annotator of
    Eq. (5.2) pick a winner in each pair."""
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be positive; got {n_pairs}")
    names = sample_names(base_model, 2 * n_pairs, seed=seed, progress=progress)
    a, b = names[:n_pairs], names[n_pairs:]
    a_wins = annotate(a, b, np.random.default_rng([seed, 1]), reward)
    chosen = tuple(x if w else y for x, y, w in zip(a, b, a_wins))
    rejected = tuple(y if w else x for x, y, w in zip(a, b, a_wins))
    return PreferencePairs(chosen, rejected)


class Ceiling(NamedTuple):
    """How well the true reward itself predicts the labels of some pairs.

    expected  E[accuracy of r*] = mean σ(|Δ|): the Bayes rate, what any reward model can reach on average.
    realised  the fraction of these pairs where r* ranks the chosen name higher (ties count ½).
    """

    expected: float
    realised: float


def annotator_ceiling(pairs: PreferencePairs, reward: RewardFn = true_reward) -> Ceiling:
    """The best accuracy a reward model can hope for on ``pairs``, given the annotator's noise.

    With Δ_i = r*(chosen_i) − r*(rejected_i), the Bayes-optimal guess for each pair is the name with the
    higher r*, right with probability max(σ(Δ), 1 − σ(Δ)) = σ(|Δ|) under Eq. (5.2). ``expected`` averages
    that; ``realised`` is r*'s accuracy on the labels actually drawn (its sampling spread is about
    √(p(1−p)/N)). No model can beat ``expected`` except by luck.
    """
    if len(pairs) == 0:
        raise ValueError("annotator_ceiling needs at least one pair")
    delta = _checked_rewards(reward, list(pairs.chosen)) - _checked_rewards(reward, list(pairs.rejected))
    expected = float(np.mean(sigmoid(np.abs(delta))))
    realised = float(np.mean((delta > 0) + 0.5 * (delta == 0)))
    return Ceiling(expected, realised)


def pairwise_accuracy(reward: RewardFn, pairs: PreferencePairs) -> float:
    """Fraction of pairs where ``reward`` ranks the chosen name above the rejected one (ties count ½)."""
    delta = _checked_rewards(reward, list(pairs.chosen)) - _checked_rewards(reward, list(pairs.rejected))
    return float(np.mean((delta > 0) + 0.5 * (delta == 0)))


# ------------------------------------------------------------------------------ the loss


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """Eq. (5.3): reward-model loss, the mean over pairs of −log σ(r(y_w) − r(y_l)) (the negative
    log-likelihood of the labels under Bradley–Terry, Eq. (5.2)). Gradient in the margin: −σ(r(y_l) − r(y_w))."""
    r_chosen = r_chosen if isinstance(r_chosen, Tensor) else Tensor(r_chosen)
    r_rejected = r_rejected if isinstance(r_rejected, Tensor) else Tensor(r_rejected)
    if r_chosen.shape != r_rejected.shape or r_chosen.ndim != 1:
        raise ValueError(f"r_chosen and r_rejected must both have shape [N]; "
                         f"got {r_chosen.shape} and {r_rejected.shape}")
    return -F.log_sigmoid(r_chosen - r_rejected).mean()


# ------------------------------------------------------------------------------ the reward model


def default_config() -> GPTConfig:
    """A small trunk for the reward model: 2 layers, 4 heads, 32 dimensions over the names vocabulary."""
    return GPTConfig(n_layer=2, n_head=4, n_embd=32)


class RewardModel(Module):
    """r_θ(x): the GPT trunk (token and position embeddings, blocks, final LayerNorm) read at the position
    where the language model would emit EOS — it has then seen BOS and the whole name — and a linear head
    mapping that hidden state to one number.

    ``forward`` gives raw rewards as a differentiable Tensor; :meth:`score` gives normalised float64
    rewards (mean 0, std 1 under the base model once :meth:`normalise` has run).
    """

    def __init__(self, config: GPTConfig | None = None, seed: int = 0):
        config = default_config() if config is None else config
        if config.dropout:
            config = GPTConfig(**{**asdict(config), "dropout": 0.0})
        self.config = config
        self.seed = seed
        self.trunk = GPT(config, seed=seed)
        self.head = Linear(config.n_embd, 1, rng=np.random.default_rng([seed, 5]))
        self.mean = 0.0
        self.std = 1.0
        self.tokenizer = CharTokenizer()

    @classmethod
    def from_base(cls, base: GPT, seed: int = 0) -> "RewardModel":
        """A reward model whose trunk starts as a copy of ``base``'s weights (the head starts fresh)."""
        model = cls(GPTConfig(**{**asdict(base.config), "dropout": 0.0}), seed=seed)
        model.trunk.load_state_dict(base.state_dict())
        return model

    def forward(self, tokens) -> Tensor:
        """Raw rewards ``[B]`` for EOS-terminated rows ``tokens [B, L]`` (as from ``encode_batch``)."""
        x, end = self.trunk.check_rows(tokens, "tokens")
        cfg = self.config
        b = x.shape[0]
        # end: where the LM would emit EOS, having read BOS and every letter
        width = int(end.max()) + 1
        inp = np.concatenate([np.full((b, 1), cfg.bos_id, dtype=x.dtype), x[:, : width - 1]], axis=1)
        t = self.trunk
        pos = np.arange(width)
        h = t.wte(inp) + t.wpe(pos)
        for block in t.h:
            h = block(h)
        h = t.ln_f(h)
        last = h[np.arange(b), end]  # [B, C]
        return self.head(last).reshape(b)

    def raw(self, names: Sequence[str], batch_size: int = 1024) -> np.ndarray:
        """Unnormalised rewards for ``names`` as float64, without recording a graph."""
        names = _check_names(names)
        out = np.empty(len(names), dtype=np.float64)
        was = self.training
        self.eval()
        try:
            with no_grad():
                for i in range(0, len(names), batch_size):
                    chunk = names[i: i + batch_size]
                    ids = self.tokenizer.encode_batch(chunk, self.config.block_size)
                    out[i: i + len(chunk)] = self(ids).numpy()
        finally:
            self.train(was)
        _raise_on_nan(out, names)
        return out

    def score(self, names: Sequence[str]) -> np.ndarray:
        """Normalised rewards (r_θ(x) − mean)/std as float64 ``[len(names)]``: a ``reward_fn`` for trainers.
        Raises if any reward is NaN or infinite, naming the name."""
        out = (self.raw(names) - self.mean) / self.std
        _raise_on_nan(out, names)
        return out

    def normalise(self, base_model: GPT, n: int = 4096, seed: int = 0) -> tuple[float, float]:
        """Set ``mean`` and ``std`` to those of the raw rewards of ``n`` base-model samples, so that scores
        of base samples have mean 0 and std 1. Returns (mean, std)."""
        if n < 2:
            raise ValueError(f"normalise needs at least 2 samples to measure a spread; got n={n}")
        r = self.raw(sample_names(base_model, n, seed=seed))
        mean, std = float(r.mean()), float(r.std())
        if not std > 0:
            raise ValueError(f"the reward model gives every one of {n} base samples the same reward ({mean}); "
                             "cannot normalise by a zero spread")
        self.mean, self.std = mean, std
        return mean, std

    def save(self, path, weights=None, **extra) -> Path:
        """Config, weights and normalisers (and any extra state) to an ``.npz`` checkpoint, atomically."""
        weights = self.state_dict() if weights is None else weights
        return save(path, {"kind": "reward_model", "config": json.dumps(asdict(self.config)), "seed": self.seed,
                           "weights": weights, "mean": float(self.mean), "std": float(self.std), **extra})

    @classmethod
    def load(cls, path) -> "RewardModel":
        state = load(path)
        if state.get("kind") != "reward_model" or "config" not in state:
            raise kind_error(path, state, "a reward-model checkpoint")
        model = weights_into(cls(config_from(path, state["config"], GPTConfig), seed=int(state.get("seed", 0))),
                             state, path)
        model.mean, model.std = float(state.get("mean", 0.0)), float(state.get("std", 1.0))
        if not (math.isfinite(model.mean) and math.isfinite(model.std) and model.std > 0):
            raise NotACheckpoint(f"{path} is not a usable reward model: its normalisers are mean {model.mean}, "
                                 f"std {model.std}")
        return model


# ------------------------------------------------------------------------------ fitting


def _pair_rewards(model: RewardModel, pairs: PreferencePairs, tok: CharTokenizer):
    both = tok.encode_batch(list(pairs.chosen) + list(pairs.rejected), model.config.block_size)
    r = model(both)
    n = len(pairs)
    return r[:n], r[n:]


def evaluate_pairs(model: RewardModel, pairs: PreferencePairs) -> tuple[float, float]:
    """(mean Bradley–Terry loss, Eq. (5.3); accuracy with ties ½) of ``model`` on ``pairs``."""
    r_w, r_l = model.raw(list(pairs.chosen)), model.raw(list(pairs.rejected))
    delta = r_w - r_l
    loss = float(np.mean(softplus(-delta)))
    return loss, float(np.mean((delta > 0) + 0.5 * (delta == 0)))


def fit_reward_model(pairs_train: PreferencePairs, pairs_val: PreferencePairs, config: GPTConfig | None = None,
                     steps: int = 300, lr: float = 3e-3, seed: int = 0, progress: bool = True, batch_size: int = 64,
                     init_from: GPT | None = None, eval_every: int = 50, weight_decay: float = 0.1):
    """Fit r_θ by minimising the Bradley–Terry loss, Eq. (5.3), with AdamW on random batches of pairs (through the
    one loop of ``minialign.loop``).

    ``config`` sets the trunk (default :func:`default_config`); ``init_from`` copies a pretrained GPT's
    trunk instead (its config is then used). Returns (model, history) where history holds ``step``,
    ``train_loss`` (per step), and ``eval_step``, ``val_loss``, ``val_accuracy`` every ``eval_every`` steps
    and at the end, and ``seconds``. The model comes back unnormalised: call :meth:`RewardModel.normalise`.
    """
    if len(pairs_train) == 0 or len(pairs_val) == 0:
        raise ValueError(f"need training and validation pairs; got {len(pairs_train)} and {len(pairs_val)}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive; got steps={steps}, batch_size={batch_size}")
    if init_from is not None:
        if config is not None and asdict(config) != {**asdict(init_from.config), "dropout": config.dropout}:
            raise ValueError(f"config {config} differs from init_from's config {init_from.config}; pass one of them")
        model = RewardModel.from_base(init_from, seed=seed)
    else:
        model = RewardModel(config, seed=seed)
    tok = model.tokenizer
    for which, pairs in (("train", pairs_train), ("val", pairs_val)):
        too_long = [x for x in pairs.chosen + pairs.rejected if len(x) + 1 > model.config.block_size]
        if too_long:
            raise ValueError(f"{which} pair name {too_long[0]!r} does not fit block_size {model.config.block_size} "
                             "with its EOS")
    opt = AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    rng = np.random.default_rng([seed, 2])
    warmup = max(1, steps // 20)
    start = time.perf_counter()

    def step(i):
        opt.lr = cosine_lr(i, steps, lr, warmup, lr / 10)
        batch = pairs_train[rng.integers(0, len(pairs_train), batch_size)]
        r_w, r_l = _pair_rewards(model, batch, tok)
        loss = bradley_terry_loss(r_w, r_l)
        opt.zero_grad()
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"Bradley–Terry loss became {value} at step {i}")
        metrics = {"step": i + 1, "train_loss": value}
        if (i + 1) % eval_every == 0 or i + 1 == steps:
            val_loss, val_acc = evaluate_pairs(model, pairs_val)
            metrics.update(eval_step=i + 1, val_loss=val_loss, val_accuracy=val_acc)
        return metrics

    def show(m):
        accuracy = {"val_acc": f"{m['val_accuracy']:.3f}"} if "val_accuracy" in m else {}
        return {"loss": f"{m['train_loss']:.3f}", **accuracy}

    history = {"step": [], "train_loss": [], "eval_step": [], "val_loss": [], "val_accuracy": []}
    fit(step, LoopConfig(steps, progress=progress, desc="reward model", show=show), model=model, optimizer=opt,
        history=history)
    for key in ("step", "eval_step"):
        history[key] = [int(s) for s in history[key]]
    history["seconds"] = time.perf_counter() - start
    return model, history
