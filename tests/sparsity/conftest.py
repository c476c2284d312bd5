"""Fixtures for the sparsity tests: tiny random models and token windows (fast, no corpus needed)."""

from __future__ import annotations

import pytest
import torch
from sparsity_helpers import windows


@pytest.fixture(scope="module")
def llama():
    """A tiny random Llama shared by a module's tests (each test must leave it dense)."""
    import actlab

    model, _ = actlab.load_model("random:tiny-llama")
    return model


@pytest.fixture(scope="module")
def calib(llama) -> torch.Tensor:
    return windows(llama, 8)


@pytest.fixture(scope="module")
def probe(llama) -> torch.Tensor:
    return windows(llama, 2, seed=1)
