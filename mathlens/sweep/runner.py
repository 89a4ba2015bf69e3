"""Running a sweep: every unfinished point in its own process, ``parallel`` at a time.

Why one process per point (not a ``ProcessPoolExecutor``): a point that crashes (segfault, out of memory, a
killed process) is recorded as failed while the others go on, whereas one dead pool worker breaks the whole
pool; each point gets a fresh process with its own thread setting; and a point's process dies with the sweep
(see :mod:`mathlens.sweep.worker`). Locally the processes are forked from a ``multiprocessing`` fork server
that has imported torch and the trainer once (a point starts in ~0.1 s; a ``python -m mathlens.sweep.worker``
subprocess, used where there is no fork server and for Ray tasks, pays ~2-3 s of CPU to import torch).

Layout: ``<out>/<name>/sweep.json`` (the spec and the point list), ``<out>/<name>/<point-id>/`` a normal run
directory plus ``point.json`` and ``worker.log``, ``results.jsonl`` (one record per point, rewritten as points
finish) and ``results.json`` (all records, at the end). Running the same sweep again skips finished points
(``result.json`` complete) and resumes unfinished ones from their latest checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from mathlens.errors import MathlensError
from mathlens.io import check_output_dir, write_json, write_text
from mathlens.sweep.config import SweepSpec, cpu_cores
from mathlens.sweep.grid import Point, expand
from mathlens.sweep.results import (
    POINT_FILE,
    RESULTS_JSON,
    RESULTS_JSONL,
    SWEEP_FILE,
    SweepResults,
    finished_result,
    point_record,
)

LOG_FILE = "worker.log"
_PKG_ROOT = str(Path(__file__).resolve().parents[2])


def _same_config(a: dict, b: dict) -> bool:
    def strip(c):
        c = json.loads(json.dumps(c))
        c.get("run", {}).pop("out_dir", None)
        return c

    return strip(a) == strip(b)


def prepare(points: list[Point], sweep_dir: Path) -> tuple[list[Point], list[Point]]:
    """Write each point's ``point.json``; split into (finished, to run). A point directory holding a
    different config is an error (the sweep file changed under the same id)."""
    finished, todo = [], []
    for p in points:
        path = p.run_dir / POINT_FILE
        if path.is_file():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))["config"]
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                raise MathlensError(f"corrupt {path} (remove that point directory to re-run it)") from None
            if not _same_config(old, p.config):
                raise MathlensError(f"{p.run_dir} holds point {p.id} with a different config; the sweep file "
                                    f"changed: choose another sweep.name / --out, or remove that directory")
        else:
            write_json(path, p.to_dict())
        done = finished_result(p.run_dir, p.config["run"]["max_iters"])
        (finished if done is not None else todo).append(p)
    return finished, todo


def worker_command(point_json: Path, threads: int, parent: int) -> list[str]:
    return [sys.executable, "-m", "mathlens.sweep.worker", str(point_json), "--threads", str(threads),
            "--parent", str(parent)]


def worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (_PKG_ROOT, env.get("PYTHONPATH")) if x)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


def _last_error(log: Path) -> str:
    try:
        lines = [x for x in log.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no log"
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    return lines[-1][:300] if lines else "no output"


class _Worker:
    """A point's process: forked from the preloaded fork server when ``ctx`` is given, else a subprocess."""

    def __init__(self, ctx, point_json: Path, threads: int, log: Path, fh):
        if ctx is not None:
            from mathlens.sweep.worker import forked_main

            self.proc = ctx.Process(target=forked_main, args=(str(point_json), threads, str(log), os.getpid()))
            self.proc.start()
        else:
            self.proc = subprocess.Popen(worker_command(point_json, threads, os.getpid()), stdout=fh,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=worker_env(threads))

    def wait(self) -> int:
        if isinstance(self.proc, subprocess.Popen):
            return self.proc.wait()
        self.proc.join()
        return self.proc.exitcode

    def kill(self) -> None:
        self.proc.kill()


def fork_context():
    """A ``forkserver`` multiprocessing context whose server imports torch and the trainer once, so a point
    starts in ~0.1 s instead of ~2-3 s of CPU; None where the platform has no fork server."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return None
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["mathlens.sweep.worker", "mathlens.train.loop"])
    return ctx


def run_point(point: dict[str, Any], threads: int, procs: set | None = None, lock=None,
              ctx=None) -> dict[str, Any]:
    """Run one point (``Point.to_dict()``) in its own process; its record (status done or failed)."""
    run_dir = Path(point["config"]["run"]["out_dir"])
    log = run_dir / LOG_FILE
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
        fh.flush()
        proc = _Worker(ctx, run_dir / POINT_FILE, threads, log, fh)
        if procs is not None:
            with lock:
                procs.add(proc)
        try:
            rc = proc.wait()
        finally:
            if procs is not None:
                with lock:
                    procs.discard(proc)
    if rc == 0:
        return point_record(point)
    why = _last_error(log) if rc in (1, 2) else f"worker killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
    return point_record(point, "failed", why)


class _Progress:
    """Per-point lines on stderr and ``results.jsonl`` kept current as points finish."""

    def __init__(self, sweep_dir: Path, records: dict[str, dict], total: int, quiet: bool):
        self.sweep_dir, self.records, self.total, self.quiet = sweep_dir, records, total, quiet
        self.lock = threading.Lock()
        self.n = sum(r["status"] == "done" for r in records.values())

    def __call__(self, rec: dict[str, Any]) -> None:
        with self.lock:
            self.records[rec["id"]] = rec
            self.n += 1
            write_text(self.sweep_dir / RESULTS_JSONL,
                       "".join(json.dumps(r) + "\n" for r in self.records.values() if r["status"] != "pending"))
            if not self.quiet:
                if rec["status"] == "done":
                    msg = f"final val loss {rec['loss']:.4f}, {rec['wall_time']:.1f} s"
                else:
                    msg = f"FAILED: {rec['error']}"
                print(f"[{self.n}/{self.total}] {rec['id']}: {msg}", file=sys.stderr, flush=True)


def _run_local(todo: list[Point], parallel: int, threads: int, on_done: Callable) -> None:
    procs: set = set()
    lock = threading.Lock()
    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        ctx = fork_context()
        futures = {pool.submit(run_point, p.to_dict(), threads, procs, lock, ctx): p for p in todo}
        for f in as_completed(futures):
            p = futures[f]
            try:
                on_done(f.result())
            except Exception as e:  # noqa: BLE001 - a broken point must not stop the sweep
                on_done(point_record(p.to_dict(), "failed", f"{type(e).__name__}: {e}"))
    finally:
        with lock:
            for proc in procs:
                proc.kill()
        pool.shutdown(wait=True, cancel_futures=True)


def sweep_dir_of(spec: SweepSpec, out: str | None = None) -> Path:
    return (Path(out or spec.out) / spec.name).resolve()


def check_corpora(spec: SweepSpec, points: list[Point]) -> None:
    """Load each distinct ``data.corpus`` of ``points`` (those still to run) once (the base config's, unless the
    grid varies it), so a missing path, unknown name, empty or binary file is one MathlensError before anything
    runs or is written. Whether a corpus is long enough for a point's context stays each point's own check
    (it depends on the point's tokenizer and block_size)."""
    from mathlens.data.corpora import load_corpus

    seen: set[str] = set()
    for p in points:
        corpus = p.config["data"]["corpus"]
        if corpus in seen:
            continue
        seen.add(corpus)
        try:
            load_corpus(corpus)
        except MathlensError as e:
            where = f"point {p.id}" if "data.corpus" in p.values else f"{spec.source} (base config)"
            raise MathlensError(f"{where}: data.corpus: {e}") from None


def run_sweep(spec: SweepSpec, *, parallel: int | None = None, out: str | None = None,
              ray_address: str | None = None, quiet: bool = False) -> SweepResults:
    """Run every unfinished point of ``spec`` (locally with ``parallel`` processes, or as Ray tasks on
    ``ray_address``: an address, ``auto`` or ``local``) and return all records."""
    from mathlens.train.rundir import RunLock

    if parallel is not None and parallel < 1:
        raise MathlensError(f"--parallel = {parallel} is invalid (≥ 1)")
    sweep_dir = sweep_dir_of(spec, out)
    points = expand(spec, sweep_dir)
    parallel = parallel or spec.default_parallel
    threads = spec.threads or max(1, cpu_cores() // parallel)
    # every check of the input comes before anything is written under the output folder
    where = "--out" if out else f"{spec.source}: sweep.out = {spec.out!r}; the sweep directory"
    check_output_dir(sweep_dir, where)
    pending = [p for p in points if finished_result(p.run_dir, p.config["run"]["max_iters"]) is None]
    session = contextlib.nullcontext()
    if ray_address:
        from mathlens.sweep.ray_backend import check_ray_address, import_ray, ray_session

        check_ray_address(ray_address)  # before importing ray: an unreachable address is one line, at once
        import_ray()
        if pending:
            session = ray_session(ray_address)
    check_corpora(spec, pending)
    with session:  # connected (a bad `auto`, a port that is no Ray) before the sweep directory is made
        sweep_dir.mkdir(parents=True, exist_ok=True)  # check_output_dir above found it can be made
        with RunLock(sweep_dir):
            write_json(sweep_dir / SWEEP_FILE, {"name": spec.name, "spec": spec.to_dict(),
                                                "base_config": spec.base_config(),
                                                "points": [{"id": p.id, "values": p.values} for p in points]})
            finished, todo = prepare(points, sweep_dir)
            records = {p.id: point_record(p.to_dict()) for p in points}
            progress = _Progress(sweep_dir, records, len(points), quiet)
            if not quiet:
                how = f"Ray at {ray_address}" if ray_address else f"{parallel} processes × {threads} threads"
                print(f"sweep {spec.name}: {len(points)} points, {len(finished)} finished, {len(todo)} to run "
                      f"({how}) in {sweep_dir}", file=sys.stderr, flush=True)
            if todo:
                if ray_address:
                    from mathlens.sweep.ray_backend import run_ray

                    run_ray(todo, ray_address, spec.threads or 1, spec.gpus_per_point, progress)
                else:
                    _run_local(todo, parallel, threads, progress)
            results = SweepResults(spec.name, [records[p.id] for p in points])
            write_text(sweep_dir / RESULTS_JSONL, "".join(json.dumps(r) + "\n" for r in results.records))
            write_json(sweep_dir / RESULTS_JSON, results.to_dict())
    return results
