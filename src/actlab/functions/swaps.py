"""Activation swaps (ReLU-fication): put a ReLU-family activation into a model's MLPs, recorded so it reloads.

Every swap draws its function from the one activation table (:mod:`actlab.functions.table`) and finds its
modules through the adapter table (:mod:`actlab.models.adapters`), so it works on every architecture there:

===========  =====================================================  ============================
kind         what the MLP computes                                  saved ``hidden_act``
===========  =====================================================  ============================
``relu``     ``relu(gate) * up``                                    ``relu``
``fatrelu``  ``fatrelu_θ(gate) * up`` (keep x >= θ, ProSparse)       ``relu`` (+ θ in the record)
``relu2``    ``relu(gate)² * up`` (ReLU² Wins)                      ``relu2``
``drelu``    ``relu(gate) * relu(up)`` (Turbo Sparse's dReLU)       ``relu`` (+ the record)
===========  =====================================================  ============================

Any other function of the table, on the gate, the up projection or both, is
:func:`actlab.functions.swap_by_name.swap_activation_`; its record is a different shape, re-applied here too.

``relu_after_norms`` (ReLU Strikes Back, stage 2) adds a ReLU on the outputs of the norms before attention
and MLP, i.e. on the canonical input sites ``attn.qkv_in`` and ``mlp.gate_up_in`` (``mlp.in``).

The act module is replaced by the table's module. dReLU's ReLU on ``up`` is applied where the down
projection reads it: ``relu(gate) * relu(up) == relu(relu(gate) * up)`` exactly (``relu(gate) >= 0``), so it
is a ReLU on the ``mlp.down_in`` site and needs no knowledge of how gate and up are laid out (phi3 fuses
them). These ReLUs on inputs are forward pre-hooks on the modules at the sites' paths. They are part of the
model, not scoped hooks: one module-level function, so copies of the model keep them and
:func:`refresh_swap` finds and re-registers them after something replaced the modules (PEFT's LoRA wrap and
merge, which ``actlab.train.lora`` follow with a refresh). The fused kernels leave hooked linears on the
masking path, so an applied plan never drops them.

A swap is recorded in the config (``config.actlab_swap``) with ``hidden_act`` set to the nearest name
transformers knows; ``actlab.load_model(dir)`` re-applies the record, so a saved swapped model comes back
computing exactly what was saved.

Example:
    >>> import actlab
    >>> model, _ = actlab.load_model("random:tiny-llama")
    >>> swap_activation(model, "drelu")["hidden_act"]
    'relu'
    >>> type(model.model.layers[0].mlp.act_fn).__name__
    'ReLU'
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import nn

from actlab.errors import ActlabError
from actlab.functions.table import ActivationFunction, get_function

#: swap kind -> the table entry the MLP's act module becomes
SWAP_KINDS: dict[str, str] = {"relu": "relu", "fatrelu": "fatrelu", "relu2": "relu2", "drelu": "relu"}
#: swap kind -> the ``hidden_act`` written to the config: the name transformers knows (``ACT2FN``) closest
#: to it; the exact swap is the record, which :func:`apply_recorded_swap` re-applies.
HIDDEN_ACT: dict[str, str] = {"relu": "relu", "fatrelu": "relu", "relu2": "relu2", "drelu": "relu"}
#: the config attribute holding the record
CONFIG_KEY = "actlab_swap"


class SwapError(ActlabError):
    """An activation swap that does not fit the model or is asked with invalid parameters."""


def check_swap(kind: str, theta: float = 0.0, relu_after_norms: bool = False) -> None:
    """Validate a swap's parameters (before any model is touched).

    Raises:
        SwapError: unknown kind (the message names the choices), a θ that is not a finite number >= 0, or a θ
            given for a kind other than ``fatrelu``.
    """
    if kind not in SWAP_KINDS:
        raise SwapError(f"unknown activation swap {kind!r}; choose one of {', '.join(SWAP_KINDS)}")
    if not isinstance(theta, (int, float)) or isinstance(theta, bool) or not math.isfinite(theta) or theta < 0:
        raise SwapError(f"theta must be a finite number >= 0, got {theta!r}")
    if theta != 0 and kind != "fatrelu":
        raise SwapError(f"theta={theta} is FATReLU's threshold; use activation 'fatrelu' (got {kind!r})")
    if not isinstance(relu_after_norms, bool):
        raise SwapError(f"relu_after_norms must be true or false, got {relu_after_norms!r}")


def _inner(model: nn.Module) -> nn.Module:
    from actlab.models.wrappers import unwrap

    return unwrap(model)[0]


def _act_paths(model: nn.Module) -> list[str]:
    from actlab.models.adapters import get_adapter

    ad = get_adapter(model)
    try:
        n = len(model.get_submodule(ad.layers))
    except AttributeError as e:
        raise SwapError(f"layer list {ad.layers!r} not found in {type(model).__name__}") from e
    paths = [f"{ad.layers}.{i}.{ad.act}" for i in range(n)]
    for p in paths:
        try:
            model.get_submodule(p)
        except AttributeError as e:
            raise SwapError(f"the MLP activation module {p!r} is missing: this model does not compute its "
                            "activation in a module, so it cannot be swapped") from e
    return paths


def make_module(entry: ActivationFunction, theta: float = 0.0) -> nn.Module:
    """A fresh module computing ``entry`` (its first module class), with ``threshold=theta`` if it has one.

    Example:
        >>> make_module(get_function("relu2")).__class__.__name__
        'ReLUSquaredActivation'
    """
    match = entry.modules[0]
    module_path, _, cls_name = match.cls.rpartition(".")
    kwargs = dict(match.attrs)
    if "threshold" in entry.properties.get("parameters", ()):
        kwargs["threshold"] = theta
    return getattr(importlib.import_module(module_path), cls_name)(**kwargs)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _relu_input(module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """Forward pre-hook: ReLU on the module's input. One function, so a refresh can find every copy of it."""
    if args:
        return (F.relu(args[0]), *args[1:]), kwargs
    key = next(iter(kwargs))
    return args, {**kwargs, key: F.relu(kwargs[key])}


def _hooked_paths(model: nn.Module, record: dict[str, Any]) -> list[str]:
    """Module paths (in the unwrapped model) whose input the record's ReLUs act on."""
    from actlab.activations.sites import resolve_sites
    from actlab.models.adapters import get_adapter

    kinds = []
    if record.get("activation") == "drelu":
        kinds.append("mlp.down_in")
    if record.get("relu_after_norms"):
        kinds += ["attn.qkv_in", "mlp.gate_up_in" if get_adapter(model).gated else "mlp.in"]
    if not kinds:
        return []
    return [p for site in resolve_sites(model, kinds).values() for p in site.module_paths]


def _drop_hooks(model: nn.Module) -> None:
    from actlab.functions.swap_by_name import drop_up_hooks

    for m in model.modules():
        stale = [k for k, h in m._forward_pre_hooks.items() if h is _relu_input]
        for k in stale:
            del m._forward_pre_hooks[k]
            m._forward_pre_hooks_with_kwargs.pop(k, None)
    drop_up_hooks(model)


def refresh_swap(model: nn.Module) -> None:
    """Re-register the recorded swap's input ReLUs on the modules now at their paths (idempotent).

    Call it after replacing modules the hooks live on (LoRA wrap and merge do): a hook left on a PEFT
    ``base_layer`` would miss the LoRA branch. Without a record (or with no hook part) it only removes
    stale hooks.

    Example:
        >>> model = peft.get_peft_model(model, lora_config)   # doctest: +SKIP
        >>> refresh_swap(model)                               # doctest: +SKIP
    """
    from actlab.functions.swap_by_name import register_up_hooks

    inner = _inner(model)
    _drop_hooks(inner)
    register_up_hooks(inner)  # a swap by name's f(up) (swap_by_name); without one, drops stale up modules
    record = swap_record(inner)
    if record is None:
        return
    for path in _hooked_paths(inner, record):
        inner.get_submodule(path).register_forward_pre_hook(_relu_input, with_kwargs=True)


def swap_record(model: nn.Module) -> dict[str, Any] | None:
    """The swap recorded in the model's config (``config.actlab_swap``), or ``None``."""
    record = getattr(getattr(_inner(model), "config", None), CONFIG_KEY, None)
    return dict(record) if isinstance(record, dict) else None


def _act_key(config: Any) -> str:
    from actlab.models.adapters import get_adapter

    keys = get_adapter(config.model_type).act_config_keys
    return next((k for k in keys if isinstance(getattr(config, k, None), str)), keys[0])


def swap_activation(model: nn.Module, kind: str, *, theta: float = 0.0, relu_after_norms: bool = False
                    ) -> dict[str, Any]:
    """Swap every MLP activation of ``model`` to ``kind`` (see the module docstring); returns the swap's record.

    Args:
        model: a model in the adapter table, possibly inside PEFT / DDP / compile wrappers.
        kind: ``relu``, ``fatrelu``, ``relu2`` or ``drelu``.
        theta: FATReLU's threshold (``fatrelu`` only).
        relu_after_norms: also a ReLU on the norm outputs read by attention and the MLP.

    Returns:
        ``{"activation", "theta", "relu_after_norms", "hidden_act", "layers"}``; the first three are what the
        config records.

    Raises:
        SwapError: bad parameters, ``drelu`` on an MLP without a gate, or a model without act modules.

    Example:
        >>> swap_activation(model, "fatrelu", theta=0.01)["hidden_act"]   # doctest: +SKIP
        'relu'
    """
    from actlab.models.adapters import get_adapter

    check_swap(kind, theta, relu_after_norms)
    inner = _inner(model)
    ad = get_adapter(inner)
    if kind == "drelu" and not ad.gated:
        raise SwapError(f"drelu needs a gated MLP (gate and up); {inner.config.model_type} has none: "
                        "use relu, fatrelu or relu2")
    paths = _act_paths(inner)
    entry = get_function(SWAP_KINDS[kind])
    for p in paths:  # activation modules hold no tensors: nothing to move to a device
        _set(inner, p, make_module(entry, float(theta)))
    record = {"activation": kind, "theta": float(theta), "relu_after_norms": relu_after_norms}
    config = inner.config
    setattr(config, _act_key(config), HIDDEN_ACT[kind])
    setattr(config, CONFIG_KEY, dict(record))
    refresh_swap(inner)
    return {**record, "hidden_act": HIDDEN_ACT[kind], "layers": len(paths)}


def apply_recorded_swap(model: nn.Module) -> dict[str, Any] | None:
    """Re-apply the swap the config records (what ``actlab.load_model`` does); ``None`` without one.

    Raises:
        SwapError: the record is not one this version can apply.
    """
    record = swap_record(model)
    if record is None:
        return None
    if "function" in record:  # a swap by name (swap_by_name.swap_activation_)
        from actlab.functions.swap_by_name import apply_record

        return apply_record(model, record)
    extra = sorted(set(record) - {"activation", "theta", "relu_after_norms"})
    if extra or "activation" not in record:
        raise SwapError(f"config.{CONFIG_KEY} = {record} is not an activation swap this actlab can apply")
    return swap_activation(model, record["activation"], theta=record.get("theta", 0.0),
                           relu_after_norms=record.get("relu_after_norms", False))


@dataclass(frozen=True)
class ActivationState:
    """What :func:`activation_state` saved: the act modules, the record and the config's activation name."""

    modules: tuple[tuple[str, nn.Module], ...]
    record: dict[str, Any] | None
    act_key: str
    act_value: Any


def activation_state(model: nn.Module) -> ActivationState:
    """The model's current activation (modules and record), to come back to with :func:`restore_activation`."""
    from actlab.functions.swap_by_name import up_modules

    inner = _inner(model)
    key = _act_key(inner.config)
    modules = tuple((p, inner.get_submodule(p)) for p in _act_paths(inner)) + tuple(up_modules(inner))
    return ActivationState(modules, swap_record(inner), key, getattr(inner.config, key, None))


def restore_activation(model: nn.Module, state: ActivationState) -> None:
    """Put back the activation ``state`` saved (on the modules now at the paths: LoRA layers stay)."""
    from actlab.functions.swap_by_name import up_modules

    inner = _inner(model)
    for p, _ in up_modules(inner):  # the state's own up modules (if any) come back below
        delattr(inner.get_submodule(p.rpartition(".")[0]), p.rpartition(".")[2])
    for p, m in state.modules:
        _set(inner, p, m)
    setattr(inner.config, state.act_key, state.act_value)
    if state.record is None:
        if hasattr(inner.config, CONFIG_KEY):
            delattr(inner.config, CONFIG_KEY)
    else:
        setattr(inner.config, CONFIG_KEY, dict(state.record))
    refresh_swap(inner)


@contextmanager
def activation_as(model: nn.Module, state: ActivationState) -> Iterator[nn.Module]:
    """Run ``model`` with the activation of ``state`` inside the block, its own again after it (the teacher of a
    KL term: the original activation on the same weights).

    Example:
        >>> before = activation_state(model); swap_activation(model, "relu")   # doctest: +SKIP
        >>> with activation_as(model, before):                                 # doctest: +SKIP
        ...     original_logits = model(ids).logits
    """
    now = activation_state(model)
    restore_activation(model, state)
    try:
        yield model
    finally:
        restore_activation(model, now)


__all__ = [
    "CONFIG_KEY",
    "HIDDEN_ACT",
    "SWAP_KINDS",
    "ActivationState",
    "SwapError",
    "activation_as",
    "activation_state",
    "apply_recorded_swap",
    "check_swap",
    "make_module",
    "refresh_swap",
    "restore_activation",
    "swap_activation",
    "swap_record",
]
