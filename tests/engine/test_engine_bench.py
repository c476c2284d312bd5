"""Bench utilities: interleaving order, medians, scoped variants, thread control, memory, decode speed."""

from __future__ import annotations

import contextlib

import pytest
import torch

import actlab
from actlab.engine.bench import (
    interleaved,
    measure_decode,
    measure_hf_decode,
    peak_rss_mb,
    rss_mb,
    threads,
    within,
)


def _counter(values: list[float], log: list[str], name: str):
    it = iter(values)

    def run() -> float:
        log.append(name)
        return next(it)

    return run


def test_interleaved_runs_variants_in_rounds_and_takes_medians():
    log: list[str] = []
    variants = {
        "a": _counter([100.0, 1.0, 5.0, 3.0], log, "a"),  # first value is warm-up, discarded
        "b": _counter([0.0, 10.0, 30.0, 20.0], log, "b"),
        "c": _counter([7.0, 7.0, 7.0, 8.0], log, "c"),
    }
    r = interleaved(variants, reps=3, warmup=1)
    assert log == ["a", "b", "c"] * 4
    assert r.order == log
    assert r.samples == {"a": [1.0, 5.0, 3.0], "b": [10.0, 30.0, 20.0], "c": [7.0, 7.0, 8.0]}
    assert r.medians == {"a": 3.0, "b": 20.0, "c": 7.0}
    assert r.ratio("b", "a") == pytest.approx(20.0 / 3.0)


def test_interleaved_even_count_median_and_bad_args():
    r = interleaved({"x": _counter([1.0, 2.0, 4.0, 8.0], [], "x")}, reps=4)
    assert r.medians["x"] == 3.0
    with pytest.raises(ValueError):
        interleaved({"x": lambda: 1.0}, reps=0)
    with pytest.raises(ValueError):
        interleaved({}, reps=1)


def test_within_enters_and_leaves_the_context_around_each_run():
    events: list[str] = []

    @contextlib.contextmanager
    def swapped():
        events.append("in")
        try:
            yield
        finally:
            events.append("out")

    def run() -> float:
        events.append("run")
        return 1.0

    r = interleaved({"dense": lambda: events.append("dense") or 2.0, "sparse": within(swapped, run)}, reps=2)
    assert events == ["dense", "in", "run", "out"] * 2
    assert r.medians == {"dense": 2.0, "sparse": 1.0}


def test_threads_sets_and_restores():
    before = torch.get_num_threads()
    with threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with threads(None) as n:
        assert n == before


def test_memory_readings():
    assert rss_mb() > 0
    assert peak_rss_mb() >= rss_mb() * 0.5  # peak is a high-water mark; statm may count pages differently
    assert peak_rss_mb() >= 1


def test_decode_measurements_on_tiny_model(tiny_llama):
    model, _ = tiny_llama
    ids = torch.randint(3, 500, (1, 8), generator=torch.Generator().manual_seed(0))
    ours = measure_decode(model, ids, 6, reps=2, warmup=1)
    hf = measure_hf_decode(model, ids, 6, reps=2, warmup=0)
    for speed in (ours, hf):
        assert len(speed.samples) == 2 and len(speed.prefill_samples) == 2
        assert speed.tokens_per_s > 0 and speed.prefill_s > 0
        assert speed.step_s == pytest.approx(1 / speed.tokens_per_s)
    static = measure_hf_decode(model, ids, 6, reps=1, warmup=0, cache_implementation="static")
    assert static.tokens_per_s > 0
    with pytest.raises(ValueError, match="new_tokens"):
        measure_decode(model, ids, 1)


def test_hf_measurement_forces_all_tokens_despite_eos():
    model, _ = actlab.load_model("random:tiny-llama")
    ids = torch.randint(3, 500, (1, 8), generator=torch.Generator().manual_seed(1))
    first = int(model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)[0, -1])
    model.generation_config.eos_token_id = first  # generate would stop at once without eos disabled
    assert len(measure_hf_decode(model, ids, 5, reps=1, warmup=0).samples) == 1


def test_sparse_variant_swaps_modules_on_the_same_model_and_restores_it(tiny_llama):
    """The bench pattern: dense and 'sparse' variants share one model object; the swap is scoped."""
    from actlab.engine import generate

    model, _ = tiny_llama
    ids = torch.randint(3, 500, (1, 6), generator=torch.Generator().manual_seed(2))
    mlp = model.model.layers[0].mlp
    dense_down = mlp.down_proj
    seen: dict[str, list[torch.Tensor]] = {"dense": [], "sparse": []}

    @contextlib.contextmanager
    def swapped():
        mlp.down_proj = torch.nn.Linear(dense_down.in_features, dense_down.out_features, bias=False)
        torch.nn.init.zeros_(mlp.down_proj.weight)  # stands in for a sparse module
        try:
            yield
        finally:
            mlp.down_proj = dense_down

    def run(name: str):
        def measure() -> float:
            out = generate(model, ids, 8)
            seen[name].append(out.tokens)
            return out.decode_tokens_per_s

        return measure

    r = interleaved({"dense": run("dense"), "sparse": within(swapped, run("sparse"))}, reps=2)
    assert mlp.down_proj is dense_down
    assert torch.equal(seen["dense"][0], seen["dense"][1]) and torch.equal(seen["sparse"][0], seen["sparse"][1])
    assert not torch.equal(seen["dense"][0], seen["sparse"][0])
    assert r.medians["dense"] > 0 and r.medians["sparse"] > 0


@pytest.fixture(scope="module")
def calib_and_eval():
    """A tiny random Llama (shared: plans are calibrated on it, never left applied) and its windows."""
    from actlab.data.windows import make_windows

    model, tok = actlab.load_model("random:tiny-llama")
    corpus = actlab.load_corpus("default")
    return model, make_windows(corpus, tok, 64, 1024, split="calib"), make_windows(corpus, tok, 64, 1024, split="eval")


METHODS = ["cats", "cett", "chess", "teal", "topk", "wina"]


def test_the_method_list_is_complete():
    from actlab.engine.plan_bench import calibratable_methods

    assert calibratable_methods() == METHODS  # a new method: add it to the case below


@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_calibrated_at_the_asked_sparsity(method, calib_and_eval):
    from actlab.engine.plan_bench import calibrate_at_sparsity
    from actlab.plan_eval import evaluate_plan

    model, calib, heldout = calib_and_eval
    for target in (0.1, 0.2) if method == "cett" else (0.15,):  # cett's knob is searched: two targets
        plan = calibrate_at_sparsity(model, method, target, calib)
        assert plan.method == method
        assert abs(plan.metrics["sparsity_model_wide"] - target) <= 0.01
        measured = evaluate_plan(model, plan, heldout).sparsity_model_wide  # on text calibration never saw
        assert abs(measured - target) < 0.03, (method, target, measured)


def test_a_target_a_method_cannot_reach_is_refused(calib_and_eval):
    from actlab.engine.plan_bench import calibrate_at_sparsity
    from actlab.sparsity.errors import PlanError

    model, calib, _ = calib_and_eval
    with pytest.raises(PlanError, match="cett reaches at most"):  # the down projections are 22% of the weights
        calibrate_at_sparsity(model, "cett", 0.5, calib)
    with pytest.raises(PlanError, match="cannot reach"):
        calibrate_at_sparsity(model, "cats", 0.5, calib)
    with pytest.raises(PlanError, match="'composed' is not calibrated"):
        calibrate_at_sparsity(model, "composed", 0.5, calib)
    with pytest.raises(PlanError, match="'tael' is unknown"):
        calibrate_at_sparsity(model, "tael", 0.5, calib)


def test_bench_cli_calibrates_cett_at_the_asked_sparsity(tmp_path):
    """The reported bug: ``--method cett --sparsity S`` ran CETT's default target whatever S was."""
    import json

    from typer.testing import CliRunner

    from actlab.cli.main import app

    text = tmp_path / "text.txt"
    words = "sparse activations make decoding faster when kernels skip the zeros of each token".split()
    text.write_text(" ".join(words[(i * 7) % len(words)] for i in range(6000)))
    args = ["bench", "--model", "random:tiny-llama", "--data", str(text), "--method", "cett", "--sparsity", "0.12", "--calib-tokens",
            "1024", "--new-tokens", "3", "--reps", "1", "--warmup", "0", "--no-hf", "--threads", "1", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{"):])
    assert out["method"] == "cett" and abs(out["sparsity_model_wide"] - 0.12) <= 0.01


@pytest.mark.parametrize("method", ["teal", "cats"])
def test_the_timed_sparse_variant_decodes_what_the_masking_path_decodes(method, calib_and_eval):
    """What bench times is the plan itself: the engine's prefill (dense path of the kernel modules) and its
    decode steps (the C kernels) give the masking path's greedy tokens."""
    from actlab.engine import generate
    from actlab.engine.plan_bench import calibrate_at_sparsity, kernels_applied
    from actlab.kernels import ops
    from actlab.kernels.swap import kernel_modules

    if not ops.available():
        pytest.skip("compiled extension not built")
    model, calib, heldout = calib_and_eval
    plan = calibrate_at_sparsity(model, method, 0.3, calib)
    prompt = heldout[:2, :12]  # 2 sequences: decode steps of 2 rows take the multi-row kernel
    dense = generate(model, prompt, 10).tokens
    actlab.apply_(model, plan)
    try:
        masked = generate(model, prompt, 10).tokens
    finally:
        actlab.remove_(model)
    with kernels_applied(model, plan):
        assert kernel_modules(model)
        fast = generate(model, prompt, 10).tokens
    assert torch.equal(fast, masked)
    assert not torch.equal(masked, dense)  # the plan changes the output: the comparison can fail


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_a_quantised_bench_leaves_the_fp32_model_exactly_as_it_was(weights, calib_and_eval):
    """Removing quantised kernels rebuilds linears from dequantised weights; the bench must put the
    originals back, or the next round (and the plan's fingerprint check) would see another model."""
    from actlab.engine.plan_bench import bench_plan, calibrate_at_sparsity

    model, calib, evalw = calib_and_eval
    plan = calibrate_at_sparsity(model, "teal", 0.5, calib)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    r = bench_plan(model, plan, evalw[:1, :8], new_tokens=3, reps=1, warmup=0, num_threads=1, hf=False,
                   weights=weights, engine="torch")
    assert r["weights"] == weights and r["tok_s_dense"] > 0 and r["tok_s_sparse"] > 0
    assert [m for m in model.modules() if isinstance(m, torch.nn.Linear)] == linears
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    actlab.check_plan(model, plan, kernels=True)  # still the model the plan was calibrated for


def test_an_unknown_engine_is_refused_naming_the_choices(calib_and_eval):
    from actlab.engine.bench import resolve_engine

    with pytest.raises(ValueError, match="torch, native, auto"):
        resolve_engine(calib_and_eval[0], "jit")


def test_a_quantised_bench_refuses_a_plan_with_masking_path_entries(calib_and_eval):
    from actlab.engine.plan_bench import bench_plan, calibrate_at_sparsity
    from actlab.sparsity.errors import PlanError

    model, calib, evalw = calib_and_eval
    plan = calibrate_at_sparsity(model, "topk", 0.5, calib)  # per-token top-k: no kernel takes it
    with pytest.raises(PlanError, match="--weights fp32"):
        bench_plan(model, plan, evalw[:1, :8], new_tokens=3, reps=1, warmup=0, num_threads=1, hf=False,
                   weights="int8", engine="torch")
