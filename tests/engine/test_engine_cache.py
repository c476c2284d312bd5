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


class _NewNames:
    _can_compile_fullgraph = True

    def forward(self, input_ids=None, position_ids=None, cache=None, logits_to_keep=0):  # transformers >= 5.24
        raise NotImplementedError


class _OldNames(_NewNames):
    def forward(self, input_ids=None, position_ids=None, past_key_values=None, logits_to_keep=0):  # < 5.24
        raise NotImplementedError


class _NoCache(_NewNames):
    def forward(self, input_ids=None, position_ids=None, logits_to_keep=0):
        raise NotImplementedError


def test_cache_argument_is_read_from_the_signature():
    from actlab.engine.cache import cache_argument, check_model_class

    assert cache_argument(_NewNames) == "cache"
    assert cache_argument(_OldNames) == "past_key_values"
    assert cache_argument(_NoCache) is None
    check_model_class(_NewNames)
    check_model_class(_OldNames)
    with pytest.raises(NotImplementedError, match="cache or past_key_values"):
        check_model_class(_NoCache)


def test_engine_matches_hf_generate_on_the_installed_transformers(tiny_llama):
    """Whatever transformers is installed, the engine drives it and agrees with HF's own greedy decode."""
    model, _ = tiny_llama
    ids = _prompt(1, 6, seed=3)
    ours = generate(model, ids, 10).tokens
    with torch.inference_mode():
        theirs = model.generate(ids, max_new_tokens=10, do_sample=False, min_new_tokens=10, pad_token_id=0)
    assert torch.equal(ours, theirs)
