"""No command ends in a traceback: unexpected errors, --debug, Ctrl-C, and optimize's early checks."""

import pytest
from typer.testing import CliRunner

import actlab.envinfo
from actlab.cli.main import app

runner = CliRunner()


def _boom():
    raise RuntimeError("disk on fire\nsecond line")


def test_unexpected_error_is_one_line_exit_1(monkeypatch):
    monkeypatch.setattr(actlab.envinfo, "collect", _boom)
    monkeypatch.delenv("ACTLAB_DEBUG", raising=False)
    res = runner.invoke(app, ["env"])
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines[0].startswith("error: RuntimeError: disk on fire")
    assert "second line" not in res.output
    assert "--debug" in res.output and "ACTLAB_DEBUG=1" in res.output


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_exception(monkeypatch, how):
    monkeypatch.setattr(actlab.envinfo, "collect", _boom)
    if how == "env":
        monkeypatch.setenv("ACTLAB_DEBUG", "1")
        res = runner.invoke(app, ["env"])
    else:
        monkeypatch.delenv("ACTLAB_DEBUG", raising=False)
        res = runner.invoke(app, ["--debug", "env"])
    assert isinstance(res.exception, RuntimeError)
    assert res.exit_code == 1


def test_debug_flag_does_not_stick(monkeypatch):
    monkeypatch.delenv("ACTLAB_DEBUG", raising=False)
    monkeypatch.setattr(actlab.envinfo, "collect", _boom)
    runner.invoke(app, ["--debug", "env"])
    res = runner.invoke(app, ["env"])
    assert res.exit_code == 1 and not isinstance(res.exception, RuntimeError)


def test_ctrl_c_says_nothing_was_left(monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(actlab.envinfo, "collect", interrupted)
    res = runner.invoke(app, ["env"])
    assert res.exit_code == 130
    assert "interrupted" in res.output and "nothing was written" in res.output
    assert "Traceback" not in res.output


def test_optimize_fails_before_profiling_when_the_engine_cannot_run(tmp_path, monkeypatch):
    """A transformers release the engine does not know is found in seconds, not after the pipeline."""
    import importlib

    import actlab.engine.bench  # noqa: F401  bound to the real generate before it is patched, not during
    import actlab.profile

    def renamed(*args, **kwargs):
        raise TypeError("LlamaForCausalLM.forward() got an unexpected keyword argument 'past_key_values'")

    def never(*args, **kwargs):
        raise AssertionError("profiling started before the preflight")

    monkeypatch.setattr(importlib.import_module("actlab.engine.generate"), "generate", renamed)
    monkeypatch.setattr(actlab.profile, "profile_model", never)
    corpus = tmp_path / "notes.txt"
    corpus.write_text("Sparse activations make decoding faster when kernels skip the zeros. " * 400)
    out = tmp_path / "run"
    res = runner.invoke(app, ["optimize", "--model", "random:tiny-llama", "--data", str(corpus), "--method", "teal",
                              "--sparsity", "0.3", "--calib-tokens", "512", "--search-tokens", "256",
                              "--eval-tokens", "256", "--seq-len", "64", "--threads", "1", "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and "decode engine failed" in res.output and "past_key_values" in res.output
    assert not out.exists()
