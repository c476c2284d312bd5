"""Per-layer activation density of a model, measured exactly as ``actlab profile`` measures it.

Density at a threshold ε is the fraction of elements with ``|x| > ε``, read from the same streaming
statistics (:class:`~actlab.activations.stats.SiteStats`) over the same ε grid
(:attr:`StatsConfig.eps_grid`, snapped to histogram edges) that ``profile.json`` reports, so a training
log and a profile of the trained model agree. ``zero_frac`` is the exact-zero fraction (``1 - density``
at ε = 0): what ReLU-family activations make and SiLU almost never does.

Example:
    >>> import actlab, torch
    >>> model, _ = actlab.load_model("random:tiny-llama")
    >>> d = layer_density(model, torch.randint(3, 200, (2, 16)))
    >>> len(d["zero_frac"]) == len(d["layers"]), "0.01" in d["density"]
    (True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from actlab.activations.sites import SiteError
from actlab.activations.stats import StatsConfig
from actlab.train.errors import TrainError

#: the ε that a single "density" number refers to (the one ``profile``'s summary and table show)
REPORT_EPS = "0.01"


def layer_density(model: nn.Module, windows: torch.Tensor, *, site: str = "mlp.act_out",
                  config: StatsConfig | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Density of site kind ``site`` in every layer over ``windows`` ([n, seq_len] token ids).

    Returns:
        ``{"site", "layers": [i, ...], "thresholds": [ε key, ...], "density": {ε key: [per layer]},
        "zero_frac": [per layer]}``; ε keys are the snapped values as ``profile.json`` spells them
        (``"0"``, ``"0.001"``, ``"0.01"``, ...).

    Raises:
        TrainError: the model has no such site.
    """
    from actlab.models.scoring import model_device
    from actlab.profile import profile_model  # the one profiling pass: same hooks, same statistics

    windows = windows.to(model_device(model))  # the profiling pass feeds them to the model as they are
    try:
        prof = profile_model(model, windows, sites=site, config=config, batch_size=batch_size, progress=False)
    except SiteError as e:
        raise TrainError(f"cannot measure density at site {site!r}: {e}") from e
    return _result(site, prof.sites, prof.stats)


@contextmanager
def density_probe(model: nn.Module, *, site: str = "mlp.act_out",
                  config: StatsConfig | None = None) -> Iterator[Callable[[], dict[str, Any]]]:
    """Measure :func:`layer_density` over whatever forwards run inside the block (e.g. a perplexity pass).

    Saves the extra forward pass :func:`layer_density` makes; the statistics are profile's
    (:class:`SiteStats`, same ε grid), fed through the same scoped hooks. Yields a function that returns
    the result dict.

    Example:
        >>> with density_probe(model) as read:                 # doctest: +SKIP
        ...     ppl = perplexity(model, windows)
        >>> read()["zero_frac"]                                 # doctest: +SKIP
    """
    from actlab.activations.hooks import capture
    from actlab.activations.sites import resolve_sites
    from actlab.activations.stats import SiteStats

    config = config or StatsConfig()
    try:
        sites = resolve_sites(model, site)
    except SiteError as e:
        raise TrainError(f"cannot measure density at site {site!r}: {e}") from e
    stats: dict[str, SiteStats] = {}

    def observe(s: Any, x: torch.Tensor) -> None:
        if s.name not in stats:
            stats[s.name] = SiteStats(x.shape[-1], config)
        stats[s.name].update(x.detach())

    with capture(model, sites=sites, fn=observe):
        yield lambda: _result(site, sites, stats)


def _result(site: str, sites: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    rows = sorted(((s.layer, stats[name].summary()) for name, s in sites.items() if name in stats),
                  key=lambda r: r[0])
    keys = list(rows[0][1]["density"]) if rows else []
    return {
        "site": site,
        "layers": [layer for layer, _ in rows],
        "thresholds": keys,
        "density": {k: [summary["density"][k] for _, summary in rows] for k in keys},
        "zero_frac": [None if summary["density"]["0"] is None else 1.0 - summary["density"]["0"]
                      for _, summary in rows],
    }


def mean_density(d: dict[str, Any], eps: str = REPORT_EPS) -> float | None:
    """Mean over layers of :func:`layer_density`'s density at ``eps`` (None when undefined)."""
    vals = [v for v in d["density"].get(eps, []) if v is not None]
    return sum(vals) / len(vals) if vals else None
