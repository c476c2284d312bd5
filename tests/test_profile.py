"""``profile_model`` on every architecture in the adapter table: every site observed on every token."""

import pytest
import torch

import actlab
from actlab.models.presets import PRESETS
from actlab.profile import profile_model

TINY = sorted(name for name in PRESETS if name.startswith("tiny-"))


@pytest.mark.parametrize("preset", TINY)
def test_profile_sees_every_site_on_every_token(preset):
    model, _ = actlab.load_model(f"random:{preset}")
    ids = torch.randint(5, 500, (3, 16), generator=torch.Generator().manual_seed(0))
    prof = profile_model(model, ids, batch_size=2, progress=False)
    doc = prof.to_dict()
    assert set(doc["sites"]) == set(prof.sites)
    assert doc["num_layers"] == 2
    for name, site in doc["sites"].items():
        assert site["tokens"] == ids.numel(), name


def test_profile_matches_full_forward_statistics():
    """Running the backbone alone (no LM head) observes exactly what a full forward observes."""
    model, _ = actlab.load_model("random:tiny-llama")
    ids = torch.randint(5, 500, (2, 16), generator=torch.Generator().manual_seed(1))
    seen: dict[str, torch.Tensor] = {}

    def keep(site, x):
        seen[site.name] = x.detach().clone()

    with torch.inference_mode(), actlab.capture(model, sites="layers.1.*", fn=keep):
        model(input_ids=ids, use_cache=False)
    prof = profile_model(model, ids, sites="layers.1.*", progress=False)
    for name, x in seen.items():
        assert prof.stats[name].summary()["absmax"] == pytest.approx(float(x.abs().max()), rel=1e-6), name
