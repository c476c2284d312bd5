"""Checkpoints: atomic, the newest two kept, and a killed-and-resumed run that is the same run."""

from __future__ import annotations

import json

import pytest
import torch

import actlab
from actlab.outputs import MANIFEST
from actlab.train import DenseConfig, TrainError
from actlab.train import checkpoint as ck
from actlab.train.loop import TrainArgs, train

SEQ = 16
DATA = torch.randint(3, 200, (32, SEQ), generator=torch.Generator().manual_seed(0))
EVAL = torch.randint(3, 200, (2, SEQ), generator=torch.Generator().manual_seed(1))


class Killed(Exception):
    pass


def _run(out, config=DenseConfig(adapter="full"), kill_at=None, resume=False, overwrite=False, **kw):
    args = TrainArgs(**{**dict(tokens=6 * 2 * SEQ, seq_len=SEQ, batch_size=2, precision="fp32", log_every=1,
                               lr=1e-3, checkpoint_every=3), **kw})

    def kill(row):
        if kill_at is not None and row.get("step") == kill_at and "loss" in row:
            raise Killed

    model, tok = actlab.load_model("random:tiny-llama")
    return train(model, config, DATA, args=args, out=out, resume=resume, progress=False, eval_data=EVAL,
                 callbacks=[kill], overwrite=overwrite, tokenizer=tok)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _close(a, b) -> bool:
    """Equal, floats within 1e-5 relative (nested rows of the log)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a if k != "tokens_per_s")
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-5)
    return a == b


@pytest.mark.parametrize("config", [DenseConfig(adapter="full"), DenseConfig(lora_r=4, lora_dropout=0.1)],
                         ids=["full", "lora-dropout"])
def test_a_killed_and_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, config):
    whole = _run(tmp_path / "whole", config)
    with pytest.raises(Killed):
        _run(tmp_path / "cut", config, kill_at=4)  # after the step-3 checkpoint
    cut = tmp_path / "cut"
    assert [p.name for p in (cut / "checkpoints").iterdir()] == ["step-3"]
    assert not (cut / "model.safetensors").exists() and not (cut / "train_config.json").exists()
    resumed = _run(cut, config, resume=True)
    a, b = _weights(whole.model), _weights(resumed.model)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert _close(resumed.history, whole.history)
    logged = [json.loads(x) for x in (cut / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [r["step"] for r in whole.history]  # no row twice after the kill


def test_keeps_the_newest_two_and_lists_them_as_actlabs_own(tmp_path):
    out = tmp_path / "run"
    _run(out, checkpoint_every=1)
    assert [s for s, _ in ck.checkpoints(out)] == [4, 5]  # step 6 is the end: the model itself
    listed = json.loads((out / MANIFEST).read_text())["files"]
    assert {f"checkpoints/step-5/{f}" for f in ck._FILES} <= set(listed)
    assert not any(k.startswith("checkpoints/step-3/") for k in listed)
    state = ck.load_state(out / "checkpoints" / "step-5")
    assert state["step"] == 5 and state["tokens"] == 5 * 2 * SEQ and state["data_position"] == 10
    assert state["run"]["config"] == DenseConfig(adapter="full").to_dict()


def test_resume_refuses_a_checkpoint_of_other_settings_naming_them(tmp_path):
    with pytest.raises(Killed):
        _run(tmp_path, kill_at=4)
    with pytest.raises(TrainError) as e:
        _run(tmp_path, resume=True, lr=5e-4, config=DenseConfig(adapter="full", lora_r=4))
    msg = str(e.value)
    assert "args.lr" in msg and "config.lora_r" in msg and "tokens" not in msg.split("settings:")[1]
    _run(tmp_path, resume=True, log_every=2)  # reporting settings may change


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(TrainError, match="no checkpoint"):
        _run(tmp_path / "empty", resume=True)
    with pytest.raises(TrainError, match="need an output directory"):
        _run(None, resume=True)


def test_a_checkpoint_that_fails_to_write_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    out = tmp_path / "run"
    with pytest.raises(Killed):
        _run(out, kill_at=4, checkpoint_every=2)
    assert [s for s, _ in ck.checkpoints(out)] == [2]
    real = torch.save

    def failing(obj, path, *a, **k):
        if "step-4" in str(path):
            raise OSError("disk full")
        return real(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(OSError, match="disk full"):
        _run(out, resume=True, checkpoint_every=2)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-2"]  # no temporary left
    assert ck.load_state(out / "checkpoints" / "step-2")["step"] == 2


def test_differences_name_nested_fields():
    assert ck.differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 0}) == [
        "b.c (2 in the checkpoint, 3 now)", "d ('<missing>' in the checkpoint, 0 now)"]


def test_overwrite_removes_only_actlabs_own_checkpoints(tmp_path):
    out = tmp_path / "run"
    _run(out, checkpoint_every=2)
    mine = out / "checkpoints" / "notes.txt"
    mine.write_text("keep me")
    _run(out, overwrite=True, checkpoint_every=0)
    assert mine.read_text() == "keep me"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_a_run_killed_by_sigkill_resumes_to_the_same_end(tmp_path):
    import importlib.util
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    path = Path(__file__).with_name("kill_worker.py")
    spec = importlib.util.spec_from_file_location("kill_worker", path)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(path), str(out), "5"], env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "stopped").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [s for s, _ in ck.checkpoints(out)] == [2, 4] and not (out / "model.safetensors").exists()
    resumed = worker.run(str(out), resume=True)
    whole = worker.run(str(tmp_path / "whole"))
    a, b = _weights(whole.model), _weights(resumed.model)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    logged = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 9))  # step 5's row from before the kill is not there twice
    loaded, _ = actlab.load_model(str(out))
    assert max(float((v - b[k]).abs().max()) for k, v in loaded.state_dict().items()) == 0.0


#: one config per registered objective, run through the same kill-and-resume (a new objective adds its row)
CASES = {
    "dense": {"adapter": "full"},
    "deft": {"adapter": "full"},
    "mask-lora": {"plan": "{plan}", "recalibrate_every": 2, "kl": 0.5},
    "relufy": {"adapter": "full", "kl": 0.5},
    "topk-ste": {"sparsity": 0.5},
}


def test_every_registered_objective_has_a_resume_case():
    import actlab.train.objectives  # noqa: F401
    from actlab.train.config import CONFIGS

    assert sorted(CONFIGS) == sorted(CASES)


@pytest.mark.parametrize("objective", sorted(CASES))
def test_every_objective_resumes_to_the_uninterrupted_run(tmp_path, objective):
    from actlab.train.config import config_from_dict

    if "{plan}" in CASES[objective].values():
        model, _ = actlab.load_model("random:tiny-llama")
        actlab.sparsify_(model, actlab.TealConfig(0.5), DATA[:4]).save(tmp_path / "plan")
    fields = {k: str(tmp_path / "plan") if v == "{plan}" else v for k, v in CASES[objective].items()}
    config = config_from_dict({"objective": objective, **fields})
    kw = dict(tokens=4 * 2 * SEQ, checkpoint_every=2, calib_tokens=4 * SEQ)
    whole = _run(tmp_path / "whole", config, **kw)
    with pytest.raises(Killed):
        _run(tmp_path / "cut", config, kill_at=3, **kw)
    resumed = _run(tmp_path / "cut", config, resume=True, **kw)
    a, b = _weights(whole.model), _weights(resumed.model)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert _close(resumed.history, whole.history)
    loaded, _ = actlab.load_model(str(tmp_path / "cut"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(EVAL).logits, resumed.model(EVAL).logits)
