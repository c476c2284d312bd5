"""actlab: neuron activations of transformer models as a first-class object.

The public API is imported lazily so that ``import actlab`` (and ``actlab --help``)
stays fast and has no side effects: torch and transformers load on first use.

Example:
    >>> import actlab
    >>> model, tok = actlab.load_model("random:tiny-llama")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "load_model": "actlab.models.load",
    "ADAPTERS": "actlab.models.adapters",
    "get_adapter": "actlab.models.adapters",
    "resolve_sites": "actlab.activations.sites",
    "capture": "actlab.activations.hooks",
    "load_corpus": "actlab.data.corpus",
    "sparsify_": "actlab.sparsity.calibrate",
    "calibrate": "actlab.sparsity.calibrate",
    "prepare": "actlab.sparsity.calibrate",
    "apply_": "actlab.sparsity.apply",
    "remove_": "actlab.sparsity.apply",
    "check_plan": "actlab.sparsity.apply",
    "merge_plans": "actlab.sparsity.compose",
    "SparsityPlan": "actlab.sparsity.plan",
    "PlanEntry": "actlab.sparsity.plan",
    "PlanError": "actlab.sparsity.errors",
    "search_quality": "actlab.sparsity.search",
    "evaluate_plan": "actlab.plan_eval",
    "TealConfig": "actlab.sparsity.config",
    "WinaConfig": "actlab.sparsity.config",
    "ChessConfig": "actlab.sparsity.config",
    "CatsConfig": "actlab.sparsity.config",
    "TopKConfig": "actlab.sparsity.config",
    "CettConfig": "actlab.sparsity.config",
    "train": "actlab.train.loop",
    "TrainArgs": "actlab.train.loop",
    "TrainResult": "actlab.train.loop",
    "record_neurons": "actlab.interp.records",
    "decode_neurons": "actlab.interp.lm_head",
    "logit_lens": "actlab.interp.lm_head",
    "intervene": "actlab.interp.ablate",
    "ablation_effect": "actlab.interp.ablate",
    "patch_map": "actlab.interp.patching",
    "steering_vector": "actlab.interp.steering",
    "SteeringVector": "actlab.interp.steering",
    "apply_steering": "actlab.interp.steering",
    "export_control_vector": "actlab.interp.control_vector",
    "decompose": "actlab.interp.cdt",
    "SparseAutoencoder": "actlab.interp.sae",
    "train_sae": "actlab.interp.sae_train",
    "module_sites": "actlab.activations.sites",
    "get_function": "actlab.functions",
    "swap_activation_": "actlab.functions",
    "fit_rational": "actlab.functions",
    "measure_all": "actlab.functions",
    "write_functions_page": "actlab.report.functions_html",
    "lsuv_": "actlab.functions.lsuv",
    "LSUVReport": "actlab.functions.lsuv",
    "record_codes": "actlab.interp.codes",
    "code_metrics": "actlab.interp.codes",
    "ActivationCodes": "actlab.interp.codes",
    "CodeTracker": "actlab.interp.codes",
    "fit_detector": "actlab.functions.ood",
    "ood_metrics": "actlab.functions.ood",
    "classifier_features": "actlab.functions.ood",
    "lm_features": "actlab.functions.ood",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'actlab' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
