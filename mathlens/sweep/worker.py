"""One sweep point in its own process: ``python -m mathlens.sweep.worker POINT_JSON --threads K [--parent PID]``.

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


def die_with_parent(parent: int) -> None:
    """Exit when process ``parent`` is gone."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch():
        while True:
            if os.getppid() != parent:
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
    args = ap.parse_args(argv)
    if args.parent:
        die_with_parent(args.parent)
    import torch

    from mathlens.errors import MathlensError
    from mathlens.train.config import TrainConfig
    from mathlens.train.loop import train

    torch.set_num_threads(max(1, args.threads))
    try:
        point = json.loads(Path(args.point).read_text(encoding="utf-8"))
        config = TrainConfig.from_dict(point["config"], where=f"point {point['id']}")
        resume = (Path(config.run.out_dir) / "checkpoints" / "index.json").exists()
        print(f"point {point['id']}: {'resuming' if resume else 'starting'} (pid {os.getpid()}, "
              f"{torch.get_num_threads()} threads)", file=sys.stderr, flush=True)
        result = train(config, resume=resume, quiet=True)
    except MathlensError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"done: {result.steps} steps, final val loss {result.final_val_loss:.4f}, {result.wall_time:.1f} s",
          file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
