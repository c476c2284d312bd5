"""Reusable per-thread work buffers for the statistics' elementwise passes.

Profiling calls ``SiteStats.update`` on every activation of every layer; allocating three fresh
[N, d] temporaries each time costs as much as the arithmetic (page faults on fresh memory), so the
passes write into buffers kept here instead. Buffers are keyed by (slot, dtype, device), grow to the
largest request and live per thread; ``release()`` frees them. Nothing is allocated at import.

Slots in use: 0 = |x| in ``SiteStats.update`` and ``MassiveTracker.update``; 1, 2 = temporaries of ``Moments.from_batch`` and
``LogHistogram.add`` (which run one after the other).

Example:
    >>> import torch
    >>> buf = get(1, (4, 3), torch.float32, torch.device("cpu"))
    >>> buf.shape, get(1, (2, 2), torch.float32, torch.device("cpu")).data_ptr() == buf.data_ptr()
    (torch.Size([4, 3]), True)
    >>> release()
"""

from __future__ import annotations

import math
import threading

import torch

_local = threading.local()


def get(
    slot: int, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A contiguous tensor of ``shape`` with undefined contents, reused across calls for this slot."""
    pool: dict = _local.__dict__.setdefault("pool", {})
    key = (slot, dtype, device)
    n = math.prod(shape)
    buf = pool.get(key)
    if buf is None or buf.numel() < n:
        # a normal tensor: usable in place both inside and outside torch.inference_mode
        with torch.inference_mode(False):
            buf = pool[key] = torch.empty(n, dtype=dtype, device=device)
    return buf[:n].view(shape)


def release() -> None:
    """Free this thread's buffers (e.g. after profiling)."""
    _local.__dict__.pop("pool", None)
