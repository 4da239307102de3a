"""The ingredients a method needs, made once the same way for the command line and the tour: a reward (the hidden
r* or a reward model fitted to preference pairs), the pairs themselves, an EBM fitted to constraints, and an f-DPG
target. :func:`prepare` makes what a ``methods.MethodSpec`` names in its ``needs``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class Ingredients:
    """What :func:`prepare` made for a method: a reward (names → rewards), preference pairs (the training
    part), an EBM, and an f-DPG target (batch → log P)."""

    reward: Callable | None = None
    pairs: Any = None
    ebm: Any = None
    target: Callable | None = None
    identity: dict = field(default_factory=dict)


def prepare(spec, opts: dict, base, seed: int, progress: bool, say=print) -> Ingredients:
    """Make the ingredients ``spec`` needs, printing what was measured on the way (the reward model's held-out
    accuracy, the EBM's fit)."""
    from . import tasks
    from .ebm import fit_names_ebm, parse_constraint
    from .prompts import names_prompts
    from .rewards import load_pairs, simulate_preferences, true_reward

    out = Ingredients()
    needs = set(spec.needs)
    if "target" in needs:
        needs.add("constraints" if opts.get("target") == "constraints" else "reward")
    if {"reward", "pairs"} & needs:
        if opts.get("pairs") is not None:
            try:
                pairs = load_pairs(opts["pairs"], base.config.block_size)
            except ValueError as e:
                raise ValueError(f"argument --pairs: {e}") from None
            out.identity["pairs_sha256"] = hashlib.sha256(Path(opts["pairs"]).read_bytes()).hexdigest()[:16]
        else:
            pairs = None
        if "pairs" in needs and pairs is None and opts.get("prompts", "none") != "none":  # triples: (x, y_w, y_l)
            pairs = tasks.simulate_conditional_preferences(base, names_prompts(opts["prompts"]), opts["n_pairs"],
                                                           seed=seed)
        if "pairs" in needs or opts.get("reward") == "model":
            pairs = pairs if pairs is not None else simulate_preferences(base, opts["n_pairs"], seed=seed,
                                                                                 progress=progress)
            out.pairs = tasks.split_pairs(pairs)[0]
        out.reward = true_reward
        if "reward" in needs and opts.get("reward") == "model":
            fit = tasks.fit_names_reward_model(base, pairs, seed=seed, progress=progress)
            say(str(fit))
            out.reward = fit.model.score
    if "constraints" in needs:
        ebm, report = fit_names_ebm(base, [parse_constraint(c) for c in opts["constraint"]],
                                    n_samples=opts["ebm_samples"], seed=seed, progress=progress)
        say(str(report))
        out.ebm = ebm
    if "target" in needs:
        out.target = tasks.ebm_target(out.ebm) if out.ebm is not None else tasks.tilted_target(out.reward, opts["beta"])
    return out
