"""A self-contained HTML report of a profile: summary, plots (embedded), tables.

Example:
    >>> html = render_profile(profile, {"histograms": Path("runs/p/histograms.png")})  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from actlab.report.plots import KIND_ORDER

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.6rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right} th{background:#f4f4f4}
td.l,th.l{text-align:left} img{max-width:100%;border:1px solid #eee;margin:.5rem 0}
.meta{color:#555;font-size:.9rem} code{background:#f4f4f4;padding:0 .2rem}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def pct(frac: float | None, digits: int = 1) -> str:
    """A fraction as a percentage, the one unit reports show fractions in: ``pct(0.394) == '39.4%'``."""
    if frac is None or frac != frac:  # not measured, or NaN
        return "-"
    return f"{100.0 * frac:.{digits}f}%"


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return _esc(x)


def _table(header: list[str], rows: list[list[Any]], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{_esc(h)}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{_fmt(c)}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _mean(values: Any) -> float | str:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else "-"


def _site_kind_summary(profile: dict) -> str:
    eps_keys = list(next(iter(profile["sites"].values()))["density"])
    kinds: dict[str, list[dict]] = {}
    for s in profile["sites"].values():
        kinds.setdefault(s["kind"], []).append(s)
    rows = []
    for kind in KIND_ORDER:
        if kind not in kinds:
            continue
        ss = kinds[kind]
        n = len(ss)
        rows.append(
            [kind, n]
            + [pct(sum(s["density"][e] for s in ss) / n) for e in eps_keys]
            + [_mean(s["kurtosis"] for s in ss), max((s["absmax"] or 0.0) for s in ss)]
        )
    header = ["site", "layers"] + [f"density |x| > {float(e):.3g}" for e in eps_keys] + ["mean kurtosis", "max |x|"]
    return _table(header, rows)


def _per_layer_table(profile: dict) -> str:
    kinds = [k for k in KIND_ORDER if any(s["kind"] == k for s in profile["sites"].values())]
    eps = profile.get("report_eps", "0.01")
    by = {(s["layer"], s["kind"]): s for s in profile["sites"].values()}
    rows = []
    for layer in range(profile["num_layers"]):
        rows.append([layer] + [pct(by[(layer, k)]["density"].get(eps)) if (layer, k) in by else "" for k in kinds])
    return _table(["layer"] + kinds, rows)


def _massive_table(profile: dict, limit: int = 40) -> str:
    items = profile["massive_activations"][:limit]
    if not items:
        cfg = profile["massive_config"]
        return (
            f"<p>No massive activations: no residual-stream entry with |x| ≥ {cfg['abs_threshold']:g} "
            f"and ≥ {cfg['ratio']:g}× the site median.</p>"
        )
    rows = [
        [m["layer"], m["channel"], m["position"], m.get("token", m.get("token_id")), m["value"], m["ratio"]]
        for m in items
    ]
    return _table(["layer", "channel", "position", "token", "value", "× median"], rows, left=0)


def _neuron_table(profile: dict) -> str:
    rows = [
        [name, n["channels"], n["dead"], n["cold"], n["hot"], pct(n["top_share"])]
        for name, n in profile["neurons"].items()
    ]
    cfg = profile["stats_config"]
    first = next(iter(profile["neurons"].values()), {"eps": 0, "top_frac": cfg.get("top_frac", 0.2)})
    return f"<p>A neuron is active on a token when |x| &gt; {first['eps']:g}.</p>" + _table(
        ["site", "neurons", "dead", f"cold (active on < {100 * cfg['cold_freq']:g}% of tokens)",
         f"hot (> {100 * cfg['hot_freq']:g}%)",
         f"share of activations in top {first['top_frac']:.0%}"],
        rows,
    )


def render_profile(profile: dict, images: dict[str, Path]) -> str:
    """The report as one HTML string with every image embedded (opens offline, mails as one file)."""
    model = profile["model"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>actlab profile: {_esc(model.get('name'))}</title><style>{_CSS}</style></head><body>",
        f"<h1>Activation profile: {_esc(model.get('name'))}</h1>",
        f"<p class='meta'>{_esc(model.get('model_type'))}, {profile['num_layers']} layers, "
        f"{model.get('num_parameters', 0) / 1e6:.1f}M parameters · {profile['tokens']:,} tokens of "
        f"<code>{_esc(profile['data'].get('name'))}</code> ({_esc(profile['data'].get('split'))} split, "
        f"seq-len {profile['seq_len']}) · {profile['timing']['tokens_per_s']:.0f} tokens/s · actlab "
        f"{_esc(profile['actlab_version'])}</p>",
        "<h2>Summary by site</h2>",
        "<p>Density is the share of entries with |x| above ε, in percent (ε = 0: the share of non-zeros, the Lazy "
        "Neuron number). Kurtosis is the excess kurtosis of all entries of a site (0 for a Gaussian).</p>",
        _site_kind_summary(profile),
    ]
    captions = {
        "density_by_layer": "Density by layer and site",
        "histograms": "|x| histograms (log-spaced bins; first, middle and last layers)",
        "residual_magnitude": "Residual stream magnitude by layer",
        "neuron_frequency": "Neuron activation frequency",
        "cett": "CETT curves",
    }
    for name, caption in captions.items():
        if name in images:
            parts += [f"<h2>{_esc(caption)}</h2>", _img(images[name], caption)]
            if name == "residual_magnitude":
                parts += ["<h3>Massive activations</h3>", _massive_table(profile)]
            if name == "neuron_frequency":
                parts.append(_neuron_table(profile))
    parts += [
        f"<h2>Density |x| &gt; {_esc(profile.get('report_eps', '0.01'))} by layer</h2>",
        _per_layer_table(profile),
        "<p class='meta'>Machine-readable numbers: <code>profile.json</code> beside this file.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)
