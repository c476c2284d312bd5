"""Activation-shaping OOD scores (ReAct, ASH-p/b/s, SCALE, energy, max-logit, MSP, Mahalanobis, feature
norms) over a chosen site, with pytorch-ood's convention (larger = more outlying) and metrics.

Three steps: features at a site (:func:`classifier_features` for a classifier's penultimate layer and its
head, :func:`module_features` for any module, :func:`lm_features` for a language model's pooled
sequence features), a detector fitted on in-distribution features (:func:`fit_detector`, names in
:data:`DETECTORS`), and :func:`ood_metrics` on the scores of inliers and outliers.

For language models there is no classifier head: the logit scores (energy, max-logit, MSP) and the shaped
ones (ReAct, ASH, SCALE) need ``head=`` (e.g. a linear probe trained on the pooled features); without one,
``mahalanobis`` (one Gaussian when no labels are given) and ``feature-norm`` (optionally ReAct-clipped or
ASH/SCALE-shaped first) apply. Next-token (perplexity-like) scores are not defined here.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> f_in = classifier_features(net, torch.randn(64, 8))
    >>> det = fit_detector("ash-s", f_in.features, head=f_in.head, percentile=0.65)
    >>> f_out = classifier_features(net, 5 * torch.randn(64, 8))
    >>> sorted(ood_metrics(det.score(f_in.features), det.score(f_out.features)))
    ['AUPR-IN', 'AUPR-OUT', 'AUROC', 'FPR95TPR']
"""

from actlab.functions.ood.detectors import (
    DETECTORS,
    AshBConfig,
    AshPConfig,
    AshSConfig,
    Detector,
    DetectorConfig,
    EnergyConfig,
    FeatureNormConfig,
    MahalanobisConfig,
    MaxLogitConfig,
    MspConfig,
    ReActConfig,
    ScaleConfig,
    detector_from_dict,
    fit_detector,
    register_detector,
)
from actlab.functions.ood.errors import OODError
from actlab.functions.ood.features import (
    POOLS,
    ClassifierFeatures,
    classifier_features,
    find_head,
    lm_features,
    module_features,
    pool_sequence,
)
from actlab.functions.ood.metrics import aupr, auroc, fpr_at_tpr, ood_metrics

__all__ = [
    "DETECTORS",
    "POOLS",
    "AshBConfig",
    "AshPConfig",
    "AshSConfig",
    "ClassifierFeatures",
    "Detector",
    "DetectorConfig",
    "EnergyConfig",
    "FeatureNormConfig",
    "MahalanobisConfig",
    "MaxLogitConfig",
    "MspConfig",
    "OODError",
    "ReActConfig",
    "ScaleConfig",
    "aupr",
    "auroc",
    "classifier_features",
    "detector_from_dict",
    "find_head",
    "fit_detector",
    "fpr_at_tpr",
    "lm_features",
    "module_features",
    "ood_metrics",
    "pool_sequence",
    "register_detector",
]
