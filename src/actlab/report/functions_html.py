"""The activation functions page: one small plot per function of the table (f and f'), grouped by family, with
its formula, parameters, properties and measured sparsity. One self-contained HTML file: inline SVG and CSS,
no external assets, opens from file://.

Example:
    >>> write_functions_page("runs/functions.html")          # doctest: +SKIP
    PosixPath('runs/functions.html')
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from actlab.functions import FUNCTIONS, ActivationFunction
from actlab.report.html import _CSS, _esc, _table, pct

_W, _H, _PAD = 240, 160, 22  # plot size and margin, px
_X = (-4.0, 4.0)
_PAGE_CSS = _CSS + """
.grid{display:flex;flex-wrap:wrap;gap:1rem}
.card{border:1px solid #ddd;border-radius:4px;padding:.5rem;width:260px;font-size:.8rem}
.card h3{font-size:1rem;margin:.1rem 0} .card table{font-size:.75rem} .card code{font-size:.75rem}
svg.curve{background:#fff;display:block} .legend{color:#555}
"""
_FAMILY_ORDER = ("relu", "sigmoid-weighted", "softplus-like", "bounded", "other classical", "rational / learnable")

# a browser-side count of the plots that laid out with a size: what the page test reads back
_SCRIPT = """<script>
document.body.dataset.rendered = [...document.querySelectorAll('svg.curve')]
  .filter(s => s.getBoundingClientRect().width > 0 && s.querySelectorAll('polyline').length == 2).length;
</script>"""


def _curve(entry: ActivationFunction, n: int = 241) -> tuple[list[float], list[float], list[float]]:
    x = torch.linspace(*_X, n, dtype=torch.float64)
    with torch.no_grad():
        y = entry.fn(x)
    d = entry.grad(x)
    return x.tolist(), y.tolist(), d.tolist()


def _polyline(xs: list[float], ys: list[float], lo: float, hi: float, attrs: str) -> str:
    def px(x: float) -> float:
        return _PAD + (x - _X[0]) / (_X[1] - _X[0]) * (_W - 2 * _PAD)

    def py(y: float) -> float:
        y = min(max(y, lo - 1e3), hi + 1e3)  # finite coordinates; the clip path cuts at the frame
        return _H - _PAD - (y - lo) / (hi - lo) * (_H - 2 * _PAD)

    pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys, strict=True) if math.isfinite(y))
    return f'<polyline {attrs} points="{pts}"/>'


def _svg(entry: ActivationFunction) -> str:
    """f (solid) and f' (dashed) on [-4, 4]; the y range covers both, at most [-4, 6]."""
    xs, ys, ds = _curve(entry)
    vals = [v for v in ys + ds if math.isfinite(v)]
    lo = max(min(min(vals), -0.5), -4.0)
    hi = min(max(max(vals), 1.0), 6.0)
    x0 = _PAD + (0 - _X[0]) / (_X[1] - _X[0]) * (_W - 2 * _PAD)
    y0 = _H - _PAD - (0 - lo) / (hi - lo) * (_H - 2 * _PAD)
    axes = (f'<line x1="{_PAD}" y1="{y0:.1f}" x2="{_W - _PAD}" y2="{y0:.1f}" stroke="#bbb"/>'
            f'<line x1="{x0:.1f}" y1="{_PAD}" x2="{x0:.1f}" y2="{_H - _PAD}" stroke="#bbb"/>'
            f'<text x="{_W - _PAD}" y="{_H - 6}" font-size="9" text-anchor="end" fill="#777">x in [-4, 4]</text>'
            f'<text x="4" y="12" font-size="9" fill="#777">y in [{lo:.3g}, {hi:.3g}]</text>')
    clip = f"clip-{entry.name}"  # ids unique on the page: one per function
    f_line = _polyline(xs, ys, lo, hi, 'class="f" stroke="#1f77b4"')
    d_line = _polyline(xs, ds, lo, hi, 'class="df" stroke="#d62728" stroke-dasharray="4 3"')
    return (f'<svg class="curve" data-function="{_esc(entry.name)}" width="{_W}" height="{_H}" '
            f'viewBox="0 0 {_W} {_H}" xmlns="http://www.w3.org/2000/svg" role="img" '
            f'aria-label="{_esc(entry.name)} and its derivative">{axes}'
            f'<clipPath id="{clip}"><rect x="{_PAD}" y="{_PAD}" width="{_W - 2 * _PAD}" height="{_H - 2 * _PAD}"/>'
            f'</clipPath><g fill="none" stroke-width="1.6" clip-path="url(#{clip})">{f_line}{d_line}</g></svg>')


def _range(lo: float, hi: float) -> str:
    def f(v: float) -> str:
        return "∞" if v == math.inf else "-∞" if v == -math.inf else f"{v:.4g}"

    return f"[{f(lo)}, {f(hi)}]"


def _card(entry: ActivationFunction, measured: dict[str, float] | None) -> str:
    p = entry.properties
    rows: list[list[Any]] = [
        ["differentiable", "yes" if p["differentiable"] else "no"],
        ["monotonic", "yes" if p["monotonic"] else "no"],
        ["bounded", p["bounded"]],
        ["range", _range(*p["range"])],
    ]
    if p.get("learnable"):
        rows.append(["learnable", "yes (plotted at init)"])
    if entry.parameters:
        rows.append(["parameters", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in entry.parameters.items())])
    if measured:
        rows.append(["zeros at N(0,1)", pct(measured["zeros"])])
        rows.append(["|f| < 1% std", pct(measured["near_zero"])])
        if "ns_per_element" in measured:
            rows.append(["ns / element (1 thread)", f"{measured['ns_per_element']:.2f}"])
    aliases = f'<div class="meta">also: {_esc(", ".join(entry.aliases))}</div>' if entry.aliases else ""
    return (f'<div class="card" id="{_esc(entry.name)}"><h3>{_esc(entry.name)}</h3>{aliases}'
            f"<code>{_esc(entry.formula)}</code>{_svg(entry)}{_table(['property', 'value'], rows)}</div>")


def render_functions_page(measured: dict[str, dict[str, float]] | None = None) -> str:
    """The page as one HTML string; ``measured`` (from :func:`actlab.functions.measure.measure_all`) adds
    the sparsity and cost rows.

    Example:
        >>> html = render_functions_page()
        >>> html.count('<svg class="curve"') == len(FUNCTIONS)
        True
    """
    families: dict[str, list[ActivationFunction]] = {}
    for e in FUNCTIONS.values():
        families.setdefault(e.family or "other", []).append(e)
    order = [f for f in _FAMILY_ORDER if f in families] + sorted(set(families) - set(_FAMILY_ORDER))
    toc = " · ".join(f'<a href="#family-{i}">{_esc(f)}</a> ({len(families[f])})' for i, f in enumerate(order))
    sections = "".join(
        f'<h2 id="family-{i}">{_esc(f)}</h2><div class="grid">'
        + "".join(_card(e, (measured or {}).get(e.name)) for e in families[f]) + "</div>"
        for i, f in enumerate(order))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>actlab activation functions</title>"
            f"<style>{_PAGE_CSS}</style></head><body><h1>Activation functions ({len(FUNCTIONS)})</h1>"
            f'<p class="meta">f <span style="color:#1f77b4">solid</span>, f\' <span style="color:#d62728">'
            f"dashed</span>, on [-4, 4]; curves leave through the frame where they exceed the axes. Properties "
            f"as the torch-activation catalogue lists them, checked on a grid by actlab's tests.</p>"
            f"<p>{toc}</p>{sections}{_SCRIPT}</body></html>")


def write_functions_page(path: str | Path, measured: dict[str, dict[str, float]] | None = None,
                         measure: bool = False) -> Path:
    """Write the page to ``path`` (parents made); ``measure=True`` measures sparsity (not cost: the benchmark
    does that, at one thread) when no ``measured`` is given.

    Example:
        >>> write_functions_page("runs/functions.html", measure=True)   # doctest: +SKIP
    """
    if measured is None and measure:
        from actlab.functions.measure import measure_all

        measured = measure_all(cost=False, n=1 << 16)
    path = Path(path)
    html = render_functions_page(measured)  # built before the file is opened: no half-written page
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


__all__ = ["render_functions_page", "write_functions_page"]
