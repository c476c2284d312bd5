"""The ``optimize`` report: what was chosen and why, quality, speed, the activations behind it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actlab.report.html import _CSS, _esc, _img, _table


def _quality_curve(candidates: list[Any], path: Path) -> Path | None:
    """Held-out perplexity increase against model-wide sparsity, from every probe of every candidate."""
    from matplotlib.figure import Figure

    # keys as ``actlab.sparsity.search`` writes each probe
    if not any("sparsity_model_wide" in t for c in candidates for t in c.trace):
        return None
    fig = Figure(figsize=(7, 3.8), dpi=110, layout="constrained")
    ax = fig.subplots()
    for c in candidates:
        pts = sorted((t["sparsity_model_wide"], t["ppl_increase_pct"]) for t in c.trace if "sparsity_model_wide" in t)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=c.label)
    ax.set_xlabel("model-wide sparsity")
    ax.set_ylabel("held-out perplexity increase (%)")
    ax.set_title("quality / sparsity (quality-search probes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def _budget_note(summary: dict[str, Any]) -> str:
    """Say so when the eval split disagrees with the held-out text the budget was met on."""
    ev, budget = summary["eval"], summary.get("max_ppl_increase")
    if budget is None or ev.get("within_budget", True):
        return ""
    return (f"<p><b>Note:</b> on the evaluation split perplexity rises {ev['ppl_increase_pct']:+.2f}%, more than the "
            f"+{budget:g}% budget it met on the held-out calibration text ({summary['search_tokens']:,} tokens): "
            "two small samples of text disagree by a few points. Raise <code>--search-tokens</code> for a closer "
            "match, or ask for a smaller budget.</p>")


def render_optimize(summary: dict[str, Any], candidates: list[Any], images: dict[str, Path], out_dir: Path) -> str:
    """One self-contained HTML page for the optimize job."""
    curve = _quality_curve(candidates, out_dir / "quality_curve.png")
    ev, sp = summary["eval"], summary["speed"]
    cand_rows = [[c["label"], c["sparsity_model_wide"], c["ppl_heldout"], c["ppl_increase_pct_heldout"]]
                 for c in summary["candidates"]]
    hf = sp.get("tok_s_hf_dense")
    speed_rows = [
        ["actlab engine, dense", sp["tok_s_dense"], 1.0],
        ["actlab engine, sparse kernels", sp["tok_s_sparse"], sp["speedup"]],
    ]
    if hf:
        speed_rows.append(["HF transformers generate, dense", hf, hf / sp["tok_s_dense"]])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>actlab optimize: {_esc(summary['model'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Sparsity plan for {_esc(summary['model'])}</h1>",
        f"<p>Chosen: <b>{_esc(summary['chosen'])}</b>: {_esc(summary['why'])}. Plan: <code>{_esc(summary['plan'])}</code>.</p>",
        "<h2>Candidates (held-out calibration text)</h2>",
        _table(["method", "model-wide sparsity", "perplexity", "increase %"], cand_rows),
        f"<h2>Quality on the evaluation split ({_esc(ev['protocol'])} protocol, {ev['tokens']:,} tokens)</h2>",
        _table(["perplexity dense", "perplexity sparse", "increase %", "model-wide sparsity", "weight bytes skipped"],
               [[ev["ppl_dense"], ev["ppl"], ev["ppl_increase_pct"], ev["sparsity_model_wide"], ev["bytes_skipped_frac"]]],
               left=0),
        _budget_note(summary),
        f"<h2>Decode speed ({sp['threads']} threads, {sp['new_tokens']} new tokens, median of {sp['reps']} interleaved rounds)</h2>",
        _table(["engine", "tokens/s", "× actlab dense"], speed_rows),
        f"<p>Memory-traffic ceiling of this plan: {sp['ceiling']:.2f}× (dense bytes / bytes still read per token); "
        f"reached {sp['ceiling_frac']:.0%}. Peak resident memory {sp['peak_rss_mb']:.0f} MB.</p>",
    ]
    if curve is not None:
        parts += ["<h2>Quality against sparsity</h2>", _img(curve, "quality curve")]
    for name, caption in (("density_by_layer", "Activation density by layer"), ("histograms", "|x| histograms")):
        if name in images:
            parts += [f"<h2>{caption}</h2>", _img(images[name], caption)]
    parts.append("</body></html>")
    return "\n".join(parts)
