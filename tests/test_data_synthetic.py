"""Synthetic sources: entropy rates against closed forms, empirical frequencies, known answers."""

import math

import numpy as np
import pytest
import torch

from mathlens.data import AssociativeRecall, HiddenMarkovModel, MarkovChain, ModularArithmetic, SparseBoolean
from mathlens.errors import MathlensError


def _h2(p):
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


def test_markov_closed_forms():
    V = 5
    cycle = MarkovChain(vocab_size=V, transition=np.roll(np.eye(V), 1, axis=1), block_size=8)
    assert cycle.entropy_rate == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(cycle.stationary, 1 / V)  # periodic chain: still uniform
    seq = cycle.sample(3, np.random.default_rng(0))
    assert ((seq[:, 1:] - seq[:, :-1]) % V == 1).all()
    iid = MarkovChain(vocab_size=V, order=2, transition=np.full((V**2, V), 1 / V))
    assert iid.entropy_rate == pytest.approx(math.log(V), rel=1e-12)
    assert iid.bayes_loss(10) == pytest.approx(math.log(V), rel=1e-12)
    a, b = 0.1, 0.3  # 2-state chain: pi = (b, a) / (a + b), H = pi_0 h(a) + pi_1 h(b)
    two = MarkovChain(vocab_size=2, transition=np.array([[1 - a, a], [b, 1 - b]]))
    assert np.allclose(two.stationary, [b / (a + b), a / (a + b)])
    assert two.entropy_rate == pytest.approx((b * _h2(a) + a * _h2(b)) / (a + b), rel=1e-12)
    assert two.bayes_loss() == pytest.approx(two.entropy_rate, rel=1e-12)  # order 1: every target sees context


def test_markov_random_empirical_frequencies_and_loss():
    m = MarkovChain(vocab_size=4, order=1, concentration=0.5, block_size=200, seed=3)
    seq = m.sample(200, np.random.default_rng(1))  # 40,200 tokens
    freq = np.bincount(seq.ravel(), minlength=4) / seq.size
    assert np.abs(freq - m.stationary).max() < 0.02  # ~5 binomial SDs with correlated samples
    pairs = np.zeros((4, 4))
    np.add.at(pairs, (seq[:, :-1].ravel(), seq[:, 1:].ravel()), 1)
    P_hat = pairs / pairs.sum(1, keepdims=True)
    assert np.abs(P_hat - m.transition).max() < 0.05
    # the true model's mean log-loss on samples estimates the entropy rate (standard error ~0.003)
    assert -m.log_probs(seq).mean() == pytest.approx(m.entropy_rate, abs=0.015)


def test_markov_order2_bayes_loss_matches_log_probs():
    m = MarkovChain(vocab_size=3, order=2, concentration=1.0, block_size=6, seed=0)
    h = m.conditional_entropies(6)
    assert h[0] >= h[1] - 1e-12 and np.allclose(h[1:], m.entropy_rate)  # first target has one token of context
    lp = m.log_probs(m.sample(20000, np.random.default_rng(0)))
    assert -lp.mean(0) == pytest.approx(h, abs=0.03)
    assert -lp.mean() == pytest.approx(m.bayes_loss(), abs=0.01)
    x, y = m.get_batch("train", 5, seed=0)
    assert x.shape == (5, 6) and m.answer_mask.all()


def test_hmm_reduces_to_known_cases():
    A = np.array([[0.8, 0.2], [0.4, 0.6]])
    as_markov = HiddenMarkovModel(n_states=2, vocab_size=2, transition=A, emission=np.eye(2))
    exact = MarkovChain(vocab_size=2, transition=A).entropy_rate
    est = as_markov.entropy_rate_estimate(n_tokens=5000, n_sequences=8, seed=0)
    assert est.value == pytest.approx(exact, abs=max(4 * est.stderr, 0.005))
    B = np.tile([0.5, 0.25, 0.25], (2, 1))  # same emissions in every state: iid tokens
    iid = HiddenMarkovModel(n_states=2, vocab_size=3, transition=A, emission=B)
    assert iid.entropy_rate_estimate(n_tokens=2000, n_sequences=4).value == pytest.approx(1.5 * math.log(2), abs=0.03)
    assert set(est.to_dict()) == {"value", "stderr", "n_tokens"}


def test_hmm_random_estimate_between_bounds():
    h = HiddenMarkovModel(n_states=3, vocab_size=4, block_size=16, seed=2)
    rate = h.entropy_rate_estimate(n_tokens=4000, n_sequences=8, seed=1)
    window = h.bayes_loss_estimate(n_sequences=2000, seed=1)
    iid_bound = float(-(h.stationary @ h.emission) @ np.log(h.stationary @ h.emission))  # H(X_0) >= rate
    assert rate.value <= iid_bound + 3 * rate.stderr
    assert window.value >= rate.value - 3 * (window.stderr + rate.stderr)  # short context costs more


def test_sparse_boolean_labels():
    for fn, truth in [
        ("and", lambda r: r.all(1)),
        ("or", lambda r: r.any(1)),
        ("parity", lambda r: r.sum(1) % 2 == 1),
        ("majority", lambda r: 2 * r.sum(1) > r.shape[1]),
    ]:
        task = SparseBoolean(n_bits=12, n_relevant=3, function=fn, seed=4)
        x, y = task.get_batch("train", 256, seed=0)
        assert x.shape == (256, 13) and (x[:, -1] == SparseBoolean.SEP).all()
        bits = x[:, :12].numpy()
        assert np.array_equal(y[:, -1].numpy(), truth(bits[:, task.relevant]).astype(int))
    assert len(set(SparseBoolean(n_bits=12, n_relevant=3).relevant)) == 3
    logits = torch.nn.functional.one_hot(y, 3).float()
    assert task.accuracy(logits, y) == 1.0 and task.accuracy(-logits, y) == 0.0
    with pytest.raises(MathlensError, match="unknown Boolean function"):
        SparseBoolean(function="xor3")


@pytest.mark.parametrize("distance", [0, 5, 20])
def test_associative_recall(distance):
    task = AssociativeRecall(block_size=32, n_pairs=4, distance=distance, n_keys=16, n_values=16, seed=0)
    x, y = task.get_batch("train", 64, seed=distance)
    seq = torch.cat([x, y[:, -1:]], 1).numpy()
    assert (seq[:, -3] == task.query_token).all()
    for s in seq:
        key, value = s[-2], s[-1]
        body = s[:-3]
        pos = np.flatnonzero(body == key)
        assert len(pos) == 1 and body[pos[0] + 1] == value  # the fact, stored once
        assert len(body) - (pos[0] + 2) == distance  # tokens between the fact's value and QUERY
        assert ((body < 16).sum()) == 4  # one fact + three distractor keys
    assert task.answer_mask.sum() == 1 and task.answer_mask[-1]
    xa, ya = task.get_batch("train", 4, seed=0, answers_only=True)
    assert (ya[:, :-1] == -1).all() and (ya[:, -1] >= 16).all()


def test_recall_errors():
    with pytest.raises(MathlensError, match="do not fit"):
        AssociativeRecall(block_size=8, n_pairs=4)
    with pytest.raises(MathlensError, match="distance"):
        AssociativeRecall(block_size=32, distance=99)
    tight = AssociativeRecall(block_size=10, n_pairs=4, distance=1)  # 3 distractors fill all 6 free cells
    with pytest.raises(MathlensError, match="no room"):
        tight.get_batch("train", 1, seed=0)


def test_modular_arithmetic_split_and_answers():
    task = ModularArithmetic(p=11, ops=("+", "-", "*"), train_fraction=0.3, seed=1)
    train, val = task.splits["train"], task.splits["val"]
    assert len(train) + len(val) == 3 * 11 * 11 and len(train) == round(0.3 * 363)
    key = lambda s: {tuple(r) for r in s[:, :3]}
    assert not key(train) & key(val)
    ops = {11: np.add, 12: np.subtract, 13: np.multiply}
    for s in (train, val):
        assert all(r[4] == ops[r[1]](r[0], r[2]) % 11 and r[3] == 14 for r in s)
    xs = [x for x, _ in task.iter_eval_batches("val", 50)]
    assert sum(len(x) for x in xs) == len(val)  # the whole split, once
    x, y = task.get_batch("val", 8, seed=0)
    assert x.shape == (8, 4) and key(torch.cat([x, y[:, -1:]], 1).numpy()) <= key(val)
    assert (
        ModularArithmetic(p=11, seed=1).splits["train"].tolist()
        == ModularArithmetic(p=11, seed=1).splits["train"].tolist()
    )
    with pytest.raises(MathlensError, match="ops"):
        ModularArithmetic(ops=("/",))


def test_task_batch_errors():
    task = SparseBoolean(n_bits=4, n_relevant=2)
    with pytest.raises(MathlensError, match="exactly one of generator"):
        task.get_batch("train", 2)
    with pytest.raises(MathlensError, match="block_size"):
        task.get_batch("train", 2, block_size=9, seed=0)
    with pytest.raises(MathlensError, match="unknown split"):
        task.get_batch("test", 2, seed=0)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(task.get_batch("train", 6, generator=g1)[0], task.get_batch("train", 6, generator=g2)[0])


def test_recall_draws_only_feasible_distances_at_the_smallest_block():
    # block_size = 2·n_pairs + 2: odd distances leave no room for the distractors; they used to be drawn and raise
    task = AssociativeRecall(n_pairs=4, block_size=10, seed=0)
    x, y = task.get_batch("train", 64, seed=0)
    assert x.shape == (64, 10)
    roomy = AssociativeRecall(n_pairs=4, block_size=11, seed=0)  # every distance feasible: the old stream, unchanged
    assert roomy.get_batch("train", 8, seed=3)[0].shape == (8, 11)


def test_val_batches_are_not_the_train_batches_of_the_same_seed():
    chain = MarkovChain(vocab_size=8, block_size=12, seed=0)
    tr, va = chain.get_batch("train", 16, seed=5)[0], chain.get_batch("val", 16, seed=5)[0]
    assert not torch.equal(tr, va)
    assert torch.equal(va, chain.get_batch("val", 16, seed=5)[0])  # still reproducible
