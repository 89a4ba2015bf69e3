"""Cost of one Hessian-vector product vs one plain gradient with fused attention (BENCHMARKS.md, HVP section).

Model (``--shape``): ``small`` (default) ``GPT(GPTConfig(n_layer=4, n_embd=128, n_head=4, block_size=128,
vocab_size=65))`` on 16 × 128 tokens; ``cpu-preset`` the ``nanogpt-char-cpu`` model (the same 4 × 128 × 4 heads,
bias-free) on its batch, 12 × 64 tokens; ``long`` the ``small`` model on 2 × 1024 tokens (GPT-2's context); ``gpt2`` GPT-2 124M (12 × 768 × 12 heads, vocab 50304) on 8 × 1024 tokens,
for a GPU (``gpt2-b1``: one sequence, for the CPU). float32. Workloads (each one call):

* ``grad_fused``            one gradient, fused SDPA (the reference);
* ``hvp_double_backward``   exact, math attention forced (fused SDPA has no double backward), the
                            first-order graph rebuilt for every product;
* ``hvp_double_backward_reused``  the same with the first-order graph kept between products
                            (``reuse_graph=True``): time of a product after the first; memory: the peak over
                            the first (graph-building) product and a second one;
* ``hvp_recompute``, ``hvp_recompute_reused``  the same two with ``attention="recompute"`` (the default): fused
                            forward, attention weights recomputed in both backward passes, never kept;
* ``hvp_jvp``               exact, forward-over-reverse, math attention forced;
* ``hvp_fd_central``        central differences of two fused-attention gradients;
* ``hvp_fd_forward``        forward differences, ∇L(w) cached: one fused-attention gradient per product;
* ``hvp_double_backward_fused``  is attempted once to record that it fails.

Time: workloads alternate within one process, ``--repeats`` rounds, median. Peak memory: each workload
runs once in a fresh subprocess; CPU: peak RSS during the call minus RSS before it (Linux: the peak is
reset through ``/proc/self/clear_refs``; elsewhere ``getrusage`` peak deltas), with glibc's mmap threshold
lowered so freed blocks go back to the OS; CUDA: ``torch.cuda.max_memory_allocated`` delta. Also the
finite-difference error against the exact product vs the relative step τ.

    python benchmarks/hvp_cost.py [--shape cpu-preset] [--device cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mathlens.io import write_json  # noqa: E402
from mathlens.probes.curvature.operators import HessianOperator, ModelLoss, relative_error  # noqa: E402

WORKLOADS = ["grad_fused", "hvp_double_backward", "hvp_double_backward_reused", "hvp_recompute",
             "hvp_recompute_reused", "hvp_jvp", "hvp_fd_central", "hvp_fd_forward"]


SHAPES = {"small": (dict(n_layer=4, n_embd=128, n_head=4, block_size=128, vocab_size=65), 16),
          "cpu-preset": (dict(n_layer=4, n_embd=128, n_head=4, block_size=64, vocab_size=65, bias=False), 12),
          "long": (dict(n_layer=4, n_embd=128, n_head=4, block_size=1024, vocab_size=65), 2),
          "gpt2": (dict(n_layer=12, n_embd=768, n_head=12, block_size=1024, vocab_size=50304), 8),
          "gpt2-b1": (dict(n_layer=12, n_embd=768, n_head=12, block_size=1024, vocab_size=50304), 1)}


def build(device: str, seed: int = 0, shape: str = "small"):
    from mathlens import GPT, GPTConfig

    torch.manual_seed(seed)
    kw, batch = SHAPES[shape]
    cfg = GPTConfig(**kw)
    model = GPT(cfg).to(device)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=g).to(device)
    y = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=g).to(device)
    return model, (lambda m, b: m(b[0], targets=b[1])[1]), [(x, y)]


def make_workload(name: str, model, loss_fn, batches, memory: bool = False):
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(5))
    v = v.to(next(model.parameters()).device)
    if name == "grad_fused":
        f = ModelLoss(model, loss_fn, batches)
        return lambda: f.value_and_grad()[1]
    if name == "hvp_double_backward_fused":
        op = HessianOperator(model, loss_fn, batches, "double_backward", attention="model")
    elif name in ("hvp_double_backward", "hvp_jvp"):
        op = HessianOperator(model, loss_fn, batches, name[4:], attention="math", reuse_graph=False)
    elif name == "hvp_recompute":
        op = HessianOperator(model, loss_fn, batches, "double_backward", attention="recompute", reuse_graph=False)
    elif name in ("hvp_double_backward_reused", "hvp_recompute_reused"):
        attention = "math" if name == "hvp_double_backward_reused" else "recompute"
        op = HessianOperator(model, loss_fn, batches, "double_backward", attention=attention, reuse_graph=True)
        if not memory:  # time the steady state; the memory figure includes the graph-building product
            op.matvec(v)
        return (lambda: (op.matvec(v), op.matvec(v))) if memory else (lambda: op.matvec(v))
    else:
        op = HessianOperator(model, loss_fn, batches, "finite_difference", fd_scheme=name.split("_")[-1])
        if op.fd_scheme == "forward":
            op.matvec(v)  # ∇L(w) is computed once per operator and cached; time the steady state
    return lambda: op.matvec(v)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_all(device: str, repeats: int, shape: str, block: int = 1) -> dict:
    """Median seconds per workload. The ``*_reused`` workloads keep a first-order graph between products, so each
    is timed in its own alternation with ``grad_fused`` and freed before the next: at most one kept graph is alive
    (two of them beside the math-attention transients do not fit in 80 GB at the gpt2 shape)."""
    import gc

    model, loss_fn, batches = build(device, shape=shape)
    kept = [n for n in WORKLOADS if n.endswith("_reused")]
    groups = [[n for n in WORKLOADS if n not in kept]] + [["grad_fused", n] for n in kept]
    medians: dict[str, float] = {}
    for group in groups:
        fns = {n: make_workload(n, model, loss_fn, batches) for n in group}
        for fn in fns.values():  # warm-up
            fn()
        times = {n: [] for n in group}
        for _ in range(repeats):
            for n, fn in fns.items():
                if block > 1:  # an untimed call first: it pays for the memory state the previous workload left
                    fn()
                for _ in range(block):
                    sync(device)
                    t0 = time.perf_counter()
                    fn()
                    sync(device)
                    times[n].append(time.perf_counter() - t0)
        for n, t in times.items():
            medians.setdefault(n, statistics.median(t))  # grad_fused: its median in the first group
        del fns
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return {n: medians[n] for n in WORKLOADS}


def memory_child(name: str, device: str, shape: str) -> None:
    """Run in a subprocess: print the peak extra memory (bytes) of one call of ``name``."""
    model, loss_fn, batches = build(device, shape=shape)
    fn = make_workload(name, model, loss_fn, batches, memory=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        print(json.dumps({"peak_bytes": torch.cuda.max_memory_allocated() - base}))
    else:
        base = _status_bytes("VmRSS")
        reset = _reset_peak_rss()
        before = _status_bytes("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        fn()
        after = _status_bytes("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"peak_bytes": after - (base if reset else before), "peak_reset": reset}))


def _status_bytes(key: str) -> int:
    """``VmRSS`` / ``VmHWM`` (peak RSS) of this process from /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to /proc/self/clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_all(device: str, shape: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    out = {}
    for name in WORKLOADS:
        r = subprocess.run([sys.executable, __file__, "--child", name, "--device", device, "--shape", shape,
                            "--threads", str(torch.get_num_threads()),
                            *(["--tf32"] if torch.backends.cuda.matmul.allow_tf32 else [])], env=env,
                           capture_output=True, text=True)
        out[name] = json.loads(r.stdout.strip().splitlines()[-1])["peak_bytes"] if r.returncode == 0 else None
    return out


def fd_error_curve(device: str, shape: str) -> dict:
    model, loss_fn, batches = build(device, shape=shape)
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(5)).to(device)
    exact = HessianOperator(model, loss_fn, batches, "double_backward").matvec(v)
    curve = {}
    for scheme in ("central", "forward"):
        for tau in (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5):
            op = HessianOperator(model, loss_fn, batches, "finite_difference", fd_step=tau, fd_scheme=scheme)
            curve[f"{scheme}/{tau:g}"] = relative_error(op.matvec(v), exact)
        default = HessianOperator(model, loss_fn, batches, "finite_difference", fd_scheme=scheme)
        curve[f"{scheme}/default({default.fd_step:.2g})"] = relative_error(default.matvec(v), exact)
    curve["jvp_vs_double_backward"] = relative_error(
        HessianOperator(model, loss_fn, batches, "jvp").matvec(v), exact)
    return curve


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--block", type=int, default=1,
                    help="timed calls per workload per round, after one untimed call (1: one call, no untimed call)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    ap.add_argument("--tf32", action="store_true", help="CUDA: TF32 matmuls and convolutions (BENCHMARKS.md's setting)")
    ap.add_argument("--skip-curve", action="store_true", help="skip the finite-difference error curve")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset (grad_fused is always run)")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the per-workload memory (each in its own process); the timing keeps every workload's "
                         "operator alive at once, which does not fit in 24 GiB at the gpt2 shapes")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    WORKLOADS[:] = ["grad_fused"] + [w for w in args.workloads.split(",") if w in WORKLOADS and w != "grad_fused"]
    if args.child:
        memory_child(args.child, args.device, args.shape)
        return 0
    model, loss_fn, batches = build(args.device, shape=args.shape)
    fused_fail = None
    try:
        make_workload("hvp_double_backward_fused", model, loss_fn, batches)()
    except Exception as err:  # the expected MathlensError
        fused_fail = str(err)
    times = dict.fromkeys(WORKLOADS, float("nan")) if args.memory_only else time_all(args.device, args.repeats, args.shape, args.block)
    mem = memory_all(args.device, args.shape)
    curve = {} if args.skip_curve else fd_error_curve(args.device, args.shape)
    ref_t, ref_m = times["grad_fused"], mem["grad_fused"]
    rows = {n: {"time_s": times[n], "time_ratio": times[n] / ref_t, "peak_bytes": mem[n],
                "memory_ratio": (mem[n] / ref_m) if (mem[n] and ref_m) else None} for n in WORKLOADS}
    result = {"device": args.device, "shape": args.shape, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "tf32": args.tf32,
              "repeats": args.repeats, "block": args.block, "workloads": rows, "double_backward_fused": fused_fail or "ran",
              "fd_relative_error": curve}
    print(f"{'workload':28s} {'time':>9s} {'×grad':>6s} {'peak MiB':>9s} {'×grad':>6s}")
    for n, r in rows.items():
        mib = f"{r['peak_bytes'] / 2**20:9.1f}" if r["peak_bytes"] else "      n/a"
        mr = f"{r['memory_ratio']:6.2f}" if r["memory_ratio"] else "   n/a"
        print(f"{n:28s} {r['time_s'] * 1e3:7.1f}ms {r['time_ratio']:6.2f} {mib} {mr}")
    print("double backward with fused SDPA:", fused_fail or "ran")
    print("finite-difference relative error vs exact HVP:")
    for k, e in curve.items():
        print(f"  {k:28s} {e:.2e}")
    out = Path(__file__).resolve().parent / "out" / f"hvp_cost_{args.shape}_{args.device.replace(':', '')}.json"
    write_json(out, result)
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
