"""The attention GL(d_k) symmetry W_Q → W_Q R, W_K → W_K R^{-T} and which flatness measures respect it.

Scores ``q·k`` are unchanged when every query head's projection is multiplied by ``R`` and the
matching key head's by ``R^{-T}``: ``(q R)(k R^{-T})ᵀ = q kᵀ``. In ``nn.Linear`` layout (weight
``(n_head·head_dim, n_embd)``, rows grouped per head, ``q_h = Q_h x + b_h``) that is
``Q_h ← Rᵀ Q_h, b_q,h ← Rᵀ b_q,h`` and ``K_g ← R^{-1} K_g, b_k,g ← R^{-1} b_k,g``. With grouped-query
attention all query heads of one key/value group share that group's ``R``. The function computed by
the model is unchanged (exactly, up to rounding) unless something acts between the projection and the
dot product (RoPE does: then only R commuting with the rotations is a symmetry — the check shows it).

Dinh et al. 2017: a measure that changes under such a reparametrisation cannot be a property of the
function. :func:`symmetry_check` recomputes each measure after a random ``R`` and reports relative changes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from mathlens.errors import MathlensError
from mathlens.probes.curvature.sharpness import adaptive_sharpness, keskar_sharpness, pac_bayes_sigma
from mathlens.probes.curvature.spectrum import hessian_trace, top_eigenvalues

R_KINDS = ("general", "diagonal", "orthogonal")
MEASURES = ("loss", "lambda_max", "trace", "keskar", "adaptive", "pac_bayes")


@dataclass
class QKPair:
    """A query/key projection pair: module paths of two ``nn.Linear`` and the head layout."""

    q_name: str
    k_name: str
    n_head: int
    n_kv_head: int
    head_dim: int


def find_qk_pairs(model: nn.Module) -> list[QKPair]:
    """Every module with ``nn.Linear`` attributes ``w_q``, ``w_k`` and ``n_head``/``head_dim`` (GPT contract)."""
    pairs = []
    for name, mod in model.named_modules():
        if isinstance(getattr(mod, "w_q", None), nn.Linear) and isinstance(getattr(mod, "w_k", None), nn.Linear) \
                and hasattr(mod, "n_head") and hasattr(mod, "head_dim"):
            prefix = f"{name}." if name else ""
            pairs.append(QKPair(prefix + "w_q", prefix + "w_k", int(mod.n_head),
                                int(getattr(mod, "n_kv_head", None) or mod.n_head), int(mod.head_dim)))
    return pairs


def random_invertible(d: int, seed: int, kind: str = "general", condition: float = 10.0,
                      dtype=torch.float64) -> torch.Tensor:
    """``R: (d, d)``: ``U diag(s) V`` (general), ``diag(s)`` (diagonal) or ``U`` (orthogonal), where
    ``U, V`` are seeded Haar orthogonal matrices and ``s`` log-uniform in ``[1/√c, √c]`` (cond(R) ≤ c)."""
    if kind not in R_KINDS:
        raise MathlensError(f"unknown kind of R {kind!r}; choose one of {R_KINDS}")
    g = torch.Generator().manual_seed(int(seed))

    def haar():
        Q, Rr = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        return Q * torch.sign(torch.diagonal(Rr))

    s = torch.exp((torch.rand(d, generator=g, dtype=torch.float64) - 0.5) * math.log(condition))
    R = {"general": lambda: (haar() * s) @ haar(), "diagonal": lambda: torch.diag(s), "orthogonal": haar}[kind]()
    return R.to(dtype)


@torch.no_grad()
def apply_qk_symmetry(model: nn.Module, pairs: list[QKPair] | None = None, R: dict | None = None, seed: int = 0,
                      kind: str = "general", condition: float = 10.0, inplace: bool = False):
    """Apply ``W_Q → W_Q R, W_K → W_K R^{-T}`` per key/value head; returns ``(model', {(q_name, g): R})``.

    ``R``: optional ``{(q_name, kv_head): (head_dim, head_dim)}``; missing entries are drawn with
    :func:`random_invertible` (seeds ``seed + i``). The original model is left alone unless ``inplace``.
    """
    out = model if inplace else copy.deepcopy(model)
    pairs = find_qk_pairs(out) if pairs is None else pairs
    if not pairs:
        raise MathlensError("no query/key projection pairs found (modules with nn.Linear w_q, w_k, n_head, head_dim)")
    mods = dict(out.named_modules())
    used, i = {}, 0
    for pair in pairs:
        if pair.n_head % pair.n_kv_head:
            raise MathlensError(f"{pair.q_name}: n_head={pair.n_head} is not a multiple of n_kv_head={pair.n_kv_head}")
        q, k = mods[pair.q_name], mods[pair.k_name]
        dh, group = pair.head_dim, pair.n_head // pair.n_kv_head
        if q.weight.shape[0] != pair.n_head * dh or k.weight.shape[0] != pair.n_kv_head * dh:
            raise MathlensError(f"{pair.q_name}/{pair.k_name}: weight rows do not match n_head·head_dim")
        for gi in range(pair.n_kv_head):
            Rg = (R or {}).get((pair.q_name, gi))
            if Rg is None:
                Rg = random_invertible(dh, seed + i, kind, condition)
            i += 1
            used[(pair.q_name, gi)] = Rg
            Rg64 = Rg.to(torch.float64)
            Rinv = torch.linalg.inv(Rg64)
            ks = slice(gi * dh, (gi + 1) * dh)
            k.weight[ks] = (Rinv @ k.weight[ks].double()).to(k.weight.dtype)
            if k.bias is not None:
                k.bias[ks] = (Rinv @ k.bias[ks].double()).to(k.bias.dtype)
            for h in range(gi * group, (gi + 1) * group):
                qs = slice(h * dh, (h + 1) * dh)
                q.weight[qs] = (Rg64.T @ q.weight[qs].double()).to(q.weight.dtype)
                if q.bias is not None:
                    q.bias[qs] = (Rg64.T @ q.bias[qs].double()).to(q.bias.dtype)
    return out, used


@dataclass
class SymmetryResult:
    """Each measure before/after the rescaling, ``relative_change = |after − before| / |before|`` and
    ``invariant = relative_change ≤ rtol``."""

    before: dict
    after: dict
    relative_change: dict
    invariant: dict
    kind: str
    condition: float
    rtol: float
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def compute_measures(model: nn.Module, loss_fn: Callable, batches: list, measures=MEASURES, seed: int = 0,
                     epsilon: float = 1e-3, rho: float = 0.05, delta: float = 0.1, lanczos_iter: int = 30,
                     trace_samples: int = 30, n_iter: int = 10) -> dict:
    """The flatness measures named in ``measures`` (subset of ``MEASURES``) with fixed seeds."""
    unknown = set(measures) - set(MEASURES)
    if unknown:
        raise MathlensError(f"unknown measures {sorted(unknown)}; choose from {MEASURES}")
    from mathlens.probes.curvature.operators import ModelLoss

    out = {}
    for m in measures:
        if m == "loss":
            out[m] = ModelLoss(model, loss_fn, batches).value()
        elif m == "lambda_max":
            out[m] = top_eigenvalues(model, loss_fn, batches, k=1, seed=seed, max_iter=lanczos_iter,
                                     tol=1e-8).eigenvalues[0]
        elif m == "trace":
            out[m] = hessian_trace(model, loss_fn, batches, n_samples=trace_samples, seed=seed).trace
        elif m == "keskar":
            out[m] = keskar_sharpness(model, loss_fn, batches, epsilon=epsilon, n_iter=n_iter, seed=seed).value
        elif m == "adaptive":
            out[m] = adaptive_sharpness(model, loss_fn, batches, rho=rho, n_iter=n_iter, seed=seed).value
        else:
            out[m] = pac_bayes_sigma(model, loss_fn, batches, delta=delta, seed=seed, n_bisect=12).sigma
    return out


def symmetry_check(model: nn.Module, loss_fn: Callable, batches: Iterable, measures=MEASURES, seed: int = 0,
                   kind: str = "general", condition: float = 10.0, pairs: list[QKPair] | None = None,
                   rtol: float | None = None, **settings) -> SymmetryResult:
    """Recompute ``measures`` after a random ``W_Q → W_Q R, W_K → W_K R^{-T}``; report what changed.

    ``rtol`` defaults to ``10·sqrt(eps)`` of the parameter dtype. ``settings`` go to
    :func:`compute_measures` (``epsilon``, ``rho``, ``delta``, ``lanczos_iter``, ``trace_samples``, ``n_iter``).
    """
    batches = list(batches)
    dtype = next(model.parameters()).dtype
    rtol = 10 * math.sqrt(torch.finfo(dtype).eps) if rtol is None else rtol
    moved, _ = apply_qk_symmetry(model, pairs=pairs, seed=seed + 7919, kind=kind, condition=condition)
    before = compute_measures(model, loss_fn, batches, measures, seed=seed, **settings)
    after = compute_measures(moved, loss_fn, batches, measures, seed=seed, **settings)
    rel = {m: abs(after[m] - before[m]) / max(abs(before[m]), 1e-300) for m in before}
    return SymmetryResult(before, after, rel, {m: bool(r <= rtol) for m, r in rel.items()}, kind, condition, rtol,
                          {"seed": seed, **settings})
