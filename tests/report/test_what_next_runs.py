"""The report's "What next" commands run as printed, on a real plan of a tiny model."""

from __future__ import annotations

import shlex

import pytest
import torch
from typer.testing import CliRunner

import actlab
from actlab.cli.main import app
from actlab.report.optimize_next import commands


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory):
    model, _ = actlab.load_model("random:tiny-llama")
    calib = torch.randint(3, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("next") / "my plan"  # a space: the commands must quote it
    actlab.calibrate(model, actlab.TealConfig(0.5), calib).save(path)
    return path


@pytest.fixture
def summary(plan_dir, summary_factory):
    s = summary_factory()
    s["plan"] = str(plan_dir)
    return s


def test_generate_command_runs(summary):
    argv = shlex.split(commands(summary)["generate"])
    assert argv[0] == "actlab" and argv[argv.index("--plan") + 1] == summary["plan"]
    res = CliRunner().invoke(app, [*argv[1:], "--max-new-tokens", "3"])
    assert res.exit_code == 0, res.output


def test_python_snippet_runs_and_leaves_the_model_dense(summary, capsys):
    scope: dict = {}
    exec(compile(commands(summary)["python"], "<what next>", "exec"), scope)  # noqa: S102 - our own snippet
    assert all(type(m).__module__.startswith(("torch.", "transformers.")) for m in scope["model"].modules())
    assert capsys.readouterr().out.strip()
