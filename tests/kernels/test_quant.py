"""Weight formats (actlab.kernels.quant): round-trip error bounds, layout, padding and refusals."""

from __future__ import annotations

import pytest
import torch

from actlab.kernels.quant import FORMAT_CODES, WEIGHT_FORMATS, pack


def _w(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # heavy-ish tails like real weights: a few large values per group set the scale
    return torch.randn(rows, cols, generator=g) * torch.rand(rows, cols, generator=g).pow(3).mul(4).add(0.2)


def _per_row(p, part: int = 0) -> torch.Tensor:
    """Each element's own scale (part 0) or minimum (part 1, int4): its block's row, [rows, cols]."""
    sc = p.scales.float()[:, part * p.ld:(part + 1) * p.ld]
    return sc.repeat_interleave(p.group, dim=0)[: p.rows, : p.cols]


def _block_view(t: torch.Tensor, group: int) -> torch.Tensor:
    rows = t.shape[0]
    nb = -(-rows // group)
    t = torch.cat([t, t[-1:].expand(nb * group - rows, -1)])  # a short block: its own rows only
    return t.view(nb, group, -1)


@pytest.mark.parametrize("rows", [23, 70])
@pytest.mark.parametrize("cols", [1, 31, 64, 100, 257])
@pytest.mark.parametrize("fmt", WEIGHT_FORMATS)
def test_round_trip_error_bound(fmt: str, cols: int, rows: int) -> None:
    wt = _w(rows, cols)
    p = pack(wt, fmt)
    d = p.dequantize()
    assert d.shape == (rows, cols) and d.dtype == torch.float32
    err = (d - wt).abs()
    if fmt == "fp32":
        assert torch.equal(d, wt)
    elif fmt == "bf16":  # round to nearest: half an ulp of an 8-bit mantissa
        assert bool((err <= wt.abs() * 2.0**-8).all())
    else:
        # per-element bound from the element's own block scale (see the quant docstring)
        s = _per_row(p)
        bound = 0.56 * s if fmt == "int8" else 0.51 * s + _per_row(p, 1).abs() * 2.0**-11
        assert bool((err <= bound * (1 + 1e-6) + 1e-12).all())
        # and the step is as small as the format allows: the block's range fits without waste
        blocks = _block_view(wt, p.group)
        if fmt == "int8":
            want = blocks.abs().amax(1) / 127.0
        else:
            want = (blocks.amax(1) - blocks.amin(1)) / 15.0
        assert torch.allclose(p.scales.float()[:, :cols], want, rtol=2e-3)


def test_int4_typical_error_is_a_quarter_step() -> None:
    wt = _w(256, 64, seed=1)
    p = pack(wt, "int4")
    rel = ((p.dequantize() - wt).abs() / _per_row(p)).mean()
    assert 0.15 < float(rel) < 0.35  # uniform rounding error averages a quarter of a step


def test_blocks_along_inputs_beat_one_outlier() -> None:
    # one large weight spoils only its own block of 32 inputs in its own column
    wt = _w(64, 32, seed=2)
    wt[5, 7] = 40.0
    err = (pack(wt, "int4").dequantize() - wt).abs()
    others = torch.ones_like(err, dtype=torch.bool)
    others[:32, 7] = False
    assert float(err[:32, 7].mean()) > 3 * float(err[others].mean())


@pytest.mark.parametrize(("fmt", "qtype"), [("int8", "Q8_0"), ("int4", "Q4_1")])
def test_same_grid_as_gguf_and_lossless_on_gguf_weights(fmt: str, qtype: str) -> None:
    gq = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType

    t = getattr(GGMLQuantizationType, qtype)
    w = _w(48, 256, seed=3).numpy()  # [out, in] as a GGUF tensor: blocks of 32 along the inputs
    ref = torch.from_numpy(gq.dequantize(gq.quantize(w, t), t)).reshape(48, 256)
    ours = pack(torch.from_numpy(w).t(), fmt).dequantize().t()
    # the same scales; llama.cpp rounds against the unrounded grid, actlab against the stored fp16 one, so
    # a rare element at a rounding boundary lands one step away
    p = pack(torch.from_numpy(w).t(), fmt)
    diff = (ref - ours).abs() / _per_row(p).t()
    assert float((diff > 0).float().mean()) < 0.02
    assert float(diff.max()) <= 1.0 + 1e-3
    # what a GGUF file holds packs back exactly
    assert torch.equal(pack(ref.t(), fmt).dequantize().t(), ref)


def test_layout_matches_the_c_struct() -> None:
    wt = _w(40, 70)
    p = pack(wt, "int4", group=32)
    assert p.ld == 96 and p.data.shape == (40, 48) and p.data.dtype == torch.uint8
    assert p.scales.shape == (2, 192) and p.scales.dtype == torch.float16 and p.blocks == 2
    code, dptr, rows, cols, ld, sptr, scale_ld, group = p.c_args()
    assert (code, dptr, rows, cols, ld, sptr, scale_ld, group) == (
        FORMAT_CODES["int4"], p.data.data_ptr(), 40, 70, 96, p.scales.data_ptr(), 192, 32)
    # byte j of a 32-column chunk: column j in the low nibble, column j + 16 in the high one; row 35 is
    # in block 1, whose scale row starts at scales[1, 0] and its minimum row at scales[1, ld]
    d = p.dequantize()
    for r, blk in ((0, 0), (35, 1)):
        s, m = p.scales[blk, :96].float(), p.scales[blk, 96:].float()
        for byte, col_lo in ((0, 0), (17, 33)):
            lo, hi = (p.data[r, byte] & 15).item(), (p.data[r, byte] >> 4).item()
            assert lo * s[col_lo].item() + m[col_lo].item() == pytest.approx(d[r, col_lo].item())
            assert hi * s[col_lo + 16].item() + m[col_lo + 16].item() == pytest.approx(d[r, col_lo + 16].item())
    assert float(d.abs().sum()) > 0
    q8 = pack(wt[:5], "int8", group=16)
    assert q8.ld == 80 and q8.data.shape == (5, 80) and q8.scale_ld == 80 and q8.scales.shape == (1, 80)
    assert bool((q8.data[:, 70:] == 0).all())  # padding columns are zeros
    assert pack(wt, "bf16").data.dtype == torch.int16 and pack(wt, "bf16").c_args()[5] == 0


def test_nbytes_and_row_bytes() -> None:
    wt = _w(10, 128)
    assert pack(wt, "fp32").nbytes == 10 * 128 * 4
    assert pack(wt, "bf16").nbytes == 10 * 128 * 2
    assert pack(wt, "int8").nbytes == 10 * 128 + 128 * 2  # one block of 128 fp16 scales
    assert pack(_w(40, 128), "int8").nbytes == 40 * 128 + 2 * 128 * 2
    p4 = pack(wt, "int4")
    assert p4.nbytes == 10 * 64 + 2 * 128 * 2 and p4.row_bytes == 64  # scales and minima
    assert pack(_w(100, 128), "int4").nbytes == 100 * 64 + 4 * 2 * 128 * 2


def test_zero_blocks_and_extremes() -> None:
    wt = torch.zeros(4, 64)
    wt[1, 3] = -5.0
    for fmt in ("int8", "int4"):
        p = pack(wt, fmt)
        d = p.dequantize()
        assert d[1, 3].item() == pytest.approx(-5.0, rel=2e-3)
        rest = d.clone()
        rest[:, 3] = 0
        assert float(rest.abs().sum()) == 0  # all-zero blocks give exact zeros
        # int8 is symmetric (zero exact); int4's zeros in a block with a minimum land within half a step
        assert float(d[[0, 2, 3], 3].abs().max()) <= (0 if fmt == "int8" else float(_per_row(p)[0, 3]) / 2)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_any_positive_group(fmt: str) -> None:
    wt = _w(50, 64)
    p = pack(wt, fmt, group=24)  # 3 blocks, the last of 2 rows
    assert p.blocks == 3 and p.scales.shape[0] == 3
    assert float((p.dequantize() - wt).abs().max()) < float(wt.abs().max()) / 10


@pytest.mark.parametrize("fmt", ["bf16", "int8", "int4"])
def test_non_finite_refused(fmt: str) -> None:
    bad = _w(4, 64)
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="finite"):
        pack(bad, fmt)
    assert torch.isinf(pack(bad, "fp32").dequantize()[0, 0])


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_refusals(fmt: str) -> None:
    with pytest.raises(ValueError, match="positive"):
        pack(_w(4, 64), fmt, group=0)
    with pytest.raises(ValueError, match="positive"):
        pack(_w(4, 64), fmt, group=-32)
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


@pytest.mark.slow
def test_default_model_packs_exactly(smollm2) -> None:
    # SmolLM2 ships as Q4_1 with a Q8_0 embedding: int4 decoder layers and the int8 lm_head add no error
    from actlab.kernels.quantize import decoder_linear_groups, head_format

    model, _ = smollm2
    for paths in decoder_linear_groups(model, lm_head=True):
        for path in paths:
            w = model.get_submodule(path).weight.detach()
            fmt = head_format("int4") if path == "lm_head" else "int4"
            assert torch.equal(pack(w.t(), fmt).dequantize().t(), w), path
