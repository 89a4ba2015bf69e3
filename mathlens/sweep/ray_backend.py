"""Sweep points as Ray tasks (the optional extra ``mathlens[ray]``).

Each task runs the same worker process as a local sweep (:func:`mathlens.sweep.runner.run_point`) on the
node Ray picks, asking for ``threads`` CPUs (and ``gpus_per_point`` GPUs). The sweep directory must be on a
file system every node sees (the driver writes ``point.json``, the task writes the run directory).
"""

from __future__ import annotations

from collections.abc import Callable

from mathlens.errors import MathlensError
from mathlens.sweep.grid import Point
from mathlens.sweep.results import point_record


def import_ray():
    try:
        import ray
    except ImportError:
        raise MathlensError("Ray is not installed: pip install 'mathlens[ray]'") from None
    return ray


def _task(point: dict, threads: int) -> dict:
    from mathlens.sweep.runner import run_point

    return run_point(point, threads)


def run_ray(todo: list[Point], address: str, threads: int, gpus: float, on_done: Callable) -> None:
    """Run ``todo`` as Ray tasks on ``address`` (``local``: a Ray instance in this process, or the one
    already initialised; ``auto`` or ``host:port`` / ``ray://...``: a running cluster); ``on_done(record)``
    as each finishes."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False}
        try:
            ray.init(address=None if address == "local" else address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise MathlensError(f"cannot connect to Ray at {address!r}: {str(e).splitlines()[0]}") from None
        started = True
    try:
        task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(_task)
        refs = {task.remote(p.to_dict(), threads): p for p in todo}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            p = refs[done[0]]
            try:
                rec = ray.get(done[0])
            except Exception as e:  # noqa: BLE001 - a task that died is a failed point
                rec = point_record(p.to_dict(), "failed", f"Ray task failed: {str(e).splitlines()[0]}")
            on_done(rec)
    finally:
        if started:
            ray.shutdown()
