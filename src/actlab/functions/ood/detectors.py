"""OOD detectors as config dataclasses in a registry, fitted on in-distribution features by one verb.

As the sparsity methods: a detector is a frozen config class registered by its ``detector`` name; the
verb (:func:`fit_detector`) never changes when one is added, and configs round-trip through JSON
(:func:`detector_from_dict` resolves the class through the registry). Every score follows pytorch-ood:
larger means more outlying, and on the same features and head the numbers equal its detectors'.

=============  =====================================================  ======  =======
name           score of features ``z``                                head    labels
=============  =====================================================  ======  =======
energy         ``-T logsumexp(head(z) / T)``                          yes     no
max-logit      ``-max head(z)``                                       yes     no
msp            ``-max softmax(head(z) / T)``                          yes     no
react          ``score(head(min(z, c)))``, ``c`` the ID percentile    yes     no
ash-p/b/s      ``score(head(ash(z)))``                                yes     no
scale          ``score(head(scale(z)))``                              yes     no
mahalanobis    ``1/2 min_c`` squared distance to class means          no      optional
feature-norm   ``-||shape(z)||_2`` (optionally ReAct/ASH/SCALE first) no      no
=============  =====================================================  ======  =======

``score`` is the config's ``score`` field (``energy``, ``max-logit`` or ``msp``). The head-free rows are
the ones that apply to a language model's pooled features.

Example:
    >>> head = nn.Linear(8, 3)
    >>> z = torch.randn(50, 8).relu()
    >>> det = fit_detector("react", z, head=head, percentile=0.9)
    >>> det.score(z).shape
    torch.Size([50])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from actlab.configs import from_json_dict, to_json_dict
from actlab.functions.ood.errors import OODError
from actlab.functions.ood.mahalanobis import fit_gaussians, mahalanobis_score
from actlab.functions.ood.scores import LOGIT_SCORES
from actlab.functions.ood.shaping import SHAPINGS, _check_fraction, percentile, react

__all__ = ["DETECTORS", "AshBConfig", "AshPConfig", "AshSConfig", "Detector", "DetectorConfig", "EnergyConfig",
           "FeatureNormConfig", "MahalanobisConfig", "MaxLogitConfig", "MspConfig", "ReActConfig", "ScaleConfig",
           "detector_from_dict", "fit_detector", "register_detector"]

Head = Callable[[torch.Tensor], torch.Tensor]

#: detector name -> config class
DETECTORS: dict[str, type[DetectorConfig]] = {}


def register_detector(cls: type[DetectorConfig]) -> type[DetectorConfig]:
    """Class decorator: make ``cls`` loadable by its ``detector`` name."""
    if cls.detector in DETECTORS and DETECTORS[cls.detector] is not cls:
        raise ValueError(f"detector {cls.detector!r} is already registered by {DETECTORS[cls.detector].__name__}")
    DETECTORS[cls.detector] = cls
    return cls


@dataclass(frozen=True)
class DetectorConfig:
    """Base of every detector config. Subclasses say what they need and implement fit and score."""

    detector: ClassVar[str] = ""
    needs_head: ClassVar[bool] = False

    def fit(self, z: torch.Tensor, labels: torch.Tensor | None) -> dict[str, Any]:
        """The fitted state from in-distribution features (nothing for the parameter-free scores)."""
        return {}

    def score(self, state: dict[str, Any], z: torch.Tensor, head: Head | None) -> torch.Tensor:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict including ``detector``, the registry key used to load it back."""
        return to_json_dict(self, "detector")


def detector_from_dict(d: dict[str, Any]) -> DetectorConfig:
    """Rebuild a config from :meth:`DetectorConfig.to_dict` output, resolving the class by its name.

    Raises:
        OODError: unknown detector, unknown or invalid fields.
    """
    return from_json_dict(d, DETECTORS, "detector", OODError, "OOD detector")


@dataclass(frozen=True)
class _LogitConfig(DetectorConfig):
    """A score of the head's logits; ``t`` is the temperature of energy and MSP (max-logit ignores it)."""

    needs_head: ClassVar[bool] = True
    score_name: ClassVar[str] = ""
    t: float = 1.0

    def __post_init__(self) -> None:
        if not self.t > 0:
            raise OODError(f"{self.detector}: temperature t must be > 0, got {self.t}")

    def score(self, state: dict[str, Any], z: torch.Tensor, head: Head | None) -> torch.Tensor:
        return LOGIT_SCORES[self.score_name](head(z), self.t)


@register_detector
@dataclass(frozen=True)
class EnergyConfig(_LogitConfig):
    """Energy score (Liu et al. 2020): ``-t logsumexp(logits / t)``."""

    detector: ClassVar[str] = "energy"
    score_name: ClassVar[str] = "energy"


@register_detector
@dataclass(frozen=True)
class MaxLogitConfig(_LogitConfig):
    """Max-logit (Hendrycks et al. 2022): ``-max logits``."""

    detector: ClassVar[str] = "max-logit"
    score_name: ClassVar[str] = "max-logit"


@register_detector
@dataclass(frozen=True)
class MspConfig(_LogitConfig):
    """Maximum softmax probability (Hendrycks & Gimpel 2017): ``-max softmax(logits / t)``."""

    detector: ClassVar[str] = "msp"
    score_name: ClassVar[str] = "msp"


@dataclass(frozen=True)
class _ShapedConfig(_LogitConfig):
    """Shape the features, run them through the head, score the logits with ``logit_score``.

    Attributes:
        percentile: the fraction of each sample's activations ASH prunes (SCALE: treats as pruned), or the
            in-distribution percentile ReAct clips at.
        logit_score: ``energy`` (the papers' and pytorch-ood's default), ``max-logit`` or ``msp``.
        t: temperature of the logit score.
    """

    percentile: float = 0.65
    logit_score: str = "energy"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.logit_score not in LOGIT_SCORES:
            raise OODError(f"{self.detector}: unknown logit_score {self.logit_score!r}; choose one of "
                           f"{', '.join(LOGIT_SCORES)}")
        _check_fraction(f"{self.detector}: percentile", self.percentile)

    def shape(self, state: dict[str, Any], z: torch.Tensor) -> torch.Tensor:
        return SHAPINGS[self.detector](z, self.percentile)

    def score(self, state: dict[str, Any], z: torch.Tensor, head: Head | None) -> torch.Tensor:
        return LOGIT_SCORES[self.logit_score](head(self.shape(state, z)), self.t)


@register_detector
@dataclass(frozen=True)
class ReActConfig(_ShapedConfig):
    """ReAct (Sun et al. 2021): clip at the ``percentile`` of all in-distribution activations.

    Attributes:
        threshold: a clipping value to use as is instead of fitting one (then ``percentile`` is unused).
    """

    detector: ClassVar[str] = "react"
    percentile: float = 0.9
    threshold: float | None = None

    def fit(self, z: torch.Tensor, labels: torch.Tensor | None) -> dict[str, Any]:
        c = self.threshold if self.threshold is not None else percentile(z, self.percentile)
        return {"threshold": float(c)}

    def shape(self, state: dict[str, Any], z: torch.Tensor) -> torch.Tensor:
        return react(z, state["threshold"])


@register_detector
@dataclass(frozen=True)
class AshPConfig(_ShapedConfig):
    """ASH-p (Djurisic et al. 2023): prune the lowest ``percentile`` of each sample's activations."""

    detector: ClassVar[str] = "ash-p"


@register_detector
@dataclass(frozen=True)
class AshBConfig(_ShapedConfig):
    """ASH-b: prune as ASH-p, set the kept to the sample's activation sum over their count."""

    detector: ClassVar[str] = "ash-b"


@register_detector
@dataclass(frozen=True)
class AshSConfig(_ShapedConfig):
    """ASH-s: prune as ASH-p, multiply the kept by ``exp(sum all / sum kept)``."""

    detector: ClassVar[str] = "ash-s"


@register_detector
@dataclass(frozen=True)
class ScaleConfig(_ShapedConfig):
    """SCALE (Xu et al. 2024): every activation times ``exp(sum all / sum of the top 1 - percentile)``."""

    detector: ClassVar[str] = "scale"


@register_detector
@dataclass(frozen=True)
class MahalanobisConfig(DetectorConfig):
    """Mahalanobis (Lee et al. 2018): class Gaussians with a shared covariance (see ``actlab.functions.ood.mahalanobis``).

    Attributes:
        normalize: divide the scatter matrix by ``N`` (the paper's covariance) rather than pytorch-ood's sum.
    """

    detector: ClassVar[str] = "mahalanobis"
    normalize: bool = False

    def fit(self, z: torch.Tensor, labels: torch.Tensor | None) -> dict[str, Any]:
        return {"gaussians": fit_gaussians(z, labels, self.normalize)}

    def score(self, state: dict[str, Any], z: torch.Tensor, head: Head | None) -> torch.Tensor:
        return mahalanobis_score(state["gaussians"], z)


@register_detector
@dataclass(frozen=True)
class FeatureNormConfig(DetectorConfig):
    """The negated L2 norm of each sample's (optionally shaped) features: head-free, so it suits LMs.

    In-distribution features of a trained network tend to be larger than those of outliers, so a small norm
    flags an outlier. ``shaping`` applies ReAct (``react``, clipped at the ID ``percentile``) or an ASH/SCALE
    shaping (at ``percentile``) first; ``none`` scores the raw features.
    """

    detector: ClassVar[str] = "feature-norm"
    shaping: str = "none"
    percentile: float = 0.9

    def __post_init__(self) -> None:
        known = ("none", "react", *SHAPINGS)
        if self.shaping not in known:
            raise OODError(f"feature-norm: unknown shaping {self.shaping!r}; choose one of {', '.join(known)}")
        _check_fraction("feature-norm: percentile", self.percentile)

    def fit(self, z: torch.Tensor, labels: torch.Tensor | None) -> dict[str, Any]:
        return {"threshold": percentile(z, self.percentile)} if self.shaping == "react" else {}

    def score(self, state: dict[str, Any], z: torch.Tensor, head: Head | None) -> torch.Tensor:
        shapers: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
            "none": lambda x: x,
            "react": lambda x: react(x, state["threshold"]),
            **{name: (lambda x, f=f: f(x, self.percentile)) for name, f in SHAPINGS.items()},
        }
        shaped = shapers[self.shaping](z)
        return -shaped.reshape(shaped.shape[0], -1).norm(dim=1)


@dataclass
class Detector:
    """A fitted detector: :meth:`score` gives one outlier score per sample (larger = more outlying).

    Attributes:
        config: the detector's config.
        head: what maps features to logits (the classifier's final Linear), or ``None`` for head-free scores.
        state: what fitting found (ReAct's ``threshold``, Mahalanobis' ``gaussians``).
    """

    config: DetectorConfig
    head: Head | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Outlier scores ``[B]`` of features ``[B, ...]`` (the same kind of features it was fitted on)."""
        if not isinstance(features, torch.Tensor) or features.dim() < 2:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise OODError(f"features must be a tensor [batch, ...], got {shape}")
        return self.config.score(self.state, features, self.head)


def _head_device(head: Head | None, z: torch.Tensor) -> Head | None:
    if not isinstance(head, nn.Module):
        return head
    p = next(head.parameters(), None)
    if p is None or p.device == z.device:
        return head
    return lambda x: head(x.to(p.device)).to(z.device)


def fit_detector(
    name: str | DetectorConfig,
    features_in: torch.Tensor,
    labels: torch.Tensor | None = None,
    head: Head | None = None,
    **params: Any,
) -> Detector:
    """Fit an OOD detector on in-distribution features.

    Args:
        name: a registered name (:data:`DETECTORS`: energy, max-logit, msp, react, ash-p, ash-b, ash-s,
            scale, mahalanobis, feature-norm) or a config instance.
        features_in: in-distribution features ``[N, ...]``, e.g. :func:`actlab.functions.ood.classifier_features`'s.
        labels: class per row (Mahalanobis; ``None`` = one class).
        head: features -> logits (the classifier's final Linear), for the logit-based detectors.
        **params: the config's fields when ``name`` is a string, e.g. ``percentile=0.9``.

    Raises:
        OODError: unknown name or field, params beside a config, a head missing where one is needed.

    Example:
        >>> det = fit_detector("mahalanobis", torch.randn(64, 4))
        >>> det.score(torch.randn(3, 4)).shape
        torch.Size([3])
    """
    if isinstance(name, DetectorConfig):
        if params:
            raise OODError(f"pass parameters either in the config or as keywords, not both (got {sorted(params)})")
        cfg = name
    else:
        cfg = detector_from_dict({"detector": name, **params})
    if not isinstance(features_in, torch.Tensor) or features_in.dim() < 2 or features_in.shape[0] == 0:
        raise OODError("features_in must be a non-empty tensor [N, ...] of in-distribution features")
    if cfg.needs_head and head is None:
        raise OODError(f"{cfg.detector} scores a head's logits: pass head= (the classifier's final Linear, as "
                       "classifier_features returns it); for features without a head use mahalanobis or "
                       "feature-norm")
    with torch.no_grad():
        state = cfg.fit(features_in.detach(), labels)
    return Detector(cfg, _head_device(head, features_in), state)
