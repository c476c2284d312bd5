"""Several training processes through torch.distributed (what ``accelerate launch`` / ``torchrun`` start).

The launchers set ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (and the rendezvous address); with
``WORLD_SIZE > 1`` :func:`setup` joins the process group (NCCL on GPUs, gloo on CPU) and the loop wraps its
module in ``DistributedDataParallel``, which averages gradients across processes in the backward of the
last micro-batch of each step. DDP is used directly rather than through ``accelerate.Accelerator``: the
loop already owns precision, accumulation and the optimizer, so the Accelerator would only add a second
place that decides them. ``accelerate launch --multi_gpu --num_processes 2 script.py`` works the same (it
starts torchrun, which sets that environment), on CPUs too; accelerate's ``--cpu`` flag runs one process.

Example:
    >>> d = setup()           # doctest: +SKIP  (one process: world_size 1, nothing initialised)
    >>> d.world_size, d.is_main
    (1, True)
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    """Where this process stands: rank, number of processes, its device; ``owns_group`` when it joined here."""

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None  # None: leave the model where it is (single process)
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes logs, checkpoints and the output."""
        return self.rank == 0


def setup() -> Dist:
    """Join the process group when launched with ``WORLD_SIZE > 1``; a plain :class:`Dist` otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    owns = not dist.is_initialized()
    if owns:
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device, owns_group=owns)


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


def mean(values: list[float], d: Dist) -> list[float]:
    """Element-wise mean of ``values`` over all processes (for logging; identity for one process)."""
    if d.world_size <= 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device if _nccl() else None)
    dist.all_reduce(t)
    return (t / d.world_size).tolist()


def barrier(d: Dist) -> None:
    if d.world_size > 1:
        dist.barrier()


def broadcast_flag(flag: bool, d: Dist) -> bool:
    """Rank 0's ``flag`` on every process (so all of them stop together when rank 0 must)."""
    if d.world_size <= 1:
        return flag
    t = torch.tensor([int(flag)], device=d.device if _nccl() else None)
    dist.broadcast(t, src=0)
    return bool(t.item())


def teardown(d: Dist) -> None:
    """Leave the process group if :func:`setup` joined it."""
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _nccl() -> bool:
    return dist.is_initialized() and dist.get_backend() == "nccl"
