"""The names corpus, the tokenizer, the split and the bigram baseline."""
import csv
import dataclasses
import math
import string
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minialign.data import (
    NAMES_CSV,
    CharTokenizer,
    bigram_logprob_table,
    bigram_nll,
    get_batch,
    load_names,
    split,
)

corpus = load_names()
tok = CharTokenizer(corpus)
lowercase_words = st.text(alphabet=string.ascii_lowercase, max_size=24)


# ------------------------------------------------------------------------------------------- corpus


def test_committed_file_has_the_census_row_counts():
    with NAMES_CSV.open(newline="") as f:
        rows = list(csv.DictReader(f))
    counts = Counter(r["gender"] for r in rows)
    assert counts == {"F": 4275, "M": 1219}
    assert all(r["name"] == r["name"].lower() and r["name"].isascii() and r["name"].isalpha() for r in rows)
    pairs = [(r["name"], r["gender"]) for r in rows]
    assert len(set(pairs)) == len(pairs), "a (name, gender) pair appears twice"


def test_names_are_sorted_unique_and_cover_every_row():
    with NAMES_CSV.open(newline="") as f:
        in_file = {r["name"] for r in csv.DictReader(f)}
    assert list(corpus.names) == sorted(in_file)
    assert len(corpus) == len(in_file)
    assert "mary" in corpus and "zzzz" not in corpus


def test_block_size_must_cover_the_longest_name_plus_eos():
    longest = max(corpus.names, key=len)
    assert corpus.max_len == len(longest)
    tok.encode_batch(corpus.names, corpus.max_len + 1)
    with pytest.raises(ValueError, match=repr(longest)):
        tok.encode_batch([longest], corpus.max_len)


def test_gender_follows_the_larger_frequency_for_names_on_both_lists():
    both = [n for n in corpus.names if (n, "F") in corpus.frequency and (n, "M") in corpus.frequency]
    assert "leslie" in both and "james" in both
    # leslie: 0.154% of women, 0.081% of men; james: 0.010% of women, 3.318% of men.
    assert corpus.frequency[("leslie", "F")] == 0.154 and corpus.frequency[("leslie", "M")] == 0.081
    assert corpus.is_female("leslie")
    assert corpus.frequency[("james", "M")] == 3.318
    assert not corpus.is_female("james")
    for n in both:
        f, m = corpus.frequency[(n, "F")], corpus.frequency[(n, "M")]
        assert corpus.gender[n] == ("F" if f >= m else "M"), n
    assert corpus.frequency[("kris", "F")] == corpus.frequency[("kris", "M")]
    assert corpus.is_female("kris")  # the stated tie rule


def test_is_female_names_the_unknown_name():
    with pytest.raises(ValueError, match="'xqzv'"):
        corpus.is_female("xqzv")


def test_corpus_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        corpus.names = ()
    with pytest.raises(TypeError):
        corpus.gender["mary"] = "M"


# ---------------------------------------------------------------------------------------- tokenizer


def test_vocabulary_is_eos_then_a_to_z():
    assert tok.vocab_size == 27 and tok.bos_id == tok.eos_id == 0
    assert "".join(tok.chars) == string.ascii_lowercase
    assert tok.encode("az").tolist() == [1, 26, 0]
    assert tok.encode("").tolist() == [0]


def test_every_corpus_name_round_trips():
    for name in corpus.names:
        ids = tok.encode(name)
        assert ids.dtype == np.int64 and ids[-1] == tok.eos_id and len(ids) == len(name) + 1
        assert tok.decode(ids) == name


@given(lowercase_words)
def test_round_trip_on_any_lowercase_string(s):
    assert tok.decode(tok.encode(s)) == s


@given(st.lists(lowercase_words, min_size=1, max_size=6), st.integers(0, 5))
def test_batch_pads_only_after_eos(words, extra):
    length = max(len(w) for w in words) + 1 + extra
    arr = tok.encode_batch(words, length)
    assert arr.shape == (len(words), length) and arr.dtype == np.int64
    for w, row in zip(words, arr):
        first_eos = int(np.flatnonzero(row == tok.eos_id)[0])
        assert first_eos == len(w)
        assert (row[:first_eos] != tok.eos_id).all()
        assert (row[first_eos:] == tok.eos_id).all()
    assert tok.decode_batch(arr) == words


def test_decode_stops_at_the_first_eos():
    assert tok.decode(np.array([2, 1, 0, 3, 4])) == "ba"
    assert tok.decode([3, 1, 20]) == "cat"


def test_unknown_characters_are_named():
    with pytest.raises(ValueError, match=r"'A'.*'Anna'"):
        tok.encode("Anna")
    with pytest.raises(ValueError, match=r"'\.'.*'a\.b'"):
        tok.encode("a.b")
    with pytest.raises(ValueError, match="'é'"):
        tok.encode_batch(["bob", "josé"], 8)


def test_too_long_names_name_the_name_and_the_length():
    with pytest.raises(ValueError, match=r"'abcdef'.*length is 6"):
        tok.encode_batch(["abc", "abcdef"], 6)


def test_out_of_range_ids_are_rejected():
    with pytest.raises(ValueError, match=r"\[0, 27\).*27"):
        tok.decode([1, 27])
    with pytest.raises(ValueError, match=r"-1"):
        tok.decode(np.array([-1, 0]))


def test_non_integer_ids_are_rejected():
    with pytest.raises(TypeError, match="float64"):
        tok.decode(np.array([1.0, 0.0]))
    with pytest.raises(TypeError, match="float32"):
        tok.decode_batch(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="str"):
        tok.encode(["a", "b"])


# ------------------------------------------------------------------------------------------- split


def test_split_is_reproducible_disjoint_and_exhaustive():
    train, val = split(corpus, val_fraction=0.1, seed=0)
    assert split(corpus, val_fraction=0.1, seed=0) == (train, val)
    assert set(train).isdisjoint(val)
    assert set(train) | set(val) == set(corpus.names)
    assert len(val) == round(0.1 * len(corpus))
    assert split(corpus, val_fraction=0.1, seed=1)[1] != val


def test_split_rejects_degenerate_fractions():
    with pytest.raises(ValueError, match="val_fraction"):
        split(corpus, val_fraction=1.0)
    with pytest.raises(ValueError, match="empty"):
        split(["ann", "bob"], val_fraction=0.1)


# ------------------------------------------------------------------------------------------ bigram


def test_bigram_rows_are_distributions():
    train, _ = split(corpus)
    table = bigram_logprob_table(tok.encode_batch(train, corpus.max_len + 1))
    assert table.shape == (27, 27)
    np.testing.assert_allclose(np.exp(table).sum(axis=1), 1.0, rtol=0, atol=1e-12)


def test_bigram_nll_on_a_tiny_corpus_by_hand():
    # train "ab", "a": BOS->a twice, a->b, b->EOS, a->EOS.  val "b": BOS->b (unseen), b->EOS (seen once).
    # Add-one over 27 tokens: P(b|BOS) = (0+1)/(2+27), P(EOS|b) = (1+1)/(1+27).
    expected = -(math.log(1 / 29) + math.log(2 / 28)) / 2
    train = tok.encode_batch(["ab", "a"], 5)
    val = tok.encode_batch(["b"], 7)  # extra padding must not count
    assert bigram_nll(train, val) == pytest.approx(expected, abs=1e-12)
    # With smoothing 0.5: P(b|BOS) = 0.5/(2+13.5), P(EOS|b) = 1.5/(1+13.5).
    expected_half = -(math.log(0.5 / 15.5) + math.log(1.5 / 14.5)) / 2
    assert bigram_nll(train, val, smoothing=0.5) == pytest.approx(expected_half, abs=1e-12)


@given(st.lists(lowercase_words, min_size=1, max_size=8), st.lists(lowercase_words, min_size=1, max_size=8))
def test_bigram_nll_matches_a_dictionary_count(train_words, val_words):
    pairs = Counter()
    for w in train_words:
        seq = ["."] + list(w) + ["."]
        pairs.update(zip(seq[:-1], seq[1:]))
    from_prev = Counter()
    for (a, _), n in pairs.items():
        from_prev[a] += n
    logps = []
    for w in val_words:
        seq = ["."] + list(w) + ["."]
        for a, b in zip(seq[:-1], seq[1:]):
            logps.append(math.log((pairs[(a, b)] + 1) / (from_prev[a] + 27)))
    expected = -sum(logps) / len(logps)
    length = max(len(w) for w in train_words + val_words) + 2
    got = bigram_nll(tok.encode_batch(train_words, length), tok.encode_batch(val_words, length))
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_bigram_beats_uniform_on_the_real_split():
    train, val = split(corpus)
    L = corpus.max_len + 1
    nll = bigram_nll(tok.encode_batch(train, L), tok.encode_batch(val, L))
    assert nll < math.log(27)


def test_bigram_rejects_rows_without_eos_and_zero_smoothing():
    ids = tok.encode_batch(["ab"], 3)
    with pytest.raises(ValueError, match="row 0"):
        bigram_nll(ids, np.array([[1, 2, 3]]))
    with pytest.raises(ValueError, match="smoothing"):
        bigram_logprob_table(ids, smoothing=0.0)


# ----------------------------------------------------------------------------------------- batches


def test_get_batch_is_reproducible_and_uniform():
    ids = np.arange(10)[:, None] * np.ones((1, 4), dtype=np.int64)
    a = get_batch(ids, 5, np.random.default_rng(3))
    b = get_batch(ids, 5, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, 4)
    rows = get_batch(ids, 20000, np.random.default_rng(0))[:, 0]
    freq = np.bincount(rows, minlength=10) / 20000
    assert np.abs(freq - 0.1).max() < 0.015  # 5 binomial standard deviations is about 0.011
    with pytest.raises(TypeError, match="Generator"):
        get_batch(ids, 5, np.random.RandomState(0))
