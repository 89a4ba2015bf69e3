"""Benchmark: mathlens IntrinsicDimension (TwoNN, MLE) against scikit-dimension on the same points.

Data: a d-dimensional linear manifold (Gaussian coordinates) embedded in R^D by a random
orthogonal map, plus isotropic noise, fixed seed. For each method the two tools run alternately
(``--repeats`` times each, after one small warm-up), the median times are compared, and both
estimates are printed (they must agree within 1 %). JSON goes to benchmarks/out/.

    python benchmarks/intrinsic_dimension.py --n 20000 --dim 768 --repeats 3
    python benchmarks/intrinsic_dimension.py --device cuda        # GPU path for mathlens
    python benchmarks/intrinsic_dimension.py --threads 1          # both tools single-threaded

BLAS: both tools run in this one process, so they see the same OPENBLAS_CORETYPE setting
(printed); torch uses its own MKL, scikit-dimension NumPy/SciPy's OpenBLAS.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mathlens.io import write_json  # noqa: E402
from mathlens.probes.geometry import IntrinsicDimension  # noqa: E402


def make_points(n: int, dim: int, intrinsic: int, noise: float, seed: int) -> np.ndarray:
    """(n, dim) float64: Gaussian coordinates on an ``intrinsic``-dim subspace plus noise."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(dim, intrinsic)))
    return rng.normal(size=(n, intrinsic)) @ Q.T + noise * rng.normal(size=(n, dim))


def run_ours(method: str, X, device: str, dtype: str) -> float:
    est = IntrinsicDimension(method, device=device, dtype=dtype).fit(X)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return float(est.dimension_)


def run_skdim(method: str, X) -> float:
    import skdim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = skdim.id.TwoNN() if method == "twonn" else skdim.id.MLE()
        return float(est.fit(X).dimension_)


def timed(fn):
    t = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t


def blas_info() -> list:
    try:
        from threadpoolctl import threadpool_info

        return [{k: d.get(k) for k in ("internal_api", "num_threads", "architecture", "version")}
                for d in threadpool_info()]
    except ImportError:  # pragma: no cover
        return []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--intrinsic", type=int, default=10)
    p.add_argument("--noise", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", default="twonn,mle")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both tools (torch, BLAS and OpenMP pools); default: all cores")
    p.add_argument("--out", default="benchmarks/out/intrinsic_dimension.json")
    args = p.parse_args(argv)
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(limits=args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device available on this machine", file=sys.stderr)
        return 2

    X = make_points(args.n, args.dim, args.intrinsic, args.noise, args.seed)
    Xd = torch.as_tensor(X, device=args.device) if args.device != "cpu" else X
    env = {"OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
           "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
           "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "blas": blas_info(),
           "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "loadavg_start": os.getloadavg()}
    print(f"points {args.n} x {args.dim} (intrinsic {args.intrinsic}, noise {args.noise}, seed {args.seed}); "
          f"device {args.device}, dtype {args.dtype}; torch threads {env['torch_threads']}; "
          f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}")

    small = X[:500]
    results = {}
    for method in args.methods.split(","):
        run_ours(method, small if args.device == "cpu" else Xd[:500], args.device, args.dtype)  # warm-up
        run_skdim(method, small)
        ours_t, ref_t, ours_d, ref_d = [], [], None, None
        for _ in range(args.repeats):
            ours_d, t = timed(lambda m=method: run_ours(m, Xd, args.device, args.dtype))
            ours_t.append(t)
            ref_d, t = timed(lambda m=method: run_skdim(m, X))
            ref_t.append(t)
        mo, mr = statistics.median(ours_t), statistics.median(ref_t)
        rel = ours_d / ref_d - 1
        results[method] = {"mathlens_dimension": ours_d, "skdim_dimension": ref_d, "relative_difference": rel,
                           "agree_within_1pct": abs(rel) < 0.01, "mathlens_times_s": ours_t,
                           "skdim_times_s": ref_t, "mathlens_median_s": mo, "skdim_median_s": mr,
                           "speedup": mr / mo}
        print(f"{method:6s} mathlens {ours_d:.4f}  skdim {ref_d:.4f}  (rel diff {rel:+.2e})  "
              f"median {mo:.2f} s vs {mr:.2f} s  -> {mr / mo:.1f}x faster")
    env["loadavg_end"] = os.getloadavg()
    print(f"load average start {env['loadavg_start']}, end {env['loadavg_end']}")
    write_json(args.out, {"args": vars(args), "env": env, "results": results})
    print(f"wrote {args.out}")
    return 0 if all(r["agree_within_1pct"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
