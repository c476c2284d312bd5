"""Architecture adapters: one table mapping ``config.model_type`` to module paths.

Every feature of actlab addresses activations by *canonical site names*
(``layers.{i}.attn.qkv_in``, ``layers.{i}.mlp.down_in``, ...). This table is the only
place that knows where those tensors live in each Hugging Face architecture. Adding
an architecture is one entry here, never a copy of modeling code.

Example:
    >>> from actlab.models.adapters import get_adapter
    >>> get_adapter("llama").down
    'mlp.down_proj'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from actlab.functions.table import ActivationFunction, UnknownActivationError, get_function, lookup_module
from actlab.models.offload import tensor_of
from actlab.models.wrappers import base_layer, unwrap


class UnknownArchitectureError(ValueError):
    """The model's ``config.model_type`` has no entry in :data:`ADAPTERS`."""


@dataclass(frozen=True)
class Adapter:
    """Where the canonical sites of one architecture live.

    Paths of the per-layer entries are relative to one decoder (or encoder) layer.

    Attributes:
        layers: path of the ``ModuleList`` of layers, from the model root.
        qkv: linear(s) that read the attention input (``attn.qkv_in``); one fused or q, k, v.
        o: linear that reads the attention output (``attn.o_in``).
        mlp_in: linear(s) that read the MLP input: gate and up (``mlp.gate_up_in``), or the
            single up projection of an ungated MLP (``mlp.in``).
        act: module whose output is the activation (``mlp.act_out``).
        down: linear that reads the MLP hidden state (``mlp.down_in``).
        gated: whether the MLP is gated (``down_in = act(gate) * up``).
        fused_gate_up: ``mlp_in`` is one linear producing ``[gate, up]`` concatenated (phi3).
        encoder: bidirectional encoder (loaded with a masked-LM head, not a causal one).
        act_config_keys: config attributes naming the activation function, first found wins.
        final_norm: path(s) from the root of the norm applied to the last layer's output before the LM
            head; the first the model has wins; empty where there is none (post-norm BERT).
        embed: path(s) of the token embedding (``[vocab, d_model]``).
        lm_head: path(s) of the linear producing the logits (``[vocab, d_model]``); GPT-NeoX names it
            ``embed_out`` before transformers 5.
    """

    layers: str
    qkv: tuple[str, ...]
    o: str
    mlp_in: tuple[str, ...]
    act: str
    down: str
    gated: bool
    fused_gate_up: bool = False
    encoder: bool = False
    act_config_keys: tuple[str, ...] = field(default=("hidden_act", "hidden_activation", "activation_function"))
    final_norm: tuple[str, ...] = ("model.norm",)
    embed: tuple[str, ...] = ("model.embed_tokens",)
    lm_head: tuple[str, ...] = ("lm_head",)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Adapter:
        """Build a user mapping, e.g. ``{"layers": "model.layers", "qkv": ["attn.wqkv"], ...}``."""
        d = dict(d)
        for key in ("qkv", "mlp_in", "act_config_keys", "final_norm", "embed", "lm_head"):
            if key in d and isinstance(d[key], str):
                d[key] = (d[key],)
            elif key in d:
                d[key] = tuple(d[key])
        try:
            return cls(**d)
        except TypeError as e:
            raise ValueError(f"invalid adapter mapping: {e}. Fields: {list(cls.__dataclass_fields__)}") from e


_LLAMA_LIKE = Adapter(
    layers="model.layers",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    o="self_attn.o_proj",
    mlp_in=("mlp.gate_proj", "mlp.up_proj"),
    act="mlp.act_fn",
    down="mlp.down_proj",
    gated=True,
)

#: The table: ``config.model_type`` -> where its sites live.
ADAPTERS: dict[str, Adapter] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi3": Adapter(
        layers="model.layers",
        qkv=("self_attn.qkv_proj",),
        o="self_attn.o_proj",
        mlp_in=("mlp.gate_up_proj",),
        act="mlp.activation_fn",
        down="mlp.down_proj",
        gated=True,
        fused_gate_up=True,
    ),
    "gpt2": Adapter(
        layers="transformer.h",
        qkv=("attn.c_attn",),
        o="attn.c_proj",
        mlp_in=("mlp.c_fc",),
        act="mlp.act",
        down="mlp.c_proj",
        gated=False,
        final_norm=("transformer.ln_f",),
        embed=("transformer.wte",),
    ),
    "gpt_neox": Adapter(
        layers="gpt_neox.layers",
        qkv=("attention.query_key_value",),
        o="attention.dense",
        mlp_in=("mlp.dense_h_to_4h",),
        act="mlp.act",
        down="mlp.dense_4h_to_h",
        gated=False,
        final_norm=("gpt_neox.final_layer_norm",),
        embed=("gpt_neox.embed_in",),
        lm_head=("lm_head", "embed_out"),
    ),
    "opt": Adapter(
        layers="model.decoder.layers",
        qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        o="self_attn.out_proj",
        mlp_in=("fc1",),
        act="activation_fn",
        down="fc2",
        gated=False,
        final_norm=("model.decoder.final_layer_norm",),  # absent (None) in post-norm OPT-350m
        embed=("model.decoder.embed_tokens",),
    ),
    "bert": Adapter(
        layers="bert.encoder.layer",
        qkv=("attention.self.query", "attention.self.key", "attention.self.value"),
        o="attention.output.dense",
        mlp_in=("intermediate.dense",),
        act="intermediate.intermediate_act_fn",
        down="output.dense",
        gated=False,
        encoder=True,
        final_norm=(),  # post-norm: every layer ends in its own LayerNorm
        embed=("bert.embeddings.word_embeddings",),
        lm_head=("cls.predictions.decoder",),
    ),
}

_HOW_TO_ADD = (
    "add an entry to actlab.models.adapters.ADAPTERS (one Adapter naming the layer list and the "
    "q/k/v, o, gate/up, act and down module paths, and the final norm, embedding and LM head) or pass "
    "adapter=Adapter(...) / a dict"
)


def get_adapter(model_or_type: nn.Module | str, adapter: Adapter | dict | None = None) -> Adapter:
    """The adapter for a model (or a ``model_type`` string); ``adapter`` overrides the table.

    Raises:
        UnknownArchitectureError: the architecture is not in the table and no mapping was given.
    """
    if adapter is not None:
        return adapter if isinstance(adapter, Adapter) else Adapter.from_dict(adapter)
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        model_type = getattr(getattr(unwrap(model_or_type)[0], "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise UnknownArchitectureError(
            f"unknown architecture {model_type!r}: supported are {', '.join(sorted(ADAPTERS))}; {_HOW_TO_ADD}"
        )
    return ADAPTERS[model_type]


ROLES: tuple[str, ...] = ("final_norm", "embed", "lm_head")


def role_path(model: nn.Module, adapter: Adapter, role: str) -> str | None:
    """Path of the module that plays ``role`` (one of :data:`ROLES`) in ``model``, or ``None`` if it has none.

    Example:
        >>> role_path(model, get_adapter(model), "lm_head")            # doctest: +SKIP
        'lm_head'
    """
    if role not in ROLES:
        raise ValueError(f"unknown module role {role!r}; roles: {', '.join(ROLES)}")
    for path in getattr(adapter, role):
        try:
            model.get_submodule(path)
        except AttributeError:
            continue
        return path
    return None


def act_name(config: Any, adapter: Adapter) -> str:
    """The activation's canonical name (:mod:`actlab.functions`) from the config, e.g. ``swish`` -> ``silu``.

    This is what the config *says*; what a layer actually runs is :func:`act_function`. A name the table
    does not know is returned as written, ``"unknown"`` when the config names none.
    """
    for key in adapter.act_config_keys:
        value = getattr(config, key, None)
        if isinstance(value, str):
            try:
                return get_function(value).name
            except UnknownActivationError:
                return value
    return "unknown"


def act_function(model: nn.Module, layer: int, adapter: Adapter | None = None) -> ActivationFunction | None:
    """The activation layer ``layer`` actually runs: its act module looked up in the table by class.

    ``None`` when the module is missing or not in the table (a user's own activation): callers that need
    to know the function (the fused kernels) must then leave the layer alone. The config is not
    consulted: the module may have been swapped after loading.

    Example:
        >>> act_function(model, 0).name                                # doctest: +SKIP
        'silu'
    """
    ad = adapter or get_adapter(model)
    try:
        module = model.get_submodule(f"{ad.layers}.{layer}.{ad.act}")
    except AttributeError:
        return None
    return lookup_module(module)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight of a linear-like module as ``[out, in]`` (GPT-2's ``Conv1D`` stores ``[in, out]``).

    A weight offloaded by accelerate (``load_model(..., device_map=...)``) is read from its store.
    """
    module = base_layer(module)  # a PEFT LoRA layer reads its base layer's weight
    weight = tensor_of(module, "weight")
    if type(module).__name__ == "Conv1D":
        return weight.t()
    return weight
