"""Plots of benchmarks/functions.json (issue 14) for RESULTS.md: three PNG files, drawn from the measured JSON.

    python benchmarks/functions_plots.py                      # reads benchmarks/functions.json
    python benchmarks/functions_plots.py --json runs/f.json --out runs/plots

1. functions_sparsity_accuracy.png: the share of exact zeros after the activation per function, its test accuracy
   in the label (mean over seeds, default init, Adam), MLP and CNN side by side.
2. functions_lsuv_curves.png: test accuracy during training of the deep plain MLP with SGD, default init against
   LSUV, one panel per function (mean over seeds).
3. functions_ood.png: AUROC of every OOD score against every outlier set on digits (mean over ReLU, GELU and seeds),
   and on SmolLM2 per site.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure

HERE = Path(__file__).resolve().parent


def _mean_by(rows: list[dict], key, value) -> dict:
    groups: dict = defaultdict(list)
    for r in rows:
        v = value(r)
        if v is not None:
            groups[key(r)].append(v)
    return {k: statistics.fmean(v) for k, v in groups.items()}


def sparsity_accuracy(data: dict, path: Path) -> Path:
    fig = Figure(figsize=(10, 4.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, arch in zip(axes, ("mlp", "cnn"), strict=True):
        rows = [r for r in data["digits"] if r["arch"] == arch and r["opt"] == "adam" and r["init"] == "default"]
        acc = _mean_by(rows, lambda r: r["function"], lambda r: r["test_acc"])
        zeros = _mean_by(rows, lambda r: r["function"], lambda r: r["sparsity"]["zeros"])
        fns = sorted(acc, key=lambda f: zeros[f])
        ax.barh(range(len(fns)), [100 * zeros[f] for f in fns],
                color=["C3" if zeros[f] > 0.2 else "C0" for f in fns])
        ax.set_yticks(range(len(fns)), [f"{f}  (acc {100 * acc[f]:.1f}%)" for f in fns], fontsize=8)
        ax.set_title(f"digits {arch.upper()}, Adam, default init", fontsize=10)
        ax.set_xlabel("exact zeros after the activation (%)")
        ax.grid(axis="x", alpha=0.3)
    fig.savefig(path)
    return path


def lsuv_curves(data: dict, path: Path) -> Path:
    rows = [r for r in data["digits"] if r["arch"] == "mlp" and r["opt"] == "sgd"]
    fns = list(dict.fromkeys(r["function"] for r in rows))
    cols = 5
    fig = Figure(figsize=(13, 2.3 * ((len(fns) + cols - 1) // cols)), dpi=90, layout="constrained")
    axes = fig.subplots((len(fns) + cols - 1) // cols, cols, squeeze=False).ravel()
    for ax, fn in zip(axes, fns, strict=False):
        for init, color in (("default", "C0"), ("lsuv", "C3")):
            curves = [r["curve"] for r in rows if r["function"] == fn and r["init"] == init]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            steps = [c[0] for c in curves[0][:n]]
            acc = [100 * statistics.fmean(c[i][1] for c in curves) for i in range(n)]
            ax.plot(steps, acc, color=color, lw=1.4, label=init)
        ax.set_title(fn, fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes[len(fns):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle("deep plain MLP on digits, SGD: test accuracy (%) by step, default init vs LSUV", fontsize=10)
    fig.savefig(path)
    return path


def _heat(ax, table: dict, rows: list[str], cols: list[str], title: str) -> None:
    grid = [[table.get((r, c), float("nan")) for c in cols] for r in rows]
    im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, fontsize=7, rotation=20)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v == v:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title(title, fontsize=9)
    return im


def ood(data: dict, path: Path) -> Path:
    fig = Figure(figsize=(11, 4.4), dpi=100, layout="constrained")
    ax_d, ax_l = fig.subplots(1, 2, width_ratios=(3, 2))
    digits = data["ood_digits"]
    table = _mean_by(digits, lambda r: (r["score"], r["outliers"]), lambda r: r["AUROC"])
    scores = list(dict.fromkeys(r["score"] for r in digits))
    outliers = list(dict.fromkeys(r["outliers"] for r in digits))
    im = _heat(ax_d, table, scores, outliers, "digits MLP (ReLU, GELU): AUROC, mean over both and seeds")
    lm = data["ood_lm"]["rows"]
    table = {(f"{r['site']} {r['score']}", r["outliers"]): r["AUROC"] for r in lm}
    rows = list(dict.fromkeys(f"{r['site']} {r['score']}" for r in lm))
    _heat(ax_l, table, rows, list(dict.fromkeys(r["outliers"] for r in lm)), "SmolLM2 vs prose: AUROC")
    fig.colorbar(im, ax=ax_l, shrink=0.8)
    fig.savefig(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=HERE / "functions.json", help="output of benchmarks/functions.py")
    ap.add_argument("--out", type=Path, default=HERE / "plots", help="folder for the PNG files")
    args = ap.parse_args(argv)
    if not args.json.is_file():
        print(f"error: {args.json} not found; run python benchmarks/functions.py first", file=sys.stderr)
        return 2
    data = json.loads(args.json.read_text())
    missing = [k for k in ("digits", "ood_digits", "ood_lm") if k not in data]
    if missing:
        print(f"error: {args.json} lacks {missing}; rerun benchmarks/functions.py without skipping them",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for draw, name in ((sparsity_accuracy, "functions_sparsity_accuracy.png"),
                       (lsuv_curves, "functions_lsuv_curves.png"), (ood, "functions_ood.png")):
        print(draw(data, args.out / name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
