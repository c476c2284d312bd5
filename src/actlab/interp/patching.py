"""Activation patching: which layer and site carry the information that makes the clean answer win.

Run a clean prompt (``"The Eiffel Tower is in the city of"``, answer ``" Paris"``) and a corrupted one of the
same token length (another subject, answer ``" Rome"``). Then run the corrupted prompt again with one site's
activation replaced by the clean run's (at every position, or at one), and measure the logit difference
``logit[answer] - logit[wrong]`` at the last position. A patch's score is the share of the difference it
restores::

    restored = (ld_patched - ld_corrupt) / (ld_clean - ld_corrupt)     # clean = 1, corrupted = 0

Patches are :func:`actlab.capture` hooks (scoped, removed in ``finally``). Many patches run as one batch of
copies of the corrupted prompt, row ``r`` patched at its own site and position, so a map of every layer ×
kind × position costs a few forwards, not thousands.

Example:
    >>> pm = patch_map(model, clean_ids, corrupt_ids, answer=tok_id(" Paris"), wrong=tok_id(" Rome"))  # doctest: +SKIP
    >>> pm.restored.shape                                                   # doctest: +SKIP
    torch.Size([30, 3])
    >>> draw_patch_map(pm, "runs/patch/map.png")                            # doctest: +SKIP
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actlab.activations.hooks import capture
from actlab.activations.sites import KINDS, Site, SiteError, resolve_sites
from actlab.models.scoring import lm_logits, model_device
from actlab.progress import progress_bar

__all__ = ["DEFAULT_KINDS", "PatchMap", "PatchingError", "draw_patch_map", "patch_effect", "patch_map",
           "single_token"]

#: the site kinds of a default map: the residual stream and the two inputs that write into it
DEFAULT_KINDS = ("resid_out", "mlp.down_in", "attn.o_in")

#: one patch: (site name, position) where position None means every position
Patch = tuple[str, "int | None"]


class PatchingError(ValueError):
    """Prompts or answers that cannot be patched (different lengths, a multi-token answer, no difference)."""


def single_token(tok: Any, text: str, what: str = "answer") -> int:
    """The id of ``text`` if it is exactly one token, else a :class:`PatchingError` naming its pieces.

    Example:
        >>> single_token(tok, " Paris")   # doctest: +SKIP
        7042
    """
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [tok.decode([i]) for i in ids]
        raise PatchingError(f"--{what} {text!r} is {len(ids)} tokens {pieces}, not one: choose a word the tokenizer "
                            "keeps whole (mind the leading space, e.g. ' Paris')")
    return int(ids[0])


def _ids(ids: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(ids)
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 1 or t.numel() == 0 or t.dtype.is_floating_point:
        raise PatchingError(f"{name} must be a non-empty 1-D list of token ids (or [1, T]), got shape {tuple(t.shape)}")
    return t.long()


def _last_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return lm_logits(model, ids.to(model_device(model)))[:, -1].float()  # [B, V]


@dataclass
class PatchMap:
    """How much of the logit difference each patch restores.

    Attributes:
        restored: ``[layers, kinds]`` or, per position, ``[layers, kinds, positions]``; clean = 1, corrupted = 0.
        layers: layer index of each row. kinds: site kind of each column.
        logit_diff_clean, logit_diff_corrupt: ``logit[answer] - logit[wrong]`` at the last position.
        tokens: the clean prompt's tokens as text, when a tokenizer was given (the position axis labels).
    """

    restored: torch.Tensor
    layers: list[int]
    kinds: list[str]
    answer: int
    wrong: int
    logit_diff_clean: float
    logit_diff_corrupt: float
    per_position: bool
    tokens: list[str] = field(default_factory=list)
    corrupt_tokens: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``restored`` as nested lists in the same axis order."""
        return {"restored": self.restored.tolist(), "layers": self.layers, "kinds": self.kinds,
                "answer": self.answer, "wrong": self.wrong, "logit_diff_clean": self.logit_diff_clean,
                "logit_diff_corrupt": self.logit_diff_corrupt, "per_position": self.per_position,
                "tokens": self.tokens, "corrupt_tokens": self.corrupt_tokens,
                "axes": ["layer", "kind", "position"] if self.per_position else ["layer", "kind"]}

    def best(self, k: int = 5, kinds: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The ``k`` patches that restore most (among ``kinds``, default all), as ``{site, position, restored}``.

        Without positions, ``resid_out`` restores 1 at every layer by construction (the patch is the clean
        run's whole state there); pass the other kinds to rank what is informative.
        """
        keep = torch.tensor([kinds is None or k_ in kinds for k_ in self.kinds])
        mask = keep.view(1, -1, *([1] * (self.restored.dim() - 2))).expand_as(self.restored)
        flat = self.restored.masked_fill(~mask, float("nan")).reshape(-1)
        out = []
        ranked = torch.nan_to_num(flat, nan=float("-inf"))  # a kind missing in a layer is NaN: never "best"
        for i in ranked.topk(min(k, int(torch.isfinite(ranked).sum()))).indices.tolist():
            if self.per_position:
                li, rest = divmod(i, len(self.kinds) * self.restored.shape[2])
                ki, pos = divmod(rest, self.restored.shape[2])
            else:
                (li, ki), pos = divmod(i, len(self.kinds)), None
            out.append({"site": f"layers.{self.layers[li]}.{self.kinds[ki]}", "position": pos,
                        "restored": float(flat[i])})
        return out


class _Patcher:
    """The hook function of one batch: row ``r`` of the corrupted copies takes the clean tensor at its patch."""

    def __init__(self, clean: dict[str, torch.Tensor], patches: Sequence[Sequence[Patch]]) -> None:
        self.clean = clean
        self.by_site: dict[str, list[tuple[int, int | None]]] = {}
        for row, group in enumerate(patches):
            for name, pos in group:
                self.by_site.setdefault(name, []).append((row, pos))

    def sites(self, every: dict[str, Site]) -> dict[str, Site]:
        return {n: every[n] for n in self.by_site}

    def __call__(self, site: Site, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()  # [B, T, width]
        src = self.clean[site.name].to(device=x.device, dtype=x.dtype)  # [1, T, width]
        for row, pos in self.by_site[site.name]:
            if pos is None:
                out[row] = src[0]
            else:
                out[row, pos] = src[0, pos]
        return out


def _check_pair(model: nn.Module, clean_ids: Any, corrupt_ids: Any, answer: int, wrong: int,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    clean, corrupt = _ids(clean_ids, "clean_ids"), _ids(corrupt_ids, "corrupt_ids")
    if clean.numel() != corrupt.numel():
        raise PatchingError(f"the clean prompt is {clean.numel()} tokens and the corrupted one {corrupt.numel()}: "
                            "patching needs the same length; reword one (e.g. a subject of the same token count)")
    head = model.get_output_embeddings()
    vocab = int(head.weight.shape[0]) if head is not None else None
    for name, t in (("answer", answer), ("wrong", wrong)):
        try:
            ok = 0 <= operator.index(t) < (vocab if vocab is not None else 1 << 62)
        except TypeError:
            ok = False
        if not ok:
            raise PatchingError(f"{name} must be a token id in 0..{(vocab or 0) - 1}, got {t!r}")
    if answer == wrong:
        raise PatchingError("answer and wrong are the same token: the logit difference would always be 0")
    return clean[None], corrupt[None]  # [1, T]


def _site_names(model: nn.Module, kinds: Sequence[str]) -> dict[str, Site]:
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise SiteError(f"unknown site kind(s) {unknown or list(kinds)}; choose from {', '.join(KINDS)}")
    return resolve_sites(model, [f"layers.*.{k}" for k in kinds])


@torch.no_grad()
def _run(model: nn.Module, clean: torch.Tensor, corrupt: torch.Tensor, answer: int, wrong: int,
         groups: Sequence[Sequence[Patch]], sites: dict[str, Site], batch_size: int, advance: Any = None,
         ) -> tuple[torch.Tensor, float, float]:
    """Logit differences of each patch group (one group = patches applied together), and clean / corrupt."""
    needed = {n for g in groups for n, _ in g}
    unknown = sorted(needed - set(sites))
    if unknown:
        raise SiteError(f"no site {unknown[0]!r} in this model; site names look like 'layers.0.resid_out'")
    with capture(model, sites={n: sites[n] for n in needed}) as cap:
        ld_clean = _last_logits(model, clean)[0]
    stored = dict(cap.tensors)
    ld_clean = float(ld_clean[answer] - ld_clean[wrong])
    base = _last_logits(model, corrupt)[0]
    ld_corrupt = float(base[answer] - base[wrong])
    out = torch.empty(len(groups), dtype=torch.float64)
    for b in range(0, len(groups), batch_size):
        chunk = groups[b : b + batch_size]
        patcher = _Patcher(stored, chunk)
        batch = corrupt.expand(len(chunk), -1)  # [n, T]: one copy per patch group
        if patcher.by_site:
            with capture(model, sites=patcher.sites(sites), fn=patcher):
                logits = _last_logits(model, batch)
        else:
            logits = _last_logits(model, batch)
        out[b : b + len(chunk)] = (logits[:, answer] - logits[:, wrong]).double().cpu()
        if advance is not None:
            advance(len(chunk))
    return out, ld_clean, ld_corrupt


def _normalise(ld: torch.Tensor, ld_clean: float, ld_corrupt: float) -> torch.Tensor:
    gap = ld_clean - ld_corrupt
    if abs(gap) < 1e-6:
        raise PatchingError(f"the clean and corrupted prompts give the same logit difference ({ld_clean:.4g}): "
                            "nothing to restore; choose prompts whose answers differ")
    return ((ld - ld_corrupt) / gap).float()


def patch_effect(
    model: nn.Module, clean_ids: Any, corrupt_ids: Any, answer: int, wrong: int,
    patches: Sequence[Patch] = (),
) -> float:
    """The share of the logit difference restored by applying ``patches`` together (``[]``: exactly 0).

    Args:
        patches: ``(site name, position or None for all)`` pairs, e.g. ``[("layers.3.resid_out", None)]``.

    Example:
        >>> patch_effect(model, clean, corrupt, paris, rome, [("layers.29.resid_out", None)])  # doctest: +SKIP
        1.0
    """
    clean, corrupt = _check_pair(model, clean_ids, corrupt_ids, answer, wrong)
    answer, wrong = operator.index(answer), operator.index(wrong)
    every = resolve_sites(model, [p[0] for p in patches]) if patches else {}
    for _, pos in patches:
        if pos is not None and not -clean.shape[1] <= pos < clean.shape[1]:
            raise PatchingError(f"position {pos} is outside the prompt's {clean.shape[1]} tokens")
    ld, ld_clean, ld_corrupt = _run(model, clean, corrupt, answer, wrong, [list(patches)], every, 1)
    return float(_normalise(ld, ld_clean, ld_corrupt)[0])


def patch_map(
    model: nn.Module,
    clean_ids: Any,
    corrupt_ids: Any,
    answer: int,
    wrong: int,
    sites: Sequence[str] = DEFAULT_KINDS,
    per_position: bool = False,
    tok: Any = None,
    batch_size: int = 32,
    progress: bool = False,
) -> PatchMap:
    """Patch every layer × site kind (× position) of the corrupted run with the clean run's activation.

    Args:
        clean_ids, corrupt_ids: token ids of the two prompts, same length (``[T]`` or ``[1, T]``).
        answer, wrong: token ids of the clean and the corrupted answer (see :func:`single_token`).
        sites: site kinds, e.g. ``("resid_out", "mlp.down_in", "attn.o_in")``.
        per_position: also one patch per position (the ``[layers, kinds, positions]`` map).
        tok: a tokenizer, only to label positions with their tokens.
        batch_size: patched copies of the prompt per forward.

    Raises:
        PatchingError: different lengths, bad answer ids, or prompts with no logit difference to restore.
        SiteError: an unknown site kind.
    """
    clean, corrupt = _check_pair(model, clean_ids, corrupt_ids, answer, wrong)
    answer, wrong = operator.index(answer), operator.index(wrong)
    every = _site_names(model, sites)
    layers = sorted({s.layer for s in every.values()})
    kinds = list(dict.fromkeys(sites))
    positions: list[int | None] = list(range(clean.shape[1])) if per_position else [None]
    groups: list[list[Patch]] = []
    present: list[tuple[int, int, int]] = []  # (layer row, kind column, position slot) of each group
    for li, layer in enumerate(layers):
        for ki, kind in enumerate(kinds):
            name = f"layers.{layer}.{kind}"
            if name not in every:  # a kind this architecture lacks in some layer stays NaN
                continue
            for pi, pos in enumerate(positions):
                groups.append([(name, pos)])
                present.append((li, ki, pi))
    with progress_bar(progress, len(groups), "patching") as advance:
        ld, ld_clean, ld_corrupt = _run(model, clean, corrupt, answer, wrong, groups, every, batch_size, advance)
    scores = _normalise(ld, ld_clean, ld_corrupt)
    restored = torch.full((len(layers), len(kinds), len(positions)), float("nan"))
    for (li, ki, pi), v in zip(present, scores.tolist(), strict=True):
        restored[li, ki, pi] = v
    text = (lambda ids: [tok.decode([int(i)]) for i in ids[0]]) if tok is not None else (lambda ids: [])
    return PatchMap(restored=restored if per_position else restored[..., 0], layers=layers, kinds=kinds,
                    answer=answer, wrong=wrong, logit_diff_clean=ld_clean, logit_diff_corrupt=ld_corrupt,
                    per_position=per_position, tokens=text(clean), corrupt_tokens=text(corrupt))


def draw_patch_map(pm: PatchMap, path: str | Path, title: str | None = None) -> Path:
    """A heat map of ``pm`` (layers down, kinds or positions across) to PNG or SVG, by the path's suffix.

    Per position: one panel per site kind, positions labelled with the clean tokens when known.
    """
    from actlab.report.plots import _figure

    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg"):
        raise PatchingError(f"the map is written as PNG or SVG; {path.name} has suffix {path.suffix!r}")
    data = pm.restored.numpy()
    panels = [(k, data[:, i, :]) for i, k in enumerate(pm.kinds)] if pm.per_position else [("", data)]
    cols = len(panels)
    width = max(4.0, 0.45 * data.shape[-1] + 2.5) if pm.per_position else 1.1 * len(pm.kinds) + 3.0
    fig, axes = _figure(1, cols, (width * cols if pm.per_position else width, max(3.5, 0.18 * len(pm.layers) + 1.5)))
    lim = max(1.0, float(abs(torch.nan_to_num(pm.restored)).max()))
    image = None
    for ax, (kind, grid) in zip(axes[0], panels, strict=True):
        image = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower",
                          interpolation="nearest")
        ax.set_ylabel("layer")
        ax.set_yticks(range(len(pm.layers)), [str(i) for i in pm.layers], fontsize=6)
        if pm.per_position:
            labels = pm.tokens if len(pm.tokens) == grid.shape[1] else [str(i) for i in range(grid.shape[1])]
            ax.set_xticks(range(grid.shape[1]), [repr(t)[1:-1] for t in labels], rotation=60, fontsize=7)
            ax.set_title(kind, fontsize=9)
        else:
            ax.set_xticks(range(len(pm.kinds)), pm.kinds, rotation=30, fontsize=8)
    fig.colorbar(image, ax=axes[0].tolist(), label="logit difference restored (clean = 1)")
    fig.suptitle(title or f"activation patching: clean LD {pm.logit_diff_clean:.2f}, corrupted "
                 f"{pm.logit_diff_corrupt:.2f}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
