"""CD-T on tiny random decoders: the two parts sum to the model's own activations, and the sources behave."""

from __future__ import annotations

import pytest
import torch

import actlab
from actlab.interp.cdt import CDTError, decompose, sign_split

SEQ = 12


def _model(spec: str):
    torch.manual_seed(0)
    model, _ = actlab.load_model(spec)
    return model.eval()


@pytest.fixture(scope="module")
def llama():
    return _model("random:tiny-llama")


def _ids(model, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (SEQ,), generator=g)


def _max_rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("spec", ["random:tiny-llama", "random:tiny-qwen2", "random:tiny-qwen3", "random:tiny-mistral"])
def test_the_parts_sum_to_every_layer_and_the_logits(spec):
    model = _model(spec)
    d = decompose(model, _ids(model), relevant_positions=[2, 5, -1])
    assert len(d.relevant) == len(d.full) == model.config.num_hidden_layers
    for r, i, full in zip(d.relevant, d.irrelevant, d.full, strict=True):
        assert _max_rel(r + i, full) < 1e-5
        assert r.abs().max() > 1e-3 * full.abs().max() and i.abs().max() > 1e-3 * full.abs().max()  # both carry some
    assert _max_rel(d.relevant_logits + d.irrelevant_logits, d.logits) < 1e-5
    assert d.max_error < 1e-5
    with torch.no_grad():  # and the model's own forward is what "full" means
        assert _max_rel(d.logits, model(_ids(model).unsqueeze(0)).logits) < 1e-5


def test_all_positions_relevant_leaves_nothing_irrelevant(llama):
    d = decompose(llama, _ids(llama), relevant_positions=list(range(SEQ)))
    for i, full in zip(d.irrelevant, d.full, strict=True):
        assert float(i.abs().max()) <= 1e-6 * float(full.abs().max())
    assert float(d.irrelevant_logits.abs().max()) <= 1e-6 * float(d.logits.abs().max())


def test_no_position_relevant_leaves_nothing_relevant(llama):
    d = decompose(llama, _ids(llama), relevant_positions=[])
    assert all(float(r.abs().max()) == 0.0 for r in d.relevant) and float(d.relevant_logits.abs().max()) == 0.0
    assert _max_rel(d.irrelevant_logits, d.logits) < 1e-5


def test_attention_is_causal_for_the_relevant_part(llama):
    d = decompose(llama, _ids(llama), relevant_positions=[6])
    for r in d.relevant:
        assert float(r[0, :6].abs().max()) == 0.0  # earlier positions cannot see position 6
        assert float(r[0, 6].abs().max()) > 0.0
    att = d.logit_attribution(int(d.logits[0, -1].argmax()))
    assert att.relevant + att.irrelevant == pytest.approx(att.logit, abs=1e-4)
    assert att.relevant != 0.0


def test_a_later_start_layer(llama):
    d = decompose(llama, _ids(llama), relevant_positions=[0, 3], layer_start=1)
    assert d.layers == [1] and _max_rel(d.relevant[0] + d.irrelevant[0], d.full[0]) < 1e-5


def test_every_head_and_neuron_of_a_layer_as_sources(llama):
    """All of layer 0's heads and neurons relevant: β after layer 0 is exactly what layer 0 added."""
    ids = _ids(llama)
    n_heads, d_ff = llama.config.num_attention_heads, llama.config.intermediate_size
    d = decompose(llama, ids, relevant_positions=[], relevant_heads={0: list(range(n_heads))},
                  relevant_neurons={0: list(range(d_ff))}, stabilize=False)  # the stabiliser would move entries
    with torch.no_grad():
        embed = llama.model.embed_tokens(ids.unsqueeze(0))
    assert _max_rel(d.relevant[0], d.full[0] - embed) < 1e-5
    assert _max_rel(d.irrelevant[0], embed) < 1e-5
    one = decompose(llama, ids, relevant_positions=[], relevant_heads={1: [2]})
    assert float(one.relevant[0].abs().max()) == 0.0 and float(one.relevant[1].abs().max()) > 0.0


def test_the_attention_implementation_is_restored(llama):
    before = llama.config._attn_implementation
    decompose(llama, _ids(llama), relevant_positions=[1])
    assert llama.config._attn_implementation == before


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"relevant_positions": [SEQ]}, "outside the input"),
    ({"relevant_positions": [0], "layer_start": 5}, "layer_start"),
    ({"relevant_positions": [], "relevant_heads": {0: [99]}}, "heads"),
    ({"relevant_positions": [], "relevant_neurons": {7: [0]}}, "neurons"),
])
def test_bad_requests_name_the_problem(llama, kwargs, match):
    with pytest.raises(CDTError, match=match):
        decompose(llama, _ids(llama), **kwargs)


@pytest.mark.parametrize("spec", ["random:tiny-gpt2", "random:tiny-gemma2"])
def test_other_layouts_are_refused(spec):
    model = _model(spec)
    with pytest.raises(CDTError, match="llama"):
        decompose(model, torch.tensor([3, 4, 5]), relevant_positions=[0])


def test_an_unknown_token_id_is_refused(llama):
    d = decompose(llama, _ids(llama), relevant_positions=[1])
    with pytest.raises(CDTError, match="vocabulary"):
        d.logit_attribution(10**6)


def test_the_stabiliser_keeps_the_sum_and_bounds_the_parts():
    g = torch.Generator().manual_seed(0)
    rel, irrel = torch.randn(4, 50, generator=g) * 100, torch.randn(4, 50, generator=g) * 100
    r, i = sign_split(rel, irrel)
    assert torch.allclose(r + i, rel + irrel, atol=1e-4)
    assert bool((r * i >= 0).all()) and bool((r.abs() <= (rel + irrel).abs() + 1e-4).all())
    same = (rel * irrel) >= 0
    assert torch.equal(r[same], rel[same])  # entries of one sign are left alone


@pytest.mark.parametrize("stabilize", [True, False])
def test_float64_parts_sum_tighter(llama, stabilize):
    d = decompose(llama, _ids(llama), relevant_positions=[3], dtype=torch.float64, stabilize=stabilize)
    assert d.relevant[0].dtype == torch.float64 and d.max_error < 1e-5


@pytest.mark.slow
def test_smollm2_parts_stay_bounded_and_sum(smollm2):
    model, tok = smollm2
    ids = torch.tensor(tok.encode("The Eiffel Tower is in the city of"))
    for positions in ([0], [1, 2, 3]):  # position 0 carries the massive activations
        d = decompose(model, ids, relevant_positions=positions)
        assert d.max_error < 1e-4
        for r, full in zip(d.relevant, d.full, strict=True):
            assert float(r.abs().max()) <= 1.001 * float(full.abs().max())
