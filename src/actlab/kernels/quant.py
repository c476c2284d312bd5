"""Weight formats of the sparse-input kernels: fp32, bf16, int8 and int4 with fp16 group scales.

A :class:`PackedWeight` is one row-major matrix ``[rows, cols]`` in one format, laid out exactly as the C
struct ``actlab_wmat`` (csrc/weights.h) reads it. For the sparse-input GEMV it is the *transposed* weight
(rows = input channels, cols = outputs): a kept input reads one packed row plus its row of scales, and the
groups that share a scale run along the output dimension.

Formats (``w`` the fp32 value; a *block* is ``group`` consecutive **rows**, i.e. input channels of a
transposed weight, and each block has one fp16 scale per column):

* ``fp32``: the values as they are (``data`` float32, no scales).
* ``bf16``: round-to-nearest-even bf16 (``data`` int16 holding the bf16 bits); relative error <= 2**-9.
* ``int8``: llama.cpp's Q8_0: symmetric, per (block, column) ``s = fp16(max|w| / 127)`` over the block's
  rows, ``q = clamp(round(w / s), -127, 127)``; ``|w - s q| <= 0.56 s`` (``s / 2`` but for the block's
  largest value when fp16 rounds ``s`` down). Default group 32.
* ``int4``: llama.cpp's Q4_1: asymmetric, per (block, column) a minimum ``m = fp16(min w)`` and a step
  ``s = fp16((max w - min w) / 15)``, ``q = clamp(round((w - m) / s), 0, 15)``, ``w ~ s q + m``;
  ``|w - (s q + m)| <= 0.51 s + |m| 2**-11`` (fp16 rounding of ``s`` and ``m``). Default group 32.
  Nibbles pair along the columns: in each chunk of 32 columns, byte ``j`` holds column ``j`` (low
  nibble) and column ``j + 16`` (high nibble), so the kernel unpacks two contiguous half-chunks.

Weights that came out of a GGUF file in Q8_0 or Q4_1 (what ``load_model`` gives for a GGUF model, the
default SmolLM2 among them) lie on such a grid already, and ``pack`` with group 32 gives them back
exactly: the format adds no error to them (tests/kernels/test_quant.py checks it against gguf's own
quantizer).

Why blocks along the inputs: besides matching GGUF files, they quantise better. On a SmolLM2 whose
decoder weights were moved off their Q4_1 grid (uniform noise of one step; PPL 31.06, 4096 eval tokens,
int8 lm_head), int4 with blocks of 32 inputs gives +11%, with groups of 32 outputs +34%. The kernel sums
the kept rows of a block unscaled and applies the block's scale row once.

Layout: ``scales`` is ``[ceil(rows / group), scale_ld]`` with ``scale_ld = ld`` (int8) or ``2 * ld``
(int4: the block's scale row, then its minimum row). ``cols`` is **padded** with zero columns up to
``ld``, a multiple of 16 (int8) or 32 (int4); the kernels compute only ``cols`` outputs. ``rows`` is
never padded (the last block may be short). Non-positive groups, non-finite values in any format but
fp32, or a scale beyond fp16's range are refused with ``ValueError``. fp16 scales underflow for blocks
whose largest magnitude is below about ``1e-5`` (an absolute error below that magnitude).

Example:
    >>> import torch
    >>> wt = torch.randn(64, 96)
    >>> p = pack(wt, "int8")
    >>> p.fmt, p.group, p.ld, tuple(p.scales.shape)
    ('int8', 32, 96, (2, 96))
    >>> bool((p.dequantize() - wt).abs().max() <= p.scales.float().abs().max() * 0.56)
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from actlab.kernels import _args, ops

__all__ = ["FORMAT_CODES", "WEIGHT_FORMATS", "PackedWeight", "check_format", "check_packed", "int8_dot_active", "pack",
           "set_int8_dot", "sparse_linear_packed"]

WEIGHT_FORMATS: tuple[str, ...] = ("fp32", "bf16", "int8", "int4")
# actlab_fmt in csrc/weights.h (part of the ABI)
FORMAT_CODES: dict[str, int] = {"fp32": 0, "bf16": 1, "int8": 2, "int4": 3}
_DEFAULT_GROUP = {"int8": 32, "int4": 32}  # llama.cpp's Q8_0 and Q4_1 blocks
_COL_MULTIPLE = {"int8": 16, "int4": 32}  # ld: what the C kernels' vector loops (and nibble pairs) assume
_FP16_MAX = 65504.0


def set_int8_dot(on: bool) -> bool:
    """Lets int8/int4 decode calls (one token) take integer dot products where the CPU has AVX-512 VNNI
    (``on=True``, the default), as llama.cpp does: each block's kept activations are rounded to int8,
    an error of at most ``max|x| / 254`` per value of the block. ``False`` keeps the float loops, whose
    products are exact. Returns the previous setting (False without the compiled kernels).

    Example:
        >>> old = set_int8_dot(False); _ = set_int8_dot(old)
    """
    ext = ops._extension()
    return bool(ext.set_int8_dot(1 if on else 0)) if ext is not None else False


def int8_dot_active() -> bool:
    """Whether one-token int8/int4 calls take the integer dot products now (enabled, the CPU has AVX-512
    VNNI and the avx512 ISA is selected).

    Example:
        >>> isinstance(int8_dot_active(), bool)
        True
    """
    ext = ops._extension()
    return bool(ext.int8_dot_active()) if ext is not None else False


def check_format(fmt: str) -> str:
    """``fmt`` if it is one of :data:`WEIGHT_FORMATS`, else ``ValueError`` naming them.

    Example:
        >>> check_format("int4")
        'int4'
    """
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; choose one of {', '.join(WEIGHT_FORMATS)}")
    return fmt


@dataclass(eq=False, frozen=True)
class PackedWeight:
    """A ``[rows, cols]`` matrix in one weight format, in the layout the C kernels read.

    Attributes:
        fmt: one of :data:`WEIGHT_FORMATS`.
        data: ``[rows, ld]`` float32 (fp32), ``[rows, ld]`` int16 bf16 bits (bf16), ``[rows, ld]`` int8
            (int8) or ``[rows, ld // 2]`` uint8 nibble pairs (int4); contiguous.
        scales: ``[ceil(rows / group), scale_ld]`` float16 (int8, int4), else None; contiguous.
        group: rows (input channels) per block of scales (0 for fp32/bf16).
        rows, cols: logical shape; ``ld`` >= ``cols`` is the padded row length in elements.

    Checked once at construction (``ValueError`` if the tensors do not match the fields) and frozen, so
    a kernel call trusts it: do not resize its tensors in place.

    Example:
        >>> p = pack(torch.randn(8, 64), "int4")
        >>> p.c_args()[0], p.nbytes   # int4 code 3; 8 rows of 32 bytes + one block's 64 scales and 64 minima
        (3, 512)
    """

    fmt: str
    data: Tensor
    scales: Tensor | None
    group: int
    rows: int
    cols: int
    ld: int

    @property
    def scale_ld(self) -> int:
        """fp16 values per block of scales: ``ld`` (int8), ``2 * ld`` (int4: scales then minima), 0 without."""
        return {"int8": self.ld, "int4": 2 * self.ld}.get(self.fmt, 0)

    @property
    def blocks(self) -> int:
        """Blocks of ``group`` rows sharing one scale row (``ceil(rows / group)``; 0 without scales)."""
        return -(-self.rows // self.group) if self.group else 0

    @property
    def row_bytes(self) -> int:
        """Bytes one kept row costs to read: its packed values (a block's scales are read once for all of
        its kept rows, ``2 * scale_ld`` bytes per block with any kept row)."""
        return self.data.numel() * self.data.element_size() // self.rows if self.rows else 0

    @property
    def nbytes(self) -> int:
        """Bytes of the packed values and scales together (what a dense pass reads)."""
        n = self.data.numel() * self.data.element_size()
        return n + (0 if self.scales is None else self.scales.numel() * self.scales.element_size())

    def read_bytes(self, keep: Tensor) -> int:
        """Bytes a sparse call reads when the rows where ``keep`` (bool ``[rows]``) is true are kept: their
        packed values, plus the scale row (and minimum row) of each block holding a kept row.

        Example:
            >>> p = pack(torch.randn(64, 64), "int4")            # 2 blocks of 32 rows
            >>> keep = torch.zeros(64, dtype=torch.bool); keep[:3] = True
            >>> p.read_bytes(keep)                               # 3 rows of 32 bytes + one block's 128 fp16
            352
        """
        n = int(keep.sum()) * self.row_bytes
        if self.group and self.rows:
            pad = self.blocks * self.group - self.rows
            k = torch.nn.functional.pad(keep.bool(), (0, pad)).view(self.blocks, self.group)
            n += int(k.any(1).sum()) * 2 * self.scale_ld
        return n

    def __post_init__(self) -> None:
        check_packed(self)
        sp = 0 if self.scales is None else self.scales.data_ptr()
        args = (FORMAT_CODES[self.fmt], self.data.data_ptr(), self.rows, self.cols, self.ld, sp, self.scale_ld,
                self.group)
        object.__setattr__(self, "_c_args", args)

    def c_args(self) -> tuple[int, int, int, int, int, int, int, int]:
        """``(fmt code, data_ptr, rows, cols, ld, scales_ptr, scale_ld, group)``: an ``actlab_wmat`` as the
        bindings take it. The pointers live as long as this object's tensors."""
        return self._c_args  # type: ignore[attr-defined]

    def dequantize(self) -> Tensor:
        """The float32 ``[rows, cols]`` values the kernels compute with (the reference of every test)."""
        if self.fmt == "fp32":
            return self.data[:, : self.cols].clone()
        if self.fmt == "bf16":
            return self.data.view(torch.bfloat16).float()[:, : self.cols].contiguous()
        per_row = self.scales.float().repeat_interleave(self.group, dim=0)[: self.rows]  # type: ignore[union-attr]
        if self.fmt == "int8":
            w = self.data.float() * per_row
        else:
            b = self.data.view(self.rows, self.ld // 32, 16)
            q = torch.cat([(b & 15), (b >> 4)], dim=-1).float().view(self.rows, self.ld)
            w = q * per_row[:, : self.ld] + per_row[:, self.ld:]
        return w[:, : self.cols].contiguous()

    def to(self, device: torch.device | str) -> PackedWeight:
        """A copy on another device (the kernels read CPU tensors only)."""
        sc = None if self.scales is None else self.scales.to(device)
        return PackedWeight(self.fmt, self.data.to(device), sc, self.group, self.rows, self.cols, self.ld)

    def __repr__(self) -> str:
        g = f", group={self.group}" if self.group else ""
        return f"PackedWeight({self.fmt}, rows={self.rows}, cols={self.cols}, ld={self.ld}{g})"


def _group_for(fmt: str, group: int | None) -> int:
    if fmt not in _DEFAULT_GROUP:
        if group not in (None, 0):
            raise ValueError(f"{fmt} weights have no groups; pass group=None")
        return 0
    g = _DEFAULT_GROUP[fmt] if group is None else int(group)
    if g <= 0:
        raise ValueError(f"{fmt} group must be a positive number of rows, got {group}")
    return g


def _fp16(v: Tensor, fmt: str, what: str) -> Tensor:
    if v.numel() and float(v.abs().max()) > _FP16_MAX:
        raise ValueError(f"{fmt}: a {what} of {float(v.abs().max()):.3g} exceeds what fp16 scales hold; "
                         "keep this layer in fp32 or bf16")
    return v.to(torch.float16)


def pack(wt: Tensor, fmt: str, group: int | None = None) -> PackedWeight:
    """Packs a float ``[rows, cols]`` matrix (for the kernels: the transposed weight ``[in, out]``).

    Args:
        wt: 2-D floating tensor, any strides and device (packed on CPU in float32).
        fmt: one of :data:`WEIGHT_FORMATS`.
        group: rows (inputs) per block of scales for int8 and int4 (default 32, llama.cpp's blocks);
            must be None for fp32/bf16.

    Returns:
        A :class:`PackedWeight` whose ``dequantize()`` is the format's rounding of ``wt``.

    Raises:
        ValueError: unknown format (naming the allowed ones), a tensor that is not 2-D floating, a bad
            group, or non-finite values (any format but fp32) / fp16-overflowing ones.

    Example:
        >>> p = pack(torch.randn(48, 40), "int4")   # 40 columns padded to 64; 2 blocks of up to 32 rows
        >>> p.ld, tuple(p.data.shape), tuple(p.scales.shape), p.dequantize().shape
        (64, (48, 32), (2, 128), torch.Size([48, 40]))
    """
    check_format(fmt)
    if not isinstance(wt, Tensor) or wt.dim() != 2 or not wt.is_floating_point():
        shape = tuple(wt.shape) if isinstance(wt, Tensor) else type(wt).__name__
        raise ValueError(f"pack needs a 2-D floating tensor [rows, cols], got {shape}")
    g = _group_for(fmt, group)
    w = wt.detach().to(device="cpu", dtype=torch.float32)
    rows, cols = w.shape
    if fmt == "fp32":
        return PackedWeight(fmt, w.contiguous().clone() if w.is_contiguous() else w.contiguous(), None, 0,
                            rows, cols, cols)
    if not bool(torch.isfinite(w).all()):  # the kernels skip masked rows: 0 * inf would not be NaN
        raise ValueError(f"{fmt} weights must be finite (NaN or inf found); keep this layer in fp32")
    if fmt == "bf16":
        return PackedWeight(fmt, w.to(torch.bfloat16).contiguous().view(torch.int16), None, 0, rows, cols, cols)
    ld = -(-cols // _COL_MULTIPLE[fmt]) * _COL_MULTIPLE[fmt]
    if ld != cols:
        w = torch.nn.functional.pad(w, (0, ld - cols))
    nb = -(-rows // g)
    # a short last block repeats its last row: min and max (what sets the scales) stay those of its own rows
    wb = torch.cat([w, w[-1:].expand(nb * g - rows, ld)]) if nb * g != rows else w
    wb = wb.view(nb, g, ld)
    if fmt == "int8":
        s16 = _fp16(wb.abs().amax(dim=1) / 127.0, fmt, "scale")  # [nb, ld]
        s = s16.float().repeat_interleave(g, dim=0)[:rows]
        q = torch.where(s == 0, torch.zeros_like(w), torch.round(w / torch.where(s == 0, 1.0, s)))
        data = q.clamp_(-127, 127).to(torch.int8)
        return PackedWeight(fmt, data.contiguous(), s16.contiguous(), g, rows, cols, ld)
    m16 = _fp16(wb.amin(dim=1), fmt, "minimum")
    s16 = _fp16((wb.amax(dim=1) - wb.amin(dim=1)) / 15.0, fmt, "scale")  # llama.cpp's step, from the unrounded min
    s = s16.float().repeat_interleave(g, dim=0)[:rows]
    m = m16.float().repeat_interleave(g, dim=0)[:rows]
    q = torch.where(s == 0, torch.zeros_like(w), torch.round((w - m) / torch.where(s == 0, 1.0, s)))
    nib = q.clamp_(0, 15).to(torch.uint8).view(rows, ld // 32, 32)
    data = (nib[..., :16] | (nib[..., 16:] << 4)).reshape(rows, ld // 2)
    return PackedWeight(fmt, data.contiguous(), torch.cat([s16, m16], dim=1).contiguous(), g, rows, cols, ld)


_DATA_DTYPES = {"fp32": torch.float32, "bf16": torch.int16, "int8": torch.int8, "int4": torch.uint8}


def check_packed(p: PackedWeight) -> None:
    """Raises ValueError unless ``p``'s tensors are what its fields promise: the lengths C will read
    behind each pointer (dtype, contiguity, ``data`` ``[rows, ld]`` or ``[rows, ld // 2]``, ``scales``
    ``[ceil(rows / group), scale_ld]``, group rules). Runs before any pointer reaches C.

    Example:
        >>> check_packed(pack(torch.randn(4, 64), "int8"))
    """
    if not isinstance(p, PackedWeight):
        raise ValueError(f"expected a PackedWeight (from actlab.kernels.quant.pack), got {type(p).__name__}")
    check_format(p.fmt)
    if p.rows < 0 or p.cols < 0 or p.ld < p.cols:
        raise ValueError(f"packed weight has rows={p.rows}, cols={p.cols}, ld={p.ld}: need ld >= cols >= 0")
    width = p.ld // 2 if p.fmt == "int4" else p.ld
    d = p.data
    if d.dtype is not _DATA_DTYPES[p.fmt] or tuple(d.shape) != (p.rows, width) or not d.is_contiguous():
        raise ValueError(
            f"{p.fmt} data must be a contiguous {_DATA_DTYPES[p.fmt]} tensor of shape ({p.rows}, {width}), "
            f"got {d.dtype} {tuple(d.shape)}; rebuild it with pack()")
    if p.fmt in _COL_MULTIPLE:
        m = _COL_MULTIPLE[p.fmt]
        if p.group <= 0 or p.ld % m:
            raise ValueError(f"{p.fmt} needs a positive group (got {p.group}) and ld a multiple of {m} (got {p.ld})")
        sc = p.scales
        want = (p.blocks, p.scale_ld)
        if sc is None or sc.dtype is not torch.float16 or tuple(sc.shape) != want or not sc.is_contiguous():
            got = None if sc is None else f"{sc.dtype} {tuple(sc.shape)}"
            raise ValueError(f"{p.fmt} scales must be contiguous float16 {want}, got {got}")
    elif p.scales is not None:
        raise ValueError(f"{p.fmt} weights have no scales")


_KEEP_ALL = torch.tensor(-1.0)  # |x| > -1 keeps every input but NaN (as C does for a NULL threshold)


def sparse_linear_packed(x: Tensor, packed: PackedWeight, threshold: Tensor | float | None = None,
                         bias: Tensor | None = None) -> Tensor:
    """``y = mask(x, threshold) @ W + bias`` for a packed transposed weight ``W [in, out]`` in any format,
    reading only the packed rows (and scales) of kept inputs.

    Decode-sized calls (up to ``ops.MAX_KERNEL_ROWS`` tokens) on CPU float32 run the C kernel of the
    format (one-token int8/int4 calls on an AVX-512 VNNI CPU with integer dot products: see
    :func:`set_int8_dot`); longer inputs, autograd and compilation run the reference (``dequantize()`` and
    :func:`actlab.kernels.ops.sparse_linear_reference`), as does a missing or disabled extension (with the
    one-time ``ActlabKernelWarning``). ``threshold=None`` keeps every input except NaN (a dense GEMV).

    Raises:
        ValueError: ``packed`` not a :class:`PackedWeight`, ``x``'s features != ``packed.rows``, a
            threshold not scalar or ``[in]``, a bias not ``[out]``.

    Example:
        >>> wt = torch.randn(64, 48)
        >>> p = pack(wt, "int8")
        >>> x = torch.randn(1, 64)
        >>> old = set_int8_dot(False)   # exact products; with VNNI the kept x would be rounded to int8
        >>> y = sparse_linear_packed(x, p, 0.5)
        >>> ref = torch.where(x.abs() > 0.5, x, 0) @ p.dequantize()
        >>> bool(torch.allclose(y, ref, atol=1e-4))
        True
        >>> _ = set_int8_dot(old)
    """
    # Runs once per layer per decoded token: cheap tensor queries only (a PackedWeight is checked when built).
    if type(packed) is not PackedWeight:
        check_packed(packed)
    n_in = packed.rows
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[-1] != n_in:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be [..., {n_in}] for this packed weight, got {shape}")
    thr = _KEEP_ALL if threshold is None else threshold
    if not isinstance(thr, Tensor):
        thr = torch.tensor(float(thr), dtype=torch.float32)
    if thr.dim():
        _args.check_threshold("threshold", thr, n_in)
    if bias is not None:
        _args.check_bias("bias", bias, packed.cols)
    rows = x.numel() // n_in if n_in and x.is_contiguous() else _args.count_rows(x)
    if rows <= ops.MAX_KERNEL_ROWS and type(x) is torch.Tensor and not torch.compiler.is_compiling() and not (
            torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))):
        reason = None
        if _args.env_disabled() or ops._extension() is None:
            reason = ops._why_not_kernel(())
        elif not (x.is_cpu and x.dtype is torch.float32 and thr.is_cpu and thr.dtype is torch.float32) or (
                bias is not None and not (bias.is_cpu and bias.dtype is torch.float32)):
            reason = ops._why_not_kernel((), x, thr, bias)
        elif not packed.data.is_cpu:
            reason = f"kernels read CPU weights (the packed weight is on {packed.data.device})"
        elif packed.fmt == "fp32" and not _args.all_finite(packed.data):
            reason = "a weight holds NaN or inf (the reference runs: masked rows propagate it as 0 * inf = NaN)"
        if reason is None:
            x2, nrows, x_ld = (x, rows, n_in) if x.is_contiguous() else _args.rows_view(x)
            if not thr.is_contiguous():
                thr = thr.contiguous()
            b = None if bias is None or bias.is_contiguous() else bias.contiguous()
            if bias is not None and b is None:
                b = bias
            y = x.new_empty(x.shape[:-1] + (packed.cols,))
            ops._ext.sparse_linear_w(  # type: ignore[union-attr]
                x2.data_ptr(), nrows, n_in, x_ld, *packed._c_args, thr.data_ptr(),  # type: ignore[attr-defined]
                int(thr.numel() != 1), 0 if b is None else b.data_ptr(), y.data_ptr(), packed.cols,
                torch.get_num_threads())
            return y
        ops._warn_once(reason)
    w = packed.dequantize().to(device=x.device, dtype=x.dtype)
    return ops.sparse_linear_reference(x, w, thr.to(x.device), bias)
