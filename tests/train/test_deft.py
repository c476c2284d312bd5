"""deft: DEFT's density loss mean(a²/(a²+ε)) at a site, added to the LM loss and trained through LoRA."""

from __future__ import annotations

import pytest
import torch
from objective_helpers import drive, grads_only_in_lora, one_step, windows

import actlab
from actlab.models.wrappers import unwrap
from actlab.train import DeftConfig, TrainError, config_from_dict, handler_for
from actlab.train.objectives.deft import density_loss

pytest.importorskip("peft")


def test_config_round_trips_and_has_defts_defaults():
    cfg = DeftConfig(site="mlp.down_in", weight=0.5, eps=1e-5, lora_r=4)
    assert config_from_dict(cfg.to_dict()) == cfg
    d = DeftConfig()
    assert (d.site, d.weight, d.eps, d.objective) == ("mlp.act_out", 1.0, 1e-7, "deft")


@pytest.mark.parametrize("fields, words", [
    (dict(weight=-1.0), "weight must be a finite number >= 0"),
    (dict(weight=float("nan")), "weight must be a finite number >= 0"),
    (dict(eps=0.0), "eps must be a finite number > 0"),
    (dict(eps="small"), "eps must be a finite number > 0"),
    (dict(site=""), "site must be a site kind"),
])
def test_bad_fields_are_refused(fields, words):
    with pytest.raises(TrainError, match=words):
        DeftConfig(**fields)


def test_a_site_the_model_lacks_names_the_kinds_it_has(model, ids):
    with pytest.raises(TrainError, match=r"'mlp\.in'.*site kinds of this model: .*mlp\.act_out"):
        handler_for(DeftConfig(site="mlp.in")).prepare(model, ids)  # tiny-llama's MLP is gated
    assert unwrap(model)[1] == ""  # not wrapped with LoRA


def test_the_term_is_the_mean_over_layers_of_the_sites_density(model, ids):
    cfg = DeftConfig(weight=2.0, eps=1e-3)
    obj = handler_for(cfg)
    trained = obj.prepare(model, ids)
    with torch.no_grad(), actlab.capture(trained, "mlp.act_out") as cap:
        trained(input_ids=ids)
    per_layer = [(a.square() / (a.square() + 1e-3)).mean() for a in cap.tensors.values()]
    want = torch.stack(per_layer).mean()
    assert len(per_layer) == model.config.num_hidden_layers
    with obj.active(trained):
        outputs = trained(input_ids=ids, labels=ids)
    loss, metrics = obj.loss(trained, {"input_ids": ids}, outputs)
    assert metrics["density_loss"] == pytest.approx(float(want), rel=1e-5)
    assert float((loss - outputs.loss).detach()) == pytest.approx(2.0 * float(want), rel=1e-4)
    assert density_loss([torch.zeros(3), torch.ones(2)], 1e-7).item() == pytest.approx(0.5, abs=1e-6)


def test_the_density_loss_goes_down_and_only_lora_learns(ids):
    # ε = 1e-2, not DEFT's 1e-7: the random model's SiLU outputs are ~0.1, where a²/(a²+1e-7) is flat
    finals = {}
    for weight in (1.0, 0.0):
        obj, trained, hist = drive(actlab.load_model("random:tiny-llama")[0], DeftConfig(weight=weight, eps=1e-2),
                                   ids, steps=20, lr=1e-2)
        finals[weight] = hist[-1]["density_loss"]
        if weight:
            assert hist[-1]["density_loss"] < 0.8 * hist[0]["density_loss"], [h["density_loss"] for h in hist]
            one_step(obj, trained, ids)
            leaked, moved = grads_only_in_lora(trained)
            assert leaked == [] and moved
    assert finals[1.0] < finals[0.0] - 0.05  # the term, not the LM loss, lowers the density


def test_evaluation_without_gradients_keeps_no_activations(model, ids):
    obj = handler_for(DeftConfig())
    trained = obj.prepare(model, ids)
    with torch.no_grad(), obj.active(trained):
        trained(input_ids=ids)
    assert obj._tensors == []
    with pytest.raises(TrainError, match="inside objective.active"):
        obj.loss(trained, {"input_ids": ids}, trained(input_ids=ids, labels=ids))


def test_through_the_loop_density_falls_at_the_profile_threshold(tmp_path):
    from actlab.train.loop import TrainArgs, train

    model, tok = actlab.load_model("random:tiny-llama")
    args = TrainArgs(tokens=10 * 2 * 32, seq_len=32, batch_size=2, lr=1e-2, precision="fp32", log_every=1,
                     calib_tokens=0, eval_tokens=64)
    res = train(model, DeftConfig(eps=1e-2), windows(20), args=args, out=tmp_path / "out", progress=False,
                eval_data=windows(2, seed=1), tokenizer=tok)
    steps = [r for r in res.history if "density_loss" in r]
    evals = [r for r in res.history if "eval_ppl" in r]
    assert len(steps) == 10 and steps[-1]["density_loss"] < steps[0]["density_loss"]
    assert evals[-1]["density_site"] == "mlp.act_out"
    assert evals[-1]["density_0.01"] < evals[0]["density_0.01"]  # |a| > 0.01, as `actlab profile` counts
    assert actlab.load_model(str(tmp_path / "out"))[0].config.model_type == "llama"
