"""Run a suite of experiments into a run directory, resumably, and write results.json + report.html.

Layout of ``runs/validate-<time>/``::

    meta.json                 suite, seeds, versions, hardware, corpus, start time
    experiments/<id>.json     one finished experiment each (written atomically: a killed run resumes)
    figures/<id>.png          one figure per experiment
    results.json              everything (what `mathlens report` reads)
    report.html               the self-contained report
"""

from __future__ import annotations

import platform
import time
import traceback
from pathlib import Path

import torch

from mathlens import __version__
from mathlens.errors import MathlensError
from mathlens.experiments.context import Context
from mathlens.experiments.registry import all_experiments
from mathlens.experiments.suites import get_suite
from mathlens.io import check_output_dir, read_json, write_json


def environment() -> dict:
    import numpy
    import scipy
    import transformers

    return {
        "mathlens": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": numpy.__version__, "scipy": scipy.__version__, "transformers": transformers.__version__,
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def select(only: list[str] | None):
    exps = all_experiments()
    if not only:
        return exps
    chosen = []
    for token in only:
        match = [e for e in exps if token in (e.id, e.key, str(e.number))]
        if not match:
            raise MathlensError(f"unknown experiment {token!r} (known: {', '.join(e.id for e in exps)})")
        chosen += [e for e in match if e not in chosen]
    return chosen


def run_validate(suite: str = "default", out: str | Path | None = None, only: list[str] | None = None,
                 device: str | None = None, log=print) -> Path:
    """Run (or resume) ``suite`` into ``out`` and return the run directory.

    Every input (suite, device, ``only``, the output location and, on resume, meta.json and the finished records)
    is checked before anything is created or written: a bad one raises :class:`MathlensError` and leaves no trace."""
    s = get_suite(suite)
    if device is not None:
        from dataclasses import replace

        from mathlens.train.setup import resolve_device

        s = replace(s, device=str(resolve_device(device, what="--device")))
    elif s.device.startswith("cuda") and not torch.cuda.is_available():
        raise MathlensError(f"suite {suite!r} needs a CUDA GPU (device {s.device!r}); none is available")
    exps = select(only)
    run_dir = Path(out) if out else Path("runs") / time.strftime("validate-%Y%m%d-%H%M%S")
    check_output_dir(run_dir, "--out" if out else "run directory")
    check_layout(run_dir, dirs=("experiments", "figures", "models"), files=(META, "results.json", "report.html"))
    meta_path = run_dir / META
    resuming = meta_path.exists()
    if resuming:
        meta = read_meta(run_dir)
        if meta["suite"]["name"] != s.name:
            raise MathlensError(f"{run_dir} holds a {meta['suite']['name']!r} run, not {s.name!r}")
    read_records(run_dir)  # a corrupt finished record stops the run before anything is rewritten
    # nothing was written up to here
    if resuming:
        log(f"resuming {run_dir}")
    else:
        meta = {"suite": s.to_dict(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "environment": environment()}
        write_json(meta_path, meta)
    ctx = Context(s, run_dir, log=log)
    t_start = time.time()
    for exp in exps:
        path = run_dir / "experiments" / f"{exp.id}.json"
        if path.exists():
            log(f"  {exp.id}: done already")
            continue
        log(f"  {exp.id}: {exp.title} ...")
        t0 = time.time()
        record = {"experiment": exp.describe()}
        try:
            torch.manual_seed(0)
            record["outcome"] = exp.run(ctx).to_dict()
            record["status"] = "ok"
        except MathlensError:
            raise
        except Exception as e:  # a failing experiment is reported, not hidden; the others still run
            record["status"] = "error"
            record["error"] = f"{type(e).__name__}: {e}"
            record["traceback"] = traceback.format_exc()
        record["duration_s"] = round(time.time() - t0, 2)
        write_json(path, record)
        verdict = record.get("outcome", {}).get("verdict", record["status"])
        log(f"  {exp.id}: {verdict} ({record['duration_s']:.1f} s)")
    meta["duration_s"] = round(time.time() - t_start, 1)
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_json(meta_path, meta)
    from mathlens.report.html import write_report

    write_report(run_dir)  # results.json, then report.html
    return run_dir


# reading a run directory: every problem is one line naming the file ----------------------------------------------
META = "meta.json"
_KINDS = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number"}


def _kind(x) -> str:
    if x is None:
        return "null"
    return "true/false" if isinstance(x, bool) else _KINDS.get(type(x), type(x).__name__)


def _is(x, want) -> bool:
    if isinstance(x, bool):
        return False
    return isinstance(x, (int, float)) if want is float else isinstance(x, want)


def _field(obj: dict, key: str, want, path: Path, where: str = "", required: bool = True):
    """``obj[key]`` when it is of JSON type ``want``; :class:`MathlensError` naming ``path`` and the field otherwise."""
    name = f"{where}.{key}" if where else key
    if key not in obj:
        if required:
            raise MathlensError(f"{path}: {name!r} is missing")
        return None
    x = obj[key]
    if not _is(x, want):
        raise MathlensError(f"{path}: {name!r} is {_kind(x)}, not {_KINDS[want]}")
    return x


def check_layout(run_dir: Path, dirs=(), files=()) -> None:
    """What a run writes must not be blocked: ``dirs`` under ``run_dir`` are folders, ``files`` are not."""
    for name in dirs:
        if (run_dir / name).exists() and not (run_dir / name).is_dir():
            raise MathlensError(f"{run_dir / name} is not a directory")
    for name in files:
        if (run_dir / name).is_dir():
            raise MathlensError(f"{run_dir / name} is a directory, not a file")


def read_meta(run_dir: Path) -> dict:
    """meta.json of a run, checked: an object whose ``suite`` is an object with a ``name``."""
    path = run_dir / META
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise MathlensError(f"{path} holds {_kind(meta)}, not an object")
    _field(_field(meta, "suite", dict, path), "name", str, path, "suite")
    _field(meta, "environment", dict, path, required=False)
    return meta


def check_record(rec, path: Path) -> dict:
    """An ``experiments/<id>.json`` record, checked for everything the report reads from it."""
    if not isinstance(rec, dict):
        raise MathlensError(f"{path} holds {_kind(rec)}, not an experiment record (an object)")
    e = _field(rec, "experiment", dict, path)
    for key, want in (("id", str), ("number", int), ("title", str), ("claim", str), ("source", str),
                      ("prediction", str), ("method", str)):
        _field(e, key, want, path, "experiment")
    if not all(isinstance(g, str) for g in _field(e, "groups", list, path, "experiment")):
        raise MathlensError(f"{path}: 'experiment.groups' must be a list of strings")
    out = rec.get("outcome")
    if out is None:
        if rec.get("status") == "ok":
            raise MathlensError(f"{path}: status is 'ok' but 'outcome' is missing")
        return rec
    out = _field(rec, "outcome", dict, path)
    for key in ("statistic", "verdict", "rule"):
        _field(out, key, str, path, "outcome")
    ci = _field(out, "ci", dict, path, "outcome")
    for key in ("estimate", "low", "high", "n", "method"):
        if key not in ci:
            raise MathlensError(f"{path}: 'outcome.ci.{key}' is missing")
    for name, vals in (_field(out, "groups", dict, path, "outcome", required=False) or {}).items():
        if not isinstance(vals, list) or not all(_is(v, float) for v in vals):
            raise MathlensError(f"{path}: 'outcome.groups.{name}' must be a list of numbers")
    _field(out, "numbers", dict, path, "outcome", required=False)
    if out.get("figure") is not None:
        _field(out, "figure", str, path, "outcome")
    return rec


def read_records(run_dir: Path) -> list[dict]:
    """The finished experiment records of a run, checked, in file-name order."""
    return [check_record(read_json(p), p) for p in sorted((run_dir / "experiments").glob("*.json"))]


def load_results(run_dir: str | Path) -> dict:
    """meta.json and experiments/*.json, checked, as the content of results.json; writes nothing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MathlensError(f"run directory {run_dir} is not a directory")
    if not (run_dir / META).exists() and not (run_dir / META).is_symlink():
        raise MathlensError(f"not a validate run directory (no meta.json): {run_dir}")
    check_layout(run_dir, files=("results.json", "report.html"))
    return {"meta": read_meta(run_dir), "experiments": read_records(run_dir)}

