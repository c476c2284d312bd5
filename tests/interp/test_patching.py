"""Activation patching on a tiny random Llama: the normalisation's fixed points, shapes, errors, the picture."""

from __future__ import annotations

import pytest
import torch

from actlab.activations.sites import SiteError
from actlab.interp.patching import PatchingError, draw_patch_map, patch_effect, patch_map, single_token


def _prompts(model, t: int = 7):
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(3, 259, (t,), generator=g)
    corrupt = clean.clone()
    corrupt[1] = (corrupt[1] + 17 - 3) % 256 + 3  # one token differs: the "subject"
    with torch.no_grad():
        lc, lx = model(clean[None]).logits[0, -1], model(corrupt[None]).logits[0, -1]
    # the tokens the corruption moves most apart: a random model's logits are small, so a large gap keeps
    # the normalised scores' rounding well below the tolerances
    answer, wrong = int((lc - lx).argmax()), int((lc - lx).argmin())
    return clean, corrupt, answer, wrong


def test_last_layer_resid_out_restores_everything_and_nothing_restores_nothing(tiny_llama):
    model, _ = tiny_llama
    clean, corrupt, a, w = _prompts(model)
    assert patch_effect(model, clean, corrupt, a, w, []) == 0.0
    assert patch_effect(model, clean, corrupt, a, w, [("layers.1.resid_out", None)]) == pytest.approx(1.0, abs=1e-5)
    # the last position alone carries the last layer's whole effect on the last logits
    assert patch_effect(model, clean, corrupt, a, w, [("layers.1.resid_out", -1)]) == pytest.approx(1.0, abs=1e-5)


def test_map_shapes_and_fixed_points(tiny_llama):
    model, tok = tiny_llama
    clean, corrupt, a, w = _prompts(model)
    pm = patch_map(model, clean, corrupt, a, w, batch_size=4)
    assert pm.restored.shape == (2, 3) and pm.layers == [0, 1] and pm.kinds == ["resid_out", "mlp.down_in", "attn.o_in"]
    assert float(pm.restored[1, 0]) == pytest.approx(1.0, abs=1e-4)
    # every cell equals the same patch run alone (batching changes nothing but rounding)
    for li in range(2):
        for ki, kind in enumerate(pm.kinds):
            alone = patch_effect(model, clean, corrupt, a, w, [(f"layers.{li}.{kind}", None)])
            assert float(pm.restored[li, ki]) == pytest.approx(alone, abs=1e-4)
    per = patch_map(model, clean[None], corrupt[None], a, w, sites=("resid_out", "attn.o_in"), per_position=True,
                    tok=tok, batch_size=5)
    assert per.restored.shape == (2, 2, 7) and len(per.tokens) == 7
    # before position 1 the prompts agree: patching there changes nothing
    assert float(per.restored[0, 0, 0]) == pytest.approx(0.0, abs=1e-4)
    assert float(per.restored[1, 0, 6]) == pytest.approx(1.0, abs=1e-4)
    d = per.to_dict()
    assert d["axes"] == ["layer", "kind", "position"] and len(d["restored"][0][0]) == 7
    assert pm.best(1)[0]["restored"] >= float(pm.restored.max()) - 1e-9
    some = pm.best(10, ["attn.o_in"])
    assert len(some) == 2 and {b["site"] for b in some} == {"layers.0.attn.o_in", "layers.1.attn.o_in"}
    assert some[0]["restored"] == pytest.approx(float(pm.restored[:, 2].max()))


def test_errors(tiny_llama):
    model, tok = tiny_llama
    clean, corrupt, a, w = _prompts(model)
    with pytest.raises(PatchingError, match="same length"):
        patch_map(model, clean, corrupt[:-1], a, w)
    with pytest.raises(SiteError, match="unknown site kind"):
        patch_map(model, clean, corrupt, a, w, sites=("resid_in",))
    with pytest.raises(PatchingError, match="same token"):
        patch_map(model, clean, corrupt, a, a)
    with pytest.raises(PatchingError, match="token id"):
        patch_map(model, clean, corrupt, a, 10**6)
    with pytest.raises(PatchingError, match="nothing to restore"):
        patch_map(model, clean, clean, a, w)
    with pytest.raises(PatchingError, match="2 tokens"):
        single_token(tok, "ab")
    assert single_token(tok, "a") == tok("a")["input_ids"][0]


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_draw(tiny_llama, tmp_path, suffix):
    model, tok = tiny_llama
    clean, corrupt, a, w = _prompts(model)
    for per in (False, True):
        pm = patch_map(model, clean, corrupt, a, w, per_position=per, tok=tok)
        path = draw_patch_map(pm, tmp_path / f"map{int(per)}{suffix}")
        head = path.read_bytes()[:200]
        assert head.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in path.read_bytes()[:2000] or b"<?xml" in head
    with pytest.raises(PatchingError, match="PNG or SVG"):
        draw_patch_map(pm, tmp_path / "map.jpg")


@pytest.mark.slow
def test_smollm2_eiffel_tower(smollm2):
    """The known picture (Meng et al.): the subject's last token carries the fact in early-middle layers, the
    last position from the late layers on."""
    model, tok = smollm2
    clean = tok("The Eiffel Tower is in the city of", return_tensors="pt")["input_ids"]
    corrupt = tok("The Colosseum is in the city of", return_tensors="pt")["input_ids"]
    assert clean.shape == corrupt.shape
    pm = patch_map(model, clean, corrupt, single_token(tok, " Paris"), single_token(tok, " Rome"),
                   sites=("resid_out",), per_position=True, tok=tok)
    assert pm.logit_diff_clean > 0 > pm.logit_diff_corrupt
    subject = pm.tokens.index("iffel")
    assert float(pm.restored[5, 0, subject]) > 0.5 and float(pm.restored[5, 0, -1]) < 0.2
    assert float(pm.restored[-1, 0, -1]) == pytest.approx(1.0, abs=1e-4)
