"""Weight bytes per decoded token and the memory-traffic ceiling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import actlab
from actlab.engine.traffic import (
    bytes_skipped_frac,
    ceiling_from_skipped,
    ceiling_seconds,
    ceiling_speedup,
    linear_bytes,
    linear_bytes_by_module,
    read_bytes,
)


class Toy(nn.Module):
    """Two linears and a tied head over an embedding: 4*(8*16) + 4*(16*8 + 8) + 4*(32*8) bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 8)
        self.up = nn.Linear(8, 16, bias=False)
        self.down = nn.Linear(16, 8)
        self.head = nn.Linear(8, 32, bias=False)
        self.head.weight = self.embed.weight  # tied: read once, as the head

    def get_output_embeddings(self) -> nn.Module:
        return self.head


UP, DOWN_W, DOWN_B, HEAD = 4 * 8 * 16, 4 * 16 * 8, 4 * 8, 4 * 32 * 8


def test_linear_bytes_counts_each_weight_once():
    toy = Toy()
    assert linear_bytes_by_module(toy) == {"up": (UP, 0), "down": (DOWN_W, DOWN_B), "head": (HEAD, 0)}
    assert linear_bytes(toy) == UP + DOWN_W + DOWN_B + HEAD


def test_ceiling_all_kept_is_one():
    toy = Toy()
    assert ceiling_speedup(toy, {}) == 1.0
    assert ceiling_speedup(toy, {"up": 1.0, "down": 1.0, "head": 1.0}) == 1.0


def test_ceiling_half_of_one_layer_rows_skipped():
    toy = Toy()
    total = UP + DOWN_W + DOWN_B + HEAD
    still = UP + DOWN_W / 2 + DOWN_B + HEAD  # the bias is still read in full
    assert read_bytes(toy, {"down": 0.5}) == still
    assert ceiling_speedup(toy, {"down": 0.5}) == pytest.approx(total / still)
    assert ceiling_seconds(2.0, toy, {"down": 0.5}) == pytest.approx(2.0 * still / total)
    zero = ceiling_speedup(toy, {"up": 0.0, "down": 0.0, "head": 0.0})
    assert zero == pytest.approx(total / DOWN_B)


def test_ceiling_rejects_unknown_paths_and_bad_fractions():
    toy = Toy()
    with pytest.raises(KeyError, match="not a linear"):
        ceiling_speedup(toy, {"dwon": 0.5})
    with pytest.raises(KeyError):
        ceiling_speedup(toy, {"embed": 0.5})  # the tied embedding is counted as the head
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ceiling_speedup(toy, {"down": 1.5})


def test_tiny_llama_bytes_match_shapes():
    model, _ = actlab.load_model("random:tiny-llama")
    cfg = model.config
    d, f, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    per_layer = d * d + 2 * kv * d + d * d + 3 * d * f
    head = cfg.vocab_size * d
    assert linear_bytes(model) == 4 * (cfg.num_hidden_layers * per_layer + head)
    sizes = linear_bytes_by_module(model)
    assert "lm_head" in sizes and "model.embed_tokens" not in sizes
    assert len(sizes) == 7 * cfg.num_hidden_layers + 1


def test_tied_model_counts_head_once():
    from actlab.models.presets import make_config

    cfg = make_config("tiny-llama")
    cfg.tie_word_embeddings = True
    torch.manual_seed(0)
    import transformers

    model = transformers.LlamaForCausalLM(cfg)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert linear_bytes_by_module(model)["lm_head"] == (4 * cfg.vocab_size * cfg.hidden_size, 0)


def test_ceiling_seconds_with_overhead():
    toy = Toy()
    total = UP + DOWN_W + DOWN_B + HEAD
    still = UP + DOWN_W * 0.25 + DOWN_B + HEAD
    # 0.5 s of the 2 s dense step is overhead: only 1.5 s scales with the bytes
    assert ceiling_seconds(2.0, toy, {"down": 0.25}, overhead_seconds=0.5) == pytest.approx(0.5 + 1.5 * still / total)
    with pytest.raises(ValueError, match="overhead"):
        ceiling_seconds(1.0, toy, {}, overhead_seconds=2.0)


def test_bytes_skipped_frac_counts_bytes_biases_and_the_tied_head_once():
    toy = Toy()
    total = UP + DOWN_W + DOWN_B + HEAD  # the tied embedding is not counted again
    assert bytes_skipped_frac(toy, {"down": 0.5}) == pytest.approx(0.5 * DOWN_W / total)  # biases stay read
    assert bytes_skipped_frac(toy, {"down": 0.5}, extra_read_bytes=16) == pytest.approx((0.5 * DOWN_W - 16) / total)
    assert ceiling_from_skipped(bytes_skipped_frac(toy, {"down": 0.5})) == pytest.approx(
        ceiling_speedup(toy, {"down": 0.5}))


def _plan_case(case: str):
    """Plans the old definitions counted differently: a tied head, biases (params vs bytes), top-k (which
    bench used to leave out)."""
    import transformers

    from actlab.models.presets import make_config
    from actlab.sparsity.calibrate import calibrate

    calib = torch.randint(3, 259, (8, 32), generator=torch.Generator().manual_seed(0))
    if case == "tied llama, teal":
        cfg = make_config("tiny-llama")
        cfg.tie_word_embeddings = True
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(cfg).eval()
        return model, calibrate(model, actlab.TealConfig(0.5), calib)
    if case == "qwen2 (q/k/v biases), wina":
        model, _ = actlab.load_model("random:tiny-qwen2")
        assert model.model.layers[0].self_attn.q_proj.bias is not None
        return model, calibrate(model, actlab.WinaConfig(0.4), calib)
    model, _ = actlab.load_model("random:tiny-llama")
    return model, calibrate(model, actlab.TopKConfig(0.5), None)


@pytest.mark.filterwarnings("ignore:top-k entries:actlab.kernels.ops.ActlabKernelWarning")
@pytest.mark.parametrize("case", ["tied llama, teal", "qwen2 (q/k/v biases), wina", "llama, topk"])
def test_metrics_bench_and_eval_report_one_bytes_skipped_frac(case):
    from actlab.engine.plan_bench import bench_plan
    from actlab.plan_eval import measured_metrics
    from actlab.sparsity.metrics import entry_metrics

    model, plan = _plan_case(case)
    want = plan.metrics["bytes_skipped_frac"]
    skipped = {}
    for e in plan.entries:
        for path in e.consumers:
            skipped[path] = 1 - (1 - skipped.get(path, 0.0)) * (1 - e.sparsity)
    assert want == pytest.approx(bytes_skipped_frac(model, skipped))  # the definition, from first principles
    assert entry_metrics(model, plan.entries)["bytes_skipped_frac"] == pytest.approx(want)
    # eval's measured value goes through the same function: fed the calibrated drops, it gives the same number
    dropped = {m: e.sparsity for e in plan.entries for m in e.modules}
    assert measured_metrics(model, plan, dropped)["bytes_skipped_frac"] == pytest.approx(want)
    ids = torch.randint(3, 259, (1, 4), generator=torch.Generator().manual_seed(1))
    r = bench_plan(model, plan, ids, new_tokens=2, reps=1, warmup=0, num_threads=1, hf=False)
    assert r["bytes_skipped_frac"] == pytest.approx(want)
    assert r["ceiling"] == pytest.approx(1 / (1 - want))
