"""Sweep files: a base training config (the sections of a run TOML) plus a ``[sweep]`` table.

    [model]                      # base run: any [model] [data] [optim] [run] setting of `mathlens train`
    n_layer = 1
    [data]
    corpus = "tinyshakespeare"
    [sweep]
    name = "tiny"                # the sweep directory is <out>/<name>
    out = "runs/sweeps"
    parallel = 2                 # local worker processes (default: the number of CPU cores)
    threads = 1                  # torch threads per point (default: max(1, cores // parallel))
    preset = "nanogpt-char-cpu"  # optional: a training preset under the base config
    [sweep.grid]                 # dotted key -> list of values; every combination is one point
    "model.n_embd" = [32, 64]
    "run.seed" = [0, 1, 2]
    [[sweep.points]]             # explicit points (each crossed with the grid when both are given)
    "model.n_layer" = 1
    "model.n_head" = 1

Keys may also be written as TOML dotted keys (``model.n_embd = [...]``, unquoted).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathlens.errors import MathlensError

SECTIONS = ("model", "data", "optim", "run")
#: settings the sweep itself decides for every point
RESERVED = ("run.out_dir",)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def cpu_cores() -> int:
    """CPU cores this process may use (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


@dataclass
class SweepSpec:
    """A parsed sweep file. ``base``: nested TrainConfig dict; ``grid``: dotted key -> values;
    ``points``: explicit ``{dotted key: value}`` points."""

    name: str
    base: dict[str, Any]
    grid: dict[str, list] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    out: str = "runs/sweeps"
    parallel: int | None = None
    threads: int | None = None
    gpus_per_point: float = 0.0  # Ray only
    preset: str | None = None
    source: str = "sweep"  # where it came from, for messages

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise MathlensError(f"sweep.name = {self.name!r} is invalid (letters, digits, '.', '_', '-')")
        if not isinstance(self.out, str) or not self.out:
            raise MathlensError(f"sweep.out = {self.out!r} is invalid (a folder path)")
        for key in ("parallel", "threads"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise MathlensError(f"sweep.{key} = {v!r} is invalid (an integer ≥ 1)")
        g = self.gpus_per_point
        if not isinstance(g, (int, float)) or isinstance(g, bool) or g < 0:
            raise MathlensError(f"sweep.gpus_per_point = {g!r} is invalid (a number ≥ 0)")
        if self.preset is not None and not isinstance(self.preset, str):
            raise MathlensError(f"sweep.preset = {self.preset!r} is invalid (a preset name)")
        self.grid = {k: _check_values(k, v) for k, v in _flatten(self.grid, "sweep.grid").items()}
        for k in self.grid:
            check_key(k, "sweep.grid")
        if not isinstance(self.points, list):
            raise MathlensError("sweep.points must be an array of tables ([[sweep.points]])")
        flat = []
        for i, p in enumerate(self.points):
            where = f"sweep.points[{i}]"
            if not isinstance(p, dict) or not p:
                raise MathlensError(f"{where} must be a non-empty table of dotted keys, got {p!r}")
            p = _flatten(p, where)
            for k, v in p.items():
                check_key(k, where)
                _check_scalar(k, v, where)
                if k in self.grid:
                    raise MathlensError(f"{where}: {k!r} is also a [sweep.grid] key; set it in one place")
            flat.append(p)
        self.points = flat
        if not self.grid and not self.points:
            raise MathlensError(f"{self.source}: the sweep has no points (add [sweep.grid] or [[sweep.points]])")

    @property
    def default_parallel(self) -> int:
        return self.parallel or cpu_cores()

    def base_config(self) -> dict[str, Any]:
        """The base nested config dict: the preset (if any) under the file's sections."""
        from mathlens.train.config import merge
        from mathlens.train.presets import preset

        base = preset(self.preset) if self.preset else {}
        return merge(base, self.base)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


def check_key(key: str, where: str) -> None:
    """``key`` must be ``section.field`` of a TrainConfig setting the sweep may vary."""
    from mathlens.models.gpt import GPTConfig
    from mathlens.train.config import DataConfig, OptimConfig, RunConfig

    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in SECTIONS:
        raise MathlensError(f"{where}: key {key!r} is invalid (expected section.field with section one of "
                            f"{', '.join(SECTIONS)}, e.g. 'model.n_embd')")
    section, name = parts
    cls = {"model": GPTConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig}[section]
    names = {f.name for f in dataclasses.fields(cls)}
    if section == "model":
        names -= {"vocab_size", "block_size"}
    if name not in names:
        raise MathlensError(f"{where}: unknown key {key!r} (allowed in [{section}]: {', '.join(sorted(names))})")
    if key in RESERVED:
        raise MathlensError(f"{where}: {key!r} is set by the sweep (<out>/<name>/<point-id>); use sweep.out")


def _flatten(d: Any, where: str, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"n_embd": v}}`` and ``{"model.n_embd": v}`` -> ``{"model.n_embd": v}``."""
    if not isinstance(d, dict):
        raise MathlensError(f"{where} must be a table, got {type(d).__name__}")
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, where, key + "."))
        else:
            if key in out:
                raise MathlensError(f"{where}: key {key!r} is given twice")
            out[key] = v
    return out


def _check_scalar(key: str, v: Any, where: str) -> None:
    if not isinstance(v, (bool, int, float, str)):
        raise MathlensError(f"{where}: {key} = {v!r} is invalid (a number, string or boolean)")


def _check_values(key: str, values: Any) -> list:
    where = "sweep.grid"
    if not isinstance(values, list):
        raise MathlensError(f"{where}: {key} = {values!r} is invalid (a list of values, e.g. [32, 64])")
    if not values:
        raise MathlensError(f"{where}: {key} is an empty list (give at least one value)")
    for v in values:
        _check_scalar(key, v, where)
    if len({repr(v) for v in values}) != len(values):
        raise MathlensError(f"{where}: {key} = {values!r} repeats a value")
    return list(values)


def sweep_from_dict(data: dict[str, Any], source: str = "sweep") -> SweepSpec:
    """A SweepSpec from a parsed sweep file (the base sections + ``[sweep]``)."""
    if not isinstance(data, dict):
        raise MathlensError(f"{source}: expected a table of settings")
    data = dict(data)
    table = data.pop("sweep", None)
    if table is None:
        raise MathlensError(f"{source}: no [sweep] table (a sweep file is a run config plus [sweep])")
    if not isinstance(table, dict):
        raise MathlensError(f"{source}: [sweep] must be a table")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise MathlensError(f"{source}: unknown section {unknown[0]!r} (allowed: {', '.join(SECTIONS)}, sweep)")
    allowed = {f.name for f in dataclasses.fields(SweepSpec)} - {"base", "source"}
    bad = sorted(set(table) - allowed)
    if bad:
        raise MathlensError(f"{source}: unknown key 'sweep.{bad[0]}' (allowed: {', '.join(sorted(allowed))})")
    if "name" not in table:
        raise MathlensError(f"{source}: sweep.name is missing (the sweep directory is <out>/<name>)")
    spec = SweepSpec(base=data, source=source, **table)
    from mathlens.train.config import TrainConfig

    where = f"{source} (base config)"
    try:
        TrainConfig.from_dict(spec.base_config(), where=where)
    except MathlensError as e:
        raise MathlensError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
    return spec


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a sweep TOML file (missing / malformed file, bad keys or values -> MathlensError)."""
    from mathlens.config import load_toml

    return sweep_from_dict(load_toml(path), source=str(Path(path)))
