"""The neuron browser's data, gathered from a model: records, contexts, LM-head tokens, ablation effects.

This is the glue between the interpretability API (``actlab.interp.records``, ``lm_head``, ``ablate``)
and the plain-data renderer (:func:`actlab.report.neurons_html.render_site`): it returns the dict the
renderer documents and knows nothing about HTML.

The activations shown on each token of a context come from one batched pass over the windows the
top contexts point to (every site at once), not from one forward per context. The pages of an SAE's
latents (kind ``"sae"``) are built by :mod:`actlab.interp.browser_sae` from the helpers here.

Example:
    >>> data = build_site_data(model, tok, windows, "mlp.act_out", layers=[0, 1], k=20)   # doctest: +SKIP
    >>> render_site(data, "runs/neurons")                                               # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from actlab.activations.hooks import capture
from actlab.activations.sites import resolve_sites
from actlab.progress import progress_bar

#: site kinds whose channels are MLP neurons, decoded through the LM head by their down-projection column
LM_HEAD_KINDS: tuple[str, ...] = ("mlp.act_out", "mlp.down_in")


class _Enough(Exception):
    """Raised by a hook to end a forward pass once every wanted site has been seen."""


class BrowserDataError(ValueError):
    """A neuron selection that does not fit the site (an index past its width, an empty selection)."""


def token_text(tok: Any) -> Callable[[int], str]:
    """``text(id)``: one token decoded alone with ``tok``, cached."""
    cache: dict[int, str] = {}

    def text(i: int) -> str:
        if i not in cache:
            cache[i] = tok.decode([int(i)])
        return cache[i]

    return text


def _f(x: Any) -> float:
    return float(x.item() if hasattr(x, "item") else x)


def token_pairs(pairs: Sequence[Any], text: Callable[[int], str]) -> list[list[Any]]:
    """(token, score) pairs with the token as text, whether it came as text or as an id."""
    return [[t if isinstance(t, str) else text(int(t)), _f(s)] for t, s in pairs]


@torch.no_grad()
def _context_acts(model: nn.Module, windows: torch.Tensor, wanted: dict[str, list[tuple[int, Any]]],
                  before: int, after: int, batch_size: int, advance: Callable[[int], None],
                  transform: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                  ) -> dict[tuple[str, int, int], dict[str, Any]]:
    """Token ids and one neuron's activations around each wanted context: ``{(site, neuron, k): ...}``.

    ``transform[site]`` maps the site's batch tensor ``[B, T, d]`` to the channels shown ``[B, T, n]`` (an SAE's
    latents), applied once per batch of windows.
    """
    by_window: dict[int, list[tuple[str, int, int, Any]]] = {}
    for site, items in wanted.items():
        for neuron, ctxs in items:
            for k, c in enumerate(ctxs):
                by_window.setdefault(int(c.window), []).append((site, neuron, k, c))
    order = sorted(by_window)
    seq = windows.shape[1]
    out: dict[tuple[str, int, int], dict[str, Any]] = {}
    device = next(model.parameters()).device
    body = getattr(model, "base_model", model)  # every site is in the backbone: the LM head is not needed
    sites = resolve_sites(model, list(wanted))
    last = max(sites.values(), key=lambda s: s.layer).layer
    seen: dict[str, torch.Tensor] = {}

    def grab(site: Any, x: torch.Tensor) -> None:
        seen[site.name] = x.detach()
        if len(seen) == len(sites) and site.layer == last:
            raise _Enough  # the layers above the deepest site change nothing shown: skip them

    with capture(model, sites=sites, fn=grab):
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            ids = windows[chunk]  # [chunk, seq]
            seen.clear()
            try:
                body(input_ids=ids.to(device), use_cache=False)
            except _Enough:
                pass
            for name, f in (transform or {}).items():
                seen[name] = f(seen[name])
            for row, w in enumerate(chunk):
                for site, neuron, k, c in by_window[w]:
                    pos = int(c.position)
                    lo, hi = max(0, pos - before), min(seq, pos + after + 1)
                    acts = seen[site][row, lo:hi, neuron].float()  # [hi - lo]
                    out[(site, neuron, k)] = {"ids": ids[row, lo:hi].tolist(), "acts": acts.tolist(),
                                              "center": pos - lo, "window": w, "position": pos, "value": _f(c.value)}
            advance(len(chunk))
    return out


def build_site_data(
    model: nn.Module,
    tok: Any,
    windows: torch.Tensor,
    site_kind: str,
    layers: Sequence[int],
    k: int = 20,
    neurons: Sequence[int] | None = None,
    ablate: bool = False,
    ablate_windows: torch.Tensor | None = None,
    model_name: str = "model",
    before: int = 16,
    after: int = 4,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Everything the browser shows for ``neurons`` (default: all) of ``site_kind`` in ``layers``.

    Args:
        windows: ``[n_windows, seq_len]`` token ids the records are made from.
        k: top contexts kept per neuron.
        ablate: also measure each neuron's ablation effect (one forward over ``ablate_windows``, default
            ``windows``, per neuron: the slow part, keep the selection small).
        before, after: tokens shown on each side of a context's top token.

    Raises:
        SiteError: the site kind or a layer does not exist in the model.
        BrowserDataError: a neuron index is past the site's width.
    """
    from actlab.interp.records import record_neurons

    windows = getattr(windows, "ids", windows)  # a data.windows.Windows works too
    sites = list(resolve_sites(model, [f"layers.{i}.{site_kind}" for i in layers]))
    records = record_neurons(model, windows, sites=sites, k=k, batch_size=batch_size, progress=progress)
    text = token_text(tok)
    chosen = {site: select(records[site].n, neurons, site) for site in sites}
    wanted = {s: [(i, records[s].top(i)) for i in idx] for s, idx in chosen.items()}
    ctx = contexts_shown(model, windows, wanted, before, after, batch_size, progress)

    decoded: dict[str, Any] = {}
    if site_kind in LM_HEAD_KINDS:
        from actlab.interp.lm_head import decode_neurons

        decoded = {s: decode_neurons(model, int(s.split(".")[1]), k=10, neurons=chosen[s]) for s in sites}
    clean = None
    if ablate:
        from actlab.interp.ablate import ablation_effect, clean_pass

        held = windows if ablate_windows is None else ablate_windows
        clean = clean_pass(model, held, batch_size)  # shared by every neuron: one forward each, not two

    out: list[dict[str, Any]] = []
    total = sum(len(v) for v in chosen.values())
    with progress_bar(progress, total, "neurons") as advance:
        for site, idx in chosen.items():
            for i in idx:
                lm = None
                if site in decoded:
                    top, bottom = decoded[site].tokens(tok, i)
                    lm = {"top": token_pairs(top, text), "bottom": token_pairs(bottom, text)}
                ab = None
                if clean is not None:
                    ab = ablation_entry(ablation_effect(model, held, site, [i], batch_size=batch_size, clean=clean),
                                        text)
                out.append(neuron_entry(records[site], i, "neuron", ctx, site, text, lm, ab))
                advance(1)
    return {"model": model_name, "site_kind": site_kind, "n_tokens": int(windows.numel()), "neurons": out}


def select(width: int, neurons: Sequence[int] | None, name: str) -> list[int]:
    """The indices ``neurons`` (default: all ``width``) after checking they lie in ``0..width - 1``.

    Raises:
        BrowserDataError: an index outside the site, or an empty selection.
    """
    idx = list(range(width)) if neurons is None else [int(i) for i in neurons]
    bad = [i for i in idx if not 0 <= i < width]
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        raise BrowserDataError(f"neurons {shown} are outside {name} (0..{width - 1}); choose --neurons within it")
    if not idx:
        raise BrowserDataError("no neurons selected; pass --neurons with at least one index")
    return idx


def contexts_shown(model: nn.Module, windows: torch.Tensor, wanted: dict[str, list[tuple[int, Any]]], before: int,
                   after: int, batch_size: int, progress: bool,
                   transform: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                   ) -> dict[tuple[str, int, int], dict[str, Any]]:
    """The contexts of ``wanted`` (``{site: [(neuron, top contexts)]}``) from one batched pass over their windows,
    keyed ``(site, neuron, j)`` (see ``_context_acts`` for ``transform``)."""
    n_windows = len({int(c.window) for items in wanted.values() for _, cs in items for c in cs})
    with progress_bar(progress, n_windows, "contexts") as advance:
        return _context_acts(model, windows, wanted, before, after, batch_size, advance, transform)


def ablation_entry(eff: Any, text: Callable[[int], str]) -> dict[str, Any]:
    """The page's ablation part from an :class:`actlab.interp.ablate.AblationEffect`."""
    return {"delta_loss": _f(eff.delta_loss), "tokens": token_pairs(eff.tokens_most_affected, text)}


def neuron_entry(rec: Any, i: int, kind: str, ctx: dict[tuple[str, int, int], dict[str, Any]], key: str,
                 text: Callable[[int], str], lm: dict[str, Any] | None, ab: dict[str, Any] | None) -> dict[str, Any]:
    """One page of the renderer's data for channel ``i`` of records ``rec`` (contexts ``ctx[(key, i, j)]``)."""
    edges, counts = rec.hist(i)
    contexts = []
    for j in range(len(rec.top(i))):
        c = ctx[(key, i, j)]
        contexts.append({**{kk: v for kk, v in c.items() if kk != "ids"}, "tokens": [text(t) for t in c["ids"]]})
    return {
        "id": f"{rec.site}/{i}", "layer": rec.layer, "index": i, "kind": kind,
        "max": _f(rec.max[i]), "mean": _f(rec.mean[i]), "std": _f(rec.std[i]), "freq": _f(rec.freq[i]),
        "hist": {"edges": [_f(e) for e in edges], "counts": [int(_f(c)) for c in counts]},
        "top_contexts": [c for c in contexts if math.isfinite(c["value"])],
        "lm_head": lm, "ablation": ab,
    }
