"""The objective's config from the command line: ``--config FILE.json`` then ``--set field=value``, and the help.

Values are parsed by the config dataclass's field types (numbers, booleans, lists as ``a,b,c``, ``none``), so
a new objective needs nothing here: its config class in ``actlab.train.CONFIGS`` is the whole interface.

Example:
    >>> build_config("deft", None, ["weight=0.5"]).weight     # doctest: +SKIP
    0.5
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any


def objective_names() -> list[str]:
    """The registered objectives, ``dense`` first (the baseline), then alphabetical."""
    import actlab.train.objectives  # noqa: F401  (registers the built-in objectives)
    from actlab.train.config import CONFIGS

    return sorted(CONFIGS, key=lambda n: (n != "dense", n))


def build_config(objective: str | None, config_file: Path | None, sets: list[str]) -> Any:
    """The objective's config from --objective, --config and --set, with every field checked.

    Raises:
        TrainError: unknown objective or field, a value of the wrong type, or a config the class refuses.
    """
    from actlab.train.config import CONFIGS, config_from_dict
    from actlab.train.errors import TrainError

    known = objective_names()
    d: dict[str, Any] = _read_config_file(config_file) if config_file is not None else {}
    named = d.pop("objective", None)
    if objective is not None and named is not None and named != objective:
        raise TrainError(f"--objective {objective} but --config {config_file} is for objective {named!r}; "
                         "give one of them, or make them agree")
    objective = objective or named
    if objective is None:
        raise TrainError(f"give --objective (one of {', '.join(known)}) or a --config file that names one")
    cls = CONFIGS.get(objective)
    if cls is None:
        raise TrainError(f"unknown --objective {objective!r}; use one of {', '.join(known)}")
    fields = field_types(cls)
    for item in sets:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise TrainError(f"--set {item!r} is not field=value (e.g. --set lora_r=16)")
        if key not in fields:
            raise TrainError(f"unknown --set field {key!r} for objective {objective}; its fields are "
                             f"{', '.join(fields)}")
        d[key] = parse_value(key, raw, fields[key])
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise TrainError(f"--config {config_file}: unknown field(s) {', '.join(unknown)} for objective "
                         f"{objective}; its fields are {', '.join(fields)}")
    return config_from_dict({"objective": objective, **d})


def _read_config_file(path: Path) -> dict[str, Any]:
    from actlab.train.errors import TrainError

    try:
        doc = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except OSError as e:
        raise TrainError(f"--config {path} cannot be read ({e.strerror})") from None
    except ValueError as e:
        raise TrainError(f"--config {path} is not JSON ({e})") from None
    if isinstance(doc, dict) and isinstance(doc.get("config"), dict):
        doc = doc["config"]  # a run's train_config.json: repeat its objective config
    if not isinstance(doc, dict):
        raise TrainError(f"--config {path} must hold a JSON object of the objective's fields")
    return dict(doc)


def field_types(cls: type) -> dict[str, Any]:
    """``{field name: type}`` of a config dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, str) for f in dataclasses.fields(cls)}


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_value(key: str, raw: str, tp: Any) -> Any:
    """``raw`` (the text after ``field=``) as the field's type: numbers, booleans, lists as a,b,c, none.

    Example:
        >>> parse_value("lora_targets", "q_proj,v_proj", tuple[str, ...])
        ['q_proj', 'v_proj']
    """
    from actlab.train.errors import TrainError

    raw = raw.strip()
    origin, params = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in params and raw.lower() in ("none", "null", ""):
            return None
        inner = [p for p in params if p is not type(None)]
        for p in inner:
            try:
                return parse_value(key, raw, p)
            except TrainError:
                continue
        raise TrainError(f"--set {key}={raw}: expected {' or '.join(_type_name(p) for p in params)}")
    if origin in (tuple, list):
        elem = params[0] if params else str
        return [parse_value(key, part, elem) for part in raw.split(",") if part.strip()]
    if origin is typing.Literal:
        if raw not in [str(p) for p in params]:
            raise TrainError(f"--set {key}={raw}: use one of {', '.join(str(p) for p in params)}")
        return next(p for p in params if str(p) == raw)
    try:
        if tp is bool:
            if raw.lower() not in _TRUE + _FALSE:
                raise ValueError
            return raw.lower() in _TRUE
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
    except ValueError:
        raise TrainError(f"--set {key}={raw}: expected {_type_name(tp)}") from None
    if tp is str:
        return raw
    try:  # anything else (a dict field): JSON
        return json.loads(raw)
    except ValueError:
        return raw


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "text",
            type(None): "none"}.get(tp, str(tp))




def objectives_help() -> str:
    """One line per registered objective (its config docstring's first line) and its --set fields."""
    from actlab.train.config import CONFIGS, TrainConfig

    base = {f.name for f in dataclasses.fields(TrainConfig)}
    lines = []
    for name in objective_names():
        cls = CONFIGS[name]
        doc = (cls.__doc__ or "").strip().splitlines()
        own = [f"{f.name}={_default(f)}" for f in dataclasses.fields(cls) if f.name not in base]
        first = doc[0].replace("``", "") if doc else ""  # reST literals read as noise in a terminal
        lines.append(f"* {name}: {first}" + (f" Fields: {', '.join(own)}." if own else ""))
    shared = ", ".join(f"{f.name}={_default(f)}" for f in dataclasses.fields(TrainConfig))
    lines.append(f"* every objective also takes: {shared}.")
    return "\n\n".join(lines)


def _default(f: dataclasses.Field) -> str:
    v = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
    if isinstance(v, (tuple, list)):
        return ",".join(map(str, v)) if v else "()"
    return '""' if v == "" else str(v)
