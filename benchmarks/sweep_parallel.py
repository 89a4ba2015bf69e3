"""Sweep throughput: a 12-point sweep with local parallel worker processes (parallel = cores) against one
point at a time (parallel = 1), side by side in one run.

Both arms run the SAME sweep file into fresh directories; they alternate within each repeat (order swapped
every repeat) and we report the median wall time of each and the speed-up ratio serial / parallel
(ideal: the number of cores). Threads follow the sweep default (max(1, cores // parallel) per point) unless
``--threads`` fixes them. Every point is a full worker process (interpreter start, ``import torch``, data,
training, evaluation, checkpoints), so the per-point start-up cost is part of both arms.

    python benchmarks/sweep_parallel.py                       # 12 points, 2 repeats, parallel 2 vs 1
    python benchmarks/sweep_parallel.py --device cuda --parallel 4
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mathlens.io import write_json  # noqa: E402
from mathlens.sweep import cpu_cores, load_sweep, run_sweep  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def sweep_file(tmp: Path, args) -> Path:
    corpus = tmp / "corpus.txt"
    if SHARED.is_file():
        corpus.write_text(SHARED.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    else:
        corpus.write_text("to be or not to be that is the question\n" * 5000, encoding="utf-8")
    path = tmp / "sweep.toml"
    path.write_text(f"""
[model]
n_layer = 1
n_head = 2
[data]
corpus = "{corpus}"
block_size = 32
batch_size = 8
[optim]
warmup_iters = 10
[run]
max_iters = {args.max_iters}
eval_interval = {args.max_iters}
eval_iters = 4
device = "{args.device}"
[sweep]
name = "bench"
out = "{tmp / 'out'}"
{f'threads = {args.threads}' if args.threads else ''}
[sweep.grid]
"model.n_embd" = [32, 64]
"optim.lr" = [1e-3, 3e-3]
"run.seed" = [0, 1, 2]
""", encoding="utf-8")
    return path


def timed(path: Path, parallel: int, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    res = run_sweep(load_sweep(path), parallel=parallel, out=str(out), quiet=True)
    dt = time.perf_counter() - t0
    bad = [r for r in res.records if r["status"] != "done"]
    if bad:
        raise SystemExit(f"point {bad[0]['id']} failed: {bad[0]['error']}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parallel", type=int, default=cpu_cores(), help="parallel arm (default: the cores)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-iters", type=int, default=150)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per point (default: sweep default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/out/sweep_parallel.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    try:
        path = sweep_file(tmp, args)
        times: dict[int, list[float]] = {1: [], args.parallel: []}
        for rep in range(args.repeats):
            order = (1, args.parallel) if rep % 2 == 0 else (args.parallel, 1)
            for p in order:
                times[p].append(timed(path, p, tmp / f"out-{p}"))
                print(f"repeat {rep}: parallel={p}: {times[p][-1]:.1f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    serial, par = statistics.median(times[1]), statistics.median(times[args.parallel])
    ratio = serial / par
    print(f"12 points, max_iters={args.max_iters}, device={args.device}, cores={cpu_cores()}")
    print(f"parallel=1: median {serial:.1f} s ({serial / 12:.2f} s/point)")
    print(f"parallel={args.parallel}: median {par:.1f} s ({par / 12:.2f} s/point)")
    print(f"speed-up: {ratio:.2f}x (ideal {args.parallel}x); load average at the end: {os.getloadavg()}")
    write_json(args.out, {"points": 12, "max_iters": args.max_iters, "device": args.device, "cores": cpu_cores(),
                          "parallel": args.parallel, "times": {str(k): v for k, v in times.items()},
                          "median_serial_s": serial, "median_parallel_s": par, "speedup": ratio,
                          "loadavg": os.getloadavg(), "machine": platform.platform()})


if __name__ == "__main__":
    main()
