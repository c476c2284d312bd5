"""Layer-by-layer calibration: the same sample and the same plan as the full pass, with layers kept on disk."""

from __future__ import annotations

import pytest
import torch
from sparsity_helpers import windows

import actlab
from actlab.sparsity.calibrate import calibrate, prepare
from actlab.sparsity.collect import collect
from actlab.sparsity.config import CatsConfig, CettConfig, ChessConfig, TealConfig, TopKConfig, WinaConfig
from actlab.sparsity.errors import PlanError
from actlab.sparsity.sequential import collect_sequential


@pytest.fixture(scope="module")
def saved(tmp_path_factory, llama):
    """The module's tiny Llama saved as a Hugging Face directory."""
    from actlab.models.tokenizer import byte_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    llama.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def offloaded(saved):
    """The same model with its decoder layers left on disk (accelerate device_map)."""
    model, _ = actlab.load_model(saved, device_map="disk")
    return model


def _max_diff(a, b) -> float:
    assert [e.site for e in a.entries] == [e.site for e in b.entries]
    return max(float((x.threshold - y.threshold).abs().max()) for x, y in zip(a.entries, b.entries, strict=True))


@pytest.mark.parametrize("config", [
    TealConfig(0.5),
    WinaConfig(0.4),
    CettConfig(cett=0.2),
    CatsConfig(0.3),
    ChessConfig(0.3),
    TopKConfig(0.5),
    TealConfig(0.4, allocation="greedy"),
    WinaConfig(0.4, rotate=("attn.o_in",)),
], ids=lambda c: f"{c.method}-{getattr(c, 'allocation', 'uniform')}{'-rot' if getattr(c, 'rotate', ()) else ''}")
def test_sequential_plan_equals_full_plan(llama, offloaded, calib, config):
    full = calibrate(llama, config, calib)
    seq = calibrate(offloaded, config, calib, sequential=True)
    assert _max_diff(full, seq) <= 1e-5
    assert seq.model == full.model  # the fingerprint reads offloaded weights from disk: same model
    assert seq.metrics["sparsity_model_wide"] == pytest.approx(full.metrics["sparsity_model_wide"], abs=1e-6)


def test_layers_are_dropped_after_the_pass(offloaded, calib):
    calibrate(offloaded, TealConfig(0.5), calib, sequential=True)
    assert all(p.is_meta for p in offloaded.model.layers.parameters())


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-gemma2", "tiny-bert"])
def test_same_sample_on_other_architectures(preset):
    """Positional layer arguments (gpt2), per-layer masks (gemma2), an encoder (bert): the model's own call."""
    model, _ = actlab.load_model(f"random:{preset}")
    ids = windows(model, 6, seq_len=16)
    sites = ["mlp.down_in", "attn.qkv_in", "resid_out"]
    a = collect(model, ids, sites, moment_sites=["layers.0.attn.qkv_in"], block_tokens=20)
    b = collect_sequential(model, ids, sites, moment_sites=["layers.0.attn.qkv_in"], block_tokens=20)
    assert set(a.rows) == set(b.rows)
    for s in a.rows:
        torch.testing.assert_close(b.rows[s], a.rows[s])
        assert torch.equal(b.positions[s], a.positions[s])
    torch.testing.assert_close(b.second_moments["layers.0.attn.qkv_in"], a.second_moments["layers.0.attn.qkv_in"])
    assert set(b.blocks) == set(a.blocks) and len(b.blocks[0].calls) == 1


def test_global_allocation_is_refused(offloaded, calib):
    with pytest.raises(PlanError, match="cannot run layer by layer.*Fisher"):
        prepare(offloaded, TealConfig(0.5, allocation="global"), calib, sequential=True)


def test_bad_sites_are_one_clear_error(llama, offloaded, calib):
    with pytest.raises(PlanError, match="no site matches"):
        collect_sequential(llama, calib, ["layers.9.mlp.down_in"])
    with pytest.raises(PlanError, match="not among the sampled sites"):
        collect_sequential(llama, calib, ["layers.0.mlp.down_in"], moment_sites=["layers.0.attn.o_in"])
    with pytest.raises(PlanError, match="no input of this model matches"):  # a gated MLP has no plain mlp.in
        calibrate(offloaded, TealConfig(0.5, sites=("mlp.in",)), calib, sequential=True)


def test_sequential_with_several_processes_is_refused(llama, calib):
    from actlab.distributed import Dist

    with pytest.raises(PlanError, match="one process"):
        prepare(llama, TealConfig(0.5), calib, dist=Dist(rank=0, world_size=2), sequential=True)
