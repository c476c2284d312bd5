"""Swap a sparsity plan's entries into a model as sparse-kernel modules, and back out.

This is the fast path of ``actlab.apply_(model, plan, kernels=True)``. Every entry of a plan is a
threshold on the input of a group of linears (or on ``|act(gate)|`` inside a gated MLP), which
is exactly what :class:`SparseLinear` and :class:`SparseGatedMLP` consume:

- an ``input`` entry over q/k/v (or gate/up) becomes **one** fused :class:`SparseLinear` on the
  concatenated weight. HF attention still calls ``q_proj(x)``, ``k_proj(x)``, ``v_proj(x)``
  one after another with the same tensor, so each projection's slot holds a small
  :class:`FusedMember` that runs the fused op on the first call and hands out its slice to the
  others (no modeling code is copied or patched);
- an ``input`` entry over one linear (o, down) becomes a :class:`SparseLinear`;
- an ``act`` entry (CATS, CHESS) replaces the whole MLP by a :class:`SparseGatedMLP`, folding in
  the layer's ``input`` entries for gate/up and down when there are any;
- ``topk`` entries (per-token, no threshold) and MLPs the fused kernel cannot take (phi3's fused
  gate_up, an activation the kernel does not compute) stay on the masking path, with a warning. The
  activation is the one the layer's act module actually runs, looked up by class in
  :mod:`actlab.functions`, never the config's ``hidden_act``: it may have been swapped since loading.

The original weights are dropped (only the kernel layout stays), so the model does not double
in memory; :func:`remove_kernels` rebuilds bit-identical ``nn.Linear`` layers.

Example:
    >>> plan = actlab.SparsityPlan.load("plans/teal50")          # doctest: +SKIP
    >>> actlab.apply_(model, plan, kernels=True)                 # doctest: +SKIP
    >>> actlab.remove_(model)                                    # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from actlab.functions.table import kernel_functions
from actlab.kernels.linear import SparseGatedMLP, SparseLinear
from actlab.kernels.ops import ActlabKernelWarning
from actlab.models.adapters import Adapter, act_function, get_adapter


class FusedMember(nn.Module):
    """One projection's view of a fused :class:`SparseLinear` shared by several projections.

    Member 0 owns the fused module (so its parameters are registered once); the others hold a
    plain reference. A member called with the very tensor the group saw last returns the cached
    slice instead of recomputing: q, k and v cost one kernel call together.
    """

    def __init__(self, group: _Group, index: int) -> None:
        super().__init__()
        self.index = index
        if index == 0:
            self.fused = group.fused
        object.__setattr__(self, "group", group)  # not a submodule: no duplicate parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.outputs(x)[self.index]

    def extra_repr(self) -> str:
        return f"member {self.index} of {len(self.group.paths)} ({', '.join(p.rsplit('.', 1)[-1] for p in self.group.paths)})"


class _Group:
    """The shared state of the members of one fused projection group."""

    def __init__(self, fused: SparseLinear, paths: list[str]) -> None:
        self.fused, self.paths = fused, paths
        self._x: torch.Tensor | None = None
        self._version = -1
        self._outs: tuple[torch.Tensor, ...] = ()

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # The same object at the same version is the same input: q, k, v of one forward.
        version = _version(x)
        if x is not self._x or version != self._version:
            self._outs = self.fused(x)
            self._x, self._version = x, version
        return self._outs

    def clear(self) -> None:
        self._x, self._outs = None, ()


def _version(x: torch.Tensor) -> int:
    # inference-mode tensors carry no version counter (and cannot be modified in place outside it)
    return 0 if x.is_inference() else x._version


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _warn(message: str) -> None:
    warnings.warn(message, ActlabKernelWarning, stacklevel=3)


def _is_plain_linear(module: nn.Module) -> bool:
    # a hooked linear (an activation swap's input ReLU, actlab.functions.swaps) would lose its hook in a kernel
    return isinstance(module, nn.Linear) and not module._forward_pre_hooks and not module._forward_hooks


def _kernel(entry: Any) -> str | None:
    """What an entry becomes here, from the one table of entry kinds (``actlab.sparsity.kinds``)."""
    from actlab.sparsity.kinds import entry_kind

    return entry_kind(entry.kind).kernel


def install_kernels(model: nn.Module, plan: Any, weights: str = "fp32") -> list[Any]:
    """Swap kernel modules in for ``plan``'s entries; returns the entries left for the masking path.

    The caller (``apply_``) has already checked that the plan fits the model. ``weights`` (``fp32``,
    ``bf16``, ``int8``, ``int4``) is the format of the linear kernels; with another format than fp32 the
    decoder linears no entry covers become dense kernels in that format too
    (:func:`actlab.kernels.quantize.quantize_linears_`), so the whole model reads one format. Gated-MLP
    kernels (``act`` entries) stay fp32, with a warning.
    """
    from actlab.kernels.quant import check_format

    check_format(weights)
    adapter = get_adapter(model)
    leftover: list[Any] = []
    by_layer: dict[int, list[Any]] = defaultdict(list)
    for e in plan.entries:
        by_layer[e.layer].append(e)
    for layer, entries in sorted(by_layer.items()):
        prefix = f"{adapter.layers}.{layer}"
        gate_up = tuple(f"{prefix}.{p}" for p in adapter.mlp_in)
        down = f"{prefix}.{adapter.down}"
        act_entries = [e for e in entries if _kernel(e) == "gated_mlp"]
        if act_entries and (adapter.fused_gate_up or not adapter.gated or len(gate_up) != 2):
            _warn(
                f"layer {layer}: the fused gated-MLP kernel needs separate gate and up projections; masking instead"
            )
            leftover += act_entries
            act_entries = []
        act = _kernel_act(model, layer, adapter) if act_entries else None
        if act_entries and act is None:
            leftover += act_entries
            act_entries = []
        if act_entries:
            mlp_entries = [e for e in entries if _kernel(e) == "linear" and set(e.consumers) <= {*gate_up, down}]
            if weights != "fp32":
                _warn(f"layer {layer}: the gated-MLP kernel reads fp32 weights only; its MLP stays fp32")
            if _mlp_kernel(model, act_entries[0], mlp_entries, gate_up, down, act):
                entries = [e for e in entries if e not in act_entries and e not in mlp_entries]
            else:
                leftover += act_entries
                entries = [e for e in entries if e not in act_entries]
        for e in entries:
            if _kernel(e) != "linear":
                leftover.append(e)
                continue
            layers = [model.get_submodule(p) for p in e.consumers]
            if not all(_is_plain_linear(m) for m in layers):
                _warn(f"{e.key}: the sparse kernel takes nn.Linear layers without hooks only (an activation swap "
                      "hooks some); masking instead")
                leftover.append(e)
                continue
            fused = SparseLinear.from_linear(layers if len(layers) > 1 else layers[0], e.threshold, weights)
            if len(layers) == 1:
                _set(model, e.consumers[0], fused)
                continue
            group = _Group(fused, list(e.consumers))
            for i, path in enumerate(e.consumers):
                _set(model, path, FusedMember(group, i))
    if weights != "fp32":
        from actlab.kernels.quantize import quantize_linears_

        leftover_paths = {p for e in leftover for p in e.consumers}
        quantize_linears_(model, weights, skip=leftover_paths)
    if any(_kernel(e) is None for e in leftover):
        _warn(
            "top-k entries select per token, not by threshold: they run on the masking path, not the kernels"
        )
    return leftover


def _kernel_act(model: nn.Module, layer: int, adapter: Adapter) -> int | None:
    """The C kernel's id of the activation layer ``layer`` actually runs (its act module, looked up in
    :mod:`actlab.functions`), or None with a warning: the fused MLP must never apply another function."""
    path = f"{adapter.layers}.{layer}.{adapter.act}"
    fn = act_function(model, layer, adapter)
    if fn is None:
        try:
            what = type(model.get_submodule(path)).__qualname__
        except AttributeError:
            what = "nothing"
        _warn(
            f"layer {layer}: {path} is {what}, not an activation in actlab.functions, so the fused "
            "gated-MLP kernel cannot compute it; masking instead"
        )
        return None
    if fn.kernel_id is None:
        supported = ", ".join(e.name for e in kernel_functions().values())
        _warn(
            f"layer {layer}: {path} runs {fn.name}; the fused gated-MLP kernel supports {supported} only; "
            "masking instead"
        )
        return None
    return fn.kernel_id


def _mlp_kernel(
    model: nn.Module, act_entry: Any, mlp_entries: list[Any], gate_up: tuple[str, ...], down: str, act: int
) -> bool:
    gate, up = (model.get_submodule(p) for p in gate_up)
    down_mod = model.get_submodule(down)
    if not all(_is_plain_linear(m) for m in (gate, up, down_mod)):
        return False
    t_in = next((e.threshold for e in mlp_entries if set(e.consumers) == set(gate_up)), None)
    t_down = next((e.threshold for e in mlp_entries if e.consumers == (down,)), None)
    if len(mlp_entries) > (t_in is not None) + (t_down is not None):
        return False  # gate and up with different input thresholds: not one fused MLP
    try:
        sparse = SparseGatedMLP.from_linears(
            gate, up, down_mod, act=act, t_act=act_entry.threshold, t_in=t_in, t_down=t_down
        )
    except ValueError as err:
        _warn(f"{act_entry.key}: {err}; masking instead")
        return False
    mlp_path = down.rpartition(".")[0]  # the module that owns gate, up, down and the act
    if any(p.rpartition(".")[0] != mlp_path for p in gate_up):
        return False
    shell = model.get_submodule(mlp_path)
    for p in (*gate_up, down):  # drop the dense weights: the kernel layout is the only copy
        _set(model, p, nn.Identity())
    object.__setattr__(
        sparse, "_actlab_shell", (shell, tuple(p.removeprefix(mlp_path + ".") for p in (*gate_up, down)))
    )
    _set(model, mlp_path, sparse)
    return True


def kernel_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of every kernel module installed in ``model``."""
    return [
        (n, m) for n, m in model.named_modules() if isinstance(m, (SparseLinear, SparseGatedMLP, FusedMember))
    ]


def remove_kernels(model: nn.Module) -> None:
    """Rebuild the original dense modules wherever kernels were installed: bit-identical weights for fp32
    kernels, the dequantized weights for bf16/int8/int4 ones (the originals are gone)."""
    groups: dict[int, tuple[_Group, list[str]]] = {}
    for path, module in kernel_modules(model):
        if isinstance(module, FusedMember):
            groups.setdefault(id(module.group), (module.group, []))[1].append(path)
        elif isinstance(module, SparseGatedMLP):
            shell, rel = module.__dict__["_actlab_shell"]
            for p, lin in zip(rel, module.to_linears(), strict=True):
                _set(shell, p, lin)
            _set(model, path, shell)
        elif isinstance(module, SparseLinear) and not _inside_member(path, model):
            _set(model, path, module.to_linear())
    for group, _ in groups.values():
        for p, lin in zip(group.paths, group.fused.to_linear(), strict=True):
            _set(model, p, lin)
        group.clear()


def _inside_member(path: str, model: nn.Module) -> bool:
    parent = path.rpartition(".")[0]
    return bool(parent) and isinstance(model.get_submodule(parent), FusedMember)
