"""The activation functions page in a real headless browser (Debian's chromium), opened from file://: every
plot lays out with both curves (the page's script counts them into ``data-rendered``)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from actlab.functions import FUNCTIONS
from actlab.report.functions_html import write_functions_page

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="chromium not installed: apt-get install chromium")


def test_every_plot_renders(tmp_path):
    page = write_functions_page(tmp_path / "functions.html")
    res = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    m = re.search(r'<body[^>]*data-rendered="(\d+)"', res.stdout)
    assert m, "the page's script did not run"
    assert int(m.group(1)) == len(FUNCTIONS) >= 40
