"""Exact kNN, intrinsic dimension (TwoNN, MLE) and neighbourhood overlap.

Manifold tests: points on a known d-manifold, embedded in R^D by a random orthogonal map, plus
isotropic Gaussian noise of std 1e-5 (data scale ~1; 1e-4 in D = 100 already moves points by
~1e-3, a visible fraction of 2-d nearest-neighbour distances), fixed seeds. Choices (checked on
other seeds too): linear subspaces use Gaussian coordinates (no boundary; a uniform cube's
boundary biases both estimators down by 5-16 % at d >= 5 for n <= 10,000); n = 10,000 (at
n = 2,000 TwoNN's spread over seeds is ~4 %, with outliers near 10 %; at 10,000 six other seeds
stayed within 3.7 %); d = 10 uses n = 20,000 (at n = 5,000 MLE with k = 20 is still ~6 % low,
a known finite-sample bias; at 20,000 it is 3-3.5 % low over four seeds).
"""

import json

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from mathlens.errors import MathlensError
from mathlens.probes.geometry import IntrinsicDimension, knn, neighbourhood_overlap, twonn_dimension


def embed(Z, D, seed, noise=1e-5):
    """Z: (n, d) -> (n, D) by a random orthogonal map plus isotropic noise."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(D, Z.shape[1])))
    return Z @ Q.T + noise * rng.normal(size=(Z.shape[0], D))


def gaussian_subspace(n, d, D, seed):
    return embed(np.random.default_rng(seed).normal(size=(n, d)), D, seed + 1)


def sphere(n, d, D, seed):
    """Uniform points on the unit sphere S^d in R^{d+1}, embedded in R^D."""
    Z = np.random.default_rng(seed).normal(size=(n, d + 1))
    return embed(Z / np.linalg.norm(Z, axis=1, keepdims=True), D, seed + 1)


def swiss_roll(n, D, seed):
    rng = np.random.default_rng(seed)
    t = 1.5 * np.pi * (1 + 2 * rng.uniform(size=n))
    h = 21 * rng.uniform(size=n)
    return embed(np.c_[t * np.cos(t), h, t * np.sin(t)] / 10, D, seed + 1)


def brute_knn(X, k):
    D = cdist(X, X)
    np.fill_diagonal(D, np.inf)
    order = np.argsort(D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, order, 1), order


# ---------------------------------------------------------------- exact kNN


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("chunk_size", [None, 37])
def test_knn_matches_brute_force_float64(dtype, chunk_size):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 40)) + 50.0  # far from the origin: centring must remove the offset
    X[5] = X[6]  # one duplicate pair: distance 0, kept as a neighbour
    d, i = knn(X, 7, dtype=dtype, chunk_size=chunk_size)
    d_ref, i_ref = brute_knn(X, 7)
    assert np.array_equal(i.numpy(), i_ref)
    assert np.abs(d.numpy() - d_ref).max() < 1e-5
    assert d[5, 0].item() == 0.0 and i[5, 0].item() == 6


def test_knn_torch_float32_input_and_exact_ties_fall_back():
    # every point has 3 copies: 0-distances tie at the k-th place, so the float32 candidates can
    # not certify the answer and the float64 brute-force path must give it
    base = torch.randn(100, 30, generator=torch.Generator().manual_seed(1))
    X = base.repeat(4, 1)
    d, i = knn(X, 4, margin=1)
    d_ref, _ = brute_knn(X.double().numpy(), 4)
    assert np.abs(d.numpy() - d_ref).max() < 1e-5
    assert np.allclose(d[:, :3].numpy(), 0.0)
    assert torch.equal(i[:, :3] % 100, torch.arange(400)[:, None].expand(400, 3) % 100)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_knn_is_exact_when_distances_are_tiny_against_the_norms(dtype):
    # two clusters at ±1e4 (centring leaves norms of 1e4) with spread 1e-3: ||x||² + ||y||² − 2<x, y> would keep
    # no digit of d² ≈ 1e-6 even in float64 (error ~1e-16 · 2e8); the refinement uses the differences instead
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(size=(150, 2)) * 1e-3 + 1e4, rng.normal(size=(150, 2)) * 1e-3 - 1e4])
    X = np.c_[X, np.zeros(300)]
    d, i = knn(X, 3, dtype=dtype)
    d_ref, i_ref = brute_knn(X, 3)
    assert np.array_equal(i.numpy(), i_ref)
    np.testing.assert_allclose(d.numpy(), d_ref, rtol=1e-9)
    assert (d[:, 0] > 0).all()  # no point mistaken for a duplicate


@pytest.mark.parametrize("bad", [
    lambda: knn(np.zeros((5, 3)), 0),
    lambda: knn(np.zeros((3, 3)), 3),
    lambda: knn(np.zeros((5, 3, 2)), 1),
    lambda: knn(np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 4.0]]), 1),
    lambda: knn(np.zeros((5, 3)), 1, dtype="float16"),
    lambda: knn([["a", "b"]], 1),
])
def test_knn_rejects_bad_input(bad):
    with pytest.raises(MathlensError):
        bad()


# ---------------------------------------------------------------- intrinsic dimension: known manifolds


@pytest.mark.parametrize("name,make,d", [
    ("linear2", lambda: gaussian_subspace(10000, 2, 100, 10), 2),
    ("linear5", lambda: gaussian_subspace(10000, 5, 100, 20), 5),
    ("linear10", lambda: gaussian_subspace(20000, 10, 100, 60), 10),
    ("sphere2", lambda: sphere(10000, 2, 128, 30), 2),
    ("sphere5", lambda: sphere(10000, 5, 128, 40), 5),
    ("swissroll", lambda: swiss_roll(10000, 256, 50), 2),
])
def test_intrinsic_dimension_of_known_manifolds(name, make, d):
    mle = IntrinsicDimension("mle").fit(make())
    assert abs(mle.dimension_ / d - 1) < 0.05, (name, mle.dimension_)
    # TwoNN from the same exact neighbour distances (what IntrinsicDimension("twonn") computes,
    # see test_twonn_estimator_uses_the_first_two_neighbours): one neighbour search per manifold
    twonn, *_ = twonn_dimension(mle.distances_[:, 0], mle.distances_[:, 1])
    assert abs(twonn / d - 1) < 0.05, (name, twonn)


def test_twonn_estimator_uses_the_first_two_neighbours():
    X = sphere(3000, 3, 64, 61)
    mle = IntrinsicDimension("mle", k=5).fit(X)
    est = IntrinsicDimension("twonn").fit(X)
    assert est.dimension_ == twonn_dimension(mle.distances_[:, 0], mle.distances_[:, 1])[0]
    assert np.array_equal(est.indices_, mle.indices_[:, :2])


# ---------------------------------------------------------------- agreement with scikit-dimension


def test_agrees_with_skdim_twonn_and_mle():
    skdim = pytest.importorskip("skdim")
    X = sphere(1500, 4, 100, 70)
    ours = IntrinsicDimension("twonn").fit(X)
    assert abs(ours.dimension_ / skdim.id.TwoNN().fit(X).dimension_ - 1) < 1e-6  # same definition
    for kw, fit_kw in [({}, {}), ({"k": 10, "comb": "mean"}, {"n_neighbors": 10, "comb": "mean"})]:
        ref = skdim.id.MLE().fit(X, **fit_kw)
        est = IntrinsicDimension("mle", **kw).fit(X)
        assert abs(est.dimension_ / ref.dimension_ - 1) < 1e-6
        assert np.allclose(est.local_dimensions_, ref.dimension_pw_, rtol=1e-9)


def test_twonn_drops_duplicates_like_skdim():
    skdim = pytest.importorskip("skdim")
    X = sphere(1000, 3, 30, 72)
    X[7] = X[8]  # a duplicate pair: r1 = 0 for both, no ratio r2/r1
    ours = IntrinsicDimension("twonn").fit(X)
    assert ours.n_dropped_ == 2 and np.isnan(ours.mu_[[7, 8]]).all()
    # skdim's own distance matrix leaves ~1e-8 instead of 0 (float64 cancellation), so feed it the
    # exact (r1, r2): it then drops the same two points, with a warning
    with pytest.warns(UserWarning, match="Dropping 2 points"):
        ref = skdim.id.TwoNN(dist=True).fit(ours.distances_[:, :2]).dimension_
    assert abs(ours.dimension_ / ref - 1) < 1e-9


def test_summary_is_json_ready_and_settings_are_checked():
    X = gaussian_subspace(300, 3, 20, 80)
    for method in ("twonn", "mle"):
        s = IntrinsicDimension(method).fit(torch.as_tensor(X, dtype=torch.float32)).summary()
        assert json.loads(json.dumps(s))["n_points"] == 300
    for bad in [dict(method="pca"), dict(discard_fraction=1.0), dict(method="mle", k=1),
                dict(comb="max"), dict(dtype="int8")]:
        with pytest.raises(MathlensError):
            IntrinsicDimension(**bad).fit(X)
    with pytest.raises(MathlensError):
        IntrinsicDimension().summary()
    with pytest.raises(MathlensError):
        IntrinsicDimension("mle").fit(X[:15])


# ---------------------------------------------------------------- neighbourhood overlap


def test_overlap_is_one_for_isometric_representations():
    A = gaussian_subspace(800, 6, 64, 90)
    Q, _ = np.linalg.qr(np.random.default_rng(91).normal(size=(64, 64)))
    B = 3.0 * A @ Q + 7.0  # rotation, scaling, translation: same neighbours
    assert neighbourhood_overlap(A, A, k=10).overlap == 1.0
    assert neighbourhood_overlap(A, B, k=10).overlap == 1.0


def test_overlap_of_unrelated_representations_is_chance():
    rng = np.random.default_rng(92)
    r = neighbourhood_overlap(rng.normal(size=(1000, 16)), rng.normal(size=(1000, 16)), k=10)
    # overlap count per point ~ Binomial(10, 10/999): the mean over 1000 points has std ~0.001
    assert abs(r.overlap - r.chance) < 0.005
    assert json.loads(json.dumps(r.to_dict()))["k"] == 10
    with pytest.raises(MathlensError):
        neighbourhood_overlap(np.zeros((5, 2)), np.zeros((6, 2)), k=2)
