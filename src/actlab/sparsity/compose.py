"""``merge_plans``: one plan from several plans of the same model that mask different modules.

A method need not cover the whole model: CETT on the MLP down inputs and WINA on every other input, or
CATS on the MLPs and TEAL on attention, are two plans whose entries touch disjoint modules. Merging them
gives one plan that saves, loads, applies (masking or kernels) and evaluates like any other. Entries that
overlap (the same entry key, or a module both would mask) are refused, naming them: two thresholds on one
tensor have no single meaning. The merged plan's method is ``composed`` (``ComposedConfig`` lists the
parts' configs); its metrics are recomputed from the merged entries' calibration sparsities (exactly as
calibration computes them when ``model`` is given, else the model-wide and per-site-kind sparsity from
the fingerprint's layer shapes, with ``metrics["bytes_skipped_frac"]`` left to ``actlab eval``).

Example:
    >>> cett = actlab.calibrate(model, actlab.CettConfig(cett=0.1), calib)                          # doctest: +SKIP
    >>> wina = actlab.calibrate(model, actlab.WinaConfig(0.4, sites=("attn.qkv_in", "attn.o_in",
    ...                         "mlp.gate_up_in")), calib)                                          # doctest: +SKIP
    >>> both = actlab.merge_plans(cett, wina, model=model)                                          # doctest: +SKIP
    >>> both.method, len(both.entries) == len(cett.entries) + len(wina.entries)                     # doctest: +SKIP
    ('composed', True)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from actlab.activations.sites import SITE_KINDS
from actlab.sparsity.config import ComposedConfig
from actlab.sparsity.errors import PlanError
from actlab.sparsity.fingerprint import fingerprint_mismatch
from actlab.sparsity.metrics import model_wide, plan_metrics
from actlab.sparsity.plan import PlanEntry, SparsityPlan, _check_entries


def _order(e: PlanEntry) -> tuple[int, int, str]:
    kind = e.site.split(".", 2)[-1]
    return e.layer, SITE_KINDS.index(kind) if kind in SITE_KINDS else len(SITE_KINDS), e.key


def _overlaps(plans: tuple[SparsityPlan, ...]) -> list[str]:
    """``"key (method) and key (method)"`` for every pair of entries of different plans that overlap."""
    seen_keys: dict[str, str] = {}
    seen_modules: dict[str, tuple[str, str]] = {}
    clashes: list[str] = []
    for p in plans:
        for e in p.entries:
            if e.key in seen_keys:
                clashes.append(f"{e.key} ({seen_keys[e.key]} and {p.method})")
            for m in e.modules:
                if m in seen_modules and seen_modules[m][0] != e.key:
                    other, method = seen_modules[m]
                    clashes.append(f"{other} ({method}) and {e.key} ({p.method}) both mask {m}")
            seen_keys.setdefault(e.key, p.method)
            for m in e.modules:
                seen_modules.setdefault(m, (e.key, p.method))
    return clashes


def _parts(plans: tuple[SparsityPlan, ...]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for p in plans:  # a composed part contributes its own parts: compositions stay flat
        parts.extend(p.config.parts if isinstance(p.config, ComposedConfig) else [p.config.to_dict()])
    return parts


def _metrics(plan_model: dict[str, Any], entries: list[PlanEntry], model: nn.Module | None) -> dict[str, Any]:
    items = [(e.consumers, e.sparsity, e.site) for e in entries]
    rotations = {e.site: e.rotation for e in entries if e.rotation is not None}
    if model is not None:
        return {**plan_metrics(model, items, rotations=rotations or None), "recomputed_from": "model"}
    sizes = {p: int(s[0]) * int(s[1]) for p, s in plan_model.get("linears", {}).items()}
    out: dict[str, Any] = {"sparsity_model_wide": model_wide([(c, s) for c, s, _ in items], sizes),
                           "recomputed_from": "fingerprint"}
    by_kind: dict[str, list[tuple[float, int]]] = {}
    for consumers, s, site in items:
        by_kind.setdefault(site.split(".", 2)[2], []).extend((s, sizes[p]) for p in consumers if p in sizes)
    for kind, vals in by_kind.items():
        total = sum(n for _, n in vals)
        if total:
            out[f"sparsity.{kind}"] = sum(s * n for s, n in vals) / total
    return out


def merge_plans(a: SparsityPlan, b: SparsityPlan, *more: SparsityPlan, model: nn.Module | None = None) -> SparsityPlan:
    """One plan holding the entries of ``a``, ``b`` (and ``more``), all made for the same model.

    Args:
        a, b, more: plans of one model whose entries mask different modules.
        model: that model, to recompute every metric (``bytes_skipped_frac`` included) exactly as
            calibration does; without it the model-wide and per-site-kind sparsity come from the
            plans' fingerprint and ``bytes_skipped_frac`` is left out (``actlab eval`` measures it).

    Returns:
        A plan with method ``composed``; ``config.parts`` lists the parts' configs, ``extra["composed"]``
        which entries each part gave and its own metrics, ``calibration["parts"]`` each part's provenance.

    Raises:
        PlanError: the plans were made for different models, or entries overlap (each pair is named).

    Example:
        >>> both = actlab.merge_plans(cett_plan, wina_plan, model=model)   # doctest: +SKIP
        >>> actlab.apply_(model, both)                                      # doctest: +SKIP
    """
    plans = (a, b, *more)
    for i, p in enumerate(plans):
        if not isinstance(p, SparsityPlan):
            raise PlanError(f"merge_plans takes SparsityPlan objects, argument {i + 1} is {type(p).__name__}")
    for p in plans[1:]:
        why = fingerprint_mismatch(a.model, p.model)
        if why is not None:
            raise PlanError(f"cannot merge a {p.method} plan made for another model than the {a.method} plan: {why}")
    clashes = _overlaps(plans)
    if clashes:
        more_text = f" (and {len(clashes) - 5} more)" if len(clashes) > 5 else ""
        raise PlanError("cannot merge plans whose entries overlap: " + "; ".join(clashes[:5]) + more_text
                        + ". Calibrate one of them on other sites (e.g. --sites) or drop those entries")
    entries = sorted((e for p in plans for e in p.entries), key=_order)
    _check_entries(entries, where="merged plan")
    metrics = _metrics(a.model, entries, model)
    config = ComposedConfig(parts=tuple(_parts(plans)), sparsity=min(float(metrics["sparsity_model_wide"]), 0.999999))
    extra = {"composed": [{"method": p.method, "config": p.config.to_dict(), "entries": [e.key for e in p.entries],
                           "metrics": dict(p.metrics)} for p in plans]}
    calibration = {"parts": [dict(p.calibration) for p in plans]}
    return SparsityPlan(config=config, model=dict(a.model), entries=entries, metrics=metrics,
                        calibration=calibration, extra=extra)
