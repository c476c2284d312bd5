"""Fixtures for the kernel tests: instruction-set paths, thread counts, and the warning state."""

from __future__ import annotations

import pytest
import torch

from actlab.kernels import ops


def _isa_params() -> list:
    params = []
    for name in ("generic", "avx2", "avx512"):
        ext = ops._extension()
        ok = False
        if ext is not None:
            try:
                ext.set_isa(name)
                ok = True
            except ValueError:
                pass
            finally:
                ext.set_isa("auto")
        params.append(pytest.param(name, marks=pytest.mark.skipif(not ok, reason=f"{name} not available")))
    return params


@pytest.fixture(params=_isa_params())
def isa(request):
    """Runs the test once per instruction-set path this CPU supports, then restores auto-detection."""
    ext = ops._extension()
    ext.set_isa(request.param)
    yield request.param
    ext.set_isa("auto")


@pytest.fixture(params=[1, 2, 3])
def threads(request):
    """Thread count handed to the kernels (torch's, restored afterwards); 3 exercises uneven splits.
    The size below which calls stay single-threaded is lifted so small test shapes take the parallel path."""
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    ext = ops._extension()
    old_min = ext.set_parallel_min_bytes(0) if ext is not None else None
    yield request.param
    torch.set_num_threads(old)
    if ext is not None:
        ext.set_parallel_min_bytes(old_min)


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Forget which one-time warnings were already issued, so a test can observe its own."""
    monkeypatch.setattr(ops, "_warned", set())
