"""The engine's KV cache: a ``transformers.StaticCache`` whose decode steps write at one shared slot.

HF's ``StaticLayer.update`` derives where to write from its own length counter on every call
(``arange`` + ``add`` + ``add_`` before the two ``index_copy_``), in every layer, every step. The engine
knows the slot once per step, so :class:`SlotLayer` takes it from one ``[1]`` tensor shared by all
layers: three fewer ops per layer per token (about 10 µs each layer on a 2-core EPYC). Everything
else — lazy allocation, the prefill, sliding-window layers — is HF's own code, unchanged.

Example:
    >>> import actlab
    >>> from actlab.engine.cache import make_cache
    >>> model, _ = actlab.load_model("random:tiny-llama")
    >>> type(make_cache(model, 64).layers[0]).__name__
    'SlotLayer'
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator

from torch import Tensor, nn
from transformers import StaticCache
from transformers.cache_utils import StaticLayer

__all__ = ["SlotLayer", "cache_argument", "make_cache"]

#: what a causal LM's ``forward`` calls its KV cache, newest name first: transformers 5.24 renamed
#: ``past_key_values`` to ``cache``; read from the signature, never from a version string
CACHE_ARGUMENTS: tuple[str, ...] = ("cache", "past_key_values")


class SlotLayer(StaticLayer):
    """A full-attention ``StaticLayer`` that, while ``slot`` is set, writes one-token steps at that slot.

    Outside :func:`decoding` (``slot`` None), and for any update of more than one token, it is HF's
    ``StaticLayer``. Inside, ``cumulative_length`` is not advanced per call; :func:`decoding` sets it
    when it exits, so the cache reads right afterwards (``get_seq_length``).
    """

    slot: Tensor | None = None

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        slot = self.slot
        if slot is None or key_states.shape[-2] != 1:
            return super().update(key_states, value_states, *args, **kwargs)
        self.keys.index_copy_(2, slot, key_states)  # keys: [batch, kv_heads, max_cache_len, head_dim]
        self.values.index_copy_(2, slot, value_states)
        return self.keys, self.values


@functools.cache
def cache_argument(cls: type) -> str | None:
    """The name under which ``cls.forward`` takes its KV cache (``cache`` or ``past_key_values``), or None.

    Example:
        >>> from transformers import LlamaForCausalLM
        >>> cache_argument(LlamaForCausalLM) in CACHE_ARGUMENTS
        True
    """
    params = inspect.signature(cls.forward).parameters
    return next((name for name in CACHE_ARGUMENTS if name in params), None)


@functools.cache
def check_model_class(cls: type) -> None:
    """Refuse, with a reason, model classes the engine cannot drive (checked once per class)."""
    params = inspect.signature(cls.forward).parameters
    missing = [p for p in ("position_ids", "logits_to_keep") if p not in params]
    if cache_argument(cls) is None:
        missing.insert(0, " or ".join(CACHE_ARGUMENTS))
    if missing:
        raise NotImplementedError(
            f"actlab.engine.generate needs a causal LM whose forward takes {', '.join(missing)}; "
            f"{cls.__name__} does not (use model.generate for it)"
        )
    if not getattr(cls, "_can_compile_fullgraph", False):
        raise NotImplementedError(
            f"{cls.__name__} does not support transformers.StaticCache, which actlab.engine.generate "
            "needs (use model.generate for it)"
        )


def make_cache(model: nn.Module, max_cache_len: int) -> StaticCache:
    """A static KV cache for ``model`` holding ``max_cache_len`` tokens, to reuse across calls.

    A ``transformers.StaticCache`` whose full-attention layers are :class:`SlotLayer`. Its tensors are
    allocated lazily on the first forward (batch size, dtype, device come from there); ``generate``
    resets it before use, so a bench can pass one cache to every repetition.

    Example:
        >>> import actlab
        >>> model, _ = actlab.load_model("random:tiny-llama")
        >>> cache = make_cache(model, 64)
    """
    check_model_class(type(model))
    cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
    # Exact type: subclasses (sliding window, hybrid) have update logic of their own.
    cache.layers = [SlotLayer(max_cache_len=lay.max_cache_len) if type(lay) is StaticLayer else lay for lay in cache.layers]
    return cache


def layer_lengths(cache: StaticCache) -> list[int]:
    """Slots of each layer of a static cache (sliding layers hold min(window, max_cache_len))."""
    return [layer.max_cache_len for layer in cache.layers]


def check_cache(cache: StaticCache, batch: int, total: int) -> None:
    """Refuse a reused cache too short (full-attention layers) or allocated for another batch size."""
    short = [
        layer.max_cache_len for layer in cache.layers
        if not getattr(layer, "is_sliding", False) and layer.max_cache_len < total
    ]
    if short:
        raise ValueError(f"cache holds {min(short)} tokens, this call needs {total}: make_cache(model, {total})")
    sizes = {layer.batch_size for layer in cache.layers if getattr(layer, "is_initialized", False)}
    if sizes and sizes != {batch}:
        raise ValueError(f"cache was allocated for batch size {sizes.pop()}, this call has {batch}")


@contextlib.contextmanager
def decoding(cache: StaticCache, slot: Tensor) -> Iterator[None]:
    """While inside, :class:`SlotLayer` layers write one-token steps at ``slot`` (``[1]`` long, bumped by
    the caller); on exit they are plain ``StaticLayer`` again, with their length set to ``slot + 1``.

    Only for full-attention layers that are initialised (after the prefill); others are left alone.
    """
    layers = [lay for lay in cache.layers if isinstance(lay, SlotLayer) and lay.is_initialized]
    for lay in layers:
        lay.slot = slot
    try:
        yield
    finally:
        for lay in layers:
            lay.slot = None
            lay.cumulative_length.fill_(int(slot) + 1)  # the last slot written
