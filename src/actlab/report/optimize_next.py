"""The optimize report's closing sections: what to do with the plan, and the run it came from.

Example:
    >>> "\\n".join(what_next(summary))            # doctest: +SKIP
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from actlab.report.html import _esc, _table

DEFAULT_MODEL = "smollm2-135m"


def _plan_path(summary: dict[str, Any]) -> str:
    # absolute, so the commands work from any directory (the report renders in the run's working directory)
    return str(Path(summary["plan"]).absolute())


def commands(summary: dict[str, Any]) -> dict[str, str]:
    """Copy-pasteable shell commands and Python using this run's plan, model, data and threads."""
    args = (summary.get("run") or {}).get("arguments", {})
    plan, model = _plan_path(summary), summary["model"]
    threads = summary["speed"]["threads"]
    m = f" --model {shlex.quote(model)}" if model != DEFAULT_MODEL else ""
    data = args.get("data")
    d = f" --data {shlex.quote(data)}" if data and data != "default" else ""
    p = shlex.quote(plan)
    return {
        "generate": f"actlab generate{m} --plan {p} \"The history of the Python language\"",
        "eval": f"actlab eval{m} --plan {p}{d} --tokens 16384",
        "bench": f"actlab bench{m} --plan {p} --threads {threads}",
        "python": "\n".join([
            "import actlab",
            "",
            f"model, tok = actlab.load_model({model!r})",
            f"plan = actlab.SparsityPlan.load({plan!r})",
            "actlab.apply_(model, plan, kernels=True)   # sparse CPU kernels; kernels=False: masking, any device",
            "ids = tok(\"The history of the Python language\", return_tensors=\"pt\").input_ids",
            "print(tok.decode(model.generate(ids, max_new_tokens=32)[0]))",
            "actlab.remove_(model)                      # the dense model again, bit-identical",
        ]),
    }


def what_next(summary: dict[str, Any]) -> list[str]:
    """The "What next" section: use, re-measure and benchmark the plan."""
    c = commands(summary)
    return [
        "<h2>What next</h2>",
        f"<p>The plan is the directory <code>{_esc(_plan_path(summary))}</code> (<code>plan.json</code> + "
        "<code>thresholds.safetensors</code>); it is refused, with the reason, by any other model.</p>",
        "<p>Generate text with it (masking path, HF <code>generate</code>):</p>",
        f"<pre>{_esc(c['generate'])}</pre>",
        "<p>Measure its quality on more text (add <code>--data FILE</code> for your own):</p>",
        f"<pre>{_esc(c['eval'])}</pre>",
        "<p>Benchmark decoding with the sparse kernels (on an idle machine; speed is a ratio measured in one "
        "run):</p>",
        f"<pre>{_esc(c['bench'])}</pre>",
        "<p>In Python:</p>",
        f"<pre>{_esc(c['python'])}</pre>",
    ]


def _load(values: list[float] | None) -> str:
    return "not reported" if not values else " / ".join(f"{v:.2f}" for v in values)


def _call(run: dict[str, Any]) -> str:
    if run.get("command"):
        return run["command"]
    args = ", ".join(f"{k}={v!r}" for k, v in run.get("arguments", {}).items())
    return f"actlab.optimize.optimize({args})  # from Python"


def busy_note(run: dict[str, Any]) -> str:
    """A warning when the machine was loaded: speed ratios measured beside other jobs are noisy."""
    cpus = run["machine"].get("usable_cpus") or run["machine"].get("cpu_count") or 1
    own = run["machine"].get("torch_threads") or 0  # the load at the end includes this run's own threads
    start, end = ((run.get(k) or [0.0])[0] for k in ("load_start", "load_end"))
    worst = max(start, end - own)
    if worst <= 0.5 * cpus:
        return ""
    return (f"<p class='verdict warn'>The machine was busy (1-minute load of other work up to {worst:.2f} on {cpus} usable CPUs): "
            "decode speed numbers are noisy; re-run <code>actlab bench</code> on an idle machine.</p>")


def run_section(summary: dict[str, Any]) -> list[str]:
    """The "Run" section: command, date, machine, load, threads, versions, wall time per stage."""
    run = summary.get("run")
    if not run:
        return ["<h2>Run</h2>", "<p class='meta'>Not recorded in this summary (written by an older actlab).</p>"]
    mach, v = run["machine"], run["machine"]["versions"]
    rows = [
        # each argument unbroken: a line break inside "--out" would not paste back
        ["command", "<code>" + " ".join(f"<span class='nw'>{_esc(w)}</span>" for w in _call(run).split(" ")) + "</code>"],
        ["date (UTC)", _esc(run["date"])],
        ["CPU", _esc(f"{mach['cpu']}, {mach['usable_cpus']} usable of {mach['cpu_count']} logical CPUs")],
        ["CPU flags", _esc(" ".join(mach["cpu_flags"]) or "-")],
        ["sparse kernels", _esc(mach["kernels"])],
        ["load average (1 / 5 / 15 min)", _esc(f"start {_load(run['load_start'])}, end {_load(run['load_end'])}")],
        ["threads", _esc(f"torch {mach['torch_threads']}, decode benchmark {summary['speed']['threads']}, "
                         f"OMP_NUM_THREADS {mach.get('OMP_NUM_THREADS') or 'unset'}")],
        ["versions", _esc(", ".join(f"{k} {v[k]}" for k in ("actlab", "torch", "transformers", "python")))],
        ["platform", _esc(mach["platform"])],
        ["wall time", _esc(f"{run['wall_s']:.1f} s")],
    ]
    # cells are escaped above and hold markup (code): build the table here instead of _table's escaping
    body = "".join(f"<tr><th class='l'>{_esc(k)}</th><td class='l'>{val}</td></tr>" for k, val in rows)
    stages = _table(["stage", "wall time (s)"], [[s["stage"], f"{s['wall_s']:.1f}"] for s in run["stages"]])
    return ["<style>.nw{white-space:nowrap}</style><h2>Run</h2>", busy_note(run), f"<table id='run'>{body}</table>", "<h3>Wall time per stage</h3>", stages,
            "<p class='meta'>Machine-readable: <code>summary.json</code> beside this file (key <code>run</code>).</p>"]
