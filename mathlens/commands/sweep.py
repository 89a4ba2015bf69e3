"""`mathlens sweep SWEEP.toml`: a grid of training runs in parallel processes (or Ray tasks), resumable."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="run a grid of training runs (parallel processes or Ray), skipping finished points",
        description="Run every point of a sweep file (a run config plus [sweep] name/out/parallel and "
                    "[sweep.grid] / [[sweep.points]]). Running it again skips finished points and resumes "
                    "unfinished ones from their checkpoints.")
    p.add_argument("sweep_file", help="sweep TOML file")
    p.add_argument("--parallel", type=int, default=None, help="local worker processes (default: sweep.parallel, "
                                                              "else the number of CPU cores)")
    p.add_argument("--ray-address", default=None, help="run the points as Ray tasks: auto, local or host:port "
                                                       "(needs mathlens[ray])")
    p.add_argument("--out", default=None, help="parent folder of the sweep directory (default: sweep.out)")
    p.add_argument("--quiet", action="store_true", help="no per-point progress lines")
    p.set_defaults(func=run)


def summary_table(results):
    """A rich Table of the records (id, status, N, D, losses, wall time)."""
    from rich.table import Table

    t = Table(title=f"sweep {results.name}: {len(results.done)}/{len(results.records)} done")
    for col in ("point", "status", "N", "D", "final val", "best val", "train", "time (s)"):
        t.add_column(col, justify="left" if col in ("point", "status") else "right")

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in results.records:
        status = r["status"] if r["status"] != "failed" else f"[red]failed[/red]: {r['error'] or ''}"[:80]
        t.add_row(r["id"], status, f(r["N"], ","), f(r["D"], ","), f(r["loss"], ".4f"),
                  f(r["best_val_loss"], ".4f"), f(r["train_loss"], ".4f"), f(r["wall_time"], ".1f"))
    return t


def run(args) -> int:
    from rich.console import Console

    from mathlens.errors import MathlensError
    from mathlens.sweep import load_sweep, run_sweep, sweep_dir_of

    if args.parallel is not None and args.parallel < 1:
        raise MathlensError(f"--parallel = {args.parallel} is invalid (≥ 1)")
    spec = load_sweep(args.sweep_file)
    # run_sweep checks the output folder, the Ray address and the corpora before it writes anything
    results = run_sweep(spec, parallel=args.parallel, out=args.out, ray_address=args.ray_address,
                        quiet=args.quiet)
    Console(width=160).print(summary_table(results))
    print(f"results: {sweep_dir_of(spec, args.out) / 'results.json'}")
    return 0 if all(r["status"] == "done" for r in results.records) else 1
