"""Scoped interventions on neurons: zero, mean, clamp or scale some channels of one site, and what that changes.

An intervention is one :func:`actlab.capture` hook that rewrites chosen channels of a site's tensor, so it
exists only inside its ``with`` block (removed in ``finally``, also when the forward raises). The modes are a
registry (:data:`MODES`): a new mode is one :func:`register_mode` call with a small function, never a branch.

=========  ==========================================  ===============
mode       the chosen channels become                  needs
=========  ==========================================  ===============
``zero``   0                                           -
``mean``   their mean activation (``means``)           ``means``
``clamp``  a fixed value                               ``value``
``scale``  ``value`` times themselves                  ``value``
=========  ==========================================  ===============

Example:
    >>> with intervene(model, "layers.3.mlp.down_in", [17, 42], mode="zero"):  # doctest: +SKIP
    ...     logits = model(ids).logits
    >>> eff = ablation_effect(model, windows, "layers.3.mlp.down_in", [17])     # doctest: +SKIP
    >>> eff.delta_loss                                                          # doctest: +SKIP
    0.0123
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from actlab.activations.hooks import capture
from actlab.activations.sites import Site, SiteError, resolve_sites
from actlab.models.adapters import get_adapter, linear_weight
from actlab.models.scoring import lm_logits, model_device
from actlab.models.wrappers import unwrap
from actlab.progress import progress_bar

__all__ = ["MODES", "AblationEffect", "InterventionError", "Mode", "ablation_effect", "check_windows", "intervene",
           "register_mode", "resolve_one_site", "rewrite_effect", "site_means", "site_width"]


class InterventionError(ValueError):
    """An intervention cannot be made as asked (bad neuron index, unknown mode, missing value or means)."""


#: ``apply(selected, value, means) -> replacement``: ``selected`` is ``x[..., neurons]``; value and means are
#: tensors broadcastable to it (``[n_neurons]`` or a scalar), or None when the mode needs neither.
ModeFn = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class Mode:
    """One way of rewriting channels.

    Attributes:
        name: what callers pass as ``mode=``.
        apply: the rewrite (see :data:`ModeFn`).
        needs: ``"value"``, ``"means"`` or None: which argument the mode reads.
        doc: one line for help texts.
    """

    name: str
    apply: ModeFn
    needs: str | None = None
    doc: str = ""


MODES: dict[str, Mode] = {}


def register_mode(mode: Mode) -> Mode:
    """Add an intervention mode to :data:`MODES` (a name taken raises ValueError)."""
    if mode.name in MODES or mode.needs not in (None, "value", "means"):
        raise ValueError(f"cannot register intervention mode {mode.name!r} (needs={mode.needs!r})")
    MODES[mode.name] = mode
    return mode


for _mode in (
    Mode("zero", lambda x, v, m: torch.zeros_like(x), doc="set to 0"),
    Mode("mean", lambda x, v, m: m.expand_as(x), "means", doc="set to the mean activation (means=)"),
    Mode("clamp", lambda x, v, m: v.expand_as(x), "value", doc="set to a fixed value (value=)"),
    Mode("scale", lambda x, v, m: x * v, "value", doc="multiply by value (value=)"),
):
    register_mode(_mode)


def resolve_one_site(model: nn.Module, site: str | Site) -> Site:
    """The one canonical site ``site`` names (a full name such as ``layers.3.mlp.down_in``).

    Raises:
        SiteError: the name matches no site, or several (a bare kind or a glob).
    """
    if isinstance(site, Site):
        return site
    found = resolve_sites(model, site)
    if len(found) != 1:
        raise SiteError(f"{site!r} names {len(found)} sites; name one, e.g. {next(iter(found))!r}")
    return next(iter(found.values()))


def site_width(model: nn.Module, site: Site) -> int | None:
    """Channels of ``site``'s tensor from the weights (no forward); None where the shapes do not tell."""
    root = unwrap(model)[0]
    try:
        if site.direction == "input":
            return int(linear_weight(root.get_submodule(site.module_paths[0])).shape[1])
        if site.kind == "resid_out":
            return int(root.get_input_embeddings().weight.shape[1])
        if site.kind == "mlp.act_out":  # what the down projection reads
            ad = get_adapter(model)
            return int(linear_weight(root.get_submodule(f"{ad.layers}.{site.layer}.{ad.down}")).shape[1])
    except (AttributeError, IndexError, NotImplementedError):
        return None
    return None


def _index(neurons: int | Sequence[int] | torch.Tensor, width: int | None, site: Site) -> torch.Tensor:
    idx = torch.as_tensor(neurons)
    idx = idx.reshape(1) if idx.dim() == 0 else idx  # one neuron given as a number
    if idx.numel() == 0 or idx.dim() != 1 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise InterventionError(f"neurons must be a non-empty list of integer indices of {site.name}, got {neurons!r}")
    idx = idx.long()
    bad = [int(i) for i in idx if i < 0 or (width is not None and i >= width)]
    if bad:
        span = f"0..{width - 1}" if width is not None else "non-negative"
        raise InterventionError(f"neuron indices {bad[:5]} are outside {site.name} ({span}); choose indices within it")
    return idx


def _operand(name: str, given: Any, n: int, mode: Mode) -> torch.Tensor | None:
    if mode.needs != name:
        return None
    if given is None:
        hint = "site_means(model, windows, site, neurons)" if name == "means" else "a number"
        raise InterventionError(f"mode {mode.name!r} needs {name}= ({hint})")
    t = torch.as_tensor(given, dtype=torch.float32).reshape(-1)
    if t.numel() not in (1, n):
        raise InterventionError(f"{name} must be one number or one per neuron ({n}), got {t.numel()} values")
    return t


@contextmanager
def intervene(
    model: nn.Module,
    site: str | Site,
    neurons: int | Sequence[int] | torch.Tensor,
    mode: str = "zero",
    value: float | Sequence[float] | torch.Tensor | None = None,
    means: Sequence[float] | torch.Tensor | None = None,
) -> Iterator[Site]:
    """Rewrite ``neurons`` of one site on every forward inside the ``with`` block.

    Args:
        site: one full site name, e.g. ``layers.3.mlp.down_in``.
        neurons: channel indices of that site.
        mode: a key of :data:`MODES` (zero, mean, clamp, scale).
        value: the clamp value or scale factor (one number, or one per neuron).
        means: per-neuron means for ``mode="mean"`` (see :func:`site_means`).

    Yields:
        the resolved :class:`Site`.

    Raises:
        SiteError: unknown site, or a pattern naming several.
        InterventionError: unknown mode, bad neuron index, missing or mis-sized value/means.

    Example:
        >>> with intervene(model, "layers.0.mlp.act_out", [3], mode="scale", value=2.0):  # doctest: +SKIP
        ...     model(ids)
    """
    s, fn = _prepare(model, site, neurons, mode, value, means)
    with capture(model, sites={s.name: s}, fn=fn):
        yield s


def _prepare(model: nn.Module, site: str | Site, neurons: Any, mode: str, value: Any, means: Any,
             ) -> tuple[Site, Callable[[Site, torch.Tensor], torch.Tensor]]:
    """Check everything an intervention needs (before any forward) and build its hook function."""
    if mode not in MODES:
        raise InterventionError(f"unknown intervention mode {mode!r}; use one of {', '.join(MODES)}")
    m = MODES[mode]
    s = resolve_one_site(model, site)
    idx = _index(neurons, site_width(model, s), s)
    val, mu = _operand("value", value, idx.numel(), m), _operand("means", means, idx.numel(), m)

    def fn(_site: Site, x: torch.Tensor) -> torch.Tensor:
        if int(idx.max()) >= x.shape[-1]:  # only reachable where site_width could not tell
            raise InterventionError(f"neuron {int(idx.max())} is outside {s.name} (0..{x.shape[-1] - 1})")
        i = idx.to(x.device)
        args = [None if t is None else t.to(device=x.device, dtype=x.dtype) for t in (val, mu)]
        out = x.clone()
        out[..., i] = m.apply(x[..., i], *args).to(x.dtype)  # [..., n_neurons]
        return out

    return s, fn


@torch.no_grad()
def site_means(
    model: nn.Module, windows: torch.Tensor, site: str | Site, neurons: Sequence[int] | None = None,
    batch_size: int = 8,
) -> torch.Tensor:
    """Mean activation of ``neurons`` (all channels if None) of ``site`` over every token of ``windows``.

    Example:
        >>> mu = site_means(model, windows, "layers.3.mlp.down_in", [17])   # doctest: +SKIP
    """
    s = resolve_one_site(model, site)
    idx = None if neurons is None else _index(neurons, site_width(model, s), s)
    total: torch.Tensor | None = None
    count = 0
    device = model_device(model)

    def fn(_site: Site, x: torch.Tensor) -> None:
        nonlocal total, count
        sel = (x if idx is None else x[..., idx.to(x.device)]).reshape(-1, x.shape[-1] if idx is None else idx.numel())
        part = sel.double().sum(0).cpu()
        total = part if total is None else total + part
        count += sel.shape[0]

    with capture(model, sites={s.name: s}, fn=fn):
        for b in range(0, windows.shape[0], batch_size):
            lm_logits(model, windows[b : b + batch_size].to(device=device, dtype=torch.long))
    return (total / max(count, 1)).float()


@dataclass
class AblationEffect:
    """What an intervention changes in next-token prediction over some windows.

    Attributes:
        loss_clean, loss_ablated: mean next-token loss (nats) over every predicted token.
        delta_loss: ``loss_ablated - loss_clean``.
        tokens_most_affected: ``(token id, mean change in log-prob)`` of the vocabulary tokens whose predicted
            log-probability changed most (by absolute value), averaged over every position.
        tokens_suppressed / tokens_promoted: the same for the largest drops / rises.
    """

    site: str
    neurons: list[int]
    mode: str
    loss_clean: float
    loss_ablated: float
    delta_loss: float
    tokens: int
    tokens_most_affected: list[tuple[int, float]] = field(default_factory=list)
    tokens_suppressed: list[tuple[int, float]] = field(default_factory=list)
    tokens_promoted: list[tuple[int, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (token pairs as lists)."""
        d = dict(self.__dict__)
        for key in ("tokens_most_affected", "tokens_suppressed", "tokens_promoted"):
            d[key] = [[int(t), float(v)] for t, v in d[key]]
        return d


def _top(delta: torch.Tensor, k: int, largest: bool, by_abs: bool = False) -> list[tuple[int, float]]:
    k = min(k, delta.numel())
    order = (delta.abs() if by_abs else delta).topk(k, largest=largest).indices
    return [(int(i), float(delta[i])) for i in order]


@torch.no_grad()
def ablation_effect(
    model: nn.Module,
    windows: torch.Tensor,
    site: str | Site,
    neurons: int | Sequence[int] | torch.Tensor,
    mode: str = "zero",
    value: float | Sequence[float] | torch.Tensor | None = None,
    means: Sequence[float] | torch.Tensor | None = None,
    batch_size: int = 8,
    top_tokens: int = 10,
    progress: bool = False,
    clean: CleanPass | None = None,
) -> AblationEffect:
    """Next-token loss with and without an intervention on ``neurons`` of ``site``, and the tokens it moves.

    Both runs see the same windows (``[n_windows, seq_len]`` token ids). ``mode="mean"`` without ``means``
    uses the neurons' mean over these windows (one extra pass). The model's train/eval mode is restored.
    ``clean``: the :func:`clean_pass` of the same windows, shared when many neurons are measured on them.

    Raises:
        SiteError, InterventionError: as :func:`intervene`; InterventionError also for windows that are not
            ``[n, seq_len >= 2]`` integer ids.

    Example:
        >>> eff = ablation_effect(model, windows, "layers.5.mlp.down_in", [123], top_tokens=5)  # doctest: +SKIP
        >>> eff.delta_loss, eff.tokens_suppressed[0]                                               # doctest: +SKIP
        (0.004, (1234, -0.31))
    """
    check_windows(windows)
    s = resolve_one_site(model, site)
    if mode == "mean" and means is None:
        _prepare(model, s, neurons, "zero", None, None)  # a bad index fails before the means pass
        means = site_means(model, windows, s, neurons, batch_size)
    s, fn = _prepare(model, s, neurons, mode, value, means)
    idx = _index(neurons, None, s)
    return rewrite_effect(model, windows, s, fn, [int(i) for i in idx], mode, batch_size, top_tokens, progress, clean)


def check_windows(windows: torch.Tensor) -> None:
    """Raise InterventionError unless ``windows`` are integer token ids ``[n_windows >= 1, seq_len >= 2]``."""
    if windows.dim() != 2 or windows.shape[0] < 1 or windows.shape[1] < 2 or windows.dtype.is_floating_point:
        raise InterventionError(f"windows must be integer token ids [n_windows, seq_len >= 2], got "
                                f"{windows.dtype} {tuple(windows.shape)}")


@dataclass(frozen=True)
class CleanPass:
    """The unmodified model's part of an ablation measurement over some windows, computed once and shared by
    every neuron measured on them (:func:`clean_pass`): summed next-token loss, summed log-probs ``[vocab]``."""

    windows: torch.Tensor
    loss_sum: float
    logprob_sum: torch.Tensor
    n_pos: int


def _window_logprobs(logits: torch.Tensor, batch: torch.Tensor, row: int) -> tuple[float, torch.Tensor]:
    """One window's summed next-token loss and summed log-probs ``[vocab]`` (one window at a time bounds memory)."""
    lp = F.log_softmax(logits[row, :-1].float(), -1)  # [T-1, V]: predicts tokens 1..T-1
    return -float(lp.gather(1, batch[row, 1:, None]).double().sum()), lp.double().sum(0).cpu()


@torch.no_grad()
def clean_pass(model: nn.Module, windows: torch.Tensor, batch_size: int = 8) -> CleanPass:
    """The clean half of :func:`rewrite_effect` over ``windows``, to pass as its ``clean=`` when many rewrites
    are measured on the same windows (it halves the forwards).

    Example:
        >>> clean = clean_pass(model, windows)                                              # doctest: +SKIP
        >>> [ablation_effect(model, windows, site, [i], clean=clean) for i in range(8)]     # doctest: +SKIP
    """
    device = model_device(model)
    was_training = model.training
    model.eval()
    loss, total, n_pos = 0.0, None, 0
    try:
        for b in range(0, windows.shape[0], batch_size):
            batch = windows[b : b + batch_size].to(device=device, dtype=torch.long)
            logits = lm_logits(model, batch)
            for row in range(batch.shape[0]):
                lsum, part = _window_logprobs(logits, batch, row)
                loss, total, n_pos = loss + lsum, part if total is None else total + part, n_pos + batch.shape[1] - 1
    finally:
        model.train(was_training)
    return CleanPass(windows, loss, total, n_pos)


@torch.no_grad()
def rewrite_effect(
    model: nn.Module,
    windows: torch.Tensor,
    site: Site,
    fn: Callable[[Site, torch.Tensor], torch.Tensor],
    neurons: list[int],
    mode: str,
    batch_size: int = 8,
    top_tokens: int = 10,
    progress: bool = False,
    clean: CleanPass | None = None,
) -> AblationEffect:
    """The measurement behind :func:`ablation_effect` for any rewrite ``fn(site, x) -> x'`` of one site's tensor
    (a :func:`actlab.capture` hook): next-token loss with and without it, and the tokens it moves.
    ``neurons`` and ``mode`` only label the result. Callers check ``windows`` (:func:`check_windows`).
    ``clean``: the :func:`clean_pass` of these same windows, reused instead of recomputed.

    Example:
        >>> eff = rewrite_effect(model, windows, site, lambda s, x: x * 0.5, [], "halve")   # doctest: +SKIP
    """
    if clean is not None and (clean.windows.shape != windows.shape or not torch.equal(clean.windows, windows)):
        raise InterventionError("clean= was computed on other windows; pass the clean_pass of these windows")
    clean = clean or clean_pass(model, windows, batch_size)
    device = model_device(model)
    was_training = model.training
    model.eval()
    ablated_loss, total, n_pos = 0.0, None, 0
    try:
        with progress_bar(progress, windows.shape[0], "ablation") as advance:
            for b in range(0, windows.shape[0], batch_size):
                batch = windows[b : b + batch_size].to(device=device, dtype=torch.long)  # [B, T]
                with capture(model, sites={site.name: site}, fn=fn):
                    logits = lm_logits(model, batch)
                for row in range(batch.shape[0]):
                    lsum, part = _window_logprobs(logits, batch, row)
                    ablated_loss, n_pos = ablated_loss + lsum, n_pos + batch.shape[1] - 1
                    total = part if total is None else total + part
                del logits
                advance(batch.shape[0])
    finally:
        model.train(was_training)
    delta = total - clean.logprob_sum  # [vocab] summed log-prob change
    loss = {"clean": clean.loss_sum, "ablated": ablated_loss}
    mean_delta = delta / n_pos
    lc, la = loss["clean"] / n_pos, loss["ablated"] / n_pos
    return AblationEffect(
        site=site.name, neurons=list(neurons), mode=mode, loss_clean=lc, loss_ablated=la, delta_loss=la - lc,
        tokens=n_pos, tokens_most_affected=_top(mean_delta, top_tokens, True, by_abs=True),
        tokens_suppressed=_top(mean_delta, top_tokens, False), tokens_promoted=_top(mean_delta, top_tokens, True),
    )
