"""Loading with accelerate's device_map: layers left on disk, same logits, weights readable outside a forward."""

from __future__ import annotations

import pytest
import torch

import actlab
from actlab.models.adapters import linear_weight
from actlab.models.load import ModelLoadError
from actlab.models.offload import is_offloaded, onloaded, tensor_of


@pytest.fixture
def saved(tiny_llama_saved):
    return tiny_llama_saved


def test_disk_device_map_gives_the_same_logits(saved):
    model, path = saved
    off, _ = actlab.load_model(path, device_map="disk")
    assert is_offloaded(off) and not is_offloaded(model)
    assert off.model.layers[0].mlp.down_proj.weight.is_meta  # not in memory
    assert not off.model.embed_tokens.weight.is_meta  # the rest is on the CPU
    ids = torch.randint(3, 500, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(off(ids).logits, model(ids).logits)


def test_other_device_maps_go_to_transformers(saved):
    model, path = saved
    off, _ = actlab.load_model(path, device_map={"model.embed_tokens": "cpu", "model.norm": "cpu",
                                                 "model.rotary_emb": "cpu", "lm_head": "cpu",
                                                 "model.layers.0": "cpu", "model.layers.1": "disk"})
    ids = torch.randint(3, 500, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(off(ids).logits, model(ids).logits)


def test_offloaded_weights_are_readable_and_onloaded_drops_them(saved):
    model, path = saved
    off, _ = actlab.load_model(path, device_map="disk")
    down = off.model.layers[1].mlp.down_proj
    assert torch.equal(linear_weight(down), model.model.layers[1].mlp.down_proj.weight)
    with onloaded(off.model.layers[1]) as layer:
        assert not any(p.is_meta for p in layer.parameters())
        assert torch.equal(layer.mlp.down_proj.weight, model.model.layers[1].mlp.down_proj.weight)
    assert all(p.is_meta for p in off.model.layers[1].parameters())


def test_meta_weight_without_a_store_is_a_clear_error():
    with torch.device("meta"):
        lin = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="meta device and nothing can load it"):
        tensor_of(lin, "weight")


def test_random_with_device_map_is_refused():
    with pytest.raises(ModelLoadError, match="save the model"):
        actlab.load_model("random:tiny-llama", device_map="disk")
