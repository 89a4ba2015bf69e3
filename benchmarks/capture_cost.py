"""Cost of per-layer attention statistics for a whole model against a plain fused forward pass.

Workloads (alternating, ``--repeats`` times each, median):

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="cpu-preset")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--spectral-batch", type=int, default=1)
    ap.add_argument("--row-batch", type=int, default=None, help="sequences for row statistics (default: all)")
    ap.add_argument("--pattern-dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--chunk-rows", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
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

    work = {
        "forward": forward,
        "stats": lambda: model_attention(model, idx, kernel_checks=False, mercer=False, **common),
        "stats+checks": lambda: model_attention(model, idx, **common),
    }
    for fn in work.values():  # warm-up
        fn()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in work}
    for _ in range(args.repeats):  # alternate, so drifts hit every workload alike
        for k, fn in work.items():
            times[k].append(_time(fn, args.device))
    med = {k: statistics.median(w for w, _, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c, _ in v) for k, v in times.items()}
    faults = {k: statistics.median(f for _, _, f in v) for k, v in times.items()}
    result = {"shape": args.shape, "device": args.device, "threads": torch.get_num_threads(),
              "B": shape["B"], "T": shape["T"], **shape["cfg"], "spectral_batch": args.spectral_batch, "row_batch": args.row_batch,
              "pattern_dtype": args.pattern_dtype, "repeats": args.repeats, "median_s": med,
              "ratio_stats": med["stats"] / med["forward"], "ratio_stats_checks": med["stats+checks"] / med["forward"],
              "median_cpu_s": cpu, "cpu_ratio_stats": cpu["stats"] / cpu["forward"],
              "cpu_ratio_stats_checks": cpu["stats+checks"] / cpu["forward"], "minor_page_faults": faults,
              "torch": torch.__version__}
    for k, v in med.items():
        print(f"{k:>14}: wall {v * 1e3:9.1f} ms ({v / med['forward']:.2f}x forward)   "
              f"cpu {cpu[k] * 1e3:9.1f} ms ({cpu[k] / cpu['forward']:.2f}x)   page faults {faults[k]:.0f}")
    write_json(Path(args.out), result)
    print(json.dumps({k: result[k] for k in ("ratio_stats", "ratio_stats_checks", "cpu_ratio_stats")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
