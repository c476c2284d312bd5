"""merge_plans: CETT on the down inputs + WINA elsewhere, overlaps refused, metrics recomputed, save/load."""

from __future__ import annotations

import pytest
import torch
from sparsity_helpers import windows

import actlab
from actlab.sparsity.calibrate import prepare
from actlab.sparsity.config import CettConfig, TealConfig, WinaConfig
from actlab.sparsity.metrics import plan_metrics
from actlab.sparsity.plan import SparsityPlan

ELSEWHERE = ("attn.qkv_in", "attn.o_in", "mlp.gate_up_in")


@pytest.fixture(scope="module")
def parts(llama, calib):
    cett = prepare(llama, CettConfig(cett=0.2), calib).plan()
    wina = prepare(llama, WinaConfig(0.3, sites=ELSEWHERE), calib).plan()
    return cett, wina


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_cett_on_down_plus_wina_elsewhere_equals_applying_both(llama, probe, parts):
    cett, wina = parts
    assert {e.site.rsplit(".", 2)[-2] + "." + e.site.rsplit(".", 1)[-1] for e in cett.entries} == {"mlp.down_in"}
    merged = actlab.merge_plans(cett, wina, model=llama)
    assert merged.method == "composed" and [p["method"] for p in merged.config.parts] == ["cett", "wina"]
    assert len(merged.entries) == len(cett.entries) + len(wina.entries)
    assert [e.layer for e in merged.entries] == sorted(e.layer for e in merged.entries)  # model order
    actlab.apply_(llama, merged)
    try:
        got = _logits(llama, probe)
    finally:
        actlab.remove_(llama)
    # both at once, written out by hand: WINA applied as a plan, CETT's thresholds as a capture intervention
    down = {e.site: e.threshold for e in cett.entries}
    actlab.apply_(llama, wina)
    try:
        with actlab.capture(llama, "mlp.down_in", fn=lambda site, x: x * (x.abs() > down[site.name])):
            expected = _logits(llama, probe)
        only_wina = _logits(llama, probe)
    finally:
        actlab.remove_(llama)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.equal(got, only_wina)


def test_merged_metrics_are_recomputed_like_calibration(llama, parts):
    cett, wina = parts
    merged = actlab.merge_plans(cett, wina, model=llama)
    exact = plan_metrics(llama, [(e.consumers, e.sparsity, e.site) for e in merged.entries])
    for k, v in exact.items():
        assert merged.metrics[k] == pytest.approx(v)
    # each part covers its own linears, so the model-wide sparsity adds up
    total = cett.metrics["sparsity_model_wide"] + wina.metrics["sparsity_model_wide"]
    assert merged.metrics["sparsity_model_wide"] == pytest.approx(total)
    without_model = actlab.merge_plans(cett, wina)
    assert without_model.metrics["sparsity_model_wide"] == pytest.approx(exact["sparsity_model_wide"])
    assert without_model.metrics["sparsity.mlp.down_in"] == pytest.approx(exact["sparsity.mlp.down_in"])
    assert "bytes_skipped_frac" not in without_model.metrics
    assert merged.config.sparsity == pytest.approx(exact["sparsity_model_wide"])


def test_overlapping_entries_are_refused_by_name(llama, calib, parts):
    cett, wina = parts
    teal = prepare(llama, TealConfig(0.4), calib).plan()
    with pytest.raises(actlab.PlanError, match=r"overlap: layers\.0\.attn\.qkv_in \(wina and teal\)"):
        actlab.merge_plans(wina, teal)
    with pytest.raises(actlab.PlanError, match=r"layers\.0\.mlp\.down_in \(cett and teal\)"):
        actlab.merge_plans(cett, teal)
    split = prepare(llama, TealConfig(0.4, allocation="greedy", greedy_tokens=64, greedy_step=0.2), calib).plan()
    with pytest.raises(actlab.PlanError, match=r"both mask model\.layers\.0\.self_attn\.q_proj"):
        actlab.merge_plans(wina, split)  # qkv_in as a whole against q/k/v split apart: same modules


def test_plans_of_another_model_are_refused(parts):
    other, _ = actlab.load_model("random:tiny-gpt2")
    gpt2_plan = actlab.calibrate(other, WinaConfig(0.3), windows(other, 4))
    with pytest.raises(actlab.PlanError, match="another model"):
        actlab.merge_plans(parts[0], gpt2_plan)
    with pytest.raises(actlab.PlanError, match="SparsityPlan objects"):
        actlab.merge_plans(parts[0], "plans/wina")


def test_merged_plan_saves_loads_and_merges_again_flat(llama, calib, parts, tmp_path):
    cett, wina = parts
    merged = actlab.merge_plans(cett, wina, model=llama)
    merged.save(tmp_path / "both")
    back = SparsityPlan.load(tmp_path / "both")
    assert back.method == "composed" and back.config == merged.config
    assert [e.key for e in back.entries] == [e.key for e in merged.entries]
    assert all(torch.equal(x.threshold, y.threshold) for x, y in zip(back.entries, merged.entries, strict=True))
    # a composition merged with a third plan: parts stay a flat list
    wina_attn = prepare(llama, WinaConfig(0.05, sites=("attn.o_in",)), calib).plan()
    wina_rest = prepare(llama, WinaConfig(0.2, sites=("attn.qkv_in", "mlp.gate_up_in")), calib).plan()
    nested = actlab.merge_plans(actlab.merge_plans(cett, wina_attn), wina_rest)
    assert [p["method"] for p in nested.config.parts] == ["cett", "wina", "wina"]
