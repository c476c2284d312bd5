"""Weight bytes read per decoded token, and the memory-traffic ceiling of a sparsity plan.

At batch 1 a decode step reads every linear weight once; on CPU that traffic, not arithmetic, sets the
time. A sparse-input linear that keeps a fraction ``f`` of its input rows reads ``f`` of its weight, so
the best a plan can do is

    ceiling time = dense time × (bytes still read / bytes read dense)

What is counted (:mod:`actlab.models.weight_bytes`, the one definition, re-exported here): every
``nn.Linear`` (and GPT-2's ``Conv1D``) weight, its bias in full, and the LM head; a tied embedding counts
once, as the LM head (the embedding lookup reads one row). Not counted: norms, the embedding lookup, the
KV cache (small next to the weights at short contexts).

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

from torch import nn

# the counting (tied weights, biases, the LM head) has one home, shared with the sparsity metrics
from actlab.models.weight_bytes import bytes_skipped_frac, linear_bytes, linear_bytes_by_module, read_bytes

__all__ = [
    "bytes_skipped_frac",
    "ceiling_seconds",
    "ceiling_speedup",
    "ceiling_from_skipped",
    "linear_bytes",
    "linear_bytes_by_module",
    "read_bytes",
]


def ceiling_from_skipped(skipped_frac: float) -> float:
    """The ceiling speed-up for a plan that skips ``skipped_frac`` of the weight bytes: ``1 / (1 - s)``.

    Example:
        >>> ceiling_from_skipped(0.5)
        2.0
    """
    return float("inf") if skipped_frac >= 1.0 else 1.0 / (1.0 - skipped_frac)


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
