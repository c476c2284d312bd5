"""The ``optimize`` report: what was chosen and why, quality, speed, the activations behind it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actlab.report.html import _CSS, _esc, _img, _table


def _quality_curve(candidates: list[Any], path: Path) -> Path | None:
    """Held-out perplexity increase against model-wide sparsity, from every probe of every candidate."""
    from matplotlib.figure import Figure

    probes = [(c.label, t) for c in candidates for t in c.trace if "sparsity" in t and "ppl" in t]
    if not probes:
        return None
    fig = Figure(figsize=(7, 3.8), dpi=110, layout="constrained")
    ax = fig.subplots()
    for c in candidates:
        pts = sorted((t["sparsity"], t.get("increase_pct", 0.0)) for t in c.trace if "sparsity" in t)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=c.label)
    ax.set_xlabel("model-wide sparsity")
    ax.set_ylabel("held-out perplexity increase (%)")
    ax.set_title("quality / sparsity (quality-search probes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


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
