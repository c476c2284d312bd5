"""mask-lora: training under a plan's masks (straight-through or hard), recalibration, merge + re-fingerprint."""

from __future__ import annotations

import copy

import pytest
import torch
from objective_helpers import drive, grads_only_in_lora, one_step, windows

import actlab
from actlab.models.wrappers import unwrap
from actlab.sparsity.apply import masked_modules
from actlab.sparsity.fingerprint import model_fingerprint
from actlab.sparsity.kinds import mask
from actlab.train import MaskLoraConfig, TrainError, config_from_dict, handler_for
from actlab.train.distill import kl_to_teacher

pytest.importorskip("peft")


@pytest.fixture
def plan(model, ids):
    return actlab.calibrate(model, actlab.TealConfig(0.5), ids)


def test_config_round_trips_through_json_with_a_plan_directory(tmp_path, plan):
    cfg = MaskLoraConfig(plan=str(tmp_path / "p"), gradient="hard", recalibrate_every=3, lora_r=4)
    assert config_from_dict(cfg.to_dict()) == cfg
    assert MaskLoraConfig(plan=tmp_path / "p").plan == str(tmp_path / "p")  # a Path is kept as its string
    # an in-memory plan is recorded, but loading that record says how to make it round-trip
    d = MaskLoraConfig(plan=plan).to_dict()
    assert d["plan"]["in_memory"] and d["plan"]["method"] == "teal"
    with pytest.raises(TrainError, match="save it"):
        config_from_dict(d)


@pytest.mark.parametrize("fields, words", [
    (dict(plan=""), "plan must name a plan directory"),
    (dict(plan=3), "plan must name a plan directory"),
    (dict(plan="p", gradient="soft"), "unknown gradient 'soft'"),
    (dict(plan="p", recalibrate_every=-1), "recalibrate_every must be an integer >= 0"),
    (dict(plan="p", recalibrate_every=1.5), "recalibrate_every must be an integer >= 0"),
    (dict(plan="p", adapter="adapters"), "unknown adapter"),
    (dict(plan="p", kl=-1.0), "kl must be a finite number >= 0"),
    (dict(plan="p", kl=float("nan")), "kl must be a finite number >= 0"),
    (dict(plan="p", kl=1.0, teacher=3), "teacher must name a model"),
    (dict(plan="p", teacher="runs/dense-ft"), "set kl > 0"),
])
def test_bad_fields_are_refused(fields, words):
    with pytest.raises(TrainError, match=words):
        MaskLoraConfig(**fields)


def test_a_directory_without_a_plan_is_refused_before_any_model(tmp_path):
    with pytest.raises(TrainError, match="no plan.json"):
        MaskLoraConfig(plan=str(tmp_path)).load_plan()


def test_a_plan_for_another_model_is_refused_and_the_model_left_alone(model, plan, ids):
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.add_(0.01)  # another checkpoint of the same shapes
    with pytest.raises(TrainError, match="different weights"):
        handler_for(MaskLoraConfig(plan=plan)).prepare(model, ids)
    assert type(model).__module__.startswith("transformers") and not masked_modules(model)


def test_the_straight_through_switch_keeps_the_forward_and_passes_the_gradient():
    x = torch.tensor([0.1, -2.0, 0.5, float("nan")], requires_grad=True)
    hard = mask("input", x, torch.tensor(0.4))
    hard.sum().backward()
    hard_grad, x.grad = x.grad.clone(), None
    ste = mask("input", x, torch.tensor(0.4), straight_through=True)
    ste.sum().backward()
    assert torch.equal(hard, ste)  # bit-identical, NaN dropped on both paths
    assert hard_grad.tolist() == [0.0, 1.0, 1.0, 0.0] and x.grad.tolist() == [1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("gradient", ["ste", "hard"])
def test_the_masked_loss_goes_down_and_only_lora_learns(model, plan, ids, gradient):
    obj, trained, hist = drive(model, MaskLoraConfig(plan=plan, gradient=gradient), ids, steps=20)
    assert masked_modules(trained)  # the masks were on while it trained
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.3, [h["loss"] for h in hist]
    one_step(obj, trained, ids)
    leaked, moved = grads_only_in_lora(trained)
    assert leaked == [] and moved


def test_straight_through_and_hard_masks_train_differently(plan, ids):
    runs = [drive(actlab.load_model("random:tiny-llama")[0], MaskLoraConfig(plan=plan, gradient=g), ids, steps=3)[2]
            for g in ("ste", "hard")]
    assert runs[0][0]["loss"] == runs[1][0]["loss"]  # same forward
    assert runs[0][-1]["loss"] != runs[1][-1]["loss"]  # different gradients


def test_finalize_merges_and_refingerprints_the_plan(model, plan, ids, tmp_path):
    obj, trained, _ = drive(model, MaskLoraConfig(plan=plan), ids, steps=5)
    trained.eval()
    with torch.no_grad():
        want = trained(input_ids=ids).logits  # LoRA model with the masks
    merged = obj.finalize(trained, tmp_path)
    assert type(merged).__module__.startswith("transformers") and not masked_modules(merged)
    written = actlab.SparsityPlan.load(tmp_path / "plan")
    assert written.model == model_fingerprint(merged) != plan.model
    assert written.extra["trained"]["base_weights_sha256"] == plan.model["weights_sha256"]
    actlab.apply_(merged, written)
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    actlab.remove_(merged)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # the fingerprint samples every sparsifiable linear's weights: the merged LoRA delta changes them
    with pytest.raises(actlab.PlanError, match="different weights"):
        actlab.check_plan(merged, plan)


def test_a_merge_that_changed_no_weight_keeps_the_old_fingerprint(model, plan, ids, tmp_path):
    obj, trained, _ = drive(model, MaskLoraConfig(plan=plan), ids, steps=1, lr=0.0)  # LoRA B stays zero
    merged = obj.finalize(trained, None)
    actlab.check_plan(merged, plan)  # the fingerprint is of the weights, not of the training
    assert obj.final_plan.model == plan.model


def test_recalibration_puts_the_current_models_thresholds_in_place(model, plan, ids):
    cfg = MaskLoraConfig(plan=plan, recalibrate_every=2, adapter="full")
    obj, trained, _ = drive(model, cfg, ids, steps=3, lr=1e-2)
    assert obj.plan.extra["recalibrated_at_step"] == 2
    obj.step = 4
    obj.recalibrate(trained)
    applied = {k: v for k, v in trained.state_dict().items() if k.startswith("actlab_sparsity.")}
    assert masked_modules(trained) and applied
    actlab.remove_(trained)
    fresh = actlab.calibrate(trained, plan.config, ids)  # an independent calibration of the trained weights
    for e, f in zip(obj.plan.entries, fresh.entries, strict=True):
        assert torch.equal(e.threshold, f.threshold)
        assert torch.equal(applied[f"actlab_sparsity.masks.{e.key.replace('.', '_')}.threshold"], f.threshold)
    assert any(not torch.equal(e.threshold, o.threshold) for e, o in zip(obj.plan.entries, plan.entries, strict=True))


def test_recalibrated_thresholds_resume(model, plan, ids):
    cfg = MaskLoraConfig(plan=plan, recalibrate_every=1, adapter="full")
    obj, trained, _ = drive(model, cfg, ids, steps=2, lr=1e-2)
    state = obj.state_dict()
    assert state["calibrated_at"] == 1
    again = handler_for(cfg)
    resumed = again.prepare(actlab.load_model("random:tiny-llama")[0], ids)
    again.load_state_dict(state)
    keys = [k for k in trained.state_dict() if k.startswith("actlab_sparsity.")]
    for k in keys:
        assert torch.equal(resumed.state_dict()[k], trained.state_dict()[k])
    assert any(not torch.equal(resumed.state_dict()[k], t.threshold) for k, t in zip(keys, plan.entries, strict=True))


def test_recalibration_needs_a_calibrated_method(model, ids):
    topk = actlab.calibrate(model, actlab.TopKConfig(0.5), None)
    with pytest.raises(TrainError, match="nothing to recalibrate"):
        handler_for(MaskLoraConfig(plan=topk, recalibrate_every=5)).prepare(model, ids)
    assert not masked_modules(model) and unwrap(model)[1] == ""


# -- through the loop ---------------------------------------------------------------------------------------


class Killed(Exception):
    pass


def _train(out, config, kill_at=None, resume=False):
    from actlab.train.loop import TrainArgs, train

    def kill(row):
        if row.get("step") == kill_at and "loss" in row:
            raise Killed

    model, tok = actlab.load_model("random:tiny-llama")
    args = TrainArgs(tokens=6 * 2 * 32, seq_len=32, batch_size=2, lr=1e-2, precision="fp32", log_every=1,
                     checkpoint_every=3, calib_tokens=4 * 32, eval_tokens=64)
    return train(model, config, windows(16), args=args, out=out, resume=resume, progress=False,
                 eval_data=windows(2, seed=1), tokenizer=tok, callbacks=[kill])


def test_a_killed_run_resumes_with_its_recalibrated_thresholds(tmp_path, plan):
    plan.save(tmp_path / "plan")
    cfg = MaskLoraConfig(plan=str(tmp_path / "plan"), recalibrate_every=2, adapter="full")
    whole = _train(tmp_path / "whole", cfg)
    with pytest.raises(Killed):
        _train(tmp_path / "cut", cfg, kill_at=4)  # after the step-3 checkpoint, thresholds of step 2
    resumed = _train(tmp_path / "cut", cfg, resume=True)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    plans = [actlab.SparsityPlan.load(tmp_path / d / "plan") for d in ("whole", "cut")]
    assert plans[0].extra["recalibrated_at_step"] == 4 and plans[0].extra["trained"]["steps"] == 6
    for e, f in zip(*(p.entries for p in plans), strict=True):
        torch.testing.assert_close(e.threshold, f.threshold, atol=1e-5, rtol=1e-5)
    # the output directory is a model that `actlab eval --plan out/plan` takes
    out_model, _ = actlab.load_model(str(tmp_path / "cut"))
    actlab.check_plan(out_model, plans[1])


def _kl_to(logits, trained, ids):
    with torch.no_grad():
        return float(kl_to_teacher(trained(input_ids=ids).logits, logits))


def test_distillation_pulls_the_masked_model_toward_the_dense_teacher(model, plan, ids):
    dense = model(input_ids=ids).logits.detach()
    before = copy.deepcopy(model.state_dict())
    cfg = dict(plan=plan, adapter="full")
    _, lm_only, _ = drive(copy.deepcopy(model), MaskLoraConfig(**cfg), ids, steps=15, lr=3e-3)
    obj, distilled, hist = drive(model, MaskLoraConfig(**cfg, kl=10.0), ids, steps=15, lr=3e-3)
    assert hist[0]["kl_loss"] > 0  # the masks change the logits, so there is something to distil
    # the LM loss alone memorises the windows away from the dense logits; the KL term holds the model to them
    held, drifted = _kl_to(dense, distilled, ids), _kl_to(dense, lm_only, ids)
    assert held < drifted / 2, (held, drifted)
    teacher = obj.teacher.module.state_dict()  # a frozen copy: training never touched it
    assert all(torch.equal(teacher[k], v) for k, v in before.items())
    assert not masked_modules(obj.teacher.module)


def test_a_teacher_directory_is_loaded_and_checked_against_the_vocabulary(model, plan, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    tok = actlab.load_model("random:tiny-llama")[1]
    model.save_pretrained(tmp_path / "dense")
    tok.save_pretrained(tmp_path / "dense")
    obj = handler_for(MaskLoraConfig(plan=plan, kl=1.0, teacher=str(tmp_path / "dense")))
    obj.prepare(copy.deepcopy(model), ids)
    assert torch.equal(obj.teacher.logits(ids), model(input_ids=ids).logits)

    other = copy.deepcopy(model.config)
    other.vocab_size = 256
    AutoModelForCausalLM.from_config(other).save_pretrained(tmp_path / "small")
    tok.save_pretrained(tmp_path / "small")
    for name, words in (("small", "vocabulary of 256 tokens and the trained model 512"), ("missing", "does not exist")):
        with pytest.raises(TrainError, match=words):
            handler_for(MaskLoraConfig(plan=plan, kl=1.0, teacher=str(tmp_path / name))).prepare(copy.deepcopy(model), ids)
