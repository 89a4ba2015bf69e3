"""Depth convergence of the splitting schemes (THEORY predictions 6-7) and the cost of time-dependent controls.

Part 1 (accuracy): :func:`mathlens.flow.convergence_studies` for several seeds, N_t = 8 … 256, RK4 reference with
512 steps (its Richardson error is printed). Prints the fitted order per scheme (mean, min, max over seeds).

Part 2 (speed): one forward pass of a :class:`ContinuousTransformer` with piecewise-constant controls
(K = N_t pieces) against the equivalent stack of :class:`FlowBlock` modules (the peer: ordinary untied layers),
alternating, ``--repeats`` rounds, median; the outputs are checked to agree.

    python benchmarks/depth_convergence.py [--seeds 3] [--repeats 7] [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mathlens.flow import ContinuousTransformer, FlowBlock, FlowConfig, convergence_studies  # noqa: E402
from mathlens.io import write_json  # noqa: E402

SCHEMES = ("lie", "parallel", "strang", "strang_heun", "strang_heun_ambient")


def accuracy(seeds: int) -> dict:
    out = {}
    for seed in range(seeds):
        t0 = time.perf_counter()
        res = convergence_studies(SCHEMES, seed=seed, n_steps_list=(8, 16, 32, 64, 128, 256), reference_steps=512)
        elapsed = time.perf_counter() - t0
        for s, r in res.items():
            out.setdefault(s, []).append(r.to_dict())
        print(f"seed {seed}: {elapsed:.1f} s; reference error {res['lie'].reference_error:.1e}", flush=True)
    print(f"{'scheme':22s} {'order mean':>10s} {'min':>7s} {'max':>7s}  error at N_t=256  splitting order")
    for s, rs in out.items():
        orders = [r["order"] for r in rs]
        split = [r["splitting_order"] for r in rs]
        print(f"{s:22s} {statistics.mean(orders):10.3f} {min(orders):7.3f} {max(orders):7.3f}  "
              f"{statistics.mean(r['errors'][-1] for r in rs):.2e}         {statistics.mean(split) if None not in split else float('nan'):.3f}")
    return out


def speed(device: str, repeats: int, n_layers: int = 12) -> dict:
    cfg = FlowConfig(n_embd=128, n_head=4, block_size=128, causal=True, dropout=0.0)
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(FlowBlock(cfg) for _ in range(n_layers)).to(device).eval()
    flow = ContinuousTransformer.from_blocks(blocks).to(device).eval()
    u = torch.randn(8, 128, 128, device=device)

    def stack():
        x = u
        for b in blocks:
            x = b(x)
        return x

    def continuous():
        return flow(u, n_layers)

    with torch.no_grad():
        diff = float((stack() - continuous()).abs().max())
        times = {"flowblock_stack": [], "continuous": []}
        for _ in range(repeats):
            for name, fn in (("flowblock_stack", stack), ("continuous", continuous)):
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                if device == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["continuous"] / med["flowblock_stack"]
    print(f"forward, {n_layers} layers, batch 8×128, width 128, {device}: FlowBlock stack {med['flowblock_stack'] * 1e3:.1f} ms,"
          f" ContinuousTransformer {med['continuous'] * 1e3:.1f} ms, ratio {ratio:.2f}; max |diff| {diff:.1e}")
    return {"median_s": med, "ratio": ratio, "max_abs_diff": diff, "device": device, "repeats": repeats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: small tensors, busy machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {"accuracy": accuracy(args.seeds), "speed": speed(args.device, args.repeats)}
    path = Path(__file__).parent / "out" / "depth_convergence.json"
    path.parent.mkdir(exist_ok=True)
    write_json(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
