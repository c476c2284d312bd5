"""The reference implementation: pytorch-ood's detectors and metrics, where pytorch-ood is installed."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from types import SimpleNamespace

import pytest


def _drop_partial() -> None:
    for name in [n for n in sys.modules if n == "pytorch_ood" or n.startswith("pytorch_ood.")]:
        del sys.modules[name]


@pytest.fixture(scope="session")
def pytorch_ood():
    """``SimpleNamespace(detector=..., metrics=...)`` of pytorch-ood 0.4.0, or a skip saying why not.

    pytorch-ood's package ``__init__`` imports its models and data sets, which import torchvision; PyPI's
    torchvision cannot be imported beside this CPU torch build. The detectors and metrics need none of it,
    so where that import fails they are loaded under a bare ``pytorch_ood`` package module instead.
    """
    spec = importlib.util.find_spec("pytorch_ood")
    if spec is None:
        pytest.skip("pytorch-ood is not installed (pip install --no-deps pytorch-ood==0.4.0 scipy)")
    try:
        detector = importlib.import_module("pytorch_ood.detector")
        metrics = importlib.import_module("pytorch_ood.metrics")
    except ImportError as e:
        if "torchvision" not in str(e):
            pytest.skip(f"pytorch-ood does not import: {e}")
        _drop_partial()
        pkg = types.ModuleType("pytorch_ood")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["pytorch_ood"] = pkg
        try:
            detector = importlib.import_module("pytorch_ood.detector")
            metrics = importlib.import_module("pytorch_ood.metrics")
        except ImportError as e2:
            _drop_partial()
            pytest.skip(f"pytorch-ood's detectors do not import without torchvision: {e2}")
    return SimpleNamespace(detector=detector, metrics=metrics)
