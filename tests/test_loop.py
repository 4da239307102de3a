"""The one training loop: what a checkpoint holds at step N is exactly the state after N steps, however the run
is stopped; a resume is told, and refused when the run is another; a finished run says so.

Every run here is interrupted in each phase of a step — by an exception raised inside the phase (a second Ctrl-C,
or any interrupt that lands mid-step) and by a SIGINT delivered inside it (the first Ctrl-C, taken at the end of
the step) — then resumed with the same settings, and compared bit for bit with the run that was never stopped.
"""
import contextlib
import functools
import json
import os
import signal

import numpy as np
import pytest

from minialign import Tensor, io
from minialign.gpt import GPT, GPTConfig
from minialign.lab import ExactLab
from minialign.loop import Interrupted, RunMismatch
from minialign.optim import AdamW
from minialign.pretrain import PretrainConfig, pretrain
from minialign.trainers.common import TrainConfig, train, trainable_copy
from minialign.trainers.fdpg import FDPG, FDPGOptions
from minialign.trainers.gdc import DPG
from minialign.trainers.grpo import GRPO, GRPOOptions
from minialign.trainers.proposal import MomentCalibration
from minialign.trainers.rlhf import RLHF, RLHFOptions


@contextlib.contextmanager
def interrupt_at(owner, attr, call: int, when: str, how: str, counts=lambda *args: True):
    """Wrap ``owner.attr`` so that its ``call``-th call (counting from 1; only calls for which ``counts(*args)``
    holds) is interrupted ``before`` or ``after`` it runs: by raising KeyboardInterrupt (``raise``) or by sending
    this process a SIGINT (``signal``)."""
    original = getattr(owner, attr)
    count = {"n": 0}

    def stop():
        if how == "raise":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGINT)

    def wrapped(*args, **kwargs):
        counted = counts(*args)
        count["n"] += counted
        hit = counted and count["n"] == call
        if hit and when == "before":
            stop()
        out = original(*args, **kwargs)
        if hit and when == "after":
            stop()
        return out

    setattr(owner, attr, wrapped)
    try:
        yield count
    finally:
        setattr(owner, attr, original)


def final_state(path):
    state = io.load(path)
    history = json.loads(state["history"])
    history.pop("seconds", None)
    return state["step"], state["weights"], state["optim"], history, state["run"].get("state", {})


def flatten(state, prefix=""):
    out = {}
    for k, v in state.items():
        out.update(flatten(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: v})
    return out


def assert_same_state(a, b):
    step_a, w_a, o_a, h_a, m_a = a
    step_b, w_b, o_b, h_b, m_b = b
    assert step_a == step_b
    for k in w_a:
        np.testing.assert_array_equal(w_a[k], w_b[k], err_msg=k)
    for k in o_a:
        np.testing.assert_array_equal(o_a[k], o_b[k], err_msg=k)
    assert h_a == h_b
    fa, fb = flatten(m_a), flatten(m_b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


# ------------------------------------------------------------------------------------------- pretraining
PRE = PretrainConfig(model=GPTConfig(n_layer=1, n_head=2, n_embd=16, dropout=0.2), steps=6, batch_size=16,
                     eval_every=2, warmup=2)
TRAINING = lambda model, *args: model.training  # noqa: E731  (GPT.loss also serves the evaluation)
# (module or class, attribute, the call interrupted: on step index 3, counting from 0; which calls count)
PRE_PHASES = [
    ("minialign.pretrain", "cosine_lr", 4, None), (GPT, "loss", 4, TRAINING), (Tensor, "backward", 4, None),
    ("minialign.pretrain", "clip_grad_norm", 4, None), (AdamW, "step", 4, None),
    ("minialign.pretrain", "evaluate", 2, None),
]


def _owner(owner):
    import importlib

    return importlib.import_module(owner) if isinstance(owner, str) else owner


@pytest.fixture(scope="module")
def pretrained_whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "pre.npz"
    pretrain(PRE, out=out, progress=False)
    return final_state(out)


@pytest.mark.parametrize("how", ["raise", "signal"])
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("phase", range(len(PRE_PHASES)), ids=lambda i: str(PRE_PHASES[i][1]))
def test_pretraining_interrupted_in_any_phase_resumes_bit_for_bit(phase, when, how, tmp_path, pretrained_whole):
    owner, attr, call, counts = PRE_PHASES[phase]
    out = tmp_path / "pre.npz"
    with interrupt_at(_owner(owner), attr, call, when, how, counts or (lambda *a: True)), \
            pytest.raises(Interrupted) as stopped:
        pretrain(PRE, out=out, progress=False)
    saved_step = io.load(out)["step"]
    assert saved_step == stopped.value.step
    # a raised interrupt keeps the last finished step (3); a SIGINT lets the step in progress finish first (4)
    assert saved_step == (3 if how == "raise" else 4)
    said = []
    pretrain(PRE, out=out, progress=False, log=said.append)
    assert said == [f"resumed from {out} at step {saved_step}"]
    assert_same_state(final_state(out), pretrained_whole)


def test_a_finished_run_says_so_and_another_run_is_refused_naming_the_difference(tmp_path):
    out = tmp_path / "pre.npz"
    pretrain(PRE, out=out, progress=False)
    said = []
    pretrain(PRE, out=out, progress=False, log=said.append)
    assert said and "already complete (6 of 6 steps)" in said[0]
    other = PretrainConfig(model=PRE.model, steps=6, batch_size=16, eval_every=2, warmup=2, lr=1e-3)
    with pytest.raises(RunMismatch, match=r"lr: 0.003 in the checkpoint, 0.001 now.*--fresh"):
        pretrain(other, out=out, progress=False)
    pretrain(other, out=out, progress=False, fresh=True)  # starting afresh overwrites it
    assert json.loads(io.load(out)["run"]["identity"])["lr"] == 1e-3


def test_a_model_file_without_a_run_record_is_not_resumed(tmp_path):
    out = tmp_path / "model.npz"
    GPT(PRE.model).save(out)
    with pytest.raises(RunMismatch, match="without a record of the run"):
        pretrain(PRE, out=out, progress=False)


# ------------------------------------------------------------------------------------------- trainers
def lab_gpt(seed, scale=0.5):
    model = GPT(GPTConfig(vocab_size=3, block_size=4, n_layer=1, n_head=2, n_embd=8), seed=seed).astype(np.float64)
    rng = np.random.default_rng(seed + 100)
    for p in model.parameters():
        p.data = p.data + scale * rng.standard_normal(p.shape)
    return model.eval()


A = lab_gpt(0)
LAB = ExactLab.for_model(A)
REWARD = np.random.default_rng(1).normal(size=len(LAB))


@functools.lru_cache(maxsize=None)
def log_a():
    """log a(x) over the lab, on first use: collecting the tests runs no model code (in a course student's tree
    the model may still be a stub, and an error at import would stop every test of the run)."""
    return np.log(LAB.distribution(A))


def by_row(values):
    return lambda batch: np.asarray(values)[LAB.index_of(batch.tokens)]


def pair_methods() -> dict:
    """Every pair method of the library (a ``trainers.pairs.PairMethod`` subclass in ``minialign/trainers/``), by
    name: they all train on the same pairs here, so a new one is resumed bit for bit without an edit."""
    import importlib
    import pkgutil

    import minialign.trainers
    from minialign.trainers.pairs import PairMethod

    for module in pkgutil.iter_modules(minialign.trainers.__path__):
        importlib.import_module(f"minialign.trainers.{module.name}")
    return {cls.name: cls for cls in PairMethod.__subclasses__()}


def method_of(name, policy):
    if name in ("rloo", "ppo"):
        options = RLHFOptions(beta=0.5, algo=name, ppo_epochs=3, kl_target=0.2 if name == "ppo" else None)
        return RLHF(A, by_row(REWARD), options)
    if name in pair_methods():
        idx = np.random.default_rng(2).integers(0, len(LAB), (40, 2))
        return pair_methods()[name](A, LAB.sequences[idx[:, 0]], LAB.sequences[idx[:, 1]], beta=0.5)
    if name == "gdc":
        phi = (LAB.sequences[:, 0] == 1).astype(float)
        cal = MomentCalibration(by_row(log_a()), lambda batch: phi[LAB.index_of(batch.tokens)], [0.0], [0.6], rate=0.5)
        return DPG(A, policy, cal, proposal="adaptive", baseline=True)
    if name == "grpo":
        return GRPO(A, by_row(REWARD), GRPOOptions(beta=0.1, epochs=2))
    return FDPG(A, policy, by_row(log_a() + REWARD), FDPGOptions(f="js", proposal="adaptive"))


# the runs below → the method of the table (minialign.methods.METHODS) each one stands for
TABLE_METHOD = {"rloo": "rlhf", "ppo": "rlhf", "gdc": "gdc", "fdpg": "fdpg", "grpo": "grpo",
                **{name: name for name in pair_methods()}}
METHODS = list(TABLE_METHOD)


def test_every_method_of_the_table_is_resumed_bit_for_bit_below():
    """A method of the command line's table without a run here is named (add it to method_of)."""
    from minialign.methods import METHODS as TABLE

    missing = sorted(set(TABLE) - set(TABLE_METHOD.values()))
    assert not missing, f"no interrupted-and-resumed run for: {', '.join(missing)}"


CFG = TrainConfig(steps=7, batch_size=16, lr=3e-2, seed=0, checkpoint_every=3)
TRAIN_PHASES = [("draw", 4), ("loss", 4), (Tensor, "backward"), (AdamW, "step"), ("after_step", 4)]


def run(name, out, inject=None):
    policy = trainable_copy(A)
    method = method_of(name, policy)
    context = contextlib.nullcontext()
    if inject is not None:
        target, when, how = inject
        owner, attr = (method, target[0]) if isinstance(target[0], str) else target
        context = interrupt_at(owner, attr, 4, when, how)
    with context:
        train(method, policy, CFG, out=out, progress=False)
    return final_state(out)


@pytest.fixture(scope="module")
def trained_whole(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainers")
    return {name: run(name, root / f"{name}.npz") for name in METHODS}


@pytest.mark.parametrize("how", ["raise", "signal"])
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("phase", range(len(TRAIN_PHASES)), ids=lambda i: str(TRAIN_PHASES[i][0] if isinstance(
    TRAIN_PHASES[i][0], str) else TRAIN_PHASES[i][1]))
@pytest.mark.parametrize("name", METHODS)
def test_trainers_interrupted_in_any_phase_resume_bit_for_bit(name, phase, when, how, tmp_path, trained_whole):
    out = tmp_path / f"{name}.npz"
    target = TRAIN_PHASES[phase]
    if name in pair_methods() and target[0] == "after_step":
        target = ("draw", 4)  # a pair method has no state to update after a step; draw is its own phase
    with pytest.raises(Interrupted) as stopped:
        run(name, out, inject=(target, when, how))
    assert io.load(out)["step"] == stopped.value.step == (3 if how == "raise" else 4)
    assert_same_state(run(name, out), trained_whole[name])


def test_a_resume_with_other_settings_is_refused_and_names_them(tmp_path):
    out = tmp_path / "rlhf.npz"
    run("rloo", out)
    policy = trainable_copy(A)
    other = RLHF(A, by_row(REWARD), RLHFOptions(beta=1.0, algo="rloo"))
    with pytest.raises(RunMismatch, match=r"beta: 0.5 in the checkpoint, 1.0 now"):
        train(other, policy, CFG, out=out, progress=False)
    dpo = method_of("dpo", policy)
    with pytest.raises(RunMismatch, match=r"method: rlhf in the checkpoint, dpo now"):
        train(dpo, policy, CFG, out=out, progress=False)
