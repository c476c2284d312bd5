"""What the native decode step (``actlab.engine.native``) supports: one table of architecture facts.

The C step (``kernels/csrc/decode.c``) computes a pre-norm llama-family decoder layer: RMSNorm ``w * x``
(not gemma's ``(1 + w) * x``), q/k/v (optional bias), optional per-head q/k RMSNorm, rotary on the whole
head from the model's own ``rotary_emb``, full causal GQA attention, o, a gated MLP, the final RMSNorm and
an untied or tied ``lm_head``. Anything else is refused with the reason, never approximated.

Example:
    >>> import actlab
    >>> model, _ = actlab.load_model("random:tiny-gpt2")
    >>> native_unsupported(model)
    "model type 'gpt2' is not supported by the native decode step (supported: llama, mistral, qwen2, qwen3)"
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ARCHS", "ArchFacts", "native_unsupported"]


@dataclass(frozen=True)
class ArchFacts:
    """Module names of one supported architecture, relative to a decoder layer.

    Attributes:
        attn_norm, mlp_norm: the two RMSNorms of a layer.
        qk_norm: whether ``self_attn`` has per-head ``q_norm`` / ``k_norm`` RMSNorms (qwen3).
    """

    attn_norm: str = "input_layernorm"
    mlp_norm: str = "post_attention_layernorm"
    qk_norm: bool = False


#: config.model_type -> facts. Mistral and Qwen2 may use a sliding window: refused when it is shorter
#: than the generation (checked against max_len).
ARCHS: dict[str, ArchFacts] = {
    "llama": ArchFacts(),
    "mistral": ArchFacts(),
    "qwen2": ArchFacts(),
    "qwen3": ArchFacts(qk_norm=True),
}

#: rope types whose frequencies depend on the sequence length: a fixed table would be wrong
_SEQ_DEPENDENT_ROPE = ("dynamic", "longrope")


def _extension_reason() -> str | None:
    from actlab.kernels import ops

    ext = ops._extension()
    if ext is None:
        return ops._ext_error or "the actlab C extension is not built"
    if not hasattr(ext, "decoder_new"):
        return "the actlab C extension predates the native decode step; rebuild it: pip install -e ."
    return None


def _is_rms_norm(module: nn.Module) -> bool:
    # HF's own RMSNorm classes (LlamaRMSNorm, Qwen3RMSNorm, ...) compute w * x / rms(x); gemma's differ by name
    name = type(module).__name__
    return name.endswith("RMSNorm") and not name.startswith("Gemma") and hasattr(module, "variance_epsilon")


def native_unsupported(model: nn.Module, max_len: int | None = None) -> str | None:
    """Why the native decode step cannot run ``model`` (for a cache of ``max_len`` tokens), or None.

    Checks the extension, the architecture table, dtype and device, hooks (masking-path plan entries and
    activation swaps are Python), the rope type and the sliding window; the module kinds of each layer are
    checked when a :class:`~actlab.engine.native.NativeDecoder` is built (same reasons, raised).
    """
    reason = _extension_reason()
    if reason is not None:
        return reason
    cfg = getattr(model, "config", None)
    mt = getattr(cfg, "model_type", None)
    if mt not in ARCHS:
        return (f"model type {mt!r} is not supported by the native decode step "
                f"(supported: {', '.join(ARCHS)})")
    facts = ARCHS[mt]
    if getattr(model, "lm_head", None) is None or getattr(getattr(model, "model", None), "layers", None) is None:
        return "not a causal LM with model.layers and lm_head"
    for name, p in model.named_parameters():
        if p.device.type != "cpu":
            return f"{name} is on {p.device}: the native step runs on CPU"
        if p.is_floating_point() and p.dtype != torch.float32:
            return f"{name} is {p.dtype}: the native step reads float32 activations and norms (model.float())"
    hooked = [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    if hooked:
        return (f"{hooked[0]} has forward hooks (a masking-path plan entry, an activation swap or a capture): "
                "the native step cannot run Python hooks")
    rotary = getattr(model.model, "rotary_emb", None)
    if rotary is None:
        return "the model has no model.rotary_emb"
    rope_type = getattr(rotary, "rope_type", "default")
    if rope_type in _SEQ_DEPENDENT_ROPE:
        return f"rope type {rope_type!r} depends on the sequence length; the native step uses a fixed table"
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    windowed = window is not None and (types is None or "sliding_attention" in types)
    if mt == "qwen2" and not getattr(cfg, "use_sliding_window", False):
        windowed = False
    if windowed and max_len is not None and window < max_len:
        return (f"sliding window {window} shorter than the generation ({max_len} tokens): the native step "
                "attends to every cached token")
    for i, layer in enumerate(model.model.layers):
        for norm in (facts.attn_norm, facts.mlp_norm):
            if not _is_rms_norm(getattr(layer, norm, nn.Identity())):
                return f"layer {i}: {norm} is not an RMSNorm of the kind the native step computes"
        attn = getattr(layer, "self_attn", None)
        if attn is None or getattr(attn, "attn_logit_softcapping", None) or not hasattr(attn, "scaling"):
            return f"layer {i}: self_attn is not a plain llama-style attention"
        if facts.qk_norm and not all(_is_rms_norm(getattr(attn, n, nn.Identity())) for n in ("q_norm", "k_norm")):
            return f"layer {i}: self_attn.q_norm/k_norm are not RMSNorms"
    if not _is_rms_norm(model.model.norm):
        return "model.norm is not an RMSNorm"
    if type(model.model.embed_tokens) is not nn.Embedding:
        return f"the embedding is {type(model.model.embed_tokens).__name__}, not a plain nn.Embedding"
    return None
