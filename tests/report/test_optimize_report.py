"""The optimize report guides: headline numbers, an honest budget verdict, one unit, the curve, what next, the run."""

from __future__ import annotations

import html as htmllib
import json
import re
from pathlib import Path

import pytest

from actlab.report.optimize_html import budget_verdict, curve_data, render_optimize


def _render(summary, candidates, tmp_path: Path) -> str:
    return render_optimize(summary, candidates, {}, tmp_path)


def _text(fragment: str) -> str:
    """Visible text: tags dropped, entities decoded, whitespace collapsed."""
    return re.sub(r"\s+", " ", htmllib.unescape(re.sub(r"<[^>]+>", " ", fragment))).strip()


def _headline(page: str) -> str:
    return _text(page.split("<h2>", 1)[0])


@pytest.mark.parametrize("intervals", [False, True])
def test_headline_has_the_measured_numbers(tmp_path, summary_factory, candidates_factory, intervals):
    s = summary_factory(intervals=intervals)
    head = _headline(_render(s, candidates_factory(s), tmp_path))
    assert "teal (global)" in head
    for shown in ("39.4%", "27.1%", "1.45×", "2 threads", "+4.20%"):
        assert shown in head, (shown, head)
    assert ("+2.90% to +5.60%" in head) is intervals
    if intervals:  # the chosen candidate's held-out interval and the selection rule, in words
        assert "+3.30% to +4.95%" in head and "95% interval over held-out windows" in head
        s["why"] = "highest model-wide sparsity whose held-out increase (the upper end of its 95% interval) is within +5%"
        assert _headline(_render(s, [], tmp_path)).count("upper end") == 1  # the rule said once


@pytest.mark.parametrize("overrides, intervals, cls, says", [
    ({"ppl_increase_pct": 3.0}, False, "ok", "held on the eval split"),
    ({"ppl_increase_pct": 4.2}, True, "warn", "interval reaches +5.60%"),
    ({"ppl_increase_pct": 8.2, "within_budget": False}, False, "bad", "NOT held"),
    ({"ppl_increase_pct": 8.2, "within_budget": False, "ppl_increase_ci_pct": [6.0, 10.1]}, False, "bad",
     "95% interval +6.00% to +10.10%"),
    ({"ppl_increase_pct": 5.8, "within_budget": False, "ppl_increase_ci_pct": [4.1, 7.5]}, False, "warn",
     "cannot tell"),
])
def test_budget_verdict_follows_the_numbers(summary_factory, overrides, intervals, cls, says):
    got_cls, sentence = budget_verdict(summary_factory(intervals=intervals, **overrides))
    assert got_cls == cls and says in sentence, sentence
    if cls == "bad":
        assert "Budget +5% held" not in sentence


def test_no_candidate_within_budget_is_not_called_held(tmp_path, summary_factory, candidates_factory):
    s = summary_factory(ppl_increase_pct=4.0)
    s["candidates"][0]["ppl_increase_pct_heldout"] = 9.0
    cls, sentence = budget_verdict(s)
    assert cls == "bad" and "No candidate met" in sentence
    assert "within" not in _headline(_render(s, candidates_factory(s), tmp_path))


def test_sparsity_target_makes_no_budget_claim(tmp_path, summary_factory, candidates_factory):
    s = summary_factory()
    s.update(max_ppl_increase=None, sparsity_target=0.4, why="lowest held-out perplexity at 40% model-wide sparsity")
    page = _render(s, candidates_factory(s), tmp_path)
    assert "Target 40% model-wide sparsity" in _headline(page)
    assert "Budget" not in _headline(page)
    assert curve_data(s, candidates_factory(s))["target_sparsity_pct"] == pytest.approx(40.0)


@pytest.mark.parametrize("intervals", [False, True])
def test_fractions_are_percentages_everywhere(tmp_path, summary_factory, candidates_factory, intervals):
    s = summary_factory(intervals=intervals)
    page = _render(s, candidates_factory(s), tmp_path)
    # the measured part of the page (the Run section holds load averages, which are not fractions)
    shown = _text(re.sub(r"<(pre|script|style)\b.*?</\1>", " ", page.split("<h2>Run</h2>")[0], flags=re.S))
    bare = re.findall(r"(?<![\w.+-])[+-]?\d*\.\d+(?![\d%×])", shown)
    # what may stand without a unit: perplexities and tokens/s, all > 1 here
    assert all(float(x) > 1 for x in bare), bare
    for frac, pct in ((0.394, "39.4%"), (0.271, "27.1%"), (0.4123, "41.2%"), (0.9063, "91%"), (0.375, "37.5%")):
        assert f"{frac:g}" not in shown and pct in shown, frac


def test_curve_marks_the_chosen_point_and_the_budget(tmp_path, summary_factory, candidates_factory):
    s = summary_factory(intervals=True)
    page = _render(s, candidates_factory(s), tmp_path)
    blob = re.search(r"<script type='application/json' id='quality-curve-data'>(.*?)</script>", page, re.S)
    data = json.loads(blob.group(1))
    assert data["budget_pct"] == 5.0
    assert data["chosen"]["label"] == "teal (global)"
    assert data["chosen"]["sparsity_pct"] == pytest.approx(41.23)
    assert data["chosen"]["increase_pct"] == pytest.approx(4.8) and data["chosen"]["ci_pct"] == [3.3, 4.95]
    assert data["eval"] == {"sparsity_pct": pytest.approx(39.4), "increase_pct": 4.2, "ci_pct": [2.9, 5.6]}
    teal = next(x for x in data["series"] if x["label"] == "teal (global)")
    assert len(teal["points"]) == 3 and [pytest.approx(41.23), pytest.approx(4.8)] in teal["points"]
    assert data["y_max_pct"] >= 5.6  # budget, chosen point and eval interval stay on the chart
    assert (tmp_path / "quality_curve.png").stat().st_size > 1000


def test_curve_without_probes_still_shows_the_candidates(summary_factory):
    s = summary_factory()
    data = curve_data(s, [])  # a sparsity-target run makes no probes
    assert [len(x["points"]) for x in data["series"]] == [1, 1, 1]


def test_what_next_uses_the_plan_path(tmp_path, summary_factory, candidates_factory):
    s = summary_factory()
    page = htmllib.unescape(_render(s, candidates_factory(s), tmp_path))
    plan = str(Path("runs/opt/plan").absolute())
    assert "<h2>What next</h2>" in page
    for cmd in (f"actlab generate --model random:tiny-llama --plan {plan} ",
                f"actlab eval --model random:tiny-llama --plan {plan}",
                f"actlab bench --model random:tiny-llama --plan {plan} --threads 2",
                f"actlab.SparsityPlan.load('{plan}')", "actlab.apply_(model, plan, kernels=True)",
                "actlab.remove_(model)"):
        assert cmd in page, cmd


def test_run_section_records_machine_load_versions_and_stages(tmp_path, summary_factory, candidates_factory):
    import torch

    s = summary_factory()
    page = _render(s, candidates_factory(s), tmp_path)
    run = _text(page.split("<h2>Run</h2>", 1)[1])
    assert f"torch {torch.__version__}" in run and "transformers " in run and "actlab " in run and "python " in run
    assert "load average" in run and "start " in run and "end " in run
    assert "loading model and data" in run and "profiling activations" in run
    assert s["run"]["machine"]["cpu"] in run and s["run"]["date"] in run


def test_summary_without_run_or_intervals_still_renders(tmp_path, summary_factory, candidates_factory):
    s = summary_factory()
    del s["run"]
    page = _render(s, candidates_factory(s), tmp_path)
    assert "Not recorded" in page and "95%" not in _headline(page)


def test_chosen_row_is_marked(tmp_path, summary_factory, candidates_factory):
    s = summary_factory()
    page = _render(s, candidates_factory(s), tmp_path)
    assert '<tr class="chosen"><td class="l">teal (global) (chosen)</td>' in page


def test_busy_note_discounts_the_runs_own_threads():
    from actlab.report.optimize_next import busy_note

    machine = {"usable_cpus": 2, "torch_threads": 2}
    assert busy_note({"machine": machine, "load_start": [0.3], "load_end": [2.0]}) == ""  # only itself
    assert "busy" in busy_note({"machine": machine, "load_start": [1.8], "load_end": [2.0]})  # others first
    assert "busy" in busy_note({"machine": machine, "load_start": [0.2], "load_end": [4.1]})  # others joined
