"""Reach the Hugging Face model inside the wrappers that training stacks put around it.

Plans, sites and fingerprints name modules by their path in the Hugging Face model
(``model.layers.3.mlp.down_proj``). Training stacks wrap that model: ``torch.compile`` in an
``OptimizedModule`` (``._orig_mod``), accelerate / torch.distributed in ``DistributedDataParallel``
or ``DataParallel`` (``.module``), PEFT in a ``PeftModel`` (``.base_model``) around a ``LoraModel``
(``.model``). :func:`unwrap` is the one place that sees through them, so the same plan and the same
site names work on the wrapped model. PEFT replaces a target linear *in place* by a LoRA layer
holding the original as ``base_layer``: the site's module path then points at the LoRA layer, so an
input mask reaches both the base and the LoRA branch; :func:`base_layer` gives the original linear.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.DataParallel(nn.Linear(2, 2))
    >>> inner, prefix = unwrap(net)
    >>> type(inner).__name__, prefix
    ('Linear', 'module')
"""

from __future__ import annotations

from torch import nn


def _is_compiled(m: nn.Module) -> bool:
    return type(m).__name__ == "OptimizedModule" and "_orig_mod" in m._modules


def _is_data_parallel(m: nn.Module) -> bool:
    return isinstance(m, (nn.DataParallel, nn.parallel.DistributedDataParallel))


def _is_peft(m: nn.Module) -> bool:
    # no import of peft: it is an optional extra, and a model built by it brings its module along
    return type(m).__module__.split(".", 1)[0] == "peft" and hasattr(m, "peft_config")


def _inner_attr(m: nn.Module) -> str | None:
    """The attribute holding the wrapped model, or None when ``m`` is not a known wrapper."""
    if _is_compiled(m):
        return "_orig_mod"
    if _is_data_parallel(m):
        return "module"
    if _is_peft(m):  # PeftModel -> LoraModel (or another tuner) -> the Hugging Face model
        for attr in ("base_model", "model"):
            if attr in m._modules:
                return attr
    return None


def unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """The model inside any ``torch.compile`` / DDP / DataParallel / PEFT wrappers, and its path in ``model``.

    Returns ``(model, "")`` for a model that is not wrapped. The prefix is the dotted path from the
    outermost module to the inner one (``base_model.model`` for a ``PeftModel``), i.e.
    ``model.get_submodule(prefix)`` is the inner model.

    Example:
        >>> unwrap(nn.Linear(2, 2))[1]
        ''
    """
    parts: list[str] = []
    while (attr := _inner_attr(model)) is not None:
        parts.append(attr)
        model = model._modules[attr]
    return model, ".".join(parts)


def is_compiled(model: nn.Module) -> bool:
    """Whether ``torch.compile`` runs ``model`` or part of it (hooks added later then need a reset).

    True for an ``OptimizedModule`` anywhere among the wrappers, and for a model any of whose modules
    was compiled in place (``module.compile()``).

    Example:
        >>> is_compiled(nn.Linear(2, 2))
        False
    """
    while True:
        if _is_compiled(model):
            return True
        attr = _inner_attr(model)
        if attr is None:
            return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())
        model = model._modules[attr]


def base_layer(module: nn.Module) -> nn.Module:
    """The original layer inside a PEFT tuner layer (LoRA ``Linear`` holds it as ``base_layer``), else ``module``.

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> base_layer(lin) is lin
        True
    """
    get = getattr(module, "get_base_layer", None)
    return get() if callable(get) else module
