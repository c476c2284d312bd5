"""The engine's static cache: slot layers, consistency after generation, plain StaticCache still accepted."""

from __future__ import annotations

import pytest
import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer

import actlab
from actlab.engine import generate, make_cache
from actlab.engine.cache import SlotLayer, decoding


def _prompt(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 500, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_full_attention_layers_become_slot_layers_sliding_ones_stay():
    model, _ = actlab.load_model("random:tiny-gemma2")  # one sliding, one full layer
    kinds = [type(layer) for layer in make_cache(model, 32).layers]
    assert kinds == [StaticSlidingWindowLayer, SlotLayer]


def test_cache_reads_right_after_generation(tiny_llama):
    model, _ = tiny_llama
    cache = make_cache(model, 30)
    out = generate(model, _prompt(1, 8), 12, cache=cache)
    # the last token is chosen, never fed back: prompt + 11 tokens are in the cache
    assert int(cache.get_seq_length()) == 8 + 11 == out.tokens.shape[1] - 1
    assert all(layer.slot is None for layer in cache.layers)


def test_plain_transformers_static_cache_is_accepted(tiny_llama):
    model, _ = tiny_llama
    ids = _prompt(2, 6, seed=1)
    plain = StaticCache(config=model.config, max_cache_len=20)
    assert type(plain.layers[0]) is StaticLayer
    assert torch.equal(generate(model, ids, 10, cache=plain).tokens, generate(model, ids, 10).tokens)


def test_decoding_restores_layers_on_error(tiny_llama):
    model, _ = tiny_llama
    cache = make_cache(model, 16)
    generate(model, _prompt(1, 4), 2, cache=cache)  # allocates the layers
    slot = torch.tensor([6])
    with pytest.raises(RuntimeError, match="boom"):
        with decoding(cache, slot):
            assert all(layer.slot is slot for layer in cache.layers)
            raise RuntimeError("boom")
    assert all(layer.slot is None for layer in cache.layers)
    assert int(cache.get_seq_length()) == 7
