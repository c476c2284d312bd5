"""On the real SmolLM2-135M: the global allocation beats uniform TEAL, and remove_ restores the model."""

from __future__ import annotations

import pytest
import torch

import actlab
from actlab.data.windows import make_windows
from actlab.plan_eval import evaluate_plan
from actlab.sparsity.calibrate import calibration_windows, prepare


@pytest.mark.slow
def test_global_allocation_beats_uniform_on_smollm2(smollm2):
    model, tok = smollm2
    corpus = actlab.load_corpus("default")
    calib, _ = calibration_windows(corpus, tok, 256, 1024)
    evals = make_windows(corpus, tok, 256, 512, split="eval")
    with torch.no_grad():
        before = model(evals[:1]).logits
    uniform = prepare(model, actlab.TealConfig(0.5), calib).plan()
    ranked = prepare(model, actlab.TealConfig(0.5, allocation="global", fisher_tokens=512), calib).plan()
    r_uniform = evaluate_plan(model, uniform, evals)
    r_global = evaluate_plan(model, ranked, evals, ppl_dense=r_uniform.ppl_dense)
    assert 0.45 < r_uniform.sparsity_model_wide < 0.55 and 0.45 < r_global.sparsity_model_wide < 0.55
    assert r_uniform.ppl_increase_pct > r_global.ppl_increase_pct > 0
    with torch.no_grad():
        assert torch.equal(model(evals[:1]).logits, before)
