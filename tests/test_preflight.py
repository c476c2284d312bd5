"""preflight: each later stage's cheapest call, run before the long work."""

import pytest
import torch

import actlab
from actlab.outputs import OutputError
from actlab.preflight import PreflightError, preflight


@pytest.fixture(scope="module")
def tiny():
    return actlab.load_model("random:tiny-llama")[0]


def test_ok_on_a_causal_lm_and_leaves_it_as_found(tiny, tmp_path):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    found = preflight(tiny, tmp_path / "out")
    assert found["engine"] == "ok"
    assert found["kernels"] in ("compiled", "fallback")
    assert found["out"] == str(tmp_path / "out")
    assert not (tmp_path / "out").exists()  # checked, not created
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())


def test_refuses_a_model_the_engine_cannot_drive():
    bert = actlab.load_model("random:tiny-bert")[0]
    with pytest.raises(PreflightError, match="decode benchmark cannot run"):
        preflight(bert, kernels=False)


def test_reports_wrong_kernel_results(tiny, monkeypatch):
    from actlab.kernels import ops

    monkeypatch.setattr(ops, "sparse_linear", lambda x, wt, t, bias=None: torch.zeros(x.shape[0], wt.shape[1]))
    with pytest.raises(PreflightError, match="wrong results"):
        preflight(tiny, engine=False)


def test_unwritable_out_is_refused_first(tiny, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        preflight(tiny, target, engine=False, kernels=False)
