"""Weight bytes read per decoded token, and the memory-traffic ceiling of a sparsity plan.

At batch 1 a decode step reads every linear weight once; on CPU that traffic, not arithmetic, sets the
time. A sparse-input linear that keeps a fraction ``f`` of its input rows reads ``f`` of its weight, so
the best a plan can do is

    ceiling time = dense time × (bytes still read / bytes read dense)

What is counted: every ``nn.Linear`` (and GPT-2's ``Conv1D``) weight, its bias in full, and the LM head;
a tied embedding counts once, as the LM head (the embedding lookup reads one row). Not counted: norms,
the embedding lookup, the KV cache (small next to the weights at short contexts).

Compute these on the dense model (before ``actlab.apply_``): module paths are those of the dense Linears,
which is what a plan's per-linear fractions name.

Example:
    >>> import actlab
    >>> from actlab.engine.traffic import ceiling_speedup, linear_bytes
    >>> model, _ = actlab.load_model("random:tiny-llama")
    >>> linear_bytes(model) > 0
    True
    >>> ceiling_speedup(model, {})  # nothing skipped
    1.0
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

__all__ = ["ceiling_seconds", "ceiling_speedup", "linear_bytes", "linear_bytes_by_module", "read_bytes"]


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
    kinds = _linear_like()
    seen: set[int] = set()
    out: dict[str, tuple[int, int]] = {}
    for path, module in model.named_modules():
        if isinstance(module, kinds) and module.weight.data_ptr() not in seen:
            seen.add(module.weight.data_ptr())
            out[path] = (_nbytes(module.weight), _nbytes(getattr(module, "bias", None)))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and head.weight.data_ptr() not in seen:
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


def ceiling_speedup(model: nn.Module, kept_fraction_by_linear: Mapping[str, float]) -> float:
    """Best decode speed-up a plan can give if time follows weight bytes: dense bytes / bytes still read.

    Args:
        model: the dense model.
        kept_fraction_by_linear: module path of a linear -> expected fraction of its input rows (hence
            weight rows) read per token; absent linears count as dense.

    Example:
        >>> import actlab
        >>> model, _ = actlab.load_model("random:tiny-llama")
        >>> downs = {f"model.layers.{i}.mlp.down_proj": 0.5 for i in range(2)}
        >>> round(ceiling_speedup(model, downs), 3)
        1.083
    """
    still = read_bytes(model, kept_fraction_by_linear)
    return float("inf") if still == 0 else linear_bytes(model) / still


def ceiling_seconds(
    dense_seconds: float,
    model: nn.Module,
    kept_fraction_by_linear: Mapping[str, float],
    overhead_seconds: float = 0.0,
) -> float:
    """The memory-traffic ceiling as a time: ``dense_seconds × bytes still read / bytes read dense``.

    ``overhead_seconds``: the part of a dense step that is not weight traffic (Python/framework cost per
    token, see ``benchmarks/engine_overhead.py``); sparsity cannot shrink it, so only the rest scales:
    ``overhead + (dense − overhead) × bytes ratio``. Default 0: the plain ceiling.

    Example:
        >>> import actlab
        >>> model, _ = actlab.load_model("random:tiny-llama")
        >>> ceiling_seconds(1.0, model, {}, overhead_seconds=0.2)
        1.0
    """
    if not 0.0 <= overhead_seconds <= dense_seconds:
        raise ValueError(f"overhead_seconds must be in [0, dense_seconds], got {overhead_seconds}")
    traffic = dense_seconds - overhead_seconds
    return overhead_seconds + traffic / ceiling_speedup(model, kept_fraction_by_linear)
