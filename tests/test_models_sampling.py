"""Temperature, top-k and top-p sampling against their definitions, on distributions we know.

Frequency tests draw N = 40,000 tokens with a fixed seed and run Pearson's chi-square test against the
distribution the definition prescribes; they pass when p > 1e-3. Under a correct sampler that happens with
probability 0.999, and with the seed fixed the outcome is deterministic (no flakiness). Each frequency test
also checks power: the same counts reject the nearest wrong answer (untruncated / untempered) at p < 1e-6.
"""

import pytest
import torch
from scipy.stats import chisquare

from mathlens.errors import MathlensError
from mathlens.models.sampling import filter_logits, sample_next

N = 40_000
LOGITS = torch.log(torch.tensor([0.30, 0.05, 0.20, 0.02, 0.15, 0.08, 0.12, 0.08]))


def draw(logits, **kw):
    """Token counts of N independent draws from sample_next on ``logits: (V,)``."""
    gen = torch.Generator().manual_seed(1234)
    tokens = sample_next(logits.expand(N, -1), generator=gen, **kw)[:, 0]
    return torch.bincount(tokens, minlength=logits.shape[-1]).double()


def chi2_p(counts, probs):
    """Chi-square p-value of ``counts`` under ``probs`` (cells of probability 0 must have count 0)."""
    keep = probs > 0
    assert counts[~keep].sum() == 0
    return chisquare(counts[keep].numpy(), (probs[keep] * counts.sum()).numpy()).pvalue


def test_temperature_is_softmax_of_logits_over_t():
    for T in (0.5, 1.0, 3.0):
        p = torch.softmax(filter_logits(LOGITS, temperature=T), -1)
        closed = LOGITS.exp() ** (1 / T) / (LOGITS.exp() ** (1 / T)).sum()  # p_i^(1/T), renormalised
        assert torch.allclose(p, closed, atol=1e-6)
    counts = draw(LOGITS, temperature=2.0)
    assert chi2_p(counts, torch.softmax(LOGITS.double() / 2, -1)) > 1e-3
    assert chi2_p(counts, torch.softmax(LOGITS.double(), -1)) < 1e-6  # power: T = 1 is rejected


def test_top_k_keeps_exactly_the_k_most_likely_and_renormalises():
    k = 3
    kept = torch.isfinite(filter_logits(LOGITS, top_k=k))
    assert kept.tolist() == [True, False, True, False, True, False, False, False]  # 0.30, 0.20, 0.15
    counts = draw(LOGITS, top_k=k)
    assert counts[~kept].sum() == 0  # every sampled token is among the k most likely
    truncated = torch.where(kept, LOGITS.exp(), 0.0).double()
    assert chi2_p(counts, truncated / truncated.sum()) > 1e-3
    assert chi2_p(counts, torch.where(kept, 1.0, 0.0).double() / k) < 1e-6  # power: uniform on top-k rejected


@pytest.mark.parametrize("p, expected", [(0.25, [0]), (0.45, [0, 2]), (0.55, [0, 2, 4]), (0.66, [0, 2, 4, 6]),
                                         (0.999, list(range(8)))])
def test_top_p_keeps_the_smallest_prefix_reaching_p(p, expected):
    kept = torch.isfinite(filter_logits(LOGITS, top_p=p)).nonzero()[:, 0].tolist()
    assert kept == expected  # sorted probs 0.30, 0.20, 0.15, 0.12, 0.08, 0.08, 0.05, 0.02


def test_top_p_matches_definition_on_random_distributions():
    gen = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(200, 30, generator=gen, dtype=torch.float64)
    ps = torch.rand(200, generator=gen, dtype=torch.float64)
    for row, p in zip(logits, ps.tolist()):
        probs, order = torch.sort(torch.softmax(row, -1), descending=True)
        cum = probs.cumsum(0)
        if (cum - p).abs().min() < 1e-9:  # p on a boundary: the set is decided by rounding
            continue
        m = int((cum < p).sum()) + 1  # smallest m with p_(1) + ... + p_(m) ≥ p
        kept = torch.isfinite(filter_logits(row, top_p=p))
        assert set(kept.nonzero()[:, 0].tolist()) == set(order[:m].tolist())
        assert cum[m - 1] >= p and (m == 1 or cum[m - 2] < p)


def test_top_p_sampling_frequencies():
    kept = torch.isfinite(filter_logits(LOGITS, top_p=0.55))
    counts = draw(LOGITS, top_p=0.55)
    nucleus = torch.where(kept, LOGITS.exp(), 0.0).double()
    assert chi2_p(counts, nucleus / nucleus.sum()) > 1e-3


def test_top_k_then_top_p_and_temperature_compose():
    out = filter_logits(LOGITS, temperature=0.5, top_k=4, top_p=0.8)
    q = torch.where(torch.isfinite(filter_logits(LOGITS, top_k=4)), (LOGITS / 0.5).exp(), 0.0)
    q = q / q.sum()  # tempered top-4: ∝ 0.30², 0.20², 0.15², 0.12² = 0.539, 0.240, 0.135, 0.086
    assert torch.allclose(torch.softmax(out, -1), torch.where(torch.isfinite(out), q, 0.0) / q[[0, 2, 4]].sum())
    assert sorted(torch.isfinite(out).nonzero()[:, 0].tolist()) == [0, 2, 4]  # top-p 0.8 on q keeps 3 tokens
    assert q[0] + q[2] < 0.8 <= q[0] + q[2] + q[4]


def test_temperature_zero_is_argmax_and_small_temperature_converges_to_it():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(5))
    greedy = sample_next(logits, temperature=0.0)
    assert torch.equal(greedy[:, 0], logits.argmax(-1))
    gap = (logits.topk(2, -1).values[:, 0] - logits.topk(2, -1).values[:, 1]).min().item()
    T = gap / 60  # every alternative has probability ≤ 49 e^-60 < 1e-24
    assert torch.equal(sample_next(logits, temperature=T, generator=torch.Generator().manual_seed(0)), greedy)


@pytest.mark.parametrize("kw, named", [(dict(temperature=-1.0), "temperature"), (dict(top_k=0), "top_k"),
                                       (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p")])
def test_bad_sampling_settings(kw, named):
    with pytest.raises(MathlensError, match=named):
        sample_next(LOGITS[None], **kw)
