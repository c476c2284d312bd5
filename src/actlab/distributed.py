"""Several processes through torch.distributed (what ``torchrun`` / ``accelerate launch`` start), for every verb.

The launchers set ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (and the rendezvous address); with
``WORLD_SIZE > 1`` :func:`setup` joins the process group (NCCL on GPUs, gloo on CPU). ``accelerate launch
--multi_gpu --num_processes 2 -m actlab.cli.main ...`` works the same (it starts torchrun, which sets that
environment), on CPUs too.

The verbs that read token windows (``profile_model``, ``collect`` under ``prepare``/``calibrate``,
``per_window_nll`` under ``perplexity``/``evaluate_plan``/``search_quality``, ``record_neurons``) take a
``dist=`` argument. With it every rank is handed the *same* full windows and runs the model on its own
:func:`batch_shard`: whole batches of the single-process batching, contiguous and in rank order. So each
batch is exactly the batch one process would have run (the per-batch parts of the statistics, the
massive-activation median and the per-update token samples, come out the same), and concatenating the ranks'
pieces in rank order is the single-process order (the calibration row sample, per-window NLLs). The
mergeable state is then all-gathered, so every rank returns the whole-data result (SPMD, like DDP): a later
step such as a plan's quality search runs identically everywhere with no further exchange.

Why an explicit ``dist=`` and not "shard whenever a process group exists": a collective that only some ranks
call hangs, and existing code calls these verbs on rank 0 alone inside a process group (the training loop
evaluates perplexity on rank 0). ``dist=None`` is exactly the single-process behaviour.

Example:
    >>> d = Dist()               # what setup() returns in one process: nothing initialised
    >>> d.world_size, d.is_main
    (1, True)
    >>> list(batch_shard(list(range(0, 10, 4)), Dist()))   # one process: every batch
    [0, 4, 8]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
K = TypeVar("K")


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
    """Join the process group when launched with ``WORLD_SIZE > 1``; a plain :class:`Dist` otherwise.

    Example:
        >>> d = setup()                                   # doctest: +SKIP
        >>> prof = profile_model(model, windows, dist=d)  # doctest: +SKIP
        >>> teardown(d)                                   # doctest: +SKIP
    """
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


def teardown(d: Dist) -> None:
    """Leave the process group if :func:`setup` joined it (a group the caller made stays).

    Example:
        >>> teardown(Dist())   # one process: nothing to leave
    """
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def is_multi(d: Dist | None) -> bool:
    """True when ``d`` spans several processes (``None``: one process).

    Example:
        >>> is_multi(None), is_multi(Dist(rank=0, world_size=2))
        (False, True)
    """
    return d is not None and d.world_size > 1


def barrier(d: Dist | None) -> None:
    """Wait for every process (nothing for one).

    Example:
        >>> barrier(None)
    """
    if is_multi(d):
        dist.barrier()


def mean(values: list[float], d: Dist) -> list[float]:
    """Element-wise mean of ``values`` over all processes (for logging; identity for one process).

    Example:
        >>> mean([1.0, 2.0], Dist())
        [1.0, 2.0]
    """
    if not is_multi(d):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return (t / d.world_size).tolist()


def broadcast_flag(flag: bool, d: Dist) -> bool:
    """Rank 0's ``flag`` on every process (so all of them stop together when rank 0 must).

    Example:
        >>> broadcast_flag(True, Dist())
        True
    """
    if not is_multi(d):
        return flag
    t = torch.tensor([int(flag)], device=_comm_device())
    dist.broadcast(t, src=0)
    return bool(t.item())


def all_ok(ok: bool, d: Dist | None) -> bool:
    """True on every process when ``ok`` is true on all of them (so one failing rank stops every rank).

    Example:
        >>> all_ok(True, None)
        True
    """
    if not is_multi(d):
        return ok
    t = torch.tensor([0 if ok else 1], device=_comm_device())
    dist.all_reduce(t)
    return int(t.item()) == 0


# -- sharding ---------------------------------------------------------------------------------------------


def batch_shard(starts: Sequence[T], d: Dist | None) -> Sequence[T]:
    """This rank's contiguous share of ``starts`` (the batches of a single-process run), in order.

    Rank ``r`` of ``w`` gets items ``[r*n//w, (r+1)*n//w)``: whole batches, so every batch is the one a
    single process runs; contiguous, so the ranks' results concatenated in rank order are in global order.
    A rank may get no batch (fewer batches than ranks); it still takes part in the collectives.

    Example:
        >>> batch_shard([0, 8, 16, 24, 32], Dist(rank=1, world_size=2))
        [16, 24, 32]
    """
    if not is_multi(d):
        return starts
    n = len(starts)
    return starts[d.rank * n // d.world_size : (d.rank + 1) * n // d.world_size]


def shard_windows(n: int, batch_size: int, d: Dist | None) -> range:
    """The windows (of ``n``, in batches of ``batch_size``) that this rank's :func:`batch_shard` covers.

    Example:
        >>> shard_windows(7, 2, Dist(rank=1, world_size=2))
        range(4, 7)
    """
    mine = batch_shard(range(0, n, batch_size), d)
    return range(mine[0], min(mine[-1] + batch_size, n)) if len(mine) else range(0)


# -- collectives ------------------------------------------------------------------------------------------


def all_gather_objects(obj: T, d: Dist | None) -> list[T]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (pickled; tensors travel on the CPU).

    For the small mergeable states (``SiteStats``, ``MassiveTracker``, records). ``[obj]`` for one process.

    Example:
        >>> all_gather_objects({"n": 3}, None)
        [{'n': 3}]
    """
    if not is_multi(d):
        return [obj]
    out: list[Any] = [None] * d.world_size
    # NCCL would move pickled CUDA tensors to whatever device unpickles them first; CPU keeps it simple
    dist.all_gather_object(out, to_device(obj, torch.device("cpu")))
    return out


def split_map(keys: Sequence[K], fn: Callable[[K], T], d: Dist | None) -> dict[K, T]:
    """``{k: fn(k) for k in keys}`` on every rank, each rank computing every ``world_size``-th key.

    For independent pieces of work that follow a gathered sample (one quantile table per group, one greedy
    search per layer): ``fn`` must give the same result on any rank, and its results are pickled, so keep
    them small. Strided, not contiguous, so that keys of similar cost spread evenly.

    Example:
        >>> split_map([1, 2, 3], lambda k: k * k, None)
        {1: 1, 2: 4, 3: 9}
    """
    if not is_multi(d):
        return {k: fn(k) for k in keys}
    mine = {k: fn(k) for i, k in enumerate(keys) if i % d.world_size == d.rank}
    merged = {k: v for part in all_gather_objects(mine, d) for k, v in part.items()}
    return {k: merged[k] for k in keys}


def broadcast_object(obj: T, d: Dist | None, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (tensors come back on this rank's device, CPU without one).

    Example:
        >>> broadcast_object({"calls": [1, 2]}, None)
        {'calls': [1, 2]}
    """
    if not is_multi(d):
        return obj
    box = [to_device(obj, torch.device("cpu")) if d.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return to_device(box[0], d.device) if d.device is not None and d.device.type != "cpu" else box[0]


def cat_ranks(t: torch.Tensor, d: Dist | None) -> torch.Tensor:
    """Every rank's ``t`` concatenated along dim 0 in rank order (lengths may differ), on every rank.

    ``t`` keeps its dtype and the trailing shape (the same on every rank); the result is on ``t``'s device.

    Example:
        >>> cat_ranks(torch.arange(3), None)
        tensor([0, 1, 2])
    """
    if not is_multi(d):
        return t
    dev = _comm_device() or torch.device("cpu")
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(d.world_size)]
    dist.all_gather(sizes, n)
    lengths = [int(s.item()) for s in sizes]
    top = max(lengths)
    pad = torch.zeros((top, *t.shape[1:]), dtype=t.dtype, device=dev)
    pad[: t.shape[0]] = t.to(dev)
    parts = [torch.empty_like(pad) for _ in range(d.world_size)]
    dist.all_gather(parts, pad)  # gloo and NCCL need equal shapes: padded to the longest, trimmed below
    return torch.cat([p[:k] for p, k in zip(parts, lengths, strict=True)]).to(t.device)


def sum_ranks(t: torch.Tensor, d: Dist | None) -> torch.Tensor:
    """The element-wise sum of every rank's ``t`` (same shape everywhere), on every rank, ``t``'s dtype.

    Example:
        >>> sum_ranks(torch.tensor([1, 2]), None)
        tensor([1, 2])
    """
    if not is_multi(d):
        return t
    dev = _comm_device() or torch.device("cpu")
    s = t.detach().to(dev).clone()
    dist.all_reduce(s)
    return s.to(t.device)


def to_device(obj: Any, device: torch.device | None) -> Any:
    """``obj`` with every tensor inside tuples, lists and dicts moved to ``device`` (others as they are).

    Example:
        >>> to_device({"x": (torch.zeros(1), None)}, torch.device("cpu"))
        {'x': (tensor([0.]), None)}
    """
    if device is None:
        return obj
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def _comm_device() -> torch.device | None:
    """Where collective tensors must live: the current GPU under NCCL, anywhere (CPU) under gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None
