"""Sweeps: grids of training runs, run in parallel processes or as Ray tasks, resumable.

    from mathlens.sweep import load_sweep, run_sweep, load_results
    results = run_sweep(load_sweep("sweep.toml"), parallel=2)     # <out>/<name>/<point-id>/ per point
    fit = load_results("runs/sweeps/tiny").fit_chinchilla()       # L(N, D) = E + A/N^α + B/D^β
"""

from mathlens.sweep.config import SweepSpec, cpu_cores, load_sweep, sweep_from_dict
from mathlens.sweep.grid import Point, combinations, expand, point_id
from mathlens.sweep.results import COLUMNS, SweepResults, count_params, load_results, point_record
from mathlens.sweep.runner import run_sweep, sweep_dir_of

__all__ = [
    "COLUMNS", "Point", "SweepResults", "SweepSpec", "combinations", "count_params", "cpu_cores", "expand",
    "load_results", "load_sweep", "point_id", "point_record", "run_sweep", "sweep_dir_of", "sweep_from_dict",
]
