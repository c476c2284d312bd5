"""Weight bytes a decoded token reads: the one definition behind ``bytes_skipped_frac`` and the ceiling.

At batch 1 a decode step reads every linear weight once; on CPU that traffic sets the time. What is
counted: every ``nn.Linear`` (and GPT-2's ``Conv1D``) weight, its bias in full, and the LM head. A weight
shared by several modules counts once: a tied embedding (``tie_word_embeddings``, embedding = LM head)
counts once, as the LM head, since the embedding lookup reads a single row. Not counted: norms, the
embedding lookup, the KV cache (small next to the weights at short contexts).

``bytes_skipped_frac`` = weight bytes a token need not read / weight bytes a dense step reads. The sparsity
metrics (``plan.metrics``, ``actlab eval``), ``actlab bench`` and ``actlab optimize`` all call
:func:`bytes_skipped_frac`, so one plan has one value everywhere. Module paths are those of the dense
model's linears (what a plan's consumers name); wrappers (PEFT, ``torch.compile``) are seen through.

Example:
    >>> import actlab
    >>> model, _ = actlab.load_model("random:tiny-llama")
    >>> downs = {f"model.layers.{i}.mlp.down_proj": 0.5 for i in range(2)}
    >>> round(bytes_skipped_frac(model, downs), 4)
    0.0769
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

__all__ = ["bytes_skipped_frac", "linear_bytes", "linear_bytes_by_module", "read_bytes"]


def _linear_like() -> tuple[type, ...]:
    kinds: tuple[type, ...] = (nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D

        kinds += (Conv1D,)
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    return kinds


def _nbytes(t: Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def _key(t: Tensor) -> int:
    """Identity of a weight's memory: tied Parameters share it (meta tensors have none: their object)."""
    return t.data_ptr() or id(t)


def _unwrap(model: nn.Module) -> nn.Module:
    try:
        from actlab.models.wrappers import unwrap
    except ImportError:  # pragma: no cover - part of actlab
        return model
    return unwrap(model)[0]


def linear_bytes_by_module(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``module path -> (weight bytes, bias bytes)`` for every linear read in a decode step.

    A weight shared by several modules (tied LM head and embedding, or any tying) is listed once, under
    the first linear that holds it; an output embedding that is not a Linear is added under its path.

    Example:
        >>> import actlab
        >>> model, _ = actlab.load_model("random:tiny-llama")
        >>> linear_bytes_by_module(model)["model.layers.0.mlp.down_proj"]
        (32768, 0)
    """
    model = _unwrap(model)
    kinds = _linear_like()
    seen: set[int] = set()
    out: dict[str, tuple[int, int]] = {}
    for path, module in model.named_modules():
        if isinstance(module, kinds) and _key(module.weight) not in seen:
            seen.add(_key(module.weight))
            out[path] = (_nbytes(module.weight), _nbytes(getattr(module, "bias", None)))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and _key(head.weight) not in seen:
        path = next(p for p, m in model.named_modules() if m is head)
        out[path] = (_nbytes(head.weight), _nbytes(getattr(head, "bias", None)))
    return out


def linear_bytes(model: nn.Module) -> int:
    """Bytes of linear weights (and biases) a dense decode step reads, LM head included."""
    return sum(w + b for w, b in linear_bytes_by_module(model).values())


def read_bytes(model: nn.Module, kept_fraction_by_linear: Mapping[str, float]) -> float:
    """Bytes a decode step reads when linear ``path`` reads ``kept_fraction_by_linear[path]`` of its weight.

    Linears absent from the mapping are read in full; biases always are.

    Raises:
        KeyError: a path that names no counted linear (a typo would otherwise silently count as dense).
        ValueError: a fraction outside [0, 1].
    """
    sizes = linear_bytes_by_module(model)
    # a PEFT LoRA layer keeps the original Linear as its base_layer: the plan names the outer path
    kept_fraction_by_linear = {
        f"{p}.base_layer" if p not in sizes and f"{p}.base_layer" in sizes else p: f
        for p, f in kept_fraction_by_linear.items()
    }
    unknown = sorted(set(kept_fraction_by_linear) - set(sizes))
    if unknown:
        sample = ", ".join(list(sizes)[:3])
        raise KeyError(f"not a linear of this model (or a tied duplicate): {unknown[:5]}; paths look like {sample}")
    total = 0.0
    for path, (weight, bias) in sizes.items():
        kept = float(kept_fraction_by_linear.get(path, 1.0))
        if not 0.0 <= kept <= 1.0:
            raise ValueError(f"kept fraction of {path} must be in [0, 1], got {kept}")
        total += weight * kept + bias
    return total


def bytes_skipped_frac(
    model: nn.Module, skipped_fraction_by_linear: Mapping[str, float], extra_read_bytes: float = 0.0
) -> float:
    """Fraction of a dense decode step's weight bytes a token skips.

    Args:
        skipped_fraction_by_linear: module path of a linear -> fraction of its weight a token does not
            read (absent linears are read in full).
        extra_read_bytes: bytes the plan makes a token read on top (a rotated input's ``x Q`` product),
            subtracted from the savings.
    """
    dense = linear_bytes(model)
    if dense == 0:
        return 0.0
    still = read_bytes(model, {p: 1.0 - float(s) for p, s in skipped_fraction_by_linear.items()})
    return (dense - still - extra_read_bytes) / dense
