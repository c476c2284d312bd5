"""The training loop: schedule, step count and its refusals, accumulation, determinism, logs and output."""

from __future__ import annotations

import json
import math

import pytest
import torch

import actlab
from actlab.outputs import OutputError
from actlab.train import DenseConfig, TrainError
from actlab.train import precision as prec
from actlab.train.batches import BatchOrder, plan_steps
from actlab.train.loop import TrainArgs, train
from actlab.train.schedule import lr_at, warmup_steps

SEQ = 16


def _data(n: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 200, (n, SEQ), generator=torch.Generator().manual_seed(seed))


def _args(**kw) -> TrainArgs:
    base = dict(tokens=4 * 2 * SEQ, seq_len=SEQ, batch_size=2, precision="fp32", log_every=1, lr=1e-3)
    return TrainArgs(**{**base, **kw})


def _run(data=None, config=DenseConfig(adapter="full"), **kw):
    model, tok = actlab.load_model("random:tiny-llama")
    train_kw = {k: kw.pop(k) for k in ("out", "eval_data", "callbacks", "resume", "tokenizer", "overwrite")
                if k in kw}
    return train(model, config, _data() if data is None else data, args=_args(**kw), progress=False, **train_kw)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# -- schedule -----------------------------------------------------------------------------------------------


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    lrs = [lr_at(s, total_steps=11, lr=1.0, warmup_steps=2, min_lr_ratio=0.1) for s in range(11)]
    assert lrs[:2] == [0.5, 1.0]
    assert lrs[2] == pytest.approx(1.0)  # the peak: progress 0 of the cosine
    assert lrs[10] == pytest.approx(0.1)  # the floor at the last step
    mid = 2 + (10 - 2) // 2  # half-way through the cosine: half-way between peak and floor
    assert lrs[mid] == pytest.approx(0.55)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))  # never rises after the peak
    assert warmup_steps(100, 0.06) == 6 and warmup_steps(10, 0.0) == 0


def test_schedule_edge_cases_and_bad_steps():
    assert lr_at(0, 1, 2e-4, 0, 0.1) == 2e-4  # a one-step run trains at the peak
    assert lr_at(0, 3, 1.0, 0, 0.0) == pytest.approx(1.0) and lr_at(2, 3, 1.0, 0, 0.0) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        lr_at(3, 3, 1.0, 0, 0.1)
    with pytest.raises(ValueError):
        warmup_steps(10, 1.0)


def test_the_loop_uses_the_schedule():
    res = _run(tokens=6 * 2 * SEQ, warmup=0.34, min_lr_ratio=0.2)
    steps = [r for r in res.history if "loss" in r]
    assert [r["lr"] for r in steps] == [lr_at(s, 6, 1e-3, 2, 0.2) for s in range(6)]


# -- steps and the data they need ------------------------------------------------------------------------------


def test_steps_from_tokens():
    assert plan_steps(100, 16, 1000, 4, 1, 1) == 1000 // 64
    assert plan_steps(100, 16, 10, 4, 1, 1) == 1  # at least one step
    assert plan_steps(100, 16, 1000, 2, 2, 2) == 1000 // 128


def test_refuses_a_corpus_smaller_than_the_token_budget():
    with pytest.raises(TrainError) as e:
        _run(data=_data(8), tokens=9 * SEQ)
    msg = str(e.value)
    assert "128 tokens" in msg and "144" in msg and "fewer --tokens" in msg and "bigger corpus" in msg


def test_refuses_data_smaller_than_one_step():
    with pytest.raises(TrainError) as e:
        _run(data=_data(3), batch_size=2, grad_accum=2, tokens=SEQ)
    assert "3 windows" in str(e.value) and "needs 4" in str(e.value)


def test_refuses_windows_of_another_length_and_bad_args():
    with pytest.raises(TrainError, match="seq_len=16"):
        _run(seq_len=32)
    with pytest.raises(TrainError, match="precision"):
        TrainArgs(precision="fp16")
    with pytest.raises(TrainError, match="grad_accum=0"):
        TrainArgs(grad_accum=0)
    with pytest.raises(TrainError, match="integer tensor"):
        _run(data=torch.rand(4, SEQ))


def test_batch_order_is_seeded_and_never_repeats_a_window():
    a = BatchOrder(32, 2, 2, 1, seed=0)
    assert torch.equal(a.perm, BatchOrder(32, 2, 2, 1, seed=0).perm)
    assert not torch.equal(a.perm, BatchOrder(32, 2, 2, 1, seed=1).perm)
    seen = torch.cat([torch.cat(a.micro_batches(s, 0)) for s in range(8)])
    assert sorted(seen.tolist()) == list(range(32))
    # two processes with accumulation a see what one process with 2a sees, in the same order
    two = BatchOrder(32, 2, 1, 2, seed=0)
    one = BatchOrder(32, 2, 2, 1, seed=0)
    for s in range(8):
        assert torch.equal(torch.cat(two.micro_batches(s, 0) + two.micro_batches(s, 1)),
                           torch.cat(one.micro_batches(s, 0)))


# -- numerics ---------------------------------------------------------------------------------------------------


def test_accumulation_equals_a_bigger_batch():
    big = _run(batch_size=4, grad_accum=1, tokens=3 * 4 * SEQ)
    acc = _run(batch_size=2, grad_accum=2, tokens=3 * 4 * SEQ)
    base, _ = actlab.load_model("random:tiny-llama")
    assert _max_diff(_weights(big.model), _weights(base)) > 1e-4  # it trained
    assert _max_diff(_weights(big.model), _weights(acc.model)) < 1e-5
    losses = [(r["loss"], q["loss"]) for r, q in zip(big.history, acc.history, strict=True) if "loss" in r]
    assert len(losses) == 3 and all(a == pytest.approx(b, rel=1e-5) for a, b in losses)


def test_deterministic_given_the_seed():
    a, b, c = _run(seed=3), _run(seed=3), _run(seed=4)
    assert _max_diff(_weights(a.model), _weights(b.model)) == 0.0
    assert _max_diff(_weights(a.model), _weights(c.model)) > 0.0


def test_lora_trains_only_the_adapter_and_merges_into_a_plain_model():
    base, _ = actlab.load_model("random:tiny-llama")
    res = _run(config=DenseConfig(lora_r=4), lr=1e-2)
    assert type(res.model).__name__ == "LlamaForCausalLM"
    assert not any("lora" in k for k in res.model.state_dict())
    diff = {k: float((v - base.state_dict()[k]).abs().max()) for k, v in res.model.state_dict().items()}
    assert diff["model.layers.0.self_attn.q_proj.weight"] > 0  # the merged LoRA delta
    assert diff["model.embed_tokens.weight"] == 0.0  # not a LoRA target: frozen


def test_precision_auto_follows_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    assert prec.resolve("fp32", cpu) == "fp32" and prec.resolve("bf16", cpu) == "bf16"
    monkeypatch.setattr(prec, "cpu_has_bf16", lambda: False)
    assert prec.resolve("auto", cpu) == "fp32"
    monkeypatch.setattr(prec, "cpu_has_bf16", lambda: True)
    assert prec.resolve("auto", cpu) == "bf16"


def test_bf16_autocast_trains():
    res = _run(precision="bf16", tokens=2 * 2 * SEQ)
    assert all(math.isfinite(r["loss"]) for r in res.history if "loss" in r)


# -- logs, evaluation, output -------------------------------------------------------------------------------------


def test_log_eval_rows_and_output_that_loads_back(tmp_path):
    out = tmp_path / "run"
    seen = []
    res = _run(out=out, eval_data=_data(4, seed=9), eval_every=2, log_every=2, callbacks=[seen.append],
               tokenizer=actlab.load_model("random:tiny-llama")[1])
    assert res.out == out and seen == res.history
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert rows == json.loads(json.dumps(res.history))
    evals = [r for r in rows if "eval_ppl" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]  # start, every 2 steps, end (not twice)
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]
    n_layers = res.model.config.num_hidden_layers
    for r in evals:
        assert r["eval_ppl"] == pytest.approx(math.exp(r["eval_nll"])) and r["eval_ppl"] > 1
        assert set(r["density"]) >= {"0", "0.01", "0.1"} and all(len(v) == n_layers for v in r["density"].values())
        assert len(r["zero_frac"]) == n_layers
    assert rows[-1]["eval_ppl"] != rows[0]["eval_ppl"]
    doc = json.loads((out / "train_config.json").read_text())
    assert doc["config"] == DenseConfig(adapter="full").to_dict() and doc["args"]["tokens"] == 4 * 2 * SEQ
    assert doc["steps"] == 4 and doc["precision"] == "fp32"
    loaded, tok = actlab.load_model(str(out))
    assert _max_diff(_weights(loaded), _weights(res.model)) == 0.0
    assert tok is not None


def test_refuses_a_foreign_non_empty_out_before_training(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    calls = []
    with pytest.raises(OutputError, match="not empty"):
        _run(out=tmp_path, callbacks=[calls.append])
    assert calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_failed_run_leaves_nothing_behind(tmp_path):
    out = tmp_path / "sub" / "run"

    def boom(row):
        if row.get("step") == 2:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        _run(out=out, callbacks=[boom])
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_second_run_needs_overwrite_which_replaces_the_first(tmp_path):
    out = tmp_path / "run"
    _run(out=out, checkpoint_every=2, tokens=5 * 2 * SEQ)
    with pytest.raises(OutputError, match="earlier actlab run"):
        _run(out=out)
    _run(out=out, overwrite=True, tokens=3 * 2 * SEQ)  # fewer steps: the old step-4 checkpoint must go
    assert not (out / "checkpoints").exists()
    assert json.loads((out / "train_config.json").read_text())["steps"] == 3


@pytest.mark.slow
def test_smollm2_trains_and_its_output_is_an_ordinary_model_dir(tmp_path):
    pytest.importorskip("gguf")
    from actlab.data.windows import make_windows

    model, tok = actlab.load_model("smollm2-135m")  # fresh: LoRA merges into the weights it is given
    corpus = actlab.load_corpus("default")
    data = make_windows(corpus, tok, 64, 4 * 64, split="calib")
    ev = make_windows(corpus, tok, 64, 2 * 64, split="eval")
    out = tmp_path / "run"
    res = train(model, DenseConfig(lora_r=4), data, args=TrainArgs(tokens=4 * 64, seq_len=64, batch_size=2,
                log_every=1, calib_tokens=64), out=out, eval_data=ev, tokenizer=tok, progress=False)
    evals = [r for r in res.history if "eval_ppl" in r]
    assert len(evals) == 2 and len(evals[0]["zero_frac"]) == model.config.num_hidden_layers
    loaded, tok2 = actlab.load_model(str(out))
    x = ev[:1]
    torch.testing.assert_close(loaded(x).logits, res.model(x).logits, rtol=1e-4, atol=1e-4)
    assert tok2(["hello world"])["input_ids"] == tok(["hello world"])["input_ids"]


def test_accepts_windows_and_records_their_provenance(tmp_path):
    from actlab.data.windows import build_windows

    model, tok = actlab.load_model("random:tiny-llama")
    w = build_windows(actlab.load_corpus("default"), tok, SEQ, 8 * SEQ, split="calib")
    train(model, DenseConfig(adapter="full"), w, args=_args(tokens=8 * SEQ), out=tmp_path / "r", progress=False)
    doc = json.loads((tmp_path / "r" / "train_config.json").read_text())
    assert doc["data_spec"]["split"] == "calib" and doc["data_spec"]["n_windows"] == 8
    assert doc["eval_data_spec"] is None and doc["data"].startswith("(8, 16):")


def test_a_non_finite_gradient_stops_the_run_before_it_reaches_the_weights(monkeypatch, tmp_path):
    from actlab.train import loop
    from actlab.train.objectives.dense import DenseObjective

    class Blowup(DenseObjective):
        def loss(self, model, batch, outputs):
            return outputs.loss * (float("nan") if self.step == 2 else 1.0), {}

    monkeypatch.setattr(loop, "handler_for", Blowup)
    seen = []
    with pytest.raises(TrainError, match="step 3: the gradient is not finite"):
        _run(out=tmp_path / "run", callbacks=[seen.append])
    assert [r["step"] for r in seen] == [1, 2] and not (tmp_path / "run").exists()
