"""LoRA through ``peft`` (or full fine-tuning) as a :class:`TrainConfig` says, and the merge at the end.

``peft`` is an optional extra (``pip install 'actlab[train]'``); full fine-tuning needs nothing beyond torch.
PEFT replaces each target linear in place by a LoRA layer that keeps the original as ``base_layer``, so
site hooks and applied plans (``actlab.models.wrappers``) keep working on the wrapped model.

Example:
    >>> from actlab.train.config import DenseConfig
    >>> model = wrap(model, DenseConfig(lora_r=8))   # doctest: +SKIP
    >>> model = merge(model)                         # doctest: +SKIP
"""

from __future__ import annotations

from torch import nn

from actlab.functions.swaps import refresh_swap
from actlab.models.wrappers import _is_peft, unwrap
from actlab.train.config import TrainConfig
from actlab.train.errors import TrainError


def _peft():
    try:
        import peft
    except ImportError as e:
        raise TrainError("LoRA training needs peft: pip install 'actlab[train]' (or use adapter='full')") from e
    return peft


def wrap(model: nn.Module, config: TrainConfig) -> nn.Module:
    """The module to train: a PEFT LoRA model on ``config.lora_targets``, or ``model`` fully unfrozen."""
    if config.adapter == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    peft = _peft()
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in config.lora_targets if t not in names]
    if missing:
        raise TrainError(f"LoRA targets {missing} are not linear modules of this model; "
                         f"its linears are named {sorted(names)}")
    lora = peft.LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                           target_modules=list(config.lora_targets), bias="none")
    wrapped = peft.get_peft_model(model, lora)
    refresh_swap(wrapped)  # an activation swap's input ReLUs move onto the LoRA layers (both branches)
    return wrapped


def merge(model: nn.Module) -> nn.Module:
    """The plain Hugging Face model: LoRA weights merged in and the PEFT wrapper removed; others unchanged."""
    if _is_peft(model) and hasattr(model, "merge_and_unload"):
        merged = model.merge_and_unload()
        for p in merged.parameters():
            p.requires_grad_(False)
        refresh_swap(merged)  # back onto the merged linears
        return merged
    inner, _ = unwrap(model)
    for p in inner.parameters():
        p.requires_grad_(False)
    return inner
