"""``actlab train``: every bad argument is one error line before the model loads; a tiny run end to end."""

from __future__ import annotations

import dataclasses
import json
import shlex

import pytest
from typer.testing import CliRunner

import actlab.models.load
from actlab.cli import train as train_cli
from actlab.cli import train_config
from actlab.cli.main import app

runner = CliRunner()
TINY = ["--model", "random:tiny-llama", "--seq-len", "32", "--batch-size", "2", "--threads", "1"]


class _Loaded(Exception):
    """Raised instead of loading a model: the command got past every check (the CLI shows it as exit 1)."""


def _refuse(*args, **kwargs):
    raise _Loaded


@pytest.fixture
def no_model(monkeypatch):
    monkeypatch.setattr(actlab.models.load, "load_model", _refuse)


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _json(res) -> dict:
    return json.loads(res.stdout[res.stdout.index("{"):])


def _assert_clean_failure(res, pattern: str) -> None:
    assert res.exit_code == 2 and "_Loaded" not in res.output, res.output  # exit 1 "_Loaded": the model loaded first
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert pattern in res.output.replace("\n", " "), res.output


@pytest.mark.parametrize("args, pattern", [
    (["--objective", "nope"], "unknown --objective 'nope'; use one of dense"),
    (["--objective", "dense", "--set", "weight=1"], "unknown --set field 'weight' for objective dense; its fields "
                                                     "are adapter, lora_r"),
    (["--objective", "dense", "--set", "lora_r"], "is not field=value"),
    (["--objective", "dense", "--set", "lora_r=eight"], "lora_r=eight: expected an integer"),
    (["--objective", "dense", "--set", "adapter=qlora"], "unknown adapter 'qlora'"),
    (["--objective", "deft", "--set", "eps=-1"], "eps must be a finite number > 0"),
    (["--objective", "mask-lora", "--set", "plan=no/such/plan"], "no/such/plan"),
    (["--objective", "dense", "--tokens", "0"], "--tokens must be positive, got 0"),
    (["--objective", "dense", "--tokens", "-5"], "--tokens must be positive"),
    (["--objective", "dense", "--tokens", "10"], "less than one optimizer step"),
    (["--objective", "dense", "--warmup", "1.5"], "--warmup is a fraction"),
    (["--objective", "dense", "--lr", "0"], "--lr must be a positive number"),
    (["--objective", "dense", "--precision", "fp16"], "unknown --precision 'fp16'"),
    (["--objective", "dense", "--grad-accum", "0"], "--grad-accum must be positive"),
    (["--objective", "dense", "--eval-every", "-1"], "--eval-every must be at least 0"),
    ([], "give --objective"),
])
def test_bad_arguments_fail_before_the_model(tmp_path, corpus, no_model, args, pattern):
    out = tmp_path / "run"
    res = _run("train", *TINY, "--data", corpus, *args, "--out", out)
    _assert_clean_failure(res, pattern)
    assert list(tmp_path.iterdir()) == []  # no output directory, no lock file


def test_bad_out_and_resume(tmp_path, corpus, no_model):
    afile = tmp_path / "afile"
    afile.write_text("x")
    base = ["train", *TINY, "--data", corpus, "--objective", "dense"]
    _assert_clean_failure(_run(*base, "--out", afile), "exists and is not a directory")
    _assert_clean_failure(_run(*base, "--out", afile / "sub"), "is a file, not a directory")
    _assert_clean_failure(_run(*base, "--out", tmp_path / "new", "--resume"), "does not exist; start the run without")
    (tmp_path / "empty").mkdir()
    _assert_clean_failure(_run(*base, "--out", tmp_path / "empty", "--resume"), "holds no checkpoint")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.md").write_text("mine")
    _assert_clean_failure(_run(*base, "--out", foreign), "files actlab did not write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "empty", "foreign"]


def test_config_file(tmp_path, corpus, no_model):
    base = ["train", *TINY, "--data", corpus, "--out", tmp_path / "run"]
    cfg = tmp_path / "deft.json"
    cfg.write_text(json.dumps({"objective": "deft", "weight": 0.5}))
    _assert_clean_failure(_run(*base, "--objective", "dense", "--config", cfg), "is for objective 'deft'")
    (tmp_path / "bad.json").write_text("{nope")
    _assert_clean_failure(_run(*base, "--objective", "dense", "--config", tmp_path / "bad.json"), "is not JSON")
    (tmp_path / "odd.json").write_text(json.dumps({"weight": 0.5, "colour": "red"}))
    _assert_clean_failure(_run(*base, "--objective", "deft", "--config", tmp_path / "odd.json"),
                          "unknown field(s) colour for objective deft")
    # a good config passes every check (the model load is where it stops here)
    res = _run(*base, "--config", cfg, "--set", "eps=1e-6")
    assert res.exit_code == 1 and "error: _Loaded" in res.output, res.output
    config = train_config.build_config(None, cfg, ["eps=1e-6", "lora_targets=q_proj,v_proj"])
    assert (config.objective, config.weight, config.eps, config.lora_targets) == ("deft", 0.5, 1e-6,
                                                                                  ("q_proj", "v_proj"))


def test_parse_value_follows_the_field_type():
    assert train_config.parse_value("k", "3", int) == 3
    assert train_config.parse_value("k", "1e-4", float) == 1e-4
    assert train_config.parse_value("k", "yes", bool) is True and train_config.parse_value("k", "0", bool) is False
    assert train_config.parse_value("k", "a, b", tuple[str, ...]) == ["a", "b"]
    assert train_config.parse_value("k", "none", float | None) is None
    assert train_config.parse_value("k", "0.5", float | None) == 0.5
    assert train_config.parse_value("k", "007", str) == "007"


def test_defaults_are_the_loops():
    """The command's defaults are TrainArgs' (the help's numbers are what a Python caller gets)."""
    import inspect

    from actlab.train import precision
    from actlab.train.loop import TrainArgs

    params = inspect.signature(train_cli.train).parameters
    defaults = TrainArgs()
    for f in dataclasses.fields(TrainArgs):
        if f.name in params:
            assert params[f.name].default.default == getattr(defaults, f.name), f.name
    assert train_cli.PRECISIONS == precision.PRECISIONS


def test_help_lists_every_objective_and_its_examples_are_valid():
    from actlab.train.config import CONFIGS

    res = _run("train", "--help")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for name, cls in CONFIGS.items():
        first = " ".join(cls.__doc__.strip().splitlines()[0].replace("``", "").split())
        assert f"* {name}: {first[:30]}" in text, (name, first)
    examples = [ln.strip() for ln in train_cli.train.__doc__.splitlines() if ln.strip().startswith("actlab train")]
    assert len(examples) >= 5
    for ex in examples:
        words = shlex.split(ex)
        objective = words[words.index("--objective") + 1]
        assert objective in CONFIGS, ex
        fields = train_config.field_types(CONFIGS[objective])
        sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        for item in sets:
            assert item.split("=", 1)[0] in fields, (ex, item)


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from actlab.cli.main import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_tiny_run_end_to_end(tmp_path, corpus):
    out = tmp_path / "run"
    args = ["train", *TINY, "--data", corpus, "--objective", "dense", "--tokens", 512, "--eval-tokens", 128,
            "--checkpoint-every", 4, "--set", "lora_r=4", "--out", out]
    res = _run(*args, "--json")
    assert res.exit_code == 0, res.output
    s = _json(res)
    assert s["objective"] == "dense" and s["tokens"] == 512 and s["steps"] == 8
    assert s["config"]["lora_r"] == 4 and s["evals"] == 2
    assert s["ppl_before"] > 0 and s["ppl_after"] > 0 and 0 < s["density_before"] <= 1
    assert s["report"] == str(out / "report.html") and (out / "report.html").is_file()
    assert "Training run: dense" in (out / "report.html").read_text()
    for name in ("config.json", "model.safetensors", "train_config.json", "log.jsonl", "checkpoints"):
        assert (out / name).exists(), name
    manifest = json.loads((out / ".actlab-outputs.json").read_text())["files"]
    assert "report.html" in manifest  # actlab's own: --overwrite may replace it

    model, _ = actlab.models.load.load_model(str(out))  # an ordinary model directory
    assert model.config.model_type == "llama"
    ev = _run("eval", "--model", out, "--data", corpus, "--seq-len", 32, "--tokens", 128, "--json")
    assert ev.exit_code == 0, ev.output
    assert _json(ev)["ppl_dense"] == pytest.approx(s["ppl_after"], rel=1e-3)

    again = _run(*args)
    _assert_clean_failure(again, "outputs of an earlier actlab run")
    with pytest.MonkeyPatch.context() as mp:  # a resume with other settings fails before the model loads
        mp.setattr(actlab.models.load, "load_model", _refuse)
        changed = _run(*args[:-2], "--lr", "1e-3", "--out", out, "--resume")
    _assert_clean_failure(changed, "args.lr (0.0002 in the checkpoint, 0.001 now)")
    resumed = _run(*args, "--resume", "--json")  # from the step-4 checkpoint: the same run again
    assert resumed.exit_code == 0, resumed.output
    assert _json(resumed)["ppl_after"] == pytest.approx(s["ppl_after"], rel=1e-4)
    assert _run(*args, "--overwrite").exit_code == 0


def test_mask_lora_run_writes_its_plan(tmp_path, corpus):
    plan = tmp_path / "teal50"
    res = _run("calibrate", "--model", "random:tiny-llama", "--seq-len", 32, "--data", corpus, "--method", "teal",
               "--sparsity", 0.5, "--tokens", 256, "--out", plan)
    assert res.exit_code == 0, res.output
    out = tmp_path / "run"
    res = _run("train", *TINY, "--data", corpus, "--objective", "mask-lora", "--set", f"plan={plan}", "--tokens", 256,
               "--eval-tokens", 64, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    s = _json(res)
    assert s["plan"] == str(out / "plan") and (out / "plan" / "plan.json").is_file()
    assert f"(actlab eval --model {out} --plan {out / 'plan'})" in res.output  # the next step, copy-pasteable
    ev = _run("eval", "--model", out, "--plan", out / "plan", "--data", corpus, "--seq-len", 32, "--tokens", 64)
    assert ev.exit_code == 0, ev.output  # the plan is fingerprinted for the merged model


def test_no_evaluation(tmp_path, corpus):
    out = tmp_path / "run"
    res = _run("train", *TINY, "--data", corpus, "--objective", "dense", "--set", "adapter=full", "--tokens", 128,
               "--eval-tokens", 0, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    s = _json(res)
    assert s["evals"] == 0 and s["ppl_before"] is None and s["ppl_after"] is None and s["tokens"] == 128
    assert "evaluated nothing" in (out / "report.html").read_text()
