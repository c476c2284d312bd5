"""The schema of ``plan.json``: each field's JSON type and finiteness, checked on load with errors that name it.

A plan is a promise about a model; a hand-edited or corrupted number (a string, NaN, +inf) must not slip
through into masks or into ``--json`` output, which must stay valid JSON.

Example:
    >>> check_numbers({"sparsity_model_wide": float("nan")}, "metrics", METRIC_NUMBERS, "plan")
    Traceback (most recent call last):
    ...
    actlab.sparsity.errors.PlanError: plan: plan.json field metrics.sparsity_model_wide is nan; it must be a finite number: recalibrate the plan (or restore the plan.json actlab wrote)
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from actlab.sparsity.errors import PlanError

#: plan.json entry fields and their JSON types
ENTRY_FIELDS = {"key": "str", "site": "str", "layer": "int", "kind": "str", "consumers": "strs", "modules": "strs",
                 "threshold_shape": "ints", "sparsity": "number"}
#: metrics that must be numbers (``sparsity.<kind>`` too); any other value just has to be finite where numeric
METRIC_NUMBERS = ("sparsity_model_wide", "bytes_skipped_frac", "sparsity_model_wide_net", "rotation_params")


def is_number(v: Any, integer: bool = False) -> bool:
    """A finite JSON number (bools are not numbers here, though Python says they are)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return isinstance(v, int) if integer else math.isfinite(v)


def check_numbers(d: dict[str, Any], field_name: str, numeric: tuple[str, ...], where: str) -> None:
    """Refuse non-finite numbers anywhere in ``d``, and non-numbers at the ``numeric`` keys."""
    def walk(v: Any, path: str) -> None:
        if isinstance(v, float) and not math.isfinite(v):
            raise PlanError(f"{where}: plan.json field {path} is {v}; it must be a finite number: recalibrate the "
                            "plan (or restore the plan.json actlab wrote)")
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{path}.{k}")
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]")

    walk(d, field_name)
    for k, v in d.items():
        if (k in numeric or k.startswith("sparsity.")) and not is_number(v):
            raise PlanError(f"{where}: plan.json field {field_name}.{k} must be a number, got {v!r:.40}; restore the "
                            "plan.json actlab wrote or recalibrate")


def check_config_fields(root: Path, d: Any) -> None:
    """Each config field has its default's JSON type: a string where a number belongs is refused, naming it."""
    from actlab.sparsity.config import CONFIGS

    cls = CONFIGS.get(d.get("method")) if isinstance(d, dict) else None
    if cls is None:
        return  # config_from_dict names the problem
    for f in dataclasses.fields(cls):
        if f.name not in d or f.default is dataclasses.MISSING:
            continue
        value, default = d[f.name], f.default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = is_number(value, integer=isinstance(default, int))
        elif isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, tuple):
            ok = isinstance(value, list)
        else:
            ok = True
        if not ok:
            raise PlanError(f"{root}: plan.json field config.{f.name} must be {_json_type(default)}, got {value!r:.40}; "
                            "restore the plan.json actlab wrote or recalibrate")


def _json_type(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a finite number"
    return "a string" if isinstance(default, str) else "a list"


def finite_or_null(v: Any) -> Any:
    """``v`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: finite_or_null(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite_or_null(x) for x in v]
    return v


def check_entry_fields(root: Path, e: Any) -> None:
    """A ``plan.json`` entry has every field, each of its JSON type; else a PlanError naming the field."""
    if not isinstance(e, dict):
        raise PlanError(f"{root}: plan.json entry {str(e)[:80]!r} must be an object")
    name = e.get("key", e.get("site", "?"))
    for f, kind in ENTRY_FIELDS.items():
        if f not in e:
            raise PlanError(f"{root}: invalid entry {name}: field {f!r} is missing; restore the plan.json actlab wrote "
                            "or recalibrate")
        value = e[f]
        ok = (is_number(value, integer=kind == "int") if kind in ("int", "number")
              else isinstance(value, str) if kind == "str"
              else isinstance(value, list) and all(is_number(v, integer=True) if kind == "ints" else isinstance(v, str)
                                                   for v in value))
        if not ok:
            want = {"int": "an integer", "number": "a finite number", "str": "a string",
                    "strs": "a list of strings", "ints": "a list of integers"}[kind]
            raise PlanError(f"{root}: invalid entry {name}: field {f!r} must be {want}, got {value!r:.60}; restore "
                            "the plan.json actlab wrote or recalibrate")
    if not isinstance(e.get("rotated", False), bool):
        raise PlanError(f"{root}: invalid entry {name}: field 'rotated' must be true or false")
