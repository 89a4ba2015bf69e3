import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from mathlens.errors import MathlensError
from mathlens.probes.uncertainty import (
    attention_entropy_vs_length,
    auroc,
    classwise_ece,
    detector_auroc,
    expected_calibration_error,
    likelihood_entropy_gap,
    margin,
    next_token_calibration,
    plot_reliability,
    predictive_entropy,
    reliability_diagram,
    sampling_error_rate,
    semantic_entropy,
)


class ConstantLM(nn.Module):
    """Stand-in for the GPT contract: the same next-token log-probabilities at every position."""

    def __init__(self, probs):
        super().__init__()
        self.logp = nn.Parameter(torch.log(torch.tensor(probs, dtype=torch.float64)))

    def forward(self, idx, targets=None):
        logits = self.logp.expand(*idx.shape, -1)
        loss = None if targets is None else nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss


def test_ece_zero_for_perfectly_calibrated_predictor():
    # In each of 10 bins, 20 two-class predictions with top-label confidence c and exactly 20c correct.
    probs, labels = [], []
    for c in (0.55, 0.65, 0.75, 0.85, 0.95):
        n_correct = round(20 * c)
        probs += [[c, 1 - c]] * 20
        labels += [0] * n_correct + [1] * (20 - n_correct)
    ece = expected_calibration_error(np.array(probs), np.array(labels), n_bins=10)
    assert ece == pytest.approx(0.0, abs=1e-12)


def test_ece_hand_computation():
    probs = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.35, 0.25]])
    labels = np.array([0, 1, 1, 2])
    # n_bins=2: bin (0, .5] holds conf .4 (wrong); bin (.5, 1] holds .9 (right), .6 (wrong), .7 (right)
    # ECE = 1/4·|0 − .4| + 3/4·|2/3 − (.9+.6+.7)/3| = .1 + .75·|.6667 − .7333| = .15
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.15, abs=1e-12)
    d = reliability_diagram(probs, labels, n_bins=2)
    assert d.counts == [1, 3] and d.accuracy == pytest.approx([0.0, 2 / 3])
    assert d.confidence == pytest.approx([0.4, 2.2 / 3]) and d.ece == pytest.approx(0.15)
    json.dumps(d.to_dict())
    # classwise ECE with 1 bin: mean_k |freq(y=k) − mean p_k| = (|.25−.525| + |.5−.35| + |.25−.125|)/3
    assert classwise_ece(probs, labels, n_bins=1) == pytest.approx((0.275 + 0.15 + 0.125) / 3)
    fig = plot_reliability(d)
    assert fig.axes[0].get_title() == "ECE = 0.1500"


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 300)
        s = rng.integers(0, 8, 300) + 0.5 * y  # heavy ties
        assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    with pytest.raises(MathlensError):
        auroc([0.1, 0.2], [1, 1])


def test_detectors():
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    assert predictive_entropy(p) == pytest.approx([0.0, math.log(2), math.log(3)])
    assert margin(p) == pytest.approx([1.0, 0.0, 0.0])
    se = semantic_entropy([["a", "a", "b", "b"], ["x"] * 4, [[1, 2], [1, 2], [3], [4]]])
    assert se == pytest.approx([math.log(2), 0.0, -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))])
    assert semantic_entropy([["A ", "a"]], key=lambda s: s.strip().lower()) == pytest.approx([0.0])
    # scores that rank every wrong answer above every right one -> AUROC 1
    assert detector_auroc([0.9, 0.8, 0.1, 0.2], correct=[False, False, True, True]) == 1.0


def test_attention_entropy_vs_length_closed_forms():
    T = 16
    causal = np.tril(np.ones((T, T)))
    uniform = causal / causal.sum(1, keepdims=True)  # H_i = log(i + 1)
    first = np.zeros((T, T))
    first[:, 0] = 1.0  # all mass on token 0: H = 0
    r = attention_entropy_vs_length(np.stack([uniform, first])[None])
    assert r.slope == pytest.approx([1.0, 0.0], abs=1e-12)
    assert r.normalised == pytest.approx([1.0, 0.0], abs=1e-12)
    assert r.entropy[0][5] == pytest.approx(math.log(6))
    with pytest.raises(MathlensError):
        attention_entropy_vs_length(np.ones((2, 3, 4)))


def test_next_token_calibration_constant_model():
    # model predicts token 0 w.p. 0.7; data has exactly 70 % zeros -> ECE 0, accuracy 0.7, NLL = H(0.7)
    model = ConstantLM([0.7, 0.3])
    y = torch.tensor([[0] * 7 + [1] * 3] * 4)
    res = next_token_calibration(model, [(torch.zeros_like(y), y)], n_boot=50)
    assert res.ece.estimate == pytest.approx(0.0, abs=1e-12)
    assert res.accuracy == pytest.approx(0.7) and res.n_tokens == 40
    assert res.nll == pytest.approx(-(0.7 * math.log(0.7) + 0.3 * math.log(0.3)), abs=1e-12)
    json.dumps(res.to_dict())


def test_sampling_error_rate_closed_form_and_seed():
    model = ConstantLM([0.5, 0.3, 0.2])
    prompts, answers = torch.zeros(200, 3, dtype=torch.long), torch.zeros(200, 1, dtype=torch.long)
    settings = [{"temperature": 0.0}, {"temperature": 1.0}, {"top_k": 1}, {"top_p": 0.6}]
    res = sampling_error_rate(model, prompts, answers, settings, n_samples=10, n_boot=200)
    assert res[0].error_rate.estimate == 0.0 and res[2].error_rate.estimate == 0.0
    assert res[1].error_rate.contains(0.5) and res[3].error_rate.contains(0.375)
    again = sampling_error_rate(model, prompts, answers, settings[1:2], n_samples=10, n_boot=200)
    assert again[0].per_prompt == res[1].per_prompt
    with pytest.raises(MathlensError):
        sampling_error_rate(model, prompts, answers, [{"temp": 1.0}])


def test_likelihood_entropy_gap_uniform_model():
    V = 4
    model = ConstantLM([1 / V] * V)
    batches = [torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(i)) for i in range(5)]
    r = likelihood_entropy_gap(model, batches, entropy_rate=math.log(2), n_boot=100)
    assert r.gap.estimate == pytest.approx(math.log(V) - math.log(2), abs=1e-12)
    assert r.gap.low == pytest.approx(r.gap.high) and r.n_batches == 5
    json.dumps(r.to_dict())


def test_retrieval_accuracy_matches_a_direct_count():
    from mathlens.data import AssociativeRecall
    from mathlens.probes.uncertainty import retrieval_accuracy

    class Constant(torch.nn.Module):  # always predicts token `tok`
        def __init__(self, vocab, tok):
            super().__init__()
            self.vocab, self.tok = vocab, tok

        def forward(self, x):
            logits = torch.zeros(*x.shape, self.vocab)
            logits[..., self.tok] = 1.0
            return logits, None

    tasks = {d: AssociativeRecall(block_size=32, n_pairs=4, n_keys=8, n_values=4, distance=d, seed=0) for d in (0, 20)}
    task = tasks[0]
    acc = retrieval_accuracy(Constant(task.vocab_size, task.n_keys), tasks, n_examples=200, batch_size=64, seed=3)
    for d, t in tasks.items():
        answers = t.eval_set("val", 200, 3)[:, -1]  # the value after the queried key
        assert acc[d] == pytest.approx(float((answers == t.n_keys).mean()), abs=1e-12)
        assert 0.05 < acc[d] < 0.5  # 4 values: about a quarter


@pytest.mark.parametrize("probs, needle", [
    ([[3.0, -1.0], [2.0, 0.5]], "probabilities in [0, 1]"),  # logits by mistake: ECE came out as 2.0
    ([[float("nan"), 1.0], [0.5, 0.5]], "finite"),
    ([[0.5, 0.2], [0.5, 0.5]], "sum to 1"),
])
def test_calibration_refuses_what_is_not_a_probability(probs, needle):
    with pytest.raises(MathlensError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        expected_calibration_error(probs, [0, 1], 10)
