"""The exception types that mean "bad input": the CLI prints them as one line, exit code 2.

Each module defines its own error next to the code that raises it; this registry lists them
so the CLI needs no knowledge of every module.
"""

from __future__ import annotations

import importlib

# (module, class name): imported lazily so this file has no import-time cost
_USER_ERRORS: list[tuple[str, str]] = [
    ("actlab.models.load", "ModelLoadError"),
    ("actlab.models.adapters", "UnknownArchitectureError"),
    ("actlab.activations.sites", "SiteError"),
    ("actlab.data.corpus", "CorpusError"),
    ("actlab.data.windows", "WindowError"),
    ("actlab.outputs", "OutputError"),
    ("actlab.sparsity.errors", "PlanError"),
    ("actlab.train.errors", "TrainError"),
    ("actlab.engine.llamacpp", "LlamaCppError"),
    ("actlab.interp.records", "RecordsError"),
    ("actlab.interp.lm_head", "LMHeadError"),
    ("actlab.interp.cdt", "CDTError"),
    ("actlab.interp.browser_data", "BrowserDataError"),
    ("actlab.report.neurons_html", "NeuronSiteError"),
    ("actlab.interp.sae", "SAEError"),
    ("actlab.interp.nmf", "NMFError"),
    ("actlab.interp.ablate", "InterventionError"),
    ("actlab.interp.patching", "PatchingError"),
    ("actlab.interp.steering", "SteeringError"),
    ("actlab.functions.lsuv", "LSUVError"),
    ("actlab.interp.codes", "CodesError"),
    ("actlab.functions.ood.errors", "OODError"),
]


class ActlabError(ValueError):
    """Base class for actlab's user-facing errors that have no more specific home."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """All user-facing error classes that can be imported (missing optional modules are skipped)."""
    found: list[type[BaseException]] = [ActlabError]
    for module, name in _USER_ERRORS:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)
