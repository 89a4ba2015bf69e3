"""Top Hessian eigenvalue to 1e-3 relative accuracy: Lanczos vs PyHessian's power iteration (HVPs, wall time).

Model: ``GPT(GPTConfig(n_layer=4, n_embd=128, n_head=4, block_size=128, vocab_size=65))`` (0.8M parameters)
after ``--train-steps`` AdamW steps on tinyshakespeare (character level, 65 symbols; random tokens if the
corpus is absent), Hessian of the mean cross-entropy on one batch of 16 × 128 tokens, float32, HVP by
double backward with the math attention backend (``--hvp`` to change).

* reference λ_max: Lanczos to a relative residual of 1e-7;
* Lanczos (ours): stops when the residual bound ``β_m |s_m| ≤ 1e-3 · θ`` (a guaranteed bound on the error);
* power iteration, PyHessian's loop and stopping rule ``|λ_k − λ_{k−1}| / (|λ_{k−1}| + 1e-6) < 1e-3``,
  ``maxIter = 100`` (its defaults);
* ``--which LM``: Lanczos and the reference target the eigenvalue of largest magnitude, which is what
  power iteration converges to (at initialisation that is a *negative* eigenvalue of this model);
* for both, also the number of HVPs after which the estimate is first (and stays) within 1e-3 of the
  reference ("oracle" count, from each method's history).

Runs alternate over ``--seeds`` start vectors; medians are reported.

    python benchmarks/top_eigenvalue.py [--device cuda] [--seeds 3] [--train-steps 30] [--shape gpu-preset]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mathlens.io import write_json  # noqa: E402
from mathlens.probes.curvature import HessianOperator, lanczos, power_iteration  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def data(device: str, n_batches: int, seed: int = 0, B: int = 16, T: int = 128, corpus: Path = CORPUS):
    g = torch.Generator().manual_seed(seed)
    if corpus.exists():
        text = corpus.read_text()
        vocab = {c: i for i, c in enumerate(sorted(set(text)))}  # 65 symbols for tinyshakespeare
        ids = torch.tensor([vocab[c] for c in text[:200_000]]).clamp_max(64)
        starts = torch.randint(0, ids.numel() - T - 2, (n_batches, B), generator=g)
        batches = [(torch.stack([ids[s: s + T] for s in row]), torch.stack([ids[s + 1: s + T + 1] for s in row]))
                   for row in starts]
        src = "tinyshakespeare"
    else:
        batches = [(torch.randint(0, 65, (B, T), generator=g), torch.randint(0, 65, (B, T), generator=g))
                   for _ in range(n_batches)]
        src = "random tokens"
    return [(x.to(device), y.to(device)) for x, y in batches], src


SHAPES = {"small": dict(n_layer=4, n_embd=128, n_head=4, B=16, T=128),  # 0.8M parameters
          "gpu-preset": dict(n_layer=6, n_embd=384, n_head=6, B=4, T=64)}  # nanogpt-char-gpu's model, 10.7M


def build(device: str, train_steps: int, shape: str = "small", corpus: Path = CORPUS):
    from mathlens import GPT, GPTConfig

    sh = SHAPES[shape]
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=sh["n_layer"], n_embd=sh["n_embd"], n_head=sh["n_head"], block_size=128,
                          vocab_size=65)).to(device)
    batches, src = data(device, train_steps + 1, B=sh["B"], T=sh["T"], corpus=corpus)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for x, y in batches[1:]:
        opt.zero_grad()
        model(x, targets=y)[1].backward()
        opt.step()
    model.eval()
    return model, (lambda m, b: m(b[0], targets=b[1])[1]), batches[:1], src


def first_within(history: list[float], ref: float, rtol: float) -> int | None:
    """1-based index after which every estimate is within ``rtol`` of ``ref``."""
    ok = None
    for i, lam in enumerate(history, start=1):
        if abs(lam - ref) <= rtol * abs(ref):
            ok = ok or i
        else:
            ok = None
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--hvp", default="double_backward")
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--which", default="LA", choices=["LA", "LM"],
                    help="LA: largest eigenvalue (default); LM: largest magnitude, what power iteration converges to")
    ap.add_argument("--power-tol", type=float, default=None,
                    help="power iteration's tolerance (default --rtol, PyHessian's rule); tiny = run all 100 steps")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    ap.add_argument("--corpus", type=Path, default=CORPUS, help="tinyshakespeare text (absent: random tokens)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small",
                    help="small: 4×128, batch 16×128 (default); gpu-preset: 6×384 (10.7M), batch 4×64")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, loss_fn, batch, src = build(args.device, args.train_steps, args.shape, args.corpus)
    op = lambda: HessianOperator(model, loss_fn, batch, method=args.hvp)
    t0 = time.perf_counter()
    ref = lanczos(op(), k=1, max_iter=120, tol=1e-7, seed=12345, return_eigenvectors=False, which=args.which)
    t_ref = time.perf_counter() - t0
    lam = ref.eigenvalues[0]
    print(f"data: {src}; reference λ_max = {lam:.6g} ({ref.n_matvecs} HVPs, residual {ref.residuals[0]:.1e}, "
          f"{t_ref:.1f} s, {t_ref / ref.n_matvecs * 1e3:.0f} ms/HVP)")
    runs = {"lanczos": [], "power": []}
    for seed in range(args.seeds):  # alternate the two methods
        for name in ("lanczos", "power"):
            t0 = time.perf_counter()
            if name == "lanczos":
                r = lanczos(op(), k=1, max_iter=100, tol=args.rtol, seed=seed, return_eigenvectors=False,
                            which=args.which)
            else:
                r = power_iteration(op(), k=1, max_iter=100, seed=seed,
                                    tol=args.rtol if args.power_tol is None else args.power_tol)
            wall = time.perf_counter() - t0
            err = abs(r.eigenvalues[0] - lam) / abs(lam)
            runs[name].append({"seed": seed, "hvps": r.n_matvecs, "wall_s": wall, "estimate": r.eigenvalues[0],
                               "rel_error": err, "converged": r.converged,
                               "hvps_to_rtol_oracle": first_within(r.history, lam, args.rtol)})
            print(f"seed {seed} {name:8s}: {r.n_matvecs:3d} HVPs, {wall:6.1f} s, λ = {r.eigenvalues[0]:.6g}, "
                  f"rel. error {err:.1e}, within {args.rtol:g} from HVP {runs[name][-1]['hvps_to_rtol_oracle']}")

    def med(name, key):
        vals = [r[key] for r in runs[name] if r[key] is not None]
        return statistics.median(vals) if vals else None

    summary = {}
    for name in runs:
        summary[name] = {k: med(name, k) for k in ("hvps", "wall_s", "rel_error", "hvps_to_rtol_oracle")}
        summary[name]["all_within_rtol"] = all(r["rel_error"] <= args.rtol for r in runs[name])
    L, P = summary["lanczos"], summary["power"]
    ratio_stop = P["hvps"] / L["hvps"]
    ratio_oracle = (P["hvps_to_rtol_oracle"] / L["hvps_to_rtol_oracle"]
                    if P["hvps_to_rtol_oracle"] and L["hvps_to_rtol_oracle"] else None)
    print(f"median HVPs at each method's stopping rule: Lanczos {L['hvps']}, power {P['hvps']} "
          f"(ratio {ratio_stop:.2f}); time ratio {P['wall_s'] / L['wall_s']:.2f}")
    print(f"median HVPs until within {args.rtol:g} (oracle): Lanczos {L['hvps_to_rtol_oracle']}, "
          f"power {P['hvps_to_rtol_oracle']} (ratio {ratio_oracle if ratio_oracle is None else round(ratio_oracle, 2)})")
    print(f"all runs within {args.rtol:g}: Lanczos {L['all_within_rtol']}, power {P['all_within_rtol']}")
    name = f"top_eigenvalue_{args.shape}_{args.device.replace(':', '')}_train{args.train_steps}_{args.which}"
    name += "" if args.power_tol is None else "_ptol"
    out = Path(__file__).resolve().parent / "out" / f"{name}.json"
    write_json(out, {"shape": args.shape, **SHAPES[args.shape], "device": args.device, "which": args.which, "data": src, "train_steps": args.train_steps, "hvp": args.hvp,
                     "reference": {"lambda_max": lam, "hvps": ref.n_matvecs, "wall_s": t_ref},
                     "runs": runs, "summary": summary, "hvp_ratio_stopping_rule": ratio_stop,
                     "hvp_ratio_oracle": ratio_oracle, "torch": torch.__version__,
                     "threads": torch.get_num_threads()})
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
