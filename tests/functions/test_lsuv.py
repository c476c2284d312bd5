"""LSUV: every initialised layer's output std within tolerance, in at most the stated passes, on an MLP, a CNN
and a tiny transformer; in place, idempotent, modes restored, hooks gone (also when the forward raises)."""

import pytest
import torch
from torch import nn

from actlab.activations.hooks import capture
from actlab.activations.sites import module_sites
from actlab.errors import ActlabError, user_error_types
from actlab.functions.lsuv import LSUVError, lsuv_, orthonormal_


def _mlp(act: type[nn.Module], depth: int = 10, width: int = 64) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(20, width), act()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, 3))


def _cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3), nn.ReLU(),
                         nn.Flatten(), nn.Unflatten(1, (16, 4)), nn.Conv1d(16, 4, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 2, 10))


def _output_stds(model: nn.Module, batch, paths) -> dict[str, float]:
    with torch.no_grad(), capture(model, module_sites(model, patterns=list(paths))) as cap:
        model(batch) if isinstance(batch, torch.Tensor) else model(**batch)
    return {p: float(cap.tensors[p].double().std(unbiased=False)) for p in paths}


def _no_hooks(model: nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU])
def test_deep_plain_mlp_every_layer_within_tol(act):
    torch.manual_seed(0)
    net, x = _mlp(act), torch.randn(512, 20)
    paths = list(module_sites(net))
    default = _output_stds(net, x, paths)
    assert max(abs(s - 1) for s in default.values()) > 0.3  # PyTorch's default init is not unit-variance here
    rep = lsuv_(net, x, tol=0.1, max_iters=10)
    assert [layer.path for layer in rep.layers] == paths and rep.skipped == {} and rep.converged
    assert all(0 <= layer.passes <= 10 for layer in rep.layers)
    after = _output_stds(net, x, paths)
    assert all(abs(after[p] - 1) < 0.1 for p in paths), after
    assert all(after[layer.path] == pytest.approx(layer.std_after, rel=1e-4) for layer in rep.layers)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in net if isinstance(m, nn.Linear))  # zero biases
    assert _no_hooks(net)


def test_small_cnn_conv1d_conv2d_and_linear():
    torch.manual_seed(1)
    net, x = _cnn(), torch.randn(128, 1, 8, 8)
    rep = lsuv_(net, x)
    assert [(layer.path, layer.type) for layer in rep.layers] == [
        ("0", "Conv2d"), ("3", "Conv2d"), ("7", "Conv1d"), ("10", "Linear")]
    after = _output_stds(net, x, [layer.path for layer in rep.layers])
    assert rep.converged and all(abs(s - 1) < 0.1 for s in after.values()), after


def test_tiny_transformer_block_linears_only(tiny_llama):
    """Handled: the 7 Linear layers of each block (q, k, v, o, gate, up, down); embeddings, norms and the LM
    head keep their weights."""
    model, _ = tiny_llama
    ids = torch.randint(3, 500, (4, 16), generator=torch.Generator().manual_seed(0))
    keep = {n: p.clone() for n, p in model.named_parameters() if not n.startswith("model.layers.")}
    rep = lsuv_(model, {"input_ids": ids}, patterns="model.layers.*")
    paths = [layer.path for layer in rep.layers]
    assert len(paths) == 2 * 7 and all(p.startswith("model.layers.") for p in paths)
    assert paths[:3] == [f"model.layers.0.self_attn.{x}_proj" for x in "qkv"]  # forward order
    assert rep.converged and all(layer.passes <= 10 for layer in rep.layers)
    after = _output_stds(model, {"input_ids": ids}, paths)
    assert all(abs(s - 1) < 0.1 for s in after.values()), after
    assert all(torch.equal(p, keep[n]) for n, p in model.named_parameters() if n in keep)


def test_in_place_and_a_second_run_needs_no_rescaling():
    torch.manual_seed(2)
    net, x = _mlp(nn.Tanh, depth=6), torch.randn(256, 20)
    weights = [m.weight for m in net if isinstance(m, nn.Linear)]
    rep = lsuv_(net, x)
    assert [m.weight for m in net if isinstance(m, nn.Linear)] == weights  # same tensors, new values
    assert any(layer.passes >= 1 for layer in rep.layers)
    before = [w.clone() for w in weights]
    again = lsuv_(net, x, orthonormal=False)
    assert again.converged and [layer.passes for layer in again.layers] == [0] * len(weights)
    assert all(torch.equal(a, b) for a, b in zip(weights, before, strict=True))


def test_orthonormal_rows_or_columns():
    g = torch.Generator().manual_seed(0)
    wide = orthonormal_(torch.empty(4, 2, 3, 3), g).reshape(4, -1)  # [4, 18]: orthonormal rows
    tall = orthonormal_(torch.empty(30, 6), g)  # orthonormal columns
    assert torch.allclose(wide @ wide.T, torch.eye(4), atol=1e-6)
    assert torch.allclose(tall.T @ tall, torch.eye(6), atol=1e-6)


def test_max_iters_bounds_the_passes_and_center_moves_biases():
    torch.manual_seed(3)
    net, x = _mlp(nn.ReLU, depth=4), torch.randn(256, 20)
    rep = lsuv_(net, x, max_iters=0)
    assert all(layer.passes == 0 for layer in rep.layers) and not rep.converged
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, 3.0)
    rep = lsuv_(net, x, orthonormal=False, center=True)
    assert rep.converged and all(abs(layer.mean_after) < 0.1 for layer in rep.layers)
    plain = lsuv_(net, x, orthonormal=False)  # centred already: the std alone is checked
    assert plain.converged


class _Reversed(nn.Module):
    """Layers registered in the reverse of the order the forward pass uses them; one used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.last, self.shared, self.first = nn.Linear(16, 2), nn.Linear(16, 16), nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.shared(torch.tanh(self.shared(torch.tanh(self.first(x))))))
        return self.last(h)


def test_forward_order_and_a_layer_called_twice():
    torch.manual_seed(4)
    net, x = _Reversed(), torch.randn(256, 8)
    rep = lsuv_(net, x)
    assert [layer.path for layer in rep.layers] == ["first", "shared", "last"] and rep.converged
    outs: list[torch.Tensor] = []
    with torch.no_grad(), capture(net, module_sites(net, patterns="shared"), fn=lambda s, t: outs.append(t)):
        net(x)
    assert len(outs) == 2 and abs(float(torch.cat(outs).std(unbiased=False)) - 1) < 0.1  # over both calls


class _TiedAndUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.unused = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(3, 3)
        self.c.weight = self.a.weight  # tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))


def test_tied_and_uncalled_layers_are_skipped_untouched():
    torch.manual_seed(5)
    net = _TiedAndUnused()
    tied, unused = net.a.weight.clone(), net.unused.weight.clone()
    rep = lsuv_(net, torch.randn(64, 8))
    assert [layer.path for layer in rep.layers] == ["b"] and rep.converged
    assert set(rep.skipped) == {"a", "c", "unused"}
    assert rep.skipped["a"] == "weight shared with c" and "never called" in rep.skipped["unused"]
    assert torch.equal(net.a.weight, tied) and torch.equal(net.unused.weight, unused)


def test_modes_are_restored_per_module():
    net = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 8), nn.Dropout(0.5))
    net.train()
    net[3].eval()
    rep = lsuv_(net, torch.randn(128, 8))
    assert rep.converged  # dropout was off while measuring: one rescale of a linear map lands on 1
    assert [m.training for m in net.modules()] == [True, True, True, True, False]


class _Flaky(nn.Module):
    """Raises on its n-th forward call, after some layers were initialised."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.a, self.b, self.calls, self.n = nn.Linear(4, 4), nn.Linear(4, 4), 0, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("boom")
        return self.b(torch.tanh(self.a(x)))


def test_hooks_removed_and_modes_restored_when_the_forward_raises():
    net = _Flaky(n=3)
    net.train()
    with pytest.raises(LSUVError, match="RuntimeError: boom"):
        lsuv_(net, torch.randn(32, 4))
    assert net.calls == 3 and _no_hooks(net) and all(m.training for m in net.modules())


def test_clear_errors():
    assert issubclass(LSUVError, ActlabError) and issubclass(LSUVError, ValueError)
    assert any(issubclass(LSUVError, t) for t in user_error_types())
    with pytest.raises(LSUVError, match="nothing to initialise.*no module of type Linear"):
        lsuv_(nn.Sequential(nn.ReLU(), nn.Tanh()), torch.randn(4, 3))
    net = _mlp(nn.Tanh, depth=3)
    with pytest.raises(LSUVError, match=r"shape \[8, 7\].*first Linear/Conv1d/Conv2d layer '0' takes inputs \[\.\.\., 20\]"):
        lsuv_(net, torch.randn(8, 7))
    with pytest.raises(LSUVError, match="the batch is a str"):
        lsuv_(net, "images")
    with pytest.raises(LSUVError, match="empty"):
        lsuv_(net, torch.randn(0, 20))
    with pytest.raises(LSUVError, match="no tensor"):
        lsuv_(net, (1, 2))
    with pytest.raises(LSUVError, match="tol > 0"):
        lsuv_(net, torch.randn(8, 20), tol=0)
    assert _no_hooks(net)


def test_hf_model_without_patterns_takes_the_untied_lm_head_too(tiny_llama):
    model, _ = tiny_llama
    rep = lsuv_(model, torch.randint(3, 500, (2, 8)), types=nn.Linear)
    assert [layer.path for layer in rep.layers][-1] == "lm_head" and rep.converged  # untied in tiny-llama


def test_torch_transformer_layer_runs_its_linears_as_modules():
    """The fused fast path (eval, no grad) would skip linear1/linear2; LSUV turns it off meanwhile. The
    attention's out_proj is applied functionally, so it is reported as never called."""
    torch.manual_seed(6)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    rep = lsuv_(layer, torch.randn(8, 5, 16))
    assert [x.path for x in rep.layers] == ["linear1", "linear2"] and rep.converged
    assert "never called" in rep.skipped["self_attn.out_proj"]
    assert torch.backends.mha.get_fastpath_enabled()
