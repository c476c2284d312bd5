"""Modules that replace ``nn.Linear`` layers (and gated MLPs) with the sparse-input kernels.

They hold only the layout the kernel reads (transposed weights, plus ``w_up`` row-major for the gated MLP)
and drop the original ``nn.Linear`` weights, so a sparsified model is not twice the size; ``to_linear`` /
``to_linears`` rebuild bit-identical ``nn.Linear`` layers for ``remove_`` (for a quantized
``SparseLinear``: the dequantized weights, no longer bit-identical to the originals). Decode steps (at most
``ops.MAX_KERNEL_ROWS`` tokens) run the C kernel; longer inputs (prefill) run a dense matmul on the masked
input with the same semantics. Without the extension both fall back to the reference, with a warning.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from actlab.kernels import ops, quant
from actlab.kernels._args import check_bias
from actlab.kernels.quant import PackedWeight
from actlab.kernels.reference import Activation

__all__ = ["SparseGatedMLP", "SparseLinear"]

Threshold = Tensor | float | None


def _threshold_buffer(t: Threshold, n: int, like: Tensor) -> Tensor | None:
    """Threshold as a float32 tensor of shape [] or [n] on the weight's device (the kernel reads fp32)."""
    if t is None:
        return None
    t = torch.as_tensor(t, dtype=torch.float32).detach().to(like.device).clone()
    if t.numel() == 1:
        return t.reshape(())
    if t.shape != (n,):
        raise ValueError(f"threshold must be a scalar or have shape ({n},), got {tuple(t.shape)}")
    return t


def _kernel_layout(w: Tensor) -> Tensor:
    """w itself if already in kernel layout (contiguous; huge pages when large), else a copy that is."""
    w = w.detach()
    if w.is_contiguous() and (w.numel() * w.element_size() < (4 << 20) or w.data_ptr() % (2 << 20) == 0):
        return w
    return ops.kernel_weight(w)


def _frozen(t: Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


def _rebuild(weight: Tensor, bias: Tensor | None, requires_grad: bool) -> nn.Linear:
    """nn.Linear around the given tensors, without running (and paying for) a random init."""
    out_f, in_f = weight.shape
    lin = nn.Linear(in_f, out_f, bias=bias is not None, device="meta", dtype=weight.dtype)
    lin.weight = nn.Parameter(weight, requires_grad=requires_grad)
    if bias is not None:
        lin.bias = nn.Parameter(bias, requires_grad=requires_grad)
    return lin


class SparseLinear(nn.Module):
    """``y = mask(x, threshold) @ W^T + b`` for one ``nn.Linear`` or several that share their input.

    Several Linears (q/k/v, gate/up) are concatenated along the output so the kept-input selection and
    the weight pass happen once; ``forward`` then returns a tuple of their outputs.

    ``weights`` picks the format the kernel reads (:data:`actlab.kernels.quant.WEIGHT_FORMATS`): fp32
    keeps ``weight_t`` as a parameter; bf16/int8/int4 hold only the packed buffers ``qdata``/``qscales``.
    ``packed`` is the :class:`~actlab.kernels.quant.PackedWeight` for every format. ``threshold=None``
    keeps every input (a dense layer through the same kernel).

    Example:
        >>> q, k = nn.Linear(64, 64), nn.Linear(64, 16)
        >>> fused = SparseLinear.from_linear([q, k], threshold=0.3)
        >>> yq, yk = fused(torch.randn(1, 64))
        >>> yq.shape, yk.shape
        (torch.Size([1, 64]), torch.Size([1, 16]))
        >>> q2, k2 = fused.to_linear()   # bit-identical to q and k
        >>> torch.equal(q2.weight, q.weight)
        True
        >>> SparseLinear.from_linear(q, threshold=None, weights="int8").packed.fmt
        'int8'
    """

    def __init__(
        self,
        weight_t: Tensor,
        threshold: Threshold,
        bias: Tensor | None = None,
        split_sizes: Sequence[int] | None = None,
        has_bias: Sequence[bool] | None = None,
        requires_grad: bool = False,
        weights: str = "fp32",
        group: int | None = None,
    ) -> None:
        """Wraps an already transposed ``[in, out]`` weight; most callers want :meth:`from_linear`."""
        super().__init__()
        self.weights = quant.check_format(weights)
        if weights == "fp32":
            self.weight_t = _frozen(_kernel_layout(weight_t))  # [in, out]
        else:
            p = quant.pack(weight_t, weights, group)
            self.weight_t = None
            self.register_buffer("qdata", ops.kernel_weight(p.data) if p.nbytes >= (4 << 20) else p.data)
            self.register_buffer("qscales", p.scales)
            self._qshape = (p.group, p.rows, p.cols, p.ld)
        check_bias("bias", bias, weight_t.shape[1])  # at construction, not at the first decoded token
        self.bias = None if bias is None else _frozen(bias.detach().contiguous())
        self.register_buffer("threshold", _threshold_buffer(threshold, weight_t.shape[0], weight_t))
        self.register_buffer("_keep_all", torch.tensor(-1.0), persistent=False)  # |x| > -1: all but NaN
        self.split_sizes = None if split_sizes is None else tuple(int(s) for s in split_sizes)
        n_parts = 1 if self.split_sizes is None else len(self.split_sizes)
        self.has_bias = tuple(has_bias) if has_bias is not None else (bias is not None,) * n_parts
        self.restore_requires_grad = requires_grad
        if self.split_sizes is not None and sum(self.split_sizes) != weight_t.shape[1]:
            raise ValueError(f"split sizes {self.split_sizes} do not add up to {weight_t.shape[1]} outputs")

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear | Sequence[nn.Linear],
        threshold: Threshold,
        weights: str = "fp32",
        group: int | None = None,
    ) -> SparseLinear:
        """Builds from one Linear, or a list of Linears reading the same input (outputs concatenated).

        Args:
            linear: the layer(s); all must have the same ``in_features``, dtype and device.
            threshold: scalar or ``[in_features]``; input ``i`` is kept where ``|x_i| > t_i``; None keeps
                every input.
            weights: ``fp32``, ``bf16``, ``int8`` or ``int4`` (see :mod:`actlab.kernels.quant`).
            group: columns per scale for int8/int4 (None: the format's default).
        """
        layers = [linear] if isinstance(linear, nn.Linear) else list(linear)
        if not layers or len({lin.in_features for lin in layers}) != 1:
            raise ValueError("SparseLinear needs one or more Linears with the same in_features")
        weight = torch.cat([lin.weight.detach() for lin in layers]) if len(layers) > 1 else layers[0].weight
        has_bias = [lin.bias is not None for lin in layers]
        bias = None
        if any(has_bias):  # a missing bias becomes zeros in the fused vector, restored as absent
            bias = torch.cat(
                [
                    lin.bias.detach() if lin.bias is not None else weight.new_zeros(lin.out_features)
                    for lin in layers
                ]
            )
        return cls(
            weight.detach().t(),  # [in, out] view; copied once into kernel layout
            threshold,
            bias,
            split_sizes=None if isinstance(linear, nn.Linear) else [lin.out_features for lin in layers],
            has_bias=has_bias,
            requires_grad=layers[0].weight.requires_grad,
            weights=weights,
            group=group,
        )

    @property
    def packed(self) -> PackedWeight:
        """The weight as the kernels read it (any format), rebuilt only when the module's tensors were
        replaced (``.to()``, ``load_state_dict(assign=True)``)."""
        data = self.weight_t if self.weight_t is not None else self.qdata
        scales = None if self.weight_t is not None else self.qscales
        cached = self.__dict__.get("_packed")
        if cached is None or cached.data is not data or cached.scales is not scales:
            if self.weight_t is not None:
                cached = PackedWeight("fp32", data, None, 0, data.shape[0], data.shape[1], data.shape[1])
            else:
                group, rows, cols, ld = self._qshape
                cached = PackedWeight(self.weights, data, scales, group, rows, cols, ld)
            self.__dict__["_packed"] = cached
        return cached

    @property
    def in_features(self) -> int:
        return self.weight_t.shape[0] if self.weight_t is not None else self._qshape[1]

    @property
    def out_features(self) -> int:
        return self.weight_t.shape[1] if self.weight_t is not None else self._qshape[2]

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        if self.weight_t is not None:
            t = self.threshold if self.threshold is not None else self._keep_all
            y = ops.sparse_linear(x, self.weight_t, t, self.bias)  # [..., out]
        else:
            y = quant.sparse_linear_packed(x, self.packed, self.threshold, self.bias)
        if self.split_sizes is None:
            return y
        return tuple(y.split(self.split_sizes, dim=-1))

    def to_linear(self) -> nn.Linear | list[nn.Linear]:
        """The original Linear(s), bit-identical (weights re-transposed, absent biases absent again); for
        bf16/int8/int4 the dequantized float32 weights, which are not the originals."""
        w = self.weight_t.detach() if self.weight_t is not None else self.packed.dequantize()
        weight = w.t()  # [out, in], a view
        sizes = self.split_sizes or (self.out_features,)
        layers, start = [], 0
        for size, has_bias in zip(sizes, self.has_bias, strict=True):
            bias = self.bias.detach()[start : start + size].clone() if has_bias else None
            w = weight[start : start + size].contiguous()
            layers.append(_rebuild(w, bias, self.restore_requires_grad))
            start += size
        return layers[0] if self.split_sizes is None else layers

    def extra_repr(self) -> str:
        if self.threshold is None:
            t = "none"
        else:
            t = "per-channel" if self.threshold.dim() else f"{float(self.threshold):.4g}"
        split = f", split={list(self.split_sizes)}" if self.split_sizes else ""
        return (f"in={self.in_features}, out={self.out_features}, threshold={t}{split}, "
                f"bias={self.bias is not None}, weights={self.weights}")


class SparseGatedMLP(nn.Module):
    """Gated MLP ``down(act(gate(x)) * up(x))`` skipping neurons whose activation is small (CATS/CHESS).

    Replaces a whole HF MLP module (``LlamaMLP`` and friends): its ``forward(x)`` has the same contract.
    See :func:`actlab.kernels.ops.sparse_gated_mlp` for the thresholds.

    Example:
        >>> g, u, d = nn.Linear(64, 256, bias=False), nn.Linear(64, 256, bias=False), nn.Linear(256, 64, bias=False)
        >>> mlp = SparseGatedMLP.from_linears(g, u, d, act="silu", t_act=0.05)
        >>> mlp(torch.randn(1, 1, 64)).shape
        torch.Size([1, 1, 64])
        >>> g2, u2, d2 = mlp.to_linears()
        >>> torch.equal(d2.weight, d.weight)
        True
    """

    def __init__(
        self,
        w_gate_t: Tensor,
        w_up: Tensor,
        w_down_t: Tensor,
        act: str | int | Activation = Activation.SILU,
        t_act: Threshold = None,
        t_in: Threshold = None,
        t_down: Threshold = None,
        biases: tuple[Tensor | None, Tensor | None, Tensor | None] = (None, None, None),
        requires_grad: bool = False,
    ) -> None:
        """Wraps weights already in kernel layout; most callers want :meth:`from_linears`."""
        super().__init__()
        d_model, d_ff = w_gate_t.shape
        self.act = Activation.parse(act)
        self.w_gate_t = _frozen(_kernel_layout(w_gate_t))  # [d_model, d_ff]
        self.w_up = _frozen(w_up.detach().contiguous())  # [d_ff, d_model], row-sparse reads
        self.w_down_t = _frozen(_kernel_layout(w_down_t))  # [d_ff, d_model]
        for name, b in zip(("b_gate", "b_up", "b_down"), biases, strict=True):
            check_bias(name, b, d_model if name == "b_down" else d_ff)
            setattr(self, name, None if b is None else _frozen(b.detach().contiguous()))
        self.register_buffer("t_act", _threshold_buffer(t_act, d_ff, w_up))
        self.register_buffer("t_in", _threshold_buffer(t_in, d_model, w_up))
        self.register_buffer("t_down", _threshold_buffer(t_down, d_ff, w_up))
        self.restore_requires_grad = requires_grad

    @classmethod
    def from_linears(
        cls,
        gate: nn.Linear,
        up: nn.Linear,
        down: nn.Linear,
        act: str | int | Activation = Activation.SILU,
        t_act: Threshold = None,
        t_in: Threshold = None,
        t_down: Threshold = None,
    ) -> SparseGatedMLP:
        """Builds from the MLP's three Linears. ``up.weight`` is kept as is (shared, not copied).

        Args:
            gate, up, down: ``gate_proj``, ``up_proj``, ``down_proj``.
            act: the gate activation: a name (or entry) of :mod:`actlab.functions` the kernels support,
                the one the MLP's act module runs (:func:`actlab.models.adapters.act_function`).
            t_act: threshold on ``|act(gate)|`` (``[d_ff]`` or scalar), the CATS neuron selection.
            t_in: threshold on the MLP input (``[d_model]`` or scalar), masks gate's and up's input.
            t_down: threshold on the down projection's input (``[d_ff]`` or scalar).
        """
        if gate.weight.shape != up.weight.shape or down.weight.shape != up.weight.t().shape:
            raise ValueError("gate/up must be [d_ff, d_model] and down [d_model, d_ff]")
        return cls(
            gate.weight.detach().t(),  # views: copied once into kernel layout
            up.weight.detach(),
            down.weight.detach().t(),
            act,
            t_act,
            t_in,
            t_down,
            (gate.bias, up.bias, down.bias),
            requires_grad=up.weight.requires_grad,
        )

    def forward(self, x: Tensor) -> Tensor:
        return ops.sparse_gated_mlp(
            x,
            self.w_gate_t,
            self.w_up,
            self.w_down_t,
            self.act,
            self.t_act,
            self.t_in,
            self.t_down,
            (self.b_gate, self.b_up, self.b_down),
        )

    def to_linears(self) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        """``(gate, up, down)`` as bit-identical ``nn.Linear`` layers."""
        rg = self.restore_requires_grad

        def bias(b: Tensor | None) -> Tensor | None:
            return None if b is None else b.detach().clone()

        return (
            _rebuild(self.w_gate_t.detach().t().contiguous(), bias(self.b_gate), rg),
            _rebuild(self.w_up.detach(), bias(self.b_up), rg),
            _rebuild(self.w_down_t.detach().t().contiguous(), bias(self.b_down), rg),
        )

    def extra_repr(self) -> str:
        d_model, d_ff = self.w_gate_t.shape
        masks = [n for n in ("t_in", "t_act", "t_down") if getattr(self, n) is not None]
        return f"d_model={d_model}, d_ff={d_ff}, act={self.act.name.lower()}, masks={masks}"
