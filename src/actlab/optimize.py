"""The main job: profile → calibrate (choosing the method) → evaluate → benchmark → one report.

Example:
    >>> summary = optimize("smollm2-135m", out="runs/smollm2-opt", max_ppl_increase=5.0)   # doctest: +SKIP
    >>> summary["plan"], summary["speedup"]                                               # doctest: +SKIP
    ('runs/smollm2-opt/plan', 1.45)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actlab.outputs import claims_output
from actlab.sparsity.select import Budget, Interval, choose, increase_interval

#: files every run writes into ``out`` (checked against files actlab did not write before any work starts)
OUTPUT_FILES = ("plan/plan.json", "plan/thresholds.safetensors", "report.html", "summary.json")

#: candidate methods tried by ``method="auto"``: (label, config dict)
#: default eval tokens: 128 windows of 256 read a plan's increase within about +-0.7 points (16 read +-1.9)
EVAL_TOKENS = 32768
AUTO_CANDIDATES: tuple[dict[str, Any], ...] = (
    {"method": "teal", "allocation": "global"},
    {"method": "wina", "allocation": "global"},
    {"method": "chess"},
)


@dataclass
class Candidate:
    """One calibrated candidate plan and how it did on held-out calibration text."""

    label: str
    plan: Any
    sparsity: float
    ppl: float
    ppl_increase_pct: float
    trace: list[dict[str, float]]
    #: the increase's interval over the held-out windows (the selection policy decides on it)
    ci: Interval | None = None


def _label(cfg: dict[str, Any]) -> str:
    return cfg["method"] + (f" ({cfg['allocation']})" if "allocation" in cfg else "")


def _calibrate_candidate(net: Any, cfg: dict[str, Any], calib: Any, heldout: Any, sparsity: float | None,
                         budget: Budget | None, dense_nll: Any, confidence: float,
                         step: Callable[[str], None]) -> Candidate:
    import actlab
    from actlab.sparsity.config import config_from_dict
    from actlab.sparsity.search import plan_window_nll

    config = config_from_dict({**cfg, "sparsity": sparsity if sparsity is not None else 0.5})
    step(f"calibrating {_label(cfg)}")
    prepared = actlab.prepare(net, config, calib)
    if budget is not None:
        res = actlab.search_quality(net, prepared, heldout, budget.max_ppl_increase, dense_nll=dense_nll,
                                    confidence=budget.confidence, bound=budget.method)
        plan, ppl, trace, ci = res.plan, res.ppl, res.trace, res.ci
    else:
        plan = prepared.plan()
        sparse = plan_window_nll(net, plan, heldout)
        ppl, trace = math.exp(sparse.mean().item()), []
        ci = increase_interval(dense_nll, sparse, confidence) if heldout.shape[0] >= 2 else None
    ppl_dense = math.exp(dense_nll.mean().item())
    return Candidate(_label(cfg), plan, float(plan.metrics.get("sparsity_model_wide", 0.0)), ppl,
                     100.0 * (ppl / ppl_dense - 1.0), trace, ci)


def _eval_with_interval(net: Any, plan: Any, evals: Any, confidence: float) -> dict[str, Any]:
    """The eval split's strict result plus ``ppl_increase_ci_pct``, the interval computed as on held-out text."""
    from actlab.plan_eval import evaluate_plan
    from actlab.sparsity.search import plan_window_nll, window_nll

    dense = window_nll(net, evals)
    ev = evaluate_plan(net, plan, evals, ppl_dense=math.exp(dense.mean().item()))  # measured sparsity
    ci = increase_interval(dense, plan_window_nll(net, plan, evals), confidence) if evals.shape[0] >= 2 else None
    return {**ev.to_dict(), "ppl_increase_ci_pct": ci.as_list() if ci is not None else None}


@claims_output(expect=OUTPUT_FILES)  # locked from the first check to the last write
def optimize(
    model: str = "smollm2-135m",
    out: str | os.PathLike = "runs/optimize",
    max_ppl_increase: float | None = None,
    sparsity: float | None = None,
    method: str = "auto",
    data: str = "default",
    calib_tokens: int = 4096,
    search_tokens: int = 2048,
    confidence: float = 0.95,
    eval_tokens: int | None = None,
    profile_tokens: int = 4096,
    seq_len: int = 256,
    new_tokens: int = 64,
    threads: int | None = None,
    reps: int = 3,
    overwrite: bool = False,
    step: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Find, check and measure a sparsity plan for ``model``; write ``out``/{plan/, report.html, summary.json}.

    Args:
        max_ppl_increase: quality budget in percent (the sparsest plan within it), or
        sparsity: a model-wide sparsity target (the best-quality plan at it). One of the two.
        method: ``auto`` tries :data:`AUTO_CANDIDATES` and keeps the best; or one method name.
        eval_tokens: eval-split tokens the chosen plan is measured on; None: :data:`EVAL_TOKENS`, or the
            whole eval split of a corpus with fewer.
        confidence: the level of the held-out interval whose upper end must be within the budget
            (:mod:`actlab.sparsity.select`); the eval split's interval is reported at the same level.
        overwrite: replace actlab's own earlier outputs in ``out`` (files it did not write are never touched;
            see :mod:`actlab.outputs`). ``out`` is locked against other runs for the whole call.

    Returns:
        The summary (also written as ``summary.json``).
    """
    import actlab
    from actlab.activations.stats import StatsConfig
    from actlab.data.windows import WindowError, make_windows
    from actlab.engine.plan_bench import bench_plan
    from actlab.outputs import check_writable, staged_output, write_json_atomic
    from actlab.preflight import preflight
    from actlab.profile import profile_model
    from actlab.report.optimize_html import render_optimize
    from actlab.report.plots import density_by_layer, histograms
    from actlab.report.runlog import RunLog
    from actlab.sparsity.calibrate import calibration_windows
    from actlab.sparsity.search import window_nll

    run_log, step = RunLog.start(locals(), step)  # the report's Run section: arguments, load, time per stage
    if (max_ppl_increase is None) == (sparsity is None):
        raise actlab.PlanError("give exactly one of max_ppl_increase or sparsity")
    if not 0.5 <= confidence < 1:  # also the eval interval's level when there is no budget
        raise actlab.PlanError(f"confidence must be in [0.5, 1), got {confidence}")
    budget = Budget(max_ppl_increase, confidence) if max_ppl_increase is not None else None
    out = check_writable(out, overwrite=overwrite)
    corpus = actlab.load_corpus(data)
    net, tok = actlab.load_model(model)
    preflight(net, out)  # every later stage's cheapest call, before minutes of profiling
    calib, heldout = calibration_windows(corpus, tok, seq_len, calib_tokens, search_tokens)
    try:
        evals = make_windows(corpus, tok, seq_len, eval_tokens or EVAL_TOKENS, split="eval")
    except WindowError as e:
        if eval_tokens is not None:
            raise WindowError(f"{e} (for optimize's evaluation: lower --eval-tokens)") from None
        evals = make_windows(corpus, tok, seq_len, None, split="eval")  # a small corpus: its whole eval split

    step("profiling activations")
    prof = profile_model(net, calib[: max(1, profile_tokens // seq_len)], config=StatsConfig(), progress=False,
                         tokenizer=tok).to_dict()
    prof.update(model={"name": model}, num_layers=prof["num_layers"])

    dense_heldout = window_nll(net, heldout)
    cfgs = AUTO_CANDIDATES if method == "auto" else ({"method": method},)
    candidates = [_calibrate_candidate(net, c, calib, heldout, sparsity, budget, dense_heldout, confidence, step)
                  for c in cfgs]
    best, why = choose(candidates, budget, sparsity)  # the policy lives in actlab.sparsity.select

    step(f"evaluating {best.label} on the eval split")
    ev = _eval_with_interval(net, best.plan, evals, confidence)
    step("benchmarking decode speed")
    prompt = evals[:1, :32]
    speed = bench_plan(net, best.plan, prompt, new_tokens=new_tokens, reps=reps, num_threads=threads)

    summary = {
        "model": model,
        "method": best.plan.method,
        "chosen": best.label,
        "why": why,
        "candidates": [{"label": c.label, "sparsity_model_wide": c.sparsity, "ppl_heldout": c.ppl,
                        "ppl_increase_pct_heldout": c.ppl_increase_pct,
                        "heldout_ci_pct": c.ci.as_list() if c.ci is not None else None,
                        **({"within_budget": budget.accepts(c.ci) if c.ci is not None else False}
                           if budget is not None else {})} for c in candidates],
        "max_ppl_increase": max_ppl_increase,
        "budget": budget.to_dict() if budget is not None else None,
        "sparsity_target": sparsity,
        "search_tokens": int(heldout.numel()),
        "eval": {**ev, **({"within_budget": ev["ppl_increase_pct"] <= max_ppl_increase}
                          if max_ppl_increase is not None else {})},
        "speed": {k: v for k, v in speed.items() if k != "samples"},
        "speedup": speed["speedup"],
        "plan": str(out / "plan"),
        "report": str(out / "report.html"),
        "run": run_log.finish(),
    }
    with staged_output(out, overwrite=overwrite) as tmp:
        best.plan.save_pretrained(tmp / "plan")  # with its model card: D/plan is a Hub artefact
        images = {"density_by_layer": density_by_layer(prof, tmp / "density_by_layer.png"),
                  "histograms": histograms(prof, tmp / "histograms.png")}
        write_json_atomic(tmp / "summary.json", summary)
        (tmp / "report.html").write_text(render_optimize(summary, candidates, images, tmp), encoding="utf-8")
    return summary
