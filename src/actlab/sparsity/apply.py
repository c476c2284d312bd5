"""``apply_`` / ``remove_``: install a plan by swapping modules, and restore the model exactly.

The masking path wraps each module a plan entry names: a :class:`MaskedLinear` around a linear (the input is
masked, ``|x_i| > t_i`` kept), a :class:`MaskedAct` around a gated MLP's activation (its output masked), or a
:class:`TopKLinear`. Wrappers hold the original module untouched, so ``remove_`` puts the very same objects
back: outputs after ``remove_`` are bit-identical to before ``apply_``. The wrappers are plain modules on
the weights' device, so the masking path works on any device and inside Hugging Face ``generate``.
A kernel path can replace the same entries with ``actlab.kernels`` modules.

Example:
    >>> plan = SparsityPlan.load("plans/teal50")     # doctest: +SKIP
    >>> actlab.apply_(model, plan)                   # doctest: +SKIP
    >>> actlab.remove_(model)                        # doctest: +SKIP
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from actlab.models.adapters import linear_weight
from actlab.sparsity.errors import PlanError
from actlab.sparsity.fingerprint import fingerprint_mismatch, model_fingerprint
from actlab.sparsity.plan import PlanEntry, SparsityPlan


class _Masked(nn.Module):
    """Common state: the wrapped module, counters for measured sparsity, an optional dense prefix."""

    def __init__(self, inner: nn.Module, entry_key: str) -> None:
        super().__init__()
        self.inner = inner
        self.entry_key = entry_key
        #: positions < dense_prefix are left dense (the TEAL evaluation protocol)
        self.dense_prefix = 0
        self.track = False
        self.dropped = 0
        self.seen = 0

    def _keep(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if self.track:  # counted over the positions that are sparsified
            counted = keep[..., self.dense_prefix :, :] if self.dense_prefix > 0 and x.dim() >= 3 else keep
            self.dropped += int((~counted).sum())
            self.seen += counted.numel()
        if self.dense_prefix > 0 and x.dim() >= 3:
            keep = keep.clone()
            keep[..., : self.dense_prefix, :] = True  # [batch, seq, width]: first positions dense
        return x.masked_fill(~keep, 0)


class MaskedLinear(_Masked):
    """``inner(x)`` with ``x_i`` zeroed where ``|x_i| <= threshold_i`` (threshold shape [] or [in]).

    With a ``rotation`` ``Q`` the mask acts on ``z = x Q`` and ``inner`` reads ``mask(z) Q^T``.
    """

    def __init__(self, inner: nn.Module, threshold: torch.Tensor, entry_key: str = "",
                 rotation: torch.Tensor | None = None) -> None:
        super().__init__(inner, entry_key)
        w = linear_weight(inner)
        self.register_buffer("threshold", threshold.detach().float().to(w.device), persistent=False)
        self.rotation: torch.Tensor | None
        self.register_buffer("rotation", None if rotation is None else rotation.detach().to(w.device, w.dtype),
                             persistent=False)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.rotation is None:
            return self.inner(self._keep(x, x.abs() > self.threshold), *args, **kwargs)
        z = x @ self.rotation
        return self.inner(self._keep(z, z.abs() > self.threshold) @ self.rotation.T, *args, **kwargs)


class TopKLinear(_Masked):
    """``inner(x)`` keeping only the ``k`` largest ``|x_i|`` of each token."""

    def __init__(self, inner: nn.Module, k: int, entry_key: str = "") -> None:
        super().__init__(inner, entry_key)
        self.k = int(k)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        idx = x.abs().topk(min(self.k, x.shape[-1]), dim=-1).indices  # [..., k]
        keep = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, idx, True)
        return self.inner(self._keep(x, keep), *args, **kwargs)


class MaskedAct(_Masked):
    """``act(g)`` with neuron ``i`` zeroed where ``|act(g)_i| <= threshold_i`` (CATS, CHESS)."""

    def __init__(self, inner: nn.Module, threshold: torch.Tensor, device: torch.device, entry_key: str = "") -> None:
        super().__init__(inner, entry_key)
        self.register_buffer("threshold", threshold.detach().float().to(device), persistent=False)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        a = self.inner(g)
        return self._keep(a, a.abs() > self.threshold)


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def masked_modules(model: nn.Module) -> list[tuple[str, _Masked]]:
    """``(path, wrapper)`` for every masking wrapper installed in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _Masked)]


def _width(model: nn.Module, e: PlanEntry) -> int:
    return linear_weight(model.get_submodule(e.consumers[-1])).shape[1]


def _has_kernels(model: nn.Module) -> bool:
    swap = sys.modules.get("actlab.kernels.swap")
    return swap is not None and bool(swap.kernel_modules(model))


def check_plan(model: nn.Module, plan: SparsityPlan, kernels: bool = False) -> None:
    """Everything ``apply_`` needs, checked before touching the model.

    Raises:
        PlanError: the model already has masks, the plan was made for another model, or an entry's modules
            or threshold shapes do not fit.
    """
    if masked_modules(model) or _has_kernels(model):
        raise PlanError("the model already has a sparsity plan applied: call actlab.remove_(model) first")
    why = fingerprint_mismatch(plan.model, model_fingerprint(model))
    if why is not None:
        raise PlanError(f"the plan does not fit this model: {why}")
    for e in plan.entries:
        for path in e.modules + e.consumers:
            try:
                module = model.get_submodule(path)
            except AttributeError as err:
                raise PlanError(f"plan entry {e.key}: module {path} not found in the model") from err
            if path in e.consumers and not hasattr(module, "weight"):
                raise PlanError(f"plan entry {e.key}: {path} is not a linear layer")
        width = _width(model, e)
        if e.rotation is not None and kernels:
            raise PlanError(f"plan entry {e.key} is rotated: rotated plans run on the masking path; apply it "
                            "with kernels=False (actlab bench/optimize need an unrotated plan)")
        if e.rotation is not None and e.rotation.shape[0] != width:
            raise PlanError(f"plan entry {e.key}: rotation is {e.rotation.shape[0]} wide, the layer {width}")
        if e.kind != "topk" and e.threshold.dim() == 1 and e.threshold.numel() != width:
            raise PlanError(f"plan entry {e.key}: threshold has {e.threshold.numel()} channels, the layer {width}")


def apply_(model: nn.Module, plan: SparsityPlan, kernels: bool = False) -> nn.Module:
    """Install ``plan``'s masks in ``model`` (in place; returns it). Nothing is applied if a check fails.

    Args:
        model: the model the plan was made for.
        plan: a calibrated :class:`SparsityPlan`.
        kernels: swap in the sparse-input CPU kernel modules (``actlab.kernels``), which skip the
            weight rows of masked inputs and so decode faster; entries the kernels cannot take
            (top-k) stay on the masking path. Without the compiled kernels this still works, on
            the pure-PyTorch reference, with a warning.

    Example:
        >>> actlab.apply_(model, actlab.SparsityPlan.load("plans/teal50"))   # doctest: +SKIP
        >>> model.generate(ids, max_new_tokens=20)                           # doctest: +SKIP
    """
    check_plan(model, plan, kernels)
    entries = plan.entries
    if kernels:
        from actlab.kernels.swap import install_kernels

        entries = install_kernels(model, plan)
    for e in entries:
        for path in e.modules:
            inner = model.get_submodule(path)
            if e.kind == "input":
                wrapper: nn.Module = MaskedLinear(inner, e.threshold, e.key, e.rotation)
            elif e.kind == "topk":
                wrapper = TopKLinear(inner, int(e.threshold.item()), e.key)
            else:
                device = linear_weight(model.get_submodule(e.consumers[0])).device
                wrapper = MaskedAct(inner, e.threshold, device, e.key)
            _set_module(model, path, wrapper)
    return model


def remove_(model: nn.Module) -> nn.Module:
    """Put back every original module a plan replaced (in place; returns the model). Idempotent.

    Masking wrappers give back the very modules they hold; kernel modules rebuild bit-identical
    ``nn.Linear`` layers from their (transposed) weights.
    """
    for path, wrapper in masked_modules(model):
        _set_module(model, path, wrapper.inner)
    if "actlab.kernels.swap" in sys.modules:  # kernels can only be installed once this is imported
        sys.modules["actlab.kernels.swap"].remove_kernels(model)
    return model


@contextmanager
def dense_prefix(model: nn.Module, n: int) -> Iterator[None]:
    """Leave the first ``n`` positions of every sequence dense inside the block (TEAL's evaluation protocol)."""
    wrappers = [m for _, m in masked_modules(model)]
    for m in wrappers:
        m.dense_prefix = n
    try:
        yield
    finally:
        for m in wrappers:
            m.dense_prefix = 0


@contextmanager
def track_sparsity(model: nn.Module) -> Iterator[dict[str, float]]:
    """Measure the masks' sparsity while the block runs; the dict (path -> fraction dropped) fills on exit."""
    wrappers = masked_modules(model)
    for _, m in wrappers:
        m.track, m.dropped, m.seen = True, 0, 0
    result: dict[str, float] = {}
    try:
        yield result
    finally:
        for path, m in wrappers:
            m.track = False
            result[path] = m.dropped / m.seen if m.seen else 0.0
