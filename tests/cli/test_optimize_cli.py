"""``actlab optimize``: the README's main job, on a tiny model, and its bad input."""

import json

import pytest
from typer.testing import CliRunner

from actlab.cli.main import app

runner = CliRunner()


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Sparse activations make decoding faster when kernels skip the zeros. " * 400)
    return path


def _run(*args):
    return runner.invoke(app, ["optimize", *map(str, args)])


def test_optimize_end_to_end_json(tmp_path, corpus):
    out = tmp_path / "run"
    res = _run("--model", "random:tiny-llama", "--data", corpus, "--method", "teal", "--sparsity", 0.3,
               "--calib-tokens", 512, "--search-tokens", 256, "--eval-tokens", 256, "--seq-len", 64,
               "--new-tokens", 4, "--threads", 1, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["chosen"] == "teal" and summary["sparsity_target"] == 0.3
    assert (out / "report.html").is_file() and (out / "plan" / "plan.json").is_file()
    assert "library_name: actlab" in (out / "plan" / "README.md").read_text()  # the plan is a Hub artefact


@pytest.mark.parametrize("args, pattern", [
    (["--sparsity", 0.5, "--max-ppl-increase", 5], "not both"),
    (["--eval-tokens", 0], "positive"),
    (["--method", "nosuch", "--sparsity", 0.5], "unknown sparsification method"),
    (["--model", "random:nosuch"], "nosuch"),
    (["--confidence", 1.2], "--confidence must be"),
])
def test_optimize_bad_input_one_line_nothing_written(tmp_path, corpus, args, pattern):
    out = tmp_path / "run"
    res = _run("--model", "random:tiny-llama", "--data", corpus, *args, "--out", out)
    assert res.exit_code != 0
    assert pattern in res.output
    assert not out.exists()
