"""layer_density: profile's densities per layer, and the exact-zero fraction, with other hooks active."""

from __future__ import annotations

import pytest
import torch

import actlab
from actlab.activations.stats import StatsConfig
from actlab.profile import profile_model
from actlab.train import TrainError
from actlab.train.density import layer_density, mean_density


def test_density_matches_the_profile_and_a_direct_count(tiny_llama):
    model, _ = tiny_llama
    ids = torch.randint(3, 200, (3, 16), generator=torch.Generator().manual_seed(0))
    # with another hook active (what an objective's mask does): ReLU on the activation's output
    with actlab.capture(model, sites="mlp.act_out", fn=lambda site, x: torch.relu(x) * (x.abs() > 0.05)):
        d = layer_density(model, ids)
        seen = {}
        with actlab.capture(model, sites="mlp.act_out", fn=lambda site, x: seen.__setitem__(site.layer, x)):
            model(input_ids=ids)
    prof = profile_model(model, ids, sites="mlp.act_out", progress=False)  # no ReLU here
    keys = list(next(iter(prof.to_dict()["sites"].values()))["density"])
    assert d["thresholds"] == keys and d["layers"] == sorted(seen) == [0, 1]
    for layer, x in seen.items():
        assert d["zero_frac"][layer] == pytest.approx(float((x == 0).float().mean()))
        assert d["zero_frac"][layer] > 0.5  # the ReLU + mask made zeros
        assert d["density"]["0.1"][layer] == pytest.approx(float((x.abs() > 0.1).float().mean()), abs=1e-3)
    plain = prof.to_dict()["sites"]["layers.1.mlp.act_out"]["density"]
    assert plain["0"] == 1.0 and d["density"]["0"][1] < plain["0"]
    assert mean_density(d, "0.1") == pytest.approx(sum(d["density"]["0.1"]) / 2)


def test_density_of_a_site_the_model_lacks_is_a_train_error(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(TrainError, match="mlp.nope"):
        layer_density(model, torch.randint(3, 200, (1, 8)), site="mlp.nope")


def test_density_follows_the_stats_config(tiny_llama):
    model, _ = tiny_llama
    d = layer_density(model, torch.randint(3, 200, (1, 8)), config=StatsConfig(eps_grid=(0.0, 0.5)))
    assert d["thresholds"][0] == "0" and len(d["thresholds"]) == 2


def test_the_probe_reads_a_perplexity_pass_exactly_as_layer_density_measures(tiny_llama):
    from actlab.eval.perplexity import perplexity
    from actlab.train.density import density_probe

    model, _ = tiny_llama
    ids = torch.randint(3, 200, (5, 16), generator=torch.Generator().manual_seed(2))
    with actlab.capture(model, sites="mlp.act_out", fn=lambda site, x: torch.relu(x)):
        with density_probe(model) as read:
            perplexity(model, ids, batch_size=2)
        assert read() == layer_density(model, ids)
    with pytest.raises(TrainError, match="mlp.nope"), density_probe(model, site="mlp.nope"):
        pass
