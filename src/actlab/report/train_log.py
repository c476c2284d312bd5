"""A training run's log, read back: rows of ``log.jsonl``, per-layer density, and the headline numbers.

``log.jsonl`` holds one JSON object per line: training rows (``step``, ``tokens``, ``loss``, ``lm_loss``,
``lr``, ``tokens_per_s``, ``grad_norm`` and the objective's metrics) and evaluation rows (``eval_ppl``,
``density`` as ``{ε: [per layer]}`` at ``profile``'s thresholds, ``zero_frac`` per layer), as
:mod:`actlab.train.loop` writes them.

Example:
    >>> rows, meta = load_run("runs/deft")             # doctest: +SKIP
    >>> summarize(rows)["ppl_after"]                    # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

LOG_FILE = "log.jsonl"
CONFIG_FILE = "train_config.json"
#: keys of a training row that are the loop's own, not an objective's metric
LOOP_KEYS = {"step", "tokens", "loss", "lm_loss", "lr", "tokens_per_s", "elapsed_s", "time_s", "grad_norm", "epoch",
             "kind"}


def finite(x: Any) -> bool:
    """``x`` is a real number (not a bool, None, NaN or infinite)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``log.jsonl``; a torn last line (a killed run) is skipped, any other bad line is an error.

    A resumed run logs again from its checkpoint's step: later rows replace earlier rows of the same kind
    (training or evaluation) at or after that step, so every curve is the run as it finished.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                break  # written while the run was killed
            raise ValueError(f"{path}: line {i + 1} is not JSON") from None
        if isinstance(row, dict):
            rows.append(row)
    return _replayed(rows)


def _is_eval(row: dict[str, Any]) -> bool:
    return "eval_ppl" in row


def _replayed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kept: list[dict[str, Any]] = []
    for row in rows:
        step = row.get("step")
        if finite(step):
            kept = [r for r in kept if _is_eval(r) != _is_eval(row) or not finite(r.get("step")) or r["step"] < step]
        kept.append(row)
    return kept


def load_run(out_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(rows of log.jsonl, train_config.json)`` of a run directory (the config {} when it is missing)."""
    out_dir = Path(out_dir)
    log = out_dir / LOG_FILE
    if not log.is_file():
        raise FileNotFoundError(f"{log} does not exist: not a training run directory")
    cfg_path = out_dir / CONFIG_FILE
    meta = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    return read_log(log), meta if isinstance(meta, dict) else {}


def train_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training rows (those with a loss), in order."""
    return [r for r in rows if not _is_eval(r) and finite(r.get("loss"))]


def eval_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluation rows (those with ``eval_ppl``), in order."""
    return [r for r in rows if _is_eval(r)]


#: the threshold a single density number refers to when a row holds several (``profile``'s report ε)
REPORT_EPS = "0.01"


def _per_layer(d: Any) -> list[float] | None:
    if isinstance(d, dict) and d and all(str(k).isdigit() for k in d):
        d = [d[k] for k in sorted(d, key=int)]
    if isinstance(d, (list, tuple)) and any(finite(v) for v in d) and all(finite(v) or v is None for v in d):
        return [float(v) if v is not None else math.nan for v in d]  # None: a layer with nothing measured
    return None


def layer_density(row: dict[str, Any]) -> list[float] | None:
    """The per-layer density of an evaluation row, as a list ordered by layer (None when it has none).

    ``density`` may be that list, a ``{layer: value}`` dict, ``{ε: [per layer]}`` (density at each of the
    thresholds ``profile`` uses: the one at ε = 0.01 is taken, as in profile's report), or the whole
    :func:`actlab.train.density.layer_density` dict.
    """
    d = row.get("density")
    if isinstance(d, dict) and isinstance(d.get("density"), dict):
        d = d["density"]
    if isinstance(d, dict) and d and not all(str(k).isdigit() for k in d):
        d = d.get(REPORT_EPS, next(iter(d.values())))
    return _per_layer(d)


def zero_fraction(row: dict[str, Any]) -> list[float] | None:
    """The per-layer exact-zero fraction of an evaluation row (ReLU-family activations), when logged."""
    d = row.get("zero_frac")
    if d is None and isinstance(row.get("density"), dict):
        d = row["density"].get("zero_frac")
    return _per_layer(d)


def mean(values: list[float] | None) -> float | None:
    """Mean of the finite values (a layer measured as None is skipped); None when there are none."""
    vals = [v for v in values or [] if finite(v)]
    return sum(vals) / len(vals) if vals else None


def _train_seconds(tr: list[dict[str, Any]]) -> float | None:
    """Time spent training (evaluations excluded): each logged interval's tokens over its tokens/s."""
    total, prev = 0.0, 0
    for r in tr:
        tokens, tps = r.get("tokens"), r.get("tokens_per_s")
        if not (finite(tokens) and finite(tps) and tps > 0):
            return None
        total += (tokens - prev) / tps
        prev = tokens
    return total if tr else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline numbers of a run: tokens, time, loss, perplexity and mean density before and after.

    ``ppl_*``/``density_*`` come from the first and last evaluation rows (None when the run evaluated
    nothing); ``density_*`` is the mean over layers of the row's per-layer ``density``.
    """
    tr, ev = train_rows(rows), eval_rows(rows)
    first, last = (ev[0], ev[-1]) if ev else ({}, {})
    d0, d1 = layer_density(first) if ev else None, layer_density(last) if ev else None
    elapsed = next((r[k] for r in reversed(tr) for k in ("elapsed_s", "time_s") if finite(r.get(k))), None)
    elapsed = elapsed if elapsed is not None else _train_seconds(tr)
    ppl0, ppl1 = first.get("eval_ppl"), last.get("eval_ppl")
    return {
        "steps": int(tr[-1]["step"]) if tr and finite(tr[-1].get("step")) else 0,
        "tokens": int(tr[-1]["tokens"]) if tr and finite(tr[-1].get("tokens")) else 0,
        "time_s": elapsed,
        "tokens_per_s": mean([r["tokens_per_s"] for r in tr if finite(r.get("tokens_per_s"))]),
        "loss_first": tr[0]["loss"] if tr else None,
        "loss_last": tr[-1]["loss"] if tr else None,
        "ppl_before": ppl0 if finite(ppl0) else None,
        "ppl_after": ppl1 if finite(ppl1) and len(ev) > 1 else None,
        "ppl_change_pct": 100.0 * (ppl1 / ppl0 - 1.0) if finite(ppl0) and finite(ppl1) and len(ev) > 1 else None,
        "density_before": mean(d0),
        "density_after": mean(d1) if len(ev) > 1 else None,
        "density_layers_before": d0,
        "density_layers_after": d1 if len(ev) > 1 else None,
        "zero_frac_before": mean(zero_fraction(first)) if ev else None,
        "zero_frac_after": mean(zero_fraction(last)) if len(ev) > 1 else None,
        "evals": len(ev),
    }
