"""Reading directions through the unembedding: LM-head decoding of MLP neurons and a logit lens.

**Neuron decoding.** MLP neuron ``i`` of layer ``l`` writes ``a_i * W_down[:, i]`` into the residual stream;
its *output direction* is that column. The direction's tokens are the largest and smallest entries of
``W_U · N(W_down[:, i])`` where ``W_U`` is the LM head ([vocab, d_model]) and ``N`` is the **linear part
of the final norm**: the norm's per-channel gain, and for a LayerNorm the removal of the mean, but not its
division by the token's RMS / std (a positive number per token: it rescales every logit alike and cannot
change which tokens a direction promotes) and not its bias or the LM head's bias (the same vector for
every direction). ``N`` is read off the norm module itself by probing it, so RMSNorm, Gemma's
``(1 + w)`` RMSNorm and LayerNorm are handled without a per-class rule; a model without a final norm
(post-norm BERT) uses the identity.

**Logit lens.** The residual stream after layer ``l`` is passed through the model's own final norm module
(full normalisation) and LM head; at the last layer this is exactly the model's logits.

Example:
    >>> import actlab
    >>> model, tok = actlab.load_model("random:tiny-llama")
    >>> nt = decode_neurons(model, layer=0, k=5)
    >>> top, bottom = nt.tokens(tok, 3)
    >>> nt.top_ids.shape, len(top), len(bottom)
    (torch.Size([128, 5]), 5, 5)
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from actlab.activations.hooks import capture
from actlab.activations.sites import resolve_sites
from actlab.models.adapters import get_adapter, linear_weight, role_path
from actlab.models.wrappers import unwrap

__all__ = ["RESIDUAL_MAPS", "LMHeadError", "LogitLens", "NeuronTokens", "decode_directions", "decode_neurons",
           "decode_site_directions", "logit_lens", "norm_linear_part"]

_CHUNK = 256  # directions scored at once: [256, vocab] floats


class LMHeadError(ValueError):
    """A layer, neuron or input the LM-head tools cannot use; the message says what to pass instead."""


def _modules(model: nn.Module) -> tuple[nn.Module, nn.Module | None, Any]:
    root = unwrap(model)[0]
    ad = get_adapter(root)
    head = role_path(root, ad, "lm_head")
    if head is None:
        raise LMHeadError(f"{type(root).__name__} has no LM head at {ad.lm_head}; load the model with its head")
    norm = role_path(root, ad, "final_norm")
    return root.get_submodule(head), (root.get_submodule(norm) if norm else None), ad


@torch.no_grad()
def norm_linear_part(norm: nn.Module | None, d_model: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``N(d)`` for directions ``d`` [..., d_model]: the norm's gain (and mean removal for a LayerNorm),
    without its per-token division or its bias. Found by probing ``norm``: ``norm(c·1)`` is its bias for a
    centring norm, and an alternating ``±c`` vector gives the gain channel by channel.

    Example:
        >>> f = norm_linear_part(torch.nn.LayerNorm(4), 4)
        >>> f(torch.ones(4)).abs().max().item() < 1e-6        # LayerNorm removes the mean
        True
    """
    if norm is None:
        return lambda d: d
    p0 = next(norm.parameters(), None)
    dtype, dev = (p0.dtype, p0.device) if p0 is not None else (torch.float32, torch.device("cpu"))
    c = 100.0  # large next to sqrt(eps): the probe's normaliser is c to float precision
    zero = norm(torch.zeros(1, d_model, dtype=dtype, device=dev))[0].float().nan_to_num()  # the bias, if any
    ones = norm(torch.full((1, d_model), c, dtype=dtype, device=dev))[0].float() - zero
    alt = torch.ones(d_model, device=dev)
    alt[1::2] = -1.0
    p = c * alt
    out = norm(p[None].to(dtype))[0].float() - zero
    centre = bool(ones.abs().max() <= 1e-3 * out.abs().max())
    pc = p - p.mean() if centre else p
    scale = pc.pow(2).mean().sqrt()  # the std (LayerNorm) or RMS (RMSNorm) the norm divided by
    gain = out * scale / pc  # [d_model]; pc has no zero entry

    def apply(d: torch.Tensor) -> torch.Tensor:
        d = d.to(gain.device, torch.float32)
        return gain * (d - d.mean(-1, keepdim=True) if centre else d)

    return apply


@torch.no_grad()
def decode_directions(
    model: nn.Module, directions: torch.Tensor, k: int = 10
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top and bottom ``k`` tokens of residual-stream ``directions`` [n, d_model] through the final norm's
    linear part and the LM head: ``(top_ids, top_scores, bottom_ids, bottom_scores)``, each [n, k]
    (bottom ascending).

    Example:
        >>> top_ids, top_s, bot_ids, bot_s = decode_directions(model, torch.randn(3, 64), k=5)  # doctest: +SKIP
    """
    head, norm, _ = _modules(model)
    w_u = linear_weight(head).detach().float()  # [vocab, d_model]; a tied head is the embedding itself
    if directions.dim() != 2 or directions.shape[1] != w_u.shape[1]:
        raise LMHeadError(f"directions must be [n, {w_u.shape[1]}], got {tuple(directions.shape)}")
    if not 0 < k <= w_u.shape[0]:
        raise LMHeadError(f"k must be in 1..{w_u.shape[0]} (the vocabulary), got {k}")
    lin = norm_linear_part(norm, w_u.shape[1])
    parts: list[tuple[torch.Tensor, ...]] = []
    for chunk in directions.detach().split(_CHUNK):
        scores = lin(chunk) @ w_u.T  # [c, vocab]
        top, bot = scores.topk(k, dim=1), scores.topk(k, dim=1, largest=False)
        parts.append(tuple(t.cpu() for t in (top.indices, top.values, bot.indices, bot.values)))
    return tuple(torch.cat(t) for t in zip(*parts, strict=True))  # type: ignore[return-value]


@dataclass
class NeuronTokens:
    """LM-head tokens of some MLP neurons of one layer; rows follow ``neurons``."""

    layer: int
    neurons: torch.Tensor  # [n] neuron indices
    top_ids: torch.Tensor  # [n, k], score descending
    top_scores: torch.Tensor
    bottom_ids: torch.Tensor  # [n, k], score ascending
    bottom_scores: torch.Tensor

    def row(self, i: int) -> int:
        """The row holding neuron ``i``."""
        hit = (self.neurons == int(i)).nonzero()
        if not hit.numel():
            raise LMHeadError(f"neuron {i} was not decoded (decoded: {self.neurons.numel()} neurons of layer "
                              f"{self.layer}); pass it in neurons=")
        return int(hit[0, 0])

    def tokens(self, tok: Any, i: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """Neuron ``i``'s ``(top, bottom)`` tokens as ``(text, score)`` pairs, each token decoded alone with ``tok``
        (top by score descending, bottom ascending).

        Example:
            >>> top, bottom = nt.tokens(tok, 417)                  # doctest: +SKIP
            >>> [t for t, _ in top][:3]                            # doctest: +SKIP
            [' Paris', ' France', ' French']
        """
        r = self.row(i)

        def pairs(ids: torch.Tensor, scores: torch.Tensor) -> list[tuple[str, float]]:
            return [(tok.decode([t]), s) for t, s in zip(ids[r].tolist(), scores[r].tolist(), strict=True)]

        return pairs(self.top_ids, self.top_scores), pairs(self.bottom_ids, self.bottom_scores)


def _num_layers(model: nn.Module) -> int:
    ad = get_adapter(model)
    return len(unwrap(model)[0].get_submodule(ad.layers))


def _check_layer(layer: int, n: int) -> int:
    try:
        i = operator.index(layer)  # ints, numpy and 0-d torch integers; not floats
    except TypeError:
        i = None
    if i is None or not 0 <= i < n:
        raise LMHeadError(f"layer {layer!r} out of range: the model has {n} layers (0..{n - 1})")
    return i


def _down_weight(model: nn.Module, layer: int) -> torch.Tensor:
    """The down projection's weight of ``layer`` as ``[d_model, d_ff]`` (a column is a neuron's output direction)."""
    root = unwrap(model)[0]
    ad = get_adapter(root)
    return linear_weight(root.get_submodule(f"{ad.layers}.{layer}.{ad.down}")).detach()


#: site kinds whose vectors reach the residual stream by a known linear map, and so can be read through the
#: LM head: the residual stream itself, and the MLP's hidden state through the layer's down projection (at
#: ``mlp.act_out`` of a gated MLP each channel is further multiplied by its ``up`` value per token, as it is
#: for one neuron in :func:`decode_neurons`)
RESIDUAL_MAPS: tuple[str, ...] = ("resid_out", "mlp.act_out", "mlp.down_in")


@torch.no_grad()
def decode_site_directions(
    model: nn.Module, site_kind: str, layer: int, directions: torch.Tensor, k: int = 10
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """:func:`decode_directions` of ``directions`` [n, d_site] that live in the space of a site of kind
    ``site_kind`` at ``layer`` (an SAE's decoder rows, a probe's weights): a residual-stream direction is
    decoded as is, an MLP-hidden one after the down projection (``W_down @ d``, what :func:`decode_neurons`
    does with one-hot directions). None for a kind not in :data:`RESIDUAL_MAPS`: no one linear map takes
    its vectors to the residual stream (the normalised inputs of attention and the MLP, ``attn.o_in``'s heads).

    Raises:
        LMHeadError: layer out of range, directions of the wrong width, k too large.

    Example:
        >>> top_ids, _, _, _ = decode_site_directions(model, "mlp.down_in", 0, sae.W_dec[:3], k=5)  # doctest: +SKIP
        >>> top_ids.shape                                                                          # doctest: +SKIP
        torch.Size([3, 5])
    """
    if site_kind not in RESIDUAL_MAPS:
        return None
    layer = _check_layer(layer, _num_layers(model))
    if site_kind != "resid_out":
        w_down = _down_weight(model, layer).float()  # [d_model, d_ff]
        if directions.dim() != 2 or directions.shape[1] != w_down.shape[1]:
            raise LMHeadError(f"directions at {site_kind} of layer {layer} must be [n, {w_down.shape[1]}], "
                              f"got {tuple(directions.shape)}")
        directions = directions.to(w_down.device, torch.float32) @ w_down.T  # [n, d_model]
    return decode_directions(model, directions, k)


@torch.no_grad()
def decode_neurons(
    model: nn.Module, layer: int, k: int = 10, neurons: Sequence[int] | torch.Tensor | None = None
) -> NeuronTokens:
    """Top/bottom ``k`` LM-head tokens of the output direction (``W_down[:, i]``) of MLP neurons of ``layer``.

    Args:
        model: a causal LM in the adapter table.
        layer: layer index.
        k: tokens per neuron and side.
        neurons: which neurons (default: all ``d_ff``).

    Raises:
        LMHeadError: layer or neuron out of range, k too large, no LM head.

    Example:
        >>> nt = decode_neurons(model, layer=12, k=10)            # doctest: +SKIP
        >>> nt.tokens(tok, 417)[0][:2]                            # doctest: +SKIP
        [(' Paris', 0.41), (' France', 0.38)]
    """
    layer = _check_layer(layer, _num_layers(model))
    w_down = _down_weight(model, layer)  # [d_model, d_ff]
    d_ff = w_down.shape[1]
    idx = torch.arange(d_ff) if neurons is None else torch.as_tensor(neurons, dtype=torch.long).reshape(-1)
    if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= d_ff:
        raise LMHeadError(f"neurons must be non-empty indices in 0..{d_ff - 1} (layer {layer} has {d_ff})")
    top_ids, top_s, bot_ids, bot_s = decode_directions(model, w_down[:, idx].T, k)
    return NeuronTokens(layer, idx, top_ids, top_s, bot_ids, bot_s)


@dataclass
class LogitLens:
    """Logit lens of one sequence: per layer (rows follow ``layers``) and position.

    ``final_ids`` is the model's own next-token prediction (argmax of its logits) at each position;
    ``final_prob`` / ``final_rank`` are its probability and rank (0 = top) under each layer's lens.
    """

    layers: list[int]
    top_ids: torch.Tensor  # [L, T, k]
    top_probs: torch.Tensor  # [L, T, k]
    final_ids: torch.Tensor  # [T]
    final_prob: torch.Tensor  # [L, T]
    final_rank: torch.Tensor  # [L, T]

    def tokens(self, tok: Any, layer: int, position: int) -> list[str]:
        """The lens's top tokens at ``layer`` (a layer index in ``layers``) and ``position``."""
        if layer not in self.layers:
            raise LMHeadError(f"layer {layer} not in the lens (layers {self.layers})")
        return [tok.decode([t]) for t in self.top_ids[self.layers.index(layer), position].tolist()]


@torch.no_grad()
def logit_lens(
    model: nn.Module, input_ids: torch.Tensor, layers: Sequence[int] | None = None, k: int = 5
) -> LogitLens:
    """Residual stream after each of ``layers`` (default all) through the final norm and LM head.

    Args:
        model: a causal LM in the adapter table.
        input_ids: one sequence, ``[T]`` or ``[1, T]``.
        layers: layer indices.
        k: top tokens kept per layer and position.

    Raises:
        LMHeadError: a layer out of range, an empty or batched input, k out of range.

    Example:
        >>> lens = logit_lens(model, tok("The capital of France is", return_tensors="pt").input_ids)  # doctest: +SKIP
        >>> lens.tokens(tok, layer=20, position=-1)                                                   # doctest: +SKIP
    """
    ids = input_ids.reshape(1, -1) if input_ids.dim() == 1 else input_ids
    if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise LMHeadError(f"logit_lens takes one non-empty sequence ([T] or [1, T]), got {tuple(input_ids.shape)}")
    n = _num_layers(model)
    chosen = list(range(n)) if layers is None else [_check_layer(x, n) for x in layers]
    if not chosen:
        raise LMHeadError("layers is empty; pass layer indices or None for all")
    head, norm, _ = _modules(model)
    sites = resolve_sites(model, [f"layers.{i}.resid_out" for i in chosen])
    w_dev = next(model.parameters()).device
    with capture(model, sites=sites) as cap:
        logits = model(input_ids=ids.to(w_dev), use_cache=False).logits[0].float()  # [T, vocab]
    vocab = logits.shape[-1]
    if not 0 < k <= vocab:
        raise LMHeadError(f"k must be in 1..{vocab}, got {k}")
    final = logits.argmax(-1)  # [T]
    cap_soft = getattr(getattr(unwrap(model)[0], "config", None), "final_logit_softcapping", None)
    tops, probs, fprob, frank = [], [], [], []
    for i in chosen:
        h = cap.tensors[f"layers.{i}.resid_out"]  # [1, T, d_model]
        lens = head(norm(h) if norm is not None else h)[0].float()  # [T, vocab]
        if cap_soft:  # Gemma 2 caps the logits after the head
            lens = torch.tanh(lens / cap_soft) * cap_soft
        p = lens.softmax(-1)
        t = p.topk(k, dim=-1)
        tops.append(t.indices)
        probs.append(t.values)
        target = lens.gather(1, final[:, None])  # [T, 1]
        fprob.append(p.gather(1, final[:, None])[:, 0])
        frank.append((lens > target).sum(-1))
    out = [torch.stack(t).cpu() for t in (tops, probs, fprob, frank)]
    return LogitLens(chosen, out[0], out[1], final.cpu(), out[2], out[3])
