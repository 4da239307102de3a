"""The one training loop: steps, history, progress, checkpoints, resume and interrupts.

Pretraining, the reward model, the gender classifier and every alignment method run through :func:`fit`.
A step is a function ``step(i) → metrics`` that takes the i-th optimizer step (counting from 0); the loop
owns everything around it:

* **history** — every metric a step returns is appended to ``history[name]``;
* **checkpoints** — an ``.npz`` written atomically every ``checkpoint_every`` steps, at the end, and when the
  run is interrupted. What a checkpoint holds at step N is exactly the state after N steps: the weights, the
  optimizer's moments and counter, every random generator (the named ones the step draws from and each
  dropout layer's), the method's own state, and the history. The state is captured between steps, so an
  interrupt that lands inside a step never writes half of one;
* **run identity** — a checkpoint records what defines its run (method, hyper-parameters, the base model's
  fingerprint). Resuming prints ``resumed from PATH at step N``; resuming with another identity is refused
  with the differing settings named; a finished run run again says it is complete;
* **interrupts** — Ctrl-C is taken at the end of the step in progress: the state after that step is saved
  and :class:`Interrupted` is raised (a second Ctrl-C stops at once, keeping the last finished step).
"""
from __future__ import annotations

import copy
import json
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .io import NotACheckpoint, load

__all__ = ["fit", "LoopConfig", "check_resumable", "Interrupted", "RunMismatch"]


class Interrupted(KeyboardInterrupt):
    """The run was stopped by the user; ``step`` steps are finished and, if ``path`` is set, saved there."""

    def __init__(self, step: int, path=None):
        self.step, self.path = step, path
        where = f"the state after step {step} is saved in {path}; rerun the same command to resume" if path \
            else f"after step {step} (no checkpoint path was given, so nothing was saved)"
        super().__init__(f"interrupted: {where}")


class RunMismatch(ValueError):
    """A checkpoint exists at the output path but was written by a different run."""


def _json(x) -> str:
    return json.dumps(x, sort_keys=True, default=float)


FLAGS = {"base": "--base (its weights)", "teacher": "--teacher (its weights)", "teacher_path": "--teacher",
         "pairs_sha256": "--pairs (its contents)", "model": "", **{k: k for k in ("command", "kind", "method")}}
SHOWN = 3  # differences named in a refusal; the others are counted


def _flag(key: str) -> str:
    """The command-line flag of an identity key (``beta`` → ``--beta``; a nested key under its parent's)."""
    parent, _, leaf = key.rpartition(".")
    if parent:
        head = _flag(parent)
        return f"{head} {leaf}" if head else f"--{leaf.replace('_', '-')}"
    return FLAGS.get(key, f"--{key.replace('_', '-')}")


def _flat(identity: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in identity.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _short(value) -> str:
    text = value if isinstance(value, str) else _json(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _differences(saved: dict, now: dict) -> list[str]:
    """The settings that differ, by flag: a different command or kind of run alone, since the rest follows."""
    saved, now = _flat(saved), _flat(now)
    for key in ("kind", "command", "method"):
        a, b = str(saved.get(key, "")), str(now.get(key, ""))
        if a and b and a != b and (key != "method" or a.split("-")[0] != b.split("-")[0]):
            return [f"{key}: {a} in the checkpoint, {b} now"]
    out = []
    for key in sorted((set(saved) | set(now)) - {"method"}):
        a, b = saved.get(key, "(not set)"), now.get(key, "(not set)")
        if _json(a) != _json(b):
            out.append(f"{_flag(key)}: {_short(a)} in the checkpoint, {_short(b)} now")
    if len(out) > SHOWN:
        out = out[:SHOWN] + [f"and {len(out) - SHOWN} more"]
    return out


def _dropout_generators(model) -> dict:
    modules = model.named_modules() if hasattr(model, "named_modules") else []
    return {name: m.rng for name, m in modules if hasattr(m, "rng") and isinstance(m.rng, np.random.Generator)}


def _rng_states(rngs: dict) -> str:
    return _json({name: g.bit_generator.state for name, g in rngs.items()})


def _set_rng_states(rngs: dict, states: str) -> None:
    for name, state in json.loads(states).items():
        if name in rngs:
            rngs[name].bit_generator.state = state


def _copy(state):
    """A deep copy of a state dict whose arrays the next step would otherwise mutate in place."""
    if isinstance(state, dict):
        return {k: _copy(v) for k, v in state.items()}
    if isinstance(state, np.ndarray):
        return state.copy()
    return copy.deepcopy(state)


@contextmanager
def _deferred_interrupts():
    """Inside, the first Ctrl-C only sets a flag (checked between steps); a second one interrupts at once."""
    flag = {"requested": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["requested"]:
            raise KeyboardInterrupt
        flag["requested"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _one_writer(fn):
    """``fn`` runs holding the lock of its checkpoint path (``out=``, or a config's ``.out``): a second run on the
    same path is refused at once (:class:`~minialign.lock.Locked`) instead of writing over this one."""
    import functools

    @functools.wraps(fn)
    def locked(*args, **kwargs):
        from .lock import hold

        out = kwargs.get("out")
        if out is None:  # a run's configuration that carries its checkpoint path
            out = next((v.out for v in (*args, *kwargs.values()) if isinstance(getattr(v, "out", None), (str, Path))),
                       None)
        with hold(out):
            return fn(*args, **kwargs)
    return locked


@dataclass(frozen=True)
class LoopConfig:
    """How :func:`fit` runs: ``steps`` steps, where and how often it saves, and what it shows.

    out               checkpoint path (``.npz``) or None for no checkpoints; an existing one is resumed unless
                      ``fresh``.
    identity          the settings that define the run (JSON-able); a checkpoint with other settings is refused.
    checkpoint_every  steps between checkpoints (None: only at the end and on an interrupt).
    progress, desc    whether to show a progress bar, and its label.
    show(metrics)     → a dict shown beside the progress bar; ``on_step(done, metrics)`` after every step;
    stop(done, metrics) → True ends the run early (its state is saved); ``say`` prints the loop's messages.
    """

    steps: int
    out: Path | str | None = None
    identity: dict | None = None
    checkpoint_every: int | None = None
    fresh: bool = False
    progress: bool = True
    desc: str = "train"
    show: Callable | None = None
    on_step: Callable | None = None
    stop: Callable | None = None
    say: Callable = print


@_one_writer
def fit(step, loop: LoopConfig, *, model, optimizer, rngs: dict | None = None, state=None,
        history: dict | None = None) -> dict:
    """Run ``step(i)`` for i = start … ``loop.steps`` − 1 and return the history.

    model, optimizer  what the steps train (saved with ``model.save(path, **extra)``, restored with
                      ``load_state_dict``).
    rngs              name → ``np.random.Generator`` that the steps draw from; the dict may be updated by a step
                      (a new generator under the same name) and is saved and restored whole.
    state             an object with ``state() → dict`` and ``load_state(dict)`` (a method's own state), or None.
    history           a dict to append the metrics to (a new one if None).
    """
    from tqdm.auto import tqdm

    steps, checkpoint_every, fresh, say = loop.steps, loop.checkpoint_every, loop.fresh, loop.say
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive whole number; got {steps!r}")
    if checkpoint_every is not None and (int(checkpoint_every) != checkpoint_every or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive whole number of steps; got {checkpoint_every!r}")
    rngs = {} if rngs is None else rngs
    history = {} if history is None else history
    identity = {} if loop.identity is None else loop.identity
    out = Path(loop.out) if loop.out is not None else None
    dropout = _dropout_generators(model)
    start = 0
    if out is not None and out.exists() and not fresh:
        start = _resume(out, identity, (model, optimizer, state), rngs, dropout, history)
        if start >= steps:
            say(f"{out}: this run is already complete ({start} of {steps} steps); nothing to do (more --steps "
                "continues it, --fresh starts it again)")
            return history
        say(f"resumed from {out} at step {start}")

    def snapshot(done):
        return {"optim": _copy(optimizer.state_dict()), "step": done, "history": _json(history),
                "run": {"identity": _json(identity), "rngs": _rng_states(rngs), "dropout": _rng_states(dropout),
                        "state": _copy(state.state()) if state is not None else {}},
                "weights": model.state_dict()}

    def save(snap):
        if out is not None:
            extra = dict(snap)
            weights = extra.pop("weights")
            model.save(out, weights=weights, **extra)

    every = checkpoint_every or steps
    done = start
    saved = snapshot(start) if out is not None else None
    bar = tqdm(range(start, steps), desc=loop.desc, disable=None if loop.progress else True, initial=start,
               total=steps)
    with _deferred_interrupts() as interrupt:
        try:
            for i in bar:
                metrics = step(i)
                for k, v in metrics.items():
                    history.setdefault(k, []).append(float(v))
                done = i + 1
                if out is not None:
                    saved = snapshot(done)
                if loop.show is not None:
                    bar.set_postfix(loop.show(metrics))
                if loop.on_step is not None:
                    loop.on_step(done, metrics)
                finished = loop.stop is not None and loop.stop(done, metrics)
                if done % every == 0 or done == steps or finished or interrupt["requested"]:
                    save(saved)
                if interrupt["requested"]:
                    raise Interrupted(done, out)
                if finished:
                    break
        except Interrupted:
            raise
        except KeyboardInterrupt:  # a second Ctrl-C, inside a step: keep the last finished one
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # a third Ctrl-C must not cut this save short
            save(saved)
            raise Interrupted(done, out) from None
        finally:
            bar.close()
    return history


def _saved_run(out) -> tuple[dict, dict]:
    """The checkpoint at ``out`` and its record of the run, or a RunMismatch saying why it cannot be resumed."""
    try:
        saved = load(out)
    except NotACheckpoint as e:
        raise RunMismatch(f"{e}, so it cannot be resumed: pass --fresh to overwrite it, or choose another --out") \
            from None
    if "weights" not in saved:
        raise RunMismatch(f"{out} is not a minialign checkpoint (it holds {', '.join(sorted(saved)) or 'nothing'}, "
                          "no model), so it cannot be resumed: pass --fresh to overwrite it, or choose another --out")
    run = saved.get("run")
    if not isinstance(run, dict) or "identity" not in run or "step" not in saved:
        raise RunMismatch(f"{out} holds a model without a record of the run that wrote it, so it cannot be resumed; "
                          "pass --fresh to overwrite it, or choose another --out")
    return saved, run


def _refuse_other_runs(out, saved_identity: dict, identity: dict, only_known: bool = False) -> None:
    saved_identity = json.loads(saved_identity)
    now = json.loads(_json(identity))
    if only_known:
        saved_identity = {k: v for k, v in saved_identity.items() if k in now}
    diffs = _differences(saved_identity, now)
    if diffs:
        raise RunMismatch(f"{out} was written by a different run ({'; '.join(diffs)}): rerun with its settings to "
                          "resume it, or start afresh with --fresh (overwrites it) or another --out")


def check_resumable(out, identity: dict | None = None, fresh: bool = False) -> int | None:
    """Before any work: refuse (RunMismatch) a checkpoint at ``out`` that :func:`fit` could not resume — a damaged
    file, a model without a record of its run, or a run whose identity differs in any of the settings given in
    ``identity`` (a part of the full identity is enough: the others are checked when the run starts). Returns the
    steps the checkpoint has finished (None when there is none to resume)."""
    if fresh or out is None or not Path(out).exists():
        return None
    saved, run = _saved_run(out)
    _refuse_other_runs(out, run["identity"], identity or {}, only_known=True)
    return int(saved["step"])


def _resume(out, identity, trained, rngs, dropout, history) -> int:
    """Load a checkpoint's run into the live objects (``trained``: the model, its optimizer and the method's state,
    or None); returns the number of finished steps."""
    model, optimizer, state = trained
    saved, run = _saved_run(out)
    _refuse_other_runs(out, run["identity"], identity)
    model.load_state_dict(saved["weights"])
    optimizer.load_state_dict(saved["optim"])
    _set_rng_states(rngs, run["rngs"])
    _set_rng_states(dropout, run["dropout"])
    if state is not None:
        state.load_state(run.get("state", {}))
    history.clear()
    history.update(json.loads(saved["history"]))
    return int(saved["step"])

