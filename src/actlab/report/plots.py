"""Plots of a profile (a ``profile.json`` dict) and of the optimize quality curve, as PNG files.

Each function takes its data and a path, draws one figure and returns the path.
matplotlib is used with the Agg backend through its object API, so nothing global changes.
Fractions are drawn as percentages on every axis, the unit the reports' text and tables use.

Example:
    >>> paths = draw_all(profile, "runs/profile")   # doctest: +SKIP
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

KIND_ORDER = ("attn.qkv_in", "attn.o_in", "mlp.gate_up_in", "mlp.in", "mlp.act_out", "mlp.down_in", "resid_out")


def _figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (7.0, 4.0)) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _percent_axis(axis: Any, xmax: float = 1.0) -> None:
    """Label an axis holding fractions (``xmax=1``) or percentages (``xmax=100``) in percent."""
    from matplotlib.ticker import FuncFormatter

    # %g: "40%" on linear axes and "0.01%" on log ones, where a fixed number of decimals shows 0.0%
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{100.0 * v / xmax:.4g}%"))


def _layer_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _by_kind(profile: dict) -> dict[str, list[tuple[int, dict]]]:
    """site kind -> [(layer, site stats)] sorted by layer."""
    out: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for s in profile["sites"].values():
        out[s["kind"]].append((s["layer"], s))
    return {k: sorted(out[k], key=lambda t: t[0]) for k in KIND_ORDER if k in out}


def _pick_layers(n: int, k: int = 4) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def density_by_layer(profile: dict, path: Path, eps: tuple[str, ...] | None = None) -> Path:
    """Fraction of |x| > ε by layer, one line per site kind, one panel per ε."""
    kinds = _by_kind(profile)
    first = next(iter(profile["sites"].values()))
    keys = list(first["density"])
    eps = eps or tuple(keys[i] for i in _pick_layers(len(keys), 3))
    fig, axes = _figure(1, len(eps), (4.2 * len(eps), 3.6))
    for ax, e in zip(axes[0], eps, strict=False):
        for kind, rows in kinds.items():
            ax.plot([r[0] for r in rows], [r[1]["density"][e] for r in rows], marker=".", label=kind)
        ax.set_title(f"density: |x| > {float(e):.3g}")
        ax.set_xlabel("layer")
        ax.set_ylim(-0.02, 1.02)
        _percent_axis(ax.yaxis)
        _layer_axis(ax)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("entries above ε (%)")
    # outside the panels: inside, the lines of some site kinds always ran under it
    fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize=7, loc="outside right center")
    fig.savefig(path)
    return path


def histograms(profile: dict, path: Path) -> Path:
    """|x| histograms on log-spaced bins, one panel per site kind, a few layers each."""
    kinds = _by_kind(profile)
    edges = profile["histogram_edges"]
    centers = [(edges[i] * edges[i + 1]) ** 0.5 for i in range(len(edges) - 1)]
    cols = 3
    rows_n = (len(kinds) + cols - 1) // cols
    fig, axes = _figure(rows_n, cols, (13, 3.3 * rows_n))
    fig.supylabel("share of entries per bin (%)", fontsize=9)
    flat = [ax for row in axes for ax in row]
    for ax, (kind, rows) in zip(flat, kinds.items(), strict=False):
        for i in _pick_layers(len(rows)):
            layer, s = rows[i]
            counts = s["histogram"]["counts"]
            total = max(sum(counts), 1)
            ax.plot(centers, [c / total for c in counts], label=f"layer {layer}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(kind)
        ax.set_xlabel("|x|")
        _percent_axis(ax.yaxis)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in flat[len(kinds):]:
        ax.set_visible(False)
    fig.savefig(path)
    return path


def residual_magnitude(profile: dict, path: Path) -> Path:
    """Max and median |x| of the residual stream by layer: where massive activations appear."""
    rows = _by_kind(profile).get("resid_out", [])
    fig, axes = _figure(1, 1, (7, 3.6))
    ax = axes[0][0]
    layers = [r[0] for r in rows]
    ax.plot(layers, [r[1]["absmax"] for r in rows], marker="o", label="max |x|")
    ax.plot(layers, [r[1]["quantiles"]["0.5"] for r in rows], marker=".", label="median |x|")
    ax.axhline(profile["massive_config"]["abs_threshold"], color="gray", ls="--", lw=0.8, label="massive: abs threshold")
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    _layer_axis(ax)
    ax.set_title("residual stream magnitude (resid_out)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def neuron_frequency(profile: dict, path: Path) -> Path:
    """Per-neuron activation frequency, sorted (rank plot): hot, cold and dead neurons."""
    neurons = profile["neurons"]
    names = list(neurons)
    fig, axes = _figure(1, 1, (7, 3.8))
    ax = axes[0][0]
    for i in _pick_layers(len(names), 5):
        n = neurons[names[i]]
        freq = n["frequency_sorted"]
        ax.plot(range(1, len(freq) + 1), freq, label=f"{names[i]} (dead {n['dead']})")
    ax.set_xscale("log")
    ax.set_xlabel("neuron rank")
    first = neurons[names[0]] if names else {"eps": 0}
    ax.set_ylabel(f"tokens with |x| > {first['eps']:g} (%)")
    _percent_axis(ax.yaxis)
    ax.set_title("neuron activation frequency (rank plot)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path)
    return path


def cett_curves(profile: dict, path: Path) -> Path | None:
    """CETT against the sparsity reached at each threshold, for MLP down inputs."""
    rows = [(layer, s) for layer, s in _by_kind(profile).get("mlp.down_in", []) if s.get("cett")]
    if not rows:
        return None
    fig, axes = _figure(1, 1, (7, 3.8))
    ax = axes[0][0]
    for i in _pick_layers(len(rows), 5):
        layer, s = rows[i]
        ax.plot(s["cett"]["sparsity"], s["cett"]["cett"], marker=".", label=f"layer {layer}")
    ax.set_xlabel("sparsity: neurons with output norm ≤ t (%)")
    _percent_axis(ax.xaxis)
    ax.set_ylabel("CETT(t)")
    ax.set_title("CETT of MLP down inputs (Sparsing Law)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path)
    return path


def quality_curve(data: dict[str, Any], path: Path) -> Path | None:
    """Perplexity increase against model-wide sparsity: every search probe, the chosen plan, the budget.

    ``data`` is :func:`actlab.report.optimize_html.curve_data`'s dict (percent on both axes); None when it
    holds no point. The eval split's measurement of the chosen plan is drawn beside its held-out point,
    with its interval when the summary has one, so a budget that did not hold on new text shows as such.
    """
    series = [s for s in data["series"] if s["points"]]
    if not series:
        return None
    fig, axes = _figure(1, 1, (8, 4.2))
    ax = axes[0][0]
    # the dense model is every curve's origin: it anchors the scale when a run made no probes
    ax.plot([0.0], [0.0], marker="s", ms=6, color="gray", ls="none", label="dense")
    for s in series:
        ax.plot([p[0] for p in s["points"]], [p[1] for p in s["points"]], marker="o", ms=4, lw=1, label=s["label"])
    if data.get("budget_pct") is not None:
        ax.axhline(data["budget_pct"], color="crimson", ls="--", lw=1, label=f"budget +{data['budget_pct']:g}%")
    if data.get("target_sparsity_pct") is not None:
        ax.axvline(data["target_sparsity_pct"], color="crimson", ls="--", lw=1,
                   label=f"target {data['target_sparsity_pct']:g}% sparsity")
    ch = data.get("chosen")
    if ch:
        ax.plot([ch["sparsity_pct"]], [ch["increase_pct"]], marker="*", ms=16, color="gold", mec="black",
                ls="none", zorder=5, label=f"chosen: {ch['label']} (held-out)")
        _interval(ax, ch, "black")
    ev = data.get("eval")
    if ev:
        ax.plot([ev["sparsity_pct"]], [ev["increase_pct"]], marker="D", ms=7, color="tab:red", mec="black",
                ls="none", zorder=5, label="chosen plan on the eval split")
        _interval(ax, ev, "tab:red")
    # keep the chosen region readable: probes far above the budget would flatten everything else
    top = data.get("y_max_pct")
    if top is not None:
        marked = [m for m in (ch, ev) if m]
        bottom = min([0.0] + [p[1] for s in series for p in s["points"]]
                     + [m["increase_pct"] for m in marked] + [m["ci_pct"][0] for m in marked if m.get("ci_pct")])
        ax.set_ylim(bottom - 0.05 * (top - bottom), top)
    xs = [p[0] for s in series for p in s["points"]] + [m["sparsity_pct"] for m in (ch, ev) if m]
    ax.set_xlim(-2.0, min(102.0, 1.15 * max(xs + [data.get("target_sparsity_pct") or 0.0]) + 5.0))
    _percent_axis(ax.xaxis, 100)
    _percent_axis(ax.yaxis, 100)
    ax.set_xlabel("model-wide sparsity (%)")
    ax.set_ylabel("perplexity increase (%)")
    ax.set_title("quality / sparsity on held-out calibration text (search probes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(path)
    return path


def _interval(ax: Any, point: dict[str, Any], color: str) -> None:
    ci = point.get("ci_pct")
    if ci:
        y = point["increase_pct"]
        ax.errorbar([point["sparsity_pct"]], [y], yerr=[[y - ci[0]], [ci[1] - y]], color=color, capsize=4, lw=1,
                    zorder=4)


def draw_all(profile: dict, out_dir: str | Path) -> dict[str, Path]:
    """Draw every plot into ``out_dir``; returns name -> path of the PNGs written."""
    out_dir = Path(out_dir)
    jobs = {
        "density_by_layer": density_by_layer,
        "histograms": histograms,
        "residual_magnitude": residual_magnitude,
        "neuron_frequency": neuron_frequency,
        "cett": cett_curves,
    }
    written = {}
    for name, fn in jobs.items():
        path = fn(profile, out_dir / f"{name}.png")
        if path is not None:
            written[name] = path
    return written
