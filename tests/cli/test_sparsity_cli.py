"""``actlab calibrate`` -> ``eval`` -> ``generate`` end to end on a tiny model; bad input is one clean line."""

import json

import pytest
from typer.testing import CliRunner

from actlab.cli.main import app

runner = CliRunner()
COMMON = ["--model", "random:tiny-llama", "--seq-len", "64"]


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _json(res) -> dict:
    return json.loads(res.stdout[res.stdout.index("{"):])


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("plans") / "teal"
    res = _run("calibrate", *COMMON, "--method", "teal", "--sparsity", "0.5", "--data", corpus,
               "--tokens", 1024, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    summary = _json(res)
    for key in ("plan", "method", "allocation", "sparsity_model_wide", "bytes_skipped_frac"):
        assert key in summary
    assert summary["method"] == "teal" and abs(summary["sparsity_model_wide"] - 0.5) < 0.02
    return out


def test_calibrate_writes_a_loadable_plan(plan_dir):
    import actlab

    plan = actlab.SparsityPlan.load(plan_dir)
    assert plan.method == "teal" and plan.calibration["data"].endswith("notes.txt")
    assert plan.calibration["split"] == "calib"
    card = (plan_dir / "README.md").read_text()  # the directory is a Hub artefact as written
    assert "library_name: actlab" in card and "# teal activation-sparsity plan" in card


def test_plan_as_hub_repo_id_offline_is_one_error_line(corpus, monkeypatch, tmp_path):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    res = _run("eval", *COMMON, "--plan", "nobody/no-such-plan", "--data", corpus, "--tokens", 256)
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines[0].startswith("error: no local directory 'nobody/no-such-plan', and cannot fetch"), res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("protocol", ["strict", "teal"])
def test_eval_reports_dense_and_sparse(plan_dir, corpus, protocol):
    res = _run("eval", *COMMON, "--plan", plan_dir, "--data", corpus, "--tokens", 512,
               "--protocol", protocol, "--json")
    assert res.exit_code == 0, res.output
    d = _json(res)
    for key in ("ppl_dense", "ppl", "ppl_increase_pct", "sparsity_model_wide", "bytes_skipped_frac",
                "protocol", "tokens"):
        assert key in d
    assert d["protocol"] == protocol
    assert d["ppl"] != d["ppl_dense"]
    assert 0.4 < d["sparsity_model_wide"] < 0.6
    assert 0.0 < d["bytes_skipped_frac"] < d["sparsity_model_wide"]  # the LM head stays dense
    assert d["tokens"] == (8 * 63 if protocol == "strict" else 8 * 32)


def test_eval_without_plan_is_dense(corpus):
    res = _run("eval", *COMMON, "--data", corpus, "--tokens", 256, "--json")
    assert res.exit_code == 0, res.output
    d = _json(res)
    assert d["ppl"] == d["ppl_dense"] and d["sparsity_model_wide"] == 0.0


def test_generate_with_plan(plan_dir):
    res = _run("generate", "--model", "random:tiny-llama", "--plan", plan_dir, "--max-new-tokens", 5,
               "--json", "hello")
    assert res.exit_code == 0, res.output
    d = _json(res)
    assert d["prompt"] == "hello" and d["new_tokens"] == 5


def test_calibrate_with_quality_target(tmp_path, corpus):
    out = tmp_path / "q"
    res = _run("calibrate", *COMMON, "--method", "wina", "--max-ppl-increase", "1", "--data", corpus,
               "--tokens", 512, "--search-tokens", 256, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    d = _json(res)
    assert d["ppl_increase_pct"] <= 1.0 and d["method"] == "wina"
    assert (out / "plan.json").is_file()


def _assert_clean_failure(res, pattern, out=None):
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and pattern in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    if out is not None:
        assert not out.exists()


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--method", "nope", "--sparsity", "0.5"], "unknown method 'nope'"),
        (["--method", "teal"], "exactly one of"),
        (["--method", "teal", "--sparsity", "0.5", "--max-ppl-increase", "1"], "exactly one of"),
        (["--method", "cats", "--sparsity", "0.3", "--allocation", "greedy"], "uniform only"),
        (["--method", "teal", "--sparsity", "1.5"], "sparsity must be in"),
        (["--method", "cats", "--sparsity", "0.6"], "cannot reach"),
        (["--method", "cett", "--sparsity", "0.5"], "knob is the CETT target"),
        (["--method", "chess", "--sparsity", "0.4", "--rotate", "attn.o_in"], "teal and wina, not chess"),
        (["--method", "teal", "--sparsity", "0.5", "--rotate", "mlp.down_in"], "cannot rotate"),
    ],
)
def test_calibrate_bad_input(tmp_path, corpus, args, pattern):
    out = tmp_path / "plan"
    res = _run("calibrate", *COMMON, *args, "--data", corpus, "--tokens", 512, "--out", out)
    _assert_clean_failure(res, pattern, out)
    assert not list(tmp_path.glob(".plan.tmp-*"))


def test_rotated_plan_calibrates_evaluates_and_is_refused_by_bench(tmp_path, corpus):
    out = tmp_path / "rot"
    res = _run("calibrate", *COMMON, "--method", "teal", "--sparsity", "0.5", "--rotate", "mlp.gate_up_in",
               "--rotate", "attn.o_in", "--data", corpus, "--tokens", 1024, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    summary = _json(res)
    assert summary["rotate"] == ["mlp.gate_up_in", "attn.o_in"]
    assert summary["sparsity_model_wide_net"] < summary["sparsity_model_wide"]
    assert "net of rotations" in res.output
    res = _run("eval", *COMMON, "--plan", out, "--data", corpus, "--tokens", 256, "--json")
    assert res.exit_code == 0, res.output
    d = _json(res)
    assert d["sparsity_model_wide_net"] < d["sparsity_model_wide"] and d["ppl_increase_pct"] != 0
    res = _run("bench", "--model", "random:tiny-llama", "--plan", out, "--new-tokens", 4)
    _assert_clean_failure(res, "masking path")


def test_eval_refuses_a_plan_for_another_model(plan_dir, corpus):
    res = _run("eval", "--model", "random:tiny-qwen2", "--seq-len", 64, "--plan", plan_dir, "--data", corpus,
               "--tokens", 256)
    _assert_clean_failure(res, "does not fit this model")


def test_eval_refuses_a_broken_plan(tmp_path, plan_dir, corpus):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(plan_dir, broken)
    (broken / "plan.json").write_text((broken / "plan.json").read_text()[:100])
    res = _run("eval", *COMMON, "--plan", broken, "--data", corpus, "--tokens", 256)
    _assert_clean_failure(res, "not valid JSON")


def test_eval_bad_protocol(plan_dir, corpus):
    res = _run("eval", *COMMON, "--plan", plan_dir, "--data", corpus, "--protocol", "lenient")
    _assert_clean_failure(res, "unknown --protocol")


def test_help_teaches():
    for command in ("calibrate", "eval", "generate"):
        res = _run(command, "--help")
        assert res.exit_code == 0 and "Example" in res.output
