"""The optimize report opens in a real (headless) browser and shows its headline."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from actlab.report.optimize_html import render_optimize

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(BROWSER is None, reason="no chromium on PATH (apt-get install chromium to run this check)")
def test_report_loads_in_a_browser(tmp_path, summary_factory, candidates_factory):
    s = summary_factory(intervals=True)
    page = tmp_path / "report.html"
    page.write_text(render_optimize(s, candidates_factory(s), {}, tmp_path), encoding="utf-8")
    res = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    assert "id=\"headline\"" in dom and "39.4%" in dom and "What next" in dom
    assert dom.count("<img") == 1 and "data:image/png;base64," in dom  # the curve, embedded
