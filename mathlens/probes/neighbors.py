"""Exact k-nearest neighbours in torch: batched, chunked (bounded memory), CPU or GPU.

Squared Euclidean distances are computed block by block as

    s_ij = ||x_i||^2 + ||x_j||^2 - 2 <x_i, x_j>

with one matrix multiply per block (float32 by default), after centring the points (an isometry
that shrinks the norms and therefore the cancellation error). Only the upper triangle of blocks
is computed: block (I, J>=I) gives row candidates for the points of I *and* column candidates
for the points of J, so the n^2 D multiply-adds are done once, not twice.

Exactness. For each point the ``k + margin`` smallest float32 values are kept as candidates;
all but the last are recomputed in float64 as direct differences ``Σ_d (x_id − x_jd)²`` (no
cancellation: relative error ~1e-16 of the distance itself, however far the points are from the
origin) and re-sorted. The float32 values carry a rounding error of at most

    |s_ij - d_ij^2| <= c_err (||x_i||^2 + ||x_j||^2),   c_err = 2 gamma_D + 8 u,
    gamma_D = D u / (1 - D u),  u = unit roundoff of the working dtype

(the standard dot-product bound, plus the additions), so every point j not refined satisfies
d_ij^2 >= s_(k+margin) - c_err (||x_i||^2 + max_j ||x_j||^2). A point whose refined k-th distance
is below that bound is *certified*; the rare rest (exact ties at the k-th place, e.g. several
duplicates) are recomputed against all points in float64. The result equals a brute-force
float64 computation (up to float64 rounding and the order of exact ties, broken by index).

Self and duplicates. Each point is excluded from its own neighbours *by index*; other points at
distance zero (duplicates) are kept as neighbours at distance 0. This is what scikit-learn's
``NearestNeighbors.kneighbors()`` (and hence scikit-dimension) does.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mathlens.errors import MathlensError

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_MEMORY_BUDGET_BYTES = 256 * 2**20  # one block of squared distances at most this large
_REFINE_ELEMENTS = 2**23  # float64 differences held at once while refining (64 MiB)


def as_points(X, *, name: str = "X", device=None) -> torch.Tensor:
    """Check and convert a point cloud to a float64 tensor.

    X: (n_points, n_features) NumPy array or torch tensor -> (n_points, n_features) float64 on
    ``device`` (default: X's own device for tensors, CPU for arrays).
    """
    if isinstance(X, torch.Tensor):
        T = X.detach()
    else:
        try:
            T = torch.as_tensor(np.asarray(X))
        except (TypeError, ValueError) as e:
            raise MathlensError(f"{name} must be a numeric (n_points, n_features) array: {e}") from None
    if T.ndim != 2:
        raise MathlensError(f"{name} must have shape (n_points, n_features), got {tuple(T.shape)}")
    if not (T.is_floating_point() or T.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                  torch.uint8)):
        raise MathlensError(f"{name} must be real-valued, got dtype {T.dtype}")
    T = T.to(device=device if device is not None else T.device, dtype=torch.float64)
    if not bool(torch.isfinite(T).all()):
        raise MathlensError(f"{name} contains NaN or infinite values")
    return T


def resolve_dtype(dtype) -> torch.dtype:
    """``"float32"`` / ``"float64"`` / torch dtype -> torch dtype (the working matmul precision)."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise MathlensError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        return _DTYPES[dtype]
    if dtype not in (torch.float32, torch.float64):
        raise MathlensError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


def _unit_roundoff(dtype: torch.dtype) -> float:
    """Unit roundoff of the distance matmul; float32 may run as TF32 or bfloat16 if the user allowed it."""
    if dtype == torch.float32:
        precision = torch.get_float32_matmul_precision()
        if precision == "medium":
            return 2.0**-8  # bfloat16 inputs
        if precision == "high" or (torch.cuda.is_available() and torch.backends.cuda.matmul.allow_tf32):
            return 2.0**-11  # TensorFloat-32 inputs (10 mantissa bits)
    return torch.finfo(dtype).eps / 2


def _auto_chunk(n: int, itemsize: int) -> int:
    """Rows per block: 2048 (fast for matmul and the column-wise top-k), fewer if over budget."""
    return int(max(64, min(n, 2048, _MEMORY_BUDGET_BYTES // max(1, n * itemsize))))


def _merge(vals: torch.Tensor, idx: torch.Tensor, new_vals: torch.Tensor, new_idx: torch.Tensor):
    """Keep the ``vals.shape[1]`` smallest of two candidate lists per row (in place)."""
    kk = vals.shape[1]
    v = torch.cat([vals, new_vals], dim=1)
    i = torch.cat([idx, new_idx], dim=1)
    best, pos = torch.topk(v, kk, dim=1, largest=False, sorted=True)
    vals.copy_(best)
    idx.copy_(torch.gather(i, 1, pos))


def _candidates(Xw: torch.Tensor, sq: torch.Tensor, kk: int, chunk: int):
    """The kk smallest approximate squared distances per point, self excluded, by upper-triangle blocks.

    Xw: (n, D) working-precision centred points; sq: (n,) their squared norms.
    Returns vals (n, kk), idx (n, kk) int64.
    """
    n = Xw.shape[0]
    vals = torch.full((n, kk), math.inf, dtype=Xw.dtype, device=Xw.device)
    idx = torch.full((n, kk), -1, dtype=torch.int64, device=Xw.device)
    buf = torch.empty(min(chunk, n) * n, dtype=Xw.dtype, device=Xw.device)  # reused: no page faults
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        b = stop - start
        # S[i, j] = ||x_i||^2 + ||x_j||^2 - 2 <x_i, x_j> for rows in the block, columns start..n
        S = buf[: b * (n - start)].view(b, n - start)
        torch.addmm(sq[start:], Xw[start:stop], Xw[start:].T, beta=1, alpha=-2, out=S)
        S.add_(sq[start:stop, None])
        S.diagonal().fill_(math.inf)  # self, excluded by index
        m = S.shape[1]
        v, j = torch.topk(S, min(kk, m), dim=1, largest=False, sorted=False)
        _merge(vals[start:stop], idx[start:stop], v, j + start)
        if stop < n:  # the same block, read by columns, serves the later points
            v, i = torch.topk(S[:, b:], min(kk, b), dim=0, largest=False, sorted=False)
            _merge(vals[stop:], idx[stop:], v.T, i.T + start)
    return vals, idx


def _refine(Xc: torch.Tensor, idx: torch.Tensor, k: int,
            rows: torch.Tensor | None = None):
    """Float64 squared distances of the candidates, sorted (ties by index); first k kept.

    Xc: (n, D) float64 centred points; idx: (m, r) candidates of
    the query points ``rows`` (m indices into Xc; default all n) -> d2 (m, k) float64, idx (m, k).
    d2 = Σ_d (x_id − x_jd)² from the differences in float64: relative error ~1e-16 of d2 itself (the
    expanded ||x_i||² + ||x_j||² − 2<x_i, x_j> would lose every digit of a distance below ~1e-8 of the norms).
    """
    m, r = idx.shape
    d2_out = torch.empty((m, k), dtype=torch.float64, device=Xc.device)
    idx_out = torch.empty((m, k), dtype=torch.int64, device=Xc.device)
    D = Xc.shape[1]
    step = max(1, min(m, _REFINE_ELEMENTS // (r * D)))
    buf = torch.empty(step * r * D, dtype=torch.float64, device=Xc.device)  # reused: no page faults
    for start in range(0, m, step):
        stop = min(start + step, m)
        q = slice(start, stop) if rows is None else rows[start:stop]
        cand, _ = torch.sort(idx[start:stop], dim=1)  # ties broken by index, as a stable brute force
        G = buf[: cand.numel() * D].view(stop - start, r, D)
        torch.index_select(Xc, 0, cand.reshape(-1), out=G.view(-1, D))
        G.sub_(Xc[q].unsqueeze(1))
        d2 = torch.einsum("qrd,qrd->qr", G, G)  # (rows, r)
        d2s, pos = torch.sort(d2, dim=1, stable=True)
        d2_out[start:stop] = d2s[:, :k]
        idx_out[start:stop] = torch.gather(cand, 1, pos[:, :k])
    return d2_out, idx_out


def knn(X, k: int, *, dtype="float32", device=None, chunk_size: int | None = None,
        margin: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours of every point among the others (Euclidean).

    X: (n_points, n_features) array or tensor. Returns ``(distances, indices)``, both
    (n_points, k): float64 distances sorted ascending and int64 indices (self excluded by index,
    duplicates kept at distance 0), on ``device`` (default: X's device, CPU for arrays).
    ``dtype`` is the precision of the big matrix multiply ("float32" default, "float64");
    results are exact either way (see the module docstring). ``chunk_size`` rows per block
    (default 2048, fewer if a block would pass 256 MiB). ``margin`` extra candidates (default 3;
    a point whose candidates cannot certify its k-th neighbour is recomputed in float64).
    """
    return knn_checked(as_points(X, device=device), k, dtype=dtype, chunk_size=chunk_size, margin=margin)


def knn_checked(Xd: torch.Tensor, k: int, *, dtype="float32", chunk_size: int | None = None,
                margin: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`knn` for points already checked by :func:`as_points` ((n, D) finite float64)."""
    n, D = Xd.shape
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise MathlensError(f"k must be a positive integer, got {k!r}")
    if n < k + 1:
        raise MathlensError(f"need more than k={k} points for {k} nearest neighbours, got {n}")
    wdtype = resolve_dtype(dtype)
    if chunk_size is None:
        chunk_size = _auto_chunk(n, torch.finfo(wdtype).bits // 8)
    if chunk_size < 1:
        raise MathlensError(f"chunk_size must be >= 1, got {chunk_size}")
    margin = 3 if margin is None else int(margin)
    if margin < 1:
        raise MathlensError(f"margin must be >= 1, got {margin}")
    kk = min(n - 1, k + margin)

    Xc = Xd - Xd.mean(dim=0)
    sq64 = torch.einsum("nd,nd->n", Xc, Xc)
    Xw, sq = Xc.to(wdtype), sq64.to(wdtype)
    vals, idx = _candidates(Xw, sq, kk, chunk_size)
    if kk < n - 1:  # refine all candidates but the last; the last bounds every point not refined
        d2, nn = _refine(Xc, idx[:, :-1], k)
        u = _unit_roundoff(wdtype)
        gamma = D * u / (1 - D * u)
        tol = (2 * gamma + 8 * u) * (sq64 + sq64.max())
        bound = vals[:, -1].to(torch.float64) - tol
        bad = torch.nonzero(~(d2[:, -1] <= bound)).flatten()
        if bad.numel() > 0:
            d2[bad], nn[bad] = _brute_force_rows(Xc, bad, kk, k)
    else:  # every other point is a candidate
        d2, nn = _refine(Xc, idx, k)
    return d2.clamp_min_(0).sqrt_(), nn


def _brute_force_rows(Xc: torch.Tensor, rows: torch.Tensor, kk: int, k: int):
    """Candidates against all points for the given rows from float64 differences (``cdist`` without the matrix
    multiply: no cancellation, however small the distances against the norms), then the exact refinement."""
    step = max(1, min(_auto_chunk(Xc.shape[0], 8), _REFINE_ELEMENTS // max(1, Xc.shape[0] * Xc.shape[1])))
    cands = []
    for start in range(0, rows.numel(), step):
        r = rows[start:start + step]
        S = torch.cdist(Xc[r], Xc, compute_mode="donot_use_mm_for_euclid_dist")
        S[torch.arange(r.numel(), device=Xc.device), r] = math.inf
        cands.append(torch.topk(S, kk, dim=1, largest=False).indices)
    d2, nn = _refine(Xc, torch.cat(cands), k, rows=rows)
    return d2, nn
