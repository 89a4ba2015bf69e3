"""Attention probes (THEORY.md §11.2 (2a)–(2d), predictions 15–17): per layer × head statistics of the
captured attention of any model, side by side with the same architecture randomly initialised.

The matrix statistics live in :mod:`mathlens.probes.attention_stats`, the kernel view (Nadaraya–Watson,
convex hull, Mercer test) in :mod:`mathlens.probes.attention_kernel`, figures in
:mod:`mathlens.probes.attention_plots`; this module gathers them per head and per model.

Row statistics are averaged over the batch and over the rows with at least two visible keys (a causal
row 0 has a single key: entropy 0 and top-1 mass 1 by construction, so it says nothing about sparsity).
Spectral statistics are averaged over the first ``spectral_batch`` sequences (all when None, none when 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from mathlens.errors import MathlensError
from mathlens.probes import attention_stats as st
from mathlens.probes.attention_kernel import (
    KernelSmootherCheck,
    MercerResult,
    kernel_smoother_check,
    mercer_test,
    nadaraya_watson,
)
from mathlens.probes.attention_stats import (
    cumulative_energy,
    effective_rank,
    rank_collapse_profile,
    rank_for_error,
    residual_ratio,
    stable_rank,
)
from mathlens.probes.capture import capture, qk_weights


@dataclass
class HeadStats:
    """All statistics of one head's attention matrices ``P: (B, n, n)`` (means over batch and rows)."""

    layer: int
    head: int
    n: int
    entropy: float  # mean row entropy H_i (nats)
    log_visible: float  # mean log m_i over the same rows: the entropy of uniform attention
    normalised_entropy: float  # mean H_i / log m_i in [0, 1]
    top_k_mass: float
    gini: float
    frac_above_tau: float
    # spectral statistics (None when skipped: spectral_batch=0)
    effective_rank: float | None  # Roy–Vetterli
    effective_rank_ratio: float | None  # effective_rank / n
    stable_rank: float | None
    rank_for_eps: float | None  # mean smallest k with relative Frobenius error ≤ eps (Eckart–Young)
    energy_at_k: float | None  # C(energy_k): singular-value mass in the top energy_k
    settings: dict = field(default_factory=dict)  # top_k, tau, eps, eps_norm, energy_k, causal

    def to_dict(self) -> dict:
        return asdict(self)


def head_statistics(P: Tensor, layer: int = 0, heads: list[int] | None = None, causal: bool = True,
                    top_k: int = 5, tau: float = 0.1, eps: float = 0.1, energy_k: int | None = None,
                    spectral_batch: int | None = None, row_batch: int | None = None) -> list[HeadStats]:
    """``P: (B, h, n, n)`` attention weights of ``h`` heads -> one :class:`HeadStats` per head.

    Row statistics use the first ``row_batch`` sequences, spectral ones the first ``spectral_batch``
    (None: all; 0: none, the spectral fields are None — a full singular spectrum per head is the costly part at long
    context: at GPT-2 shape on an H100 it was 92 % of the statistics' time).
    ``energy_k`` defaults to ``n // 4`` (Linformer: the top 128 of 512); ``eps`` is a relative
    Frobenius error for ``rank_for_eps``.
    """
    if P.dim() != 4 or P.shape[-1] != P.shape[-2]:
        raise MathlensError(f"P must have shape (batch, heads, n, n), got {tuple(P.shape)}")
    _check_batches(spectral_batch, row_batch)
    heads = list(range(P.shape[1])) if heads is None else list(heads)
    return _head_stats(P, [(layer, h) for h in heads], causal, top_k, tau, eps, energy_k, spectral_batch, row_batch)


def _check_batches(spectral_batch: int | None, row_batch: int | None) -> None:
    if spectral_batch is not None and int(spectral_batch) < 0 or row_batch is not None and int(row_batch) < 1:
        raise MathlensError(f"spectral_batch must be >= 0 and row_batch >= 1 (or None: all sequences), got "
                            f"{spectral_batch} and {row_batch}")


def _head_stats(P: Tensor, labels: list[tuple[int, int]], causal: bool, top_k: int, tau: float, eps: float,
                energy_k: int | None, spectral_batch: int | None, row_batch: int | None,
                H: Tensor | None = None) -> list[HeadStats]:
    """:func:`head_statistics` of ``P: (B, h, n, n)`` whose head ``j`` is ``labels[j] = (layer, head)``:
    every statistic is one batched op over all ``h`` columns (heads of several layers at once). ``H: (B, h, n)``:
    the row entropies when already known (:func:`~mathlens.probes.capture.attention_pattern`)."""
    B, h, n, _ = P.shape
    energy_k = max(1, n // 4) if energy_k is None else min(int(energy_k), n)
    if n < 2:
        raise MathlensError("attention statistics need at least two visible keys (n >= 2)")
    if not P.is_floating_point():
        raise MathlensError(f"P must be floating point, got {P.dtype}")
    first = 1 if causal else 0  # the rows with at least two visible keys: a causal row 0 sees only itself

    def rowmean(x: Tensor) -> Tensor:  # (B, h, n) -> (h,)
        return x[..., first:].mean(dim=(0, 2), dtype=torch.float64)

    R = P[: row_batch or B]
    H = st.row_entropy(R) if H is None else H[: R.shape[0]]
    logm = float(torch.log(st.visible_counts(n, causal).to(torch.float64))[first:].mean())
    mass, g, frac = st.sorted_row_statistics(R, top_k, causal, tau)  # one sort: top-k mass, Gini, fraction > τ
    stats = {
        "entropy": rowmean(H),
        "normalised_entropy": rowmean(st.normalised_entropy(R, causal, H)),
        "top_k_mass": rowmean(mass),
        "gini": rowmean(g),
        "frac_above_tau": rowmean(frac),
    }
    nb = B if spectral_batch is None else min(int(spectral_batch), B)
    if nb:
        s = st.singular_values(P[:nb])  # (b, h, n) float64
        stats["effective_rank"] = st.effective_rank_from_singular_values(s).mean(0)
        stats["effective_rank_ratio"] = stats["effective_rank"] / n
        stats["stable_rank"] = ((s**2).sum(-1) / (s[..., 0] ** 2)).mean(0)
        stats["energy_at_k"] = (torch.cumsum(s, -1) / s.sum(-1, keepdim=True))[..., energy_k - 1].mean(0)
        stats["rank_for_eps"] = st.rank_for_error_from_singular_values(s, eps, "fro").to(torch.float64).mean(0)
    vals = {k: v.tolist() for k, v in stats.items()}  # one device→host transfer per statistic
    for k in ("effective_rank", "effective_rank_ratio", "stable_rank", "energy_at_k", "rank_for_eps"):
        vals.setdefault(k, [None] * len(labels))  # spectral_batch=0: not computed
    settings = dict(top_k=top_k, tau=tau, eps=eps, eps_norm="fro", energy_k=energy_k, causal=causal,
                    batch=B, row_batch=R.shape[0], spectral_batch=nb)
    return [HeadStats(layer=layer, head=hd, n=n, log_visible=logm, settings=dict(settings),
                      **{k: v[j] for k, v in vals.items()})
            for j, (layer, hd) in enumerate(labels)]


@dataclass
class ModelAttention:
    """Attention statistics of one model: per head, per layer (kernel checks) and the rank-collapse profile."""

    heads: list[HeadStats]
    mercer: list[MercerResult]
    kernel_checks: dict[int, KernelSmootherCheck]  # layer -> Nadaraya–Watson / convex-hull residuals
    rank_collapse: list[float]  # ρ of [embedding, resid_post of each captured layer]

    def to_dict(self) -> dict:
        return {"heads": [h.to_dict() for h in self.heads], "mercer": [m.to_dict() for m in self.mercer],
                "kernel_checks": {str(k): v.to_dict() for k, v in self.kernel_checks.items()},
                "rank_collapse": list(self.rank_collapse)}

    def layer_mean(self, stat: str) -> dict[int, float]:
        """``{layer: mean over heads of stat}``."""
        out: dict[int, list[float]] = {}
        for h in self.heads:
            out.setdefault(h.layer, []).append(getattr(h, stat))
        return {k: sum(v) / len(v) for k, v in out.items()}


@dataclass
class AttentionSummary:
    """A model's attention statistics and (``random``) the same architecture re-initialised with ``seed``."""

    trained: ModelAttention
    random: ModelAttention | None
    settings: dict

    def to_dict(self) -> dict:
        return {"settings": dict(self.settings), "trained": self.trained.to_dict(),
                "random": None if self.random is None else self.random.to_dict()}


def random_init(model, seed: int):
    """The same architecture as ``model`` freshly initialised under ``torch.manual_seed(seed)``
    (same dtype and device, eval mode)."""
    p = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = type(model)(model.config)
    return new.to(device=p.device, dtype=p.dtype).eval()


def model_attention(model, idx: Tensor, layers=None, heads=None, top_k: int = 5, tau: float = 0.1,
                    eps: float = 0.1, energy_k: int | None = None, spectral_batch: int | None = None,
                    chunk_rows: int = 256, store_device="cpu", kernel_checks: bool = True,
                    mercer: bool = True, pattern_dtype=torch.float64, row_batch: int | None = None,
                    max_elements: int = 2**25) -> ModelAttention:
    """Capture ``model`` on ``idx: (B, T)`` and compute every statistic, one layer's patterns at a time.

    ``kernel_checks``: Nadaraya–Watson / convex-hull residuals per layer (one more attention pass);
    ``mercer``: the Mercer test of every head's ``W_Q W_Kᵀ``; ``store_device=None`` keeps everything on the
    model's device (fastest on a GPU); ``pattern_dtype`` float64 (default) or float32 (faster).
    The statistics of several layers are computed together (their heads side by side, one op per statistic)
    while their weights stay within ``max_elements`` entries; a larger layer is handled alone.
    """
    _check_batches(spectral_batch, row_batch)  # before the forward
    what = ("resid_post", "q", "k", "v", "z") if kernel_checks else ("resid_post", "q", "k")  # ρ reads resid_states()
    c = capture(model, idx, layers=layers, heads=heads, what=what, chunk_rows=chunk_rows,
                store_device=store_device)
    out: list[HeadStats] = []
    checks: dict[int, KernelSmootherCheck] = {}
    mercers: list[MercerResult] = []
    need = None if row_batch is None else max(row_batch, idx.shape[0] if spectral_batch is None else spectral_batch)
    for group in _layer_groups(c, need or idx.shape[0], max_elements):
        # P: (b, |group|·h, T, T), H: (b, |group|·h, T) row entropies from the scores
        P, H = c.patterns(group, chunk_rows=chunk_rows, dtype=pattern_dtype, batch=need, with_entropy=True)
        labels = [(i, hd) for i in group for hd in c.heads]
        out += _head_stats(P, labels, c.causal, top_k, tau, eps, energy_k, spectral_batch, row_batch, H)
        del P, H
    for i in c.layers:
        if kernel_checks and not c.alibi:
            checks[i] = kernel_smoother_check(c[f"blocks.{i}.attn.hook_q"], c.keys_for_heads(i, "k"),
                                              c.keys_for_heads(i, "v"), c[f"blocks.{i}.attn.hook_z"],
                                              c.scales[i], c.causal)
        if mercer:
            Wq, Wk = qk_weights(model, i)
            mercers += [mercer_test(Wq[h], Wk[h], i, h) for h in c.heads]
    return ModelAttention(out, mercers, checks, rank_collapse_profile(c.resid_states()))


def _layer_groups(c, batch: int, max_elements: int) -> list[list[int]]:
    """Consecutive captured layers whose patterns ``(batch, h, T, T)`` fit together in ``max_elements``
    (ALiBi layers alone: their weights come from the model's own per-layer function)."""
    T = c[f"blocks.{c.layers[0]}.attn.hook_q"].shape[-2] if c.layers else 0
    per_layer = batch * len(c.heads) * T * T
    size = 1 if c.alibi else max(1, max_elements // max(per_layer, 1))
    return [c.layers[i:i + size] for i in range(0, len(c.layers), size)]


def attention_summary(model, idx: Tensor, layers=None, heads=None, seed: int = 0, baseline: bool = True,
                      top_k: int = 5, tau: float = 0.1, eps: float = 0.1, energy_k: int | None = None,
                      spectral_batch: int | None = None, chunk_rows: int = 256) -> AttentionSummary:
    """Statistics of ``model``'s attention on ``idx: (B, T)`` and, with ``baseline``, of the same
    architecture randomly initialised with ``seed`` on the same inputs (prediction 16's control)."""
    kw = dict(layers=layers, heads=heads, top_k=top_k, tau=tau, eps=eps, energy_k=energy_k,
              spectral_batch=spectral_batch, chunk_rows=chunk_rows)
    was_training = model.training
    model.eval()
    try:
        trained = model_attention(model, idx, **kw)
    finally:
        model.train(was_training)
    rnd = model_attention(random_init(model, seed), idx, **kw) if baseline else None
    settings = dict(kw, seed=seed, baseline=baseline, batch=int(idx.shape[0]), tokens=int(idx.shape[1]),
                    log_n=math.log(int(idx.shape[1])))
    return AttentionSummary(trained, rnd, settings)


__all__ = ["AttentionSummary", "HeadStats", "KernelSmootherCheck", "MercerResult", "ModelAttention",
           "attention_summary", "cumulative_energy", "effective_rank", "head_statistics",
           "kernel_smoother_check", "mercer_test", "model_attention", "nadaraya_watson", "random_init",
           "rank_collapse_profile", "rank_for_error", "residual_ratio", "stable_rank"]
