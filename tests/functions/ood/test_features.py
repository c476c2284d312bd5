"""Features at a site: a classifier's head input (through capture), a module's input or output, and an LM's
pooled residual stream on random:tiny-llama (shape, pad handling, last-token pooling)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import actlab
from actlab.activations.sites import SiteError
from actlab.functions.ood import (
    OODError,
    classifier_features,
    find_head,
    lm_features,
    module_features,
    pool_sequence,
)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_classifier_features_are_the_heads_input_and_logits():
    net, x = _net(), torch.randn(10, 6)
    f = classifier_features(net, x, batch_size=3)
    assert f.head_path == "4" and f.head is net[4]
    with torch.no_grad():
        torch.testing.assert_close(f.features, net[:4](x))
        torch.testing.assert_close(f.logits, net(x))
    assert _no_hooks(net)


def test_module_features_read_any_module_either_side():
    net, x = _net(), torch.randn(5, 6)
    with torch.no_grad():
        torch.testing.assert_close(module_features(net, x, "1", "output"), net[:2](x))
        torch.testing.assert_close(module_features(net, x, "2", "input"), net[:2](x))


def test_feature_errors_name_the_fix():
    net = _net()
    with pytest.raises(OODError, match="named_modules"):
        module_features(net, torch.randn(2, 6), "9")
    with pytest.raises(OODError, match="not an nn.Linear"):
        classifier_features(net, torch.randn(2, 6), head="3")
    with pytest.raises(OODError, match="head='<module path>'"):
        find_head(nn.Sequential(nn.ReLU()))
    with pytest.raises(OODError, match="direction"):
        module_features(net, torch.randn(2, 6), "1", "both")
    assert _no_hooks(net)


def test_pool_sequence_by_hand():
    x = torch.arange(12.0).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    torch.testing.assert_close(pool_sequence(x, mask, "mean"), torch.tensor([[1.0, 2.0], [9.0, 10.0]]))
    torch.testing.assert_close(pool_sequence(x, mask, "last"), torch.tensor([[2.0, 3.0], [10.0, 11.0]]))
    with pytest.raises(OODError, match="all padding"):
        pool_sequence(x, torch.tensor([[0, 0, 0], [1, 1, 1]]))
    with pytest.raises(OODError, match="unknown pool"):
        pool_sequence(x, mask, "max")


def _resid(model, ids, layer):
    """The layer's residual stream on one unpadded sequence, by hand through capture."""
    with torch.inference_mode(), actlab.capture(model, sites=f"layers.{layer}.resid_out") as cap:
        model(input_ids=ids[None], use_cache=False)
    return cap.tensors[f"layers.{layer}.resid_out"][0].float()  # [T, d]


def test_lm_features_pool_over_real_tokens_whatever_the_batch(tiny_llama):
    model, tok = tiny_llama
    texts = ["a short one", "a much longer text than the first, padded", "mid length"]
    n_layers = model.config.num_hidden_layers
    d = model.config.hidden_size
    mean = lm_features(model, texts, tok, site=f"layers.{n_layers - 1}.resid_out", batch_size=3)
    assert mean.shape == (3, d) and mean.dtype == torch.float32
    # the default site is the last layer's residual stream
    torch.testing.assert_close(lm_features(model, texts, tok, batch_size=2), mean, rtol=1e-4, atol=1e-5)
    last = lm_features(model, texts, tok, site="layers.0.resid_out", pool="last", batch_size=3)
    for i, t in enumerate(texts):
        ids = torch.tensor(tok(t)["input_ids"])
        torch.testing.assert_close(mean[i], _resid(model, ids, n_layers - 1).mean(dim=0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(last[i], _resid(model, ids, 0)[-1], rtol=1e-4, atol=1e-5)
    assert _no_hooks(model)


def test_lm_features_of_token_ids_with_left_padding(tiny_llama):
    model, _ = tiny_llama
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(3, 250, (7,), generator=g), torch.randint(3, 250, (4,), generator=g)
    ids = torch.zeros(2, 7, dtype=torch.long)
    mask = torch.zeros(2, 7, dtype=torch.long)
    ids[0], mask[0] = a, 1
    ids[1, 3:], mask[1, 3:] = b, 1  # left-padded with pad id 0
    got = lm_features(model, ids, attention_mask=mask, site="layers.1.resid_out", pool="last")
    torch.testing.assert_close(got[1], _resid(model, b, 1)[-1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[0], _resid(model, a, 1)[-1], rtol=1e-4, atol=1e-5)


def test_lm_feature_errors(tiny_llama):
    model, tok = tiny_llama
    with pytest.raises(OODError, match="tokenizer="):
        lm_features(model, ["x"])
    with pytest.raises(OODError, match="no tokens"):
        lm_features(model, ["x", ""], tok)
    with pytest.raises(OODError, match="list of texts"):
        lm_features(model, "x", tok)
    with pytest.raises(OODError, match="unknown pool"):
        lm_features(model, ["x"], tok, pool="max")
    with pytest.raises(SiteError):
        lm_features(model, ["x"], tok, site="resid_out")  # every layer: name one
