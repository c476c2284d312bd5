"""One dense pass over the calibration windows, keeping what calibration needs in bounded memory.

* per site: ``x`` of a fixed random subset of tokens (rows), enough for exact quantiles of any score
  ``|x_i| * w_i`` and for the output error a mask causes (at most ``max_values`` numbers per site,
  whatever the corpus size);
* per layer (optional): the sum of ``up_i**2`` over *every* token (CHESS's ``RMS(up_i)``);
* per site (optional): the second moment ``sum x^T x`` over *every* token, in float64 (the principal
  components of a rotated mask: the row sample has fewer rows than a wide site has channels, so a basis
  fitted on it would put zero variance in the directions it missed);
* per layer (optional): the decoder layer's own inputs on the first ``block_tokens`` tokens, so the greedy
  allocation can rerun one block at a time without running the model again.

Why rows and not a histogram: thresholds must put calibration sparsity within a fraction of a point of the
target, and per-channel weighted scores (WINA, CHESS, CETT) need the channel of every value.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from actlab.activations.hooks import capture
from actlab.activations.sites import resolve_sites, select_sites
from actlab.distributed import (
    Dist,
    all_gather_objects,
    batch_shard,
    broadcast_object,
    cat_ranks,
    is_multi,
    sum_ranks,
)
from actlab.models.adapters import get_adapter


@dataclass
class BlockInputs:
    """A decoder layer's call arguments for a few calibration batches: ``layer(*args, **kwargs)`` replays it."""

    calls: list[tuple[tuple, dict[str, Any]]] = field(default_factory=list)


@dataclass
class CalibrationSample:
    """What :func:`collect` keeps.

    Attributes:
        rows: site name -> ``x`` of the sampled tokens, ``[rows, width]`` float32 on CPU.
        up_sq_sum: layer -> ``sum over tokens of up_i**2`` ``[d_ff]`` (CHESS), when asked for.
        tokens: calibration tokens seen.
        blocks: layer -> its recorded inputs (greedy allocation), when asked for.
        positions: site name -> position in its window of each row ``[rows]``.
        fisher: linear path -> diagonal output Fisher ``[2, out]`` (position 0, later positions), filled by
            the global allocation on first use so that methods sharing one sample share it too.
        second_moments: site name -> ``sum over tokens of x^T x`` ``[width, width]`` float64, when asked for.
    """

    rows: dict[str, torch.Tensor]
    up_sq_sum: dict[int, torch.Tensor]
    tokens: int
    blocks: dict[int, BlockInputs]
    positions: dict[str, torch.Tensor] = field(default_factory=dict)
    fisher: dict[str, torch.Tensor] = field(default_factory=dict)
    second_moments: dict[str, torch.Tensor] = field(default_factory=dict)


def _row_choice(n_tokens: int, n_rows: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``n_rows`` distinct tokens among ``n_tokens`` (all of them if fewer)."""
    if n_rows >= n_tokens:
        return torch.arange(n_tokens)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_tokens, generator=g)[:n_rows].sort().values


class _RowSampler:
    """The per-site sample both passes keep: rows of tokens chosen by global token index, optional ``x^T x``.

    ``offset`` is the global token index of the current batch's first token; the caller sets it per batch.
    """

    def __init__(self, sites: Any, n_tokens: int, max_values: int, seed: int,
                 moment_sites: tuple[str, ...] | list[str]) -> None:
        self.n_tokens, self.max_values, self.seed, self.moment_sites = n_tokens, max_values, seed, moment_sites
        self.choice: dict[int, torch.Tensor] = {}
        self.rows: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
        self.moments: dict[str, torch.Tensor] = {}
        self.offset = 0

    def __call__(self, site: Any, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1])  # [batch*seq, width]
        width = flat.shape[-1]
        if width not in self.choice:
            self.choice[width] = _row_choice(self.n_tokens, max(64, self.max_values // width), self.seed)
        idx, offset = self.choice[width], self.offset
        local = idx[(idx >= offset) & (idx < offset + flat.shape[0])] - offset
        self.rows[site.name].append(flat[local.to(flat.device)].float().cpu())
        if site.name in self.moment_sites:
            f = flat.float()
            self.moments[site.name] = self.moments.get(site.name, 0) + (f.T @ f).double().cpu()

    def sample(self, up_sums: dict[int, torch.Tensor], blocks: dict[int, BlockInputs], seq_len: int) -> CalibrationSample:
        """The one-process :class:`CalibrationSample` of what was seen."""
        widths = {name: r[0].shape[-1] for name, r in self.rows.items() if r}
        return CalibrationSample(
            rows={s: torch.cat(r) for s, r in self.rows.items()},
            up_sq_sum={i: t.cpu() for i, t in up_sums.items()},
            tokens=self.n_tokens,
            blocks=blocks,
            positions={name: self.choice[w] % seq_len for name, w in widths.items()},
            second_moments=self.moments,
        )


@contextmanager
def _layer_input_recorder(model: nn.Module, n_batches: int, blocks: dict[int, BlockInputs]) -> Iterator[None]:
    """Record each decoder layer's (args, kwargs) on the first ``n_batches`` forwards."""
    layers = model.get_submodule(get_adapter(model).layers)
    handles = []

    def make(i: int):
        blocks[i] = BlockInputs()

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if len(blocks[i].calls) < n_batches:
                args = tuple(a.detach() if torch.is_tensor(a) else a for a in args)
                # the KV cache must not be replayed: each replay would append to it
                kw = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value", "cache")}
                blocks[i].calls.append((args, kw))

        return hook

    try:
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(make(i), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _up_recorder(model: nn.Module, sums: dict[int, torch.Tensor]) -> Iterator[None]:
    """Accumulate ``sum(up_i**2)`` per layer from the up projection's output."""
    ad = get_adapter(model)
    handles = []

    def make(i: int):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            u = out.detach().float().reshape(-1, out.shape[-1])  # [tokens, d_ff]
            sums[i] = sums.get(i, 0) + (u * u).sum(0)

        return hook

    try:
        for site in resolve_sites(model, "mlp.act_out").values():
            prefix = site.module_paths[0][: -len(ad.act) - 1]
            up = model.get_submodule(f"{prefix}.{ad.mlp_in[-1]}")
            handles.append(up.register_forward_hook(make(site.layer)))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def collect(
    model: nn.Module,
    windows: torch.Tensor,
    sites: list[str],
    *,
    max_values: int = 1 << 18,
    up_moments: bool = False,
    moment_sites: tuple[str, ...] | list[str] = (),
    block_tokens: int = 0,
    batch_size: int = 4,
    seed: int = 0,
    progress: Any = None,
    dist: Dist | None = None,
) -> CalibrationSample:
    """Run ``model`` densely over ``windows`` ([n, seq_len] token ids) and keep a bounded sample.

    Args:
        sites: canonical site names to sample ``x`` at.
        max_values: per-site sample size bound (rows = ``max_values // width``, at least 64).
        up_moments: also accumulate ``sum(up**2)`` per layer (CHESS).
        moment_sites: canonical site names (also in ``sites``) whose ``sum x^T x`` to accumulate.
        block_tokens: also record every decoder layer's inputs on the first ``ceil(block_tokens / seq_len)``
            windows (the greedy allocation replays blocks on them).
        progress: optional callable ``progress(done_windows, total_windows)``.
        dist: several processes (:mod:`actlab.distributed`): every rank passes the same ``windows`` and runs
            its share of the batches; the row sample is gathered in global token order (the same rows as one
            process), sums are all-reduced and the recorded block inputs broadcast, so every rank returns
            the whole sample.

    Example:
        >>> sample = collect(model, calib, ["layers.0.mlp.down_in"], max_values=4096)   # doctest: +SKIP
        >>> sample.rows["layers.0.mlp.down_in"].shape                                   # doctest: +SKIP
        torch.Size([64, 1536])
    """
    n, seq_len = windows.shape
    device = next(model.parameters()).device
    resolved = select_sites(resolve_sites(model), sites) if sites else {}
    missing = sorted(set(moment_sites) - set(resolved))
    if missing:
        raise ValueError(f"moment_sites {missing[:3]} are not among the sampled sites")
    grab = _RowSampler(resolved, n * seq_len, max_values, seed, moment_sites)

    up_sums: dict[int, torch.Tensor] = {}
    blocks: dict[int, BlockInputs] = {}
    # the windows whose layer inputs are recorded form their own first batch, so exactly those are replayed
    n_block = min(n, -(-block_tokens // seq_len)) if block_tokens > 0 else 0
    starts = ([0] if n_block else []) + list(range(n_block, n, batch_size))
    mine = batch_shard(range(len(starts)), dist)
    # a rank's tokens are a contiguous run of the global order: ``offset`` starts where its first batch does
    grab.offset = starts[mine[0]] * seq_len if len(mine) else 0
    lo = starts[mine[0]] if len(mine) else 0  # progress counts this rank's windows
    hi = (starts[mine[-1] + 1] if mine[-1] + 1 < len(starts) else n) if len(mine) else 0
    with capture(model, sites=resolved, fn=grab) if resolved else _nothing():
        with _up_recorder(model, up_sums) if up_moments else _nothing():
            # only the rank that runs batch 0 records it (the others would record their own first batch)
            with _layer_input_recorder(model, 1, blocks) if n_block and 0 in mine else _nothing():
                for k in mine:
                    b = starts[k]
                    end = starts[k + 1] if k + 1 < len(starts) else n
                    batch = windows[b:end].to(device)
                    _forward(model, batch)
                    grab.offset += batch.numel()
                    if progress is not None:
                        progress(end - lo, hi - lo)
    if is_multi(dist):
        return _merge_ranks(grab.rows, up_sums, grab.moments, blocks, moment_sites, n, seq_len, max_values, seed,
                            dist)
    return grab.sample(up_sums, blocks, seq_len)


def _merge_ranks(
    rows: dict[str, list[torch.Tensor]], up_sums: dict[int, torch.Tensor], moments: dict[str, torch.Tensor],
    blocks: dict[int, BlockInputs], moment_sites: tuple[str, ...] | list[str], n: int, seq_len: int,
    max_values: int, seed: int, dist: Dist,
) -> CalibrationSample:
    """The sample of all ranks, on every rank: the same collectives in the same (sorted) order everywhere."""
    # A rank with no batch (fewer batches than ranks) saw no tensor: it learns the shapes from the others.
    mine = {"rows": {s: r[0].shape[-1] for s, r in rows.items() if r},
            "up": {i: t.shape[0] for i, t in up_sums.items()}, "blocks": bool(blocks)}
    shapes = all_gather_objects(mine, dist)
    widths = {s: w for part in shapes for s, w in part["rows"].items()}
    ups = {i: w for part in shapes for i, w in part["up"].items()}
    out_rows = {}
    for s in sorted(rows):
        local = torch.cat(rows[s]) if rows[s] else torch.zeros(0, widths.get(s, 0))
        out_rows[s] = cat_ranks(local, dist)  # rank order is global token order: the single-process rows
    up = {i: sum_ranks(up_sums[i].float().cpu() if i in up_sums else torch.zeros(ups[i]), dist)
          for i in sorted(ups)}
    mom = {s: sum_ranks(moments[s] if s in moments else torch.zeros(widths[s], widths[s], dtype=torch.float64),
                        dist) for s in sorted(moment_sites)}
    # the block inputs are recorded on the first batch: broadcast from the rank that ran it
    owner = next((r for r, part in enumerate(shapes) if part["blocks"]), None)
    if owner is not None:
        blocks = broadcast_object(blocks, dist, src=owner)
    positions = {s: _row_choice(n * seq_len, max(64, max_values // w), seed) % seq_len
                 for s, w in widths.items() if s in out_rows}
    return CalibrationSample(rows={s: out_rows[s] for s in rows}, up_sq_sum=up, tokens=n * seq_len,
                             blocks=blocks, positions=positions, second_moments=mom)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _forward(model: nn.Module, ids: torch.Tensor) -> Any:
    """A forward pass without a KV cache (encoders take no ``use_cache``)."""
    if get_adapter(model).encoder:
        return model(ids)
    return model(ids, use_cache=False)
