"""Energy, max-logit and MSP against hand formulas and pytorch-ood's static scores."""

from __future__ import annotations

import math

import pytest
import torch

from actlab.functions.ood import OODError
from actlab.functions.ood.scores import energy, max_logit, msp


def test_scores_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    lse = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    torch.testing.assert_close(energy(logits), torch.tensor([-lse, -math.log(3)]))
    lse_t = math.log(math.exp(0.5) + math.exp(1) + math.exp(1.5))
    torch.testing.assert_close(energy(logits, t=2.0), torch.tensor([-2 * lse_t, -2 * math.log(3)]))
    torch.testing.assert_close(max_logit(logits), torch.tensor([-3.0, 0.0]))
    torch.testing.assert_close(msp(logits), torch.tensor([-math.exp(3) / math.exp(lse), -1 / 3]))
    torch.testing.assert_close(msp(logits, t=2.0), torch.tensor([-math.exp(1.5) / math.exp(lse_t), -1 / 3]))


def test_a_confident_sample_scores_lower_than_a_flat_one():
    logits = torch.tensor([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    for f in (energy, max_logit, msp):
        s = f(logits)
        assert s[0] < s[1], f.__name__


def test_scores_refuse_other_shapes():
    with pytest.raises(OODError, match="batch, classes"):
        energy(torch.zeros(3))


@pytest.mark.parametrize("t", [1.0, 0.5, 3.0])
def test_scores_equal_pytorch_ood(pytorch_ood, t):
    d = pytorch_ood.detector
    logits = torch.randn(20, 7, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(energy(logits, t), d.EnergyBased.score(logits, t=t))
    torch.testing.assert_close(max_logit(logits), d.MaxLogit.score(logits))
    torch.testing.assert_close(msp(logits, t), d.MaxSoftmax.score(logits, t))
