"""Plans: save/load round trip for every method; bad plans are refused with nothing applied."""

from __future__ import annotations

import json

import pytest
import torch
from sparsity_helpers import windows

import actlab
from actlab.outputs import MANIFEST, OutputError
from actlab.sparsity.apply import masked_modules
from actlab.sparsity.calibrate import calibrate
from actlab.sparsity.config import CatsConfig, CettConfig, ChessConfig, TealConfig, TopKConfig, WinaConfig
from actlab.sparsity.errors import PlanError
from actlab.sparsity.groups import gated_mlp_paths
from actlab.sparsity.plan import PLAN_JSON, THRESHOLDS, SparsityPlan

CONFIGS = [
    TealConfig(0.5),
    TealConfig(0.4, allocation="greedy", greedy_tokens=64, greedy_step=0.1),
    WinaConfig(0.5, allocation="global", fisher_tokens=64),
    ChessConfig(0.4),
    CatsConfig(0.3),
    TopKConfig(0.5),
    CettConfig(cett=0.2),
]


@pytest.fixture(scope="module")
def teal_plan(llama, calib):
    return calibrate(llama, TealConfig(0.5), calib)


def _same(a: SparsityPlan, b: SparsityPlan) -> None:
    assert a.config == b.config
    assert a.model == b.model
    assert [e.to_json() for e in a.entries] == [e.to_json() for e in b.entries]
    for ea, eb in zip(a.entries, b.entries, strict=True):
        assert torch.equal(ea.threshold, eb.threshold)
    assert a.metrics == pytest.approx(b.metrics)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.method)
def test_save_load_round_trip(llama, calib, tmp_path, config):
    plan = calibrate(llama, config, calib if config.threshold_based else None)
    plan.save(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir() if p.name != MANIFEST) == [PLAN_JSON, THRESHOLDS]
    _same(plan, SparsityPlan.load(tmp_path / "p"))


def test_greedy_path_is_saved(llama, calib, tmp_path):
    plan = calibrate(llama, CONFIGS[1], calib)
    plan.save(tmp_path / "g")
    doc = json.loads((tmp_path / "g" / PLAN_JSON).read_text())
    assert set(doc["extra"]["greedy_path"]) == {"0", "1"}


def test_kernel_entries_are_thresholds_on_inputs_or_activations(llama, calib):
    for config in (CONFIGS[0], CONFIGS[2], CONFIGS[3], CONFIGS[6]):
        plan = calibrate(llama, config, calib)
        for e in plan.kernel_entries():
            assert e.kind in ("input", "act")
            assert e.threshold.dim() in (0, 1)
            assert all(isinstance(llama.get_submodule(p), torch.nn.Linear) for p in e.consumers)
            if e.kind == "act":
                paths = gated_mlp_paths(llama, e.layer)
                assert e.modules == (paths["act"],) and e.consumers == (paths["up"], paths["down"])
                assert e.threshold.shape in ((), (llama.config.intermediate_size,))
    topk = calibrate(llama, TopKConfig(0.5), None)
    assert topk.kernel_entries() == []


def _assert_refused(model, plan_or_dir, match, probe):
    with torch.no_grad():
        before = model(probe).logits
    with pytest.raises(PlanError, match=match):
        plan = SparsityPlan.load(plan_or_dir) if not isinstance(plan_or_dir, SparsityPlan) else plan_or_dir
        actlab.apply_(model, plan)
    assert not masked_modules(model)
    with torch.no_grad():
        assert torch.equal(model(probe).logits, before)


def test_plan_for_another_model_is_refused(teal_plan, probe):
    other, _ = actlab.load_model("random:tiny-llama", seed=1)  # same shapes, other weights
    _assert_refused(other, teal_plan, "different weights", probe)
    qwen, _ = actlab.load_model("random:tiny-qwen2")
    _assert_refused(qwen, teal_plan, "architecture", windows(qwen, 2))


def _set_threshold(path, value):
    """Rewrite the first threshold to ``value`` with a matching checksum, as a hand edit would."""
    import hashlib

    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / THRESHOLDS))
    first = json.loads((path / PLAN_JSON).read_text())["entries"][0]["key"]
    tensors[first] = torch.full_like(tensors[first], value)
    save_file(tensors, str(path / THRESHOLDS))
    sha = hashlib.sha256((path / THRESHOLDS).read_bytes()).hexdigest()
    _edit_json(path, lambda d: d.update(thresholds_sha256=sha))


def _edit_json(path, fn):
    doc = json.loads((path / PLAN_JSON).read_text())
    fn(doc)
    (path / PLAN_JSON).write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda p: (p / PLAN_JSON).write_text((p / PLAN_JSON).read_text()[:200]), "not valid JSON"),
        (lambda p: (p / THRESHOLDS).write_bytes((p / THRESHOLDS).read_bytes()[:100]), "does not match plan.json"),
        (lambda p: (p / THRESHOLDS).unlink(), "missing"),
        (lambda p: (p / PLAN_JSON).unlink(), "no plan.json"),
        (lambda p: _edit_json(p, lambda d: d.update(version=99)), "version 99 is not supported"),
        (lambda p: _edit_json(p, lambda d: d["config"].update(method="magic")), "unknown sparsification method"),
        (lambda p: _edit_json(p, lambda d: d["entries"][0].update(kind="weird")), "unknown kind"),
        (lambda p: _edit_json(p, lambda d: d["entries"][0].update(threshold_shape=[7])), "shape"),
        (lambda p: _edit_json(p, lambda d: d["entries"].pop()), "no entry names"),
        (lambda p: _edit_json(p, lambda d: d["entries"][1].update(modules=d["entries"][0]["modules"])), "two entries|masked by two"),
        (lambda p: _edit_json(p, lambda d: d["entries"][0].pop("site")), "invalid entry"),
        (lambda p: _edit_json(p, lambda d: d["config"].update(sparsity=3.0)), "sparsity must be in"),
        (lambda p: _edit_json(p, lambda d: d["metrics"].update(sparsity_model_wide=float("nan"))),
         r"field metrics.sparsity_model_wide is nan; it must be a finite number"),
        (lambda p: _edit_json(p, lambda d: d["metrics"].update(bytes_skipped_frac=float("inf"))),
         r"metrics.bytes_skipped_frac is inf"),
        (lambda p: _edit_json(p, lambda d: d["metrics"].update(sparsity_model_wide="0.5")),
         r"metrics.sparsity_model_wide must be a number"),
        (lambda p: _edit_json(p, lambda d: d["entries"][0].update(layer="0")), r"field 'layer' must be an integer"),
        (lambda p: _edit_json(p, lambda d: d["entries"][0].update(sparsity="0.5")),
         r"field 'sparsity' must be a finite number"),
        (lambda p: _edit_json(p, lambda d: d["entries"][0].update(sparsity=float("nan"))),
         r"field 'sparsity' must be a finite number"),
        (lambda p: _edit_json(p, lambda d: d["entries"][0].update(consumers="q_proj")), r"'consumers' must be a list"),
        (lambda p: _edit_json(p, lambda d: d["config"].update(sparsity="0.5")),
         r"field config.sparsity must be a finite number"),
        (lambda p: _edit_json(p, lambda d: d["config"].update(greedy_tokens=2.5)),
         r"field config.greedy_tokens must be an integer"),
        (lambda p: _edit_json(p, lambda d: d.update(metrics=[1])), r"'metrics' must be an object"),
        (lambda p: _set_threshold(p, float("inf")), r"\+inf values .* finite"),
        (lambda p: _set_threshold(p, -0.5), "NaN or negative"),
    ],
    ids=["truncated-json", "truncated-safetensors", "no-thresholds", "no-json", "version", "method", "kind",
         "shape", "dropped-entry", "duplicate-module", "missing-field", "bad-config", "nan-metric", "inf-metric",
         "string-metric", "string-layer", "string-sparsity", "nan-sparsity", "string-consumers", "string-config",
         "float-int-config", "metrics-list", "inf-threshold", "negative-threshold"],
)
def test_bad_plans_are_refused_and_nothing_is_applied(llama, teal_plan, probe, tmp_path, edit, match):
    teal_plan.save(tmp_path / "p")
    edit(tmp_path / "p")
    _assert_refused(llama, tmp_path / "p", match, probe)


def test_invalid_threshold_values_are_refused(llama, teal_plan, probe):
    import copy

    plan = copy.deepcopy(teal_plan)
    plan.entries[0].threshold = torch.tensor(float("nan"))
    with pytest.raises(PlanError, match="NaN or negative"):
        plan.save("/nonexistent-never-written")
    plan.entries[0].threshold = torch.full((plan.entries[0].threshold.numel() + 1,), 0.1)
    _assert_refused(llama, plan, "channels", probe)


def test_save_is_atomic_on_failure(teal_plan, tmp_path):
    import copy

    bad = copy.deepcopy(teal_plan)
    bad.entries[0].threshold = torch.tensor(-1.0)
    with pytest.raises(PlanError):
        bad.save(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.iterdir())


def test_inf_threshold_is_refused_at_save(teal_plan, tmp_path):
    import copy

    plan = copy.deepcopy(teal_plan)
    plan.entries[0].threshold = torch.full_like(plan.entries[0].threshold, float("inf"))
    with pytest.raises(PlanError, match="inf"):
        plan.save(tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_nan_in_extra_is_saved_as_null_and_json_stays_valid(teal_plan, tmp_path):
    import copy

    plan = copy.deepcopy(teal_plan)
    plan.extra["trace"] = [{"ppl": float("inf")}, {"ppl": float("nan")}, {"ppl": 3.0}]
    plan.save(tmp_path / "p")
    text = (tmp_path / "p" / PLAN_JSON).read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in plan.json"))
    assert SparsityPlan.load(tmp_path / "p").extra["trace"] == [{"ppl": None}, {"ppl": None}, {"ppl": 3.0}]


def test_thresholds_file_has_the_mode_of_plan_json(teal_plan, tmp_path):
    import os
    import stat

    plan_dir = teal_plan.save(tmp_path / "p")
    mode = {n: stat.S_IMODE(os.stat(plan_dir / n).st_mode) for n in (PLAN_JSON, THRESHOLDS)}
    assert mode[THRESHOLDS] == mode[PLAN_JSON]
    assert mode[THRESHOLDS] & 0o044 == 0o666 & ~_umask() & 0o044  # readable by group/others as the umask allows


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_save_never_replaces_foreign_files(teal_plan, tmp_path):
    out = tmp_path / "p"
    teal_plan.save(out)
    with pytest.raises(OutputError, match="overwrite"):
        teal_plan.save(out)
    (out / "notes.txt").write_text("mine")
    teal_plan.save(out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert SparsityPlan.load(out).method == "teal"
