"""Plans as Hub artefacts: save_pretrained writes a card beside the plan, from_pretrained loads it back offline,
push_to_hub uploads exactly the plan files (huggingface_hub's client replaced by a recorder: no network here)."""

from __future__ import annotations

import pytest
import torch

from actlab.outputs import MANIFEST
from actlab.sparsity import hub
from actlab.sparsity.calibrate import calibrate
from actlab.sparsity.config import TealConfig
from actlab.sparsity.errors import PlanError
from actlab.sparsity.plan import PLAN_JSON, THRESHOLDS, SparsityPlan


@pytest.fixture(scope="module")
def plan(llama, calib) -> SparsityPlan:
    p = calibrate(llama, TealConfig(0.5), calib)
    p.calibration["model"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    p.extra["search"] = {"ppl_dense": 20.0, "ppl": 20.2, "ppl_increase_pct": 1.0}
    return p


def test_save_pretrained_round_trip_with_card(plan, tmp_path):
    out = plan.save_pretrained(tmp_path / "p")
    assert sorted(f.name for f in out.iterdir() if f.name != MANIFEST) == [hub.CARD, PLAN_JSON, THRESHOLDS]
    back = SparsityPlan.from_pretrained(out)
    assert back.config == plan.config and back.model == plan.model
    for a, b in zip(plan.entries, back.entries, strict=True):
        assert torch.equal(a.threshold, b.threshold)
    card = (out / hub.CARD).read_text()
    header = card.split("---")[1]
    assert "library_name: actlab" in header and "- teal" in header
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in header
    assert f"{100 * plan.metrics['sparsity_model_wide']:.1f}%" in card
    assert "20.000 -> 20.200 (+1.00%)" in card


def test_card_without_hub_model_has_no_base_model(plan):
    p = SparsityPlan(plan.config, plan.model, plan.entries, plan.metrics, {"model": "random:tiny-llama"}, {})
    card = hub.model_card(p)
    assert "base_model" not in card and "perplexity" not in card
    p.calibration["model"] = "smollm2-135m"  # the embedded default: its Hub origin, loaded by its own name
    card = hub.model_card(p)
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert 'actlab.load_model("smollm2-135m")' in card


def test_from_pretrained_refuses_what_is_neither_dir_nor_repo_id(tmp_path):
    with pytest.raises(PlanError, match="not a Hub repository id"):
        SparsityPlan.from_pretrained(tmp_path / "missing" / "deeper")
    with pytest.raises(PlanError, match="revision"):
        SparsityPlan.from_pretrained(tmp_path, revision="main")


def test_from_pretrained_offline_repo_id_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(PlanError, match="no local directory .nobody/no-such-plan., and cannot fetch"):
        SparsityPlan.from_pretrained("nobody/no-such-plan")


def test_from_pretrained_loads_what_the_hub_client_returns(plan, monkeypatch, tmp_path):
    plan.save_pretrained(tmp_path / "snap")
    seen = {}

    def fake_snapshot(repo_id, revision=None, allow_patterns=None):
        seen.update(repo_id=repo_id, revision=revision, allow=allow_patterns)
        return str(tmp_path / "snap")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    back = SparsityPlan.from_pretrained("me/plan", revision="v1")
    assert back.model == plan.model
    assert seen == {"repo_id": "me/plan", "revision": "v1", "allow": list(hub.HUB_FILES)}


def test_push_to_hub_uploads_the_plan_files(plan, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, allow_patterns, commit_message):
            from pathlib import Path

            names = sorted(f.name for f in Path(folder_path).iterdir() if f.name in allow_patterns)
            back = SparsityPlan.load(folder_path)  # what would land on the Hub loads as a plan
            calls.append(("upload", repo_id, names, commit_message, back.method,
                          "from_pretrained(\"me/teal50\")" in (Path(folder_path) / hub.CARD).read_text()))
            return type("Info", (), {"commit_url": "https://hf.co/me/teal50/commit/abc"})()

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = plan.push_to_hub("me/teal50", private=True, token="t")
    assert url == "https://hf.co/me/teal50/commit/abc"
    assert calls == [("token", "t"), ("create", "me/teal50", True, True),
                     ("upload", "me/teal50", [hub.CARD, PLAN_JSON, THRESHOLDS], "actlab teal sparsity plan", "teal",
                      True)]
    with pytest.raises(PlanError, match="owner/name"):
        plan.push_to_hub("not a repo")
