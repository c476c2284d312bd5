"""LM-head decoding and the logit lens against brute force on tiny random models."""

from __future__ import annotations

import pytest
import torch

import actlab
from actlab.interp.lm_head import LMHeadError, decode_directions, decode_neurons, logit_lens, norm_linear_part


def _randomise(norm: torch.nn.Module, seed: int = 0) -> None:
    """Random init leaves norm weights at 1 (or 0 for Gemma), which would hide a missing gain."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)


def _check(nt, scores: torch.Tensor, k: int) -> None:
    top, bot = scores.topk(k, dim=1), scores.topk(k, dim=1, largest=False)
    assert torch.equal(nt.top_ids, top.indices) and torch.equal(nt.bottom_ids, bot.indices)
    torch.testing.assert_close(nt.top_scores, top.values, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(nt.bottom_scores, bot.values, rtol=1e-4, atol=1e-5)


def test_decode_neurons_llama_equals_brute_force(tiny_llama):
    model, tok = tiny_llama
    _randomise(model.model.norm)
    w_down = model.model.layers[1].mlp.down_proj.weight  # [d_model, d_ff]
    scores = (w_down.T * model.model.norm.weight) @ model.lm_head.weight.T  # RMS gain, no division
    nt = decode_neurons(model, 1, k=7)
    assert nt.top_ids.shape == (w_down.shape[1], 7)
    _check(nt, scores.detach(), 7)
    some = decode_neurons(model, 1, k=7, neurons=[5, 2])
    assert torch.equal(some.top_ids[0], nt.top_ids[5]) and some.row(2) == 1
    top, bottom = some.tokens(tok, 2)
    assert [t for t, _ in top] == [tok.decode([t]) for t in nt.top_ids[2].tolist()]
    assert [t for t, _ in bottom] == [tok.decode([t]) for t in nt.bottom_ids[2].tolist()]
    assert [s for _, s in top] == pytest.approx(nt.top_scores[2].tolist(), rel=1e-5) and top[0][1] >= top[-1][1]


def test_decode_gpt2_layernorm_tied_conv1d():
    model, _ = actlab.load_model("random:tiny-gpt2")  # LayerNorm, Conv1D weights, head tied to wte
    ln = model.transformer.ln_f
    _randomise(ln)
    w = model.transformer.h[0].mlp.c_proj.weight  # Conv1D: [d_ff, d_model], row i = neuron i's direction
    d = w - w.mean(1, keepdim=True)  # LayerNorm removes the mean; its bias is the same for every neuron
    scores = (d * ln.weight) @ model.transformer.wte.weight.T
    _check(decode_neurons(model, 0, k=5), scores.detach(), 5)


def test_tied_llama_head_and_lens():
    import transformers

    from actlab.models.presets import PRESETS

    cfg = transformers.LlamaConfig(**{**PRESETS["tiny-llama"][1], "tie_word_embeddings": True})
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    _randomise(model.model.norm)
    scores = (model.model.layers[0].mlp.down_proj.weight.T * model.model.norm.weight) @ model.model.embed_tokens.weight.T
    _check(decode_neurons(model, 0, k=4), scores.detach(), 4)
    _check_lens_last_layer(model)


def _check_lens_last_layer(model) -> None:
    ids = torch.randint(3, 500, (12,), generator=torch.Generator().manual_seed(3))
    lens = logit_lens(model, ids, k=5)
    with torch.no_grad():
        probs = model(input_ids=ids[None]).logits[0].float().softmax(-1)
    top = probs.topk(5, dim=-1)
    n_layers = model.config.num_hidden_layers
    assert lens.layers == list(range(n_layers)) and lens.top_ids.shape == (n_layers, 12, 5)
    assert torch.equal(lens.top_ids[-1], top.indices)
    torch.testing.assert_close(lens.top_probs[-1], top.values, rtol=1e-4, atol=1e-6)
    assert torch.equal(lens.final_ids, probs.argmax(-1)) and bool((lens.final_rank[-1] == 0).all())
    torch.testing.assert_close(lens.final_prob[-1], top.values[:, 0], rtol=1e-4, atol=1e-6)
    assert bool((lens.final_rank >= 0).all()) and bool((lens.final_prob <= 1).all())


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2", "tiny-gemma2"])
def test_logit_lens_last_layer_is_the_models_logits(preset):
    model, _ = actlab.load_model(f"random:{preset}")
    _check_lens_last_layer(model)


def test_logit_lens_layers_and_tokens(tiny_llama):
    model, tok = tiny_llama
    lens = logit_lens(model, torch.tensor([[5, 6, 7, 8]]), layers=[0], k=3)
    assert lens.layers == [0] and lens.top_ids.shape == (1, 4, 3)
    assert lens.tokens(tok, 0, 2) == [tok.decode([t]) for t in lens.top_ids[0, 2].tolist()]


def test_norm_linear_part_gemma_gain():
    model, _ = actlab.load_model("random:tiny-gemma2")
    norm = model.model.norm
    _randomise(norm)
    d = torch.randn(3, norm.weight.shape[0])
    torch.testing.assert_close(norm_linear_part(norm, d.shape[1])(d), d * (1 + norm.weight.detach()))
    torch.testing.assert_close(norm_linear_part(None, 4)(d[:, :4]), d[:, :4])


def test_errors(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(LMHeadError, match="layer 2 out of range"):
        decode_neurons(model, 2)
    with pytest.raises(LMHeadError, match="out of range"):
        decode_neurons(model, -1)
    with pytest.raises(LMHeadError, match="neurons"):
        decode_neurons(model, 0, neurons=[128])
    with pytest.raises(LMHeadError, match="not decoded"):
        decode_neurons(model, 0, neurons=[1]).row(3)
    with pytest.raises(LMHeadError, match="k must"):
        decode_neurons(model, 0, k=0)
    with pytest.raises(LMHeadError, match="directions"):
        decode_directions(model, torch.randn(2, 3))
    with pytest.raises(LMHeadError, match="layer 9 out of range"):
        logit_lens(model, torch.tensor([1, 2, 3]), layers=[9])
    with pytest.raises(LMHeadError, match="one non-empty sequence"):
        logit_lens(model, torch.ones(2, 3, dtype=torch.long))


def test_decode_site_directions_maps_each_kind_to_the_residual_stream(tiny_llama):
    from actlab.interp.lm_head import decode_site_directions

    model, _ = tiny_llama
    _randomise(model.model.norm)
    d_model = model.model.norm.weight.shape[0]
    resid = torch.randn(4, d_model)
    for got, want in zip(decode_site_directions(model, "resid_out", 1, resid, k=6),
                         decode_directions(model, resid, k=6), strict=True):
        assert torch.equal(got, want)
    # one-hot directions in the MLP's hidden space are the neurons themselves: decode_neurons' answer
    nt = decode_neurons(model, 1, k=6, neurons=[3, 9])
    hot = torch.zeros(2, model.model.layers[1].mlp.down_proj.weight.shape[1])
    hot[0, 3] = hot[1, 9] = 1.0
    for kind in ("mlp.act_out", "mlp.down_in"):
        top_ids, top_s, bot_ids, _ = decode_site_directions(model, kind, 1, hot, k=6)
        assert torch.equal(top_ids, nt.top_ids) and torch.equal(bot_ids, nt.bottom_ids)
        torch.testing.assert_close(top_s, nt.top_scores)
    assert decode_site_directions(model, "attn.qkv_in", 1, resid, k=6) is None  # no map to the stream
    with pytest.raises(LMHeadError, match="must be"):
        decode_site_directions(model, "mlp.down_in", 1, resid, k=6)  # d_model wide, not d_ff
    with pytest.raises(LMHeadError, match="layer 5 out of range"):
        decode_site_directions(model, "resid_out", 5, resid)
