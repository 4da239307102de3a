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
from pathlib import Path

import numpy as np

from .io import NotACheckpoint, load

__all__ = ["fit", "check_resumable", "Interrupted", "RunMismatch"]


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


def _differences(saved: dict, now: dict) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key, "(not set)"), now.get(key, "(not set)")
        if _json(a) != _json(b):
            out.append(f"{key}: {a} in the checkpoint, {b} now")
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


def fit(step, steps: int, *, model, optimizer, out=None, identity: dict | None = None, rngs: dict | None = None,
        state=None, history: dict | None = None, checkpoint_every: int | None = None, fresh: bool = False,
        progress: bool = True, desc: str = "train", show=None, on_step=None, stop=None, say=print) -> dict:
    """Run ``step(i)`` for i = start … steps − 1 and return the history.

    model, optimizer  what the steps train (saved with ``model.save(path, **extra)``, restored with
                      ``load_state_dict``).
    out               checkpoint path (``.npz``) or None for no checkpoints; an existing one is resumed unless
                      ``fresh``.
    identity          the settings that define the run (JSON-able); a checkpoint with other settings is refused.
    rngs              name → ``np.random.Generator`` that the steps draw from; the dict may be updated by a step
                      (a new generator under the same name) and is saved and restored whole.
    state             an object with ``state() → dict`` and ``load_state(dict)`` (a method's own state), or None.
    show(metrics)     → a dict shown beside the progress bar; ``on_step(done, metrics)`` after every step;
    stop(done, metrics) → True ends the run early (its state is saved).
    """
    from tqdm.auto import tqdm

    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive whole number; got {steps!r}")
    if checkpoint_every is not None and (int(checkpoint_every) != checkpoint_every or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive whole number of steps; got {checkpoint_every!r}")
    rngs = {} if rngs is None else rngs
    history = {} if history is None else history
    identity = {} if identity is None else identity
    out = Path(out) if out is not None else None
    dropout = _dropout_generators(model)
    start = 0
    if out is not None and out.exists() and not fresh:
        start = _resume(out, steps, model, optimizer, identity, rngs, dropout, state, history)
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
    bar = tqdm(range(start, steps), desc=desc, disable=None if progress else True, initial=start, total=steps)
    with _deferred_interrupts() as interrupt:
        try:
            for i in bar:
                metrics = step(i)
                for k, v in metrics.items():
                    history.setdefault(k, []).append(float(v))
                done = i + 1
                if out is not None:
                    saved = snapshot(done)
                if show is not None:
                    bar.set_postfix(show(metrics))
                if on_step is not None:
                    on_step(done, metrics)
                finished = stop is not None and stop(done, metrics)
                if done % every == 0 or done == steps or finished or interrupt["requested"]:
                    save(saved)
                if interrupt["requested"]:
                    raise Interrupted(done, out)
                if finished:
                    break
        except Interrupted:
            raise
        except KeyboardInterrupt:  # a second Ctrl-C, inside a step: keep the last finished one
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
        raise RunMismatch(f"{out} was written by a different run ({'; '.join(diffs)}). Rerun with the checkpoint's "
                          "settings to resume it, or start afresh: --fresh (overwrites it) or another --out")


def check_resumable(out, identity: dict | None = None, fresh: bool = False) -> None:
    """Before any work: refuse (RunMismatch) a checkpoint at ``out`` that :func:`fit` could not resume — a damaged
    file, a model without a record of its run, or a run whose identity differs in any of the settings given in
    ``identity`` (a part of the full identity is enough: the others are checked when the run starts)."""
    if fresh or out is None or not Path(out).exists():
        return
    _, run = _saved_run(out)
    _refuse_other_runs(out, run["identity"], identity or {}, only_known=True)


def _resume(out, steps, model, optimizer, identity, rngs, dropout, state, history) -> int:
    """Load a checkpoint's run into the live objects; returns the number of finished steps."""
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

