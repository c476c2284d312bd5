"""relufy: activation swap + ProSparse's progressive L1 (sine schedule) + optional KL to the original model."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import actlab
from actlab.functions import FATReLU
from actlab.functions.swaps import swap_record
from actlab.models.adapters import act_function
from actlab.train import RelufyConfig, TrainError, config_from_dict, handler_for
from actlab.train.distill import kl_to_teacher
from actlab.train.objectives.relufy_config import l1_lambda

pytest.importorskip("peft")


def _ids(n=4, seq_len=24, seed=0):
    return torch.randint(3, 512, (n, seq_len), generator=torch.Generator().manual_seed(seed))


def _train(model, cfg, ids, steps=25, lr=1e-2):
    """Steps as the loop runs them: loss() is called inside active(), under the same hooks."""
    obj = handler_for(cfg)
    trained = obj.prepare(model, ids)
    obj.total_steps = steps
    opt = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rows = []
    for step in range(steps):
        obj.step = step
        trained.train()
        with obj.active(trained):
            out = trained(input_ids=ids, labels=ids, use_cache=False)
            loss, metrics = obj.loss(trained, {"input_ids": ids, "labels": ids}, out)
        loss.backward()
        opt.step()
        opt.zero_grad()
        rows.append({"lm": float(out.loss.detach()), **metrics})
    return obj, trained, rows


def test_sine_schedule_holds_then_rises_to_the_peak():
    total, peak = 20, 2.0
    lams = [l1_lambda(s, total, peak, warmup=0.25, start_frac=0.1) for s in range(total)]
    assert lams[:5] == [0.2] * 5  # warm-up: constant small λ
    assert all(b > a for a, b in zip(lams[4:-1], lams[5:], strict=True))  # then strictly rising
    assert lams[-1] == pytest.approx(peak)
    # within the rise: start + (peak - start) * sin(π p / 2)
    p = (12 - 5 + 1) / 15
    assert lams[12] == pytest.approx(0.2 + 1.8 * math.sin(math.pi * p / 2))
    # two stages: the first ends exactly at the midpoint λ, each rises on its own quarter sine
    two = [l1_lambda(s, 10, 1.0, warmup=0.0, start_frac=0.0, stages=2) for s in range(10)]
    assert two[4] == pytest.approx(0.5) and two[9] == pytest.approx(1.0)
    assert two[0] == pytest.approx(0.5 * math.sin(math.pi * 0.2 / 2))
    assert two[5] == pytest.approx(0.5 + 0.5 * math.sin(math.pi * 0.2 / 2))
    with pytest.raises(ValueError):
        l1_lambda(20, 20, 1.0)


def test_config_round_trips_through_json():
    cfg = RelufyConfig(activation="fatrelu", theta=0.02, relu_after_norms=True, l1=0.3, l1_warmup=0.2,
                       l1_stages=3, kl=0.5, fatrelu_final_theta=0.05, lora_r=4)
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    d = RelufyConfig()
    assert (d.objective, d.activation, d.kl, d.fatrelu_final_theta) == ("relufy", "relu", 0.0, None)


@pytest.mark.parametrize("fields, words", [
    (dict(activation="gelu"), "unknown activation swap 'gelu'; choose one of relu, fatrelu, relu2, drelu"),
    (dict(activation="relu", theta=0.1), "use activation 'fatrelu'"),
    (dict(activation="fatrelu", theta=-1.0), "theta must be a finite number >= 0"),
    (dict(l1=-1.0), "l1 must be a finite number >= 0"),
    (dict(kl=float("nan")), "kl must be a finite number >= 0"),
    (dict(l1_warmup=1.0), r"l1_warmup is a fraction of the steps in \[0, 1\)"),
    (dict(l1_start_frac=2.0), r"l1_start_frac must be in \[0, 1\]"),
    (dict(l1_stages=0), "l1_stages must be an integer >= 1"),
    (dict(relu_after_norms="yes"), "relu_after_norms must be true or false"),
    (dict(activation="drelu", fatrelu_final_theta=0.1), "use relu or fatrelu"),
    (dict(fatrelu_final_theta=-0.1), "fatrelu_final_theta must be a finite number >= 0"),
])
def test_bad_fields_are_refused(fields, words):
    with pytest.raises(TrainError, match=words):
        RelufyConfig(**fields)
    with pytest.raises(TrainError, match=words):
        config_from_dict({"objective": "relufy", **fields})


@pytest.mark.parametrize(("activation", "site", "kl"), [("relu", "mlp.act_out", 0.0), ("drelu", "mlp.down_in", 1.0)])
def test_terms_are_what_the_docs_say(activation, site, kl):
    model, _ = actlab.load_model("random:tiny-llama")
    ids = _ids()
    cfg = RelufyConfig(activation=activation, l1=0.5, l1_warmup=0.0, l1_start_frac=1.0, kl=kl)  # constant λ
    obj = handler_for(cfg)
    trained = obj.prepare(model, ids)
    obj.total_steps, obj.step = 4, 0
    with torch.no_grad(), actlab.capture(trained, site) as cap:
        want_lm = trained(input_ids=ids, labels=ids).loss
    acts = list(cap.tensors.values())
    with obj.active(trained):  # the teacher's forward (kl > 0) runs inside it too, as in the loop
        out = trained(input_ids=ids, labels=ids)
        loss, m = obj.loss(trained, {"input_ids": ids, "labels": ids}, out)
    l1 = torch.stack([a.abs().mean() for a in acts]).mean()
    zeros = sum(int((a == 0).sum()) for a in acts) / sum(a.numel() for a in acts)
    assert m["l1_loss"] == pytest.approx(float(l1), rel=1e-5) and m["lambda"] == 0.5
    assert m["zero_frac"] == pytest.approx(zeros) and 0.3 < zeros < 0.9  # random signs: about 1/2 (relu), 3/4
    assert (m["kl_loss"] > 0) == (kl > 0)
    want = float(want_lm) + 0.5 * float(l1) + kl * m["kl_loss"]
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)


def test_drelu_counts_zeros_where_the_down_projection_reads():
    model, _ = actlab.load_model("random:tiny-llama")
    obj = handler_for(RelufyConfig(activation="drelu"))
    obj.prepare(model, _ids())
    assert {s.kind for s in obj.sites.values()} == {"mlp.down_in"}
    obj.total_steps = 1
    with obj.active(model):
        out = model(input_ids=_ids(), labels=_ids())
        _, m = obj.loss(model, {"input_ids": _ids()}, out)
    assert 0.6 < m["zero_frac"] < 0.9  # either of two random signs negative: about 3/4


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_teacher_is_the_original_model(adapter):
    model, _ = actlab.load_model("random:tiny-llama")
    ids = _ids()
    with torch.no_grad():
        original = model(input_ids=ids).logits
    obj = handler_for(RelufyConfig(activation="drelu", relu_after_norms=True, kl=1.0, adapter=adapter, lora_r=2))
    trained = obj.prepare(model, ids)
    if adapter == "lora":
        for n, p in trained.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p)  # the adapters now change the model: the teacher must not see them
    with torch.no_grad():
        student = trained(input_ids=ids).logits
        teacher = obj._teacher_logits(trained, {"input_ids": ids})
        assert torch.equal(trained(input_ids=ids).logits, student)  # the student's activation came back
    torch.testing.assert_close(teacher, original)
    assert not torch.allclose(student, original)
    assert float(kl_to_teacher(student, teacher)) > 0


def test_l1_term_decreases_and_zeros_rise_against_a_run_without_it():
    ids = _ids()
    runs = {}
    for l1 in (0.0, 1.0):
        model, _ = actlab.load_model("random:tiny-llama")
        _, _, runs[l1] = _train(model, RelufyConfig(l1=l1, l1_warmup=0.0, l1_start_frac=1.0, lora_r=4), ids)
    on, off = runs[1.0], runs[0.0]
    assert on[-1]["l1_loss"] < on[0]["l1_loss"] and on[-1]["zero_frac"] > on[0]["zero_frac"] + 0.1
    assert on[-1]["l1_loss"] < 0.5 * off[-1]["l1_loss"]  # without the term the LM loss alone grows |a|
    assert abs(off[-1]["zero_frac"] - off[0]["zero_frac"]) < 0.05
    assert on[-1]["lm"] < on[0]["lm"]


def test_kl_term_pulls_the_student_back_to_the_original():
    model, _ = actlab.load_model("random:tiny-llama")
    cfg = RelufyConfig(activation="drelu", relu_after_norms=True, l1=0.0, kl=100.0, lora_r=4)
    _, _, rows = _train(model, cfg, _ids(), lr=3e-3)
    assert rows[0]["kl_loss"] > 0 and rows[-1]["kl_loss"] < 0.5 * rows[0]["kl_loss"]


def test_finalize_keeps_the_swap_and_the_saved_model_reloads(tmp_path):
    model, tok = actlab.load_model("random:tiny-llama")
    ids = _ids()
    obj, trained, _ = _train(model, RelufyConfig(activation="drelu", relu_after_norms=True, lora_r=2), ids, steps=3)
    final = obj.finalize(trained, tmp_path)
    assert type(final).__name__ == "LlamaForCausalLM"
    assert swap_record(final) == {"activation": "drelu", "theta": 0.0, "relu_after_norms": True}
    final.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, _ = actlab.load_model(str(tmp_path))
    with torch.no_grad():
        assert torch.equal(final(ids).logits, again(ids).logits)


def test_fatrelu_final_theta_is_prosparses_last_stage():
    model, _ = actlab.load_model("random:tiny-llama")
    obj, trained, _ = _train(model, RelufyConfig(fatrelu_final_theta=0.05, lora_r=2), _ids(), steps=2)
    final = obj.finalize(trained, None)
    act = final.model.layers[0].mlp.act_fn
    assert isinstance(act, FATReLU) and act.threshold == 0.05
    assert act_function(final, 0).name == "fatrelu"
    x = torch.linspace(-0.2, 0.2, 9)
    assert torch.equal(act(x), torch.where(x >= 0.05, x, torch.zeros_like(x)))


def test_through_the_loop_the_output_dir_loads_back(tmp_path):
    from actlab.train import TrainArgs

    model, tok = actlab.load_model("random:tiny-llama")
    data, ev = _ids(8, 16), _ids(2, 16, seed=1)
    args = TrainArgs(tokens=64, seq_len=16, batch_size=2, log_every=1, eval_tokens=32, calib_tokens=0,
                     precision="fp32")
    res = actlab.train(model, RelufyConfig(activation="relu2", l1=0.1, lora_r=2), data, args=args,
                       out=tmp_path / "run", eval_data=ev, tokenizer=tok, progress=False)
    steps = [r for r in res.history if "lambda" in r]
    assert len(steps) == 2 and {"l1_loss", "kl_loss", "zero_frac"} <= set(steps[0])
    again, _ = actlab.load_model(str(tmp_path / "run"))
    assert act_function(again, 0).name == "relu2"
    with torch.no_grad():
        torch.testing.assert_close(again(ev).logits, res.model(ev).logits)


def test_kl_is_zero_for_the_same_logits_and_positive_otherwise():
    x = torch.randn(2, 3, 7)
    assert float(kl_to_teacher(x, x)) == pytest.approx(0.0, abs=1e-6)
    y = torch.randn(2, 3, 7)
    p = F.softmax(y, -1)
    want = (p * (F.log_softmax(y, -1) - F.log_softmax(x, -1))).sum(-1).mean()
    assert float(kl_to_teacher(x, y)) == pytest.approx(float(want), rel=1e-5)
