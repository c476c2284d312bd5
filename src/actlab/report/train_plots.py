"""The training report's plots: loss, evaluation perplexity and per-layer density against tokens trained.

Each function takes the log's rows and a path, draws one PNG there (matplotlib's object API, as
:mod:`actlab.report.plots`) and returns the path, or None when the rows hold nothing to draw.

Example:
    >>> loss_curve(rows, Path("loss.png"))   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actlab.report.plots import _figure, _layer_axis, _percent_axis
from actlab.report.train_log import LOOP_KEYS, REPORT_EPS, eval_rows, finite, layer_density, train_rows


def _metric_keys(tr: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for r in tr:
        keys += [k for k, v in r.items() if k not in LOOP_KEYS and k not in keys and finite(v)]
    return keys


def loss_curve(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss against tokens trained; the objective's own terms (density, L1, KL...) in a second panel."""
    tr = [r for r in train_rows(rows) if finite(r.get("tokens"))]
    if not tr:
        return None
    extra = _metric_keys(tr)
    fig, axes = _figure(1, 2 if extra else 1, (11 if extra else 7, 3.8))
    ax = axes[0][0]
    ax.plot([r["tokens"] for r in tr], [r["loss"] for r in tr], lw=1.2, color="tab:blue", label="total")
    lm = [(r["tokens"], r["lm_loss"]) for r in tr if finite(r.get("lm_loss"))]
    if any(finite(r.get("lm_loss")) and abs(r["lm_loss"] - r["loss"]) > 1e-6 for r in tr):  # an extra term
        ax.plot([p[0] for p in lm], [p[1] for p in lm], lw=1, color="tab:orange", label="LM loss")
        ax.legend(fontsize=7)
    ax.set_xlabel("tokens trained")
    ax.set_ylabel("loss (total)")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    if extra:
        ax2 = axes[0][1]
        for k in extra:
            pts = [(r["tokens"], r[k]) for r in tr if finite(r.get(k))]
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, label=k)
        ax2.set_xlabel("tokens trained")
        ax2.set_title("objective metrics")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7)
    fig.savefig(path)
    return path


def ppl_curve(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Evaluation perplexity against tokens trained (None with no evaluation row)."""
    ev = [r for r in eval_rows(rows) if finite(r.get("eval_ppl"))]
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
