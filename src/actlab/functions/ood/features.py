"""Features for OOD scores, read at a site through actlab's scoped hooks (:func:`actlab.capture`).

* A vision-style classifier (any ``nn.Module`` ending in a Linear): the penultimate features are the input
  of its final Linear, which is the *head* that ReAct, ASH and SCALE run the shaped features through.
  Any other module's input or output can be read too (:func:`module_features`), without a head.
* A language model: one vector per sequence from a canonical site (default: the last layer's
  ``resid_out``), mean-pooled over the non-pad tokens or taken at the last one (:data:`POOLS`). There is
  no head in the classifier sense: Mahalanobis and the feature norms score these (see ``actlab.functions.ood``).

Modules are addressed by :func:`~actlab.activations.sites.module_sites` (sites named by module path),
hooked by the same :func:`~actlab.activations.hooks.capture` as the canonical sites.

Example:
    >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> f = classifier_features(net, torch.randn(5, 8))
    >>> f.head_path, tuple(f.features.shape), tuple(f.logits.shape)
    ('2', (5, 16), (5, 3))
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from actlab.activations.hooks import capture
from actlab.activations.sites import Site, SiteError, module_sites, resolve_sites
from actlab.functions.ood.errors import OODError
from actlab.models.wrappers import unwrap
from actlab.progress import progress_bar

__all__ = ["POOLS", "ClassifierFeatures", "classifier_features", "find_head", "lm_features", "module_features",
           "pool_sequence"]


@dataclass
class ClassifierFeatures:
    """What :func:`classifier_features` returns.

    Attributes:
        features: the head's inputs, ``[N, ...]`` (float32, CPU).
        logits: the head's outputs on them, ``[N, classes]``.
        head: the final Linear (shaped features go through it to give logits).
        head_path: its module path.
    """

    features: torch.Tensor
    logits: torch.Tensor
    head: nn.Module
    head_path: str


def find_head(model: nn.Module) -> str:
    """The module path of the last ``nn.Linear`` registered in ``model``: a classifier's head.

    Raises:
        OODError: the model has no Linear (pass ``head=`` with the path of the layer that gives logits).
    """
    try:
        linears = module_sites(model, nn.Linear)
    except SiteError as e:
        raise OODError(f"{e}; pass head='<module path>' naming the layer that gives the logits") from e
    return list(linears)[-1]


def _module_site(model: nn.Module, path: str, direction: str) -> Site:
    if direction not in ("input", "output"):
        raise OODError(f"direction must be 'input' or 'output', got {direction!r}")
    try:
        if not path:
            raise AttributeError("the empty path is the model itself")
        unwrap(model)[0].get_submodule(path)
    except AttributeError as e:
        raise OODError(f"module {path!r} not found in {type(model).__name__}; pass a path from "
                       "model.named_modules()") from e
    # escaped: the path is a name, not a glob
    return module_sites(model, nn.Module, patterns=glob.escape(path), direction=direction)[path]


def _batches(inputs: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    if batch_size < 1:
        raise OODError(f"batch_size must be >= 1, got {batch_size}")
    return list(torch.split(inputs, batch_size))


@torch.inference_mode()
def module_features(
    model: nn.Module,
    inputs: torch.Tensor,
    module: str,
    direction: str = "input",
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """The tensor entering (``direction="input"``) or leaving ``module`` on ``model(inputs)``, batched.

    Args:
        model: any module called as ``model(x)``.
        inputs: ``[N, ...]``, moved to the model's device batch by batch.
        module: module path, e.g. ``"net.4"`` (see ``model.named_modules()``).
        direction: ``"input"`` (first argument) or ``"output"``.
        batch_size: rows per forward.

    Returns:
        ``[N, ...]`` float32 on the CPU.
    """
    site = _module_site(model, module, direction)
    device = next(model.parameters()).device
    parts: list[torch.Tensor] = []

    def grab(_: Site, x: torch.Tensor) -> None:
        parts.append(x.detach().float().cpu())

    batches = _batches(inputs, batch_size)
    with capture(model, sites={site.name: site}, fn=grab), progress_bar(progress, len(batches), "features") as adv:
        for b in batches:
            model(b.to(device))
            adv(1)
    return torch.cat(parts)


def classifier_features(
    model: nn.Module,
    inputs: torch.Tensor,
    head: str | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> ClassifierFeatures:
    """Penultimate features (the head's input) of a classifier, the head and its logits on them.

    Args:
        model: a classifier whose last Linear gives the logits (or name that layer with ``head``).
        inputs: ``[N, ...]`` model inputs.
        head: module path of the head; default :func:`find_head`.

    Raises:
        OODError: no Linear, an unknown path, or a head that is not an ``nn.Linear``.
    """
    path = head or find_head(model)
    _module_site(model, path, "input")  # refuses an unknown path with the fix
    module = unwrap(model)[0].get_submodule(path)
    if not isinstance(module, nn.Linear):
        raise OODError(f"head {path!r} is a {type(module).__name__}, not an nn.Linear; name the classifier's "
                       "final Linear")
    feats = module_features(model, inputs, path, "input", batch_size, progress)
    with torch.inference_mode():
        w = module.weight.detach().float().cpu()
        b = None if module.bias is None else module.bias.detach().float().cpu()
        logits = nn.functional.linear(feats, w, b)
    return ClassifierFeatures(feats, logits, module, path)


def _mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)[..., None]  # [B, T, 1]
    return (x * m).sum(dim=1) / m.sum(dim=1)


def _last(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # the last position holding a real token, whichever side the padding is on
    pos = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask.bool(), pos, -1).max(dim=1).values  # [B]
    return x[torch.arange(x.shape[0], device=x.device), last]


#: sequence pooling by name: ``x [B, T, D]``, ``mask [B, T]`` (1 = real token) -> ``[B, D]``
POOLS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"mean": _mean, "last": _last}


def pool_sequence(x: torch.Tensor, mask: torch.Tensor, pool: str = "mean") -> torch.Tensor:
    """Pool token activations ``[B, T, D]`` over the real tokens of ``mask`` ``[B, T]`` to ``[B, D]``.

    Raises:
        OODError: unknown pool, shapes that disagree, or a row with no real token.

    Example:
        >>> x = torch.arange(6.0).reshape(1, 3, 2)
        >>> pool_sequence(x, torch.tensor([[1, 1, 0]]), "mean")
        tensor([[1., 2.]])
    """
    if pool not in POOLS:
        raise OODError(f"unknown pool {pool!r}; choose one of {', '.join(POOLS)}")
    if x.dim() != 3 or mask.shape != x.shape[:2]:
        raise OODError(f"need activations [B, T, D] and a mask [B, T], got {tuple(x.shape)} and "
                       f"{tuple(mask.shape)}")
    if bool((mask.sum(dim=1) == 0).any()):
        raise OODError("a sequence has no real token (all padding); drop empty texts first")
    return POOLS[pool](x, mask)


def _encode(inputs: Sequence[str] | torch.Tensor, tokenizer: Any, attention_mask: torch.Tensor | None,
            max_length: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Rows of token ids and their masks, unpadded (each batch is padded on the right later)."""
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() != 2:
            raise OODError(f"input_ids must be [N, T], got shape {tuple(inputs.shape)}")
        mask = torch.ones_like(inputs) if attention_mask is None else attention_mask
        if mask.shape != inputs.shape:
            raise OODError(f"attention_mask {tuple(mask.shape)} does not match input_ids {tuple(inputs.shape)}")
        return list(inputs), list(mask)
    if tokenizer is None:
        raise OODError("texts need a tokenizer: pass tokenizer= (the one load_model returned)")
    if isinstance(inputs, str):
        raise OODError("pass a list of texts, not one string")
    ids = [torch.tensor(tokenizer(t, truncation=True, max_length=max_length)["input_ids"], dtype=torch.long)
           for t in inputs]
    empty = [i for i, r in enumerate(ids) if r.numel() == 0]
    if empty:
        raise OODError(f"texts {empty[:5]} have no tokens; drop empty texts first")
    return ids, [torch.ones_like(r) for r in ids]


def _pad_right(rows: list[torch.Tensor]) -> torch.Tensor:
    out = torch.zeros(len(rows), max(r.numel() for r in rows), dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r
    return out


def _one_site(model: nn.Module, site: str | None) -> Site:
    from actlab.interp.records_context import one_site

    if site is None:  # the last layer's residual stream
        return list(resolve_sites(model, "resid_out").values())[-1]
    return one_site(model, site)


@torch.inference_mode()
def lm_features(
    model: nn.Module,
    inputs: Sequence[str] | torch.Tensor,
    tokenizer: Any = None,
    site: str | None = None,
    pool: str = "mean",
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    progress: bool = False,
) -> torch.Tensor:
    """One feature vector per sequence: a site's activations pooled over each sequence's real tokens.

    Args:
        model: a causal LM from :func:`actlab.load_model`.
        inputs: texts (with ``tokenizer``) or token ids ``[N, T]`` (with an optional ``attention_mask``,
            1 = real token, on either side).
        site: one canonical site, e.g. ``"layers.5.resid_out"``; default the last layer's ``resid_out``.
        pool: ``"mean"`` over the real tokens or ``"last"`` real token (:data:`POOLS`).
        batch_size: sequences per forward; each batch is padded on the right and masked, so a causal
            model's features of a sequence do not depend on what it is batched with.
        max_length: texts are truncated to this many tokens.

    Returns:
        ``[N, d]`` float32 on the CPU.

    Raises:
        OODError: bad inputs or pool. SiteError: a site that names no site or several.

    Example:
        >>> feats = lm_features(model, ["a text", "another"], tok, site="layers.1.resid_out")  # doctest: +SKIP
    """
    if pool not in POOLS:
        raise OODError(f"unknown pool {pool!r}; choose one of {', '.join(POOLS)}")
    s = _one_site(model, site)
    ids, masks = _encode(inputs, tokenizer, attention_mask, max_length)
    if not ids:
        raise OODError("no sequences to take features of")
    if batch_size < 1:
        raise OODError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    body = getattr(model, "base_model", model)  # the LM head's logits are not needed
    seen: dict[str, torch.Tensor] = {}

    def grab(_: Site, x: torch.Tensor) -> None:
        seen["x"] = x.detach()

    out: list[torch.Tensor] = []
    starts = range(0, len(ids), batch_size)
    with capture(model, sites={s.name: s}, fn=grab), progress_bar(progress, len(starts), "features") as adv:
        for i in starts:
            rows = [r[m.bool()] for r, m in zip(ids[i : i + batch_size], masks[i : i + batch_size], strict=True)]
            if any(r.numel() == 0 for r in rows):
                raise OODError(f"a sequence in rows {i}..{i + len(rows) - 1} has no real token; drop it first")
            batch, mask = _pad_right(rows), _pad_right([torch.ones_like(r) for r in rows])  # [B, T]
            body(input_ids=batch.to(device), attention_mask=mask.to(device), use_cache=False)
            out.append(pool_sequence(seen.pop("x").float(), mask.to(device), pool).cpu())
            adv(1)
    return torch.cat(out)
