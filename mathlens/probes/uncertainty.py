"""Uncertainty and hallucination mechanisms: calibration, error detectors, attention dilution,
sampling-induced errors, and the likelihood–entropy-rate gap.

Array functions (NumPy) come first; the model-facing functions at the end need only the GPT contract
``logits, loss = model(idx, targets=None)`` with ``idx: (batch, tokens)`` and
``logits: (batch, tokens, vocab)``, so they work with any module that returns that pair.
Batches are ``(x, y)`` pairs of (batch, tokens) int64 tensors, or single (batch, tokens + 1) tensors
split as ``x = t[:, :-1], y = t[:, 1:]``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import rankdata

from mathlens.errors import MathlensError
from mathlens.models.sampling import sample_next
from mathlens.stats import CI, bootstrap_ci, ci_from_bootstrap, ols_slope

__all__ = [
    "ReliabilityDiagram", "expected_calibration_error", "reliability_diagram", "ece_from_confidence",
    "classwise_ece", "plot_reliability", "auroc", "predictive_entropy", "margin", "semantic_entropy",
    "detector_auroc", "attention_entropy", "AttentionEntropy", "attention_entropy_vs_length",
    "CalibrationResult", "next_token_calibration", "SamplingErrorResult",
    "sampling_error_rate", "EntropyGap", "likelihood_entropy_gap", "retrieval_accuracy",
]


# ---- calibration ----------------------------------------------------------------------------------

def _probs_labels(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(probs, dtype=float), np.asarray(labels).reshape(-1)
    if p.ndim != 2 or p.shape[0] != y.size or p.shape[0] == 0:
        raise MathlensError(f"probs must be (n, classes) with one label per row, got {p.shape} and {y.size}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise MathlensError("labels must be integers in [0, classes)")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise MathlensError("probs must be finite probabilities in [0, 1] (logits? apply a softmax first)")
    worst = float(np.abs(p.sum(1) - 1).max())
    if worst > 1e-4:  # float32 softmax rows are within ~1e-6 of 1
        raise MathlensError(f"every row of probs must sum to 1 (a row is off by {worst:.3g}; apply a softmax first)")
    return p, y.astype(np.int64)


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins ((m−1)/M, m/M], m = 1..M (Guo et al. 2017); confidence 0 goes to bin 1."""
    return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], conf, side="left")


def _ece_binned(conf, correct, n_bins) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    idx = _bin_index(conf, n_bins)
    counts = np.bincount(idx, minlength=n_bins).astype(float)
    s_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    s_acc = np.bincount(idx, weights=correct, minlength=n_bins)
    ece = float(np.sum(np.abs(s_acc - s_conf)) / conf.size)  # Σ_m |B_m|/n · |acc_m − conf_m|
    with np.errstate(invalid="ignore", divide="ignore"):
        return ece, s_conf / counts, s_acc / counts, counts


@dataclass
class ReliabilityDiagram:
    """Per-bin mean confidence, accuracy (NaN for empty bins) and counts; ``edges: (n_bins + 1,)``."""

    edges: list
    confidence: list
    accuracy: list
    counts: list
    ece: float

    def to_dict(self) -> dict:
        clean = lambda v: [None if not np.isfinite(x) else float(x) for x in v]
        return {"edges": [float(e) for e in self.edges], "confidence": clean(self.confidence),
                "accuracy": clean(self.accuracy), "counts": [int(c) for c in self.counts], "ece": self.ece}


def ece_from_confidence(confidence, correct, n_bins: int = 15) -> float:
    """ECE = Σ_m |B_m|/n |acc(B_m) − conf(B_m)| from top-label confidence: (n,) and correct: (n,) bools."""
    c, k = np.asarray(confidence, dtype=float).reshape(-1), np.asarray(correct, dtype=float).reshape(-1)
    if c.size == 0 or c.size != k.size:
        raise MathlensError("confidence and correct must be non-empty and of equal length")
    return _ece_binned(c, k, n_bins)[0]


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """Top-label ECE (Guo et al. 2017) with ``n_bins`` equal-width bins. probs: (n, classes), labels: (n,)."""
    p, y = _probs_labels(probs, labels)
    return ece_from_confidence(p.max(1), p.argmax(1) == y, n_bins)


def reliability_diagram(probs, labels, n_bins: int = 15) -> ReliabilityDiagram:
    """Data of the reliability diagram (top label). probs: (n, classes), labels: (n,)."""
    p, y = _probs_labels(probs, labels)
    ece, conf, acc, counts = _ece_binned(p.max(1), (p.argmax(1) == y).astype(float), n_bins)
    return ReliabilityDiagram(list(np.linspace(0, 1, n_bins + 1)), list(conf), list(acc), list(counts), ece)


def classwise_ece(probs, labels, n_bins: int = 15) -> float:
    """Classwise ECE (Kull et al. 2019): mean over classes k of Σ_m |B_mk|/n |freq_mk(y = k) − p̄_mk|,
    calibration of the full distribution rather than of the top label only."""
    p, y = _probs_labels(probs, labels)
    return float(np.mean([_ece_binned(p[:, k], (y == k).astype(float), n_bins)[0] for k in range(p.shape[1])]))


def plot_reliability(diagram: ReliabilityDiagram, ax=None):
    """Bar plot of accuracy per confidence bin against the diagonal; returns the Figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(4, 4))
    e = np.asarray(diagram.edges)
    acc = np.nan_to_num(np.asarray(diagram.accuracy, dtype=float))
    ax.bar(e[:-1], acc, width=np.diff(e), align="edge", edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"ECE = {diagram.ece:.4f}")
    ax.legend(loc="upper left")
    return fig


# ---- detectors --------------------------------------------------------------------------------------

def auroc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive), by the Mann–Whitney
    rank statistic with average ranks for ties (equals scikit-learn's ``roc_auc_score``)."""
    s, y = np.asarray(scores, dtype=float).reshape(-1), np.asarray(labels).reshape(-1).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if s.size != y.size or n_pos == 0 or n_neg == 0:
        raise MathlensError("AUROC needs equal-length scores and labels with both classes present")
    r = rankdata(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def predictive_entropy(probs) -> np.ndarray:
    """H(p) = −Σ_k p_k log p_k in nats. probs: (n, classes) -> (n,)."""
    p = np.asarray(probs, dtype=float)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def margin(probs) -> np.ndarray:
    """Top-1 minus top-2 probability. probs: (n, classes) -> (n,) (low margin = uncertain)."""
    p = np.sort(np.asarray(probs, dtype=float), axis=-1)
    return p[..., -1] - p[..., -2]


def semantic_entropy(samples: Sequence[Sequence], key: Callable | None = None) -> np.ndarray:
    """Semantic-entropy analogue (Kuhn et al. 2023; Farquhar et al. 2024) with exact equivalence:
    cluster each question's m sampled answers by ``key(answer)`` (identity by default; e.g.
    ``str.strip``), return the entropy (nats) of the cluster frequencies. samples: n lists -> (n,)."""
    out = []
    for answers in samples:
        if len(answers) == 0:
            raise MathlensError("semantic_entropy: a question has no sampled answers")
        keys = [tuple(a) if isinstance(a, list | np.ndarray) else a for a in answers]
        counts = np.array(list(Counter(map(key, keys) if key else keys).values()), dtype=float)
        q = counts / counts.sum()
        out.append(float(-np.sum(q * np.log(q))))
    return np.array(out)


def detector_auroc(scores, correct) -> float:
    """AUROC of an uncertainty score (high = predicts an error) for detecting incorrect answers."""
    return auroc(scores, ~np.asarray(correct).astype(bool))


# ---- attention dilution ----------------------------------------------------------------------------

def attention_entropy(P) -> np.ndarray:
    """Row entropies −Σ_j P_ij log P_ij (nats) of attention probabilities P: (..., Tq, Tk) -> (..., Tq)."""
    return predictive_entropy(P)


@dataclass
class AttentionEntropy:
    """Per-head row entropy against log n (n = number of visible keys). ``slope: (H,)`` is dH/dlog n
    (1 for uniform attention, 0 for fixed-support attention); ``normalised``: mean H / log n."""

    log_n: list
    entropy: list  # (H, T) batch-mean entropy per query position
    slope: list
    normalised: list

    def to_dict(self) -> dict:
        return {"log_n": self.log_n, "entropy": self.entropy, "slope": self.slope, "normalised": self.normalised}


def attention_entropy_vs_length(P, causal: bool = True) -> AttentionEntropy:
    """Attention entropy vs context length from per-head attention probabilities.

    P: (B, H, T, T) or (H, T, T) softmax weights (rows over keys). With ``causal`` the query at
    position i sees n_i = i + 1 keys, otherwise n_i = T. The OLS slope over positions with n ≥ 2.
    """
    P = np.asarray(P, dtype=float)
    if P.ndim == 3:
        P = P[None]
    if P.ndim != 4 or P.shape[-1] != P.shape[-2]:
        raise MathlensError(f"attention probabilities must be (B, H, T, T), got {P.shape}")
    T = P.shape[-1]
    H = attention_entropy(P).mean(0)  # (H, T)
    n = np.arange(1, T + 1) if causal else np.full(T, T)
    log_n = np.log(n.astype(float))
    use = n >= 2
    slope = ols_slope(np.broadcast_to(log_n[use], H[:, use].shape), H[:, use]) if causal else np.full(
        H.shape[0], np.nan)
    normalised = (H[:, use] / log_n[use]).mean(1)
    return AttentionEntropy(log_n.tolist(), H.tolist(), [float(s) for s in slope], normalised.tolist())


# ---- model-facing -----------------------------------------------------------------------------------

def _xy(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, tuple | list):
        return batch[0], batch[1]
    return batch[:, :-1], batch[:, 1:]


@dataclass
class CalibrationResult:
    """Next-token calibration of a model: top-label ECE (with bootstrap CI over tokens), NLL (nats),
    accuracy, number of tokens, reliability diagram."""

    ece: CI
    nll: float
    accuracy: float
    n_tokens: int
    diagram: ReliabilityDiagram
    n_bins: int

    def to_dict(self) -> dict:
        return {"ece": self.ece.to_dict(), "nll": self.nll, "accuracy": self.accuracy,
                "n_tokens": self.n_tokens, "n_bins": self.n_bins, "diagram": self.diagram.to_dict()}


@torch.no_grad()
def next_token_calibration(model, batches: Iterable, n_bins: int = 15, n_boot: int = 200,
                           seed: int = 0) -> CalibrationResult:
    """Top-label calibration of next-token predictions over all positions of ``batches``."""
    conf, correct, nll = [], [], []
    for batch in batches:
        x, y = _xy(batch)
        logp = torch.log_softmax(model(x)[0].double(), dim=-1)
        top, pred = logp.max(-1)
        conf.append(top.exp().reshape(-1).cpu().numpy())
        correct.append((pred == y).reshape(-1).cpu().numpy())
        nll.append((-logp.gather(-1, y.unsqueeze(-1))).reshape(-1).cpu().numpy())
    if not conf:
        raise MathlensError("next_token_calibration: no batches")
    c, k, nll = np.concatenate(conf), np.concatenate(correct).astype(float), np.concatenate(nll)
    ece, bc, ba, counts = _ece_binned(c, k, n_bins)
    rng = np.random.default_rng(seed)
    boot = [_ece_binned(c[i], k[i], n_bins)[0] for i in (rng.integers(0, c.size, c.size) for _ in range(n_boot))]
    diagram = ReliabilityDiagram(list(np.linspace(0, 1, n_bins + 1)), list(bc), list(ba), list(counts), ece)
    return CalibrationResult(ci_from_bootstrap(boot, ece, c.size), float(nll.mean()), float(k.mean()),
                             int(c.size), diagram, n_bins)


@dataclass
class SamplingErrorResult:
    """Error rate of sampled answers at one decoding setting (CI by bootstrap over prompts)."""

    temperature: float
    top_k: int | None
    top_p: float | None
    error_rate: CI
    per_prompt: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "error_rate": self.error_rate.to_dict(), "per_prompt": self.per_prompt}


@torch.no_grad()
def sampling_error_rate(model, prompts: torch.Tensor, answers: torch.Tensor, settings: Sequence[dict],
                        n_samples: int = 8, seed: int = 0, n_boot: int = 1000) -> list[SamplingErrorResult]:
    """Fraction of sampled answers that differ from the known answer, per decoding setting.

    prompts: (B, T) int64, answers: (B, k) int64; ``settings``: dicts with keys temperature / top_k /
    top_p. An answer is wrong when any of its k sampled tokens differs. The context is cropped to
    ``model.config.block_size`` when the model has one.
    """
    if prompts.ndim != 2 or answers.ndim != 2 or prompts.shape[0] != answers.shape[0]:
        raise MathlensError("prompts must be (B, T) and answers (B, k) with the same B")
    block = getattr(getattr(model, "config", None), "block_size", None)
    results = []
    for s in settings:
        unknown = set(s) - {"temperature", "top_k", "top_p"}
        if unknown:
            raise MathlensError(f"unknown sampling setting(s): {sorted(unknown)}")
        g = torch.Generator(device=prompts.device).manual_seed(seed)
        wrong = torch.zeros(prompts.shape[0], dtype=torch.float64)
        for _ in range(n_samples):
            x = prompts
            for _ in range(answers.shape[1]):
                logits = model(x if block is None else x[:, -block:])[0][:, -1, :]
                x = torch.cat([x, sample_next(logits, generator=g, **s)], dim=1)
            wrong += (x[:, prompts.shape[1]:] != answers).any(-1).double().cpu()
        per_prompt = (wrong / n_samples).numpy()
        results.append(SamplingErrorResult(float(s.get("temperature", 1.0)), s.get("top_k"), s.get("top_p"),
                                           bootstrap_ci(per_prompt, n_boot=n_boot, seed=seed),
                                           per_prompt.tolist()))
    return results


@dataclass
class EntropyGap:
    """Model cross-entropy minus the source's entropy rate (nats/token); ≥ 0 in expectation (Gibbs)."""

    cross_entropy: CI
    entropy_rate: float
    gap: CI
    n_batches: int

    def to_dict(self) -> dict:
        return {"cross_entropy": self.cross_entropy.to_dict(), "entropy_rate": self.entropy_rate,
                "gap": self.gap.to_dict(), "n_batches": self.n_batches}


@torch.no_grad()
def likelihood_entropy_gap(model, batches: Iterable, entropy_rate: float, n_boot: int = 2000,
                           seed: int = 0) -> EntropyGap:
    """Per-batch mean cross-entropy (``model(x, y)[1]``) minus a known entropy rate (nats/token), with
    percentile bootstrap CIs over batches (use equal-size batches)."""
    ce = np.array([float(model(*_xy(b))[1]) for b in batches])
    if ce.size == 0:
        raise MathlensError("likelihood_entropy_gap: no batches")
    ci = bootstrap_ci(ce, n_boot=n_boot, seed=seed)
    gap = CI(ci.estimate - entropy_rate, ci.low - entropy_rate, ci.high - entropy_rate, ci.level, ci.n, ci.method)
    return EntropyGap(ci, float(entropy_rate), gap, int(ce.size))


@torch.no_grad()
def retrieval_accuracy(model, tasks: dict, n_examples: int = 256, batch_size: int = 64, seed: int = 0,
                       device="cpu") -> dict:
    """Accuracy on the answer positions of each task in ``tasks`` ({label: synthetic task}, e.g. associative
    recall at growing distance or with more distractor pairs), on a fixed evaluation set of ``n_examples``
    drawn with ``seed``: {label: accuracy}. The model must return ``(logits, loss)``."""
    out = {}
    for label, task in tasks.items():
        hits, n = 0.0, 0
        for x, y in task.iter_eval_batches("val", batch_size, n_examples=n_examples, seed=seed, device=device):
            hits += task.accuracy(model(x)[0], y) * len(x)
            n += len(x)
        out[label] = hits / max(n, 1)
    return out
