"""Interventions on neurons against weight edits and brute force, on a tiny random Llama."""

from __future__ import annotations

import pytest
import torch

from actlab.activations.sites import SiteError
from actlab.interp.ablate import MODES, InterventionError, ablation_effect, clean_pass, intervene, site_means


def _ids(n: int = 2, t: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 259, (n, t), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_zero_ablation_equals_zeroing_the_down_projection_column(tiny_llama):
    model, _ = tiny_llama
    ids = _ids()
    clean = _logits(model, ids)
    with intervene(model, "layers.1.mlp.down_in", [5, 17], mode="zero"):
        ablated = _logits(model, ids)
    down = model.model.layers[1].mlp.down_proj
    with torch.no_grad():
        down.weight[:, [5, 17]] = 0.0
    edited = _logits(model, ids)
    assert torch.equal(ablated, edited)  # the same products and sums: exact, not close
    assert not torch.equal(ablated, clean)


def test_scale_one_is_a_no_op_and_hooks_go_away(tiny_llama):
    model, _ = tiny_llama
    ids = _ids()
    before, hooks = _logits(model, ids), _hook_count(model)
    with intervene(model, "layers.0.mlp.act_out", [0, 3, 9], mode="scale", value=1.0):
        assert _hook_count(model) == hooks + 1
        same = _logits(model, ids)
    assert torch.equal(before, same)
    assert _hook_count(model) == hooks


def test_modes_do_what_they_say(tiny_llama):
    model, _ = tiny_llama
    ids = _ids(1, 8)
    seen = {}

    def run(mode, **kw):
        import actlab

        with intervene(model, "layers.0.mlp.down_in", [2, 4], mode=mode, **kw):
            with actlab.capture(model, sites="layers.0.mlp.down_in") as cap:
                _logits(model, ids)
        return cap.tensors["layers.0.mlp.down_in"]

    import actlab

    with actlab.capture(model, sites="layers.0.mlp.down_in") as cap:
        _logits(model, ids)
    x = cap.tensors["layers.0.mlp.down_in"]
    seen["clamp"] = run("clamp", value=[1.5, -2.0])
    seen["scale"] = run("scale", value=3.0)
    seen["mean"] = run("mean", means=torch.tensor([0.25, 0.5]))
    assert torch.equal(seen["clamp"][..., 2], torch.full_like(x[..., 2], 1.5))
    assert torch.equal(seen["clamp"][..., 4], torch.full_like(x[..., 4], -2.0))
    torch.testing.assert_close(seen["scale"][..., [2, 4]], 3.0 * x[..., [2, 4]])
    assert torch.equal(seen["mean"][..., 4], torch.full_like(x[..., 4], 0.5))
    others = [i for i in range(x.shape[-1]) if i not in (2, 4)]
    assert torch.equal(seen["scale"][..., others], x[..., others])  # other channels untouched
    assert set(MODES) >= {"zero", "mean", "clamp", "scale"}


def test_site_means_equal_brute_force(tiny_llama):
    import actlab

    model, _ = tiny_llama
    ids = _ids(3, 10)
    with actlab.capture(model, sites="layers.1.mlp.act_out") as cap:
        _logits(model, ids)
    x = cap.tensors["layers.1.mlp.act_out"]  # [3, 10, d_ff]
    mu = site_means(model, ids, "layers.1.mlp.act_out", [1, 7], batch_size=2)
    torch.testing.assert_close(mu, x[..., [1, 7]].reshape(-1, 2).double().mean(0).float())


def test_hooks_removed_after_an_exception(tiny_llama):
    model, _ = tiny_llama
    hooks = _hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(model, "layers.1.resid_out", [0], mode="zero"):
            raise RuntimeError("boom")
    assert _hook_count(model) == hooks
    with pytest.raises((IndexError, RuntimeError)):
        with intervene(model, "layers.1.mlp.down_in", [0], mode="zero"):
            model(torch.full((1, 4), 10_000))  # out of vocabulary: the forward raises with the hook on
    assert _hook_count(model) == hooks


@pytest.mark.parametrize("neurons, match", [([128], r"outside layers\.0\.mlp\.down_in \(0\.\.127\)"),
                                             ([-1], "outside"), ([], "non-empty"), ([1.5], "integer")])
def test_bad_neuron_index(tiny_llama, neurons, match):
    model, _ = tiny_llama
    hooks = _hook_count(model)
    with pytest.raises(InterventionError, match=match):
        with intervene(model, "layers.0.mlp.down_in", neurons):
            pass
    assert _hook_count(model) == hooks


def test_bad_site_mode_and_operands(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(SiteError, match="no site matches"):
        with intervene(model, "layers.9.mlp.down_in", [0]):
            pass
    with pytest.raises(SiteError, match="names 2 sites"):
        with intervene(model, "mlp.down_in", [0]):
            pass
    with pytest.raises(InterventionError, match="unknown intervention mode 'halve'"):
        with intervene(model, "layers.0.mlp.down_in", [0], mode="halve"):
            pass
    with pytest.raises(InterventionError, match="needs value"):
        with intervene(model, "layers.0.mlp.down_in", [0], mode="clamp"):
            pass
    with pytest.raises(InterventionError, match="one per neuron"):
        with intervene(model, "layers.0.mlp.down_in", [0, 1, 2], mode="scale", value=[1.0, 2.0]):
            pass


def test_ablation_effect_against_brute_force(tiny_llama):
    model, _ = tiny_llama
    ids = _ids(3, 16)
    eff = ablation_effect(model, ids, "layers.1.mlp.down_in", [3, 8], batch_size=2, top_tokens=5)
    lp_clean = torch.log_softmax(_logits(model, ids)[:, :-1].double(), -1)
    with intervene(model, "layers.1.mlp.down_in", [3, 8]):
        lp_abl = torch.log_softmax(_logits(model, ids)[:, :-1].double(), -1)
    tgt = ids[:, 1:, None]
    loss_c, loss_a = -lp_clean.gather(2, tgt).mean(), -lp_abl.gather(2, tgt).mean()
    assert eff.loss_clean == pytest.approx(float(loss_c), abs=1e-5)
    assert eff.loss_ablated == pytest.approx(float(loss_a), abs=1e-5)
    assert eff.delta_loss == pytest.approx(float(loss_a - loss_c), abs=1e-5)
    assert eff.delta_loss != 0.0 and eff.tokens == 3 * 15
    delta = (lp_abl - lp_clean).reshape(-1, lp_clean.shape[-1]).mean(0)
    for got, want in ((eff.tokens_suppressed, -(-delta).topk(5).values), (eff.tokens_promoted, delta.topk(5).values),
                      (eff.tokens_most_affected, delta[delta.abs().topk(5).indices])):
        ids_, vals = [t for t, _ in got], torch.tensor([v for _, v in got], dtype=torch.float64)
        torch.testing.assert_close(vals, want, rtol=1e-4, atol=1e-6)  # values, so near-ties may swap ids
        torch.testing.assert_close(delta[ids_], vals, rtol=1e-4, atol=1e-6)
    d = eff.to_dict()
    assert d["neurons"] == [3, 8] and len(d["tokens_most_affected"]) == 5
    # scale 1 changes nothing; mean mode computes its means itself
    assert ablation_effect(model, ids, "layers.1.mlp.down_in", [3], mode="scale", value=1.0).delta_loss == 0.0
    assert ablation_effect(model, ids, "layers.1.mlp.down_in", [3], mode="mean").delta_loss != 0.0


def test_a_shared_clean_pass_gives_the_same_effects(tiny_llama):
    model, _ = tiny_llama
    ids = _ids(3, 16)
    clean = clean_pass(model, ids, batch_size=2)
    for neuron in (3, 8):
        alone = ablation_effect(model, ids, "layers.1.mlp.down_in", [neuron], top_tokens=5)
        shared = ablation_effect(model, ids, "layers.1.mlp.down_in", [neuron], top_tokens=5, clean=clean)
        assert shared.delta_loss == pytest.approx(alone.delta_loss, abs=1e-9) and shared.delta_loss != 0.0
        assert shared.loss_clean == pytest.approx(alone.loss_clean, abs=1e-9)
        assert [t for t, _ in shared.tokens_most_affected] == [t for t, _ in alone.tokens_most_affected]
    with pytest.raises(InterventionError, match="other windows"):
        ablation_effect(model, _ids(3, 16, seed=1), "layers.1.mlp.down_in", [3], clean=clean)


def test_ablation_effect_bad_windows(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(InterventionError, match="windows must be"):
        ablation_effect(model, torch.zeros(2, 1, dtype=torch.long), "layers.0.mlp.down_in", [0])
    with pytest.raises(InterventionError, match="outside"):
        ablation_effect(model, _ids(), "layers.0.mlp.down_in", [999], mode="mean")
