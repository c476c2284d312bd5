"""The Python -> C boundary: bad calls raise the reference's error on every path, odd-but-valid calls
(strides, torch defaults, non-finite values) give the reference's numbers."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import assert_matches, needs_ext

from actlab.kernels import ops
from actlab.kernels._args import all_finite
from actlab.kernels.linear import SparseGatedMLP, SparseLinear
from actlab.kernels.reference import sparse_gated_mlp_reference, sparse_linear_reference

pytestmark = needs_ext


def _linear_paths(x, wt, t, bias, monkeypatch):
    """Every way a sparse_linear call can run: name -> thunk."""

    def disabled():
        monkeypatch.setenv(ops.DISABLE_ENV, "1")
        try:
            return ops.sparse_linear(x, wt, t, bias)
        finally:
            monkeypatch.delenv(ops.DISABLE_ENV)

    def grad():
        return ops.sparse_linear(x.clone().requires_grad_(True), wt, t, bias)

    def prefill():  # more rows than the kernel takes: the dense path
        reps = (ops.MAX_KERNEL_ROWS + 1,) + (1,) * (x.dim() - 1) if x.dim() else (1,)
        return ops.sparse_linear(x.repeat(*reps), wt, t, bias)

    t_tensor = t if isinstance(t, torch.Tensor) else torch.tensor(float(t))
    return {
        "kernel": lambda: ops.sparse_linear(x, wt, t, bias),
        "disabled": disabled,
        "autograd": grad,
        "prefill": prefill,
        "custom_op": lambda: torch.ops.actlab.sparse_linear(x, wt, t_tensor, bias),
        "reference": lambda: sparse_linear_reference(x, wt, t, bias),
    }


BAD_LINEAR = {
    "bias too short": dict(bias=torch.randn(7)),
    "bias too long": dict(bias=torch.randn(9)),
    "bias of one value": dict(bias=torch.randn(1)),  # would broadcast in torch; C would read 8 floats
    "bias 2-d": dict(bias=torch.randn(1, 8)),
    "threshold too short": dict(t=torch.rand(15)),
    "threshold per token": dict(t=torch.rand(2, 16)),
    "threshold [1, 1, in]": dict(t=torch.rand(1, 1, 16)),
    "x features": dict(x=torch.randn(2, 15)),
    "wt 1-d": dict(wt=torch.randn(16)),
    "wt 3-d": dict(wt=torch.randn(1, 16, 8)),
}


@pytest.mark.parametrize("case", list(BAD_LINEAR))
def test_bad_linear_call_raises_value_error_on_every_path(case, monkeypatch):
    args = dict(x=torch.randn(2, 16), wt=torch.randn(16, 8), t=torch.tensor(0.3), bias=None)
    args.update(BAD_LINEAR[case])
    for name, run in _linear_paths(args["x"], args["wt"], args["t"], args["bias"], monkeypatch).items():
        with pytest.raises(ValueError, match="bias|threshold|features|wt"):
            run()
            pytest.fail(f"{name} accepted it")


BAD_MLP = {
    "b_gate length": dict(biases=(torch.randn(39), None, None)),
    "b_up length": dict(biases=(None, torch.randn(1), None)),
    "b_down length": dict(biases=(None, None, torch.randn(40))),
    "t_in length": dict(t_in=torch.rand(40)),
    "t_act length": dict(t_act=torch.rand(16)),
    "t_down per token": dict(t_down=torch.rand(2, 40)),
    "w_up transposed": dict(w_up=torch.randn(16, 40)),
    "x features": dict(x=torch.randn(2, 17)),
}


@pytest.mark.parametrize("case", list(BAD_MLP))
def test_bad_gated_mlp_call_raises_value_error_on_every_path(case, monkeypatch):
    a = dict(x=torch.randn(2, 16), w_gate_t=torch.randn(16, 40), w_up=torch.randn(40, 16),
             w_down_t=torch.randn(40, 16), t_in=None, t_act=torch.tensor(0.1), t_down=None, biases=(None,) * 3)
    a.update(BAD_MLP[case])
    w = (a["x"], a["w_gate_t"], a["w_up"], a["w_down_t"])
    kw = dict(t_act=a["t_act"], t_in=a["t_in"], t_down=a["t_down"], biases=a["biases"])
    runs = {
        "kernel": lambda: ops.sparse_gated_mlp(*w, "silu", **kw),
        "prefill": lambda: ops.sparse_gated_mlp(w[0].repeat(8, 1), *w[1:], "silu", **kw),
        "reference": lambda: sparse_gated_mlp_reference(*w, "silu", **kw),
        "custom_op": lambda: torch.ops.actlab.sparse_gated_mlp(
            *w, *a["biases"], a["t_in"], a["t_act"], a["t_down"], 0),
    }
    for run in runs.values():
        with pytest.raises(ValueError, match="shape|inconsistent|b_|t_"):
            run()


@settings(max_examples=60, deadline=None)
@given(
    n_in=st.integers(1, 24),
    n_out=st.integers(1, 24),
    bias_len=st.one_of(st.none(), st.integers(1, 26)),
    thr_len=st.one_of(st.none(), st.integers(1, 26)),
    rows=st.integers(1, ops.MAX_KERNEL_ROWS),
)
def test_kernel_raises_exactly_when_the_reference_does(n_in, n_out, bias_len, thr_len, rows):
    x, wt = torch.randn(rows, n_in), torch.randn(n_in, n_out)
    bias = None if bias_len is None else torch.randn(bias_len)
    t = torch.tensor(0.4) if thr_len is None else torch.rand(thr_len)
    outcomes = []
    for f in (ops.sparse_linear, sparse_linear_reference):
        try:
            outcomes.append(f(x, wt, t, bias))
        except ValueError:
            outcomes.append(None)
    kernel, ref = outcomes
    assert (kernel is None) == (ref is None)
    valid = (bias_len in (None, n_out)) and (thr_len in (None, 1, n_in))
    assert (kernel is not None) == valid
    if valid:
        assert_matches(kernel, ref, (x.abs() @ wt.abs()).max() + (0 if bias is None else bias.abs().max()))


def test_output_follows_the_inputs_not_torch_defaults():
    x, wt, b = torch.randn(1, 32), torch.randn(32, 16), torch.randn(16)
    w_g, w_u, w_d = torch.randn(32, 48), torch.randn(48, 32), torch.randn(48, 32)
    want = sparse_linear_reference(x, wt, 0.3, b)
    want_mlp = sparse_gated_mlp_reference(x, w_g, w_u, w_d, "silu", 0.1)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # C writes float32: a float64 output would be garbage
    try:
        y = ops.sparse_linear(x, wt, 0.3, b)
        y_mlp = ops.sparse_gated_mlp(x, w_g, w_u, w_d, "silu", 0.1)
    finally:
        torch.set_default_dtype(old)
    assert y.dtype == y_mlp.dtype == torch.float32
    assert_matches(y, want, want.abs().max())
    assert_matches(y_mlp, want_mlp, want_mlp.abs().max())
    with torch.device("meta"):  # a default device C cannot write to
        y = ops.sparse_linear(x, wt, torch.tensor(0.3, device="cpu"), b)
        y_mlp = ops.sparse_gated_mlp(x, w_g, w_u, w_d, "silu", torch.tensor(0.1, device="cpu"))
    assert y.device.type == y_mlp.device.type == "cpu"
    assert_matches(y, want, want.abs().max())
    assert_matches(y_mlp, want_mlp, want_mlp.abs().max())


def test_weight_strides_the_row_walk_cannot_follow_are_copied():
    x = torch.randn(2, 24)
    expanded = torch.randn(1, 10).expand(24, 10)  # row stride 0
    overlapping = torch.randn(40).as_strided((24, 10), (1, 1))  # rows overlap
    for wt in (expanded, overlapping):
        y = ops.sparse_linear(x, wt, 0.2)
        ref = sparse_linear_reference(x, wt, 0.2)
        assert_matches(y, ref, (x.abs() @ wt.abs()).max())
    w_g, w_d = torch.randn(40, 24).t(), torch.randn(1, 24).expand(40, 24)  # column-major, row stride 0
    w_u = torch.randn(80, 24)[::2]  # row stride 48
    y = ops.sparse_gated_mlp(x, w_g, w_u, w_d, "relu", 0.05)
    ref = sparse_gated_mlp_reference(x, w_g, w_u, w_d, "relu", 0.05)
    assert_matches(y, ref, ref.abs().max())


def test_nonfinite_weights_behave_as_in_the_reference(fresh_warnings):
    x = torch.tensor([[0.01, 2.0, -3.0, 0.02]])  # inputs 0 and 3 are masked at t = 0.5
    wt = torch.randn(4, 6)
    wt[0, 1] = float("nan")  # masked row: 0 * NaN = NaN in the reference
    wt[3, 2] = float("inf")  # masked row: 0 * inf = NaN
    wt[1, 4] = float("-inf")  # kept row: 2 * -inf = -inf
    ref = sparse_linear_reference(x, wt, 0.5)
    with pytest.warns(ops.ActlabKernelWarning, match="NaN or inf"):
        y = ops.sparse_linear(x, wt, 0.5)
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())
    assert y[0, 1].isnan() and y[0, 2].isnan() and y[0, 4] == float("-inf")
    assert_matches(y, ref, (x.abs() @ wt.abs().nan_to_num(0, 0, 0)).max())
    g = torch.Generator().manual_seed(0)
    w_g, w_u, w_d = torch.randn(4, 8, generator=g), torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    w_d[0, 0] = float("nan")
    t_act = torch.full((8,), 1e9)
    t_act[1] = -1.0  # only neuron 1 kept: neuron 0's NaN down row is masked
    ref = sparse_gated_mlp_reference(x, w_g, w_u, w_d, "silu", t_act)
    y = ops.sparse_gated_mlp(x, w_g, w_u, w_d, "silu", t_act)
    assert ref[0, 0].isnan() and torch.equal(y.isnan(), ref.isnan())


def test_finite_check_is_cached_and_sees_in_place_changes():
    w = torch.randn(8, 4)
    assert all_finite(w)
    w[2, 1] = float("inf")  # bumps the version counter
    assert not all_finite(w)
    w.zero_()
    assert all_finite(w)
    lin = torch.nn.Linear(8, 4)
    sparse = SparseLinear.from_linear(lin, 0.1)
    x = torch.randn(1, 8)
    with torch.no_grad():
        before = sparse(x)
        # detach() shares the version counter the cached check reads (a write through .data does not:
        # it would pass here only when x's first input happens to be kept)
        sparse.weight_t.detach()[0, 0] = float("nan")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ops.ActlabKernelWarning)
            after = sparse(x)
    ref = sparse_linear_reference(x, sparse.weight_t.detach(), sparse.threshold, sparse.bias.detach())
    assert before[0].isfinite().all() and torch.equal(after.isnan(), ref.isnan())


def test_modules_check_shapes_when_built():
    w_t = torch.randn(16, 8)
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
        SparseLinear(w_t, 0.1, bias=torch.randn(7))
    with pytest.raises(ValueError, match="threshold"):
        SparseLinear(w_t, torch.rand(15))
    g, u, d = torch.randn(16, 40), torch.randn(40, 16), torch.randn(40, 16)
    with pytest.raises(ValueError, match=r"b_down must have shape \(16,\)"):
        SparseGatedMLP(g, u, d, biases=(None, None, torch.randn(40)))
    with pytest.raises(ValueError, match="threshold"):
        SparseGatedMLP(g, u, d, t_act=torch.rand(16))


def test_threshold_edge_values_agree():
    x = torch.randn(3, 20)
    x[0, 0], x[1, 1], x[2, 2] = float("nan"), float("inf"), -float("inf")
    wt = torch.randn(20, 12).abs() + 0.1  # all positive: inf rows give inf, never inf - inf
    for t in (float("nan"), float("inf"), -1.0, 0.0, -float("inf")):
        y, ref = ops.sparse_linear(x, wt, t), sparse_linear_reference(x, wt, t)
        assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf()), t
        if t == -1.0:  # everything kept but the NaN, which no threshold keeps
            assert y[0].isfinite().all() and y[1].isinf().all()
