"""Profile a model's activations: streaming statistics at every canonical site.

``profile_model`` runs the model over token windows with one read-only hook per site, feeding
each tensor to that site's mergeable :class:`~actlab.activations.stats.SiteStats` and the
residual stream to the massive-activation tracker. Raw activations are never kept.

Example:
    >>> import actlab
    >>> model, tok = actlab.load_model("random:tiny-llama")
    >>> ids = torch.randint(3, 200, (4, 32))
    >>> prof = profile_model(model, ids, progress=False)
    >>> prof.to_dict()["sites"]["layers.0.mlp.down_in"]["density"]["0"]
    1.0
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from actlab.activations.hooks import capture
from actlab.activations.massive import MassiveConfig, MassiveTracker
from actlab.activations.sites import Site, resolve_sites
from actlab.activations.stats import SiteStats, StatsConfig
from actlab.distributed import Dist, all_gather_objects, batch_shard, is_multi, shard_windows
from actlab.models.adapters import linear_weight
from actlab.progress import progress_bar

FORMAT = "actlab.profile/1"


@dataclass
class Profile:
    """The statistics of one profiling run plus what is needed to read them."""

    sites: dict[str, Site]
    stats: dict[str, SiteStats]
    massive: MassiveTracker
    config: StatsConfig
    meta: dict[str, Any] = field(default_factory=dict)

    def merge(self, other: Profile) -> Profile:
        """Combine two shards (e.g. two processes over disjoint windows) into one profile."""
        stats = {k: self.stats[k].merge(other.stats[k]) for k in self.stats}
        meta = dict(self.meta, tokens=self.meta.get("tokens", 0) + other.meta.get("tokens", 0))
        return Profile(self.sites, stats, self.massive.merge(other.massive), self.config, meta)

    def to_dict(self, top_massive: int = 100, neuron_eps: float = 0.01) -> dict[str, Any]:
        """The JSON document written as ``profile.json`` (keys documented in the README).

        ``neuron_eps`` is the |x| above which a neuron counts as active for the hot/cold/dead
        summary: the largest of ``config.channel_eps`` not above it (SiLU/GELU neurons are
        almost never exactly zero, so ε = 0 would call every neuron hot).
        """
        eps = max((e for e in self.config.channel_eps if e <= neuron_eps), default=0.0)
        sites, neurons = {}, {}
        for name, site in self.sites.items():
            st = self.stats.get(name)
            if st is None:
                continue
            summary = st.summary()
            summary["histogram"].pop("edges", None)  # identical for every site: stored once below
            sites[name] = {"layer": site.layer, "kind": site.kind, **summary}
            if site.kind == "mlp.down_in":
                neurons[name] = st.neuron_summary(eps, frequency_sorted=True)
        massive = self.massive.summary(limit=top_massive)
        return {
            "format": FORMAT,
            **self.meta,
            "num_layers": 1 + max(s.layer for s in self.sites.values()),
            "stats_config": self.config.to_dict(),
            "histogram_edges": next(iter(self.stats.values())).histogram_edges(),
            "sites": sites,
            "neurons": neurons,
            "massive_config": self.massive.config.to_dict(),
            "massive_activations": massive["records"],
            "massive_counts": massive["counts"],
        }


def _down_weights(model: nn.Module, sites: dict[str, Site]) -> dict[str, torch.Tensor]:
    """W_down ([out, d_ff]) for every ``mlp.down_in`` site: CETT needs it."""
    return {
        name: linear_weight(model.get_submodule(site.feeds[0])).detach()
        for name, site in sites.items()
        if site.kind == "mlp.down_in"
    }


def profile_model(
    model: nn.Module,
    windows: torch.Tensor,
    sites: str | Iterable[str] | None = None,
    config: StatsConfig | None = None,
    massive: MassiveConfig | None = None,
    batch_size: int = 8,
    progress: bool = True,
    tokenizer: Any = None,
    dist: Dist | None = None,
) -> Profile:
    """Run ``model`` over ``windows`` ([n, seq_len] token ids) collecting statistics at ``sites``.

    Args:
        model: a model in the adapter table, in eval mode.
        windows: token ids, one row per window.
        sites: glob pattern(s) over site names (default: every site).
        config: statistics settings (ε grid, histogram edges, sampling of per-token metrics).
        massive: massive-activation thresholds (default: |x| ≥ 100 and ≥ 1000× the median).
        batch_size: windows per forward pass.
        progress: show a progress bar (rich, on stderr).
        tokenizer: used only to label massive activations with their token text.
        dist: several processes (:func:`actlab.distributed.setup` under torchrun): every rank passes the
            same ``windows``, runs its own share of the batches, and gets the profile of all of them. Counts
            and histograms equal one process's exactly, moments to float rounding.

    Returns:
        A :class:`Profile`; ``.to_dict()`` is the ``profile.json`` document.

    Example (two processes, ``torchrun --nproc_per_node 2 script.py``):
        >>> d = actlab.distributed.setup()                       # doctest: +SKIP
        >>> prof = profile_model(model, windows, dist=d)         # doctest: +SKIP  (same on every rank)
    """
    config = config or StatsConfig()
    resolved = resolve_sites(model, sites)
    downs = _down_weights(model, resolved)
    stats: dict[str, SiteStats] = {}
    tracker = MassiveTracker(massive or MassiveConfig())
    state: dict[str, Any] = {"ids": None}

    def observe(site: Site, x: torch.Tensor) -> None:
        x = x.detach()
        st = stats.get(site.name)
        if st is None:
            st = stats[site.name] = SiteStats(x.shape[-1], config, down_weight=downs.get(site.name))
        st.update(x)
        if site.kind == "resid_out":
            tracker.update(x, layer=site.layer, token_ids=state["ids"])

    # Every site lives inside the backbone, so its head (a 49k-token LM head is a seventh of SmolLM2's
    # forward) would compute logits nobody reads; hooks fire the same when the backbone is called alone.
    body = getattr(model, "base_model", model)
    n = windows.shape[0]
    start = time.perf_counter()
    own = len(shard_windows(n, batch_size, dist))  # this rank's windows (all of them in one process)
    with progress_bar(progress, own * windows.shape[1], "profiling", unit="tokens", transient=False) as advance, torch.inference_mode():
        with capture(model, sites=resolved, fn=observe):
            for i in batch_shard(range(0, n, batch_size), dist):
                batch = windows[i : i + batch_size]
                state["ids"] = batch
                body(input_ids=batch, use_cache=False)
                advance(batch.numel())
    if is_multi(dist):
        stats, tracker = _merge_ranks(resolved, stats, tracker, downs, dist)
    seconds = time.perf_counter() - start
    if tokenizer is not None:
        tracker.label_tokens(tokenizer)
    meta = {"tokens": int(windows.numel()), "seq_len": int(windows.shape[1]),
            "timing": {"seconds": seconds, "tokens_per_s": windows.numel() / max(seconds, 1e-9)}}
    return Profile(resolved, stats, tracker, config, meta)


def _merge_ranks(
    sites: dict[str, Site], stats: dict[str, SiteStats], tracker: MassiveTracker,
    downs: dict[str, torch.Tensor], dist: Dist,
) -> tuple[dict[str, SiteStats], MassiveTracker]:
    """Every rank's statistics merged in rank order (the order of their batches), on every rank."""
    # state dicts, not the objects: a SiteStats holds W_down by reference for CETT, which must not travel
    mine = ({k: v.state_dict() for k, v in stats.items()}, tracker.state_dict())
    parts = all_gather_objects(mine, dist)
    merged: dict[str, SiteStats] = {}
    for name in sites:  # a rank with no batch has no entry for a site
        for states, _ in parts:
            if name in states:
                st = SiteStats.from_state_dict(states[name], down_weight=downs.get(name))
                merged[name] = st if name not in merged else merged[name].merge(st)
    out = MassiveTracker.from_state_dict(parts[0][1])
    for _, t in parts[1:]:
        out = out.merge(MassiveTracker.from_state_dict(t))
    return merged, out
