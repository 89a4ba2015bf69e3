"""Atomic file output: results are written to a temporary file and renamed into place, so a killed
run never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it is renamed to ``path`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """``path`` as a Path if a folder can be there: :class:`MathlensError` when it, or the nearest ancestor that
    exists, is not a folder, or is a folder this process cannot write (checked before any work, so a bad ``--out``
    costs nothing and writes nothing). ``what`` names the setting in the message."""
    from mathlens.errors import MathlensError

    path = Path(path)
    probe = path
    while not (probe.exists() or probe.is_symlink()) and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise MathlensError(f"{what} {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise MathlensError(f"{what} {path}: folder {probe} is not writable")
    return path


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike):
    """Yield an empty temporary folder; on success its files are moved into ``path`` (created if needed), on an
    error it is removed: a command that fails half-way leaves nothing at ``path``."""
    path = Path(path)
    stage = Path(tempfile.mkdtemp(prefix=".mathlens-stage-"))
    try:
        yield stage
        for f in sorted(p for p in stage.rglob("*") if p.is_file()):
            dest = path / f.relative_to(stage)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dest) as tmp:
                shutil.copyfile(f, tmp)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def read_json(path: str | os.PathLike, what: str = ""):
    """The JSON value in ``path``; :class:`MathlensError` naming it (after ``what``, e.g. "config file ") when it is
    a folder, unreadable, not UTF-8 or not JSON."""
    from mathlens.errors import MathlensError

    path = Path(path)
    if path.is_dir():
        raise MathlensError(f"{what}{path} is a directory, not a JSON file")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise MathlensError(f"{what}{path} is not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise MathlensError(f"{what}{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise MathlensError(f"{what}{path} is not valid JSON: nested too deeply") from None
    except OSError as e:
        raise MathlensError(f"cannot read {what}{path}: {e.strerror or e}") from None


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(x):
    """json.dumps fallback for NumPy / torch scalars and arrays and dataclasses with to_dict()."""
    if hasattr(x, "to_dict"):
        return x.to_dict()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
