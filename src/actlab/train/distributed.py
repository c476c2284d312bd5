"""Several training processes through torch.distributed (what ``accelerate launch`` / ``torchrun`` start).

The launchers set ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (and the rendezvous address); with
``WORLD_SIZE > 1`` :func:`setup` joins the process group (NCCL on GPUs, gloo on CPU) and the loop wraps its
module in ``DistributedDataParallel``, which averages gradients across processes in the backward of the
last micro-batch of each step. DDP is used directly rather than through ``accelerate.Accelerator``: the
loop already owns precision, accumulation and the optimizer, so the Accelerator would only add a second
place that decides them. ``accelerate launch --multi_gpu --num_processes 2 script.py`` works the same (it
starts torchrun, which sets that environment), on CPUs too; accelerate's ``--cpu`` flag runs one process.
The process-group helpers (setup, teardown, barrier...) live in :mod:`actlab.distributed`, shared with
profiling, calibration and evaluation; only the DDP wrapping is training's own.

Example:
    >>> d = setup()           # doctest: +SKIP  (one process: world_size 1, nothing initialised)
    >>> d.world_size, d.is_main
    (1, True)
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from torch import nn

# the process-group helpers are shared with profiling, calibration and evaluation; DDP stays here
from actlab.distributed import Dist, barrier, broadcast_flag, mean, setup, teardown

__all__ = ["Dist", "barrier", "broadcast_flag", "mean", "no_sync", "setup", "teardown", "wrap"]


def wrap(module: nn.Module, d: Dist) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` for several processes (rank 0's weights are broadcast)."""
    if d.world_size <= 1:
        return module
    ids = [d.device.index] if d.device is not None and d.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def no_sync(ddp: nn.Module, last: bool) -> AbstractContextManager:
    """Skip the gradient all-reduce on every micro-batch but the last of a step (accumulation)."""
    if last or not isinstance(ddp, nn.parallel.DistributedDataParallel):
        return nullcontext()
    return ddp.no_sync()
