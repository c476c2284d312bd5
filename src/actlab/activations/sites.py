"""Canonical activation sites of a model, resolved through the adapter table.

A *site* is one activation tensor with the same name on every architecture:

=====================  ==========================================  =========
site                   tensor                                      hooked as
=====================  ==========================================  =========
``attn.qkv_in``        input of q/k/v (after the attention norm)   input
``attn.o_in``          input of the attention output projection    input
``mlp.gate_up_in``     input of gate/up (``mlp.in`` if ungated)    input
``mlp.act_out``        output of the MLP activation function       output
``mlp.down_in``        input of the MLP down projection            input
``resid_out``          output of the whole layer (residual stream) output
=====================  ==========================================  =========

Example:
    >>> sites = resolve_sites(model)                        # doctest: +SKIP
    >>> sites["layers.0.mlp.down_in"].feeds                 # doctest: +SKIP
    ('model.layers.0.mlp.down_proj',)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from actlab.models.adapters import Adapter, get_adapter

#: site kinds in the order they occur inside a layer
SITE_KINDS: tuple[str, ...] = (
    "attn.qkv_in",
    "attn.o_in",
    "mlp.gate_up_in",
    "mlp.in",
    "mlp.act_out",
    "mlp.down_in",
    "resid_out",
)


class SiteError(ValueError):
    """A site name or pattern that does not match the model."""


@dataclass(frozen=True)
class Site:
    """One canonical activation site.

    Attributes:
        name: full canonical name, e.g. ``layers.3.mlp.down_in``.
        layer: layer index.
        kind: the name without the layer prefix, e.g. ``mlp.down_in``.
        direction: ``"input"`` (the tensor entering ``modules[0]``) or ``"output"`` (leaving it).
        module_paths: module paths (from the root) hooked for this site. For an input site
            read by several linears (q, k, v), all of them; the first is where the tensor is
            observed, the others receive the same (possibly replaced) tensor.
        feeds: module paths of the linear layers that consume this tensor (empty for
            ``mlp.act_out`` of a gated MLP and ``resid_out``).
    """

    name: str
    layer: int
    kind: str
    direction: str
    module_paths: tuple[str, ...]
    feeds: tuple[str, ...]


def _layer_sites(i: int, prefix: str, ad: Adapter) -> list[Site]:
    def full(p: str) -> str:
        return f"{prefix}.{p}"

    qkv = tuple(full(p) for p in ad.qkv)
    mlp_in = tuple(full(p) for p in ad.mlp_in)
    down = (full(ad.down),)
    act_feeds = () if ad.gated else down
    return [
        Site(f"layers.{i}.attn.qkv_in", i, "attn.qkv_in", "input", qkv, qkv),
        Site(f"layers.{i}.attn.o_in", i, "attn.o_in", "input", (full(ad.o),), (full(ad.o),)),
        Site(f"layers.{i}.{ad.mlp_in_site}", i, ad.mlp_in_site, "input", mlp_in, mlp_in),
        Site(f"layers.{i}.mlp.act_out", i, "mlp.act_out", "output", (full(ad.act),), act_feeds),
        Site(f"layers.{i}.mlp.down_in", i, "mlp.down_in", "input", down, down),
        Site(f"layers.{i}.resid_out", i, "resid_out", "output", (prefix,), ()),
    ]


def num_layers(model: nn.Module, adapter: Adapter | dict | None = None) -> int:
    """Number of transformer layers, read from the adapter's layer list."""
    ad = get_adapter(model, adapter)
    return len(model.get_submodule(ad.layers))


def resolve_sites(
    model: nn.Module,
    patterns: str | Iterable[str] | None = None,
    adapter: Adapter | dict | None = None,
) -> dict[str, Site]:
    """All canonical sites of ``model`` (or those matching glob ``patterns``), in model order.

    Every module path is checked against the model, so a wrong adapter fails here with the
    missing path named rather than later inside a hook.

    Args:
        model: a Hugging Face model whose ``config.model_type`` is in the adapter table.
        patterns: glob(s) over site names, e.g. ``"layers.*.mlp.down_in"`` or ``["*.attn.*"]``;
            a bare kind such as ``"mlp.down_in"`` means that kind in every layer.
        adapter: override the table (an :class:`Adapter` or a dict of its fields).

    Raises:
        UnknownArchitectureError: the architecture has no adapter.
        SiteError: a module path is missing, or a pattern matches no site.

    Example:
        >>> sites = resolve_sites(model, "mlp.down_in")     # doctest: +SKIP
        >>> list(sites)[:2]                                 # doctest: +SKIP
        ['layers.0.mlp.down_in', 'layers.1.mlp.down_in']
    """
    ad = get_adapter(model, adapter)
    try:
        layers = model.get_submodule(ad.layers)
    except AttributeError as e:
        raise SiteError(f"adapter layer list {ad.layers!r} not found in {type(model).__name__}: {e}") from e
    sites: dict[str, Site] = {}
    for i in range(len(layers)):
        for site in _layer_sites(i, f"{ad.layers}.{i}", ad):
            sites[site.name] = site
    for site in sites.values():
        for path in site.module_paths + site.feeds:
            try:
                model.get_submodule(path)
            except AttributeError as e:
                raise SiteError(
                    f"site {site.name}: module {path!r} not found in {type(model).__name__}; "
                    "the adapter table entry does not match this model"
                ) from e
    if patterns is None:
        return sites
    return select_sites(sites, patterns)


def select_sites(sites: dict[str, Site], patterns: str | Iterable[str]) -> dict[str, Site]:
    """The sites whose names match any glob in ``patterns`` (a bare kind matches every layer)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    globs = [p if p.startswith("layers.") or p.startswith("*") else f"layers.*.{p}" for p in patterns]
    chosen = {n: s for n, s in sites.items() if any(fnmatch.fnmatchcase(n, g) for g in globs)}
    if not chosen:
        kinds = sorted({s.kind for s in sites.values()})
        raise SiteError(f"no site matches {list(patterns)}; site kinds of this model: {', '.join(kinds)}")
    return chosen
