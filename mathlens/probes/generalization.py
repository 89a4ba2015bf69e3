"""Generalisation: the measured train/validation gap and three norm-based bounds, each reported with
its predicted dependence on N (parameters), T (sequence length) and D = m (training examples).

Dependence forms (``Bound.dependence[var]``): a float p means ∝ x^p; ``"sqrt_log"`` means ∝ √(log x);
``"none"`` means no explicit dependence; ``"norms"`` means only through the weight norms (no explicit
count). :func:`predicted_ratio` turns a form into the predicted bound(x2)/bound(x1) for a sweep. For
D the exponent is the exact local elasticity d log(complexity term)/d log m at the given m.

Matrices follow ``nn.Linear``: W: (out, in), x ↦ W x. ‖W‖₂ is the spectral norm and
‖Wᵀ‖_{2,1} = Σ_rows ‖W_{r,:}‖₂ is Bartlett et al.'s (2,1) norm of Aᵀ (sum of the row norms of W).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mathlens.errors import MathlensError
from mathlens.stats import CI, difference_ci

__all__ = [
    "Bound", "GapResult", "generalization_gap", "spectral_norm", "norm_21", "spectral_complexity",
    "spectral_bound", "attention_head_capacity", "pac_bayes_kl", "pac_bayes_bound", "predicted_ratio",
    "linear_weights", "head_matrices", "model_bounds",
]


@dataclass
class GapResult:
    """Validation minus training loss with a bootstrap CI (independent resampling of the two sets)."""

    train: float
    val: float
    gap: CI

    def to_dict(self) -> dict:
        return {"train": self.train, "val": self.val, "gap": self.gap.to_dict()}


def generalization_gap(train_losses, val_losses, n_boot: int = 2000, seed: int = 0) -> GapResult:
    """Gap = mean(val) − mean(train) from per-batch or per-token losses train: (n_t,), val: (n_v,)."""
    ci = difference_ci(val_losses, train_losses, n_boot=n_boot, seed=seed)
    return GapResult(float(np.mean(train_losses)), float(np.mean(val_losses)), ci)


@dataclass
class Bound:
    """A bound (or capacity term) value, the formula implemented, its predicted dependence on
    N / T / D, and the terms that produced it."""

    name: str
    value: float
    formula: str
    dependence: dict
    terms: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "value": float(self.value), "formula": self.formula,
                "dependence": dict(self.dependence), "terms": self.terms}


def predicted_ratio(dependence: dict, variable: str, x1: float, x2: float) -> float:
    """Predicted bound(x2) / bound(x1) when only ``variable`` changes (norms held fixed)."""
    form = dependence[variable]
    if isinstance(form, int | float):
        return float((x2 / x1) ** form)
    if form == "sqrt_log":
        return math.sqrt(math.log(x2) / math.log(x1))
    if form in ("none", "norms"):
        return 1.0
    raise MathlensError(f"unknown dependence form {form!r}")


def _mat(W) -> np.ndarray:
    W = np.asarray(W.detach().cpu().double() if hasattr(W, "detach") else W, dtype=float)
    if W.ndim != 2 or W.size == 0:
        raise MathlensError(f"expected a non-empty matrix, got shape {W.shape}")
    return W


def spectral_norm(W) -> float:
    """‖W‖₂, the largest singular value."""
    return float(np.linalg.norm(_mat(W), 2))


def norm_21(W) -> float:
    """‖Wᵀ‖_{2,1} = Σ_r ‖W_{r,:}‖₂ for W: (out, in)."""
    return float(np.linalg.norm(_mat(W), axis=1).sum())


def spectral_complexity(matrices: Sequence, references: Sequence | None = None) -> tuple[float, dict]:
    """Bartlett, Foster & Telgarsky 2017 spectral complexity with 1-Lipschitz activations:
    R = Π_l ‖W_l‖₂ · (Σ_l (‖(W_l − M_l)ᵀ‖_{2,1} / ‖W_l‖₂)^{2/3})^{3/2}, M_l = ``references`` (default 0)."""
    if len(matrices) == 0:
        raise MathlensError("spectral complexity needs at least one matrix")
    refs = references if references is not None else [None] * len(matrices)
    s = np.array([spectral_norm(W) for W in matrices])
    r = np.array([norm_21(_mat(W) - (0 if M is None else _mat(M))) for W, M in zip(matrices, refs)])
    if np.any(s == 0):
        raise MathlensError("a weight matrix is zero: spectral complexity undefined")
    R = float(np.prod(s) * np.sum((r / s) ** (2 / 3)) ** 1.5)
    return R, {"spectral_norms": s.tolist(), "norms_21": r.tolist()}


def spectral_bound(matrices: Sequence, m: int, B_X: float = 1.0, margin: float = 1.0,
                   references: Sequence | None = None) -> Bound:
    """Capacity term of Bartlett et al. 2017 (Thm 1.1, log factors and constants omitted):
    B_X · R / (γ √m), R = :func:`spectral_complexity`, B_X = max input norm, γ = margin.

    For a Transformer this treats its linear maps as one feed-forward chain with Lipschitz-1 gaps
    (the attention mixing and normalisations are ignored), so it is a norm-based capacity proxy."""
    if m < 1 or margin <= 0:
        raise MathlensError("need m >= 1 and margin > 0")
    R, terms = spectral_complexity(matrices, references)
    return Bound("spectral (Bartlett et al. 2017)", B_X * R / (margin * math.sqrt(m)),
                 "B_X * prod ||W||_2 * (sum (||W^T||_21/||W||_2)^(2/3))^(3/2) / (margin * sqrt(m))",
                 {"N": "norms", "T": "none", "D": -0.5}, {**terms, "R": R, "m": m})


def attention_head_capacity(W_qk, W_ov, T: int, m: int, B_X: float = 1.0) -> Bound:
    """Capacity term of one self-attention head after Edelman, Goel, Kakade & Zhang 2022 (ICML,
    "Inductive biases and variable creation in self-attention mechanisms", §4): with
    W_qk: (d, d) the bilinear score matrix (score_ij = x_iᵀ W_qk x_j) and W_ov: (d, d) the value-output
    map, we implement

        C = [ (B_X ‖W_ovᵀ‖_{2,1})^{2/3} + (2 B_X² ‖W_ov‖₂ ‖W_qkᵀ‖_{2,1})^{2/3} ]^{3/2} · √(log T / m),

    i.e. Bartlett-style chaining over the two parameter blocks, where the factor 2 B_X² ‖W_ov‖₂ is the
    Lipschitz constant of the head in W_qk (softmax is 2-Lipschitz from ℓ∞ to ℓ₁, scores scale with
    B_X²). Constants and log(m), log(d) factors are omitted, so this is a capacity term, not a bound;
    what it keeps is the paper's claim that capacity grows only as √(log T) in the context length."""
    if T < 2 or m < 1:
        raise MathlensError("attention capacity needs T >= 2 and m >= 1")
    a, b = B_X * norm_21(W_ov), 2 * B_X**2 * spectral_norm(W_ov) * norm_21(W_qk)
    complexity = (a ** (2 / 3) + b ** (2 / 3)) ** 1.5
    return Bound("attention head capacity (Edelman et al. 2022)", complexity * math.sqrt(math.log(T) / m),
                 "[(B_X ||W_ov^T||_21)^(2/3) + (2 B_X^2 ||W_ov||_2 ||W_qk^T||_21)^(2/3)]^(3/2) sqrt(log T / m)",
                 {"N": "norms", "T": "sqrt_log", "D": -0.5},
                 {"value_term": a, "score_term": b, "complexity": complexity, "T": T, "m": m})


def pac_bayes_kl(w, w0, sigma: float) -> float:
    """KL(N(w, σ²I) ‖ N(w0, σ²I)) = ‖w − w0‖² / (2σ²). w, w0: flat parameter vectors (N,)."""
    w, w0 = np.asarray(w, dtype=float).reshape(-1), np.asarray(w0, dtype=float).reshape(-1)
    if w.shape != w0.shape or sigma <= 0:
        raise MathlensError("PAC-Bayes KL needs w, w0 of equal size and sigma > 0")
    return float(np.sum((w - w0) ** 2) / (2 * sigma**2))


def _kl_bernoulli(q: float, p: float) -> float:
    eps = 1e-300
    return q * math.log(max(q, eps) / max(p, eps)) + (1 - q) * math.log(max(1 - q, eps) / max(1 - p, eps))


def _kl_inverse(q: float, c: float) -> float:
    """Largest p ∈ [q, 1] with kl(q ‖ p) ≤ c (bisection)."""
    lo, hi = q, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _kl_bernoulli(q, mid) <= c else (lo, mid)
    return lo


def _pac_value(train_error: float, kl: float, m: float, delta: float, kind: str, catoni_c: float) -> float:
    if kind == "mcallester":  # McAllester 1999 in Maurer's 2004 form
        return train_error + math.sqrt((kl + math.log(2 * math.sqrt(m) / delta)) / (2 * m))
    if kind == "kl":  # Langford–Seeger / Maurer: kl(L̂ ‖ L) ≤ (KL + log(2√m/δ)) / m
        return _kl_inverse(train_error, (kl + math.log(2 * math.sqrt(m) / delta)) / m)
    if kind == "catoni":  # Catoni 2007, fixed C > 0
        return (1 - math.exp(-catoni_c * train_error - (kl + math.log(1 / delta)) / m)) / (1 - math.exp(-catoni_c))
    raise MathlensError(f"PAC-Bayes kind must be mcallester, kl or catoni, got {kind!r}")


def pac_bayes_bound(train_error: float, w, w0, sigma: float, m: int, delta: float = 0.05,
                    kind: str = "mcallester", catoni_c: float = 1.0) -> Bound:
    """PAC-Bayes bound on the expected [0, 1]-loss of the Gaussian posterior Q = N(w, σ²I) with prior
    P = N(w0, σ²I) (w0 chosen before seeing the data, e.g. the initialisation); holds w.p. ≥ 1 − δ.

    train_error: empirical loss of Q in [0, 1] (e.g. error of perturbed weights), m: examples, σ from
    the curvature probes. kinds: ``mcallester`` L̂ + √((KL + log(2√m/δ))/(2m)); ``kl``
    kl⁻¹(L̂, (KL + log(2√m/δ))/m); ``catoni`` (1 − exp(−C L̂ − (KL + log(1/δ))/m)) / (1 − e^{−C})."""
    if not 0 <= train_error <= 1 or m < 1 or not 0 < delta < 1:
        raise MathlensError("PAC-Bayes needs train_error in [0, 1], m >= 1 and delta in (0, 1)")
    kl = pac_bayes_kl(w, w0, sigma)
    value = _pac_value(train_error, kl, m, delta, kind, catoni_c)
    h = 1e-4  # local elasticity of the complexity part in m
    g = [max(_pac_value(train_error, kl, m * f, delta, kind, catoni_c) - train_error, 1e-300)
         for f in (1 - h, 1 + h)]
    d_exp = (math.log(g[1]) - math.log(g[0])) / (math.log(1 + h) - math.log(1 - h))
    return Bound(f"PAC-Bayes ({kind})", min(value, 1.0) if kind != "mcallester" else value,
                 "KL = ||w - w0||^2 / (2 sigma^2); " + kind, {"N": "norms", "T": "none", "D": float(d_exp)},
                 {"kl": kl, "sigma": sigma, "m": m, "delta": delta, "n_params": int(np.size(w))})


# ---- model-facing (GPT contract parameter names) -------------------------------------------------

def linear_weights(model) -> list[tuple[str, np.ndarray]]:
    """(name, W: (out, in)) of every nn.Linear weight of the model, in registration order."""
    from torch import nn

    return [(f"{n}.weight" if n else "weight", _mat(mod.weight)) for n, mod in model.named_modules()
            if isinstance(mod, nn.Linear)]


def head_matrices(model, layer: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-head (W_qk, W_ov): (d, d) each, of ``blocks.{layer}.attn`` (GPT contract names w_q, w_k,
    w_v, w_o, attributes n_head, n_kv_head, head_dim, scale): score_ij = x_iᵀ W_qk x_j with
    W_qk = scale · W_q,hᵀ W_k,g and W_ov = W_o[:, h] W_v,g, g = h // (n_head / n_kv_head) (GQA)."""
    attn = model.get_submodule(f"blocks.{layer}.attn")
    H, dh = attn.n_head, attn.head_dim
    Hkv = getattr(attn, "n_kv_head", None) or H
    scale = float(getattr(attn, "scale", 1.0 / math.sqrt(dh)))
    Wq, Wk, Wv, Wo = (_mat(getattr(attn, n).weight) for n in ("w_q", "w_k", "w_v", "w_o"))
    out = []
    for h in range(H):
        g = h // (H // Hkv)
        q, k, v = Wq[h * dh:(h + 1) * dh], Wk[g * dh:(g + 1) * dh], Wv[g * dh:(g + 1) * dh]
        out.append((scale * q.T @ k, Wo[:, h * dh:(h + 1) * dh] @ v))
    return out


def model_bounds(model, m: int, T: int | None = None, B_X: float = 1.0, margin: float = 1.0) -> dict:
    """{"spectral": Bartlett capacity over all linear maps, "attention": Σ over layers and heads of
    :func:`attention_head_capacity`} for a GPT-contract model trained on m examples of length T
    (default ``model.config.block_size``)."""
    T = T or model.config.block_size
    spectral = spectral_bound([W for _, W in linear_weights(model)], m, B_X, margin)
    heads = [attention_head_capacity(qk, ov, T, m, B_X) for i in range(len(model.blocks))
             for qk, ov in head_matrices(model, i)]
    attention = Bound("attention capacity, sum over heads (Edelman et al. 2022)",
                      float(sum(b.value for b in heads)), heads[0].formula + " summed over heads",
                      heads[0].dependence, {"per_head": [b.value for b in heads], "T": T, "m": m})
    return {"spectral": spectral, "attention": attention}
