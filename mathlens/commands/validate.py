"""`mathlens validate`: run the experiments of a suite and write the HTML report."""

from __future__ import annotations

from mathlens.errors import MathlensError


def add_parser(sub):
    p = sub.add_parser("validate", help="put every claim to a controlled multi-seed test; write report.html")
    p.add_argument("--suite", default="default", help="quick | default | gpu (default: default)")
    p.add_argument("--out", default=None, help="run directory (default runs/validate-<time>); an existing one resumes")
    p.add_argument("--only", default=None, help="comma-separated experiment ids, keys or numbers")
    p.add_argument("--device", default=None, help="override the suite's device (auto, cpu, cuda, cuda:N, mps)")
    p.set_defaults(func=run)


def run(args) -> int:
    from mathlens.experiments.runner import run_validate

    only = None
    if args.only is not None:
        only = [t.strip() for t in args.only.split(",") if t.strip()]
        if not only:
            raise MathlensError(f"--only {args.only!r} names no experiment (give ids, keys or numbers, comma-separated)")
    run_dir = run_validate(args.suite, args.out, only, args.device)
    print(f"report: {run_dir / 'report.html'}")
    return 0
