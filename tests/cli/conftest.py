"""The small text corpus the CLI tests train and calibrate on (test files with another corpus define their own)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "notes.txt"
    words = "sparse activations make decoding faster when kernels skip the zeros of each token".split()
    path.write_text(" ".join(words[(i * 7) % len(words)] for i in range(8000)))
    return path
