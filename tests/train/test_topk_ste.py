"""topk-ste: Q-Sparse's per-token top-k at linear inputs with a straight-through gradient, as a topk plan."""

from __future__ import annotations

import json

import pytest
import torch
from objective_helpers import drive, grads_only_in_lora, one_step, windows

import actlab
from actlab.models.wrappers import unwrap
from actlab.sparsity.apply import OWNER, masked_modules
from actlab.sparsity.fingerprint import model_fingerprint
from actlab.train import TopKSteConfig, TrainError, config_from_dict, handler_for

pytest.importorskip("peft")


def test_config_round_trips_through_json():
    cfg = TopKSteConfig(sparsity=0.7, sites=("attn.o_in", "mlp.down_in"), adapter="full")
    assert config_from_dict(cfg.to_dict()) == cfg
    assert TopKSteConfig(sites="mlp.down_in").sites == ("mlp.down_in",)
    assert (TopKSteConfig().sparsity, TopKSteConfig().sites) == (0.5, ())


@pytest.mark.parametrize("fields, words", [
    (dict(sparsity=1.0), r"sparsity must be a number in \[0, 1\)"),
    (dict(sparsity=-0.1), r"sparsity must be a number in \[0, 1\)"),
    (dict(sparsity="half"), r"sparsity must be a number in \[0, 1\)"),
    (dict(sites=("mlp.act_out",)), "unknown site kind"),
])
def test_bad_fields_are_refused(fields, words):
    with pytest.raises(TrainError, match=words):
        TopKSteConfig(**fields)


def test_a_site_kind_the_model_lacks_is_refused(model, ids):
    with pytest.raises(TrainError, match="no input sites of kind"):
        handler_for(TopKSteConfig(sites=("mlp.in",))).prepare(model, ids)  # tiny-llama's MLP is gated
    assert unwrap(model)[1] == ""


def test_the_training_forward_is_the_topk_plan_with_straight_through_masks(model, ids):
    plan = actlab.calibrate(model, actlab.TopKConfig(0.5), None)
    actlab.apply_(model, plan)
    with torch.no_grad():
        want = model(input_ids=ids).logits
    actlab.remove_(model)
    obj = handler_for(TopKSteConfig(sparsity=0.5))
    trained = obj.prepare(model, ids)
    assert unwrap(trained)[0].get_submodule(OWNER).straight_through
    assert [(e.key, float(e.threshold)) for e in obj.plan.entries] == [(e.key, float(e.threshold)) for e in plan.entries]
    with torch.no_grad():
        got = trained(input_ids=ids).logits  # LoRA B is zero: the base model under the same masks
    torch.testing.assert_close(got, want)


def test_the_loss_goes_down_and_only_lora_learns(model, ids):
    obj, trained, hist = drive(model, TopKSteConfig(sparsity=0.5), ids, steps=20)
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.3, [h["loss"] for h in hist]
    one_step(obj, trained, ids)
    leaked, moved = grads_only_in_lora(trained)
    assert leaked == [] and moved


def test_sites_restrict_the_plan(model, ids):
    obj = handler_for(TopKSteConfig(sparsity=0.5, sites=("mlp.down_in",)))
    obj.prepare(model, ids)
    assert {e.site.split(".", 2)[2] for e in obj.plan.entries} == {"mlp.down_in"}
    assert obj.plan.metrics["sparsity.mlp.down_in"] == pytest.approx(0.5)
    assert obj.plan.metrics["sparsity_model_wide"] < 0.5  # down is a third of the MLP, a fraction of the model


def test_finalize_writes_the_plan_the_trained_model_runs_with(model, ids, tmp_path):
    obj, trained, _ = drive(model, TopKSteConfig(sparsity=0.6), ids, steps=5)
    trained.eval()
    with torch.no_grad():
        want = trained(input_ids=ids).logits
    merged = obj.finalize(trained, tmp_path)
    assert not masked_modules(merged) and type(merged).__module__.startswith("transformers")
    written = actlab.SparsityPlan.load(tmp_path / "plan")
    assert written.method == "topk" and written.config.sparsity == 0.6
    assert written.model == model_fingerprint(merged)
    actlab.apply_(merged, written)
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    actlab.remove_(merged)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_through_the_loop_the_output_comes_with_its_plan(tmp_path):
    from actlab.train.loop import TrainArgs, train

    model, tok = actlab.load_model("random:tiny-llama")
    args = TrainArgs(tokens=4 * 2 * 32, seq_len=32, batch_size=2, lr=1e-2, precision="fp32", log_every=1,
                     calib_tokens=0, eval_tokens=64)
    cfg = TopKSteConfig(sparsity=0.5, sites=("attn.o_in", "mlp.down_in"))
    res = train(model, cfg, windows(8), args=args, out=tmp_path / "out", progress=False,
                eval_data=windows(2, seed=1), tokenizer=tok)
    assert config_from_dict(json.loads((tmp_path / "out" / "train_config.json").read_text())["config"]) == cfg
    plan = actlab.SparsityPlan.load(tmp_path / "out" / "plan")
    assert {e.site.split(".", 2)[2] for e in plan.entries} == {"attn.o_in", "mlp.down_in"}
    logits = []
    for m in (actlab.load_model(str(tmp_path / "out"))[0], res.model):
        actlab.apply_(m, plan)  # what `actlab eval --plan out/plan` and `actlab bench` do
        with torch.no_grad():
            logits.append(m.eval()(input_ids=windows(2, seed=1)).logits)
        actlab.remove_(m)
    torch.testing.assert_close(logits[0], logits[1])
