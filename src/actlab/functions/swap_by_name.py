"""Swap any function of the table into a model's MLPs by name: ``swap_activation_(model, "relu2")``.

Where the function goes, in a gated MLP ``down(act(gate) * up)``:

=========  =====================================  ==========================================
``where``  what the MLP computes                   modules
=========  =====================================  ==========================================
``gate``   ``f(gate) * up``                        the act module becomes ``f``'s module
``up``     ``act(gate) * f(up)``                   ``f`` on the up projection's output
``both``   ``f(gate) * f(up)`` (dReLU for relu)    both
=========  =====================================  ==========================================

An ungated MLP (``down(act(up))``) takes ``gate`` only: its act module. The default is ``gate``, except for
entries that say otherwise (``drelu`` is ``both``). ``f`` on ``up`` is a module of its own, the MLP's child
``actlab_up_act`` (so learnable coefficients are parameters of the model and save with it), applied by a
forward hook on the up projection (its second half where gate and up are one fused linear, phi3). Like the
ReLU swaps' input hooks (:mod:`actlab.functions.swaps`) the hook is part of the model: one hook class, found
and re-registered by :func:`~actlab.functions.swaps.refresh_swap` after LoRA wraps or merges the linears.

The swap is recorded in ``config.actlab_swap`` as ``{"function", "params", "where"}``; ``hidden_act``
becomes the name transformers knows (``ACT2FN``) where one computes exactly this (``gate`` only, default
parameters, not learnable) and stays as it was otherwise. ``actlab.load_model(dir)`` re-applies the record
and loads learnable coefficients (PAU, SAU, PReLU, xIELU) from the checkpoint's safetensors.

Example:
    >>> import actlab
    >>> model, _ = actlab.load_model("random:tiny-llama")
    >>> swap_activation_(model, "pau", init="gelu")["where"]
    'gate'
    >>> type(model.model.layers[0].mlp.act_fn).__name__
    'PAU'
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from actlab.functions.swaps import (
    CONFIG_KEY,
    SwapError,
    _act_key,
    _act_paths,
    _inner,
    _set,
    refresh_swap,
    swap_record,
)
from actlab.functions.table import ActivationFunction, get_function

WHERE = ("gate", "up", "both")
#: the MLP's child holding f for the up projection
UP_NAME = "actlab_up_act"


class UpActivation:
    """Forward hook on an up projection: ``f`` (the MLP's ``actlab_up_act``) on its output, or on the second
    half of it where the linear is gate and up fused. One class, so a refresh finds every copy."""

    def __init__(self, owner: nn.Module, fused: bool) -> None:
        self.owner = owner
        self.fused = fused

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        act = getattr(self.owner, UP_NAME)
        if not self.fused:
            return act(output)
        gate, up = output.chunk(2, dim=-1)  # [.., 2 * d_ff] -> gate, up: the order the MLP splits them in
        return torch.cat([gate, act(up)], dim=-1)


def _mlp_path(act_path: str) -> str:
    return act_path.rpartition(".")[0]


def _up_path(model: nn.Module, layer: int) -> str:
    from actlab.models.adapters import get_adapter

    ad = get_adapter(model)
    return f"{ad.layers}.{layer}.{ad.mlp_in[0] if ad.fused_gate_up else ad.mlp_in[1]}"


def up_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of every ``actlab_up_act`` in the (unwrapped) model, by layer."""
    inner = _inner(model)
    return [(f"{_mlp_path(p)}.{UP_NAME}", getattr(inner.get_submodule(_mlp_path(p)), UP_NAME))
            for p in _act_paths(inner) if hasattr(inner.get_submodule(_mlp_path(p)), UP_NAME)]


def register_up_hooks(model: nn.Module) -> None:
    """Register the up hooks of the recorded swap on the modules now at the up projections' paths (the
    caller has dropped stale ones); drop ``actlab_up_act`` children a record without ``up`` left behind."""
    from actlab.models.adapters import get_adapter

    record = swap_record(model) or {}
    wants = record.get("function") is not None and record.get("where") in ("up", "both")
    ad = get_adapter(model)
    for i, p in enumerate(_act_paths(model)):
        mlp = model.get_submodule(_mlp_path(p))
        if not wants:
            if hasattr(mlp, UP_NAME):
                delattr(mlp, UP_NAME)
            continue
        if not hasattr(mlp, UP_NAME):
            raise SwapError(f"the swap record puts {record['function']} on the up projection but {_mlp_path(p)} "
                            f"has no {UP_NAME}: re-apply the swap with swap_activation_")
        model.get_submodule(_up_path(model, i)).register_forward_hook(UpActivation(mlp, ad.fused_gate_up))


def drop_up_hooks(model: nn.Module) -> None:
    """Remove every :class:`UpActivation` hook (refresh registers the record's again)."""
    for m in model.modules():
        for k in [k for k, h in m._forward_hooks.items() if isinstance(h, UpActivation)]:
            del m._forward_hooks[k]


def _transformers_name(entry: ActivationFunction, params: dict[str, Any], where: str) -> str | None:
    """The ``ACT2FN`` name computing exactly this swap, else None."""
    if where != "gate" or entry.properties.get("learnable") or params != dict(entry.parameters):
        return None
    try:
        from transformers.activations import ACT2CLS, ACT2FN
    except ImportError:
        return None
    from actlab.functions.table import lookup_module

    return next((n for n in entry.names if n in ACT2CLS and lookup_module(ACT2FN[n]) is entry), None)


def check_swap_by_name(name: str, where: str | None = None, **params: Any) -> tuple[ActivationFunction, str, dict]:
    """Validate a swap before any model is touched; returns ``(entry, where, resolved parameters)``.

    Raises:
        UnknownActivationError: a name the table does not know (the message lists them).
        ActivationParameterError: a parameter the function does not have, or a bad value.
        SwapError: ``where`` not one of gate, up, both.
    """
    entry = get_function(name)
    where = where if where is not None else entry.properties.get("where", "gate")
    if where not in WHERE:
        raise SwapError(f"where must be one of {', '.join(WHERE)}, got {where!r}")
    return entry, where, entry.resolve(**params)


def swap_activation_(model: nn.Module, name: str, where: str | None = None, **params: Any) -> dict[str, Any]:
    """Put the table's function ``name`` (at ``params``) into every MLP of ``model``, in place.

    Args:
        model: a model in the adapter table, possibly inside PEFT / DDP / compile wrappers.
        name: any name or alias of :mod:`actlab.functions` (``relu2``, ``pau``, ``xielu``...).
        where: ``gate``, ``up`` or ``both`` (see the module docstring); default ``gate`` (``both`` for drelu).
        **params: the function's parameters (``threshold=0.1``, ``init="gelu"``...); defaults for the rest.

    Returns:
        ``{"function", "params", "where", "hidden_act", "layers"}``; the first three are the config's record.

    Raises:
        UnknownActivationError, ActivationParameterError, SwapError: bad arguments, ``up``/``both`` on an
            ungated MLP, ``up`` over another recorded swap, or a model without act modules.

    Example:
        >>> swap_activation_(model, "relu2")["hidden_act"]                  # doctest: +SKIP
        'relu2'
        >>> swap_activation_(model, "snake", where="both", alpha=0.5)      # doctest: +SKIP
    """
    entry, where, resolved = check_swap_by_name(name, where, **params)
    return _swap(model, entry, where, resolved, reapply=False)


def _swap(model: nn.Module, entry: ActivationFunction, where: str, resolved: dict, reapply: bool) -> dict[str, Any]:
    from actlab.models.adapters import get_adapter

    inner = _inner(model)
    ad = get_adapter(inner)
    if where != "gate" and not ad.gated:
        raise SwapError(f"where={where!r} needs a gated MLP (gate and up); {inner.config.model_type} has none: "
                        "use where='gate'")
    previous = swap_record(inner)
    if where == "up" and previous is not None and not reapply:
        raise SwapError(f"the model already carries a swap ({previous}); where='up' keeps the gate's activation, "
                        "which the record could not restore: swap on the original model")
    paths = _act_paths(inner)
    gate = [entry.module(**resolved) for _ in paths] if where in ("gate", "both") else None
    up = [entry.module(**resolved) for _ in paths] if where in ("up", "both") else None
    device = next(inner.parameters()).device
    for i, p in enumerate(paths):
        if gate is not None:
            _set(inner, p, gate[i].to(device))
        mlp = inner.get_submodule(_mlp_path(p))
        if up is not None:
            setattr(mlp, UP_NAME, up[i].to(device))
        elif hasattr(mlp, UP_NAME):
            delattr(mlp, UP_NAME)
    record = {"function": entry.name, "params": dict(resolved), "where": where}
    hidden = _transformers_name(entry, resolved, where)
    config = inner.config
    if hidden is not None:
        setattr(config, _act_key(config), hidden)
    setattr(config, CONFIG_KEY, dict(record))
    refresh_swap(inner)
    return {**record, "hidden_act": getattr(config, _act_key(config), None), "layers": len(paths)}


class _SwapKeysReport(logging.Filter):
    """Drops transformers' load report when every key it lists is an UNEXPECTED parameter of a swapped activation
    (``act_fn.*`` or ``actlab_up_act.*``): transformers loads before actlab re-applies the swap, which then
    reads those tensors from the checkpoint itself. Any other key keeps the whole report."""

    _KEY = re.compile(rf"\.mlp\.(act_fn|{UP_NAME})\.")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "LOAD REPORT" not in msg:
            return True
        rows = [[c.strip() for c in line.split("|")] for line in msg.splitlines() if line.count("|") >= 1]
        keys = [r for r in rows[1:] if len(r) >= 2 and r[1] and not set(r[0]) <= {"-", "+"}]
        return not keys or not all(r[1] == "UNEXPECTED" and self._KEY.search(r[0]) for r in keys)


@contextmanager
def quiet_swap_keys(config: Any) -> Iterator[None]:
    """While a model whose ``config`` records a swap by name loads, leave out transformers' report of the swapped
    activations' own parameters as unexpected keys (only those; see :class:`_SwapKeysReport`)."""
    record = getattr(config, CONFIG_KEY, None)
    if not isinstance(record, dict) or "function" not in record:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("transformers.modeling_utils", "transformers.utils.loading_report")]
    f = _SwapKeysReport()
    for lg in loggers:
        lg.addFilter(f)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(f)


def _swapped_state_keys(model: nn.Module) -> dict[str, Tensor]:
    """State of the swapped modules (gate act modules, up modules) by their keys in the model's state dict."""
    record = swap_record(model) or {}
    where = record.get("where")
    out: dict[str, Tensor] = {}
    prefixes = []
    if where in ("gate", "both"):
        prefixes += _act_paths(model)
    if where in ("up", "both"):
        prefixes += [p for p, _ in up_modules(model)]
    for prefix in prefixes:
        for k, v in model.get_submodule(prefix).state_dict().items():
            out[f"{prefix}.{k}"] = v
    return out


def _checkpoint_tensors(directory: Path, keys: set[str]) -> dict[str, Tensor]:
    from safetensors import safe_open

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({weight_map[k] for k in keys if k in weight_map})
    else:
        files = [p.name for p in sorted(directory.glob("*.safetensors"))]
    found: dict[str, Tensor] = {}
    for name in files:
        with safe_open(str(directory / name), framework="pt") as f:
            for k in keys & set(f.keys()):
                found[k] = f.get_tensor(k)
    return found


def apply_record(model: nn.Module, record: dict[str, Any], checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Re-apply a recorded swap by name (what ``actlab.load_model`` does), then load its learnable state from
    ``checkpoint`` (default: the directory the model was loaded from).

    Raises:
        SwapError: a record this version cannot apply, or learnable state the checkpoint does not hold.
    """
    extra = sorted(set(record) - {"function", "params", "where"})
    if extra or not isinstance(record.get("params", {}), dict):
        raise SwapError(f"config.{CONFIG_KEY} = {record} is not an activation swap this actlab can apply")
    entry, where, resolved = check_swap_by_name(record["function"], record.get("where"), **record.get("params", {}))
    info = _swap(model, entry, where, resolved, reapply=True)
    inner = _inner(model)
    state = _swapped_state_keys(inner)
    if not state:
        return info
    source = Path(checkpoint) if checkpoint is not None else Path(str(getattr(inner.config, "_name_or_path", "")))
    found = _checkpoint_tensors(source, set(state)) if source.is_dir() and str(source) not in ("", ".") else {}
    missing = sorted(set(state) - set(found))
    if missing:
        raise SwapError(f"the swap to {entry.name} has learnable state the checkpoint {source} does not hold "
                        f"({missing[0]}{' ...' if len(missing) > 1 else ''}): save the model with save_pretrained "
                        "after the swap")
    with torch.no_grad():
        for k, v in found.items():
            state[k].copy_(v)
    return info


__all__ = [
    "UP_NAME",
    "WHERE",
    "UpActivation",
    "apply_record",
    "check_swap_by_name",
    "drop_up_hooks",
    "register_up_hooks",
    "swap_activation_",
    "up_modules",
]
