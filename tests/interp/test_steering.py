"""Steering vectors: difference of means against brute force, exact steering, save/load, llama.cpp GGUF."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import actlab
from actlab.interp.control_vector import export_control_vector, load_control_vector
from actlab.interp.steering import SteeringError, SteeringVector, apply_steering, steering_vector
from actlab.outputs import OutputError

PAIRS = [("I love this film", "I hate this film"), ("what a joy", "what a pain"), ("great", "awful work")]


def _resid(model, tok, text: str) -> dict[int, torch.Tensor]:
    """Each decoder layer's output, read by plain torch hooks (not through actlab's capture)."""
    ids = tok(text, return_tensors="pt")["input_ids"]
    seen: dict[int, torch.Tensor] = {}
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, (o[0] if isinstance(o, tuple) else o)[0]))
               for i, layer in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("position", ["last", "mean"])
def test_vector_equals_brute_force_mean_difference(tiny_llama, position):
    model, tok = tiny_llama
    vec = steering_vector(model, tok, PAIRS, layers=[0, 1], position=position)
    assert vec.layers == [0, 1] and vec.d_model == 64 and vec.n_pairs == 3
    reduce = (lambda h: h[-1]) if position == "last" else (lambda h: h.mean(0))
    for layer in (0, 1):
        pos = torch.stack([reduce(_resid(model, tok, p)[layer]) for p, _ in PAIRS]).double().mean(0)
        neg = torch.stack([reduce(_resid(model, tok, n)[layer]) for _, n in PAIRS]).double().mean(0)
        torch.testing.assert_close(vec.directions[layer], (pos - neg).float(), rtol=1e-5, atol=1e-6)


def test_default_layer_and_errors(tiny_llama):
    model, tok = tiny_llama
    assert steering_vector(model, tok, PAIRS[:1]).layers == [1]  # the middle of 2 layers
    with pytest.raises(SteeringError, match="no contrastive prompt pairs"):
        steering_vector(model, tok, [])
    with pytest.raises(SteeringError, match="pair 0 must be two non-empty texts"):
        steering_vector(model, tok, [("only one",)])
    with pytest.raises(SteeringError, match="pair 1"):
        steering_vector(model, tok, [("a", "b"), ("", "c")])
    with pytest.raises(SteeringError, match=r"not layers of this model \(0\.\.1\)"):
        steering_vector(model, tok, PAIRS, layers=[2])
    with pytest.raises(SteeringError, match="unknown position"):
        steering_vector(model, tok, PAIRS, position="first")


def _capture_resid(model, ids):
    with actlab.capture(model, sites="resid_out") as cap, torch.no_grad():
        logits = model(ids).logits
    return logits, {int(k.split(".")[1]): v for k, v in cap.tensors.items()}


def test_scale_zero_is_a_no_op_and_scale_s_adds_s_v(tiny_llama):
    model, tok = tiny_llama
    vec = steering_vector(model, tok, PAIRS, layers=[0, 1])
    ids = tok("steer me", return_tensors="pt")["input_ids"]
    logits, base = _capture_resid(model, ids)
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    with apply_steering(model, vec, 0.0):
        same, _ = _capture_resid(model, ids)
    assert torch.equal(same, logits)
    for layer in (0, 1):
        one = SteeringVector(directions={layer: vec.directions[layer]}, model=vec.model)
        with apply_steering(model, one, 2.5):
            steered_logits, steered = _capture_resid(model, ids)
        # the capture hook runs after the steering hook on the same module: it sees the steered output
        torch.testing.assert_close(steered[layer] - base[layer], (2.5 * vec.directions[layer]).expand_as(base[layer]),
                                   rtol=1e-5, atol=1e-5)
        for earlier in range(layer):
            assert torch.equal(steered[earlier], base[earlier])
        assert not torch.allclose(steered_logits, logits)
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks


def test_save_load_round_trip_and_refusals(tiny_llama, tmp_path):
    model, tok = tiny_llama
    vec = steering_vector(model, tok, PAIRS, layers=[1], position="mean")
    vec.save(tmp_path / "v")
    doc = json.loads((tmp_path / "v" / "steering.json").read_text())
    assert doc["format"] == "actlab.steering-vector" and doc["site"] == "resid_out" and doc["layers"] == [1]
    assert doc["method"] == "mean_difference" and doc["position"] == "mean" and doc["model"]["hidden_size"] == 64
    back = SteeringVector.load(tmp_path / "v")
    assert back.layers == [1] and back.position == "mean" and back.model == vec.model
    assert torch.equal(back.directions[1], vec.directions[1])
    back.check(model)
    with pytest.raises(OutputError):
        vec.save(tmp_path / "v")  # not over an earlier output without overwrite
    other, _ = actlab.load_model("random:tiny-llama", seed=1)  # same shapes, other weights
    with pytest.raises(SteeringError, match="different weights"):
        with apply_steering(other, back, 1.0):
            pass
    qwen3, _ = actlab.load_model("random:tiny-qwen3")
    with pytest.raises(SteeringError, match="does not fit|d_model"):
        with apply_steering(qwen3, back, 1.0):
            pass
    wide = SteeringVector(directions={1: torch.ones(32)})
    with pytest.raises(SteeringError, match="d_model 32 but the model 64"):
        wide.check(model)
    (tmp_path / "v" / "directions.safetensors").write_bytes(b"junk")
    with pytest.raises(SteeringError, match="does not match"):
        SteeringVector.load(tmp_path / "v")
    with pytest.raises(SteeringError, match="no steering.json"):
        SteeringVector.load(tmp_path)


def test_control_vector_gguf(tiny_llama, tmp_path):
    import gguf

    model, tok = tiny_llama
    vec = steering_vector(model, tok, PAIRS, layers=[1])
    path = export_control_vector(vec, tmp_path / "cv.gguf")
    reader = gguf.GGUFReader(str(path))
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    count = reader.get_field("controlvector.layer_count")
    assert count.contents() == 1 and count.types == [gguf.GGUFValueType.INT32]
    assert [t.name for t in reader.tensors] == ["direction.1"]
    t = reader.tensors[0]
    assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [64]
    np.testing.assert_array_equal(np.asarray(t.data), vec.directions[1].numpy())
    back = load_control_vector(path)
    assert back.layers == [1] and torch.equal(back.directions[1], vec.directions[1])
    with pytest.raises(SteeringError, match="cannot steer layer 0"):
        export_control_vector(steering_vector(model, tok, PAIRS, layers=[0, 1]), tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists()


@pytest.mark.slow
def test_smollm2_sentiment_steering(smollm2):
    """A sentiment vector at layer 10 moves the next-token log-probs of sentiment words it never saw."""
    model, tok = smollm2
    pairs = [(f"{s} was {g}.", f"{s} was {b}.") for s, g, b in
             zip(["The film", "Our trip", "The meal", "This book"], ["wonderful", "great", "lovely", "delightful"],
                 ["terrible", "awful", "horrible", "dreadful"], strict=True)]
    vec = steering_vector(model, tok, pairs, layers=[10])
    ids = tok("When I walked into the room, I felt", return_tensors="pt")["input_ids"]
    good, bad = tok(" happy", add_special_tokens=False)["input_ids"][0], tok(" sad", add_special_tokens=False)["input_ids"][0]

    def gap(scale: float) -> float:
        with apply_steering(model, vec, scale), torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0, -1].double(), -1)
        return float(lp[good] - lp[bad])

    assert gap(-2.0) < gap(0.0) - 0.5 and gap(2.0) > gap(0.0) + 0.5


@pytest.mark.slow
def test_llamacpp_applies_our_control_vector_at_the_same_layer(smollm2, tmp_path):
    """llama.cpp itself, steered by our GGUF, moves the logits as actlab does at layers.10, not at 9 or 11.

    The buffer is filled the way llama.cpp's loader (common_control_vector_load) reads the file:
    ``direction.<il>`` at offset ``(il - 1) * n_embd``.
    """
    import ctypes

    import gguf

    from actlab.engine.llamacpp import _decode, _open, llamacpp_available
    from actlab.models.load import smollm2_gguf_path

    if llamacpp_available() is not None:
        pytest.skip(llamacpp_available())
    model, tok = smollm2
    pairs = [("The film was wonderful.", "The film was terrible."), ("Our trip was great.", "Our trip was awful.")]
    vec = steering_vector(model, tok, pairs, layers=[10])
    reader = gguf.GGUFReader(str(export_control_vector(vec, tmp_path / "cv.gguf")))
    n_embd, scale = vec.d_model, 4.0
    buf = np.zeros(n_embd * max(vec.layers), np.float32)
    for t in reader.tensors:
        il = int(t.name.removeprefix("direction."))
        buf[(il - 1) * n_embd : il * n_embd] = scale * np.asarray(t.data)
    ids = tok("When I walked into the room, I felt", return_tensors="pt")["input_ids"]
    n_layers = len(model.model.layers)
    with _open(smollm2_gguf_path(), 64, 1) as h:
        _decode(h, ids[0].tolist())
        base = h.logits().copy()
        h.clear()
        assert h.lib.llama_set_adapter_cvec(h.ctx, (ctypes.c_float * buf.size)(*buf.tolist()), buf.size, n_embd, 1,
                                            n_layers - 1) == 0
        _decode(h, ids[0].tolist())
        moved = h.logits().copy() - base
    corr = {}
    with torch.no_grad():
        hf_base = model(ids).logits[0, -1].numpy()
        for layer in (9, 10, 11):
            with apply_steering(model, SteeringVector(directions={layer: vec.directions[10]}), scale, check=False):
                corr[layer] = float(np.corrcoef(moved, model(ids).logits[0, -1].numpy() - hf_base)[0, 1])
    assert corr[10] > 0.98 and corr[10] > max(corr[9], corr[11]) + 0.03, corr
