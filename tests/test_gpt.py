"""The GPT: exact normalisation over all EOS-terminated sequences, torch as an oracle, the KV cache, checkpoints."""
import itertools

import numpy as np
import pytest
from helpers import assert_close, assert_equal

from minialign import gradcheck
from minialign.bench import torch_reference_gpt
from minialign.gpt import GPT, GPTConfig
from minialign.lab import lab_model


def all_sequences(vocab_size, horizon, eos=0):
    """Every EOS-terminated sequence of length ≤ horizon over the non-EOS tokens, padded with EOS."""
    tokens = [t for t in range(vocab_size) if t != eos]
    rows = []
    for n in range(horizon):
        for body in itertools.product(tokens, repeat=n):
            rows.append(list(body) + [eos] * (horizon - n))
    return np.array(rows, dtype=np.int64)


@pytest.mark.task2_2
@pytest.mark.parametrize("vocab_size,block_size,seed", [(2, 5, 0), (3, 4, 1), (4, 3, 2), (3, 1, 3)])
def test_exact_sequence_distribution_sums_to_one(vocab_size, block_size, seed):
    model = lab_model(seed, vocab_size, block_size)
    x = all_sequences(vocab_size, block_size)
    logp = model.sequence_logprob(x).numpy()
    assert len(x) == sum((vocab_size - 1) ** n for n in range(block_size))
    assert_close(np.exp(logp).sum(), 1.0, rtol=0, atol=1e-12)


@pytest.mark.task2_2
def test_sequence_logprob_is_the_sum_of_next_token_logprobs_up_to_eos():
    model = lab_model(4, vocab_size=4, block_size=5)
    x = np.array([[1, 2, 0, 3, 3], [3, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    inp = np.concatenate([np.zeros((3, 1), dtype=np.int64), x[:, :-1]], axis=1)
    z = model(inp).numpy()
    logsm = z - np.log(np.exp(z).sum(-1, keepdims=True))
    by_hand = [logsm[0, 0, 1] + logsm[0, 1, 2] + logsm[0, 2, 0],
               logsm[1, 0, 3] + logsm[1, 1, 0],
               logsm[2, 0, 1] + logsm[2, 1, 1] + logsm[2, 2, 1] + logsm[2, 3, 1]]  # the EOS at t=4 is forced
    assert_close(model.sequence_logprob(x).numpy(), by_hand, rtol=1e-12)
    # tokens after the first EOS are padding and change nothing
    y = x.copy()
    y[0, 3:] = [1, 2]
    assert_close(model.sequence_logprob(y).numpy(), model.sequence_logprob(x).numpy(), rtol=0)


@pytest.mark.task2_2
def test_token_logprobs_entry_by_entry_with_a_different_prompt_length_in_each_row():
    """Eq. (5.18): with prompt_len [B], row b counts the positions from prompt_len[b] to its first EOS (the forced
    EOS at block_size − 1 and the padding after the first EOS count 0); every other entry is exactly 0."""
    model = lab_model(4, vocab_size=4, block_size=5)
    x = np.array([[1, 2, 0, 3, 3], [3, 1, 2, 0, 0], [1, 1, 1, 1, 0], [2, 0, 0, 0, 0]])
    prompt_len = np.array([2, 1, 3, 0])
    inp = np.concatenate([np.zeros((4, 1), dtype=np.int64), x[:, :-1]], axis=1)
    z = model(inp).numpy()
    logsm = z - np.log(np.exp(z).sum(-1, keepdims=True))
    first_eos = [2, 3, 4, 1]
    expected = np.zeros(x.shape)
    for b in range(4):
        for t in range(prompt_len[b], min(first_eos[b] + 1, 4)):  # t = 4 is the forced EOS: log 1 = 0
            expected[b, t] = logsm[b, t, x[b, t]]
    assert_close(model.token_logprobs(x, prompt_len).numpy(), expected, rtol=1e-12, atol=1e-15,
                 what="token_logprobs(x, prompt_len)")
    assert_close(model.sequence_logprob(x, prompt_len).numpy(), expected.sum(axis=1), rtol=1e-12, atol=1e-15,
                 what="sequence_logprob(x, prompt_len)")
    full = np.where(np.arange(5)[None, :] <= np.minimum(first_eos, 3)[:, None], logsm[np.arange(4)[:, None],
                    np.arange(5)[None, :], x], 0.0)
    assert_close(model.token_logprobs(x).numpy(), full, rtol=1e-12, atol=1e-15, what="token_logprobs(x)")


def test_logits_and_gradients_match_a_torch_model_with_the_same_weights(torch):
    model = lab_model(5, vocab_size=5, block_size=6, scale=0.3)
    params, forward = torch_reference_gpt(model)
    for p in params.values():
        p.data = p.data.double()
    x = np.array([[1, 2, 3, 0, 0, 0], [4, 4, 4, 4, 4, 0]])
    inp, targets, counted = model._shift(x)
    np.testing.assert_allclose(model(inp).numpy(), forward(inp).detach().numpy(), rtol=1e-10, atol=1e-12)
    loss = model.loss(x)
    loss.backward()
    tloss = torch.nn.functional.cross_entropy(forward(inp).reshape(-1, 5),
                                              torch.tensor(np.where(counted, targets, -100)).reshape(-1))
    tloss.backward()
    np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-10)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, params[name].grad.numpy(), rtol=1e-8, atol=1e-12, err_msg=name)


@pytest.mark.task2_2
def test_sequence_logprob_gradient_matches_finite_differences():
    model = lab_model(6, vocab_size=3, block_size=3, scale=0.5)
    x = all_sequences(3, 3)
    w = model.h[0].attn.c_attn.weight
    for p in model.parameters():
        p.requires_grad = p is w
    assert gradcheck(lambda _: model.sequence_logprob(x), w)


@pytest.mark.task2_3
@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.7, None), (1.3, 2)])
def test_kv_cache_gives_identical_samples_and_logprobs(temperature, top_k):
    model = lab_model(7, vocab_size=5, block_size=7, scale=0.5)
    a, lp_a = model.generate(64, rng=11, temperature=temperature, top_k=top_k, use_cache=True)
    b, lp_b = model.generate(64, rng=11, temperature=temperature, top_k=top_k, use_cache=False)
    assert_equal(a, b)
    assert_close(lp_a, lp_b, rtol=1e-12)
    # the incremental log-probabilities are the model's own: they equal the full forward's
    assert_close(lp_a, model.sequence_logprob(a).numpy(), rtol=1e-10)


@pytest.mark.task2_3
def test_cached_incremental_logits_equal_the_full_forward():
    model = lab_model(8, vocab_size=5, block_size=6, scale=0.5)
    x = np.array([[0, 3, 1, 4, 2, 2], [0, 1, 1, 2, 3, 4]])
    full = model(x).numpy()
    cache = model.new_cache()
    steps = [model(x[:, t:t + 1], cache=cache, start=t).numpy()[:, 0] for t in range(6)]
    assert_close(np.stack(steps, axis=1), full, rtol=1e-10, atol=1e-12)


@pytest.mark.task2_3
def test_the_cache_holds_detached_keys_and_values_of_every_position_so_far():
    """The cache stores the concatenated keys and values, detached (no graph kept from step to step), even when
    the parameters require gradients; a step's output still has its gradient through this step's own k and v."""
    model = lab_model(8, vocab_size=5, block_size=6, scale=0.5)
    for p in model.parameters():
        p.requires_grad = True
    x = np.array([[0, 3, 1, 4], [0, 1, 1, 2]])
    cache = model.new_cache()
    for t in range(3):
        out = model(x[:, t:t + 1], cache=cache, start=t)
        for layer, entry in enumerate(cache):
            for name in ("k", "v"):
                kept = entry[name]
                assert kept.shape[2] == t + 1, f"layer {layer}'s cached {name} after step {t}: shape {kept.shape}"
                assert not kept.requires_grad and not kept._parents, \
                    f"layer {layer}'s cached {name} after step {t} keeps its graph: store it detached"
    assert out.requires_grad


@pytest.mark.task2_4
def test_samples_follow_the_model_distribution():
    model = lab_model(9, vocab_size=3, block_size=3, scale=1.0)
    x = all_sequences(3, 3)
    p = np.exp(model.sequence_logprob(x).numpy())
    samples, _ = model.generate(20000, rng=3)
    index = {tuple(r): i for i, r in enumerate(x)}
    counts = np.bincount([index[tuple(r)] for r in samples], minlength=len(x))
    # each count is Binomial(n, p): within 5 standard deviations
    n = len(samples)
    assert np.all(np.abs(counts - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 1)


@pytest.mark.task2_4
def test_top_k_only_samples_the_k_most_likely_first_tokens():
    model = lab_model(10, vocab_size=6, block_size=3, scale=1.0)
    logits = model(np.zeros((1, 1), dtype=np.int64)).numpy()[0, 0]
    top2 = set(np.argsort(logits)[-2:])
    samples, _ = model.generate(300, rng=0, top_k=2)
    assert set(samples[:, 0]) <= top2


@pytest.mark.task2_4
@pytest.mark.parametrize("top_k", [None, 1, 2, 4])
def test_inverse_cdf_sampling_gives_each_allowed_token_on_its_own_stretch_of_u(top_k):
    """Inverse-CDF sampling row by row: with the kept tokens' probabilities renormalised (the top k when given,
    every token otherwise), u in the middle of token i's stretch of the cumulative distribution gives i — so every
    allowed token can be drawn, with its probability, and no other token ever is."""
    from minialign.gpt import _sample_rows

    logits = np.array([0.3, -1.2, 2.0, 0.9, -0.4])
    order = np.argsort(-logits)
    kept = np.sort(order[:top_k]) if top_k else np.arange(5)
    p = np.exp(logits[kept] - logits[kept].max())
    p /= p.sum()
    cdf = np.cumsum(p)
    mids = cdf - p / 2
    rows = np.tile(logits, (len(kept), 1))
    got = _sample_rows(rows, mids, top_k)
    assert_equal(got, kept, what=f"tokens drawn at the middle of each kept token's stretch of u (top_k={top_k})")
    edge = _sample_rows(np.tile(logits, (2, 1)), np.array([1e-12, 1 - 1e-12]), top_k)
    assert_equal(edge, kept[[0, -1]], what="tokens drawn at u → 0 and u → 1")


@pytest.mark.task2_4
def test_sampling_never_draws_a_token_of_probability_zero_and_each_row_uses_its_own_u():
    from minialign.gpt import _sample_rows

    logits = np.array([[-np.inf, 0.0, 0.0, -np.inf], [1.0, -np.inf, -np.inf, 1.0]])
    assert_equal(_sample_rows(logits, np.array([0.25, 0.75])), [1, 3], what="tokens of rows with −∞ logits")
    assert_equal(_sample_rows(logits, np.array([0.75, 0.25])), [2, 0], what="tokens of rows with −∞ logits")


@pytest.mark.task2_4
def test_u_near_one_never_draws_an_excluded_token_and_huge_logits_do_not_overflow():
    """u is scaled by the row's total, which rounding leaves slightly below 1 on some rows: u just below 1 must
    still give a kept token (never the excluded last one through the clamp at V − 1); and logits shifted by
    +700 give the same tokens (the softmax is shift-invariant and must not overflow)."""
    from minialign.gpt import _sample_rows

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 6))
    logits[:, -1] = logits.min(axis=1) - 1.0  # the last token is never among the top 3
    u = np.full(300, np.nextafter(1.0, 0.0))
    got = _sample_rows(logits, u, top_k=3)
    top3 = np.argsort(logits, axis=1)[:, -3:]
    bad = [i for i in range(300) if got[i] not in top3[i]]
    assert not bad, (f"u just below 1 drew a token outside the top 3 in {len(bad)} rows, "
                     f"e.g. row {bad[0]}: {got[bad[0]]}")
    u = rng.uniform(size=300)
    assert_equal(_sample_rows(logits + 700.0, u, top_k=3), _sample_rows(logits, u, top_k=3),
                 what="tokens drawn from logits shifted by +700")
    assert_equal(_sample_rows(logits + 700.0, u), _sample_rows(logits, u), what="tokens from logits + 700, no top-k")


@pytest.mark.task2_4
def test_logits_a_thousand_away_from_zero_draw_the_same_tokens():
    """`generate` passes logits / T: at T = 0.01 logits of ±1000 are ordinary. e^x overflows past 709 and
    underflows to 0 below −745, so only probabilities formed after shifting each row by its own log-normaliser
    (or maximum) draw the same tokens as the unshifted logits, with and without top-k."""
    from minialign.gpt import _sample_rows

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(300, 5))
    u = rng.uniform(size=300)
    for shift in (1000.0, -1000.0, 1000.0 * rng.choice([-1.0, 0.0, 1.0], size=(300, 1))):
        name = "each row shifted by −1000, 0 or +1000" if np.ndim(shift) else f"logits shifted by {shift:+}"
        for top_k in (None, 2):
            assert_equal(_sample_rows(logits + shift, u, top_k), _sample_rows(logits, u, top_k),
                         what=f"tokens drawn from {name} (top_k={top_k})")


@pytest.mark.task2_4
def test_top_k_samples_each_of_the_k_most_likely_tokens_with_its_renormalised_probability():
    model = lab_model(10, vocab_size=6, block_size=3, scale=1.0)
    logits = model(np.zeros((1, 1), dtype=np.int64)).numpy()[0, 0]
    top3 = np.argsort(logits)[-3:]
    p = np.exp(logits[top3] - logits[top3].max())
    p /= p.sum()
    n = 4000
    samples, _ = model.generate(n, rng=0, top_k=3)
    counts = np.array([(samples[:, 0] == t).sum() for t in top3])
    assert counts.sum() == n, f"tokens outside the top 3 were drawn: {sorted(set(samples[:, 0]) - set(top3))}"
    bound = 5 * np.sqrt(n * p * (1 - p)) + 1
    assert np.all(np.abs(counts - n * p) <= bound), \
        f"counts of the top-3 tokens {top3.tolist()}: " \
        f"expected {np.round(n * p).tolist()} ± {np.round(bound).tolist()}, " \
        f"got {counts.tolist()}"


def test_save_load_round_trips_bit_exactly(tmp_path):
    model = lab_model(11, vocab_size=5, block_size=6, dtype=np.float32)
    path = model.save(tmp_path / "m.npz")
    loaded = GPT.load(path)
    assert loaded.config == model.config
    for (n1, a), (n2, b) in zip(sorted(model.state_dict().items()), sorted(loaded.state_dict().items())):
        assert n1 == n2 and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    x = np.array([[1, 2, 0, 0, 0, 0]])
    np.testing.assert_array_equal(model(x).numpy(), loaded(x).numpy())


def test_bad_token_input_raises_clear_errors():
    model = lab_model(12, vocab_size=4, block_size=4)
    with pytest.raises(TypeError, match="integer array of token ids; got dtype float64"):
        model(np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"token ids in \[0, 4\); got values in \[0, 7\]"):
        model(np.array([[0, 7]]))
    with pytest.raises(ValueError, match=r"shape \[batch, time\]; got shape \(3,\)"):
        model(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="exceeds block_size 4"):
        model(np.zeros((1, 5), dtype=np.int64))
    with pytest.raises(ValueError, match="row 1 of x has no end-of-sequence token"):
        model.sequence_logprob(np.array([[1, 0, 0], [1, 2, 3]]))
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        model.generate(2, temperature=0.0)


def test_config_validation():
    with pytest.raises(ValueError, match=r"n_embd \(10\) must be divisible by n_head \(4\)"):
        GPTConfig(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="eos_id must be a token id"):
        GPTConfig(vocab_size=3, eos_id=3)
