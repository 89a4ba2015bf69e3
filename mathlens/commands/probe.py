"""`mathlens probe MODEL --probes attention,geometry,curvature`: measure one model, write JSON and figures."""

from __future__ import annotations

from mathlens.commands import seed


def add_parser(sub):
    p = sub.add_parser("probe", help="run probes on a model (run dir, HF model folder or 'smollm2')")
    p.add_argument("model", metavar="MODEL", help="run directory of `mathlens train`, local HF model folder, or smollm2")
    p.add_argument("--probes", default="attention,geometry", help="comma-separated: attention, geometry, curvature")
    p.add_argument("--data", default="tinyshakespeare", help="corpus name or path for the input text")
    p.add_argument("--out", default=None, help="output directory (default runs/probe-<time>)")
    p.add_argument("--n-sequences", type=int, default=8)
    p.add_argument("--n-tokens", type=int, default=128)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from mathlens.errors import MathlensError
    from mathlens.probes.run import run_probes

    if args.n_sequences < 1 or args.n_tokens < 3:
        raise MathlensError("--n-sequences must be ≥ 1 and --n-tokens ≥ 3")
    out = args.out or time.strftime("runs/probe-%Y%m%d-%H%M%S")
    probes = [p.strip() for p in args.probes.split(",") if p.strip()]
    run_probes(args.model, probes, out, args.data, args.n_sequences, args.n_tokens, args.seed, args.device)
    print(f"results: {out}")
    return 0
