"""Checks come first: a bad option of any command is one ``error:`` line, exit code 2, before any model or
corpus is loaded; ``--out`` never destroys data and is locked while a run writes it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

import actlab
import actlab.data.corpus
import actlab.models.load
from actlab.cli.main import app

runner = CliRunner()


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Sparse activations make decoding faster when kernels skip the zeros. " * 200)
    return path


@pytest.fixture
def expensive(monkeypatch):
    """Records every model load and corpus build (and stops it): a fast failure records none."""
    calls: list[str] = []

    def loader(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called before the options were checked")
        return call

    for module in (actlab, actlab.models.load):
        monkeypatch.setattr(module, "load_model", loader("load_model"))
    for module in (actlab, actlab.data.corpus):
        monkeypatch.setattr(module, "load_corpus", loader("load_corpus"))
    return calls


def _errors(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("error:")]


BAD = [
    ("profile", ["--tokens", "-5"], "--tokens must be positive"),
    ("profile", ["--batch-size", "0"], "--batch-size must be positive"),
    ("profile", ["--massive-ratio", "nan"], "--massive-ratio must be a positive number"),
    ("profile", ["--seq-len", "1"], "--seq-len must be at least 2"),
    ("profile", ["--data", "/no/such/corpus.txt"], "does not exist"),
    ("calibrate", ["--sparsity", "1.5"], r"--sparsity must be in \[0, 1\)"),
    ("calibrate", ["--max-ppl-increase", "-1"], "--max-ppl-increase must be a finite number >= 0"),
    ("calibrate", ["--method", "nosuch", "--sparsity", "0.5"], "unknown method 'nosuch'"),
    ("calibrate", ["--sparsity", "0.5", "--search-tokens", "0"], "--search-tokens must be positive"),
    ("calibrate", ["--sparsity", "0.5", "--allocation", "magic"], "unknown allocation 'magic'"),
    ("eval", ["--batch-size", "0"], "--batch-size must be positive"),
    ("eval", ["--protocol", "weird"], "unknown --protocol 'weird'"),
    ("eval", ["--plan", "/no/such/plan"], "--plan /no/such/plan does not exist"),
    ("eval", ["--threads", "-1"], "--threads must be at least 0"),
    ("generate", ["--max-new-tokens", "0", "hello"], "--max-new-tokens must be positive"),
    ("generate", ["--sample", "--temperature", "0", "hello"], "--temperature must be a positive number"),
    ("generate", ["--seed", str(2**64), "hello"], "--seed must be in"),
    ("generate", [""], "the prompt is empty"),
    ("bench", ["--method", "teal", "--sparsity", "0.5", "--new-tokens", "1"], "--new-tokens must be at least 2"),
    ("bench", ["--method", "teal", "--sparsity", "0.5", "--reps", "0"], "--reps must be positive"),
    ("bench", ["--method", "teal", "--sparsity", "2"], r"--sparsity must be in \[0, 1\)"),
    ("bench", ["--plan", "/no/such/plan"], "does not exist"),
    ("optimize", ["--new-tokens", "-5"], "--new-tokens must be at least 2"),
    ("optimize", ["--max-ppl-increase", "nan"], "--max-ppl-increase must be a finite number >= 0"),
    ("optimize", ["--sparsity", "1.0"], r"--sparsity must be in \[0, 1\)"),
    ("optimize", ["--method", "nosuch"], "unknown sparsification method 'nosuch'"),
    ("optimize", ["--threads", "0"], "--threads must be positive"),
]


@pytest.mark.parametrize("command, args, pattern", BAD, ids=[f"{c}:{a[-2] if len(a) > 1 else a[0]}" for c, a, _ in BAD])
def test_bad_option_fails_fast_with_one_error_line(tmp_path, corpus, expensive, command, args, pattern):
    import re

    out = ["--out", str(tmp_path / "out")] if command in ("profile", "calibrate", "optimize") else []
    data = [] if "--data" in args or command == "generate" else ["--data", str(corpus)]
    res = runner.invoke(app, [command, "--model", "random:tiny-llama", *data, *out, *args])
    assert res.exit_code == 2, res.output
    errors = _errors(res.output)
    assert len(errors) == 1 and re.search(pattern, errors[0]), res.output
    assert "Traceback" not in res.output
    assert expensive == []
    assert not (tmp_path / "out").exists()


def test_foreign_out_is_refused_before_the_model_loads(tmp_path, corpus, expensive):
    out = tmp_path / "D"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    res = runner.invoke(app, ["calibrate", "--model", "random:tiny-llama", "--data", str(corpus), "--sparsity",
                              "0.3", "--out", str(out)])
    assert res.exit_code == 2 and "--overwrite" in _errors(res.output)[0], res.output
    (out / "report.html").write_text("the user's report")
    res = runner.invoke(app, ["optimize", "--model", "random:tiny-llama", "--data", str(corpus), "--out", str(out),
                              "--overwrite"])
    assert res.exit_code == 2 and "report.html was not written by actlab" in _errors(res.output)[0], res.output
    assert expensive == []
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "report.html"]


_HOLD = """
import sys, time
from actlab.outputs import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_second_run_on_a_locked_out_fails_at_once_naming_the_first(tmp_path, corpus, expensive):
    out = tmp_path / "D"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = runner.invoke(app, ["optimize", "--model", "random:tiny-llama", "--data", str(corpus),
                                  "--out", str(out)])
    finally:
        holder.kill()
        holder.wait()
    assert res.exit_code == 2, res.output
    assert f"being written by another actlab run (pid {holder.pid}" in _errors(res.output)[0]
    assert expensive == []


def test_only_rank_0_of_a_launched_run_checks_and_locks_out(tmp_path, monkeypatch):
    # torchrun starts every rank at once: a rank > 0 that took the lock for its check would make rank 0's
    # check fail against its own sibling (rank 0 alone writes, so it alone checks)
    from actlab.cli import checks

    out = tmp_path / "D"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setenv("RANK", "1")
        checks.out_dir(out, False)  # neither refused nor locking
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(typer.Exit):
            checks.out_dir(out, False)
    finally:
        holder.kill()
        holder.wait()


def test_profile_overwrite_replaces_its_own_outputs_and_keeps_the_users(tmp_path, corpus):
    out = tmp_path / "D"
    args = ["profile", "--model", "random:tiny-llama", "--data", str(corpus), "--tokens", "256", "--seq-len", "64",
            "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    first = json.loads((out / "profile.json").read_text())
    (out / "mine.txt").write_text("keep me")
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--overwrite" in _errors(res.output)[0]
    res = runner.invoke(app, [*args, "--overwrite", "--tokens", "128"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "profile.json").read_text())["tokens"] != first["tokens"]
    assert (out / "mine.txt").read_text() == "keep me"


def test_json_output_is_valid_json_with_non_finite_numbers(capsys):
    import torch

    from actlab.cli.common import print_json

    print_json({"ppl": float("nan"), "curve": [1.0, float("inf"), -float("inf")], "t": torch.tensor(float("nan")),
                "nested": {"x": (float("nan"), 2)}})
    doc = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert doc == {"ppl": None, "curve": [1.0, None, None], "t": None, "nested": {"x": [None, 2]}}


def test_optimize_twice_on_one_out_never_deletes_the_users_file(tmp_path, corpus):
    """The case of the issue: a user's file inside D/plan/ survives a second optimize --out D."""
    out = tmp_path / "D"
    args = ["optimize", "--model", "random:tiny-llama", "--data", str(corpus), "--method", "teal", "--sparsity", "0.3",
            "--calib-tokens", "256", "--search-tokens", "128", "--eval-tokens", "128", "--seq-len", "64",
            "--new-tokens", "2", "--threads", "1", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    (out / "plan" / "notes.md").write_text("why I chose this plan")
    before = (out / "report.html").read_text()
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--overwrite" in _errors(res.output)[0], res.output
    assert (out / "report.html").read_text() == before
    res = runner.invoke(app, [*args, "--overwrite", "--sparsity", "0.4"])
    assert res.exit_code == 0, res.output
    assert (out / "plan" / "notes.md").read_text() == "why I chose this plan"
    assert actlab.SparsityPlan.load(out / "plan").config.sparsity == 0.4
