"""JSON round trips of registered config dataclasses, shared by sparsity methods and training objectives.

A config class names itself with a class attribute (``method`` for sparsity, ``objective`` for training);
its JSON form is that name plus every field (tuples as lists). Loading resolves the class through a
registry by that name, never by importing a name found in a file, and reports bad input as the caller's
user-facing error type.

Example:
    >>> from actlab.sparsity.config import TealConfig
    >>> to_json_dict(TealConfig(0.4), "method")["sparsity"]
    0.4
"""

from __future__ import annotations

import dataclasses
from typing import Any


def to_json_dict(cfg: Any, key: str) -> dict[str, Any]:
    """``{key: cfg.<key>, field: value, ...}`` with tuples as lists."""
    d: dict[str, Any] = {key: getattr(cfg, key)}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        d[f.name] = list(v) if isinstance(v, tuple) else v
    return d


def from_json_dict(d: Any, registry: dict[str, type], key: str, error: type[Exception], what: str) -> Any:
    """The config ``d`` describes: its class from ``registry[d[key]]``, lists back to tuples.

    Raises:
        error: ``d`` is not an object with a ``key`` name, the name is unknown, a field is unknown, or the
            class refuses the values (its own ``error`` is passed through unchanged).
    """
    if not isinstance(d, dict) or not isinstance(d.get(key), str):
        article = "an" if what[0] in "aeiou" else "a"
        raise error(f"{article} {what} config must be a JSON object with a '{key}' name, got {d!r:.80}")
    cls = registry.get(d[key])
    if cls is None:
        raise error(f"unknown {what} {d[key]!r}; known: {', '.join(sorted(registry))}")
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k != key}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise error(f"{d[key]}: unknown config field(s) {unknown}; fields are {sorted(fields)}")
    try:
        return cls(**kwargs)
    except error:
        raise
    except (TypeError, ValueError) as e:
        raise error(f"{d[key]}: invalid config: {e}") from e
