"""Scoped hooks on canonical sites: read or replace activation tensors.

Hooks exist only inside :func:`capture`; they are removed in ``finally`` so nothing stays
attached by accident, even when the forward pass raises. :func:`attach` is the mechanism under it,
for the one other owner: an applied sparsity plan (``actlab.apply_``) keeps its masking hooks until
``actlab.remove_``.

Example:
    >>> import actlab
    >>> model, tok = actlab.load_model("random:tiny-llama")          # doctest: +SKIP
    >>> def halve(site, x):
    ...     return x * 0.5                                            # replace the tensor
    >>> with actlab.capture(model, sites="mlp.down_in", fn=halve):  # doctest: +SKIP
    ...     model(ids)
    >>> with actlab.capture(model, sites="layers.0.*") as cap:      # doctest: +SKIP
    ...     model(ids)
    >>> cap.tensors["layers.0.mlp.down_in"].shape                     # doctest: +SKIP
    torch.Size([1, 8, 64])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from actlab.activations.sites import Site, resolve_sites
from actlab.models.adapters import Adapter
from actlab.models.wrappers import unwrap

#: ``fn(site, x)``: return a tensor to replace ``x`` (same shape), or ``None`` to only read it.
SiteFn = Callable[[Site, torch.Tensor], "torch.Tensor | None"]


@dataclass
class Capture:
    """What :func:`capture` yields: the hooked sites and, without ``fn``, the last tensor of each."""

    sites: dict[str, Site]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


class _InputSiteHook:
    """Pre-hooks on every consumer of one input site, calling ``fn`` once per forward.

    q, k and v (or gate and up) receive the same tensor object one after another. ``fn`` runs
    at the first consumer; the others get the same replacement when they see that same object,
    so a mask applied at ``attn.qkv_in`` reaches all three projections and statistics count
    each token once.
    """

    def __init__(self, site: Site, fn: SiteFn) -> None:
        self.site, self.fn = site, fn
        self._seen: torch.Tensor | None = None
        self._out: torch.Tensor | None = None

    def first(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        x, rebuild = _split_input(args, kwargs)
        out = self.fn(self.site, x)
        # Keep references only while the other consumers of this forward may still come.
        self._seen, self._out = (x, out) if len(self.site.module_paths) > 1 else (None, None)
        return None if out is None else rebuild(out)

    def follower(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        x, rebuild = _split_input(args, kwargs)
        if x is not self._seen or self._out is None:
            return None
        return rebuild(self._out)

    def clear(self) -> None:
        self._seen = self._out = None


def _split_input(args: tuple, kwargs: dict) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    if args:
        return args[0], lambda new: ((new, *args[1:]), kwargs)
    key = next(iter(kwargs))
    return kwargs[key], lambda new: (args, {**kwargs, key: new})


def _output_hook(site: Site, fn: SiteFn) -> Callable:
    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        x = output[0] if isinstance(output, tuple) else output
        new = fn(site, x)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


class SiteHooks:
    """Hooks that call ``fn`` on some sites of a model, until :meth:`remove` (what :func:`attach` returns)."""

    def __init__(self) -> None:
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.input_hooks: list[_InputSiteHook] = []

    def remove(self) -> None:
        """Take every hook off again (idempotent)."""
        for handle in self.handles:
            handle.remove()
        for h in self.input_hooks:
            h.clear()
        self.handles, self.input_hooks = [], []


def attach(model: nn.Module, sites: dict[str, Site], fn: SiteFn) -> SiteHooks:
    """Hook ``fn`` on resolved ``sites`` of ``model`` until the returned hooks are removed.

    The mechanism under :func:`capture` (which removes them when its block ends) and under the
    masking path of ``actlab.apply_`` (whose owner removes them in ``actlab.remove_``). Prefer
    :func:`capture` wherever the hooks can be scoped to a block: every ``attach`` needs an owner.
    Module paths are those of the model inside any wrapper (see :func:`actlab.models.wrappers.unwrap`).

    Example:
        >>> hooks = attach(model, resolve_sites(model, "mlp.down_in"), lambda s, x: x * 0.5)  # doctest: +SKIP
        >>> hooks.remove()                                                                  # doctest: +SKIP
    """
    root, _ = unwrap(model)
    hooks = SiteHooks()
    try:
        for site in sites.values():
            modules = [root.get_submodule(p) for p in site.module_paths]
            if site.direction == "output":
                hooks.handles.append(modules[0].register_forward_hook(_output_hook(site, fn)))
                continue
            h = _InputSiteHook(site, fn)
            hooks.input_hooks.append(h)
            hooks.handles.append(modules[0].register_forward_pre_hook(h.first, with_kwargs=True))
            for m in modules[1:]:
                hooks.handles.append(m.register_forward_pre_hook(h.follower, with_kwargs=True))
    except BaseException:
        hooks.remove()
        raise
    return hooks


@contextmanager
def capture(
    model: nn.Module,
    sites: str | Iterable[str] | dict[str, Site] | None = None,
    fn: SiteFn | None = None,
    adapter: Adapter | dict | None = None,
) -> Iterator[Capture]:
    """Hook ``sites`` of ``model`` for the duration of the ``with`` block.

    Args:
        model: a model in the adapter table (or with ``adapter`` given), possibly inside
            ``torch.compile`` / DDP / PEFT wrappers.
        sites: glob pattern(s) over canonical names, already-resolved sites (from
            :func:`~actlab.activations.sites.resolve_sites`, or :func:`~actlab.activations.sites.module_sites`
            for any module of any network), or ``None`` for all canonical sites.
        fn: called as ``fn(site, x)`` on every forward; return a tensor to replace ``x`` or
            ``None`` to leave it. Without ``fn`` the last tensor of each site is stored
            (detached) in ``Capture.tensors``: handy for small inputs, not for profiling.
        adapter: override the architecture table.

    Yields:
        :class:`Capture` with the resolved sites (and tensors when ``fn`` is ``None``).
    """
    if isinstance(sites, dict):
        resolved = sites
    elif sites is None:
        resolved = resolve_sites(model, adapter=adapter)
    else:
        resolved = resolve_sites(model, sites, adapter=adapter)  # opt-in kinds resolve only when named
    cap = Capture(sites=resolved)
    if fn is None:

        def fn(site: Site, x: torch.Tensor) -> None:
            cap.tensors[site.name] = x.detach()

    hooks = attach(model, resolved, fn)
    try:
        yield cap
    finally:
        hooks.remove()
