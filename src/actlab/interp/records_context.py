"""Running the model for neuron records: ``record_neurons`` (one streaming pass) and ``context_activations``
(one neuron's activation on every token around a recorded context, what the neuron browser shows).

Records keep a :class:`~actlab.interp.records.Context` per top token (the window it came from and its
position there) and its value; showing the text again means re-running the model on that one window. The
model is causal, so the window is cut right after the last token shown: the activations are the same and
the forward is shorter. Both functions are importable from ``actlab.interp.records`` too.

Example:
    >>> recs = record_neurons(model, windows, "layers.3.mlp.act_out", k=20)                 # doctest: +SKIP
    >>> ctx = recs["layers.3.mlp.act_out"].top(7)[0]                                        # doctest: +SKIP
    >>> ids, acts, center = context_activations(model, windows, "layers.3.mlp.act_out", 7, ctx)  # doctest: +SKIP
    >>> abs(acts[center] - ctx.value) < 1e-4                                               # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from actlab.activations.hooks import capture
from actlab.activations.sites import Site, SiteError, resolve_sites
from actlab.distributed import Dist, all_gather_objects, batch_shard, is_multi, shard_windows
from actlab.interp.records import Context, NeuronRecords, RecordsConfig, RecordsError
from actlab.models.adapters import act_function, get_adapter
from actlab.progress import progress_bar

__all__ = ["context_activations", "one_site", "record_neurons"]

_RELU_LIKE = ("relu", "relu2", "fatrelu")


def _default_freq_eps(model: nn.Module, site: Site, config: RecordsConfig) -> float:
    """0 at the output of a ReLU-like activation (exact zeros), else profile's neuron threshold 0.01."""
    if site.kind in ("mlp.act_out", "mlp.down_in"):
        f = act_function(model, site.layer)
        if f is not None and f.name in _RELU_LIKE and 0.0 in config.channel_eps:
            return 0.0
    return config.freq_eps


def record_neurons(
    model: nn.Module,
    windows: torch.Tensor,
    sites: str | Iterable[str] = "mlp.act_out",
    k: int = 20,
    batch_size: int = 8,
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.99),
    samples_per_quantile: int = 2,
    progress: bool = True,
    window_offset: int = 0,
    config: RecordsConfig | None = None,
    dist: Dist | None = None,
) -> dict[str, NeuronRecords]:
    """Records of every channel at ``sites`` from one pass of ``model`` over ``windows``.

    Args:
        model: a model in the adapter table, in eval mode.
        windows: ``[n_windows, seq_len]`` token ids (``actlab.data.windows.make_windows``).
        sites: glob pattern(s) over site names; a bare kind (``"mlp.act_out"``) means every layer.
        k: top (and bottom) contexts per neuron.
        batch_size: windows per forward pass.
        quantiles, samples_per_quantile: which quantile samples to return (see the module docstring).
        progress: a progress bar on stderr.
        window_offset: added to every window index (shard ``s`` starting at window ``w0`` passes ``w0``),
            so records of shards merge into those of all windows.
        config: every other setting; its ``k``/``quantiles``/``samples_per_quantile`` are replaced by the
            arguments above. ``freq_eps`` becomes 0 for ReLU-like activations.
        dist: several processes (:func:`actlab.distributed.setup` under torchrun): every rank passes the same
            ``windows``, records its share of the batches (window indices stay global) and gets the merged
            records of all of them.

    Returns:
        ``{site name: NeuronRecords}`` in model order.

    Raises:
        SiteError: ``sites`` matches nothing. RecordsError: k <= 0, empty or malformed windows.

    Example:
        >>> recs = record_neurons(model, windows, "layers.*.mlp.act_out", k=20)      # doctest: +SKIP
        >>> recs["layers.3.mlp.act_out"].top(17)[0]                                 # doctest: +SKIP
        Context(value=4.2, window=12, position=87)
    """
    cfg = RecordsConfig(**{**(config or RecordsConfig()).to_dict(), "k": k, "quantiles": quantiles,
                           "samples_per_quantile": samples_per_quantile})
    windows = getattr(windows, "ids", windows)  # a data.windows.Windows works too
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.numel() == 0:
        shape = tuple(windows.shape) if isinstance(windows, torch.Tensor) else type(windows).__name__
        raise RecordsError(f"windows must be a non-empty [n_windows, seq_len] token tensor, got {shape}")
    if batch_size < 1 or window_offset < 0:
        raise RecordsError(f"need batch_size >= 1 and window_offset >= 0 (got {batch_size}, {window_offset})")
    resolved = resolve_sites(model, sites)
    records: dict[str, NeuronRecords] = {}
    state: dict[str, torch.Tensor] = {}

    def observe(site: Site, x: torch.Tensor) -> None:
        r = records.get(site.name)
        if r is None:
            eps = _default_freq_eps(model, site, cfg)
            r = records[site.name] = NeuronRecords(site.name, x.shape[-1], RecordsConfig(**{**cfg.to_dict(), "freq_eps": eps}))
        r.update(x, state["w"], state["p"])

    body = getattr(model, "base_model", model)  # every site is in the backbone: skip the LM head
    device = next(model.parameters()).device
    n, seq = windows.shape
    own = len(shard_windows(n, batch_size, dist))  # this rank's windows (all of them in one process)
    with progress_bar(progress, own * seq, "neuron records", unit="tokens") as advance, torch.inference_mode():
        with capture(model, sites=resolved, fn=observe):
            for i in batch_shard(range(0, n, batch_size), dist):
                batch = windows[i : i + batch_size]
                rows = torch.arange(i, i + batch.shape[0]) + window_offset
                state["w"] = rows[:, None].expand(-1, seq).reshape(-1)  # [B * seq] window of each token
                state["p"] = torch.arange(seq).repeat(batch.shape[0])
                body(input_ids=batch.to(device), use_cache=False)
                advance(batch.numel())
    if is_multi(dist):
        records = _merge_ranks(records, dist)
    return {name: records[name] for name in resolved if name in records}


def _merge_ranks(records: dict[str, NeuronRecords], dist: Dist) -> dict[str, NeuronRecords]:
    """Every rank's records merged in rank order, on every rank (a rank without a batch has none)."""
    parts = all_gather_objects({k: r.state_dict() for k, r in records.items()}, dist)
    out: dict[str, NeuronRecords] = {}
    for part in parts:
        for name, state in part.items():
            r = NeuronRecords.from_state_dict(state)
            out[name] = r if name not in out else out[name].merge(r)
    return out


def one_site(model: nn.Module, site: str) -> Site:
    """The single resolved site named ``site`` (a full name like ``layers.3.mlp.act_out``).

    Raises:
        SiteError: ``site`` matches no site, or more than one (a pattern such as ``mlp.act_out``).
    """
    found = resolve_sites(model, site)
    if len(found) != 1:
        raise SiteError(f"{site!r} names {len(found)} sites; name one, e.g. {next(iter(found))!r}")
    return next(iter(found.values()))


@torch.inference_mode()
def context_activations(
    model: nn.Module,
    windows: torch.Tensor,
    site: str,
    neuron: int,
    ctx: Context,
    before: int = 16,
    after: int = 4,
    window_offset: int = 0,
) -> tuple[list[int], list[float], int]:
    """The activation of ``neuron`` at ``site`` on every token from ``before`` tokens before ``ctx`` to
    ``after`` tokens after it (clipped to the window).

    Args:
        model: the model the records were made with.
        windows: the ``[n_windows, seq_len]`` token ids the records were made from.
        site: one full site name, e.g. ``layers.3.mlp.act_out``.
        neuron: channel index at that site.
        ctx: a recorded context (``records.top(neuron)[j]``).
        before, after: tokens of context either side.
        window_offset: the ``window_offset`` the records were made with (``ctx.window - window_offset`` is
            the row of ``windows``).

    Returns:
        ``(token_ids, acts, center)``: the token ids shown, the neuron's activation on each, and the index
        of ``ctx``'s token in them.

    Raises:
        SiteError: unknown site. RecordsError: neuron, window or position out of range.

    Example:
        >>> ids, acts, c = context_activations(model, windows, "layers.0.mlp.act_out", 3, ctx)  # doctest: +SKIP
    """
    s = one_site(model, site)
    row = ctx.window - window_offset
    if windows.dim() != 2 or not 0 <= row < windows.shape[0]:
        raise RecordsError(
            f"context window {ctx.window} is not a row of windows {tuple(windows.shape)} with window_offset "
            f"{window_offset}; pass the windows (and offset) the records were made from"
        )
    if not 0 <= ctx.position < windows.shape[1]:
        raise RecordsError(f"context position {ctx.position} outside a window of {windows.shape[1]} tokens")
    if before < 0 or after < 0:
        raise RecordsError(f"before and after must be >= 0 (got {before}, {after})")
    lo, hi = max(0, ctx.position - before), min(windows.shape[1], ctx.position + after + 1)
    causal = not get_adapter(model).encoder  # then later tokens change nothing shown: cut them
    ids = windows[row : row + 1, : hi if causal else windows.shape[1]]  # [1, hi]
    seen: dict[str, torch.Tensor] = {}

    def grab(_: Site, x: torch.Tensor) -> None:
        seen["x"] = x.detach()

    body = getattr(model, "base_model", model)  # the LM head's logits are not needed
    with capture(model, sites={s.name: s}, fn=grab):
        body(input_ids=ids.to(next(model.parameters()).device), use_cache=False)
    x = seen["x"].reshape(-1, seen["x"].shape[-1])  # [hi, n]
    if not 0 <= neuron < x.shape[1]:
        n = x.shape[1]
        raise RecordsError(f"neuron {neuron} out of range: site {s.name} has {n} channels (0..{n - 1})")
    return ids[0, lo:hi].tolist(), x[lo:hi, neuron].float().tolist(), ctx.position - lo
