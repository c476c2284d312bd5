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


@pytest.fixture(scope="module")
def tiny_sae(tmp_path_factory):
    """A random SAE on layers.1.resid_out of random:tiny-llama, in the layout `actlab sae train` writes."""
    import actlab
    from actlab.interp.sae_train import sae_for_site

    model, _ = actlab.load_model("random:tiny-llama")
    sae = sae_for_site(model, "layers.1.resid_out", d_sae=40, k=4, model_name="random:tiny-llama")
    return sae.save(tmp_path_factory.mktemp("sae") / "sae")


def _sae_run(corpus, out, sae_dir, *extra):
    return _run("--model", "random:tiny-llama", "--data", corpus, "--tokens", 512, "--seq-len", 32, "--k", 4,
                "--sae", sae_dir, "--out", out, *extra)


def _page(out, row) -> dict:
    text = (out / "data" / "n" / f"{row[-1]}.js").read_text()
    return json.loads(text[len("actlabNeuron("):].rstrip().rstrip(";")[:-1])


def test_sae_latents_end_to_end(tmp_path, corpus, tiny_sae):
    import actlab
    from actlab.interp.lm_head import decode_directions
    from actlab.interp.sae import SparseAutoencoder

    out = tmp_path / "site"
    res = _sae_run(corpus, out, tiny_sae, "--latents", "0-5,39", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["sae_sites"] == ["layers.1.resid_out"] and summary["site"] is None
    assert summary["latents"] == 7 and summary["neurons"] == 0
    idx = _index(out)
    assert idx["kinds"] == ["sae"] and idx["layers"] == [1]
    assert sorted(r[0] for r in idx["rows"]) == sorted(f"layers.1.resid_out.sae/{i}" for i in (0, 1, 2, 3, 4, 5, 39))
    model, tok = actlab.load_model("random:tiny-llama")
    sae = SparseAutoencoder.load(tiny_sae)
    top_ids = decode_directions(model, sae.W_dec.detach(), k=10)[0]  # every latent's decoder row
    contexts = 0
    for row in idx["rows"]:
        rec = _page(out, row)
        assert rec["kind"] == "sae" and row[3] == "sae"
        assert [t for t, _ in rec["lm_head"]["top"]] == [tok.decode([t]) for t in top_ids[rec["index"]].tolist()]
        for c in rec["top_contexts"]:  # the latent's activation shown at the top token is the recorded one
            assert c["acts"][c["center"]] == pytest.approx(c["value"], rel=1e-3, abs=1e-4)
            contexts += 1
    assert contexts > 0
    assert "SAE latent pages" in res.output


def test_sae_latents_with_ablation_and_the_default_selection(tmp_path, corpus, tiny_sae):
    out = tmp_path / "site"
    res = _sae_run(corpus, out, tiny_sae, "--ablate", "--ablate-tokens", 64)
    assert res.exit_code == 0, res.output
    rows = _index(out)["rows"]
    assert len(rows) == 40  # d_sae = 40 is below the default's 256 latents: all of them
    assert _page(out, rows[0])["ablation"]["delta_loss"] is not None


def test_sae_latents_beside_the_sites_channels(tmp_path, corpus, tiny_sae):
    """--site with --sae: one index holding both kinds (the filter's choice), layers default to the SAE's."""
    out = tmp_path / "site"
    res = _sae_run(corpus, out, tiny_sae, "--site", "resid_out", "--neurons", "0-2", "--latents", "3,4", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["layers"] == [1] and summary["neurons"] == 3 and summary["latents"] == 2
    idx = _index(out)
    assert idx["kinds"] == ["neuron", "sae"]
    assert sorted(r[0] for r in idx["rows"]) == sorted(
        [f"layers.1.resid_out/{i}" for i in range(3)] + [f"layers.1.resid_out.sae/{i}" for i in (3, 4)])
    assert "3 neuron pages" in res.output and "2 SAE latent pages" in res.output


def test_the_clis_default_latent_count_is_the_librarys():
    from actlab.cli.neurons import DEFAULT_LATENTS
    from actlab.interp import browser_sae

    assert DEFAULT_LATENTS == browser_sae.DEFAULT_LATENTS


def _other_width_sae(tmp_path):
    from actlab.interp.sae import SAEConfig, SparseAutoencoder

    return SparseAutoencoder(SAEConfig(d_in=24, d_sae=16, k=2, site="layers.1.resid_out")).save(tmp_path / "w")


def _deep_sae(tmp_path):
    from actlab.interp.sae import SAEConfig, SparseAutoencoder

    return SparseAutoencoder(SAEConfig(d_in=64, d_sae=16, k=2, site="layers.9.resid_out")).save(tmp_path / "d")


def _unplaced_sae(tmp_path):
    from actlab.interp.sae import SAEConfig, SparseAutoencoder

    return SparseAutoencoder(SAEConfig(d_in=64, d_sae=16, k=2, site="")).save(tmp_path / "u")


@pytest.mark.parametrize(("make", "extra", "message"), [
    (lambda tmp, sae: tmp / "missing", (), "is not an SAE directory"),
    (lambda tmp, sae: (tmp / "empty").mkdir() or tmp / "empty", (), "is not an SAE directory"),
    (lambda tmp, sae: sae, ("--layers", "0-1"), "--layers selects channels of --site"),
    (lambda tmp, sae: sae, ("--neurons", "1"), "--neurons selects channels of --site"),
    (lambda tmp, sae: sae, ("--latents", "40"), "outside layers.1.resid_out.sae"),
    (lambda tmp, sae: sae, ("--site", "resid_out", "--neurons", "999"), "outside layers.1.resid_out"),
    (lambda tmp, sae: _other_width_sae(tmp), (), "24"),
    (lambda tmp, sae: _deep_sae(tmp), (), "no site matches"),
    (lambda tmp, sae: _unplaced_sae(tmp), (), "not a layer's site"),
])
def test_bad_saes_are_one_error_line_and_nothing_written(tmp_path, corpus, tiny_sae, make, extra, message):
    out = tmp_path / "site"
    res = _sae_run(corpus, out, make(tmp_path, tiny_sae), *extra)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert res.output.count("error:") == 1
    assert not out.exists()


def test_latents_without_an_sae_is_one_error_line(tmp_path, corpus):
    out = tmp_path / "site"
    res = _tiny(corpus, out, "--latents", "0-3")
    assert res.exit_code == 2 and res.output.count("error:") == 1
    assert "pass the SAE with --sae DIR" in res.output and not out.exists()


def test_two_saes_of_one_site_are_refused(tmp_path, corpus, tiny_sae):
    out = tmp_path / "site"
    res = _sae_run(corpus, out, tiny_sae, "--sae", tiny_sae)
    assert res.exit_code == 2 and res.output.count("error:") == 1
    assert "two --sae directories read layers.1.resid_out" in res.output and not out.exists()
