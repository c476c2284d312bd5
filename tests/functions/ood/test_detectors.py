"""The detector registry and fit_detector: formulas by hand, config round trips, errors, and equality with
pytorch-ood's ReAct, ASH, SCALE, EnergyBased, MaxLogit, MaxSoftmax and Mahalanobis on the same features."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from actlab.functions.ood import (
    DETECTORS,
    AshSConfig,
    OODError,
    ReActConfig,
    detector_from_dict,
    fit_detector,
)
from actlab.functions.ood.scores import energy, max_logit, msp


def _setup(seed=0, n=80, d=16, classes=5):
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(d, classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(classes, d, generator=g))
        head.bias.copy_(torch.randn(classes, generator=g))
    z_in = torch.randn(n, d, generator=g).relu() + 0.01
    z_out = (2 * torch.randn(n // 2, d, generator=g)).relu() + 0.01
    y = torch.arange(n) % classes
    return head, z_in, z_out, y


def test_every_name_is_registered():
    assert set(DETECTORS) == {"energy", "max-logit", "msp", "react", "ash-p", "ash-b", "ash-s", "scale",
                              "mahalanobis", "feature-norm"}


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_configs_round_trip_through_json(name):
    cfg = DETECTORS[name]()
    assert detector_from_dict(cfg.to_dict()) == cfg


def test_react_fits_the_percentile_and_scores_by_hand():
    head, z_in, z_out, _ = _setup()
    det = fit_detector("react", z_in, head=head, percentile=0.8, logit_score="max-logit")
    c = float(torch.quantile(z_in.reshape(-1).double(), 0.8))
    assert det.state["threshold"] == pytest.approx(c)
    with torch.no_grad():
        want = -head(z_out.clamp(max=c)).max(dim=1).values
    torch.testing.assert_close(det.score(z_out), want)


def test_a_given_react_threshold_is_used_as_is():
    head, z_in, _, _ = _setup()
    det = fit_detector(ReActConfig(threshold=0.5), z_in, head=head)
    assert det.state["threshold"] == 0.5
    with torch.no_grad():
        torch.testing.assert_close(det.score(z_in), energy(head(z_in.clamp(max=0.5))))


def test_ash_s_scores_by_hand():
    head, z_in, _, _ = _setup(d=4)
    x = z_in[:3]
    det = fit_detector("ash-s", z_in, head=head, percentile=0.5, t=2.0)
    shaped = torch.zeros_like(x)
    for b in range(3):  # keep the top 2 of 4, rescale by exp(sum / kept sum)
        top = x[b].topk(2)
        shaped[b, top.indices] = top.values * torch.exp(x[b].sum() / top.values.sum())
    with torch.no_grad():
        torch.testing.assert_close(det.score(x), energy(head(shaped), 2.0))


@pytest.mark.parametrize(("name", "fn"), [("energy", energy), ("max-logit", max_logit), ("msp", msp)])
def test_logit_detectors_score_the_heads_logits(name, fn):
    head, z_in, z_out, _ = _setup()
    with torch.no_grad():
        torch.testing.assert_close(fit_detector(name, z_in, head=head).score(z_out), fn(head(z_out)))


def test_feature_norm_scores_the_negated_norm_of_shaped_features():
    _, z_in, z_out, _ = _setup()
    torch.testing.assert_close(fit_detector("feature-norm", z_in).score(z_out), -z_out.norm(dim=1))
    det = fit_detector("feature-norm", z_in, shaping="react", percentile=0.9)
    c = det.state["threshold"]
    torch.testing.assert_close(det.score(z_out), -z_out.clamp(max=c).norm(dim=1))


def test_errors_name_the_fix():
    head, z_in, _, _ = _setup()
    with pytest.raises(OODError, match="pass head="):
        fit_detector("ash-p", z_in)
    with pytest.raises(OODError, match="unknown OOD detector 'ash'"):
        fit_detector("ash", z_in, head=head)
    with pytest.raises(OODError, match="unknown config field"):
        fit_detector("energy", z_in, head=head, percentile=0.5)
    with pytest.raises(OODError, match="not both"):
        fit_detector(AshSConfig(), z_in, head=head, percentile=0.5)
    with pytest.raises(OODError, match="logit_score"):
        AshSConfig(logit_score="entropy")
    with pytest.raises(OODError, match="percentile"):
        fit_detector("scale", z_in, head=head, percentile=2.0)
    with pytest.raises(OODError, match="non-empty"):
        fit_detector("mahalanobis", torch.zeros(0, 3))
    with pytest.raises(OODError, match="tensor"):
        fit_detector("mahalanobis", z_in).score(torch.zeros(3))


def _theirs(pytorch_ood, name, head, score_name, p):
    d = pytorch_ood.detector
    scores = {"energy": d.EnergyBased.score, "max-logit": d.MaxLogit.score, "msp": d.MaxSoftmax.score}[score_name]

    def head4(maps):  # pytorch-ood's shapings take [B, C, H, W]
        return head(maps.flatten(1))

    if name == "react":
        return d.ReAct(None, head4, percentile=p, detector=scores)
    if name == "scale":
        return d.SCALE(None, head4, percentile=p, detector=scores)
    return d.ASH(None, head4, variant=name, percentile=p, detector=scores)


@pytest.mark.parametrize("score_name", ["energy", "max-logit", "msp"])
@pytest.mark.parametrize("name", ["react", "ash-p", "ash-b", "ash-s", "scale"])
def test_shaped_detectors_equal_pytorch_ood(pytorch_ood, name, score_name):
    head, z_in, z_out, y = _setup(seed=4)
    p = 0.9 if name == "react" else 0.65
    ours = fit_detector(name, z_in, head=head, percentile=p, logit_score=score_name)
    ref = _theirs(pytorch_ood, name, head, score_name, p)
    maps_in, maps_out = z_in[:, :, None, None], z_out[:, :, None, None]
    if name == "react":
        ref.fit_feature_maps(maps_in, y)
        assert ours.state["threshold"] == pytest.approx(ref.threshold, rel=1e-6)
    for z, maps in ((z_in, maps_in), (z_out, maps_out)):
        torch.testing.assert_close(ours.score(z), ref.predict_feature_maps(maps), rtol=1e-5, atol=1e-5)


def test_logit_and_mahalanobis_detectors_equal_pytorch_ood(pytorch_ood):
    d = pytorch_ood.detector
    head, z_in, z_out, y = _setup(seed=5)
    with torch.no_grad():
        logits = head(z_out)
    torch.testing.assert_close(fit_detector("energy", z_in, head=head, t=2.0).score(z_out),
                               d.EnergyBased(None, t=2.0).predict_logits(logits))
    torch.testing.assert_close(fit_detector("max-logit", z_in, head=head).score(z_out),
                               d.MaxLogit(None).predict_logits(logits))
    torch.testing.assert_close(fit_detector("msp", z_in, head=head, t=0.5).score(z_out),
                               d.MaxSoftmax(None, t=0.5).predict_logits(logits))
    ref = d.Mahalanobis(None).fit_features(z_in, y)
    torch.testing.assert_close(fit_detector("mahalanobis", z_in, y).score(z_out), ref.predict_features(z_out),
                               rtol=1e-4, atol=1e-5)
