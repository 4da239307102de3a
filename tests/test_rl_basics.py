"""Chapter 04: generation as an MDP (Eq. 4.1–4.2), the policy gradient and its baselines on the exact lab
(Eq. 4.3–4.4), and the policy-gradient theorem on a tabular MDP against seed 004's "policy gradient" (Eq. 4.8).

The lab model is a tiny float64 GPT (vocabulary 3 with EOS, horizon 4: 15 sequences). Its exact policy
gradient is one backward pass through the enumeration; Monte-Carlo estimators are compared with it.
"""
from functools import lru_cache

import numpy as np
import pytest
from helpers import assert_close, assert_equal

from minialign.lab import ExactLab, flat_grad, lab_model, score_function_gradient
from minialign.mdp import TabularMDP, evaluate_policy, seed004_mdp, value_iteration
from minialign.tensor import Tensor
from minialign.trainers.common import sample_batch
from minialign.trainers.policy_gradient import leave_one_out_baseline, weighted_surrogate


# ------------------------------------------------------------------------------------------------ the lab
def flatten(grads: dict) -> np.ndarray:
    return np.concatenate([np.ravel(g) for g in grads.values()])


@lru_cache(maxsize=None)
def lab_setup(seed=0):
    """(model, lab, π over the enumeration, reward R(x) = number of characters, score matrix S).

    S[x] = ∇_θ log π_θ(x) for every enumerated x (one exact backward pass each), so that any Monte-Carlo
    estimate Σ_i c_i ∇ log π(x_i) is a combination of rows of S.
    """
    model = lab_model(seed, vocab_size=3, block_size=4, scale=0.5)
    lab = ExactLab.for_model(model)
    p = lab.distribution(model)
    reward = lab.lengths.astype(np.float64)
    eye = np.eye(len(lab))
    S = np.stack([flatten(score_function_gradient(model, lab, eye[i])) for i in range(len(lab))])
    return model, lab, p, reward, S


def exact_policy_gradient(model, lab, reward) -> np.ndarray:
    """Eq. (4.3) with no sampling: Σ_x π(x) R(x) ∇ log π(x)."""
    return flatten(score_function_gradient(model, lab, lab.distribution(model) * reward))


def autograd_of_objective(model, lab, reward) -> np.ndarray:
    """∇_θ Σ_x π_θ(x) R(x) by reverse mode through the whole enumeration (no score function anywhere)."""
    model.zero_grad()
    (lab.log_probs(model).exp() * Tensor(reward)).sum().backward()
    g = flat_grad(model)
    model.zero_grad()
    return g


# ------------------------------------------------------------------------------- Eq. (4.1): the policy
def test_sequence_probability_is_a_product_of_softmax_policy_steps():
    """Eq. (4.1): π(x) = Π_t softmax(z(x_<t))_{x_t}, with the logits read off the GPT's forward pass, up to and
    including the first EOS (the forced EOS at the last position has probability 1)."""
    model, lab, p, _, _ = lab_setup()
    x = lab.sequences
    cfg = model.config
    inp = np.concatenate([np.full((len(x), 1), cfg.bos_id), x[:, :-1]], axis=1)
    z = np.asarray(model(inp).numpy(), dtype=np.float64)  # logits [n, L, V]
    policy = np.exp(z - z.max(-1, keepdims=True))
    policy /= policy.sum(-1, keepdims=True)  # π(a | s) = e^{z_a} / Σ_b e^{z_b}, s = the prefix
    step = np.take_along_axis(policy, x[:, :, None], axis=2)[:, :, 0]
    first_eos = (x == cfg.eos_id).argmax(axis=1)
    t = np.arange(cfg.block_size)
    acted = (t[None, :] <= first_eos[:, None]) & (t[None, :] < cfg.block_size - 1)
    product = np.where(acted, step, 1.0).prod(axis=1)
    np.testing.assert_allclose(product, p, rtol=1e-12, atol=0)
    assert abs(product.sum() - 1.0) < 1e-12


def test_seed001_policy_formula_holds_for_every_distribution_so_it_defines_nothing():
    """Seed 001 writes π(a|s) = e^{log π(a|s)} / Σ_a e^{log π(a|s)}. That is true of *any* distribution (the
    denominator is 1), so it cannot say what the policy is. The policy is a softmax of logits, and logits are
    free up to one additive constant per state."""
    rng = np.random.default_rng(0)
    for _ in range(100):
        q = rng.dirichlet(np.full(rng.integers(2, 10), 0.5))
        np.testing.assert_allclose(np.exp(np.log(q)) / np.exp(np.log(q)).sum(), q, rtol=1e-12)
        z = rng.normal(size=q.shape) * 3
        soft = np.exp(z) / np.exp(z).sum()
        np.testing.assert_allclose(np.exp(z + 5.0) / np.exp(z + 5.0).sum(), soft, rtol=1e-12)
        assert np.abs(soft - q).max() > 1e-6  # different logits, different policy


# Seed 001, §5.2 and §5.4: its example code and the report it prints. The few lines needed are quoted here
# (the code is Python; the report is numbers), so that nothing depends on the seed file.
SEED001_REPORT = [  # class, precision, recall, f1-score, support, as printed in §5.4
    (0, 0.923, 0.902, 0.914, 1668), (1, 0.931, 0.895, 0.914, 257), (2, 0.898, 0.854, 0.879, 702),
    (3, 0.905, 0.868, 0.888, 216), (4, 0.912, 0.897, 0.899, 1661), (5, 0.919, 0.907, 0.914, 835),
    (6, 0.932, 0.916, 0.920, 1156), (7, 0.933, 0.920, 0.923, 257), (8, 0.927, 0.907, 0.915, 702),
    (9, 0.925, 0.911, 0.919, 216)]
SEED001_AVERAGES = {"micro avg": (0.925, 0.920, 0.923, 46435), "macro avg": (0.923, 0.920, 0.922, 46435),
                    "weighted avg": (0.925, 0.920, 0.923, 46435)}


def test_seed001_argmax_over_dim_2_fails_on_a_sequence_classifiers_logits():
    """Seed 001's evaluation (§5.2) runs ``outputs.logits.argmax(dim=2)`` on a ``BertForSequenceClassification``,
    whose logits are 2-D, [batch, num_labels]: there is no dimension 2, and torch raises. The next lines iterate
    each prediction as if it were a sequence of token tags (``for _id in pred_tokens``); a sequence
    classifier's prediction is one integer per example, which is not iterable."""
    torch = pytest.importorskip("torch")
    logits = torch.randn(16, 10)  # batch 16, num_labels = len(label2id) = 10
    with pytest.raises(IndexError):
        logits.argmax(dim=2)
    preds = logits.argmax(dim=1).tolist()  # what a sequence classifier predicts: one label per example
    assert len(preds) == 16 and all(isinstance(i, int) for i in preds)
    id2tag = {i: str(i) for i in range(10)}
    with pytest.raises(TypeError):
        [id2tag[_id] for _id in preds[0]]  # the seed's per-token decoding of one prediction


def report_inconsistencies(rows, averages, digits=3):
    """What a classification report printed to ``digits`` decimals cannot show if it came from one computation:
    an F1 that is not the harmonic mean of its precision and recall (beyond the rounding of all three), average
    rows whose support is not the sum of the classes' supports, and a macro average that is not the mean of
    the rows (beyond rounding)."""
    half = 0.5 * 10.0 ** -digits
    bad = []
    for c, prec, rec, f1, _ in rows:
        corners = [2 * a * b / (a + b) for a in (prec - half, prec + half) for b in (rec - half, rec + half)]
        if not min(corners) - half <= f1 <= max(corners) + half:
            bad.append(f"class {c}: F1 {f1} is not 2PR/(P+R) = {2 * prec * rec / (prec + rec):.4f}")
    total = sum(r[4] for r in rows)
    for name, (_, _, _, support) in averages.items():
        if support != total:
            bad.append(f"{name}: support {support} but the classes sum to {total}")
    macro = averages["macro avg"]
    for j, what in enumerate(("precision", "recall", "F1")):
        mean = np.mean([r[1 + j] for r in rows])
        if abs(macro[j] - mean) > 2 * half:
            bad.append(f"macro {what} {macro[j]} but the rows average {mean:.4f}")
    return bad


def test_seed001_report_contradicts_itself_where_a_computed_report_cannot():
    """Seed 001 prints (§5.4) a ten-class report for its sequence classifier. A report computed from one set of
    predictions passes every check of ``report_inconsistencies`` (the control below builds one from a random
    confusion matrix and rounds it to three decimals). The seed's fails all of them: every row's F1 differs
    from the harmonic mean of its precision and recall (class 4: 0.899 printed, 0.904 from P and R); the ten
    supports sum to 7,670 while the average rows claim 46,435; and the macro averages are not the means of the
    rows (recall 0.920 printed, 0.898 from the rows). And with one label per example, micro precision and
    micro recall are both the accuracy, so they cannot differ; the seed prints 0.925 and 0.920."""
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 50, size=(10, 10)) + np.diag(rng.integers(500, 2000, size=10))
    tp = np.diag(confusion).astype(float)
    prec, rec = tp / confusion.sum(axis=0), tp / confusion.sum(axis=1)
    f1 = 2 * prec * rec / (prec + rec)
    support = confusion.sum(axis=1)
    rows = [(c, round(prec[c], 3), round(rec[c], 3), round(f1[c], 3), int(support[c])) for c in range(10)]
    macro = (round(prec.mean(), 3), round(rec.mean(), 3), round(f1.mean(), 3), int(support.sum()))
    assert report_inconsistencies(rows, {"macro avg": macro}) == []
    bad = report_inconsistencies(SEED001_REPORT, SEED001_AVERAGES)
    assert sum(b.startswith("class") for b in bad) == 10, bad
    assert sum("support 46435 but the classes sum to 7670" in b for b in bad) == 3, bad
    assert any(b.startswith("macro recall 0.92") for b in bad), bad
    # one label per example (a sequence classifier): every error is one false positive and one false negative,
    # so micro precision = micro recall = accuracy. The control's are equal; the seed prints 0.925 and 0.920.
    micro_p = tp.sum() / confusion.sum(axis=0).sum()
    micro_r = tp.sum() / confusion.sum(axis=1).sum()
    assert micro_p == micro_r
    micro = SEED001_AVERAGES["micro avg"]
    assert abs(micro[0] - micro[1]) > 2 * 0.0005, micro


# ---------------------------------------------------------------------------- Eq. (4.2): the objective
def test_mean_return_of_sampled_sequences_estimates_the_exact_objective():
    """Eq. (4.2): J(θ) = E_{x∼π}[R(x)] = Σ_x π(x) R(x). The mean reward of n generated sequences lies within
    4 standard errors (exact variance from the enumeration) of the exact value; |z| > 4 has probability
    below 1e-4 for a normal mean."""
    model, lab, p, reward, _ = lab_setup()
    n = 4000
    tokens, _ = model.generate(n, rng=np.random.default_rng(1))
    mean = reward[lab.index_of(tokens)].mean()
    exact = lab.expectation(p, reward)
    se = np.sqrt(lab.expectation(p, (reward - exact) ** 2) / n)
    assert abs(mean - exact) < 4 * se, (mean, exact, se)


# ---------------------------------------------------------------------- Eq. (4.3): the policy gradient
def test_exact_reinforce_expectation_equals_autograd_of_the_objective():
    """Eq. (4.3) exactly: Σ_x π(x)R(x)∇log π(x) (one backward pass with the weights π·R held fixed) is the
    gradient of Σ_x π(x)R(x) taken by autograd through the whole enumeration. Float64 throughout, so the two
    agree to rounding (1e-10 relative). A wrong weight (R alone, without π) is far off."""
    model, lab, p, reward, _ = lab_setup()
    truth = autograd_of_objective(model, lab, reward)
    reinforce = exact_policy_gradient(model, lab, reward)
    assert np.linalg.norm(truth) > 1.0
    assert np.abs(reinforce - truth).max() <= 1e-10 * np.abs(truth).max()
    unweighted = flatten(score_function_gradient(model, lab, reward))
    assert np.linalg.norm(unweighted - truth) > 0.5 * np.linalg.norm(truth)


def test_constant_baseline_changes_nothing_in_expectation():
    """Eq. (4.3) with b ≠ 0: Σ_x π(x) b ∇log π(x) = b ∇Σ_x π(x) = b ∇1 = 0, so any constant b leaves the
    exact gradient unchanged (to rounding). A baseline that depends on the sequence itself, b(x) = R(x)/2,
    does change it: it halves the gradient."""
    model, lab, p, reward, _ = lab_setup()
    g = exact_policy_gradient(model, lab, reward)
    scale = np.abs(g).max()
    for b in (-3.0, 0.7, lab.expectation(p, reward), 25.0):
        g_b = flatten(score_function_gradient(model, lab, p * (reward - b)))
        assert np.abs(g_b - g).max() <= 1e-10 * max(1.0, abs(b)) * scale, b
    g_self = flatten(score_function_gradient(model, lab, p * (reward - reward / 2)))
    np.testing.assert_allclose(g_self, g / 2, rtol=0, atol=1e-10 * scale)
    assert np.linalg.norm(g_self - g) > 0.4 * np.linalg.norm(g)


def test_rewards_to_go_have_the_same_expectation_as_the_whole_return():
    """∇log π(x) = Σ_t ∇log π(x_t|x_<t) (Eq. 2.7 differentiated), and with a reward r_t after each token a
    token need only be credited with the rewards that come after it, G_t = Σ_{t'≥t} r_t': the rewards before
    it are fixed by the prefix, and E[∇log π(x_t|x_<t) | x_<t] = 0. Checked exactly on the lab. Crediting each
    token with the rewards *before* it instead (Σ_{t'≤t} r_t') gives a different vector."""
    model, lab, p, _, _ = lab_setup()
    x = lab.sequences
    cfg = model.config
    first_eos = (x == cfg.eos_id).argmax(axis=1)
    t = np.arange(cfg.block_size)
    acted = (t[None, :] <= first_eos[:, None]) & (t[None, :] < cfg.block_size - 1)
    r_tok = np.where(acted, np.where(x == 1, 1.0, np.where(x == 2, -0.5, 2.0)), 0.0)  # EOS pays 2
    total = r_tok.sum(axis=1)
    to_go = np.cumsum(r_tok[:, ::-1], axis=1)[:, ::-1]
    so_far = np.cumsum(r_tok, axis=1)

    def token_level(credit):
        model.zero_grad()
        (model.token_logprobs(x) * Tensor(p[:, None] * credit)).sum().backward()
        g = flat_grad(model)
        model.zero_grad()
        return g

    whole = exact_policy_gradient(model, lab, total)
    scale = np.abs(whole).max()
    assert np.abs(token_level(np.repeat(total[:, None], cfg.block_size, axis=1)) - whole).max() <= 1e-10 * scale
    assert np.abs(token_level(to_go) - whole).max() <= 1e-10 * scale
    assert np.linalg.norm(token_level(so_far) - whole) > 0.1 * np.linalg.norm(whole)


# --------------------------------------------------------------------------- Eq. (4.4): RLOO, measured
def batch_errors(coef, idx, S, g):
    """‖Σ_i c_i S[x_i] − g‖² for each batch (rows of ``idx``), via the Gram matrix of S."""
    n_batches, k = idx.shape
    C = np.zeros((n_batches, len(S)))
    np.add.at(C, (np.repeat(np.arange(n_batches), k), idx.ravel()), coef.ravel())
    G = S @ S.T
    return np.einsum("ni,ij,nj->n", C, G, C) - 2 * C @ (S @ g) + g @ g, C @ S


@pytest.mark.task4_4
def test_rloo_is_unbiased_and_lowers_the_variance():
    """Eq. (4.4) against plain REINFORCE, k = 4 samples per batch, 20,000 batches (seed 0).

    Both are unbiased; the mean squared distance to the exact gradient is their total variance. For plain
    REINFORCE it has the closed form (1/k)(Σ_x π R² ‖∇log π‖² − ‖g‖²): the measured value must agree within
    4 standard errors, which checks the measurement. RLOO must then cut it at least in half; it cuts it to
    about 0.39 of plain REINFORCE here (the rewards, the lengths 0–3, have mean 1.25, which plain REINFORCE
    multiplies into the noise)."""
    model, lab, p, reward, S = lab_setup()
    g = (p * reward) @ S
    k, n_batches = 4, 20_000
    idx = np.random.default_rng(0).choice(len(lab), size=(n_batches, k), p=p)
    R = reward[idx]
    plain_err, plain_g = batch_errors(R / k, idx, S, g)
    rloo_coef = (R - np.stack([leave_one_out_baseline(r) for r in R])) / k
    rloo_err, rloo_g = batch_errors(rloo_coef, idx, S, g)
    exact_plain = (np.sum(p * reward**2 * np.einsum("ij,ij->i", S, S)) - g @ g) / k
    assert abs(plain_err.mean() - exact_plain) < 4 * plain_err.std() / np.sqrt(n_batches), \
        (plain_err.mean(), exact_plain)
    ratio = rloo_err.mean() / plain_err.mean()
    assert ratio < 0.5, ratio
    # unbiased: along g and along three random directions the batch mean is within 4 standard errors
    rng = np.random.default_rng(1)
    for u in [g / np.linalg.norm(g)] + [v / np.linalg.norm(v) for v in rng.normal(size=(3, len(g)))]:
        proj = rloo_g @ u
        assert abs(proj.mean() - g @ u) < 4 * proj.std() / np.sqrt(n_batches), (proj.mean(), g @ u)


def rloo_total_variance(p, reward, S, k) -> float:
    """tr Var(ĝ_RLOO) for k samples, exactly: V_μ/k + (σ_R² E‖s‖² + ‖g‖²)/(k(k − 1)), with s = ∇log π(x),
    g = E[R s], μ = E[R], σ_R² = Var(R) and V_μ = E[(R − μ)²‖s‖²] − ‖g‖² the per-sample variance with the
    ideal constant baseline b = μ (chapter 04, Section 2)."""
    sq = np.einsum("ij,ij->i", S, S)
    g = (p * reward) @ S
    mu = p @ reward
    var_r = p @ (reward - mu) ** 2
    v_mu = p @ ((reward - mu) ** 2 * sq) - g @ g
    return v_mu / k + (var_r * (p @ sq) + g @ g) / (k * (k - 1))


def test_rloo_variance_is_the_ideal_baseline_variance_plus_a_one_over_k_k_minus_1_term():
    """RLOO's variance does not fall like 1/k. Writing a_i = R_i − μ, the estimate is the ideal-baseline
    estimate (1/k)Σ a_i s_i minus (1/(k(k−1)))Σ_{i≠j} a_j s_i; the two are uncorrelated and the second has
    total variance (σ_R² E‖s‖² + ‖g‖²)/(k(k−1)). Measured over 20,000 batches per k (seeds fixed), the mean
    squared error agrees with that formula within 4 standard errors for k = 2, 4, 8, while k·Var falls
    measurably between k = 2 and k = 8 (a 1/k law would keep it constant), and the ratio to the ideal
    baseline's V_μ/k is above 1 and shrinks towards it like 1/(k − 1)."""
    model, lab, p, reward, S = lab_setup()
    g = (p * reward) @ S
    n_batches = 20_000
    measured, se = {}, {}
    for k in (2, 4, 8):
        idx = np.random.default_rng(100 + k).choice(len(lab), size=(n_batches, k), p=p)
        R = reward[idx]
        loo = np.stack([leave_one_out_baseline(r) for r in R])
        err, _ = batch_errors((R - loo) / k, idx, S, g)
        measured[k], se[k] = err.mean(), err.std() / np.sqrt(n_batches)
        exact = rloo_total_variance(p, reward, S, k)
        assert abs(measured[k] - exact) < 4 * se[k], (k, measured[k], exact, se[k])
    # k·Var(k) falls: 2·Var(2) − 8·Var(8) is many standard errors above 0
    gap = 2 * measured[2] - 8 * measured[8]
    assert gap > 4 * np.hypot(2 * se[2], 8 * se[8]), (gap, se)
    sq = np.einsum("ij,ij->i", S, S)
    mu = p @ reward
    v_mu = p @ ((reward - mu) ** 2 * sq) - g @ g
    excess = [rloo_total_variance(p, reward, S, k) / (v_mu / k) - 1 for k in (2, 4, 8)]
    assert all(e > 0 for e in excess)
    np.testing.assert_allclose(np.array(excess) * np.array([1, 3, 7]), excess[0], rtol=1e-12)


def test_monte_carlo_reinforce_is_unbiased():
    """Eq. (4.3) by Monte Carlo through the trainers' own path: ``sample_batch`` draws k = 2 sequences,
    ``weighted_surrogate`` with c_i = R(x_i)/k is the loss, and minus its gradient is the estimate. Over 600
    batches (seed 0) the mean, projected on g and on three random directions, is within 4 exact standard
    errors of the exact gradient. The same batches give a detectably biased estimate if the baseline includes
    the sample's own reward (b_i = mean of all k, expectation (1 − 1/k)·g): |z| > 4 along g."""
    model, lab, p, reward, S = lab_setup()
    g = (p * reward) @ S
    k, n_batches = 2, 600
    rng = np.random.default_rng(0)
    estimates, rows = [], []
    for _ in range(n_batches):
        batch = sample_batch(model, k, rng)
        i = lab.index_of(batch.tokens)
        model.zero_grad()
        weighted_surrogate(model.sequence_logprob(batch.tokens), batch.weights * reward[i]).backward()
        estimates.append(-flat_grad(model))
        rows.append(i)
    model.zero_grad()
    estimates, rows = np.array(estimates), np.array(rows)
    np.testing.assert_allclose(estimates[0], (reward[rows[0]] / k) @ S[rows[0]], rtol=0, atol=1e-10 * np.abs(g).max())
    rng_u = np.random.default_rng(1)
    directions = [g / np.linalg.norm(g)] + [v / np.linalg.norm(v) for v in rng_u.normal(size=(3, len(g)))]
    for u in directions:
        su = S @ u
        se = np.sqrt((lab.expectation(p, reward**2 * su**2) - (g @ u) ** 2) / k / n_batches)
        diff = (estimates @ u).mean() - g @ u
        assert abs(diff) < 4 * se, (diff / se, u[:3])
    R = reward[rows]
    biased = (R - R.mean(axis=1, keepdims=True)) / k
    proj = np.einsum("ni,nid->nd", biased, S[rows]) @ directions[0]
    z_biased = (proj.mean() - g @ directions[0]) / (proj.std() / np.sqrt(n_batches))
    assert z_biased < -4, z_biased


# ---------------------------------------------------------- Eq. (4.8): the policy-gradient theorem, tabular
def softmax_policy(theta: np.ndarray) -> np.ndarray:
    """π(a|s) = softmax(θ[s])_a, one row of logits per state."""
    e = np.exp(theta - theta.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def tabular_objective(mdp: TabularMDP, mu: np.ndarray, theta: np.ndarray) -> float:
    """J(θ) = Σ_s μ(s) V^π(s), with V^π from Eq. (4.5) solved exactly."""
    return float(mu @ evaluate_policy(mdp, softmax_policy(theta)))


def policy_gradient_theorem(mdp: TabularMDP, mu: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Eq. (4.8) for a tabular softmax policy: ∇J = Σ_s d^π(s) Σ_a π(a|s) ∇log π(a|s) Q^π(s,a), with
    d^π = μᵀ(I − γP_π)⁻¹ the discounted state visitation. For θ[s,b]: d^π(s) π(b|s) (Q^π(s,b) − V^π(s))."""
    pi = softmax_policy(theta)
    V = evaluate_policy(mdp, pi)
    Q = mdp.expected_reward() + mdp.gamma * mdp.P @ V
    P_pi = np.einsum("sa,sat->st", pi, mdp.P)
    d = np.linalg.solve((np.eye(mdp.n_states) - mdp.gamma * P_pi).T, mu)
    return d[:, None] * pi * (Q - V[:, None])


def seed004_policy_gradient(mdp: TabularMDP, theta: np.ndarray) -> np.ndarray:
    """∇_θ of seed 004's J(θ) = Σ_{s,a} π(a|s) R(s,a): π(b|s)(r(s,b) − Σ_a π(a|s) r(s,a))."""
    pi = softmax_policy(theta)
    r = mdp.expected_reward()
    return pi * (r - (pi * r).sum(axis=1, keepdims=True))


def finite_difference_gradient(f, theta: np.ndarray, h: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(theta)
    for i in np.ndindex(theta.shape):
        e = np.zeros_like(theta)
        e[i] = h
        grad[i] = (f(theta + e) - f(theta - e)) / (2 * h)
    return grad


def small_mdp(seed=3, S=4, A=2, gamma=0.9):
    rng = np.random.default_rng(seed)
    mdp = TabularMDP(rng.dirichlet(np.ones(S), size=(S, A)), rng.normal(size=(S, A)), gamma)
    return mdp, rng.dirichlet(np.ones(S)), rng.normal(size=(S, A))


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_policy_gradient_theorem_matches_finite_differences(seed):
    """Eq. (4.8) against central differences (h = 1e-6) of the exactly evaluated J(θ) = μᵀV^π; the
    difference formula's error is O(h²) plus rounding of order 1e-10 / h, so 1e-7 relative is ample."""
    mdp, mu, theta = small_mdp(seed)
    fd = finite_difference_gradient(lambda th: tabular_objective(mdp, mu, th), theta)
    pg = policy_gradient_theorem(mdp, mu, theta)
    assert np.abs(pg - fd).max() <= 1e-7 * np.abs(fd).max(), (pg, fd)


@pytest.mark.parametrize("seed", [3, 4])
def test_policy_gradient_theorem_as_an_expectation_needs_one_over_one_minus_gamma(seed):
    """Eq. (4.8), second form: d^π = μᵀ(I − γP_π)⁻¹ sums to 1/(1 − γ), so the expectation over the normalised
    d̄^π = (1 − γ)d^π needs the factor 1/(1 − γ). With it the expectation equals central differences of J;
    without it the result is the same vector times (1 − γ) — here 0.1 of the gradient."""
    mdp, mu, theta = small_mdp(seed)
    fd = finite_difference_gradient(lambda th: tabular_objective(mdp, mu, th), theta)
    pi = softmax_policy(theta)
    V = evaluate_policy(mdp, pi)
    Q = mdp.expected_reward() + mdp.gamma * mdp.P @ V
    d = np.linalg.solve((np.eye(mdp.n_states) - mdp.gamma * np.einsum("sa,sat->st", pi, mdp.P)).T, mu)
    assert d.sum() == pytest.approx(1 / (1 - mdp.gamma), rel=1e-12)
    d_bar = (1 - mdp.gamma) * d
    expectation = d_bar[:, None] * pi * (Q - V[:, None])  # E_{s∼d̄, a∼π}[∇_θ log π(a|s) Q(s,a)], tabular softmax
    np.testing.assert_allclose(expectation / (1 - mdp.gamma), fd, rtol=0, atol=1e-7 * np.abs(fd).max())
    assert np.abs(expectation - fd).max() > 0.5 * np.abs(fd).max()


def delayed_reward_chain(gamma=0.95, stop=0.3, finish=1.0) -> TabularMDP:
    """States 0, 1, 2 in a row and an absorbing state 3 ("done"). In states 0–2, action 0 ("stop") pays
    ``stop`` now and ends; action 1 ("go") pays nothing and moves on, except from state 2, where it pays
    ``finish`` and ends. Like generation: the large reward comes only at the end."""
    P, R = np.zeros((4, 2, 4)), np.zeros((4, 2))
    for s in range(3):
        P[s, 0, 3], R[s, 0] = 1.0, stop
        P[s, 1, s + 1] = 1.0
    R[2, 1] = finish
    P[3, :, 3] = 1.0
    return TabularMDP(P, R, gamma, state_names=(0, 1, 2, "done"), action_names=("stop", "go"))


def test_seed004_objective_gradient_is_not_the_policy_gradient():
    """Seed 004 (§4.3) calls J(θ) = Σ_{s,a} π(a|s)R(s,a) the policy gradient. On the delayed-reward chain,
    from state 0 under the uniform policy, the true ∇J (finite differences of μᵀV^π) raises "go" in every
    state; the seed's expression raises "stop" in states 0 and 1 (wrong sign), and is off by more than the
    norm of ∇J. Weighting states by d^π does not rescue it: the immediate reward in place of Q^π is the
    error. Only with no future (γ = 0) and every state equally likely do the seed's sum and J agree (up to
    the factor S), which the last check shows on a random MDP."""
    mdp, mu, theta = delayed_reward_chain(), np.array([1.0, 0, 0, 0]), np.zeros((4, 2))
    fd = finite_difference_gradient(lambda th: tabular_objective(mdp, mu, th), theta)
    seed = seed004_policy_gradient(mdp, theta)
    assert (fd[:3, 1] > 0).all(), fd  # "go" should become more likely in every live state
    assert (seed[:2, 1] < 0).all() and seed[2, 1] > 0, seed  # the seed pushes "stop" in states 0 and 1
    assert np.linalg.norm(seed - fd) > np.linalg.norm(fd), (seed, fd)
    pi = softmax_policy(theta)
    d = np.linalg.solve((np.eye(4) - mdp.gamma * np.einsum("sa,sat->st", pi, mdp.P)).T, mu)
    # J is the seed's sum with each state weighted by d^π(s), a weight that itself depends on θ
    assert tabular_objective(mdp, mu, theta) == pytest.approx(d @ (pi * mdp.expected_reward()).sum(axis=1), abs=1e-12)
    myopic = d[:, None] * seed  # d^π(s) π(b|s)(r(s,b) − Σ_a π r): immediate reward in place of Q^π
    assert (myopic[:2, 1] < 0).all(), myopic
    # the one case where the seed's sum is the objective: no future (γ = 0), every state equally likely
    rand, _, theta = small_mdp(3)
    bandit = TabularMDP(rand.P, rand.R, 0.0)
    fd0 = finite_difference_gradient(lambda th: tabular_objective(bandit, np.full(4, 0.25), th), theta)
    np.testing.assert_allclose(seed004_policy_gradient(bandit, theta) / 4, fd0, rtol=0, atol=1e-8)
    fd9 = finite_difference_gradient(lambda th: tabular_objective(rand, np.full(4, 0.25), th), theta)
    assert np.linalg.norm(seed004_policy_gradient(rand, theta) / 4 - fd9) > 0.5 * np.linalg.norm(fd9)


def test_seed004_v_pi_is_v_star_only_for_an_optimal_policy():
    """Seed 004 (§4.1) defines the value function as the return of "the best action" in each state and then
    calls it V^π, "the expected return from s under the policy π" — two different functions. V^π(s) =
    Σ_a π(a|s)Q^π(s,a) (Eq. 4.5) is what π earns; V* = max_π V^π (Eq. 4.6) is what the best policy earns, and
    V^π ≤ V* with equality only where π is optimal. On the delayed-reward chain the uniform policy earns
    V^π(0) = 0.368 against V*(0) = γ² = 0.9025, V^π < V* in every live state, and Q^π ≠ Q* in states 0
    and 1 (from state 2 both actions end the episode, so there Q^π = Q* while V^π = 0.65 < V* = 1). The seed's
    own example cannot show the difference: on its repaired MDP every policy earns V^π ≡ V* ≡ 1 (Section 3)."""
    chain = delayed_reward_chain()
    q_star, v_star, _ = value_iteration(chain)
    uniform = np.full((4, 2), 0.5)
    v_pi = evaluate_policy(chain, uniform)
    q_pi = chain.expected_reward() + chain.gamma * chain.P @ v_pi
    assert v_pi[0] == pytest.approx(0.36791, abs=1e-5) and v_star[0] == pytest.approx(0.95**2, abs=1e-10)
    assert (v_pi[:3] < v_star[:3] - 0.05).all(), (v_pi, v_star)
    assert (np.abs(q_pi[:2] - q_star[:2]).max(axis=1) > 0.05).all()
    np.testing.assert_allclose(q_pi[2], q_star[2], atol=1e-10)  # from state 2 both actions end the episode
    greedy = np.eye(2)[q_star.argmax(axis=1)]  # an optimal policy attains V*
    np.testing.assert_allclose(evaluate_policy(chain, greedy), v_star, atol=1e-10)
    seed = seed004_mdp()
    rng = np.random.default_rng(0)
    for _ in range(5):
        pi = rng.dirichlet(np.ones(2), size=3)
        np.testing.assert_allclose(evaluate_policy(seed, pi), 1.0, atol=1e-10)


def test_seed004_bellman_with_reward_times_value_has_only_the_zero_solution():
    """Seed 004 (§4.4) writes V*(s) = max_a Σ_{s'} P(s'|s,a) Σ_r r P(r|s') V*(s'): reward *times* value, no γ.
    On the repaired seed MDP (reward 1 on reaching state 3, else 0) that equation reads V(s) = 0.1·V(3) for
    every s, whose only solution is V ≡ 0: iterating it from the true V* ≡ 1 (Eq. 4.6) falls to 0 at rate
    0.1 per sweep, and V* ≡ 1 is not a fixed point of it."""
    mdp = seed004_mdp()
    _, v_star, _ = value_iteration(mdp)
    np.testing.assert_allclose(v_star, 1.0, atol=1e-10)

    def seed_backup(V):
        return np.max(np.einsum("sat,sat->sa", mdp.P, mdp.R * V[None, None, :]), axis=1)

    assert np.abs(seed_backup(v_star) - v_star).max() > 0.8
    V = v_star.copy()
    for _ in range(20):
        V = seed_backup(V)
    assert np.abs(V).max() < 1e-15


@pytest.mark.task4_4
def test_leave_one_out_baseline_is_the_mean_of_the_other_samples():
    """Eq. (4.4) entry by entry: b_i is the plain mean of the other n − 1 values (np.delete), and 0 for a single
    sample, whatever the scale of the values."""
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 64):
        values = rng.normal(size=n) * 10.0 ** rng.integers(-3, 4)
        expected = [np.delete(values, i).mean() for i in range(n)]
        assert_close(leave_one_out_baseline(values), expected, rtol=1e-12, atol=1e-12)
    assert_equal(leave_one_out_baseline([5.0]), [0.0])


@pytest.mark.task4_4
def test_leave_one_out_baseline_with_groups_is_the_mean_of_the_other_samples_of_the_same_group():
    """Eq. (5.19) entry by entry: with one group id per sample (interleaved, of sizes 3, 2 and 1), b_i is the mean
    of the other values of i's group only; a group of one sample gets 0."""
    values = np.array([1.0, 10.0, 3.0, 100.0, 7.0, -4.0])
    group = np.array([0, 1, 0, 1, 0, 2])
    expected = [(3 + 7) / 2, 100.0, (1 + 7) / 2, 10.0, (1 + 3) / 2, 0.0]
    assert_close(leave_one_out_baseline(values, group), expected, rtol=1e-12, what="grouped leave-one-out baseline")
    assert_close(leave_one_out_baseline(values, np.zeros(6, dtype=np.int64)),
                 [np.delete(values, i).mean() for i in range(6)], rtol=1e-12, what="one group of six")


@pytest.mark.task4_4
def test_leave_one_out_baseline_of_integer_rewards_is_exact_with_and_without_groups():
    """Rewards may come as integers (counts, 0/1 labels): the baseline is still the exact float mean."""
    values = np.array([1, 2, 4, 7, 0])
    assert_close(leave_one_out_baseline(values), [13 / 4, 12 / 4, 10 / 4, 7 / 4, 14 / 4], rtol=1e-12,
                 what="baseline of integer rewards")
    assert_close(leave_one_out_baseline(values, np.array([0, 0, 0, 1, 1])), [3.0, 2.5, 1.5, 0.0, 7.0], rtol=1e-12,
                 what="grouped baseline of integer rewards")
