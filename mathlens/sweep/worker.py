"""One sweep point in its own process: ``python -m mathlens.sweep.worker POINT_JSON --threads K [--parent PID]``
(or :func:`forked_main`, forked from a server that has imported torch once).

Trains the point's config into its run directory, resuming from its latest checkpoint when there is one.
The process dies with its parent (the sweep driver, or a Ray worker): on Linux through
``PR_SET_PDEATHSIG``, elsewhere through a watcher thread, so a killed sweep leaves no orphan holding a
run lock. Exit codes: 0 done, 2 user error (message on stderr), 1 crash.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from mathlens.train.rundir import pid_alive


def die_with_parent(parent: int, driver: int | None = None) -> None:
    """Exit when process ``parent`` is gone (or the sweep ``driver``, when the parent is a fork server)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch():
        while True:
            if os.getppid() != parent or (driver is not None and not pid_alive(driver)):
                os._exit(137)
            time.sleep(0.5)

    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(137)
    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mathlens.sweep.worker")
    ap.add_argument("point", help="point.json of the point (its config names the run directory)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--parent", type=int, default=None, help="exit when this pid is gone")
    ap.add_argument("--driver", type=int, default=None, help="exit when this pid (the sweep) is gone")
    args = ap.parse_args(argv)
    if args.parent:
        die_with_parent(args.parent, args.driver)
    import torch

    from mathlens.errors import MathlensError
    from mathlens.train.checkpoint import CKPT_DIR
    from mathlens.train.config import TrainConfig
    from mathlens.train.loop import train

    torch.set_num_threads(max(1, args.threads))
    try:
        point = json.loads(Path(args.point).read_text(encoding="utf-8"))
        config = TrainConfig.from_dict(point["config"], where=f"point {point['id']}")
        resume = (Path(config.run.out_dir) / CKPT_DIR / "index.json").exists()
        print(f"point {point['id']}: {'resuming' if resume else 'starting'} (pid {os.getpid()}, "
              f"{torch.get_num_threads()} threads)", file=sys.stderr, flush=True)
        result = train(config, resume=resume, quiet=True)
    except MathlensError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"done: {result.steps} steps, final val loss {result.final_val_loss:.4f}, {result.wall_time:.1f} s",
          file=sys.stderr, flush=True)
    return 0


def forked_main(point_json: str, threads: int, log_path: str, driver: int) -> None:
    """Entry of a point forked from the sweep's fork server (torch already imported there): stdout and
    stderr go to ``log_path``; the process dies with the sweep ``driver`` (pid) or the fork server."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is not None:  # our copy would keep the server alive after the sweep dies
        os.close(alive)
        server._forkserver_alive_fd = None
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.exit(main([point_json, "--threads", str(threads), "--parent", str(os.getppid()), "--driver", str(driver)]))


if __name__ == "__main__":
    sys.exit(main())
