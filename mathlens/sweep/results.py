"""What a sweep produced: one record per point, and :func:`load_results` for the scaling fits.

Record of a point (JSON-ready)::

    id, values (dotted key -> value), status ("done" | "failed" | "pending"), error,
    N        non-embedding parameters (all parameters minus the token-embedding and learned-position tables;
             a tied unembedding is the token table, an untied one is counted)
    N_total  all parameters
    D        tokens seen = steps × batch_size × block_size × grad_accum
    T        context length (data.block_size)
    C        6 N D (training FLOP estimate)
    loss     final val loss (the model after D tokens), best_val_loss, init_val_loss, train_loss (mean train
             loss over the last eval interval), steps, wall_time (s), run_dir
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mathlens.errors import MathlensError
from mathlens.train.checkpoint import CKPT_DIR

SWEEP_FILE, RESULTS_JSONL, RESULTS_JSON, POINT_FILE = "sweep.json", "results.jsonl", "results.json", "point.json"
COLUMNS = ("N", "N_total", "D", "T", "C", "loss", "best_val_loss", "init_val_loss", "train_loss", "steps",
           "wall_time")


def count_params(model_config: dict[str, Any]) -> tuple[int, int]:
    """``(N non-embedding, N total)`` of the GPT that ``model_config`` (GPTConfig fields) describes,
    built on the meta device (no memory)."""
    import torch

    from mathlens.models.gpt import GPT, GPTConfig

    with torch.device("meta"):
        model = GPT(GPTConfig.from_dict(dict(model_config)))
    total = sum(p.numel() for p in model.parameters())
    emb = {id(model.wte.weight)}
    emb |= {id(p) for p in model.pos.parameters()}
    return total - sum(p.numel() for p in model.parameters() if id(p) in emb), total


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def finished_result(run_dir: Path, max_iters: int) -> dict[str, Any] | None:
    """The run's ``result.json`` when the run is complete (parses, and reached ``max_iters``), else None."""
    res = _read_json(Path(run_dir) / "result.json")
    if not isinstance(res, dict) or res.get("steps") != max_iters:
        return None
    if not all(k in res for k in ("final_val_loss", "best_val_loss", "tokens", "wall_time")):
        return None
    return res


def _model_config(run_dir: Path) -> dict[str, Any] | None:
    ckpts = run_dir / CKPT_DIR
    index = _read_json(ckpts / "index.json")
    if not isinstance(index, dict) or not isinstance(index.get("latest"), str):
        return None
    manifest = _read_json(ckpts / index["latest"] / "manifest.json")
    return manifest.get("model_config") if isinstance(manifest, dict) else None


def _last_train_loss(run_dir: Path) -> float | None:
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("kind") == "eval" and rec.get("train_loss") is not None:
            return float(rec["train_loss"])
    return None


def point_record(point: dict[str, Any], status: str | None = None, error: str | None = None) -> dict[str, Any]:
    """The record of a point (``Point.to_dict()``) from its run directory; ``status`` None: done if finished."""
    cfg = point["config"]
    run_dir = Path(cfg["run"]["out_dir"])
    d, o = cfg["data"], cfg["optim"]
    rec: dict[str, Any] = {"id": point["id"], "values": point["values"], "status": "pending", "error": error,
                           "T": d["block_size"], "run_dir": str(run_dir)}
    rec.update({k: None for k in COLUMNS if k not in rec})
    res = finished_result(run_dir, cfg["run"]["max_iters"])
    if res is not None:
        mcfg = _model_config(run_dir)
        n, n_total = count_params(mcfg) if mcfg else (None, None)
        D = int(res["steps"]) * d["batch_size"] * d["block_size"] * o["grad_accum"]
        rec.update(status="done", error=None, N=n, N_total=n_total, D=D, C=6.0 * n * D if n else None,
                   loss=res["final_val_loss"], best_val_loss=res["best_val_loss"],
                   init_val_loss=res.get("init_val_loss"), train_loss=_last_train_loss(run_dir),
                   steps=res["steps"], wall_time=res["wall_time"])
    if status is not None and not (status == "failed" and rec["status"] == "done"):
        rec["status"] = status
    return rec


@dataclass
class SweepResults:
    """The records of a sweep, with columns as arrays: ``r.N, r.D, r.T, r.loss`` (finished points only)."""

    name: str
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def done(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "done"]

    def column(self, name: str, status: str | None = "done") -> np.ndarray:
        """Column ``name`` (a COLUMNS entry or a swept dotted key) as a float array over the points with
        ``status`` (None: all; missing values are NaN)."""
        rows = self.records if status is None else [r for r in self.records if r["status"] == status]
        vals = [r["values"].get(name) if name in r["values"] else r.get(name) for r in rows]
        return np.array([math.nan if v is None else float(v) for v in vals], dtype=float)

    def __getattr__(self, name: str) -> np.ndarray:
        if name in COLUMNS:
            return self.column(name)
        raise AttributeError(name)

    def mean_over(self, key: str = "run.seed") -> SweepResults:
        """Finished points averaged over the values of swept ``key`` (e.g. seeds): one record per setting of
        the other keys, numeric columns averaged, ``n_runs`` and ``loss_std`` (sample std, ddof = 1) added."""
        groups: dict[str, list[dict]] = {}
        for r in self.done:
            rest = {k: v for k, v in r["values"].items() if k != key}
            groups.setdefault(json.dumps(rest, sort_keys=True), []).append(r)
        out = []
        for rows in groups.values():
            rec = {"id": "_".join(r["id"] for r in rows[:1]), "status": "done", "error": None,
                   "values": {k: v for k, v in rows[0]["values"].items() if k != key}, "n_runs": len(rows)}
            for c in COLUMNS:
                vals = [r[c] for r in rows if r.get(c) is not None]
                rec[c] = float(np.mean(vals)) if vals else None
            losses = [r["loss"] for r in rows]
            rec["loss_std"] = float(np.std(losses, ddof=1)) if len(losses) > 1 else None
            out.append(rec)
        return SweepResults(self.name, out)

    def fit_chinchilla(self, **kwargs):
        """:func:`mathlens.probes.scaling.fit_chinchilla` on (N, D, loss) of the finished points."""
        from mathlens.probes.scaling import fit_chinchilla

        return fit_chinchilla(self.N, self.D, self.loss, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(r["status"] == s for r in self.records) for s in ("done", "failed", "pending")}
        return {"name": self.name, "n_points": len(self.records), **counts, "points": self.records}


def load_results(sweep_dir: str | Path) -> SweepResults:
    """The records of the sweep in ``sweep_dir`` (its ``sweep.json`` lists the points), read from the run
    directories; a point that failed keeps its error from ``results.jsonl``."""
    sweep_dir = Path(sweep_dir)
    meta = _read_json(sweep_dir / SWEEP_FILE)
    if not isinstance(meta, dict) or not isinstance(meta.get("points"), list):
        raise MathlensError(f"{sweep_dir} is not a sweep directory (no valid {SWEEP_FILE})")
    logged: dict[str, dict] = {}
    try:
        for line in (sweep_dir / RESULTS_JSONL).read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                logged[rec["id"]] = rec
            except (ValueError, KeyError, TypeError):
                continue
    except OSError:
        pass
    records = []
    for p in meta["points"]:
        point = _read_json(sweep_dir / p["id"] / POINT_FILE) or {**p, "config": None}
        if not point.get("config"):
            records.append({"id": p["id"], "values": p.get("values", {}), "status": "pending", "error": None,
                            **{k: None for k in COLUMNS}, "run_dir": str(sweep_dir / p["id"])})
            continue
        point["config"]["run"]["out_dir"] = str(sweep_dir / p["id"])  # the folder may have moved
        old = logged.get(p["id"], {})
        status = "failed" if old.get("status") == "failed" else None
        records.append(point_record(point, status, old.get("error") if status else None))
    return SweepResults(meta.get("name", sweep_dir.name), records)
