"""Run a suite of experiments into a run directory, resumably, and write results.json + report.html.

Layout of ``runs/validate-<time>/``::

    meta.json                 suite, seeds, versions, hardware, corpus, start time
    experiments/<id>.json     one finished experiment each (written atomically: a killed run resumes)
    figures/<id>.png          one figure per experiment
    results.json              everything (what `mathlens report` reads)
    report.html               the self-contained report
"""

from __future__ import annotations

import json
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
from mathlens.io import write_json


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
    """Run (or resume) ``suite`` into ``out`` and return the run directory."""
    s = get_suite(suite)
    if device:
        from dataclasses import replace

        s = replace(s, device=device)
    if s.device.startswith("cuda") and not torch.cuda.is_available():
        raise MathlensError(f"suite {suite!r} needs a CUDA GPU (device {s.device!r}); none is available")
    run_dir = Path(out) if out else Path("runs") / time.strftime("validate-%Y%m%d-%H%M%S")
    meta_path = run_dir / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("suite", {}).get("name") != s.name:
            raise MathlensError(f"{run_dir} holds a {meta.get('suite', {}).get('name')!r} run, not {s.name!r}")
        log(f"resuming {run_dir}")
    else:
        meta = {"suite": s.to_dict(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "environment": environment()}
        write_json(meta_path, meta)
    ctx = Context(s, run_dir, log=log)
    t_start = time.time()
    for exp in select(only):
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
    collect(run_dir)
    from mathlens.report.html import write_report

    write_report(run_dir)
    return run_dir


def collect(run_dir: str | Path) -> dict:
    """Gather meta.json and experiments/*.json into results.json."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "meta.json"
    if not meta_path.exists():
        raise MathlensError(f"not a validate run directory (no meta.json): {run_dir}")
    try:
        meta = json.loads(meta_path.read_text())
        records = [json.loads(p.read_text()) for p in sorted((run_dir / "experiments").glob("*.json"))]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MathlensError(f"corrupt result file in {run_dir}: {e}") from None
    results = {"meta": meta, "experiments": records}
    write_json(run_dir / "results.json", results)
    return results
