"""module_sites: any module of any network is a site, hooked by the same capture as canonical sites."""

import pytest
import torch
from torch import nn

import actlab
from actlab.activations.hooks import capture
from actlab.activations.sites import MODULE_KIND, SiteError, module_sites


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.ReLU(),
                         nn.Linear(5, 2))


def test_every_weight_layer_in_order_and_by_type_or_glob():
    net = _net()
    s = module_sites(net)
    assert list(s) == ["0", "3", "5"]
    assert [x.layer for x in s.values()] == [0, 1, 2]
    assert all(x.kind == MODULE_KIND and x.module_paths == (n,) and x.direction == "output" for n, x in s.items())
    assert list(module_sites(net, nn.ReLU)) == ["1", "4"]
    assert list(module_sites(net, patterns="[35]")) == ["3", "5"]


def test_capture_reads_and_replaces_module_outputs():
    net = _net()
    x = torch.randn(2, 1, 6, 6)
    with capture(net, module_sites(net, nn.Linear)) as cap:
        y = net(x)
    assert set(cap.tensors) == {"3", "5"} and torch.equal(cap.tensors["5"], y)
    with capture(net, module_sites(net, nn.Linear, patterns="5"), fn=lambda site, t: t * 0):
        assert torch.count_nonzero(net(x)) == 0
    assert not any(m._forward_hooks for m in net.modules())  # removed after the block


def test_input_direction_sees_the_argument():
    net = _net()
    x = torch.randn(2, 1, 6, 6)
    with capture(net, module_sites(net, nn.Conv2d, direction="input")) as cap:
        net(x)
    assert torch.equal(cap.tensors["0"], x)


def test_paths_inside_wrappers_and_on_a_hf_model():
    net = nn.DataParallel(_net())
    assert list(module_sites(net)) == ["0", "3", "5"]  # the path of the inner model, as canonical sites
    model, _ = actlab.load_model("random:tiny-llama")
    s = module_sites(model, nn.Linear, "model.layers.*")
    assert len(s) == 2 * 7 and "lm_head" not in s and "model.layers.1.mlp.down_proj" in s


def test_clear_errors():
    with pytest.raises(SiteError, match="no module of type Linear"):
        module_sites(nn.Sequential(nn.ReLU()), nn.Linear)
    with pytest.raises(SiteError, match=r"under \['nope\.\*'\]"):
        module_sites(_net(), patterns="nope.*")
    with pytest.raises(SiteError, match="direction"):
        module_sites(_net(), direction="both")
