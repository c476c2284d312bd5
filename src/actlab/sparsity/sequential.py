"""Layer-by-layer calibration (the GPTQ-style sequential pass): peak memory is one layer plus activations.

:func:`actlab.sparsity.collect.collect` runs the whole model on one batch after another, so every layer's
weights are in memory (or, offloaded, read from disk once per batch). This pass turns the loops around:

1. the model's own forward runs up to its first decoder layer on every calibration batch, with each layer
   replaced by a recorder: it keeps the embedding output and the arguments the model passes each layer
   (rotary position embeddings, attention mask, position ids; whatever that architecture's loop computes);
2. for each decoder layer in turn: its weights are loaded once (:func:`actlab.models.offload.onloaded`),
   the Hugging Face layer module itself runs on every stored batch with the same site hooks ``collect``
   uses, its outputs replace the stored inputs (they are the next layer's inputs), and its weights are
   dropped.

It returns the same :class:`~actlab.sparsity.collect.CalibrationSample` as ``collect`` (the same sampled rows,
chosen by global token index, the same sums), so every threshold method makes the same plan from it. The
memory saving needs a model loaded with ``load_model(path, device_map="disk")``; on a model in memory the
pass still works (and gives the same sample), it just saves nothing.

Example:
    >>> model, tok = actlab.load_model("/tmp/llama-dir", device_map="disk")          # doctest: +SKIP
    >>> plan = actlab.calibrate(model, actlab.TealConfig(0.5), calib, sequential=True)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from actlab.activations.hooks import capture
from actlab.activations.sites import resolve_sites, select_sites
from actlab.models.adapters import get_adapter
from actlab.models.offload import execution_device, onloaded
from actlab.sparsity.collect import (
    BlockInputs,
    CalibrationSample,
    _forward,
    _layer_input_recorder,
    _nothing,
    _RowSampler,
    _up_recorder,
)
from actlab.sparsity.errors import PlanError

#: allocations that need the whole model at once, and why (the sequential pass refuses them)
WHOLE_MODEL_ALLOCATIONS: dict[str, str] = {
    "global": "the global allocation's output Fisher backpropagates through the whole model",
}

# keyword arguments of a layer call that must not be replayed (a replay would append to the KV cache)
_CACHE_KWARGS = ("past_key_values", "past_key_value", "cache")


class _Stop(Exception):
    """Raised by the last recorder: the model's forward has given every layer its arguments."""


class _Recorder(nn.Module):
    """Stands in for a decoder layer during step 1: keeps its call arguments, passes the hidden state on."""

    def __init__(self, calls: list, last: bool) -> None:
        super().__init__()
        self.calls, self.last = calls, last

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kwargs = {k: v for k, v in kwargs.items() if k not in _CACHE_KWARGS}
        self.calls.append((hidden.detach(), args[1:], kwargs))
        if self.last:
            raise _Stop
        return hidden  # the identity: the next recorder gets the embedding output, unchanged


def check_sequential(allocation: str) -> None:
    """Refuse an allocation the layer-by-layer pass cannot make (it never holds the whole model).

    Example:
        >>> check_sequential("uniform")
        >>> check_sequential("global")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        actlab.sparsity.errors.PlanError: ...
    """
    why = WHOLE_MODEL_ALLOCATIONS.get(allocation)
    if why is not None:
        raise PlanError(f"allocation {allocation!r} cannot run layer by layer: {why}; use uniform or greedy, "
                        "or calibrate without sequential")


def _layer_calls(model: nn.Module, layers: nn.ModuleList, batches: list[torch.Tensor]) -> list[list[tuple]]:
    """Per layer, per batch: ``(hidden, extra args, kwargs)`` of the call the model's own forward makes.

    The hidden state is the embedding output (every recorder passes it on unchanged), so only layer 0's
    is used; the other layers keep their own arguments (e.g. gemma2's sliding-window masks).
    """
    calls: list[list[tuple]] = [[] for _ in layers]
    real = list(layers)
    try:
        for i in range(len(real)):
            layers[i] = _Recorder(calls[i], last=i == len(real) - 1)
        for batch in batches:
            try:
                _forward(model, batch)
            except _Stop:
                pass
            else:  # a model whose forward skips layers would silently calibrate on the wrong inputs
                raise PlanError("the model's forward did not reach its last decoder layer")
    finally:
        for i, layer in enumerate(real):
            layers[i] = layer
    return calls


@torch.no_grad()
def collect_sequential(
    model: nn.Module,
    windows: torch.Tensor,
    sites: list[str],
    *,
    max_values: int = 1 << 18,
    up_moments: bool = False,
    moment_sites: tuple[str, ...] | list[str] = (),
    block_tokens: int = 0,
    batch_size: int = 4,
    seed: int = 0,
    progress: Any = None,
) -> CalibrationSample:
    """:func:`~actlab.sparsity.collect.collect`'s sample, computed one decoder layer at a time.

    Same arguments and result as ``collect`` (without ``dist``); ``progress(done_layers, total_layers)``.

    Raises:
        PlanError: a site the model lacks, moment sites outside ``sites``, or an architecture whose
            forward does not call its layers in order.

    Example:
        >>> s = collect_sequential(model, calib, ["layers.0.mlp.down_in"], max_values=4096)  # doctest: +SKIP
        >>> s.rows["layers.0.mlp.down_in"].shape                                            # doctest: +SKIP
        torch.Size([64, 1536])
    """
    n, seq_len = windows.shape
    ad = get_adapter(model)
    layers = model.get_submodule(ad.layers)
    try:
        resolved = select_sites(resolve_sites(model), sites) if sites else {}
    except (KeyError, ValueError) as e:
        raise PlanError(f"calibration sites: {e}") from None
    missing = sorted(set(moment_sites) - set(resolved))
    if missing:
        raise PlanError(f"moment_sites {missing[:3]} are not among the sampled sites")
    # the same batches as collect(): the windows whose layer inputs are recorded come first, on their own
    n_block = min(n, -(-block_tokens // seq_len)) if block_tokens > 0 else 0
    starts = ([0] if n_block else []) + list(range(n_block, n, batch_size))
    bounds = [(b, starts[k + 1] if k + 1 < len(starts) else n) for k, b in enumerate(starts)]
    device = execution_device(model)
    recorded = _layer_calls(model, layers, [windows[b:e].to(device) for b, e in bounds])
    hidden = [c[0].cpu() for c in recorded[0]]  # [batch, seq, d] per batch: the embedding output
    calls = [[(a, kw) for _, a, kw in per] for per in recorded]  # no second reference to the embeddings
    del recorded

    grab = _RowSampler(resolved, n * seq_len, max_values, seed, moment_sites)

    up_sums: dict[int, torch.Tensor] = {}
    blocks: dict[int, BlockInputs] = {}
    with capture(model, sites=resolved, fn=grab) if resolved else _nothing():
        with _up_recorder(model, up_sums) if up_moments else _nothing():
            # the layer's first call is batch 0, the n_block windows: the greedy allocation replays it
            with _layer_input_recorder(model, 1, blocks) if n_block else _nothing():
                for i, layer in enumerate(layers):
                    if progress is not None:
                        progress(i, len(layers))
                    dev = execution_device(layer)
                    with onloaded(layer):
                        for k, (b, _) in enumerate(bounds):
                            args, kwargs = calls[i][k]
                            grab.offset = b * seq_len
                            out = layer(hidden[k].to(dev), *args, **kwargs)
                            out = out[0] if isinstance(out, tuple) else out  # older layers return tuples
                            hidden[k] = out.detach().cpu()  # the next layer's input
    if progress is not None:
        progress(len(layers), len(layers))
    return grab.sample(up_sums, blocks, seq_len)
