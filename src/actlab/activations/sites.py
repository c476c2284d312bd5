"""Canonical activation sites of a model, resolved through the adapter table.

A *site* is one activation tensor with the same name on every architecture:

=====================  ==========================================  =========
site                   tensor                                      hooked as
=====================  ==========================================  =========
``attn.qkv_in``        input of q/k/v (after the attention norm)   input
``attn.o_in``          input of the attention output projection    input
``mlp.gate_up_in``     input of gate/up (``mlp.in`` if ungated)    input
``mlp.act_in``         input of the activation (gate pre-act.)     input, opt-in
``mlp.act_out``        output of the MLP activation function       output
``mlp.down_in``        input of the MLP down projection            input
``resid_out``          output of the whole layer (residual stream) output
=====================  ==========================================  =========

The kinds are a registry (:data:`KINDS`, :class:`SiteKind`): a new hook point is one entry saying how
to find its modules and consumers from the adapter. Opt-in kinds are resolved only when named.

Example:
    >>> sites = resolve_sites(model)                        # doctest: +SKIP
    >>> sites["layers.0.mlp.down_in"].feeds                 # doctest: +SKIP
    ('model.layers.0.mlp.down_proj',)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

from actlab.models.adapters import Adapter, get_adapter
from actlab.models.wrappers import unwrap


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
            ``mlp.act_in``, ``mlp.act_out`` of a gated MLP and ``resid_out``).
    """

    name: str
    layer: int
    kind: str
    direction: str
    module_paths: tuple[str, ...]
    feeds: tuple[str, ...]


@dataclass(frozen=True)
class SiteKind:
    """One kind of site, found in every layer through the adapter: a new hook point is one entry.

    Attributes:
        name: the kind, e.g. ``mlp.down_in``; a site is named ``layers.{i}.{name}``.
        direction: ``"input"`` (the tensor entering ``modules[0]``) or ``"output"`` (leaving it).
        modules: adapter -> module paths relative to the layer (``""`` is the layer itself).
        feeds: adapter -> paths of the linears consuming the tensor, relative to the layer.
        applies: whether the architecture has this kind (``mlp.in`` only without a gate).
        default: part of "all sites" (``resolve_sites(model)``, ``capture(model)``, profiles). An opt-in
            kind is resolved only by a pattern that names it, e.g. ``"mlp.act_in"`` or
            ``"layers.2.mlp.act_in"``, so adding one changes no existing output.
        doc: what the tensor is.
    """

    name: str
    direction: str
    modules: Callable[[Adapter], tuple[str, ...]]
    feeds: Callable[[Adapter], tuple[str, ...]] = lambda ad: ()
    applies: Callable[[Adapter], bool] = lambda ad: True
    default: bool = True
    doc: str = ""


#: The registry, in the order the kinds occur inside a layer. Extend it with :func:`register_site_kind`.
KINDS: dict[str, SiteKind] = {}


def register_site_kind(kind: SiteKind, after: str | None = None) -> SiteKind:
    """Add a site kind (at the end, or right after the kind ``after``).

    Raises:
        ValueError: the name is taken, ``after`` is unknown, or the direction is neither input nor output.

    Example:
        >>> register_site_kind(SiteKind("attn.q_out", "output", lambda ad: (ad.qkv[0],)))  # doctest: +SKIP
    """
    if kind.name in KINDS or kind.direction not in ("input", "output") or (after and after not in KINDS):
        raise ValueError(f"cannot register site kind {kind.name!r} ({kind.direction}) after {after!r}")
    items = list(KINDS.items())
    at = len(items) if after is None else [n for n, _ in items].index(after) + 1
    items.insert(at, (kind.name, kind))
    KINDS.clear()
    KINDS.update(items)
    return kind


for _kind in (
    SiteKind("attn.qkv_in", "input", lambda ad: ad.qkv, lambda ad: ad.qkv,
             doc="input of q/k/v (after the attention norm)"),
    SiteKind("attn.o_in", "input", lambda ad: (ad.o,), lambda ad: (ad.o,),
             doc="input of the attention output projection"),
    SiteKind("mlp.gate_up_in", "input", lambda ad: ad.mlp_in, lambda ad: ad.mlp_in, lambda ad: ad.gated,
             doc="input of gate and up"),
    SiteKind("mlp.in", "input", lambda ad: ad.mlp_in, lambda ad: ad.mlp_in, lambda ad: not ad.gated,
             doc="input of the up projection of an ungated MLP"),
    SiteKind("mlp.act_in", "input", lambda ad: (ad.act,), default=False,
             doc="input of the MLP activation: the gate pre-activation (up projection's output if ungated)"),
    SiteKind("mlp.act_out", "output", lambda ad: (ad.act,), lambda ad: () if ad.gated else (ad.down,),
             doc="output of the MLP activation function"),
    SiteKind("mlp.down_in", "input", lambda ad: (ad.down,), lambda ad: (ad.down,),
             doc="input of the MLP down projection"),
    SiteKind("resid_out", "output", lambda ad: ("",), doc="output of the whole layer (residual stream)"),
):
    register_site_kind(_kind)

#: the built-in kind names (the registry :data:`KINDS` is the source of truth)
SITE_KINDS: tuple[str, ...] = tuple(KINDS)


def _layer_sites(i: int, prefix: str, ad: Adapter) -> list[Site]:
    def full(paths: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(f"{prefix}.{p}" if p else prefix for p in paths)

    return [
        Site(f"layers.{i}.{k.name}", i, k.name, k.direction, full(k.modules(ad)), full(k.feeds(ad)))
        for k in KINDS.values()
        if k.applies(ad)
    ]


def resolve_sites(
    model: nn.Module,
    patterns: str | Iterable[str] | None = None,
    adapter: Adapter | dict | None = None,
) -> dict[str, Site]:
    """All canonical sites of ``model`` (or those matching glob ``patterns``), in model order.

    Without ``patterns``: the sites of the default kinds. With them: any kind, an opt-in kind
    (:attr:`SiteKind.default` false, e.g. ``mlp.act_in``) only where a pattern names it.
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
    model = unwrap(model)[0]  # paths are those of the HF model inside torch.compile/DDP/PEFT
    try:
        layers = model.get_submodule(ad.layers)
    except AttributeError as e:
        raise SiteError(f"adapter layer list {ad.layers!r} not found in {type(model).__name__}: {e}") from e
    every: dict[str, Site] = {}
    for i in range(len(layers)):
        for site in _layer_sites(i, f"{ad.layers}.{i}", ad):
            every[site.name] = site
    chosen = _default(every) if patterns is None else select_sites(every, patterns)
    for site in {**_default(every), **chosen}.values():
        for path in site.module_paths + site.feeds:
            try:
                model.get_submodule(path)
            except AttributeError as e:
                raise SiteError(
                    f"site {site.name}: module {path!r} not found in {type(model).__name__}; "
                    "the adapter table entry does not match this model"
                ) from e
    return chosen


def _default(sites: dict[str, Site]) -> dict[str, Site]:
    return {n: s for n, s in sites.items() if s.kind not in KINDS or KINDS[s.kind].default}


def select_sites(sites: dict[str, Site], patterns: str | Iterable[str]) -> dict[str, Site]:
    """The sites whose names match any glob in ``patterns`` (a bare kind matches every layer).

    A site of an opt-in kind matches only a pattern that contains its kind's name (``"mlp.act_in"``,
    ``"layers.0.mlp.act_in"``), so that ``"layers.0.*"`` keeps meaning what it meant before the kind existed.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    globs = [p if p.startswith("layers.") or p.startswith("*") else f"layers.*.{p}" for p in patterns]

    def match(name: str, site: Site) -> bool:
        opt_in = site.kind in KINDS and not KINDS[site.kind].default
        return any(fnmatch.fnmatchcase(name, g) and (not opt_in or site.kind in g) for g in globs)

    chosen = {n: s for n, s in sites.items() if match(n, s)}
    if not chosen:
        kinds = sorted({s.kind for s in sites.values()})
        raise SiteError(f"no site matches {list(patterns)}; site kinds of this model: {', '.join(kinds)}")
    return chosen


#: the kind of a site made by :func:`module_sites` (not in :data:`KINDS`: it is named by module path)
MODULE_KIND = "module"


def module_sites(
    model: nn.Module,
    types: type[nn.Module] | tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d),
    patterns: str | Iterable[str] | None = None,
    direction: str = "output",
) -> dict[str, Site]:
    """Sites on arbitrary modules of any ``nn.Module``, named by their module path, in registration order.

    The canonical sites need an architecture in the adapter table; a plain network (an MLP, a CNN) has
    none. These sites address its modules directly (every Linear/Conv output, every ReLU...) so the same
    :func:`actlab.capture` hooks them. ``Site.layer`` is the position among the chosen modules; ``feeds``
    is empty. Paths are those of the model inside any wrapper, as for canonical sites.

    Args:
        model: any module.
        types: module classes to take (subclasses included).
        patterns: glob(s) over module paths, e.g. ``"model.layers.*"``; ``None`` for every module of ``types``.
        direction: ``"output"`` (what the module returns) or ``"input"`` (its first argument).

    Raises:
        SiteError: no module matches, or ``direction`` is neither input nor output.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> list(module_sites(net))
        ['0', '2']
        >>> list(module_sites(net, nn.ReLU))
        ['1']
    """
    if direction not in ("input", "output"):
        raise SiteError(f"direction must be 'input' or 'output', got {direction!r}")
    globs = [patterns] if isinstance(patterns, str) else None if patterns is None else list(patterns)
    root = unwrap(model)[0]
    paths = [
        p for p, m in root.named_modules()
        if p and isinstance(m, types) and (globs is None or any(fnmatch.fnmatchcase(p, g) for g in globs))
    ]
    if not paths:
        names = types.__name__ if isinstance(types, type) else ", ".join(t.__name__ for t in types)
        where = "" if globs is None else f" under {globs}"
        raise SiteError(f"{type(root).__name__} has no module of type {names}{where}")
    return {p: Site(p, i, MODULE_KIND, direction, (p,), ()) for i, p in enumerate(paths)}
