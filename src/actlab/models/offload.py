"""Models larger than memory: accelerate's offloaded weights, read where actlab needs them.

A model loaded with ``load_model(path, device_map="disk")`` keeps its decoder layers' weights in the
safetensors files (read in place; nothing is copied) and its parameters on the ``meta`` device; accelerate's
hooks load a module's weights for its forward and drop them after. Two things need more than that:

* code that reads weights outside a forward (the plan's fingerprint, WINA's column norms, CETT's ``W_down``):
  :func:`tensor_of` returns the real tensor, loaded from the offload store;
* the layer-by-layer calibration pass, which runs one layer on every calibration batch: :func:`onloaded`
  keeps that layer's weights in memory for the whole loop instead of reloading them per batch.

Example:
    >>> model, tok = load_model("/tmp/llama", device_map="disk")           # doctest: +SKIP
    >>> layer = model.model.layers[3]                                       # doctest: +SKIP
    >>> with onloaded(layer):                                            # doctest: +SKIP
    ...     out = layer(hidden, **kwargs)                                # weights read once, dropped after
    >>> tensor_of(layer.mlp.down_proj, "weight").shape                    # doctest: +SKIP
    torch.Size([2048, 8192])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def _offload_hook(module: nn.Module):
    """The module's accelerate hook if it offloads the module's own tensors, else ``None``."""
    try:
        from accelerate.utils import has_offloaded_params
    except ImportError:  # accelerate absent: nothing can be offloaded
        return None
    return module._hf_hook if has_offloaded_params(module) else None


def is_offloaded(model: nn.Module) -> bool:
    """Whether any module of ``model`` keeps its weights off-memory (accelerate CPU/disk offload).

    Example:
        >>> is_offloaded(torch.nn.Linear(2, 2))
        False
    """
    return any(_offload_hook(m) is not None for m in model.modules())


def tensor_of(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """``module``'s own parameter or buffer ``name``, loaded from the offload store when it is on ``meta``.

    Raises:
        ValueError: the tensor is on ``meta`` and no offload hook can load it (an empty-weights skeleton).

    Example:
        >>> tensor_of(torch.nn.Linear(3, 2)).shape
        torch.Size([2, 3])
    """
    t = getattr(module, name)
    if t is None or not t.is_meta:
        return t
    hook = _offload_hook(module)
    if hook is None or hook.weights_map is None:
        raise ValueError(
            f"{type(module).__name__}.{name} is on the meta device and nothing can load it: load the model "
            "with actlab.load_model(path, device_map=...) so accelerate knows where its weights are"
        )
    return hook.weights_map[name]


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: its offload hook's device, else that of its first real parameter.

    Example:
        >>> execution_device(torch.nn.Linear(2, 2))
        device(type='cpu')
    """
    for m in module.modules():
        hook = getattr(m, "_hf_hook", None)
        if getattr(hook, "execution_device", None) is not None:
            return torch.device(hook.execution_device)
        for p in m.parameters(recurse=False):
            if not p.is_meta:
                return p.device
    return torch.device("cpu")


@contextmanager
def onloaded(module: nn.Module) -> Iterator[nn.Module]:
    """Keep every offloaded weight under ``module`` in memory until the block exits, then drop it again.

    Inside, accelerate's hooks still move inputs to the execution device but no longer reload the weights
    at each forward (they would read them from disk once per batch). A module with nothing offloaded passes
    through untouched.

    Raises:
        ValueError: a weight under ``module`` is on ``meta`` with nothing to load it.

    Example:
        >>> with onloaded(torch.nn.Linear(2, 2)) as m:
        ...     m.weight.is_meta
        False
    """
    hooked = [(m, h) for m in module.modules() if (h := _offload_hook(m)) is not None]
    done = []
    try:
        for m, h in hooked:
            h.pre_forward(m)  # loads the module's tensors from its weights_map onto the execution device
            h.offload = False  # while False, the hook neither reloads nor drops them around each forward
            done.append((m, h))
        for name, p in module.named_parameters():
            if p.is_meta:
                raise ValueError(f"{name} is on the meta device and nothing can load it: load the model with "
                                 "actlab.load_model(path, device_map=...)")
        yield module
    finally:
        for m, h in done:
            h.offload = True
            h.post_forward(m, None)  # back to meta: the memory is freed
