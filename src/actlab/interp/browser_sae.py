"""The neuron browser's data for a sparse autoencoder's latents (pages of kind ``"sae"``).

The same pages as :func:`actlab.interp.browser_data.build_site_data` builds for a site's channels, with the
latent in place of the channel:

* **records** of every latent over the windows (:func:`actlab.interp.sae_train.latent_records`, named
  ``{site}.sae``; positions before the SAE's ``exclude_first`` are not recorded);
* **top contexts** with the latent's activation on every token, from one batched pass over the windows the
  contexts point to, the site's tensor encoded through the SAE once per batch (positions before
  ``exclude_first`` show NaN, drawn uncoloured: the SAE never reads them);
* **LM-head tokens** of the latent's decoder row ``W_dec[i]`` (a direction in the site's space), read through
  :func:`actlab.interp.lm_head.decode_site_directions`: as is at ``resid_out``, through the down projection at
  ``mlp.act_out`` / ``mlp.down_in``, none elsewhere;
* **ablation** (optional): the latent removed from the site's activation, ``x − z_i(x)·W_dec[i] / s``, at every
  position the SAE reads, with the next-token loss measured by :func:`actlab.interp.ablate.rewrite_effect`.

Example:
    >>> sae = SparseAutoencoder.load("runs/sae-l15")                                        # doctest: +SKIP
    >>> data = build_sae_site_data(model, tok, windows, sae, latents=range(64))            # doctest: +SKIP
    >>> render_site(data, "runs/sae-browser")                                              # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from actlab.activations.sites import Site
from actlab.interp.browser_data import (
    ablation_entry,
    contexts_shown,
    neuron_entry,
    select,
    token_pairs,
    token_text,
)
from actlab.interp.sae import SparseAutoencoder

__all__ = ["DEFAULT_LATENTS", "build_sae_site_data", "latent_ablation_effect", "latent_directions"]

#: latents shown when none are chosen: the first 256 (latent indices carry no order, so this is a sample;
#: dead ones stay visible as pages with no contexts and frequency 0, which the index filters out)
DEFAULT_LATENTS = 256


def latent_directions(sae: SparseAutoencoder, latents: Sequence[int]) -> torch.Tensor:
    """Decoder rows ``[n, d_in]`` of ``latents`` in the site's own units: what one unit of each latent adds to the
    reconstruction (``W_dec[i] / s``; ``s`` is 1 for an SAE read from disk, where it is folded in)."""
    idx = torch.as_tensor(list(latents), dtype=torch.long)
    return (sae.W_dec.detach()[idx] / sae.input_scale).float()


def _encoder(sae: SparseAutoencoder) -> Callable[[torch.Tensor], torch.Tensor]:
    """``[B, T, d_in]`` site tensor -> ``[B, T, d_sae]`` latents, NaN before ``exclude_first`` (never recorded)."""
    e = sae.cfg.exclude_first
    dev = sae.W_enc.device

    @torch.no_grad()
    def encode(x: torch.Tensor) -> torch.Tensor:
        z = torch.full((*x.shape[:-1], sae.cfg.d_sae), float("nan"), device=dev)
        z[:, e:] = sae.encode(x[:, e:].to(dev, torch.float32))  # the same map latent_activations applies
        return z

    return encode


def _remove_latents(sae: SparseAutoencoder, latents: Sequence[int]) -> Callable[[Site, torch.Tensor], torch.Tensor]:
    """A capture hook that subtracts ``latents``' decoder contribution from the site's tensor (positions from
    ``exclude_first`` on, the ones the SAE reads)."""
    e = sae.cfg.exclude_first
    idx = torch.as_tensor(list(latents), dtype=torch.long, device=sae.W_dec.device)
    rows = latent_directions(sae, latents).to(sae.W_dec.device)  # [n, d_in]

    def fn(_site: Site, x: torch.Tensor) -> torch.Tensor:
        z = sae.encode(x[:, e:].to(rows.device, torch.float32))[..., idx]  # [B, T - e, n]
        out = x.clone()
        out[:, e:] -= (z @ rows).to(x.device, x.dtype)  # [B, T - e, d_in]
        return out

    return fn


@torch.no_grad()
def latent_ablation_effect(model: nn.Module, sae: SparseAutoencoder, windows: torch.Tensor,
                           latents: int | Sequence[int], batch_size: int = 8, top_tokens: int = 10,
                           progress: bool = False) -> Any:
    """Next-token loss with ``latents`` removed from the SAE's site (``x − Σ z_i(x)·W_dec[i] / s``) and without;
    an :class:`actlab.interp.ablate.AblationEffect` with ``site`` ``{site}.sae`` and mode ``"latent-zero"``.

    Raises:
        SiteError / SAEError: the SAE does not fit the model (:func:`actlab.interp.sae_train.check_model`).
        BrowserDataError: a latent index outside ``0..d_sae - 1``. InterventionError: malformed windows.

    Example:
        >>> eff = latent_ablation_effect(model, sae, windows, [17])                        # doctest: +SKIP
        >>> eff.delta_loss                                                                  # doctest: +SKIP
    """
    from actlab.interp.ablate import check_windows
    from actlab.interp.sae_train import check_model

    chosen = select(sae.cfg.d_sae, [latents] if isinstance(latents, int) else latents, f"{sae.cfg.site}.sae")
    check_windows(windows)
    site = check_model(sae, model)
    sae.eval()
    return _latent_effect(model, sae, site, windows, chosen, batch_size, top_tokens, progress)


def _latent_effect(model: nn.Module, sae: SparseAutoencoder, site: Site, windows: torch.Tensor, latents: list[int],
                   batch_size: int, top_tokens: int = 10, progress: bool = False, clean: Any = None) -> Any:
    from actlab.interp.ablate import rewrite_effect

    eff = rewrite_effect(model, windows, site, _remove_latents(sae, latents), latents, "latent-zero", batch_size,
                         top_tokens, progress, clean)
    eff.site = f"{site.name}.sae"
    return eff


def build_sae_site_data(
    model: nn.Module,
    tok: Any,
    windows: torch.Tensor,
    sae: SparseAutoencoder,
    k: int = 20,
    latents: Sequence[int] | None = None,
    ablate: bool = False,
    ablate_windows: torch.Tensor | None = None,
    model_name: str = "model",
    before: int = 16,
    after: int = 4,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """The renderer's data (:mod:`actlab.report.neurons_html`) for ``latents`` of ``sae``: one page of kind
    ``"sae"`` per latent, id ``{site}.sae/{i}``.

    Args:
        windows: ``[n_windows, seq_len]`` token ids the records are made from.
        latents: which latents (default: the first :data:`DEFAULT_LATENTS`).
        ablate: also measure each latent's ablation effect over ``ablate_windows`` (default ``windows``): two
            forwards per latent, keep the selection small.
        k, before, after, batch_size: as :func:`actlab.interp.browser_data.build_site_data`.

    Raises:
        SiteError / SAEError: the SAE names no site of this model, or was trained on another model (width,
            fingerprint). BrowserDataError: a latent index past ``d_sae``, or an empty selection.
    """
    from actlab.interp.lm_head import decode_site_directions
    from actlab.interp.records import RecordsConfig
    from actlab.interp.sae_train import check_model, latent_records
    from actlab.progress import progress_bar

    windows = getattr(windows, "ids", windows)  # a data.windows.Windows works too
    site = check_model(sae, model)
    name = f"{site.name}.sae"
    default = range(min(DEFAULT_LATENTS, sae.cfg.d_sae))
    chosen = select(sae.cfg.d_sae, default if latents is None else latents, name)  # before the slow pass
    held = windows if ablate_windows is None else ablate_windows
    if ablate:
        from actlab.interp.ablate import check_windows

        check_windows(held)
    sae.eval()
    # latents are ReLU outputs, exact zeros when off: frequency counts every firing (eps 0)
    records = latent_records(model, sae, windows, RecordsConfig(k=k, freq_eps=0.0), batch_size, progress)
    text = token_text(tok)
    wanted = {site.name: [(i, records.top(i)) for i in chosen]}
    ctx = contexts_shown(model, windows, wanted, before, after, batch_size, progress,
                         transform={site.name: _encoder(sae)})
    decoded = decode_site_directions(model, site.kind, site.layer, latent_directions(sae, chosen), k=10)
    clean = None
    if ablate:
        from actlab.interp.ablate import clean_pass

        clean = clean_pass(model, held, batch_size)  # shared by every latent: one forward each, not two
    out: list[dict[str, Any]] = []
    with progress_bar(progress, len(chosen), "latents") as advance:
        for row, i in enumerate(chosen):
            lm = None
            if decoded is not None:
                top_ids, top_s, bot_ids, bot_s = decoded
                lm = {"top": token_pairs(list(zip(top_ids[row].tolist(), top_s[row].tolist(), strict=True)), text),
                      "bottom": token_pairs(list(zip(bot_ids[row].tolist(), bot_s[row].tolist(), strict=True)), text)}
            ab = None
            if ablate:
                ab = ablation_entry(_latent_effect(model, sae, site, held, [i], batch_size, clean=clean), text)
            out.append(neuron_entry(records, i, "sae", ctx, site.name, text, lm, ab))
            advance(1)
    return {"model": model_name, "site_kind": f"{site.kind}.sae", "n_tokens": int(windows.numel()), "neurons": out}
