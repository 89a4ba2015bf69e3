"""Grid expansion: a :class:`SweepSpec` -> its points, each a validated TrainConfig with a stable id.

A point's id names its settings, ``n_embd=32_lr=0.001_seed=0`` (the field name alone where it is unique
among the varied keys, else ``section.field``), so the same setting always lands in the same directory
``<out>/<name>/<id>`` and a re-run of the sweep finds it again.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathlens.errors import MathlensError
from mathlens.sweep.config import SweepSpec

MAX_ID = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]+")


@dataclass
class Point:
    """One run of a sweep: ``values`` (dotted key -> value) over the base config gives ``config``."""

    id: str
    values: dict[str, Any]
    config: dict[str, Any]  # nested TrainConfig dict, run.out_dir = run_dir

    @property
    def run_dir(self) -> Path:
        return Path(self.config["run"]["out_dir"])

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "values": dict(self.values), "config": self.config}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Point:
        return cls(d["id"], dict(d["values"]), d["config"])


def format_value(v: Any) -> str:
    """A file-name-safe, unambiguous text for one value (floats by shortest round-trip repr)."""
    if isinstance(v, bool):
        text = "true" if v else "false"
    elif isinstance(v, float):
        text = repr(v)
    else:
        text = str(v)
    return _UNSAFE.sub("-", text) or "-"


def point_id(values: dict[str, Any], labels: dict[str, str]) -> str:
    """``label=value`` joined by ``_``; over MAX_ID characters it is cut and a short hash appended."""
    pid = "_".join(f"{labels[k]}={format_value(v)}" for k, v in values.items())
    if len(pid) > MAX_ID:
        digest = hashlib.sha256(repr(sorted(values.items())).encode()).hexdigest()[:10]
        pid = f"{pid[:MAX_ID - 11]}-{digest}"
    return pid


def _labels(keys: list[str]) -> dict[str, str]:
    fields = [k.split(".", 1)[1] for k in keys]
    return {k: f if fields.count(f) == 1 else k for k, f in zip(keys, fields)}


def combinations(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every point's ``{dotted key: value}``: the grid's product, crossed with each explicit point."""
    keys = list(spec.grid)
    grid = [dict(zip(keys, combo)) for combo in itertools.product(*(spec.grid[k] for k in keys))]
    if not spec.points:
        return grid
    return [{**p, **g} for p in spec.points for g in grid] if keys else [dict(p) for p in spec.points]


def set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    section, name = key.split(".", 1)
    config.setdefault(section, {})[name] = value


def expand(spec: SweepSpec, sweep_dir: str | Path) -> list[Point]:
    """The points of ``spec`` with run directories under ``sweep_dir``; every config is validated
    (an invalid one -> MathlensError naming the point and the field)."""
    from mathlens.train.config import TrainConfig

    sweep_dir = Path(sweep_dir).resolve()
    combos = combinations(spec)
    all_keys = list(dict.fromkeys(k for c in combos for k in c))
    labels = _labels(all_keys)
    base = spec.base_config()
    points: list[Point] = []
    seen: dict[str, dict] = {}
    for values in combos:
        pid = point_id(values, labels)
        if pid in seen:
            raise MathlensError(f"{spec.source}: two points have the same id {pid!r} ({seen[pid]} and {values})")
        seen[pid] = values
        cfg = {s: dict(v) if isinstance(v, dict) else v for s, v in base.items()}
        for k, v in values.items():
            set_dotted(cfg, k, v)
        set_dotted(cfg, "run.out_dir", str(sweep_dir / pid))
        try:
            config = TrainConfig.from_dict(cfg, where=f"point {pid}")
        except MathlensError as e:
            msg = str(e)
            raise MathlensError(msg if msg.startswith(f"point {pid}") else f"point {pid}: {msg}") from None
        points.append(Point(pid, values, config.to_dict()))
    return points
