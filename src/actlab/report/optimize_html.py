"""The ``optimize`` report: what was chosen, what it measured, whether the budget held, how to use it.

One unit per quantity: every fraction (sparsity, bytes skipped, share of the ceiling) is shown as a
percentage, perplexity changes as signed percentages, speed ratios as ×. The page renders from
``summary.json`` (plus the search probes of the candidates, for the curve); the budget's intervals and the
``run`` record are shown when the summary has them.

Example:
    >>> html = render_optimize(summary, candidates, images, Path("runs/opt"))   # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from actlab.report.html import _CSS, _esc, _img, _table, pct
from actlab.report.optimize_next import busy_note, run_section, what_next
from actlab.report.plots import quality_curve

_EXTRA_CSS = """
.kpis{display:flex;flex-wrap:wrap;gap:.6rem;margin:.8rem 0}
.kpi{border:1px solid #ddd;border-radius:6px;padding:.5rem .8rem;flex:1 1 0;min-width:10rem}
.kpi b{display:block;font-size:1.35rem} .kpi span{color:#555;font-size:.8rem}
.verdict{padding:.5rem .8rem;border-radius:6px;border-left:5px solid}
.verdict.ok{background:#eef8ee;border-color:#3a3} .verdict.warn{background:#fff8e6;border-color:#e9a400}
.verdict.bad{background:#fdeeee;border-color:#c33} .verdict.info{background:#eef3fb;border-color:#47c}
tr.chosen td{font-weight:600;background:#fffbe6}
pre{background:#f6f6f6;padding:.6rem .8rem;overflow-x:auto;font-size:.85rem;border-radius:4px}
"""


#: how each budget method of :mod:`actlab.sparsity.select` decides, in words
_RULES = {
    "t-windows": "the upper end of the {level} interval over held-out windows must be within the budget",
    "point": "the measured held-out increase must be within the budget (no margin)",
}


def inc(pct_value: float | None, digits: int = 2) -> str:
    """An increase already in percent, signed: ``inc(4.8) == '+4.80%'``."""
    return "-" if pct_value is None else f"{pct_value:+.{digits}f}%"


def interval(ci: list[float] | None, digits: int = 2) -> str:
    """A [lo, hi] interval in percent: ``interval([2.9, 5.6]) == '+2.90% to +5.60%'``."""
    return "-" if not ci else f"{inc(ci[0], digits)} to {inc(ci[1], digits)}"


def _moved(pct_value: float) -> str:
    """'rose +4.20%' or 'fell by 3.11%': a change in words that reads right either way."""
    return f"rose {inc(pct_value)}" if pct_value >= 0 else f"fell by {-pct_value:.2f}%"


def ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}×"


def _chosen_candidate(summary: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in summary["candidates"] if c["label"] == summary["chosen"]), {})


def _budget(summary: dict[str, Any]) -> float | None:
    return (summary.get("budget") or {}).get("max_ppl_increase", summary.get("max_ppl_increase"))


def _trace(candidate: Any) -> list[dict[str, float]]:
    if isinstance(candidate, dict):
        return candidate.get("trace") or []
    return getattr(candidate, "trace", None) or []


def curve_data(summary: dict[str, Any], candidates: list[Any]) -> dict[str, Any]:
    """What the quality curve draws, in percent: each candidate's probes, the chosen point, eval, budget.

    ``candidates`` are the job's candidates (objects with ``label`` and ``trace``, or summary dicts with a
    ``trace`` key); each candidate's final plan is a point of its series even when it made no probe.
    """
    traces = {(c["label"] if isinstance(c, dict) else c.label): _trace(c) for c in candidates}
    series = []
    for c in summary["candidates"]:
        pts = {(100.0 * t["sparsity_model_wide"], t["ppl_increase_pct"]) for t in traces.get(c["label"], [])
               if "sparsity_model_wide" in t}
        pts.add((100.0 * c["sparsity_model_wide"], c["ppl_increase_pct_heldout"]))
        series.append({"label": c["label"], "points": [list(p) for p in sorted(pts)]})
    ch, ev, budget = _chosen_candidate(summary), summary["eval"], _budget(summary)
    chosen = ({"label": summary["chosen"], "sparsity_pct": 100.0 * ch["sparsity_model_wide"],
               "increase_pct": ch["ppl_increase_pct_heldout"], "ci_pct": ch.get("heldout_ci_pct")} if ch else None)
    evp = {"sparsity_pct": 100.0 * ev["sparsity_model_wide"], "increase_pct": ev["ppl_increase_pct"],
           "ci_pct": ev.get("ppl_increase_ci_pct")}
    shown = [budget or 0.0, evp["increase_pct"], *(evp["ci_pct"] or [])]
    if chosen:
        shown += [chosen["increase_pct"], *(chosen["ci_pct"] or [])]
    # the region that decides is up to a little above the budget and the chosen point; steeper probes run off
    y_max = max(2.5 * budget, 1.3 * max(shown)) if budget else None
    target = summary.get("sparsity_target")
    return {"series": series, "chosen": chosen, "eval": evp, "budget_pct": budget,
            "target_sparsity_pct": 100.0 * target if target is not None else None, "y_max_pct": y_max}


def budget_verdict(summary: dict[str, Any]) -> tuple[str, str]:
    """(css class, sentence): whether the quality budget held on the eval split, in plain words."""
    ev, budget = summary["eval"], _budget(summary)
    x, ci = ev["ppl_increase_pct"], ev.get("ppl_increase_ci_pct")
    ci_txt = f" (95% interval {interval(ci)})" if ci else ""
    if budget is None:
        target = summary.get("sparsity_target")
        return "info", (f"Target {pct(target, 0)} model-wide sparsity, no quality budget: measured "
                        f"{pct(ev['sparsity_model_wide'])} and a perplexity change of {inc(x)}{ci_txt} on the eval split.")
    ch = _chosen_candidate(summary)
    if ch and ch["ppl_increase_pct_heldout"] > budget + 1e-9:
        return "bad", (f"No candidate met the +{budget:g}% budget even on held-out calibration text; the closest, "
                       f"{_esc(summary['chosen'])}, {_moved(ch['ppl_increase_pct_heldout'])} there and "
                       f"{inc(x)}{ci_txt} on the eval split. Ask for a lower sparsity or a larger budget.")
    if x > budget and ci and ci[0] <= budget:
        # the eval windows are a sample too: 16 windows of one plan read +6.8% where 256 read +3.8%
        return "warn", (f"Budget +{budget:g}% not confirmed on the eval split: perplexity {_moved(x)}, but its 95% "
                        f"interval {interval(ci)} still includes the budget, so this sample cannot tell. Raise "
                        "<code>--eval-tokens</code> for a sharper reading.")
    if x > budget:
        held = f" (it met the budget on held-out calibration text: {inc(ch['ppl_increase_pct_heldout'])})" if ch else ""
        return "bad", (f"Budget +{budget:g}% NOT held on the eval split: perplexity {_moved(x)}{ci_txt}{held}. "
                       "Raise <code>--search-tokens</code> or ask for a smaller budget.")
    if ci and ci[1] > budget:
        return "warn", (f"Budget +{budget:g}% held on the eval split at the measured value ({inc(x)}), but the 95% "
                        f"interval reaches {inc(ci[1])}: on other text it may be exceeded.")
    return "ok", f"Budget +{budget:g}% held on the eval split: perplexity {_moved(x)}{ci_txt}."


def _selection_note(summary: dict[str, Any]) -> str:
    """How the plan was chosen (on the held-out calibration text), with its interval when recorded."""
    ch, b = _chosen_candidate(summary), summary.get("budget") or {}
    budget = _budget(summary)
    missed = ch and budget is not None and ch["ppl_increase_pct_heldout"] > budget + 1e-9
    # a "within +P%" reason would contradict the verdict above when no candidate met the budget
    why = "the closest to the budget: no candidate met it" if missed else summary["why"]
    parts = [f"Chosen: <b>{_esc(summary['chosen'])}</b>, {_esc(why)}"]
    if ch:
        ci = ch.get("heldout_ci_pct")
        parts.append(f"; on held-out calibration text ({summary['search_tokens']:,} tokens) perplexity "
                     f"{_moved(ch['ppl_increase_pct_heldout'])}" + (f" (95% interval {interval(ci)})" if ci else ""))
    if b.get("method") and "interval" not in why:  # said once: the reason may already name the rule
        conf = b.get("confidence")
        level = (pct(conf, 0) if conf <= 1 else f"{conf:g}%") if conf else "confidence"
        rule = _RULES.get(b["method"], "{method}").format(level=level, method=_esc(b["method"]))
        parts.append(f"; selection rule ({_esc(b['method'])}): {rule}")
    return "<p>" + "".join(parts) + f". Plan: <code>{_esc(summary['plan'])}</code>.</p>"


def headline(summary: dict[str, Any]) -> str:
    """The first lines: the chosen plan's measured numbers and the budget verdict."""
    ev, sp = summary["eval"], summary["speed"]
    ci = ev.get("ppl_increase_ci_pct")
    kpis = [
        (pct(ev["sparsity_model_wide"]), "model-wide sparsity (measured, eval split)"),
        (pct(ev["bytes_skipped_frac"]), "weight bytes skipped per token"),
        (ratio(sp["speedup"]), f"decode speed vs dense, {_threads(sp['threads'])}"),
        (inc(ev["ppl_increase_pct"]), "perplexity change, eval split" + (f" (95%: {interval(ci)})" if ci else "")),
    ]
    cls, verdict = budget_verdict(summary)
    return "\n".join([
        f"<h1>Sparsity plan for {_esc(summary['model'])}: {_esc(summary['chosen'])}</h1>",
        "<div class='kpis' id='headline'>" + "".join(f"<div class='kpi'><b>{v}</b><span>{_esc(k)}</span></div>"
                                                   for v, k in kpis) + "</div>",
        f"<p class='verdict {cls}' id='verdict'>{verdict}</p>",
        _selection_note(summary),
    ])


def _candidates_table(summary: dict[str, Any]) -> str:
    with_ci = any(c.get("heldout_ci_pct") for c in summary["candidates"])
    header = ["method", "model-wide sparsity", "perplexity", "increase"] + (["95% interval"] if with_ci else [])
    rows = []
    for c in summary["candidates"]:
        row = [c["label"] + (" (chosen)" if c["label"] == summary["chosen"] else ""), pct(c["sparsity_model_wide"]),
               f"{c['ppl_heldout']:.3f}", inc(c["ppl_increase_pct_heldout"])]
        rows.append(row + ([interval(c.get("heldout_ci_pct"))] if with_ci else []))
    html = _table(header, rows)
    chosen = _esc(summary["chosen"] + " (chosen)")
    return html.replace(f"<tr><td class=\"l\">{chosen}", f"<tr class=\"chosen\"><td class=\"l\">{chosen}")


def _eval_table(ev: dict[str, Any]) -> str:
    ci = ev.get("ppl_increase_ci_pct")
    header = ["perplexity dense", "perplexity sparse", "increase"] + (["95% interval"] if ci else []) + [
        "model-wide sparsity", "calibration estimate", "weight bytes skipped"]
    row = [f"{ev['ppl_dense']:.3f}", f"{ev['ppl']:.3f}", inc(ev["ppl_increase_pct"])] + (
        [interval(ci)] if ci else []) + [pct(ev["sparsity_model_wide"]), pct(ev.get("sparsity_calibration")),
                                        pct(ev["bytes_skipped_frac"])]
    return _table(header, [row], left=0)


def _threads(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def _speed(sp: dict[str, Any], run: dict[str, Any] | None) -> list[str]:
    rows = [["actlab engine, dense", f"{sp['tok_s_dense']:.1f}", ratio(1.0)],
            ["actlab engine, sparse kernels", f"{sp['tok_s_sparse']:.1f}", ratio(sp["speedup"])]]
    if sp.get("tok_s_hf_dense"):
        rows.append(["HF transformers generate, dense", f"{sp['tok_s_hf_dense']:.1f}",
                     ratio(sp["tok_s_hf_dense"] / sp["tok_s_dense"])])
    return [
        f"<h2>Decode speed ({_threads(sp['threads'])}, {sp['new_tokens']} new tokens, median of {sp['reps']} "
        "interleaved rounds)</h2>",
        busy_note(run) if run else "",
        _table(["engine", "tokens/s", "speed vs actlab dense"], rows),
        f"<p>Memory-traffic ceiling of this plan: {ratio(sp['ceiling'])} (dense bytes / bytes still read per token, "
        f"{pct(sp.get('bytes_skipped_frac'))} skipped); the kernels reached {pct(sp['ceiling_frac'], 0)} of it. "
        f"Peak resident memory {sp['peak_rss_mb']:.0f} MB.</p>",
    ]


def _curve(summary: dict[str, Any], candidates: list[Any], out_dir: Path) -> list[str]:
    data = curve_data(summary, candidates)
    path = quality_curve(data, out_dir / "quality_curve.png")
    if path is None:
        return []
    # the plotted numbers, machine-readable inside the page (no second file to lose)
    blob = json.dumps(data).replace("</", "<\\/")
    probed = any(len(x["points"]) > 1 for x in data["series"])
    return ["<h2>Quality against sparsity</h2>",
            "<p>" + ("Every probe of the quality search, per candidate" if probed else "Each candidate's plan")
            + "; the star is the chosen plan on held-out calibration text, the diamond the same plan measured on "
            "the eval split"
            + (", with 95% intervals" if data["eval"]["ci_pct"] else "") + "; the dashed line is the "
            + ("budget" if data["budget_pct"] is not None else "sparsity target") + ".</p>",
            _img(path, "quality curve"),
            f"<script type='application/json' id='quality-curve-data'>{blob}</script>"]


def render_optimize(summary: dict[str, Any], candidates: list[Any], images: dict[str, Path], out_dir: Path) -> str:
    """One self-contained HTML page for the optimize job (writes ``quality_curve.png`` into ``out_dir``)."""
    ev = summary["eval"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>actlab optimize: {_esc(summary['model'])}</title><style>{_CSS}{_EXTRA_CSS}</style></head><body>",
        headline(summary),
        "<h2>Candidates (held-out calibration text)</h2>",
        _candidates_table(summary),
        f"<h2>Quality on the evaluation split ({_esc(ev['protocol'])} protocol, {ev['tokens']:,} tokens)</h2>",
        _eval_table(ev),
        *_speed(summary["speed"], summary.get("run")),
        *_curve(summary, candidates, out_dir),
        *what_next(summary),
        *run_section(summary),
    ]
    for name, caption in (("density_by_layer", "Activation density by layer"), ("histograms", "|x| histograms")):
        if name in images:
            parts += [f"<h2>{caption}</h2>", _img(images[name], caption)]
    parts.append("</body></html>")
    return "\n".join(parts)
