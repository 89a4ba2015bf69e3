"""`mathlens report RUN_DIR`: rebuild report.html from a validate run's results."""

from __future__ import annotations

from pathlib import Path

from mathlens.errors import MathlensError


def add_parser(sub):
    p = sub.add_parser("report", help="rebuild report.html of a validate run from its results")
    p.add_argument("run_dir", help="a runs/validate-<time> directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from mathlens.report.html import write_report

    run_dir = Path(args.run_dir)
    if not run_dir.exists():
        raise MathlensError(f"run directory not found: {run_dir}")  # the rest is checked by write_report
    print(f"report: {write_report(run_dir)}")
    return 0
