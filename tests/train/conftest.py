"""Fixtures of the objective tests: a tiny random model and random windows for it."""

from __future__ import annotations

import pytest
from objective_helpers import windows

import actlab


@pytest.fixture
def model():
    return actlab.load_model("random:tiny-llama")[0]


@pytest.fixture
def ids():
    return windows(4)
