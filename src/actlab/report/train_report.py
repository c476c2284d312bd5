"""The report of a training run (``actlab train``): headline numbers, loss / perplexity / density curves, config.

It renders from the run's own files only, ``log.jsonl`` (one JSON object per line: training rows with
``step``, ``tokens``, ``loss``, ``lr``, ``tokens_per_s`` and the objective's metrics; evaluation rows with
``eval_ppl`` and a per-layer ``density`` list) and ``train_config.json`` (the objective config and the loop's
arguments), so a report can be rebuilt from any run directory, finished or killed. Plots are embedded: the
page is one file.

Example:
    >>> rows, meta = load_run("runs/deft")             # doctest: +SKIP
    >>> summarize(rows)["ppl_after"]                    # doctest: +SKIP
    >>> write_train_report("runs/deft")                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from actlab.report.html import _CSS, _esc, _img, _table, pct
from actlab.report.plots import _figure, _layer_axis, _percent_axis

LOG_FILE = "log.jsonl"
CONFIG_FILE = "train_config.json"
#: keys of a training row that are the loop's own, not an objective's metric
_LOOP_KEYS = {"step", "tokens", "loss", "lm_loss", "lr", "tokens_per_s", "elapsed_s", "time_s", "grad_norm", "epoch",
              "kind"}

_EXTRA_CSS = """
.kpis{display:flex;flex-wrap:wrap;gap:.6rem;margin:.8rem 0}
.kpi{border:1px solid #ddd;border-radius:6px;padding:.5rem .8rem;flex:1 1 0;min-width:10rem}
.kpi b{display:block;font-size:1.35rem} .kpi span{color:#555;font-size:.8rem}
"""


def _finite(x: Any) -> bool:
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
        if _finite(step):
            kept = [r for r in kept if _is_eval(r) != _is_eval(row) or not _finite(r.get("step")) or r["step"] < step]
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
    return [r for r in rows if not _is_eval(r) and _finite(r.get("loss"))]


def eval_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if _is_eval(r)]


#: the threshold a single density number refers to when a row holds several (``profile``'s report ε)
REPORT_EPS = "0.01"


def _per_layer(d: Any) -> list[float] | None:
    if isinstance(d, dict) and d and all(str(k).isdigit() for k in d):
        d = [d[k] for k in sorted(d, key=int)]
    if isinstance(d, (list, tuple)) and any(_finite(v) for v in d) and all(_finite(v) or v is None for v in d):
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


def _mean(values: list[float] | None) -> float | None:
    vals = [v for v in values or [] if _finite(v)]
    return sum(vals) / len(vals) if vals else None


def _train_seconds(tr: list[dict[str, Any]]) -> float | None:
    """Time spent training (evaluations excluded): each logged interval's tokens over its tokens/s."""
    total, prev = 0.0, 0
    for r in tr:
        tokens, tps = r.get("tokens"), r.get("tokens_per_s")
        if not (_finite(tokens) and _finite(tps) and tps > 0):
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
    elapsed = next((r[k] for r in reversed(tr) for k in ("elapsed_s", "time_s") if _finite(r.get(k))), None)
    elapsed = elapsed if elapsed is not None else _train_seconds(tr)
    ppl0, ppl1 = first.get("eval_ppl"), last.get("eval_ppl")
    return {
        "steps": int(tr[-1]["step"]) if tr and _finite(tr[-1].get("step")) else 0,
        "tokens": int(tr[-1]["tokens"]) if tr and _finite(tr[-1].get("tokens")) else 0,
        "time_s": elapsed,
        "tokens_per_s": _mean([r["tokens_per_s"] for r in tr if _finite(r.get("tokens_per_s"))]),
        "loss_first": tr[0]["loss"] if tr else None,
        "loss_last": tr[-1]["loss"] if tr else None,
        "ppl_before": ppl0 if _finite(ppl0) else None,
        "ppl_after": ppl1 if _finite(ppl1) and len(ev) > 1 else None,
        "ppl_change_pct": 100.0 * (ppl1 / ppl0 - 1.0) if _finite(ppl0) and _finite(ppl1) and len(ev) > 1 else None,
        "density_before": _mean(d0),
        "density_after": _mean(d1) if len(ev) > 1 else None,
        "density_layers_before": d0,
        "density_layers_after": d1 if len(ev) > 1 else None,
        "zero_frac_before": _mean(zero_fraction(first)) if ev else None,
        "zero_frac_after": _mean(zero_fraction(last)) if len(ev) > 1 else None,
        "evals": len(ev),
    }


# ---------------------------------------------------------------------------------------------- plots


def _metric_keys(tr: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for r in tr:
        keys += [k for k, v in r.items() if k not in _LOOP_KEYS and k not in keys and _finite(v)]
    return keys


def loss_curve(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss against tokens trained; the objective's own terms (density, L1, KL...) in a second panel."""
    tr = [r for r in train_rows(rows) if _finite(r.get("tokens"))]
    if not tr:
        return None
    extra = _metric_keys(tr)
    fig, axes = _figure(1, 2 if extra else 1, (11 if extra else 7, 3.8))
    ax = axes[0][0]
    ax.plot([r["tokens"] for r in tr], [r["loss"] for r in tr], lw=1.2, color="tab:blue", label="total")
    lm = [(r["tokens"], r["lm_loss"]) for r in tr if _finite(r.get("lm_loss"))]
    if any(_finite(r.get("lm_loss")) and abs(r["lm_loss"] - r["loss"]) > 1e-6 for r in tr):  # an extra term
        ax.plot([p[0] for p in lm], [p[1] for p in lm], lw=1, color="tab:orange", label="LM loss")
        ax.legend(fontsize=7)
    ax.set_xlabel("tokens trained")
    ax.set_ylabel("loss (total)")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    if extra:
        ax2 = axes[0][1]
        for k in extra:
            pts = [(r["tokens"], r[k]) for r in tr if _finite(r.get(k))]
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, label=k)
        ax2.set_xlabel("tokens trained")
        ax2.set_title("objective metrics")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7)
    fig.savefig(path)
    return path


def ppl_curve(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Evaluation perplexity against tokens trained (None with no evaluation row)."""
    ev = [r for r in eval_rows(rows) if _finite(r.get("eval_ppl"))]
    if not ev:
        return None
    fig, axes = _figure(1, 1, (7, 3.6))
    ax = axes[0][0]
    ax.plot([r.get("tokens", 0) for r in ev], [r["eval_ppl"] for r in ev], marker="o", ms=4, color="tab:red")
    ax.set_xlabel("tokens trained")
    ax.set_ylabel("perplexity (eval split)")
    ax.set_title("evaluation perplexity")
    ax.grid(alpha=0.3)
    fig.savefig(path)
    return path


def density_curve(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Per-layer density: the first evaluation (before), the last (after), and any between in grey."""
    ev = [(r, d) for r in eval_rows(rows) if (d := layer_density(r)) is not None]
    if not ev:
        return None
    fig, axes = _figure(1, 1, (7, 3.6))
    ax = axes[0][0]
    for _, d in ev[1:-1]:
        ax.plot(range(len(d)), d, color="0.75", lw=0.8)
    ax.plot(range(len(ev[0][1])), ev[0][1], marker="o", ms=4, color="tab:gray", label="before training")
    if len(ev) > 1:
        ax.plot(range(len(ev[-1][1])), ev[-1][1], marker="o", ms=4, color="tab:green",
                label=f"after {ev[-1][0].get('tokens', 0):,} tokens")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"density (|x| > {REPORT_EPS})")
    ax.set_ylim(-0.02, 1.02)
    _percent_axis(ax.yaxis)
    _layer_axis(ax)
    ax.set_title("activation density by layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


# ---------------------------------------------------------------------------------------------- page


def _num(x: Any, fmt: str = "{:.3f}") -> str:
    return fmt.format(x) if _finite(x) else "-"


def _headline(s: dict[str, Any], meta: dict[str, Any]) -> str:
    arrow = "→"
    kpis = [
        (f"{s['tokens']:,}", f"tokens trained ({s['steps']:,} optimizer steps)"),
        (_num(s["time_s"], "{:.0f} s"), "training time" + (f", {s['tokens_per_s']:.0f} tokens/s"
                                                           if _finite(s["tokens_per_s"]) else "")),
        (f"{_num(s['ppl_before'])} {arrow} {_num(s['ppl_after'])}", "perplexity, eval split, before → after"
         + (f" ({s['ppl_change_pct']:+.2f}%)" if s["ppl_change_pct"] is not None else "")),
        (f"{pct(s['density_before'])} {arrow} {pct(s['density_after'])}",
         f"mean density (|x| > {REPORT_EPS}) over layers, before → after"),
    ]
    if any(_finite(v) and v > 0 for v in (s["zero_frac_before"], s["zero_frac_after"])):  # ReLU-family: exact zeros
        kpis.append((f"{pct(s['zero_frac_before'])} {arrow} {pct(s['zero_frac_after'])}",
                     "exact zeros of the MLP activation, before → after"))
    objective = (meta.get("config") or {}).get("objective") or meta.get("objective") or "?"
    model = meta.get("model") or (meta.get("run") or {}).get("base_model") or ""
    return "\n".join([
        f"<h1>Training run: {_esc(objective)}{' on ' + _esc(model) if model else ''}</h1>",
        "<div class='kpis' id='headline'>" + "".join(f"<div class='kpi'><b>{_esc(v)}</b><span>{_esc(k)}</span></div>"
                                                   for v, k in kpis) + "</div>",
    ])


def _value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v) or "(none)"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return "" if v is None else str(v)


#: titles of train_config.json's sections (the loop's names) and of the caller's ``run`` record
_SECTIONS = {"config": "objective config", "args": "loop arguments", "run": "command"}


def _config_tables(meta: dict[str, Any]) -> list[str]:
    """One table per dict-valued key of train_config.json (objective config, loop arguments...), then the rest."""
    parts: list[str] = []
    scalars = [[k, _value(v)] for k, v in meta.items() if not isinstance(v, dict)]
    for key, val in meta.items():
        if isinstance(val, dict):
            title = _SECTIONS.get(key, key)
            parts += [f"<h3>{_esc(title)}</h3>", _table(["field", "value"], [[k, _value(v)] for k, v in val.items()], left=2)]
    if scalars:
        parts += ["<h3>training</h3>", _table(["field", "value"], scalars, left=2)]
    return parts or ["<p class='meta'>No train_config.json in this run directory.</p>"]


def _density_table(s: dict[str, Any]) -> str:
    before, after = s["density_layers_before"] or [], s["density_layers_after"] or []
    n = max(len(before), len(after))
    rows = [[i, pct(before[i]) if i < len(before) else "-", pct(after[i]) if i < len(after) else "-"] for i in range(n)]
    return _table(["layer", "before", "after"], rows, left=0)


def render_train(rows: list[dict[str, Any]], meta: dict[str, Any] | None = None,
                 run: dict[str, Any] | None = None) -> str:
    """One self-contained HTML page for a training run (plots drawn in a temporary directory and embedded).

    ``meta`` is ``train_config.json``; ``run`` what only the caller knows (the model and data names, the
    command), shown as its own table.
    """
    meta = {**(meta or {}), **({"run": run} if run else {})}
    s = summarize(rows)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>actlab train: {_esc((meta.get('config') or {}).get('objective', ''))}</title>"
        f"<style>{_CSS}{_EXTRA_CSS}</style></head><body>",
        _headline(s, meta),
    ]
    captions = (("loss", "Loss", loss_curve), ("ppl", "Perplexity on the eval split", ppl_curve),
                ("density", "Activation density by layer", density_curve))
    with tempfile.TemporaryDirectory(prefix="actlab-train-report-") as tmp:
        for name, caption, draw in captions:
            path = draw(rows, Path(tmp) / f"{name}.png")
            if path is not None:
                parts += [f"<h2>{_esc(caption)}</h2>", _img(path, caption)]
            elif name == "ppl":
                parts += [f"<h2>{_esc(caption)}</h2>", "<p class='meta'>The run evaluated nothing (no eval data).</p>"]
    if s["density_layers_before"]:
        parts += ["<h3>Density per layer</h3>", _density_table(s)]
    ev = eval_rows(rows)
    if ev:
        zeros = any(zero_fraction(r) for r in ev)
        parts += ["<h2>Evaluations</h2>", _table(
            ["step", "tokens", "perplexity", f"mean density (|x| > {REPORT_EPS})"] + (["exact zeros"] if zeros else []),
            [[r.get("step", "-"), f"{r.get('tokens', 0):,}", _num(r.get("eval_ppl")), pct(_mean(layer_density(r)))]
             + ([pct(_mean(zero_fraction(r)))] if zeros else []) for r in ev], left=0)]
    parts += ["<h2>Configuration</h2>", *_config_tables(meta),
              f"<p class='meta'>Machine-readable: <code>{LOG_FILE}</code> and <code>{CONFIG_FILE}</code> beside this "
              "file; the trained model is this directory (<code>actlab eval --model DIR</code>).</p>",
              "</body></html>"]
    return "\n".join(parts)


def write_train_report(out_dir: str | Path, path: str | Path | None = None, run: dict[str, Any] | None = None) -> Path:
    """Render ``out_dir``'s log and config into ``path`` (default ``out_dir/report.html``), atomically.

    ``run``: see :func:`render_train`. Returns the path.
    """
    rows, meta = load_run(out_dir)
    path = Path(path) if path is not None else Path(out_dir) / "report.html"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(render_train(rows, meta, run), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
