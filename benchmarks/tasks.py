"""Downstream accuracy of sparsity plans on the local tasks, with actlab's scorer and lm-eval's harness.

What it measures (SmolLM2-135M by default): ``actlab-cloze`` (acc, perplexity of the word) and ``actlab-mc``
(acc, acc_norm), built from the default corpus's test split (see ``actlab.eval.tasks``), dense and with each
plan applied (masking path), with each scorer; beside them the plan's perplexity on the eval split (strict
protocol). The dense pass is scored once per scorer and shared by every plan.

Usage:
    actlab calibrate --method teal --sparsity 0.5 --out /tmp/plans/teal50      # and wina, cats ...
    python benchmarks/tasks.py --plans /tmp/plans/teal50,/tmp/plans/wina50 --items 100 --threads 1
    python benchmarks/tasks.py --plans /tmp/plans/teal50 --scorers actlab       # without lm-eval
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    """Run the measurement, print a markdown table and write the JSON (``--out``).

    Example:
        python benchmarks/tasks.py --plans /tmp/plans/teal50 --items 50 --scorers actlab
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--plans", default="", help="comma-separated plan directories")
    p.add_argument("--tasks", default="all")
    p.add_argument("--items", type=int, default=100, help="items per task")
    p.add_argument("--scorers", default="actlab,harness")
    p.add_argument("--ppl-tokens", type=int, default=8192, help="eval-split tokens for perplexity (0: skip)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "tasks.json")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    import actlab
    from actlab.data.windows import make_windows
    from actlab.envinfo import machine_line
    from actlab.eval.tasks import build_items, parse_tasks, source_passages
    from actlab.plan_eval import evaluate_plan
    from actlab.task_eval import SCORERS

    torch.set_num_threads(a.threads)
    scorers = [s.strip() for s in a.scorers.split(",") if s.strip()]
    for s in scorers:
        if s not in SCORERS:
            print(f"error: unknown scorer {s!r}; use {', '.join(SCORERS)}", file=sys.stderr)
            return 2
    plans = [Path(x) for x in a.plans.split(",") if x.strip()]
    # `actlab optimize` writes its plan to <out>/plan: name that row after <out>
    names = [x.parent.name if x.name == "plan" else x.name for x in plans]
    loaded = [actlab.SparsityPlan.from_pretrained(x) for x in plans]
    net, tok = actlab.load_model(a.model)
    corpus = actlab.load_corpus("default")
    passages = source_passages(corpus, tok)
    items = {n: build_items(n, corpus, tok, n=a.items, passages=passages) for n in parse_tasks(a.tasks)}
    print("items: " + ", ".join(f"{k} {len(v)}" for k, v in items.items()), file=sys.stderr)

    rows: dict[str, dict[str, Any]] = {"dense": {"plan": None, "scores": {}}}
    for name, path, plan in zip(names, plans, loaded, strict=True):
        rows[name] = {"plan": str(path), "method": plan.method, "scores": {},
                           "sparsity_calibration": plan.metrics.get("sparsity_model_wide")}
    for s in scorers:
        t0 = time.perf_counter()
        rows["dense"]["scores"][s] = {k: r.metrics for k, r in SCORERS[s](net, tok, items, a.batch_size).items()}
        rows["dense"].setdefault("seconds", {})[s] = time.perf_counter() - t0
        print(f"dense {s}: {rows['dense']['scores'][s]}", file=sys.stderr)
        for name, plan in zip(names, loaded, strict=True):
            t0 = time.perf_counter()
            actlab.apply_(net, plan)
            try:
                res = SCORERS[s](net, tok, items, a.batch_size)
            finally:
                actlab.remove_(net)
            rows[name]["scores"][s] = {k: r.metrics for k, r in res.items()}
            rows[name].setdefault("seconds", {})[s] = time.perf_counter() - t0
            print(f"{name} {s}: {rows[name]['scores'][s]}", file=sys.stderr)
    if a.ppl_tokens > 0:
        windows = make_windows(corpus, tok, 256, a.ppl_tokens, split="eval")
        dense_ppl = None
        for name, plan in zip(names, loaded, strict=True):
            r = evaluate_plan(net, plan, windows, ppl_dense=dense_ppl)
            dense_ppl = r.ppl_dense
            rows["dense"]["ppl"] = r.ppl_dense
            rows[name].update(ppl=r.ppl, ppl_increase_pct=r.ppl_increase_pct,
                                   sparsity_model_wide=r.sparsity_model_wide)
        if not plans:
            rows["dense"]["ppl"] = evaluate_plan(net, None, windows).ppl_dense

    n = {k: len(v) for k, v in items.items()}
    head = ["plan", "sparsity", "PPL (eval)"] + [f"{t} {m} ({s})" for s in scorers for t in items
                                     for m in ("acc", "acc_norm") if m != "acc_norm" or t == "actlab-mc"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, row in rows.items():
        sparsity = row.get("sparsity_model_wide", row.get("sparsity_calibration", 0.0)) or 0.0
        cells = [name, f"{100 * sparsity:.1f}%", f"{row['ppl']:.2f}" if "ppl" in row else "-"]
        for s in scorers:
            for t in items:
                for m in ("acc", "acc_norm"):
                    if m == "acc_norm" and t != "actlab-mc":
                        continue
                    cells.append(f"{100 * row['scores'][s][t][m]:.1f}%")
        print("| " + " | ".join(cells) + " |")
    out = {"model": a.model, "items": n, "threads": a.threads, "ppl_tokens": a.ppl_tokens,
           "machine": machine_line(),
           "command": "python benchmarks/tasks.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "rows": rows}
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"machine: {machine_line()}")
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
