"""The neuron browser: a static site that opens from ``file://`` with no server.

Layout of the site (``render_site`` writes it through :func:`actlab.outputs.staged_output`, so it appears
all at once or not at all)::

    index.html            search / filter / sort / page through every neuron (state in the URL hash)
    neuron.html#<id>      one neuron: histogram, top contexts coloured per token, LM-head tokens, ablation
    data/index.js         window.NEURONS = {columns, rows, ...}: one compact row per neuron
    data/n/<page>.js      actlabNeuron({...}): one neuron's full record, loaded with a <script> tag
    assets/               the stylesheet and scripts (copied from actlab/report/neurons_assets)

A page opened from ``file://`` may not ``fetch()`` files, so data travel as scripts. Token text is
inserted with ``textContent`` only, and the data files escape ``<``, so a token such as ``<script>``
shows as text and can never become markup.

The input is plain data, independent of how it was computed (``actlab.interp.browser_data`` builds it
from a model)::

    {"model": str, "site_kind": str, "n_tokens": int, "neurons": [
        {"id": "layers.3.mlp.act_out/17", "layer": 3, "index": 17, "kind": "neuron" | "sae",
         "max": float, "mean": float, "std": float, "freq": float,
         "hist": {"edges": [...], "counts": [...]},
         "top_contexts": [{"tokens": [str], "acts": [float], "center": int, "window": int,
                           "position": int, "value": float}],
         "lm_head": {"top": [[str, float]], "bottom": [[str, float]]} | None,
         "ablation": {"delta_loss": float, "tokens": [[str, float]]} | None}]}

Example:
    >>> render_site(data, "runs/neurons")                  # doctest: +SKIP
    PosixPath('runs/neurons/index.html')
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

from actlab.outputs import staged_output

#: the assets every site carries (files of actlab/report/neurons_assets)
ASSETS: tuple[str, ...] = ("neurons.css", "common.js", "index.js", "neuron.js")
#: the columns of one index row, in order (index.js and neuron.js read them by name)
COLUMNS: tuple[str, ...] = ("id", "layer", "index", "kind", "max", "mean", "freq", "top", "page")
KINDS: tuple[str, ...] = ("neuron", "sae")
_TOP_IN_INDEX = 5  # LM-head tokens per index row: what the token filter searches
_NEURON_KEYS = ("id", "layer", "index", "kind", "max", "mean", "std", "freq", "hist", "top_contexts")


class NeuronSiteError(ValueError):
    """The data handed to :func:`render_site` does not follow the documented shape."""


def _num(x: Any, digits: int = 5) -> float | None:
    """A float rounded to ``digits`` significant digits (the data files stay small); NaN/inf -> None."""
    x = float(x)
    return float(f"{x:.{digits}g}") if math.isfinite(x) else None


def _pairs(pairs: Any) -> list[list[Any]]:
    return [[str(t), _num(s)] for t, s in (pairs or [])]


def _check(neuron: dict[str, Any], i: int) -> None:
    missing = [k for k in _NEURON_KEYS if k not in neuron]
    if missing:
        raise NeuronSiteError(f"neuron #{i} ({neuron.get('id', '?')}) lacks {', '.join(missing)}; "
                              "see actlab.report.neurons_html for the shape render_site expects")
    if neuron["kind"] not in KINDS:
        raise NeuronSiteError(f"neuron {neuron['id']}: kind {neuron['kind']!r} is not one of {', '.join(KINDS)}")
    for c in neuron["top_contexts"]:
        if len(c["tokens"]) != len(c["acts"]) or not 0 <= int(c["center"]) < max(1, len(c["tokens"])):
            raise NeuronSiteError(f"neuron {neuron['id']}: a context has {len(c['tokens'])} tokens, "
                                  f"{len(c['acts'])} activations and center {c['center']}; they must agree")


def _record(n: dict[str, Any]) -> dict[str, Any]:
    """One neuron's page data: plain JSON types, floats rounded."""
    lm, ab = n.get("lm_head"), n.get("ablation")
    return {
        "id": str(n["id"]), "layer": int(n["layer"]), "index": int(n["index"]), "kind": n["kind"],
        "max": _num(n["max"]), "mean": _num(n["mean"]), "std": _num(n["std"]), "freq": _num(n["freq"]),
        "hist": {"edges": [_num(e) for e in n["hist"]["edges"]], "counts": [int(c) for c in n["hist"]["counts"]]},
        "top_contexts": [
            {"tokens": [str(t) for t in c["tokens"]], "acts": [_num(a, 4) for a in c["acts"]],
             "center": int(c["center"]), "window": int(c["window"]), "position": int(c["position"]),
             "value": _num(c["value"])}
            for c in n["top_contexts"]
        ],
        "lm_head": None if lm is None else {"top": _pairs(lm.get("top")), "bottom": _pairs(lm.get("bottom"))},
        "ablation": None if ab is None else {"delta_loss": _num(ab["delta_loss"]), "tokens": _pairs(ab.get("tokens"))},
    }


def page_name(neuron_id: str, taken: set[str]) -> str:
    """A file-name-safe, unique page name for a neuron id (``layers.3.mlp.act_out/17`` -> ``layers.3.mlp.act_out_17``)."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", neuron_id).strip(".") or "neuron"
    name, k = base, 2
    while name.lower() in taken:  # case-insensitive: some file systems are
        name, k = f"{base}-{k}", k + 1
    taken.add(name.lower())
    return name


def to_script(obj: Any) -> str:
    """``obj`` as a JavaScript literal that is safe anywhere in a page: ASCII only, no ``<`` (so no ``</script>``)."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _page(title: str, header: str, body: str, scripts: tuple[str, ...]) -> str:
    tags = "\n".join(f'<script src="{s}"></script>' for s in scripts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{html.escape(title)}</title><link rel="stylesheet" href="assets/neurons.css"></head>
<body><header>{header}</header>
<main>{body}</main>
{tags}
</body></html>
"""


def _index_html(meta: dict[str, Any], n: int) -> str:
    header = (f'<h1><a href="index.html">actlab neurons</a></h1><span class="meta">{html.escape(meta["model"])} · '
              f'{html.escape(meta["site_kind"])} · {n} neurons · {meta["n_tokens"]:,} tokens</span>')
    th = "".join(f'<th class="{"l" if c in ("id", "kind", "top") else ""}" data-col="{c}">{label}</th>'
                 for c, label in (("id", "neuron"), ("layer", "layer"), ("index", "index"), ("kind", "kind"),
                                  ("max", "max act."), ("mean", "mean"), ("freq", "frequency"),
                                  ("top", "top LM-head tokens")))
    body = f"""
<div class="filters">
 <label>search id<input id="q" type="search" placeholder="layers.3 or /17"></label>
 <label>LM-head token<input id="tok" type="search" placeholder="token text"></label>
 <label>layer<select id="layer"></select></label>
 <label>kind<select id="kind"></select></label>
 <label>frequency ≥<input id="fmin" type="number" step="any" min="0" max="1" placeholder="0"></label>
 <label>frequency ≤<input id="fmax" type="number" step="any" min="0" max="1" placeholder="1"></label>
 <label>max act. ≥<input id="amin" type="number" step="any"></label>
</div>
<div class="count" id="count">loading…</div>
<table><thead><tr>{th}</tr></thead><tbody id="rows"></tbody></table>
<div class="pager"><button id="prev">‹ previous</button><button id="next">next ›</button></div>
<noscript><p>This browser runs with JavaScript off: the index needs it.</p></noscript>
"""
    return _page(f"actlab neurons — {meta['model']}", header, body,
                 ("assets/common.js", "data/index.js", "assets/index.js"))


def _neuron_html(meta: dict[str, Any]) -> str:
    header = (f'<h1 id="title">neuron</h1><span class="meta">{html.escape(meta["model"])} · '
              f'{html.escape(meta["site_kind"])}</span><nav class="nav" id="nav"><a href="index.html">← index</a></nav>')
    body = '<div id="content"><p class="none">loading…</p></div><div id="tip"></div>'
    return _page("actlab neuron", header, body, ("assets/common.js", "data/index.js", "assets/neuron.js"))


def write_site(data: dict[str, Any], root: str | os.PathLike) -> int:
    """Write the site's files into directory ``root`` (no staging: :func:`render_site` is the safe entry point).

    Returns the number of neuron pages written.

    Raises:
        NeuronSiteError: ``data`` lacks a key, names an unknown kind, has a context whose lengths disagree,
            or repeats a neuron id.
    """
    root = Path(root)
    for key in ("model", "site_kind", "n_tokens", "neurons"):
        if key not in data:
            raise NeuronSiteError(f"site data lacks {key!r}; see actlab.report.neurons_html for its shape")
    neurons = list(data["neurons"])
    ids: set[str] = set()
    for i, n in enumerate(neurons):
        _check(n, i)
        if n["id"] in ids:
            raise NeuronSiteError(f"neuron id {n['id']!r} appears twice; ids must be unique")
        ids.add(n["id"])
    meta = {"model": str(data["model"]), "site_kind": str(data["site_kind"]), "n_tokens": int(data["n_tokens"])}
    (root / "data" / "n").mkdir(parents=True, exist_ok=True)
    (root / "assets").mkdir(exist_ok=True)
    taken: set[str] = set()
    rows = []
    for n in sorted(neurons, key=lambda n: (n["kind"], int(n["layer"]), int(n["index"]), str(n["id"]))):
        rec = _record(n)
        page = page_name(rec["id"], taken)
        (root / "data" / "n" / f"{page}.js").write_text(f"actlabNeuron({to_script(rec)});\n", encoding="ascii")
        top = [t for t, _ in (rec["lm_head"] or {}).get("top", [])[:_TOP_IN_INDEX]]
        rows.append([rec["id"], rec["layer"], rec["index"], rec["kind"], rec["max"], rec["mean"], rec["freq"], top, page])
    index = {**meta, "columns": list(COLUMNS), "rows": rows,
             "layers": sorted({r[1] for r in rows}), "kinds": sorted({r[3] for r in rows})}
    (root / "data" / "index.js").write_text(f"window.NEURONS = {to_script(index)};\n", encoding="ascii")
    assets = resources.files("actlab.report").joinpath("neurons_assets")
    for name in ASSETS:
        (root / "assets" / name).write_text(assets.joinpath(name).read_text(encoding="utf-8"), encoding="utf-8")
    (root / "index.html").write_text(_index_html(meta, len(rows)), encoding="utf-8")
    (root / "neuron.html").write_text(_neuron_html(meta), encoding="utf-8")
    return len(rows)


def render_site(data: dict[str, Any], out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the neuron browser for ``data`` (shape in the module docstring) into ``out_dir``; returns index.html.

    Staged: the files appear together when everything is written. A non-empty ``out_dir`` is refused
    unless ``overwrite`` (and even then only actlab's own earlier files are replaced).

    Raises:
        NeuronSiteError: ``data`` does not have the documented shape.
        OutputError: ``out_dir`` cannot be written as asked.

    Example:
        >>> index = render_site({"model": "m", "site_kind": "mlp.act_out", "n_tokens": 0, "neurons": []},
        ...                     "runs/empty")                               # doctest: +SKIP
    """
    with staged_output(out_dir, overwrite) as tmp:
        write_site(data, tmp)
    return Path(out_dir).expanduser() / "index.html"
