"""The main job on a tiny model: a plan, a summary and a report with every section, written atomically."""

import json

import pytest

import actlab
from actlab.data.windows import WindowError
from actlab.optimize import optimize

SMALL = dict(calib_tokens=512, search_tokens=256, eval_tokens=256, profile_tokens=256, seq_len=64,
             new_tokens=4, reps=1, threads=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "notes.txt"
    path.write_text("Sparse activations make decoding faster when kernels skip the zeros. " * 400)
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("opt") / "run"
    return out, optimize("random:tiny-llama", out=out, max_ppl_increase=5.0, data=corpus, **SMALL)


def test_writes_plan_summary_and_report(run):
    out, summary = run
    assert {p.name for p in out.iterdir()} >= {"plan", "report.html", "summary.json", "quality_curve.png"}
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    model, _ = actlab.load_model("random:tiny-llama")
    plan = actlab.SparsityPlan.load(out / "plan")
    assert plan.method == summary["method"]
    actlab.apply_(model, plan)
    actlab.remove_(model)


def test_auto_tries_every_candidate_and_keeps_the_sparsest_within_budget(run):
    _, summary = run
    cands = summary["candidates"]
    assert [c["label"] for c in cands] == ["teal (global)", "wina (global)", "chess"]
    # the policy: the upper end of each candidate's held-out interval, not its point estimate, keeps the budget
    within = [c for c in cands if c["heldout_ci_pct"][1] <= 5.0 + 1e-9]
    assert within, cands
    assert [c["within_budget"] for c in cands] == [c in within for c in cands]
    assert summary["chosen"] == max(within, key=lambda c: c["sparsity_model_wide"])["label"]
    for c in cands:
        lo, hi = c["heldout_ci_pct"]
        assert lo <= c["ppl_increase_pct_heldout"] <= hi
    assert summary["budget"] == {"max_ppl_increase": 5.0, "confidence": 0.95, "method": "t-windows"}
    lo, hi = summary["eval"]["ppl_increase_ci_pct"]
    assert lo <= summary["eval"]["ppl_increase_pct"] <= hi
    for key in ("tok_s_dense", "tok_s_sparse", "tok_s_hf_dense", "speedup", "ceiling", "ceiling_frac"):
        assert summary["speed"][key] > 0, key
    assert summary["eval"]["protocol"] == "strict"
    assert isinstance(summary["eval"]["within_budget"], bool)


def test_report_has_every_section(run):
    out, _ = run
    html = (out / "report.html").read_text()
    for heading in ("Candidates", "Quality against sparsity", "Decode speed", "Activation density by layer"):
        assert heading in html, heading
    assert html.count("data:image/png;base64,") >= 3


def test_one_method_at_a_sparsity(tmp_path, corpus):
    summary = optimize("random:tiny-llama", out=tmp_path / "r", sparsity=0.3, method="teal", data=corpus, **SMALL)
    assert [c["label"] for c in summary["candidates"]] == ["teal"]
    assert summary["eval"]["sparsity_model_wide"] == pytest.approx(0.3, abs=0.05)
    assert summary["budget"] is None and "within_budget" not in summary["candidates"][0]
    assert len(summary["candidates"][0]["heldout_ci_pct"]) == 2  # the interval is reported without a budget too


def test_both_or_neither_target_is_refused_and_nothing_written(tmp_path, corpus):
    for kw in ({}, {"sparsity": 0.5, "max_ppl_increase": 5.0}):
        with pytest.raises(actlab.PlanError, match="exactly one"):
            optimize("random:tiny-llama", out=tmp_path / "r", data=corpus, **kw, **SMALL)
    assert not (tmp_path / "r").exists()


def test_a_bad_budget_or_confidence_is_refused_before_anything_runs(tmp_path, corpus):
    for kw, match in (({"max_ppl_increase": -1.0}, "must be positive"),
                      ({"max_ppl_increase": 5.0, "confidence": 1.5}, "confidence"),
                      ({"sparsity": 0.5, "confidence": 0.2}, "confidence")):
        with pytest.raises(actlab.PlanError, match=match):
            optimize("random:tiny-llama", out=tmp_path / "r", data=corpus, **kw, **SMALL)
    assert not (tmp_path / "r").exists()


def test_summary_bytes_skipped_frac_is_the_plans_own(run):
    """One definition: the benchmark section reports the saved plan's ``bytes_skipped_frac``; the eval
    section's is the same function on the sparsity measured on the eval split."""
    out, summary = run
    plan = actlab.SparsityPlan.load(out / "plan")
    assert summary["speed"]["bytes_skipped_frac"] == pytest.approx(plan.metrics["bytes_skipped_frac"])
    assert summary["speed"]["ceiling"] == pytest.approx(1 / (1 - plan.metrics["bytes_skipped_frac"]))
    assert 0 < summary["eval"]["bytes_skipped_frac"] < 1


def test_default_eval_takes_a_small_corpus_whole_and_an_explicit_excess_is_refused(tmp_path, corpus):
    small = {k: v for k, v in SMALL.items() if k != "eval_tokens"}
    summary = optimize("random:tiny-llama", out=tmp_path / "r", sparsity=0.3, method="teal", data=corpus, **small)
    assert summary["eval"]["ppl_increase_ci_pct"] is not None  # evaluated, on the whole (small) eval split
    with pytest.raises(WindowError, match="--eval-tokens"):
        optimize("random:tiny-llama", out=tmp_path / "r2", sparsity=0.3, method="teal", data=corpus,
                 **{**small, "eval_tokens": 10_000_000})
    assert not (tmp_path / "r2").exists()
