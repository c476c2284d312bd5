"""The neuron browser's renderer: files written, every neuron indexed, token text never becomes markup."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from actlab.outputs import OutputError
from actlab.report.neurons_html import ASSETS, COLUMNS, NeuronSiteError, page_name, render_site, to_script

#: token strings that would inject markup if any reached the page as HTML
EVIL = ['<script>document.body.setAttribute("data-pwned","1")</script>',
        '"><img src=x onerror="document.body.setAttribute(\'data-pwned\',\'2\')">', "</script>", "&amp;", "\u2028"]


def make_site_data(n_layers: int = 2, per_layer: int = 6, ctx_len: int = 9, n_ctx: int = 3,
                   seed: int = 0, model: str = "random:tiny-llama") -> dict:
    """Synthetic site data in the documented shape; neuron 0 of layer 0 carries the evil tokens."""
    rng = random.Random(seed)
    words = [" the", " cat", " sat", "\n", " on", " mat", "ing", " dog", "\t", " ran"]
    neurons = []
    for layer in range(n_layers):
        for i in range(per_layer):
            ctxs = []
            for c in range(n_ctx):
                toks = [rng.choice(words) for _ in range(ctx_len)]
                if layer == 0 and i == 0 and c == 0:
                    toks[: len(EVIL)] = EVIL
                acts = [rng.uniform(-0.5, 3.0) for _ in toks]
                center = ctx_len - 3
                acts[center] = 4.0 - c * 0.1
                ctxs.append({"tokens": toks, "acts": acts, "center": center, "window": c, "position": 40 + c,
                             "value": acts[center]})
            unique = f" tok{layer}x{i}"
            neurons.append({
                "id": f"layers.{layer}.mlp.act_out/{i}", "layer": layer, "index": i, "kind": "neuron",
                "max": 4.0 + i, "mean": 0.1 * i, "std": 0.5, "freq": (i + 1) / (per_layer + 1),
                "hist": {"edges": [-1.0 + 0.25 * j for j in range(21)], "counts": [rng.randint(0, 500) for _ in range(20)]},
                "top_contexts": ctxs,
                "lm_head": {"top": [[unique, 2.5], [EVIL[0] if (layer, i) == (0, 0) else " cat", 1.5]],
                            "bottom": [[" dog", -2.0]]},
                "ablation": {"delta_loss": 0.0123 * (i + 1), "tokens": [[" sat", 0.4]]} if i % 2 == 0 else None,
            })
    return {"model": model, "site_kind": "mlp.act_out", "n_tokens": 4096, "neurons": neurons}


def read_script(path: Path, prefix: str) -> object:
    """The JSON payload of a data script written as ``prefix <json> suffix``."""
    text = path.read_text(encoding="ascii").strip()
    assert text.startswith(prefix)
    body = text[len(prefix):].rstrip(";").rstrip()
    if prefix.endswith("("):
        body = body[:-1]
    return json.loads(body)


def test_the_site_has_every_file_and_every_neuron(tmp_path):
    data = make_site_data()
    index = render_site(data, tmp_path / "site")
    root = index.parent
    assert index.name == "index.html" and (root / "neuron.html").is_file()
    assert sorted(p.name for p in (root / "assets").iterdir()) == sorted(ASSETS)
    idx = read_script(root / "data" / "index.js", "window.NEURONS = ")
    assert idx["columns"] == list(COLUMNS) and idx["model"] == data["model"]
    ids = [r[0] for r in idx["rows"]]
    assert sorted(ids) == sorted(n["id"] for n in data["neurons"])  # every neuron, once
    pages = {r[COLUMNS.index("page")] for r in idx["rows"]}
    assert {p.stem for p in (root / "data" / "n").glob("*.js")} == pages
    assert idx["layers"] == [0, 1] and idx["kinds"] == ["neuron"]
    row = next(r for r in idx["rows"] if r[0] == "layers.1.mlp.act_out/2")
    assert row[COLUMNS.index("top")][0] == " tok1x2" and row[COLUMNS.index("freq")] == pytest.approx(3 / 7, rel=1e-4)


def test_a_neuron_file_round_trips_its_record(tmp_path):
    data = make_site_data()
    root = render_site(data, tmp_path / "site").parent
    idx = read_script(root / "data" / "index.js", "window.NEURONS = ")
    page = next(r[-1] for r in idx["rows"] if r[0] == "layers.0.mlp.act_out/0")
    rec = read_script(root / "data" / "n" / f"{page}.js", "actlabNeuron(")
    src = data["neurons"][0]
    assert rec["top_contexts"][0]["tokens"] == src["top_contexts"][0]["tokens"]  # the evil tokens, intact as text
    assert rec["top_contexts"][0]["acts"] == pytest.approx(src["top_contexts"][0]["acts"], rel=1e-3)
    assert rec["hist"]["counts"] == src["hist"]["counts"] and rec["ablation"]["delta_loss"] == pytest.approx(0.0123)
    assert rec["lm_head"]["top"][1][0] == EVIL[0]


def test_no_written_file_carries_markup_from_the_data(tmp_path):
    data = make_site_data(model='<b onmouseover="x()">m</b>')
    root = render_site(data, tmp_path / "site").parent
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in (".html", ".js") and path.parent.name != "assets":
            text = path.read_text(encoding="utf-8")
            assert "<script>document" not in text and "<img" not in text and "<b " not in text, path
            assert "\u2028" not in text, path  # a raw line separator would end a JS string in older engines
    assert "&lt;b onmouseover=&quot;x()&quot;&gt;m&lt;/b&gt;" in (root / "index.html").read_text()
    assert to_script("</script><!--") == '"\\u003c/script\\u003e\\u003c!--"'


def test_output_is_staged_and_refuses_a_non_empty_dir(tmp_path):
    out = tmp_path / "site"
    render_site(make_site_data(per_layer=2), out)
    with pytest.raises(OutputError, match="--overwrite"):
        render_site(make_site_data(per_layer=2), out)
    render_site(make_site_data(per_layer=1), out, overwrite=True)  # replaces its own files, drops the stale ones
    assert len(list((out / "data" / "n").glob("*.js"))) == 2
    with pytest.raises(NeuronSiteError):
        render_site({"model": "m", "site_kind": "x", "n_tokens": 1, "neurons": [{"id": "a"}]}, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # a failed render leaves nothing behind


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda d: d.pop("n_tokens"), "n_tokens"),
    (lambda d: d["neurons"][0].pop("hist"), "hist"),
    (lambda d: d["neurons"][1].update(id=d["neurons"][0]["id"]), "twice"),
    (lambda d: d["neurons"][0].update(kind="latent"), "kind"),
    (lambda d: d["neurons"][0]["top_contexts"][0]["acts"].pop(), "agree"),
])
def test_bad_data_is_refused_with_the_problem_named(tmp_path, mutate, match):
    data = make_site_data(per_layer=2)
    mutate(data)
    with pytest.raises(NeuronSiteError, match=match):
        render_site(data, tmp_path / "site")


def test_page_names_are_safe_and_unique():
    taken: set[str] = set()
    names = [page_name(i, taken) for i in ("layers.3.mlp.act_out/17", "layers.3.mlp.act_out_17", "../../etc/x", "A/1", "a/1")]
    assert names[0] == "layers.3.mlp.act_out_17" and len({n.lower() for n in names}) == len(names)
    assert all("/" not in n and not n.startswith(".") for n in names)


def test_sae_latents_and_missing_parts_render(tmp_path):
    data = make_site_data(per_layer=2)
    data["neurons"][0].update(kind="sae", id="layers.0.resid_out.sae/0", lm_head=None, ablation=None, top_contexts=[])
    data["neurons"][1]["max"] = float("nan")
    root = render_site(data, tmp_path / "site").parent
    idx = read_script(root / "data" / "index.js", "window.NEURONS = ")
    assert idx["kinds"] == ["neuron", "sae"]
    assert next(r for r in idx["rows"] if r[0] == data["neurons"][1]["id"])[COLUMNS.index("max")] is None
