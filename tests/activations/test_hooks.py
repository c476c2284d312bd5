import pytest
import torch

import actlab
from actlab.activations.sites import SiteError, resolve_sites


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_even_on_error(tiny_llama):
    model, _ = tiny_llama
    before = _hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        with actlab.capture(model, sites="mlp.*", fn=lambda s, x: None):
            assert _hook_count(model) > before
            raise RuntimeError("boom")
    assert _hook_count(model) == before


def test_replace_reaches_all_consumers(tiny_llama):
    model, _ = tiny_llama
    ids = torch.randint(3, 200, (1, 6))
    seen = {}

    def spy(site, x):
        seen[site.name] = seen.get(site.name, 0) + 1

    # zeroing attn.qkv_in must zero q, k and v: attention then averages zero values
    with actlab.capture(model, sites="layers.0.attn.qkv_in", fn=lambda s, x: torch.zeros_like(x)):
        with actlab.capture(model, sites="layers.0.attn.o_in") as cap:
            model(input_ids=ids)
    assert torch.count_nonzero(cap.tensors["layers.0.attn.o_in"]) == 0
    with actlab.capture(model, sites="attn.qkv_in", fn=spy):
        model(input_ids=ids)
    assert set(seen.values()) == {1}  # read once per forward, not once per q/k/v


def test_identity_replacement_keeps_outputs(tiny_llama):
    model, _ = tiny_llama
    ids = torch.randint(3, 200, (2, 6))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        with actlab.capture(model, fn=lambda s, x: x.clone()):
            out = model(input_ids=ids).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_output_site_replacement_changes_logits(tiny_llama):
    model, _ = tiny_llama
    ids = torch.randint(3, 200, (1, 6))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        with actlab.capture(model, sites="layers.1.resid_out", fn=lambda s, x: x * 0):
            out = model(input_ids=ids).logits
    assert not torch.allclose(out, ref)


def test_bad_pattern_is_clear(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(SiteError, match="no site matches.*site kinds"):
        resolve_sites(model, "mlp.nope")


def test_attach_keeps_hooks_until_removed(tiny_llama):
    from actlab.activations.hooks import attach

    model, _ = tiny_llama
    ids = torch.randint(3, 200, (1, 6))
    before = _hook_count(model)
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        hooks = attach(model, resolve_sites(model, "mlp.down_in"), lambda s, x: x * 0)
        first, second = model(input_ids=ids).logits, model(input_ids=ids).logits  # still on after a forward
        assert _hook_count(model) > before
        hooks.remove()
        hooks.remove()  # idempotent
        after = model(input_ids=ids).logits
    assert not torch.allclose(first, ref) and torch.equal(first, second)
    assert _hook_count(model) == before and torch.equal(after, ref)


def test_attach_leaves_no_hook_when_a_path_is_missing(tiny_llama):
    from dataclasses import replace

    from actlab.activations.hooks import attach

    model, _ = tiny_llama
    sites = resolve_sites(model, "layers.0.attn.qkv_in")
    site = next(iter(sites.values()))
    bad = {**sites, "broken": replace(site, name="broken", module_paths=(site.module_paths[0], "model.nope"))}
    before = _hook_count(model)
    with pytest.raises(AttributeError):
        attach(model, bad, lambda s, x: None)
    assert _hook_count(model) == before
