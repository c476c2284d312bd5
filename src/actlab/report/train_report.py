"""The report of a training run (``actlab train``): headline numbers, loss / perplexity / density curves, config.

It renders from the run's own files only, ``log.jsonl`` and ``train_config.json`` (the objective config and
the loop's arguments; :mod:`actlab.report.train_log` reads both), so a report can be rebuilt from any run
directory, finished or killed. Plots are embedded: the page is one file.

Example:
    >>> write_train_report("runs/deft")                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from actlab.report.html import _CSS, _esc, _img, _table, pct
from actlab.report.train_log import (
    CONFIG_FILE,
    LOG_FILE,
    REPORT_EPS,
    eval_rows,
    finite,
    layer_density,
    load_run,
    mean,
    read_log,
    summarize,
    zero_fraction,
)
from actlab.report.train_plots import density_curve, loss_curve, ppl_curve

__all__ = ["layer_density", "load_run", "read_log", "render_train", "summarize", "what_next", "write_train_report"]

_EXTRA_CSS = """
.kpis{display:flex;flex-wrap:wrap;gap:.6rem;margin:.8rem 0}
.kpi{border:1px solid #ddd;border-radius:6px;padding:.5rem .8rem;flex:1 1 0;min-width:10rem}
.kpi b{display:block;font-size:1.35rem} .kpi span{color:#555;font-size:.8rem}
pre{background:#f6f6f6;padding:.6rem .8rem;overflow-x:auto;font-size:.85rem;border-radius:4px}
"""


# ---------------------------------------------------------------------------------------------- page


def _num(x: Any, fmt: str = "{:.3f}") -> str:
    return fmt.format(x) if finite(x) else "-"


def _headline(s: dict[str, Any], meta: dict[str, Any]) -> str:
    arrow = "→"
    kpis = [
        (f"{s['tokens']:,}", f"tokens trained ({s['steps']:,} optimizer steps)"),
        (_num(s["time_s"], "{:.0f} s"), "training time" + (f", {s['tokens_per_s']:.0f} tokens/s"
                                                           if finite(s["tokens_per_s"]) else "")),
        (f"{_num(s['ppl_before'])} {arrow} {_num(s['ppl_after'])}", "perplexity, eval split, before → after"
         + (f" ({s['ppl_change_pct']:+.2f}%)" if s["ppl_change_pct"] is not None else "")),
        (f"{pct(s['density_before'])} {arrow} {pct(s['density_after'])}",
         f"mean density (|x| > {REPORT_EPS}) over layers, before → after"),
    ]
    if any(finite(v) and v > 0 for v in (s["zero_frac_before"], s["zero_frac_after"])):  # ReLU-family: exact zeros
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


def what_next(out_dir: Path) -> list[str]:
    """Copy-pasteable commands on the trained model (absolute paths: they work from any directory)."""
    import shlex

    d = out_dir.absolute()
    model = shlex.quote(str(d))
    plan = d / "plan"
    p = f" --plan {shlex.quote(str(plan))}" if (plan / "plan.json").is_file() else ""
    cmds = [f"actlab eval --model {model}{p} --tokens 16384",
            f"actlab profile --model {model} --out {shlex.quote(str(d) + '-profile')}"]
    if p:
        cmds.append(f"actlab bench --model {model}{p} --threads 2")
    return ["<h2>What next</h2>",
            "<p>The trained model is this directory (" + ("with the plan it was trained for in <code>plan/</code>; "
                                                          if p else "") + "every actlab command takes it):</p>",
            "<pre>" + _esc("\n".join(cmds)) + "</pre>"]


def render_train(rows: list[dict[str, Any]], meta: dict[str, Any] | None = None,
                 run: dict[str, Any] | None = None, out_dir: str | Path | None = None) -> str:
    """One self-contained HTML page for a training run (plots drawn in a temporary directory and embedded).

    ``meta`` is ``train_config.json``; ``run`` what only the caller knows (the model and data names, the
    command), shown as its own table; ``out_dir`` the run directory, for the "What next" commands.
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
            [[r.get("step", "-"), f"{r.get('tokens', 0):,}", _num(r.get("eval_ppl")), pct(mean(layer_density(r)))]
             + ([pct(mean(zero_fraction(r)))] if zeros else []) for r in ev], left=0)]
    if out_dir is not None:
        parts += what_next(Path(out_dir))
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
        tmp.write_text(render_train(rows, meta, run, out_dir), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
