"""The activation functions page as a string: one plot per table entry grouped by family, formulas,
properties and the measured rows, no external assets, and the curves where the functions put them."""

from __future__ import annotations

import re

from actlab.functions import FUNCTIONS, get_function
from actlab.report.functions_html import _H, _PAD, _W, _X, render_functions_page, write_functions_page


def _points(html: str, name: str, cls: str) -> list[tuple[float, float]]:
    svg = re.search(rf'<svg class="curve" data-function="{name}".*?</svg>', html, re.S).group(0)
    pts = re.search(rf'<polyline class="{cls}"[^>]* points="([^"]+)"', svg).group(1)
    return [tuple(map(float, p.split(","))) for p in pts.split()]


def test_one_plot_per_function_grouped_by_family():
    html = render_functions_page()
    assert html.count('<svg class="curve"') == len(FUNCTIONS)
    assert html.count('class="f"') == html.count('class="df"') == len(FUNCTIONS)
    for e in FUNCTIONS.values():
        assert f'data-function="{e.name}"' in html
    heads = re.findall(r'<h2 id="family-\d+">([^<]+)</h2>', html)
    assert heads[:2] == ["relu", "sigmoid-weighted"] and len(heads) == len({e.family for e in FUNCTIONS.values()})
    # every card sits under its family's heading
    for e in FUNCTIONS.values():
        section = html[:html.index(f'<div class="card" id="{e.name}">')]
        assert re.findall(r'<h2 id="family-\d+">([^<]+)</h2>', section)[-1].replace("&amp;", "&") == e.family


def test_formulas_properties_and_measured_rows():
    html = render_functions_page({"relu": {"zeros": 0.5012, "near_zero": 0.5031, "ns_per_element": 0.73}})
    relu = html[html.index('<div class="card" id="relu">'):html.index('<div class="card" id="relu2">')]
    assert "max(x, 0)" in relu and "50.1%" in relu and "50.3%" in relu and "0.73" in relu
    assert "<td class=\"\">below</td>" in relu and "[0, ∞]" in relu
    assert "zeros at N(0,1)" not in html[html.index('<div class="card" id="gelu">'):]  # not measured: no row
    assert "lower=0.125, upper=0.3333" in html and "yes (plotted at init)" in html


def test_curves_follow_the_functions():
    html = render_functions_page()

    def x_of(px):
        return _X[0] + (px - _PAD) / (_W - 2 * _PAD) * (_X[1] - _X[0])

    f = _points(html, "relu", "f")
    d = _points(html, "relu", "df")
    assert len(f) == 241
    left = [y for x, y in f if x_of(x) < -0.1]
    assert max(left) - min(left) < 1e-6  # flat at 0 left of the kink
    ys = [y for x, y in f if x_of(x) > 0.1]
    assert all(a > b for a, b in zip(ys, ys[1:], strict=False))  # rising (SVG y grows downwards)
    assert {round(y, 1) for x, y in d if x_of(x) > 0.1} == {d[-1][1]}  # f' constant 1 right of 0
    tanh = _points(html, "tanh", "f")
    assert all(_PAD - 1e-6 <= y <= _H - _PAD + 1e-6 for _, y in tanh)  # bounded: inside the frame
    assert get_function("tanh").properties["bounded"] == "both"


def test_self_contained_and_written_atomically(tmp_path):
    path = write_functions_page(tmp_path / "sub" / "functions.html", measure=True)
    html = path.read_text()
    assert not re.search(r'(src|href)="(https?:|//)', html)
    assert "<link" not in html and "zeros at N(0,1)" in html
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
