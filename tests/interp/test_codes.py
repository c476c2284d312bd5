"""Activation codes: answers known by construction on hand-set ReLU nets, Hamming nearest-code against brute force,
merge equals the whole, sequence models per token and pooled."""

import itertools

import pytest
import torch
from torch import nn

from actlab.activations.sites import module_sites
from actlab.errors import ActlabError
from actlab.interp.codes import (
    ActivationCodes,
    CodesError,
    CodeTracker,
    code_metrics,
    collect_codes,
    hamming,
    pack_bits,
    record_codes,
    unpack_bits,
)


def _quadrant_net() -> nn.Sequential:
    """relu(x) with W = I, b = 0: the code of a 2-D input is its quadrant (x1 > 0, x2 > 0)."""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.zero_()
    return net


# three inputs in quadrant (+,+) labelled 0, 0, 1; one in (-,+) labelled 1; two in (-,-) labelled 2
X = torch.tensor([[1.0, 2.0], [0.5, 0.1], [3.0, 1.0], [-1.0, 1.0], [-2.0, -1.0], [-0.1, -3.0]])
Y = torch.tensor([0, 0, 1, 1, 2, 2])


def test_quadrant_codes_by_hand():
    net = _quadrant_net()
    c = record_codes(net, X, module_sites(net, nn.ReLU), labels=Y)
    assert c.bits().int().tolist() == [[1, 1], [1, 1], [1, 1], [0, 1], [0, 0], [0, 0]]
    assert c.layout == (("1", 2),) and c.n_codes() == 3
    assert c.determinism() == pytest.approx(1 / 6)  # only the (-,+) input is alone in its code
    purity, pure = c.categorization()
    assert purity == pytest.approx(5 / 6)  # majorities: 2 of 3, 1 of 1, 2 of 2
    assert pure == pytest.approx(2 / 3)  # (-,+) and (-,-) hold one class, (+,+) two
    # (+,-) is at distance 1 from (+,+) [labels 0, 0, 1] and (-,-) [2, 2]: 0 and 2 tie with two votes -> 0
    test = record_codes(net, torch.tensor([[1.0, -1.0], [2.0, 2.0], [-5.0, 0.5], [-1.0, -1.0]]),
                        module_sites(net, nn.ReLU), labels=torch.tensor([0, 1, 1, 2]))
    assert c.predict(test).tolist() == [0, 0, 1, 2]
    assert c.nearest_code_accuracy(test) == pytest.approx(3 / 4)


def test_a_wider_hand_set_layer_enumerates_its_regions():
    """Four units relu(x1), relu(x2), relu(x1 + x2), relu(x1 - x2) cut the plane into 8 sectors, each a code."""
    net = nn.Sequential(nn.Linear(2, 4, bias=False), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]]))
    angles = torch.arange(8) * (torch.pi / 4) + torch.pi / 8  # one point inside each sector
    x = torch.stack([angles.cos(), angles.sin()], 1)
    c = record_codes(net, x, module_sites(net, nn.ReLU), labels=torch.arange(8) // 2)
    expected = [[a > 0, b > 0, a + b > 0, a - b > 0] for a, b in x.tolist()]
    assert c.bits().tolist() == expected and c.n_codes() == 8 and c.determinism() == 1.0
    assert c.categorization() == (1.0, 1.0)  # trivially: every code is unique


def test_pack_unpack_and_hamming_against_brute_force():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(23, 37, generator=g) > 0.5, torch.rand(41, 37, generator=g) > 0.3
    pa, pb = pack_bits(a), pack_bits(b)
    assert pa.shape == (23, 5) and torch.equal(unpack_bits(pa, 37), a)
    brute = torch.tensor([[sum(x != y for x, y in zip(r, s, strict=True)) for s in b.tolist()] for r in a.tolist()])
    assert torch.equal(hamming(pa, pb), brute.int())


def test_nearest_code_classifier_against_brute_force():
    g = torch.Generator().manual_seed(1)
    train, test = ActivationCodes(), ActivationCodes()
    tb, tl = torch.rand(60, 12, generator=g) > 0.5, torch.randint(0, 4, (60,), generator=g)
    qb, ql = torch.rand(30, 12, generator=g) > 0.5, torch.randint(0, 4, (30,), generator=g)
    train.update(tb, tl)
    test.update(qb, ql)
    want = []
    for q in qb.tolist():
        d = [sum(x != y for x, y in zip(q, t, strict=True)) for t in tb.tolist()]
        votes = [0] * 4
        for i, di in enumerate(d):
            if di == min(d):
                votes[int(tl[i])] += 1
        want.append(votes.index(max(votes)))  # ties to the smallest label
    assert train.predict(test).tolist() == want
    assert train.nearest_code_accuracy(test) == pytest.approx(sum(w == int(y) for w, y in zip(want, ql, strict=True)) / 30)


def test_merge_of_shards_equals_the_whole_and_state_round_trip():
    g = torch.Generator().manual_seed(2)
    bits, labels = torch.rand(50, 10, generator=g) > 0.7, torch.randint(0, 3, (50,), generator=g)
    whole, a, b = ActivationCodes(), ActivationCodes(), ActivationCodes()
    whole.update(bits, labels)
    a.update(bits[:20], labels[:20])
    b.update(bits[20:35], labels[20:35])
    b.update(bits[35:], labels[35:])
    merged = a.merge(b)
    assert torch.equal(merged.codes, whole.codes) and torch.equal(merged.labels, whole.labels)
    assert merged.summary() == whole.summary()
    assert ActivationCodes().merge(whole).summary() == whole.summary()  # an empty shard is neutral
    back = ActivationCodes.from_state_dict(whole.state_dict())
    assert back.summary() == whole.summary() and back.layout == whole.layout


def test_determinism_by_construction():
    c = ActivationCodes()
    rows = [list(p) for p in itertools.product([False, True], repeat=3)]  # 8 distinct codes
    c.update(torch.tensor(rows + rows[:2]))  # two codes occur twice
    assert c.n_codes() == 8 and c.determinism() == pytest.approx(6 / 10)


def test_module_reused_twice_contributes_both_calls():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.relu = nn.Linear(2, 3), nn.Linear(3, 4), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(self.b(self.relu(self.a(x))))

    net = Twice()
    c = record_codes(net, torch.randn(5, 2), module_sites(net, nn.ReLU))
    assert c.layout == (("relu#0", 3), ("relu#1", 4)) and c.n_bits == 7


def test_eps_for_non_relu_units_and_cnn_inputs():
    net = nn.Sequential(nn.Identity())
    x = torch.tensor([[0.5, -0.05, -0.3], [0.0, 0.2, 0.01]])
    s = module_sites(net, nn.Identity)
    assert record_codes(net, x, s).bits().tolist() == [[True, False, False], [False, True, True]]
    assert record_codes(net, x, s, eps=0.1).bits().tolist() == [[True, False, True], [False, True, False]]
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    c = record_codes(conv, torch.randn(4, 1, 5, 5), module_sites(conv, nn.ReLU))
    assert len(c) == 4 and c.n_bits == 2 * 3 * 3  # one code per image over every unit


def test_sequence_per_token_and_pooled():
    net = nn.Sequential(nn.Identity())
    s = module_sites(net, nn.Identity)
    x = torch.tensor([[[1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]],  # [batch 2, seq 3, d 2]
                      [[-1.0, -1.0], [1.0, -1.0], [5.0, 5.0]]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    tok = record_codes(net, x, s, labels=torch.tensor([7, 8]), sequence=True, mask=mask)
    assert tok.bits().int().tolist() == [[1, 0], [1, 1], [0, 1], [0, 0], [1, 0]]  # the padded token left out
    assert tok.labels.tolist() == [7, 7, 7, 8, 8]
    per_tok = record_codes(net, x, s, labels=torch.tensor([[0, 1, 2], [3, 4, 5]]), sequence=True)
    assert per_tok.labels.tolist() == [0, 1, 2, 3, 4, 5]
    anywhere = record_codes(net, x, s, labels=torch.tensor([0, 1]), sequence=True, pool=0.0, mask=mask)
    assert anywhere.bits().int().tolist() == [[1, 1], [1, 0]]
    majority = record_codes(net, x, s, sequence=True, pool=0.5)  # on in more than half of the tokens
    assert majority.bits().int().tolist() == [[1, 1], [1, 0]]
    assert record_codes(net, x, s, sequence=True, pool=0.7).bits().int().tolist() == [[0, 0], [0, 0]]


def test_transformer_tokens_at_a_canonical_site(tiny_llama):
    model, _ = tiny_llama
    ids = torch.randint(3, 500, (2, 6))
    c = record_codes(model, ids, "layers.*.mlp.act_out", eps=0.01, sequence=True)
    d_ff = model.config.intermediate_size
    assert len(c) == 12 and c.n_bits == 2 * d_ff
    assert [n for n, _ in c.layout] == ["layers.0.mlp.act_out", "layers.1.mlp.act_out"]
    pooled = record_codes(model, {"input_ids": ids}, "mlp.act_out", eps=0.01, sequence=True, pool=0.5)
    assert len(pooled) == 2


def test_tracker_during_training_and_modes_restored():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))
    net.train()
    x = torch.randn(64, 2)
    y = (x[:, 0] > 0).long()
    data = [(x, y)]
    track = CodeTracker(module_sites(net, nn.ReLU), data, data)
    first = track(net, step=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    last = track(net, step=50)
    assert [r["step"] for r in track.history] == [0, 50] and net.training and net[2].training
    # on its own training set every input's nearest codes are its own code's inputs: accuracy = purity
    assert first["inputs"] == 64 and last["nearest_code_accuracy"] == pytest.approx(last["purity"])
    assert first["nearest_code_accuracy"] == pytest.approx(first["purity"]) and first != {**last, "step": 0}
    assert code_metrics(net, module_sites(net, nn.ReLU), data, data) == {k: v for k, v in last.items() if k != "step"}


def test_clear_errors():
    assert issubclass(CodesError, ActlabError)
    net = _quadrant_net()
    s = module_sites(net, nn.ReLU)
    with pytest.raises(CodesError, match="needs every training input labelled"):
        record_codes(net, X, s).predict(record_codes(net, X, s))
    with pytest.raises(CodesError, match="layout"):
        c = record_codes(net, X, s)
        c.update(torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(CodesError, match="cannot merge"):
        record_codes(net, X, s).merge(record_codes(net, X, module_sites(net, nn.Linear)))
    with pytest.raises(CodesError, match=r"6 labels for 5 inputs|labels for"):
        record_codes(net, X[:5], s, labels=Y)
    with pytest.raises(CodesError, match="sequence=True needs site tensors"):
        record_codes(net, X, s, sequence=True)
    with pytest.raises(CodesError, match="pool applies"):
        record_codes(net, X, s, pool=0.5)
    with pytest.raises(CodesError, match="no codes"):
        ActivationCodes().determinism()
    with pytest.raises(CodesError, match="needs labels"):
        record_codes(net, X, s).categorization()
    assert collect_codes(net, [(X, None)], s).labels.tolist() == [-1] * 6
