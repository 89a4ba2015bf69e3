"""A run directory: its lock, its metrics log and its progress display.

``run_dir/.lock`` holds the pid of the run that owns the folder; a second run on the same folder is
refused while that pid is alive, and a lock left by a dead process (a killed run) is taken over.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from mathlens.errors import MathlensError

LOCK = ".lock"
METRICS = "metrics.jsonl"


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie (exited, not yet reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) still answers kill(pid, 0) but holds nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RunLock:
    """Exclusive ownership of a run directory (``with RunLock(dir): ...``)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK
        self.held = False

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = self.owner()
                if pid is not None and pid_alive(pid):
                    raise MathlensError(
                        f"run directory {self.path.parent} is in use by a live run (pid {pid}); "
                        f"wait for it, or remove {self.path} if that process is not a mathlens run"
                    ) from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)  # stale lock of a dead run: take it over
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.held = True
            return self
        raise MathlensError(f"could not take the lock {self.path} (another run keeps taking it)")

    def owner(self) -> int | None:
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def release(self) -> None:
        if self.held and self.owner() == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class MetricsLog:
    """Append-only JSON lines ``{"step": s, ...}``, flushed per line; :meth:`truncate` drops lines after a step."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def truncate(self, step: int) -> None:
        """Keep only the lines with ``step ≤ step`` (a resumed run replays the rest)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if rec.get("step", 0) <= step:
                kept.append(line)
        from mathlens.io import write_text

        write_text(self.path, "".join(x + "\n" for x in kept))

    def write(self, record: dict[str, Any]) -> None:
        rec = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of ``run_dir/metrics.jsonl``."""
    path = Path(run_dir) / METRICS
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Progress:
    """A rich progress bar (loss, tokens/s, ETA) when ``enabled``; plain eval lines on stderr otherwise."""

    def __init__(self, total: int, start: int, enabled: bool | None, quiet: bool = False):
        if enabled is None:
            enabled = sys.stderr.isatty() and not os.environ.get("CI")
        self.enabled, self.quiet, self.total = enabled and not quiet, quiet, total
        self._bar = None
        self._t0, self._s0 = time.perf_counter(), start
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                                 TextColumn("loss {task.fields[loss]}  {task.fields[tps]} tok/s"),
                                 TimeRemainingColumn(), transient=False)
            self._task = self._bar.add_task("train", total=total, completed=start, loss="-", tps="-")
            self._bar.start()

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=f"{loss:.4f}", tps=f"{tokens_per_s:,.0f}")

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
