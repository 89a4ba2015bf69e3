"""Chinchilla scaling-law fit on Epoch AI's 240 points from Hoffmann et al.'s Figure 4.

Fits L(N, D) = E + A/N^α + B/D^β (Huber δ = 1e-3 on log residuals, L-BFGS from Hoffmann's grid) and
prints our estimates against Epoch AI's published refit, with the wall time (median of repeats).
The fit is NumPy/SciPy on CPU; there is no GPU path.

    python benchmarks/scaling_fit.py [--csv PATH] [--repeats 3] [--n-boot 200] [--n-starts 32] [--full-grid]

``--full-grid`` also runs L-BFGS from all 4500 starts of Hoffmann's grid (minutes) to check that the
screened start set reaches the same optimum.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mathlens.io import write_json  # noqa: E402
from mathlens.probes.scaling import fit_chinchilla, load_chinchilla_csv  # noqa: E402

EPOCH = {"E": 1.82, "A": 482.01, "B": 2085.43, "alpha": 0.348, "beta": 0.366}
HOFFMANN = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", default=os.path.join(HERE, "..", "..", "shared", "data", "chinchilla_fig4_points.csv"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--n-starts", type=int, default=32)
    ap.add_argument("--full-grid", action="store_true")
    args = ap.parse_args()
    N, D, L = load_chinchilla_csv(args.csv)
    times, fit = [], None
    for _ in range(args.repeats):
        t = time.perf_counter()
        fit = fit_chinchilla(N, D, L, n_boot=args.n_boot, n_starts=args.n_starts)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    point = fit_chinchilla(N, D, L, n_boot=0, n_starts=args.n_starts)
    t_point = time.perf_counter() - t
    print(f"{len(N)} points; fit from {args.n_starts} screened starts + {args.n_boot} bootstrap refits: "
          f"median {statistics.median(times):.2f} s over {args.repeats}; point fit alone {t_point:.2f} s")
    print(f"{'':6s} {'ours':>10s} {'95% CI':>22s} {'Epoch':>9s} {'rel.diff':>9s} {'Hoffmann':>9s}")
    rows = {}
    for k, ref in EPOCH.items():
        v, ci = getattr(fit, k), fit.ci[k]
        rows[k] = {"ours": v, "low": ci.low, "high": ci.high, "epoch": ref, "rel_diff": v / ref - 1}
        print(f"{k:6s} {v:10.4g} [{ci.low:9.4g}, {ci.high:9.4g}] {ref:9.4g} {v / ref - 1:+9.2%} {HOFFMANN[k]:9.4g}")
    out = {"n_points": len(N), "n_starts": args.n_starts, "n_boot": args.n_boot, "seconds": times,
           "point_fit_seconds": t_point, "objective": fit.objective, "params": rows}
    if args.full_grid:
        t = time.perf_counter()
        full = fit_chinchilla(N, D, L, n_boot=0, n_starts=None)
        out["full_grid"] = {"seconds": time.perf_counter() - t, "objective": full.objective,
                            **{k: getattr(full, k) for k in EPOCH}}
        print(f"full 4500-start grid: {out['full_grid']['seconds']:.1f} s, objective {full.objective:.12g} "
              f"(screened: {point.objective:.12g})")
    write_json(os.path.join(HERE, "out", "scaling_fit.json"), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
