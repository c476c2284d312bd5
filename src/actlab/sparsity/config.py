"""One config dataclass per sparsification method, and the registry that names them.

The public verb never changes when a method is added (``actlab.sparsify_(model, TealConfig(0.5), data)``):
a method is a config class registered here plus a handler registered in ``actlab.sparsity.methods``.
Configs round-trip through JSON; :func:`config_from_dict` resolves the class through the registry by its
``method`` name, never by importing a name found in a file.

``sparsity`` is always the *model-wide* target: the fraction of the weights of the sparsifiable linears
(q, k, v, o, gate, up, down; weighted by parameter count, TEAL's definition) that a token does not need.
A method that covers only some linears (CATS, CHESS) sparsifies those harder to reach the same target.

Example:
    >>> cfg = TealConfig(sparsity=0.5, allocation="greedy")
    >>> config_from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from actlab.configs import from_json_dict, to_json_dict
from actlab.sparsity.errors import PlanError

#: method name -> config class
CONFIGS: dict[str, type[SparsityConfig]] = {}

ALLOCATIONS = ("uniform", "greedy", "global")


def register_config(cls: type[SparsityConfig]) -> type[SparsityConfig]:
    """Class decorator: make ``cls`` loadable by its ``method`` name."""
    if cls.method in CONFIGS and CONFIGS[cls.method] is not cls:
        raise ValueError(f"method {cls.method!r} is already registered by {CONFIGS[cls.method].__name__}")
    CONFIGS[cls.method] = cls
    return cls


@dataclass(frozen=True)
class SparsityConfig:
    """Base of every method config: ``sparsity`` is the model-wide target in [0, 1).

    ``knob`` names the field a quality search (``--max-ppl-increase``) moves.
    """

    method: ClassVar[str] = ""
    knob: ClassVar[str] = "sparsity"
    #: False for methods whose masks are per token (top-k): masking path only, no thresholds
    threshold_based: ClassVar[bool] = True

    sparsity: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise PlanError(f"{self.method}: sparsity must be in [0, 1), got {self.sparsity}")
        allocation = getattr(self, "allocation", "uniform")
        if allocation not in self.allocations():
            raise PlanError(
                f"{self.method}: unknown allocation {allocation!r}; choose one of {', '.join(self.allocations())}"
            )

    @classmethod
    def allocations(cls) -> tuple[str, ...]:
        """Allocations this method supports."""
        return ("uniform",)

    def with_knob(self, value: float) -> SparsityConfig:
        """A copy with the search knob set to ``value``."""
        return dataclasses.replace(self, **{self.knob: value})

    def knob_value(self) -> float:
        return float(getattr(self, self.knob))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict including ``method``, the registry key used to load it back."""
        return to_json_dict(self, "method")


def config_from_dict(d: dict[str, Any]) -> SparsityConfig:
    """Rebuild a config from :meth:`SparsityConfig.to_dict` output, resolving the class by method name.

    Raises:
        PlanError: unknown method, unknown or invalid fields.
    """
    return from_json_dict(d, CONFIGS, "method", PlanError, "sparsification method")


@dataclass(frozen=True)
class _ThresholdConfig(SparsityConfig):
    """Shared fields of the calibrated methods.

    Attributes:
        allocation: ``uniform`` (every sparsified input at the same sparsity), ``greedy`` (TEAL's block-wise
            greedy on block output error, same sparsity for every block) or ``global`` (across all layers
            and projections at once, by each mask's estimated damage to the model's output: the diagonal
            Fisher of every linear's output, see ``actlab.sparsity.fisher``).
        greedy_step: block-sparsity increment of one greedy step.
        greedy_tokens: calibration tokens the greedy search reruns each block on (cost grows linearly).
        fisher_tokens: calibration tokens of the forward+backward pass of the ``global`` allocation.
        sites: restrict to these input site kinds (``attn.qkv_in``, ``attn.o_in``, ``mlp.gate_up_in``,
            ``mlp.in``, ``mlp.down_in``); empty = all. ``sparsity`` stays model-wide, so the covered inputs
            are sparsified harder.
        rotate: input site kinds to mask in their own principal-component basis (LaRoSA-style): calibration
            finds an orthogonal ``Q`` per input (one per kv group for ``attn.o_in``), the mask keeps
            ``(x Q)_i`` by magnitude and the consumers see ``mask(x Q) Q^T``. Far less output error at the
            same sparsity; the dense ``x Q`` product costs ``d^2`` weights per rotated input (``o_in``'s
            block-diagonal one far less), which ``bytes_skipped_frac`` counts against the savings.
            Masking path only for now (``kernels=True`` refuses a rotated plan).
    """

    allocation: str = "uniform"
    greedy_step: float = 0.05
    greedy_tokens: int = 256
    fisher_tokens: int = 1024
    sites: tuple[str, ...] = ()
    rotate: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        from actlab.sparsity.groups import INPUT_KINDS

        unknown = [k for k in self.sites if k not in INPUT_KINDS]
        if unknown:
            raise PlanError(f"{self.method}: unknown site kind(s) {unknown}; choose from {', '.join(INPUT_KINDS)}")
        rotatable = tuple(k for k in INPUT_KINDS if k != "mlp.down_in")
        bad = [k for k in self.rotate if k not in rotatable]
        if bad:
            raise PlanError(f"{self.method}: cannot rotate {bad}; rotatable inputs: {', '.join(rotatable)} "
                            "(down_in follows a nonlinearity with no basis to rotate in)")
        if self.rotate and self.allocation == "greedy":
            raise PlanError(f"{self.method}: rotate works with the uniform and global allocations, not greedy")

    @classmethod
    def allocations(cls) -> tuple[str, ...]:
        return ALLOCATIONS


@register_config
@dataclass(frozen=True)
class TealConfig(_ThresholdConfig):
    """TEAL: keep ``x_i`` iff ``|x_i| > t``, one ``t`` per input of q/k/v, o, gate/up and down.

    Example:
        >>> TealConfig(0.4).method
        'teal'
    """

    method: ClassVar[str] = "teal"


@register_config
@dataclass(frozen=True)
class WinaConfig(_ThresholdConfig):
    """WINA: keep ``x_i`` iff ``|x_i| * ||W[:, i]||_2 > t`` (column norm over every consumer of the input).

    Reduces to a per-channel threshold ``t / ||W[:, i]||`` on ``|x_i|``.
    """

    method: ClassVar[str] = "wina"


@register_config
@dataclass(frozen=True)
class ChessConfig(SparsityConfig):
    """CHESS: per-neuron thresholds on ``|act(gate)_i|`` scaled by ``RMS(up_i)``; attention q and o inputs.

    Attributes:
        attn_ratio: sparsity of the q and o inputs relative to the MLP's (CHESS is selective: k and v dense).
    """

    method: ClassVar[str] = "chess"
    attn_ratio: float = 1.0


@register_config
@dataclass(frozen=True)
class CatsConfig(SparsityConfig):
    """CATS: one threshold per layer on ``|act(gate(x))|``, masking up and down (gate stays dense).

    Covers half the sparsifiable weights of a gated MLP model, so ``sparsity`` must stay below 0.5 there.
    """

    method: ClassVar[str] = "cats"


@register_config
@dataclass(frozen=True)
class TopKConfig(SparsityConfig):
    """Top-k (Lazy Neuron): keep the ``k = round((1 - sparsity) * in)`` largest ``|x_i|`` of each token.

    Needs no calibration; a per-token mask, so it runs on the masking path only (no kernel thresholds).
    """

    method: ClassVar[str] = "topk"
    threshold_based: ClassVar[bool] = False


@register_config
@dataclass(frozen=True)
class CettConfig(SparsityConfig):
    """CETT (Sparsing Law): per layer, the largest neuron-output threshold whose CETT stays <= ``cett``.

    ``n_i = |h_i| * ||W_down[:, i]||``; ``CETT(t) = E ||W_down h_{n<=t}|| / ||W_down h||`` over tokens;
    per-neuron threshold ``t / ||W_down[:, i]||`` on ``h`` = the down projection's input. ``sparsity`` is
    ignored (it is the result, not the target); the search knob is ``cett``.
    """

    method: ClassVar[str] = "cett"
    knob: ClassVar[str] = "cett"
    cett: float = 0.2
    sparsity: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.cett < 1.0:
            raise PlanError(f"cett: the CETT target must be in [0, 1), got {self.cett}")


@register_config
@dataclass(frozen=True)
class ComposedConfig(SparsityConfig):
    """The record of plans merged by ``actlab.merge_plans`` (no calibration of its own).

    Attributes:
        parts: the merged plans' configs (``to_dict()`` each, in merge order).
        sparsity: the merged plan's model-wide sparsity on the parts' calibration samples (a result).
    """

    method: ClassVar[str] = "composed"
    parts: tuple[dict, ...] = ()
    sparsity: float = 0.0
