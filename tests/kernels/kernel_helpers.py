"""Helpers shared by the kernel tests (a plain module: conftest is for fixtures)."""

from __future__ import annotations

import pytest
import torch

from actlab.kernels import ops

needs_ext = pytest.mark.skipif(not ops.available(), reason="compiled extension not built")


def assert_matches(y: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor | float) -> None:
    """Kernel vs reference: rtol 1e-4, atol 1e-5 of the output scale (the sum of |x_i w_ij| bound);
    NaN and inf must sit at the same places."""
    scale = float(torch.as_tensor(scale).nan_to_num(0.0, 0.0, 0.0).max()) if torch.is_tensor(scale) else scale
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5 * max(scale, 1e-6), equal_nan=True)


# opcheck without the slow AOT-dispatch round trips: schema, autograd registration, fake tensors
FAST_OPCHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")
