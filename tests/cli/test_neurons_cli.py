"""``actlab neurons`` end to end on a tiny random model, and its bad inputs: one line, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from actlab.cli.common import guarded
from actlab.cli.neurons import neurons, parse_range

runner = CliRunner()
app = typer.Typer(pretty_exceptions_enable=False)
app.command(name="neurons")(guarded(neurons))
app.command(name="noop")(lambda: None)  # two commands: the first argument names one, as in the real app


def _run(*args):
    return runner.invoke(app, ["neurons", *map(str, args)])


def _tiny(corpus, out, *extra):
    return _run("--model", "random:tiny-llama", "--data", corpus, "--tokens", 512, "--seq-len", 32,
                "--layers", "0-1", "--neurons", "0-5", "--k", 4, "--out", out, *extra)


def _index(out) -> dict:
    text = (out / "data" / "index.js").read_text()
    return json.loads(text[len("window.NEURONS = "):].rstrip().rstrip(";"))


def test_parse_range():
    assert parse_range("--layers", "0-2,5,1") == [0, 1, 2, 5]


def test_neurons_end_to_end(tmp_path, corpus):
    pytest.importorskip("actlab.interp.records", reason="actlab.interp.records not built yet")
    pytest.importorskip("actlab.interp.lm_head", reason="actlab.interp.lm_head not built yet")
    out = tmp_path / "site"
    res = _tiny(corpus, out, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["neurons"] == 12 and summary["layers"] == [0, 1] and summary["tokens"] == 512
    idx = _index(out)
    assert sorted(r[0] for r in idx["rows"]) == sorted(f"layers.{n}.mlp.act_out/{i}" for n in (0, 1) for i in range(6))
    page = next(r[-1] for r in idx["rows"] if r[0] == "layers.1.mlp.act_out/3")
    text = (out / "data" / "n" / f"{page}.js").read_text()
    rec = json.loads(text[len("actlabNeuron("):].rstrip().rstrip(";")[:-1])
    assert 1 <= len(rec["top_contexts"]) <= 4 and rec["lm_head"] and len(rec["lm_head"]["top"]) == 10
    values = [c["value"] for c in rec["top_contexts"]]
    assert values == sorted(values, reverse=True)
    for c in rec["top_contexts"]:  # the shown activation at the top token is the recorded one
        assert c["acts"][c["center"]] == pytest.approx(c["value"], rel=1e-3, abs=1e-4)
        assert len(c["tokens"]) == len(c["acts"]) <= 21
    assert rec["ablation"] is None


def test_neurons_with_ablation(tmp_path, corpus):
    pytest.importorskip("actlab.interp.records", reason="actlab.interp.records not built yet")
    pytest.importorskip("actlab.interp.ablate", reason="actlab.interp.ablate not built yet")
    out = tmp_path / "site"
    res = _run("--model", "random:tiny-llama", "--data", corpus, "--tokens", 256, "--seq-len", 32,
               "--layers", "1", "--neurons", "0-1", "--k", 2, "--ablate", "--ablate-tokens", 64, "--out", out)
    assert res.exit_code == 0, res.output
    idx = _index(out)
    rec_text = (out / "data" / "n" / f"{idx['rows'][0][-1]}.js").read_text()
    assert '"ablation":{"delta_loss":' in rec_text


@pytest.mark.parametrize(("args", "message"), [
    (("--layers", "3-1"), "--layers '3-1'"),
    (("--layers", "x"), "not a list of indices"),
    (("--k", 0), "--k must be positive"),
    (("--tokens", -4), "--tokens"),
])
def test_bad_options_fail_before_any_work(tmp_path, corpus, args, message):
    out = tmp_path / "site"
    res = _run("--model", "random:tiny-llama", "--data", corpus, "--out", out, *args)
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_bad_selections_are_one_error_line(tmp_path, corpus):
    pytest.importorskip("actlab.interp.records", reason="actlab.interp.records not built yet")
    for extra, message in ((("--layers", "7"), "no site matches"), (("--neurons", "500"), "outside"),
                           (("--site", "mlp.nothing"), "no site matches")):
        out = tmp_path / "site"
        res = _run("--model", "random:tiny-llama", "--data", corpus, "--tokens", 128, "--seq-len", 32,
                   "--out", out, *extra)
        assert res.exit_code == 2, res.output
        assert message in res.output and "Traceback" not in res.output
        assert not out.exists()


def test_a_non_empty_out_is_refused(tmp_path, corpus):
    out = tmp_path / "site"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    res = _tiny(corpus, out)
    assert res.exit_code == 2 and "not empty" in res.output
    assert (out / "mine.txt").read_text() == "keep"
