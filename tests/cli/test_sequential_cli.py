"""``actlab calibrate --sequential``: layers on disk, one at a time; the same plan; bad input is one line."""

import pytest
from typer.testing import CliRunner

from actlab.cli.main import app
from actlab.sparsity.plan import SparsityPlan

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def model_dir(tiny_llama_saved):
    return tiny_llama_saved[1]


def test_sequential_plan_equals_the_full_one(tmp_path, model_dir, corpus):
    common = ["calibrate", "--model", model_dir, "--seq-len", 64, "--method", "wina", "--sparsity", 0.4,
              "--data", corpus, "--tokens", 512]
    full = _run(*common, "--out", tmp_path / "full")
    seq = _run(*common, "--sequential", "--out", tmp_path / "seq")
    assert full.exit_code == 0, full.output
    assert seq.exit_code == 0, seq.output
    a, b = SparsityPlan.load(tmp_path / "full"), SparsityPlan.load(tmp_path / "seq")
    for x, y in zip(a.entries, b.entries, strict=True):
        assert x.site == y.site and (x.threshold - y.threshold).abs().max() <= 1e-5


def test_sequential_global_is_one_error_line(tmp_path, model_dir, corpus):
    out = tmp_path / "plan"
    res = _run("calibrate", "--model", model_dir, "--seq-len", 64, "--method", "teal", "--sparsity", 0.5,
               "--allocation", "global", "--sequential", "--data", corpus, "--tokens", 512, "--out", out)
    assert res.exit_code != 0
    assert "error:" in res.output and "cannot run layer by layer" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert not out.exists()
