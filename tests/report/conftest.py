"""A summary shaped like the one ``actlab optimize`` writes, with and without the budget's intervals.

The numbers are inputs chosen so that each one is recognisable once formatted (39.4% sparsity, 27.1% of
bytes skipped, 1.45x); the tests check that the report shows them, in one unit each.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest

from actlab.report.runlog import RunLog

_SUMMARY: dict[str, Any] = {
    "model": "random:tiny-llama",
    "method": "teal",
    "chosen": "teal (global)",
    "why": "highest model-wide sparsity with held-out perplexity within +5%",
    "candidates": [
        {"label": "teal (global)", "sparsity_model_wide": 0.4123, "ppl_heldout": 12.9, "ppl_increase_pct_heldout": 4.8},
        {"label": "wina (global)", "sparsity_model_wide": 0.3812, "ppl_heldout": 12.85,
         "ppl_increase_pct_heldout": 4.4},
        {"label": "chess", "sparsity_model_wide": 0.2617, "ppl_heldout": 12.7, "ppl_increase_pct_heldout": 3.1},
    ],
    "max_ppl_increase": 5.0,
    "sparsity_target": None,
    "search_tokens": 2048,
    "eval": {"ppl_dense": 12.31, "ppl": 12.827, "ppl_increase_pct": 4.2, "sparsity_model_wide": 0.394,
             "bytes_skipped_frac": 0.271, "sparsity_calibration": 0.4123, "protocol": "strict", "tokens": 4080,
             "windows": 16, "seq_len": 256, "method": "teal", "sparsity_model_wide_net": 0.394,
             "within_budget": True},
    "speed": {"tok_s_dense": 100.0, "tok_s_sparse": 145.0, "tok_s_hf_dense": 80.0, "speedup": 1.45,
              "speedup_vs_hf": 1.8125, "ceiling": 1.6, "ceiling_frac": 0.9063, "sparsity_model_wide": 0.4123,
              "bytes_skipped_frac": 0.375, "dense_weight_mb": 256.0, "peak_rss_mb": 700.0, "threads": 2,
              "new_tokens": 64, "prompt_tokens": 32, "reps": 3},
    "speedup": 1.45,
    "plan": "runs/opt/plan",
    "report": "runs/opt/report.html",
}

#: the keys the budget engineer's selection adds (actlab.sparsity.select)
_INTERVALS = {"eval": {"ppl_increase_ci_pct": [2.9, 5.6]}, "chosen": {"heldout_ci_pct": [3.3, 4.95]},
              "budget": {"max_ppl_increase": 5.0, "confidence": 0.95, "method": "t-windows"}}


def make_summary(intervals: bool = False, **eval_overrides: Any) -> dict[str, Any]:
    """A fresh summary; ``intervals`` adds the budget's keys; ``eval_overrides`` change eval numbers."""
    s = copy.deepcopy(_SUMMARY)
    s["eval"].update(eval_overrides)
    if intervals:
        s["eval"].update(_INTERVALS["eval"])
        s["candidates"][0].update(_INTERVALS["chosen"])
        s["budget"] = dict(_INTERVALS["budget"])
    log, step = RunLog.start({"model": s["model"], "max_ppl_increase": 5.0, "threads": 2})
    step("profiling activations")
    s["run"] = log.finish()
    return s


def make_candidates(summary: dict[str, Any]) -> list[SimpleNamespace]:
    """Candidates as the job passes them: each with the probes of its quality search."""
    out = []
    for c in summary["candidates"]:
        s = c["sparsity_model_wide"]
        trace = [{"knob": k, "sparsity_model_wide": s * k / 0.5, "ppl": 12.0,
                  "ppl_increase_pct": c["ppl_increase_pct_heldout"] * (k / 0.5) ** 3} for k in (0.3, 0.5, 0.6)]
        out.append(SimpleNamespace(label=c["label"], trace=trace))
    return out


@pytest.fixture
def summary_factory():
    return make_summary


@pytest.fixture
def candidates_factory():
    return make_candidates
