"""Contextual decomposition for transformers (CD-T): the residual stream split into a relevant and an irrelevant part.

At layer ``layer_start`` the residual stream ``h`` is split as ``h = β + γ``: β holds the rows of the chosen
input positions, γ the rest. Both parts then travel through the model's own layers (its modules' weights,
called one by one) so that at every layer ``β_l + γ_l`` equals the model's own activation and, at the end,
``β_logits + γ_logits`` equals its logits. Heads and MLP neurons may be sources too: their whole output is
moved into β where they write it.

Propagation rules (after Jain, Hsu et al., "Efficient automated circuit discovery in transformers using
contextual decomposition", 2024, and the CD of Murdoch et al. 2018), one per operation of a llama-style
decoder block:

=====================  ===========================================================================  =========
operation              rule                                                                         exact?
=====================  ===========================================================================  =========
linear ``Wx + b``      ``Wβ``, ``Wγ``; the bias split in proportion to ``|Wβ|`` and ``|Wγ|``        yes
residual add           part by part                                                                 yes
RMSNorm                each part divided by the *full input's* RMS, times the norm's weight         linearised
attention              softmax weights from the full input held fixed, applied to the values of     linearised
                       each part (q, k and the rotary embedding only shape those weights)
activation ``f``       ``γ -> f(γ)``, ``β -> f(β + γ) - f(γ)`` (interactions go to β)                yes (sum)
gate product ``a·u``   ``γ -> a_γ u_γ``, ``β -> a u - a_γ u_γ`` (every cross term goes to β)         yes (sum)
stabiliser             after each sublayer, entries where β and γ have opposite signs go wholly to  yes (sum)
                       the larger part (the CD-T authors' ``normalize_rel_irrel``; ``stabilize=``)
=====================  ===========================================================================  =========

What is approximated, then, is *how* the sum is divided, never the sum: the norm statistics and the
attention pattern are those of the full input (so γ alone is not what the model would compute on γ
alone), and the nonlinear rules credit every interaction between the two parts to β. The sum is exact
to float rounding at every layer, which :func:`decompose` measures and tests check.

Supported: decoders whose layers are ``input_layernorm -> self_attn (q/k/v/o) -> residual ->
post_attention_layernorm -> gated MLP (gate, up, act, down) -> residual`` with RMSNorm (llama, mistral,
qwen2, qwen3, gemma); other layouts raise :class:`CDTError`.

Example:
    >>> model, tok = actlab.load_model("random:tiny-llama")                 # doctest: +SKIP
    >>> ids = torch.tensor(tok.encode("the cat sat on the mat"))           # doctest: +SKIP
    >>> d = decompose(model, ids, relevant_positions=[1])                  # doctest: +SKIP
    >>> d.logit_attribution(tok.encode(" mat")[0])                         # doctest: +SKIP
    LogitAttribution(relevant=0.41, irrelevant=2.3, logit=2.71)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from actlab.activations.hooks import capture
from actlab.models.adapters import Adapter, get_adapter, linear_weight, role_path
from actlab.models.wrappers import unwrap

Parts = tuple[torch.Tensor, torch.Tensor]
_EXTRA_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm")  # gemma2/3: another layout


class CDTError(ValueError):
    """A decomposition that cannot be made as asked (architecture, positions, layer or sources)."""


@dataclass(frozen=True)
class LogitAttribution:
    """One logit split into the part due to the relevant sources and the rest (``relevant + irrelevant == logit``)."""

    relevant: float
    irrelevant: float
    logit: float


@dataclass
class Decomposition:
    """What :func:`decompose` returns: both parts at every layer from ``layer_start`` and at the logits.

    Attributes:
        layers: the layer indices, one per entry of ``relevant``/``irrelevant``/``full``.
        relevant: β after each layer (the residual stream, ``[batch, seq, d_model]``).
        irrelevant: γ after each layer.
        full: the model's own output of each layer (what β + γ must equal).
        relevant_logits, irrelevant_logits, logits: the same at the output (``[batch, seq, vocab]``).
        max_error: the largest ``|β + γ - full|`` over every layer and the logits, relative to the
            largest ``|full|`` of that tensor: float rounding only, if the rules hold.
    """

    layers: list[int]
    relevant: list[torch.Tensor]
    irrelevant: list[torch.Tensor]
    full: list[torch.Tensor]
    relevant_logits: torch.Tensor
    irrelevant_logits: torch.Tensor
    logits: torch.Tensor
    max_error: float = field(default=0.0)

    def logit_attribution(self, token_id: int, position: int = -1, batch: int = 0) -> LogitAttribution:
        """The logit of ``token_id`` at ``position`` (default: the last) split into relevant and irrelevant.

        Example:
            >>> d.logit_attribution(42).relevant                            # doctest: +SKIP
            0.41
        """
        vocab = self.logits.shape[-1]
        if not 0 <= token_id < vocab:
            raise CDTError(f"token id {token_id} is outside the vocabulary (0..{vocab - 1})")
        r = float(self.relevant_logits[batch, position, token_id])
        i = float(self.irrelevant_logits[batch, position, token_id])
        return LogitAttribution(r, i, float(self.logits[batch, position, token_id]))


# ---------------------------------------------------------------------------------------------- rules


def linear_split(rel: torch.Tensor, irrel: torch.Tensor, module: nn.Module, tol: float = 1e-12) -> Parts:
    """``module(rel + irrel)`` split: the weight applied to each part, the bias shared by ``|Wβ| : |Wγ|``."""
    w = linear_weight(module).to(rel.dtype)
    r, i = F.linear(rel, w), F.linear(irrel, w)
    bias = getattr(module, "bias", None)
    if bias is None:
        return r, i
    bias = bias.to(rel.dtype)
    share = r.abs() / (r.abs() + i.abs() + tol)
    r_bias = bias * share
    return r + r_bias, i + (bias - r_bias)  # γ takes the remainder, so the two biases sum to b exactly


def rmsnorm_split(rel: torch.Tensor, irrel: torch.Tensor, norm: nn.Module) -> Parts:
    """An RMSNorm with the statistics of the full input: each part scaled by ``weight / rms(β + γ)``.

    The scale is checked against the module's own output, which also tells Llama's ``w`` from Gemma's
    ``1 + w``; any other norm raises :class:`CDTError`.
    """
    total = rel + irrel
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    weight = getattr(norm, "weight", None)
    if eps is None or weight is None:
        raise CDTError(f"{type(norm).__name__} is not an RMSNorm with a weight and an epsilon; CD-T here "
                       "supports llama-style RMSNorm layers only")
    inv = torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + eps)  # [batch, seq, 1]
    own = norm(total)
    for scale in (weight.to(total.dtype), 1.0 + weight.to(total.dtype)):
        # checked on the total, not on r + i: the parts may cancel, and their sum's rounding is not the norm's
        if torch.allclose(total * inv * scale, own.to(total.dtype), rtol=1e-4, atol=1e-5 * float(own.abs().max()) + 1e-6):
            return rel * inv * scale, irrel * inv * scale
    raise CDTError(f"{type(norm).__name__} does not compute weight * x / rms(x): CD-T here supports "
                   "RMSNorm (llama's weight or gemma's 1 + weight) only")


def activation_split(rel: torch.Tensor, irrel: torch.Tensor, act: nn.Module) -> Parts:
    """``f(β + γ)`` split as ``f(γ)`` for γ and the remainder ``f(β + γ) - f(γ)`` for β (sum exact)."""
    i = act(irrel)
    return act(rel + irrel) - i, i


def product_split(a: Parts, u: Parts) -> Parts:
    """``(a_β + a_γ)(u_β + u_γ)`` split: γ keeps ``a_γ u_γ``, β every term that involves a relevant part."""
    i = a[1] * u[1]
    return (a[0] + a[1]) * (u[0] + u[1]) - i, i


def sign_split(rel: torch.Tensor, irrel: torch.Tensor) -> Parts:
    """Where β and γ have opposite signs, give the whole sum to the larger of the two (CD-T's stabiliser).

    The sum is unchanged and afterwards ``|β|, |γ| <= |β + γ|`` entrywise. Without it, parts that cancel
    grow layer by layer: each norm divides them by the RMS of their *sum*, and the gate product is
    quadratic in them (on SmolLM2 they pass 1e300 by layer 19).
    """
    opposite = rel * irrel < 0
    rel_wins = opposite & (rel.abs() >= irrel.abs())
    total = rel + irrel
    r = torch.where(rel_wins, total, torch.where(opposite, torch.zeros_like(rel), rel))
    return r, total - r


def _to_relevant(parts: Parts, index: list[int], dim: int) -> Parts:
    """Move whole channels ``index`` (heads, neurons) along ``dim`` into the relevant part."""
    if not index:
        return parts
    r, i = parts[0].clone(), parts[1].clone()
    idx = torch.tensor(index, device=r.device)
    r.index_add_(dim, idx, i.index_select(dim, idx))
    i.index_fill_(dim, idx, 0.0)
    return r, i


# ---------------------------------------------------------------------------------------------- one layer


def _attention_split(layer: nn.Module, ad: Adapter, parts: Parts, probs: torch.Tensor, heads: list[int]) -> Parts:
    """The attention sublayer with the full input's softmax weights ``probs`` ``[batch, heads, seq, seq]``."""
    attn = layer.get_submodule(ad.o.rsplit(".", 1)[0])
    v_proj, o_proj = layer.get_submodule(ad.qkv[2]), layer.get_submodule(ad.o)
    b, t, _ = parts[0].shape
    n_heads = probs.shape[1]
    head_dim = getattr(attn, "head_dim", linear_weight(o_proj).shape[1] // n_heads)
    out = []
    for v in linear_split(*parts, v_proj):
        v = v.view(b, t, -1, head_dim).transpose(1, 2)  # [batch, kv_heads, seq, head_dim]
        v = v.repeat_interleave(n_heads // v.shape[1], dim=1)  # grouped-query: each kv head serves a group
        out.append((probs @ v).transpose(1, 2))  # [batch, seq, heads, head_dim]
    r, i = _to_relevant((out[0], out[1]), heads, dim=2)
    return linear_split(r.reshape(b, t, -1), i.reshape(b, t, -1), o_proj)


def _mlp_split(layer: nn.Module, ad: Adapter, parts: Parts, neurons: list[int]) -> Parts:
    gate, up = (layer.get_submodule(p) for p in ad.mlp_in)
    a = activation_split(*linear_split(*parts, gate), layer.get_submodule(ad.act))
    hidden = product_split(a, linear_split(*parts, up))  # [batch, seq, d_ff]: the input of down
    return linear_split(*_to_relevant(hidden, neurons, dim=2), layer.get_submodule(ad.down))


def layer_split(layer: nn.Module, ad: Adapter, parts: Parts, probs: torch.Tensor,
                heads: list[int] = (), neurons: list[int] = (),  # type: ignore[assignment]
                stabilize: bool = True) -> Parts:
    """One decoder layer applied to ``(β, γ)``: returns the two parts of its output.

    ``stabilize``: :func:`sign_split` the residual stream after each sublayer.
    """
    n = rmsnorm_split(*parts, layer.input_layernorm)
    a = _attention_split(layer, ad, n, probs, list(heads))
    mid = (parts[0] + a[0], parts[1] + a[1])
    mid = sign_split(*mid) if stabilize else mid
    m = _mlp_split(layer, ad, rmsnorm_split(*mid, layer.post_attention_layernorm), list(neurons))
    out = (mid[0] + m[0], mid[1] + m[1])
    return sign_split(*out) if stabilize else out


# ---------------------------------------------------------------------------------------------- the model


def _check_architecture(model: nn.Module, ad: Adapter) -> nn.ModuleList:
    if not ad.gated or ad.fused_gate_up or len(ad.qkv) != 3 or ad.encoder:
        raise CDTError(f"CD-T supports llama-style decoders (separate q/k/v, gated MLP); "
                       f"{model.config.model_type} is not one")
    layers = model.get_submodule(ad.layers)
    for name in ("input_layernorm", "post_attention_layernorm"):
        if not hasattr(layers[0], name):
            raise CDTError(f"{model.config.model_type} layers have no {name}; CD-T supports the llama layout only")
    if any(hasattr(layers[0], n) for n in _EXTRA_NORMS):
        raise CDTError(f"{model.config.model_type} layers have extra norms around the MLP; CD-T supports "
                       "the llama layout (two norms per layer) only")
    return layers


@contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
    """The model's own eager attention for one forward: it returns the softmax weights CD-T holds fixed."""
    before = model.config._attn_implementation
    if before != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before != "eager":
            model.set_attn_implementation(before)


@contextmanager
def _layer_input(layer: nn.Module, store: dict[str, torch.Tensor]) -> Iterator[None]:
    """Record the residual stream entering ``layer`` (its first input), hook removed on exit."""

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
        store["x"] = args[0] if args else kwargs["hidden_states"]

    handle = layer.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _rel_error(parts: Parts, full: torch.Tensor) -> float:
    full = full.to(parts[0].dtype)
    return float((parts[0] + parts[1] - full).abs().max() / full.abs().max().clamp_min(1e-30))


@torch.no_grad()
def decompose(
    model: nn.Module,
    input_ids: torch.Tensor,
    relevant_positions: list[int],
    layer_start: int = 0,
    relevant_heads: dict[int, list[int]] | None = None,
    relevant_neurons: dict[int, list[int]] | None = None,
    dtype: torch.dtype | None = None,
    stabilize: bool = True,
) -> Decomposition:
    """Split the residual stream at ``layer_start`` by input position and propagate both parts to the logits.

    Args:
        model: a llama-style causal LM (see the module docstring for the layouts supported).
        input_ids: ``[seq]`` or ``[batch, seq]`` token ids.
        relevant_positions: positions (negative counts from the end) whose rows of the residual stream
            entering ``layer_start`` form β; may be empty when heads or neurons are the sources.
        layer_start: the layer where the split is made (0: the token embeddings).
        relevant_heads: ``{layer: [head, ...]}``: those heads' whole outputs join β where they are written.
        relevant_neurons: ``{layer: [neuron, ...]}``: those MLP neurons' (inputs of down) likewise.
        dtype: the parts' dtype (default: the model's). ``torch.float64`` keeps the rounding of the split
            far below the model's own, where the parts are large and cancel (massive activations).
        stabilize: after each sublayer, where β and γ of the residual stream have opposite signs, give
            the sum to the larger (:func:`sign_split`, as the CD-T authors do). Off, the parts of a real
            model can grow without bound (each norm divides them by the RMS of their sum).

    Raises:
        CDTError: unsupported architecture, a position or layer out of range, or a source index out of range.

    Example:
        >>> d = decompose(model, ids, relevant_positions=[0, 1])           # doctest: +SKIP
        >>> (d.relevant[-1] + d.irrelevant[-1] - d.full[-1]).abs().max()   # doctest: +SKIP
        tensor(2.4e-07)
    """
    model = unwrap(model)[0]
    ad = get_adapter(model)
    layers = _check_architecture(model, ad)
    ids = input_ids.unsqueeze(0) if input_ids.dim() == 1 else input_ids
    n_layers, t = len(layers), ids.shape[1]
    if not 0 <= layer_start < n_layers:
        raise CDTError(f"layer_start {layer_start} is outside the model's layers 0..{n_layers - 1}")
    bad = [p for p in relevant_positions if not -t <= p < t]
    if bad:
        raise CDTError(f"relevant positions {bad} are outside the input's {t} tokens (0..{t - 1} or negative)")
    heads, neurons = relevant_heads or {}, relevant_neurons or {}
    n_heads = model.config.num_attention_heads
    d_ff = linear_weight(layers[0].get_submodule(ad.down)).shape[1]
    for name, sources, size in (("head", heads, n_heads), ("neuron", neurons, d_ff)):
        for layer, idx in sources.items():
            if not layer_start <= layer < n_layers or any(not 0 <= j < size for j in idx):
                raise CDTError(f"relevant {name}s {idx} of layer {layer}: layers {layer_start}..{n_layers - 1} "
                               f"and {name}s 0..{size - 1} only")

    store: dict[str, torch.Tensor] = {}
    sites = [f"layers.{i}.resid_out" for i in range(layer_start, n_layers)]
    with _eager_attention(model), _layer_input(layers[layer_start], store), capture(model, sites=sites) as cap:
        out = model(ids.to(next(model.parameters()).device), output_attentions=True, use_cache=False)
    if out.attentions is None or any(a is None for a in out.attentions):
        raise CDTError(f"{type(model).__name__} returned no attention weights with eager attention")
    full = [cap.tensors[s] for s in sites]

    h = store["x"].to(dtype or store["x"].dtype)  # [batch, seq, d_model]
    mask = torch.zeros(t, dtype=torch.bool, device=h.device)
    mask[[p % t for p in relevant_positions]] = True
    parts: Parts = (h * mask[:, None], h * ~mask[:, None])
    rel, irrel, err = [], [], 0.0
    for i in range(layer_start, n_layers):
        probs = out.attentions[i].to(h.dtype)
        parts = layer_split(layers[i], ad, parts, probs, heads.get(i, []), neurons.get(i, []), stabilize)
        err = max(err, _rel_error(parts, full[i - layer_start]))
        rel.append(parts[0])
        irrel.append(parts[1])

    norm_path, head_path = role_path(model, ad, "final_norm"), role_path(model, ad, "lm_head")
    if norm_path is None or head_path is None:
        raise CDTError(f"{type(model).__name__} has no final norm or LM head in the adapter table")
    final = rmsnorm_split(*parts, model.get_submodule(norm_path))
    logits = linear_split(*final, model.get_submodule(head_path))
    err = max(err, _rel_error(logits, out.logits))
    return Decomposition(list(range(layer_start, n_layers)), rel, irrel, full, logits[0], logits[1],
                         out.logits.to(h.dtype), err)
