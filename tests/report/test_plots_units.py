"""Plot axes show percentages, the unit of the reports' text: fractions and percents both read as %."""

from __future__ import annotations

from matplotlib.figure import Figure

from actlab.report.plots import _percent_axis, quality_curve


def _label(xmax: float, value: float) -> str:
    ax = Figure().subplots()
    _percent_axis(ax.yaxis, xmax)
    return ax.yaxis.get_major_formatter()(value, 0)


def test_fraction_and_percent_axes_read_the_same():
    assert _label(1.0, 0.394) == "39.4%" == _label(100.0, 39.4)
    assert _label(1.0, 1e-4) == "0.01%"  # log axes of histograms: never a row of "0.0%"


def test_quality_curve_draws_nothing_without_points(tmp_path):
    assert quality_curve({"series": [{"label": "teal", "points": []}]}, tmp_path / "q.png") is None
    assert not (tmp_path / "q.png").exists()
