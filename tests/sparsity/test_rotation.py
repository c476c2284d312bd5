"""Rotated masks (``rotate=``): the basis, the plan format, apply/remove, metrics net of the rotation."""

from __future__ import annotations

import json

import pytest
import torch

import actlab
from actlab.sparsity.apply import masked_modules
from actlab.sparsity.calibrate import prepare
from actlab.sparsity.collect import collect
from actlab.sparsity.config import TealConfig, WinaConfig, config_from_dict
from actlab.sparsity.errors import PlanError
from actlab.sparsity.metrics import linear_sizes
from actlab.sparsity.plan import PLAN_JSON, THRESHOLDS, SparsityPlan
from actlab.sparsity.rotation import grouped_rotation, pca_rotation, rotation_params, second_moment

ROTATE = ("mlp.gate_up_in", "attn.o_in")


@pytest.fixture(scope="module")
def rotated(llama, calib):
    return prepare(llama, TealConfig(0.5, rotate=ROTATE), calib)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _orthogonal(q: torch.Tensor) -> bool:
    return torch.allclose(q @ q.T, torch.eye(q.shape[0]), atol=1e-5)


def test_pca_basis_concentrates_energy_so_masking_loses_less():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(32, 32, generator=g))[0]
    x = (torch.randn(4096, 32, generator=g) * torch.logspace(0, -2, 32)) @ basis.T  # anisotropic, mixed basis
    q = pca_rotation(second_moment(x))
    assert _orthogonal(q)

    def lost(v: torch.Tensor) -> float:  # energy dropped by keeping each row's 16 largest |v_i|
        kept = v.abs().topk(16, dim=1).values
        return 1 - float(kept.pow(2).sum() / v.pow(2).sum())

    assert lost(x @ q) < 0.01 < 0.05 < lost(x)  # ~0.3% vs ~7.6%


def test_grouped_rotation_is_block_diagonal_per_kv_group():
    rows = torch.randn(512, 4 * 8)
    q = grouped_rotation(second_moment(rows), head_dim=8, heads_per_group=2)
    assert _orthogonal(q)
    assert torch.equal(q[:8, :8], q[8:16, 8:16])  # heads of one group share their basis
    assert not torch.equal(q[:8, :8], q[16:24, 16:24])
    assert rotation_params(q) <= 4 * 8 * 8


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rotate": ["mlp.down_in"]}, "cannot rotate"),
        ({"rotate": ["attn.bogus_in"]}, "cannot rotate"),
        ({"rotate": ["attn.o_in"], "allocation": "greedy"}, "not greedy"),
    ],
)
def test_config_refuses_bad_rotations(kwargs, match):
    with pytest.raises(PlanError, match=match):
        config_from_dict({"method": "teal", "sparsity": 0.5, **kwargs})


def test_config_round_trip_keeps_rotate():
    c = WinaConfig(0.4, allocation="global", rotate=ROTATE)
    assert config_from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_plan_round_trip_and_metrics_net_of_rotation(llama, rotated, tmp_path):
    plan = rotated.plan()
    rot = [e for e in plan.entries if e.rotation is not None]
    assert {e.site.split(".", 2)[2] for e in rot} == set(ROTATE)
    assert all(_orthogonal(e.rotation) for e in rot)
    m = plan.metrics
    assert abs(m["sparsity_model_wide"] - 0.5) < 0.02
    extra = sum(rotation_params(e.rotation) for e in rot)
    assert m["rotation_params"] == extra
    assert m["sparsity_model_wide_net"] == pytest.approx(0.5 - extra / sum(linear_sizes(llama).values()), abs=0.02)

    plan.save(tmp_path / "p")
    assert json.loads((tmp_path / "p" / PLAN_JSON).read_text())["version"] == 2
    back = SparsityPlan.load(tmp_path / "p")
    for a, b in zip(plan.entries, back.entries, strict=True):
        assert (a.rotation is None) == (b.rotation is None)
        if a.rotation is not None:
            assert torch.equal(a.rotation, b.rotation)
    assert back.metrics == pytest.approx(plan.metrics)


def test_unrotated_plans_stay_version_1(llama, calib, tmp_path):
    prepare(llama, TealConfig(0.5), calib).plan().save(tmp_path / "p")
    assert json.loads((tmp_path / "p" / PLAN_JSON).read_text())["version"] == 1


def test_bad_rotations_are_refused(rotated, tmp_path):
    plan = rotated.plan()
    e = next(e for e in plan.entries if e.rotation is not None)
    e.rotation = e.rotation * 1.5  # not orthogonal
    with pytest.raises(PlanError, match="not orthogonal"):
        plan.save(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()

    rotated.plan().save(tmp_path / "p")  # plan.json claims a rotation the tensors file lacks
    doc = json.loads((tmp_path / "p" / PLAN_JSON).read_text())
    plain = next(x for x in doc["entries"] if not x["rotated"])
    plain["rotated"] = True
    (tmp_path / "p" / PLAN_JSON).write_text(json.dumps(doc))
    with pytest.raises(PlanError, match=f"no \\[width, width\\] rotation in {THRESHOLDS}"):
        SparsityPlan.load(tmp_path / "p")


def test_apply_remove_and_zero_sparsity(llama, probe, rotated):
    dense = _logits(llama, probe)
    actlab.apply_(llama, rotated.plan())
    try:
        sparse = _logits(llama, probe)
    finally:
        actlab.remove_(llama)
    assert not torch.allclose(sparse, dense, atol=1e-3)
    assert torch.equal(_logits(llama, probe), dense)

    actlab.apply_(llama, rotated.plan(0.0))  # x Q Q^T: dense up to float rounding
    try:
        zero = _logits(llama, probe)
    finally:
        actlab.remove_(llama)
    torch.testing.assert_close(zero, dense, atol=1e-4, rtol=1e-4)


def test_kernels_refuse_a_rotated_plan(llama, rotated):
    with pytest.raises(PlanError, match="masking path"):
        actlab.apply_(llama, rotated.plan(), kernels=True)
    assert not masked_modules(llama)


def test_rotated_masks_hit_their_sparsity_on_calibration_data(llama, calib, rotated):
    from actlab.sparsity.apply import track_sparsity

    plan = rotated.plan(0.6)
    actlab.apply_(llama, plan)
    try:
        with track_sparsity(llama) as dropped, torch.no_grad():
            llama(calib)
    finally:
        actlab.remove_(llama)
    for e in plan.entries:
        if e.rotation is not None:
            assert abs(dropped[e.modules[0]] - e.sparsity) < 0.05, e.key


def test_rotation_basis_uses_every_token_not_the_row_sample(llama, calib):
    """A row sample narrower than the site (here 64 rows of 64 channels, rank < 64 after centring effects)
    would give a basis with zero-variance directions and thresholds near 0: masks that drop almost nothing."""
    from actlab.sparsity.apply import track_sparsity

    config = TealConfig(0.5, rotate=ROTATE)
    sites = prepare(llama, config, calib).sample_sites()
    moment_sites = [s for s in sites if s.split(".", 2)[2] in ROTATE]
    sample = collect(llama, calib, sites, max_values=16 * 64, moment_sites=moment_sites)
    site = moment_sites[0]
    assert sample.rows[site].shape[0] < sample.rows[site].shape[1] * 2
    with actlab.capture(llama, sites=site) as cap, torch.no_grad():
        llama(calib, use_cache=False)
    torch.testing.assert_close(sample.second_moments[site], second_moment(cap.tensors[site].reshape(-1, 64)),
                               rtol=1e-4, atol=1e-3)

    plan = prepare(llama, config, calib, sample=sample).plan()
    actlab.apply_(llama, plan)
    try:
        with track_sparsity(llama) as dropped, torch.no_grad():
            llama(calib)
    finally:
        actlab.remove_(llama)
    for e in plan.entries:
        if e.rotation is not None:
            assert abs(dropped[e.modules[0]] - 0.5) < 0.05, e.key


def test_shared_sample_without_moments_is_refused(llama, calib):
    config = TealConfig(0.5, rotate=ROTATE)
    sites = prepare(llama, TealConfig(0.5), calib).sample_sites()
    with pytest.raises(PlanError, match="second moments"):
        prepare(llama, config, calib, sample=collect(llama, calib, sites))
