"""Sweep points as Ray tasks (the optional extra ``mathlens[ray]``).

Each task runs the same worker process as a local sweep (:func:`mathlens.sweep.runner.run_point`) on the
node Ray picks, asking for ``threads`` CPUs (and ``gpus_per_point`` GPUs). The sweep directory must be on a
file system every node sees (the driver writes ``point.json``, the task writes the run directory).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable

from mathlens.errors import MathlensError
from mathlens.sweep.grid import Point
from mathlens.sweep.results import point_record


def import_ray():
    try:
        import ray
    except ImportError:
        raise MathlensError("Ray is not installed: pip install 'mathlens[ray]'") from None
    return ray


#: seconds :func:`check_ray_address` waits for a TCP connection
CONNECT_TIMEOUT = 5.0
_FORMS = "auto, local, host:port or ray://host:port"


def ray_endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` or ``ray://host:port`` address (IPv6 hosts in brackets); None for
    the addresses Ray resolves itself (``auto``, ``local``, another ``scheme://``, ``ray://`` without a port).
    A malformed address -> MathlensError."""
    text = address.strip()
    if text in ("auto", "local"):
        return None
    client = text.startswith("ray://")
    if client:
        text = text[len("ray://"):].rstrip("/")
    elif "://" in text:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or text.endswith("]"):  # no port
        if client and text:
            return None  # ray://host: Ray's client picks the port
        raise MathlensError(f"--ray-address {address!r} is invalid (expected {_FORMS})")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MathlensError(f"--ray-address {address!r} is invalid (expected {_FORMS})")
    return host, int(port)


def check_ray_address(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """MathlensError (one line naming the address) unless a TCP connection to ``address`` opens within
    ``timeout`` seconds; ``ray.init`` would otherwise retry for minutes. Needs no ray import."""
    endpoint = ray_endpoint(address)
    if endpoint is None:
        return
    host, port = endpoint
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise MathlensError(f"cannot reach Ray at {address!r} ({host} port {port}: {why}); start the "
                            f"cluster (ray start --head) or pass another --ray-address") from None


def _task(point: dict, threads: int) -> dict:
    from mathlens.sweep.runner import run_point

    return run_point(point, threads)


def connect_ray(address: str) -> bool:
    """Connect to Ray at ``address`` (``local``: start a Ray instance in this process) unless Ray is already
    initialised; True when this call connected (the caller shuts Ray down). Failure -> MathlensError."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": False}
    try:
        ray.init(address=None if address == "local" else address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise MathlensError(f"cannot connect to Ray at {address!r}: {str(e).splitlines()[0]}") from None
    return True


@contextlib.contextmanager
def ray_session(address: str):
    """``with ray_session(address):`` connected to Ray (:func:`connect_ray`), shut down after if this opened it."""
    started = connect_ray(address)
    try:
        yield
    finally:
        if started:
            import_ray().shutdown()


def run_ray(todo: list[Point], address: str, threads: int, gpus: float, on_done: Callable) -> None:
    """Run ``todo`` as Ray tasks on ``address`` (``local``: a Ray instance in this process, or the one
    already initialised; ``auto`` or ``host:port`` / ``ray://...``: a running cluster); ``on_done(record)``
    as each finishes."""
    ray = import_ray()
    with ray_session(address):
        task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(_task)
        refs = {task.remote(p.to_dict(), threads): p for p in todo}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            p = refs[done[0]]
            try:
                rec = ray.get(done[0])
            except Exception as e:  # noqa: BLE001 - a task that died is a failed point
                rec = point_record(p.to_dict(), "failed", f"Ray task failed: {str(e).splitlines()[0]}")
            on_done(rec)
