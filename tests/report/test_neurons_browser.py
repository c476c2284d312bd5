"""The neuron browser in a real headless browser (Debian's chromium), opened from file:// with no server.

Checks that the scripts ran: the index rendered its rows, the hash filters them, a neuron page loaded its
data file and coloured its contexts, and token text stayed text. Set ACTLAB_SCREENSHOTS=DIR to keep a
screenshot of each page type there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
from test_neurons_html import make_site_data

from actlab.report.neurons_html import render_site

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="chromium not installed: apt-get install chromium")


def _browse(url: str, profile: Path, *extra: str) -> str:
    res = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--virtual-time-budget=5000", *extra, url],
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("neurons")
    data = make_site_data(n_layers=3, per_layer=50)
    render_site(data, root / "site")
    return root / "site", data, root / "profile"


def dom(site, page: str, hash_: str = "") -> str:
    root, _, profile = site
    return _browse((root / page).as_uri() + (f"#{hash_}" if hash_ else ""), profile, "--dump-dom")


def _matches(html: str) -> int:
    m = re.search(r'data-matches="(\d+)"', html)
    assert m, "the index script did not run (no match count in the DOM)"
    return int(m.group(1))


def test_the_index_renders_one_page_of_rows(site):
    html = dom(site, "index.html")
    assert _matches(html) == 150
    assert html.count('<tr class="row">') == 100  # paginated: one page of rows in the DOM
    assert "150 of 150 shown" in html


@pytest.mark.parametrize(("hash_", "expected"), [
    ("layer=1", 50),
    ("q=layers.2.mlp.act_out/4", 11),  # /4, /40../49
    ("tok=tok2x7", 1),
    ("fmin=0.5&layer=0", 25),  # freq (i + 1) / 51 >= 0.5: i >= 25
    ("amin=50&fmax=0.975&layer=0", 3),  # max 4 + i >= 50: i >= 46; freq <= 0.975: i <= 48
    ("kind=sae", 0),
])
def test_the_hash_filters_the_index(site, hash_, expected):
    html = dom(site, "index.html", hash_)
    assert _matches(html) == expected
    assert html.count('<tr class="row">') == min(expected, 100)


def test_the_index_sorts_and_pages_from_the_hash(site):
    html = dom(site, "index.html", "sort=max&dir=asc&page=2")
    assert "page 2 of 2" in html and html.count('<tr class="row">') == 50
    first = re.search(r'href="neuron.html#([^"]+)"', html).group(1)
    # ascending max (4 + index, ties by layer): the 101st smallest is index 33 of layer 1
    assert first == "layers.1.mlp.act_out%2F33"


def test_a_neuron_page_shows_its_contexts_as_text(site):
    _, data, _ = site
    neuron = data["neurons"][0]
    html = dom(site, "neuron.html", quote(neuron["id"], safe=""))
    assert f'data-loaded="{neuron["id"]}"' in html, "the neuron's data file did not load"
    n_tokens = sum(len(c["tokens"]) for c in neuron["top_contexts"])
    assert len(re.findall(r'<span class="t( c)?"', html)) == n_tokens  # one coloured span per token
    assert html.count('<span class="t c"') == len(neuron["top_contexts"])  # the top token of each marked
    assert "&lt;script&gt;document.body.setAttribute" in html  # the token shown as text...
    assert 'data-pwned="' not in html and "<img" not in html  # ...and nothing it carried ran
    assert html.count("<rect") >= 1 and "Δ loss when ablated" in html  # histogram bars, ablation
    assert "promotes" in html and "tok0x0" in html


def test_an_unknown_neuron_says_so(site):
    assert "no neuron layers.9.x/1 in this site" in dom(site, "neuron.html", quote("layers.9.x/1", safe=""))


def test_tens_of_thousands_of_rows(tmp_path):
    data = make_site_data(n_layers=1, per_layer=1, n_ctx=0)
    proto = data["neurons"][0]
    data["neurons"] = [{**proto, "id": f"layers.{i // 1000}.mlp.act_out/{i % 1000}", "layer": i // 1000,
                        "index": i % 1000, "max": float(i)} for i in range(20000)]
    render_site(data, tmp_path / "site")
    html = _browse((tmp_path / "site" / "index.html").as_uri() + "#amin=19990", tmp_path / "p", "--dump-dom")
    assert _matches(html) == 10 and html.count('<tr class="row">') == 10


def test_screenshots_of_each_page_type(site, tmp_path):
    root, data, profile = site
    keep = os.environ.get("ACTLAB_SCREENSHOTS")
    shots = Path(keep) if keep else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    pages = {"index.png": root / "index.html",
             "neuron.png": f"{(root / 'neuron.html').as_uri()}#{quote(data['neurons'][0]['id'], safe='')}"}
    for name, page in pages.items():
        url = page.as_uri() if isinstance(page, Path) else page
        _browse(url, profile, f"--screenshot={shots / name}", "--window-size=1280,1100", "--hide-scrollbars")
        png = (shots / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name


def test_a_site_of_neurons_and_sae_latents(tmp_path, tiny_llama):
    """Real pages from a model: the index filters the two kinds apart and a latent's page loads its data."""
    import torch

    from actlab.interp.browser_data import build_site_data
    from actlab.interp.browser_sae import build_sae_site_data
    from actlab.interp.sae_train import sae_for_site

    model, tok = tiny_llama
    windows = torch.randint(0, model.config.vocab_size, (8, 24), generator=torch.Generator().manual_seed(0))
    neurons = build_site_data(model, tok, windows, "resid_out", [1], k=3, neurons=range(5))
    sae = sae_for_site(model, "layers.1.resid_out", d_sae=12, k=3)
    latents = build_sae_site_data(model, tok, windows, sae, k=3, latents=range(7), ablate=True)
    data = {**neurons, "neurons": neurons["neurons"] + latents["neurons"]}
    render_site(data, tmp_path / "site")
    index = (tmp_path / "site" / "index.html").as_uri()
    assert _matches(_browse(index + "#kind=sae", tmp_path / "p", "--dump-dom")) == 7
    assert _matches(_browse(index + "#kind=neuron", tmp_path / "p", "--dump-dom")) == 5
    latent = next(n for n in latents["neurons"] if n["top_contexts"])
    html = _browse(f"{(tmp_path / 'site' / 'neuron.html').as_uri()}#{quote(latent['id'], safe='')}", tmp_path / "p",
                   "--dump-dom")
    assert f'data-loaded="{latent["id"]}"' in html
    assert html.count('<span class="t c"') == len(latent["top_contexts"])
    assert "latent is removed from the site" in html
