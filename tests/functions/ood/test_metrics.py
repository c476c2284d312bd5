"""AUROC, AUPR-IN/OUT and FPR95 against hand-computed cases (ties included) and pytorch-ood's OODMetrics."""

from __future__ import annotations

import pytest
import torch

from actlab.functions.ood import OODError, aupr, auroc, fpr_at_tpr, ood_metrics


def _pairs_auroc(s_in, s_out) -> float:
    """P(outlier > inlier) + P(tie) / 2, over every pair."""
    a, b = s_in.reshape(-1, 1), s_out.reshape(1, -1)
    return float(((b > a).double() + 0.5 * (b == a).double()).mean())


def test_a_perfect_and_a_reversed_detector():
    s_in, s_out = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([3.0, 4.0])
    m = ood_metrics(s_in, s_out)
    assert m == {"AUROC": 1.0, "AUPR-IN": 1.0, "AUPR-OUT": 1.0, "FPR95TPR": 0.0}
    r = ood_metrics(-s_in, -s_out)
    assert r["AUROC"] == 0.0 and r["FPR95TPR"] == 1.0


def test_hand_computed_case_with_a_tie():
    s_in, s_out = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([2.0, 3.0])
    # pairs: 3 beats all 3, 2 beats 0 and 1 and ties 2 -> (3 + 2.5) / 6
    assert auroc(s_in, s_out) == pytest.approx(5.5 / 6)
    # thresholds 3 (tp 1, fp 0), 2 (tp 2, fp 1): TPR reaches 0.95 only at 2, where FPR = 1/3
    assert fpr_at_tpr(s_in, s_out) == pytest.approx(1 / 3)
    # AUPR-OUT: PR points (recall, precision) from recall 0: (0, 1), (0.5, 1), (1, 2/3), (1, 2/5)
    # trapezoids: 0.5 * 1 + 0.5 * (1 + 2/3) / 2 + 0
    assert aupr(s_in, s_out, "out") == pytest.approx(0.5 + 0.5 * (1 + 2 / 3) / 2)
    # AUPR-IN on -scores, inliers positive: thresholds 0 (tp 1), -1 (tp 2), -2 (tp 3, fp 1), -3 (tp 3, fp 2)
    # points: (0, 1), (1/3, 1), (2/3, 1), (1, 3/4), (1, 3/5)
    assert aupr(s_in, s_out, "in") == pytest.approx(1 / 3 + 1 / 3 + (1 / 3) * (1 + 3 / 4) / 2)


def test_constant_scores_give_half():
    m = ood_metrics(torch.zeros(4), torch.zeros(6))
    assert m["AUROC"] == pytest.approx(0.5)
    assert m["FPR95TPR"] == 1.0


@pytest.mark.parametrize("seed", range(3))
def test_auroc_is_the_pair_probability_with_heavy_ties(seed):
    g = torch.Generator().manual_seed(seed)
    s_in = torch.randint(0, 5, (40,), generator=g).float()
    s_out = torch.randint(2, 7, (25,), generator=g).float()
    assert auroc(s_in, s_out) == pytest.approx(_pairs_auroc(s_in, s_out))
    # the order of tied samples changes nothing
    perm = torch.randperm(40, generator=g)
    assert ood_metrics(s_in[perm], s_out) == ood_metrics(s_in, s_out)


def test_fpr_key_follows_tpr_and_bad_input_is_refused():
    assert "FPR90TPR" in ood_metrics(torch.zeros(2), torch.ones(2), tpr=0.9)
    with pytest.raises(OODError, match="NaN"):
        ood_metrics(torch.tensor([0.0, float("nan")]), torch.ones(2))
    with pytest.raises(OODError, match="outlier scores"):
        ood_metrics(torch.zeros(3), torch.zeros(0))
    with pytest.raises(OODError, match="tpr"):
        fpr_at_tpr(torch.zeros(2), torch.ones(2), 1.5)
    with pytest.raises(OODError, match="'in' or 'out'"):
        aupr(torch.zeros(2), torch.ones(2), "ood")


@pytest.mark.parametrize(("seed", "tied"), [(0, False), (1, True), (2, True)])
def test_metrics_equal_pytorch_ood(pytorch_ood, seed, tied):
    g = torch.Generator().manual_seed(seed)
    s_in, s_out = torch.randn(300, generator=g), torch.randn(120, generator=g) + 0.7
    if tied:  # coarse scores: many ties within and across the two sides
        s_in, s_out = (s_in * 2).round(), (s_out * 2).round()
    ref = pytorch_ood.metrics.OODMetrics()
    ref.update(torch.cat([s_in, s_out]), torch.cat([torch.zeros(300), -torch.ones(120)]).long())
    want = ref.compute()
    got = ood_metrics(s_in, s_out)
    for key, value in got.items():
        assert value == pytest.approx(float(want[key]), abs=1e-12), key
