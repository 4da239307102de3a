"""Modules, optimizers (against torch.optim), the schedule, and atomic .npz checkpoints."""
import os

import numpy as np
import pytest

from minialign import load, save
from minialign.nn import Dropout, Embedding, LayerNorm, Linear, Module
from minialign.optim import SGD, AdamW, clip_grad_norm, cosine_lr
from minialign.tensor import Tensor


class Two(Module):
    def __init__(self):
        self.a = Linear(3, 4, rng=0)
        self.blocks = [LayerNorm(4), Embedding(5, 4, rng=1)]
        self.drop = Dropout(0.1, seed=0)


def test_parameters_are_discovered_with_dotted_names():
    names = [n for n, _ in Two().named_parameters()]
    assert names == ["a.weight", "a.bias", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight"]


def test_train_and_eval_reach_every_submodule():
    m = Two().eval()
    assert not m.drop.training and not m.blocks[0].training
    assert m.train().drop.training


def test_load_state_dict_checks_names_and_shapes():
    m = Two()
    state = m.state_dict()
    state["a.weight"] = np.zeros((4, 3), dtype=np.float32)
    m.load_state_dict(state)
    np.testing.assert_array_equal(m.a.weight.data, 0)
    with pytest.raises(ValueError, match=r"1 missing \(a.bias\)"):
        m.load_state_dict({k: v for k, v in state.items() if k != "a.bias"})
    state["a.weight"] = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"'a.weight' has shape \(4, 3\); the weights give \(3, 3\)"):
        m.load_state_dict(state)


def _quadratic_problem(seed=0):
    rng = np.random.default_rng(seed)
    w0, b0 = rng.standard_normal((4, 3)), rng.standard_normal(4)
    x, target = rng.standard_normal((8, 3)), rng.standard_normal((8, 4))
    return w0, b0, x, target


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_optimizer_steps_match_torch_optim(kind, torch):
    w0, b0, x, target = _quadratic_problem()
    w, b = Tensor(w0.copy(), requires_grad=True), Tensor(b0.copy(), requires_grad=True)
    tw, tb = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    if kind == "adamw":
        ours = AdamW([w, b], lr=0.05, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
        # ours decays matrices only: the torch equivalent is two parameter groups
        theirs = torch.optim.AdamW([{"params": [tw], "weight_decay": 0.1}, {"params": [tb], "weight_decay": 0.0}],
                                   lr=0.05, betas=(0.9, 0.95), eps=1e-8)
    else:
        ours = SGD([w, b], lr=0.05, momentum=0.9, weight_decay=0.01)
        theirs = torch.optim.SGD([tw, tb], lr=0.05, momentum=0.9, weight_decay=0.01)
    for _ in range(10):
        loss = (((Tensor(x) @ w.T + b) - target) ** 2).mean()
        ours.zero_grad()
        loss.backward()
        ours.step()
        tloss = (((torch.tensor(x) @ tw.T + tb) - torch.tensor(target)) ** 2).mean()
        theirs.zero_grad()
        tloss.backward()
        theirs.step()
    np.testing.assert_allclose(w.data, tw.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.data, tb.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_adamw_state_round_trips_and_resumes_identically(tmp_path):
    w0, b0, x, target = _quadratic_problem(1)

    def run(steps, state=None, start=None):
        w = Tensor(w0.copy() if start is None else start, requires_grad=True)
        opt = AdamW([w], lr=0.05)
        if state is not None:
            opt.load_state_dict(state)
        for _ in range(steps):
            loss = ((Tensor(x) @ w.T - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return w, opt

    w_full, _ = run(6)
    w_half, opt = run(3)
    save(tmp_path / "opt.npz", {"optim": opt.state_dict(), "w": w_half.data})
    state = load(tmp_path / "opt.npz")
    w_resumed, _ = run(3, state["optim"], state["w"])
    np.testing.assert_array_equal(w_resumed.data, w_full.data)


def test_clip_grad_norm_matches_torch(torch):
    g = np.random.default_rng(0).standard_normal((3, 4)) * 10
    p = Tensor(np.zeros((3, 4)), requires_grad=True)
    p.grad = g.copy()
    tp = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    tp.grad = torch.tensor(g)
    total = clip_grad_norm([p], 1.0)
    ttotal = torch.nn.utils.clip_grad_norm_([tp], 1.0)
    np.testing.assert_allclose(total, ttotal.item(), rtol=1e-12)
    np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-6)


def test_clip_grad_norm_refuses_nan_gradients():
    p = Tensor(np.zeros((3, 4)), requires_grad=True)
    p.grad = np.array([[np.nan]])
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        clip_grad_norm([p], 1.0)


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    lrs = [cosine_lr(s, 100, 1.0, warmup=10, lr_min=0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert lrs[100] == pytest.approx(0.1)


def test_save_and_load_round_trip_nested_state(tmp_path):
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "meta": {"step": 7, "name": "base", "lr": 0.5}}
    out = load(save(tmp_path / "c.npz", state))
    np.testing.assert_array_equal(out["w"], state["w"])
    assert out["w"].dtype == np.float32
    assert out["meta"] == {"step": 7, "name": "base", "lr": 0.5}


def test_interrupted_save_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    save(path, {"w": np.ones(3)})

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(KeyboardInterrupt):
        save(path, {"w": np.zeros(3)})
    monkeypatch.undo()
    np.testing.assert_array_equal(load(path)["w"], np.ones(3))
    assert os.listdir(tmp_path) == ["c.npz"]  # no temporary file left behind


def test_checkpoints_never_hold_pickles(tmp_path):
    with pytest.raises(TypeError, match="object array"):
        save(tmp_path / "c.npz", {"x": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(TypeError, match="expected an array, a number, a string"):
        save(tmp_path / "c.npz", {"x": object()})
    np.savez(tmp_path / "evil.npz", x=np.array([{"a": 1}], dtype=object))  # a pickled entry written by someone else
    with pytest.raises(ValueError, match="is not a minialign checkpoint .it holds Python objects"):
        load(tmp_path / "evil.npz")
    with pytest.raises(ValueError, match=r"checkpoints are .npz files"):
        save(tmp_path / "c.pkl", {"x": np.ones(1)})


def test_a_save_removes_the_temporary_files_of_earlier_killed_writes_and_only_those(tmp_path):
    from minialign.io import atomic_write

    stale = tmp_path / "ck.npz.k2j4x9.tmp"  # what a write killed between its temporary file and the rename leaves
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / "other.npz.k2j4x9.tmp"  # another file's: not this save's business
    other.write_bytes(b"x")
    save(tmp_path / "ck.npz", {"a": np.arange(3)})
    assert not stale.exists() and other.exists()
    with pytest.raises(RuntimeError):  # a write that fails half-way leaves the earlier file whole, and no temporary
        atomic_write(tmp_path / "ck.npz", lambda fh: (fh.write(b"PK"), (_ for _ in ()).throw(RuntimeError("killed"))))
    np.testing.assert_array_equal(load(tmp_path / "ck.npz")["a"], np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz", "other.npz.k2j4x9.tmp"]
