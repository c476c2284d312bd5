"""Weight formats (actlab.kernels.quant): round-trip error bounds, layout, padding and refusals."""

from __future__ import annotations

import pytest
import torch

from actlab.kernels.quant import FORMAT_CODES, WEIGHT_FORMATS, pack


def _w(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # heavy-ish tails like real weights: a few large values per group set the scale
    return torch.randn(rows, cols, generator=g) * torch.rand(rows, cols, generator=g).pow(3).mul(4).add(0.2)


@pytest.mark.parametrize("cols", [1, 31, 64, 100, 257])
@pytest.mark.parametrize("fmt", WEIGHT_FORMATS)
def test_round_trip_error_bound(fmt: str, cols: int) -> None:
    wt = _w(23, cols)
    p = pack(wt, fmt)
    d = p.dequantize()
    assert d.shape == (23, cols) and d.dtype == torch.float32
    err = (d - wt).abs()
    if fmt == "fp32":
        assert torch.equal(d, wt)
    elif fmt == "bf16":  # round to nearest: half an ulp of an 8-bit mantissa
        assert bool((err <= wt.abs() * 2.0**-8).all())
    else:
        # per-element bound from the element's own group scale (see the quant docstring)
        s = p.scales.float().abs().repeat_interleave(p.group, dim=1)[:, :cols]
        bound = s / 2 if fmt == "int8" else s
        assert bool((err <= bound * (1 + 1e-6) + 1e-12).all())
        # and the scale is as small as the format allows: the group max fits without waste
        amax = torch.nn.functional.pad(wt.abs(), (0, p.ld - cols)).view(23, -1, p.group).amax(-1)
        levels = 127.0 if fmt == "int8" else 8.0
        assert torch.allclose(p.scales.float().abs(), amax / levels, rtol=2e-3)


def test_int4_typical_error_is_half_a_step() -> None:
    wt = _w(64, 256, seed=1)
    p = pack(wt, "int4")
    s = p.scales.float().abs().repeat_interleave(32, dim=1)
    rel = ((p.dequantize() - wt).abs() / s).mean()
    assert 0.15 < float(rel) < 0.35  # uniform rounding error averages a quarter of a step


def test_layout_matches_the_c_struct() -> None:
    wt = _w(5, 70)
    p = pack(wt, "int4", group=32)
    assert p.ld == 96 and p.data.shape == (5, 48) and p.data.dtype == torch.uint8
    assert p.scales.shape == (5, 3) and p.scales.dtype == torch.float16
    code, dptr, rows, cols, ld, sptr, scale_ld, group = p.c_args()
    assert (code, dptr, rows, cols, ld, sptr, scale_ld, group) == (
        FORMAT_CODES["int4"], p.data.data_ptr(), 5, 70, 96, p.scales.data_ptr(), 3, 32)
    # byte j of a group: column j in the low nibble, column j + 16 in the high one
    q0 = (p.data[0, 0] & 15).item() - 8
    q16 = (p.data[0, 0] >> 4).item() - 8
    s = p.scales[0, 0].float().item()
    assert q0 * s == pytest.approx(p.dequantize()[0, 0].item())
    assert q16 * s == pytest.approx(p.dequantize()[0, 16].item())
    # padding columns are zeros
    assert float(p.dequantize().abs().sum()) > 0
    q8 = pack(wt, "int8", group=16)
    assert q8.ld == 80 and q8.data.shape == (5, 80) and q8.scale_ld == 5
    assert bool((q8.data[:, 70:] == 0).all())
    assert pack(wt, "bf16").data.dtype == torch.int16 and pack(wt, "bf16").c_args()[5] == 0


def test_nbytes_and_row_bytes() -> None:
    wt = _w(10, 128)
    assert pack(wt, "fp32").nbytes == 10 * 128 * 4
    assert pack(wt, "bf16").nbytes == 10 * 128 * 2
    assert pack(wt, "int8").nbytes == 10 * (128 + 2 * 2)
    p4 = pack(wt, "int4")
    assert p4.nbytes == 10 * (64 + 4 * 2) and p4.row_bytes == 72


def test_zero_groups_and_extremes() -> None:
    wt = torch.zeros(4, 64)
    wt[1, 3] = -5.0
    for fmt in ("int8", "int4"):
        d = pack(wt, fmt).dequantize()
        assert d[1, 3].item() == pytest.approx(-5.0, rel=2e-3) and float(d.abs().sum() - d[1, 3].abs()) == 0


@pytest.mark.parametrize("fmt", ["bf16", "int8", "int4"])
def test_non_finite_refused(fmt: str) -> None:
    bad = _w(4, 64)
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="finite"):
        pack(bad, fmt)
    assert torch.isinf(pack(bad, "fp32").dequantize()[0, 0])


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_refusals(fmt: str) -> None:
    with pytest.raises(ValueError, match="multiple of"):
        pack(_w(4, 64), fmt, group=24)
    with pytest.raises(ValueError, match="multiple of"):
        pack(_w(4, 64), fmt, group=0)
    bad = _w(4, 64)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        pack(bad, fmt)
    with pytest.raises(ValueError, match="fp16"):
        pack(_w(4, 64) * 1e9, fmt)


def test_bad_format_and_shapes() -> None:
    with pytest.raises(ValueError, match="fp32, bf16, int8, int4"):
        pack(_w(4, 4), "q4_k")
    with pytest.raises(ValueError, match="2-D"):
        pack(torch.randn(4), "int8")
    with pytest.raises(ValueError, match="2-D"):
        pack(torch.ones(4, 4, dtype=torch.int32), "int8")
    with pytest.raises(ValueError, match="no groups"):
        pack(_w(4, 4), "bf16", group=32)


def test_strided_and_empty_inputs() -> None:
    w = _w(48, 32)
    assert torch.equal(pack(w.t(), "int8").dequantize(), pack(w.t().contiguous(), "int8").dequantize())
    assert pack(torch.zeros(0, 40), "int4").dequantize().shape == (0, 40)
    assert pack(torch.zeros(3, 0), "int8").dequantize().shape == (3, 0)
