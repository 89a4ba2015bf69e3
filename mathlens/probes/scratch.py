"""Reusable CPU buffers for temporaries that never leave a function (the attention statistics' scores, sorted
rows, concatenated q/k and the weights :func:`~mathlens.probes.attention.model_attention` computes and drops).

On the CPU, glibc gives a large freed buffer back to the system, and the next call that allocates it again pays
one page fault per 4 KiB page it touches. On this project's 2-core VM that was 1,500–3,500 faults per call of the
attention statistics at the CPU preset, 1.5–3 ms against a 12 ms forward (measured in
``benchmarks/RESULTS.md``, ninth session). A caller takes such a temporary from here instead: one buffer per
(name, dtype) and thread, grown when too small, kept between calls. At most :data:`LIMIT` bytes are kept per
thread; a request beyond that gets a fresh tensor. Other devices get a fresh tensor (CUDA's caching allocator
already reuses memory).

A buffer is valid until the next :func:`buffer` call with the same name in the same thread: take each name once
per computation, and never return a buffer to a user.
"""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

LIMIT = 64 * 2**20  # bytes kept per thread
_local = threading.local()


def _buffers() -> dict:
    if not hasattr(_local, "buffers"):
        _local.buffers = {}
    return _local.buffers


def buffer(name: str, shape, dtype: torch.dtype, device) -> Tensor:
    """An uninitialised tensor of ``shape``; on the CPU a view of this thread's buffer ``(name, dtype)``."""
    shape = tuple(int(s) for s in shape)
    device = torch.device(device)
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    bufs, key, n = _buffers(), (name, dtype), math.prod(shape)
    b = bufs.get(key)
    if b is None or b.numel() < n:
        kept = sum(t.numel() * t.element_size() for k, t in bufs.items() if k != key)
        if kept + n * dtype.itemsize > LIMIT:
            return torch.empty(shape, dtype=dtype)
        b = bufs[key] = torch.empty(n, dtype=dtype)
    return b[:n].view(shape)


def clear() -> None:
    """Free this thread's buffers."""
    _buffers().clear()


def kept_bytes() -> int:
    """Bytes this thread keeps."""
    return sum(t.numel() * t.element_size() for t in _buffers().values())
