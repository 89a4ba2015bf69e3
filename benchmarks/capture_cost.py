"""Cost of per-layer attention statistics for a whole model against a plain fused forward pass.

Workloads (each in a phase of its own, alternating with the forward in ``--repeats`` blocks of ``--block`` timed calls
after one untimed call; median over all timed calls):

* ``forward``: ``model(idx)`` under ``torch.no_grad()`` (fused SDPA attention);
* ``stats``: ``model_attention(model, idx, ...)``: one forward with Q/K/residual capture, then for every
  layer the attention weights of all heads recomputed from Q/K in chunks of query rows, the row statistics
  (entropy, normalised entropy, top-k mass, Gini, fraction above τ) over the whole batch, the spectral
  statistics (effective/stable rank, C(k), Eckart–Young rank) on ``--spectral-batch`` sequences, and the
  rank-collapse profile (no Mercer test, no Nadaraya–Watson check: those are one-off diagnostics);
* ``stats+checks``: the same with the Mercer test and the Nadaraya–Watson / convex-hull check.

Goal: ``stats`` ≤ 1.5× ``forward``. Shapes: ``cpu-preset`` (the ``nanogpt-char-cpu`` preset: 4 layers,
128 wide, 4 heads, T=64, B=12; the goal's CPU shape), ``small`` (the same model at T=128, B=32) and
``gpt2`` (GPT-2-124M: 12 layers, 768 wide, 12 heads, T=1024, B=8; meant for ``--device cuda``).

    python benchmarks/capture_cost.py --shape cpu-preset --pattern-dtype float32
    python benchmarks/capture_cost.py --shape small --device cpu
    python benchmarks/capture_cost.py --shape gpt2 --device cuda --pattern-dtype float32
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout without mathlens installed

from mathlens import GPT, GPTConfig  # noqa: E402
from mathlens.io import write_json  # noqa: E402
from mathlens.probes.attention import model_attention  # noqa: E402

SHAPES = {
    # the nanogpt-char-cpu preset: the "small CPU preset" (bias-free, tied, 4 × 128, T=64, B=12)
    "cpu-preset": dict(cfg=dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False), B=12, T=64),
    # the nanogpt-char-gpu preset's model at its context length, 8 sequences (a CPU-sized batch)
    "gpu-preset": dict(cfg=dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, bias=False), B=8, T=256),
    "small": dict(cfg=dict(vocab_size=65, block_size=128, n_layer=4, n_head=4, n_embd=128), B=32, T=128),
    "gpt2": dict(cfg=dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768), B=8, T=1024),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, device: str) -> tuple[float, float, int]:
    """(wall seconds, this process's CPU seconds, minor page faults): on a shared CPU machine the CPU time is the
    steadier figure; the page faults count fresh memory touched (glibc hands large buffers back to the system, so a
    workload that keeps more alive or allocates more (..., T, T) buffers pays for it again on every call)."""
    _sync(device)
    f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t, c = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - t, time.process_time() - c, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f


def _forward_key(phase: str) -> str:
    """The forward's key in the results for the phase that times ``phase`` against it."""
    return "forward" if phase == "stats" else f"forward ({phase} phase)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="cpu-preset")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5, help="blocks per workload")
    ap.add_argument("--spectral-batch", type=int, default=1)
    ap.add_argument("--row-batch", type=int, default=None, help="sequences for row statistics (default: all)")
    ap.add_argument("--pattern-dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--chunk-rows", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    ap.add_argument("--no-checks", action="store_true", help="skip the stats+checks phase")
    ap.add_argument("--block", type=int, default=3, help="timed calls per block (after one untimed call)")
    ap.add_argument("--out", default="benchmarks/out/capture_cost.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = SHAPES[args.shape]
    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape["cfg"])).to(args.device).eval()
    idx = torch.randint(0, shape["cfg"]["vocab_size"], (shape["B"], shape["T"]), device=args.device)
    store = None if args.device.startswith("cuda") else "cpu"
    dtype = getattr(torch, args.pattern_dtype)
    common = dict(spectral_batch=args.spectral_batch, row_batch=args.row_batch, chunk_rows=args.chunk_rows, store_device=store,
                  pattern_dtype=dtype)

    def forward():
        with torch.no_grad():
            model(idx)

    stats = lambda: model_attention(model, idx, kernel_checks=False, mercer=False, **common)
    checks = lambda: model_attention(model, idx, **common)
    # Each workload alternates with the forward in a phase of its own, in blocks of calls whose first call is not
    # timed. Calls alternating one by one measured each workload in the memory state the other left behind: with the
    # checks in the same rotation, their large float64 buffers raised glibc's mmap/trim thresholds, which took the
    # statistics' page faults away (1,400-2,300 a call -> 0) and slowed the forward beside them (1.57x instead of
    # 1.91x); with the statistics' scratch buffers kept, the forward paid ~3,000 faults a call instead of 0.
    phases = [("stats", stats)] + ([] if args.no_checks else [("stats+checks", checks)])
    med, cpu, faults = {}, {}, {}
    for name, fn in phases:
        work = {"forward": forward, name: fn}
        for f in work.values():  # warm-up
            f()
        times: dict[str, list[tuple[float, float, int]]] = {k: [] for k in work}
        for _ in range(args.repeats):  # alternate blocks, so drifts hit both alike
            for k, f in work.items():
                f()  # the first call of a block is not timed: it pays for the other workload's memory state
                times[k] += [_time(f, args.device) for _ in range(args.block)]
        fkey = _forward_key(name)
        for k, v in times.items():
            key = fkey if k == "forward" else k
            med[key] = statistics.median(w for w, _, _ in v)
            cpu[key] = statistics.median(c for _, c, _ in v)
            faults[key] = statistics.median(f for _, _, f in v)
        print(f"{'forward':>14}: wall {med[fkey] * 1e3:9.1f} ms   cpu {cpu[fkey] * 1e3:9.1f} ms   page faults {faults[fkey]:.0f}")
        print(f"{name:>14}: wall {med[name] * 1e3:9.1f} ms ({med[name] / med[fkey]:.2f}x forward)   "
              f"cpu {cpu[name] * 1e3:9.1f} ms ({cpu[name] / cpu[fkey]:.2f}x)   page faults {faults[name]:.0f}")
    fc = _forward_key("stats+checks")
    result = {"shape": args.shape, "device": args.device, "threads": torch.get_num_threads(),
              "B": shape["B"], "T": shape["T"], **shape["cfg"], "spectral_batch": args.spectral_batch, "row_batch": args.row_batch,
              "pattern_dtype": args.pattern_dtype, "repeats": args.repeats, "block": args.block, "median_s": med,
              "ratio_stats": med["stats"] / med["forward"], "cpu_ratio_stats": cpu["stats"] / cpu["forward"],
              "ratio_stats_checks": med["stats+checks"] / med[fc] if fc in med else None,
              "cpu_ratio_stats_checks": cpu["stats+checks"] / cpu[fc] if fc in cpu else None,
              "median_cpu_s": cpu, "minor_page_faults": faults, "torch": torch.__version__}
    write_json(Path(args.out), result)
    print(json.dumps({k: result[k] for k in ("ratio_stats", "ratio_stats_checks", "cpu_ratio_stats")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
