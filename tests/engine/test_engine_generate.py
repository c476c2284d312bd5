"""actlab.engine.generate: the same greedy tokens as HF model.generate, batches, eos, sampling, no side effects."""

from __future__ import annotations

import pytest
import torch
import transformers

import actlab
from actlab.engine import generate, make_cache
from actlab.models.presets import make_config

# Llama family (required) and the other causal presets, which StaticCache happens to support too.
ARCHS = ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-qwen3", "tiny-gemma2", "tiny-phi3",
         "tiny-gpt2", "tiny-gpt_neox", "tiny-opt"]


def _prompt(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 500, (batch, length), generator=torch.Generator().manual_seed(seed))


def _hf(model, ids, new, attention_mask=None, **kwargs):
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask
    kwargs.setdefault("eos_token_id", None)
    kwargs.setdefault("pad_token_id", 0)
    return model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, **kwargs)


def _random_model(preset: str, **overrides):
    """A random model from a preset with config overrides (e.g. a short sliding window)."""
    config = make_config(preset)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    cls = getattr(transformers, type(config).__name__.replace("Config", "ForCausalLM"))
    return cls(config).eval()


@pytest.mark.parametrize("preset", ARCHS)
def test_greedy_tokens_equal_hf_generate(preset):
    model, _ = actlab.load_model(f"random:{preset}")
    ids = _prompt(1, 12)
    out = generate(model, ids, 20)
    assert out.tokens.shape == (1, 32)
    assert torch.equal(out.tokens, _hf(model, ids, 20))
    assert torch.equal(out.tokens[:, :12], ids)
    assert out.new_tokens.shape == (1, 20)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gemma2", "tiny-qwen3"])
def test_batch_of_two_equal_length_prompts(preset):
    model, _ = actlab.load_model(f"random:{preset}")
    ids = _prompt(2, 10, seed=1)
    out = generate(model, ids, 16)
    assert torch.equal(out.tokens, _hf(model, ids, 16))
    for row in range(2):  # each row as if generated alone
        assert torch.equal(out.tokens[row : row + 1], generate(model, ids[row : row + 1], 16).tokens)
    assert out.decode_tokens_per_s > 0


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gemma2", "tiny-phi3"])
def test_left_padded_batch_equals_hf(preset):
    model, _ = actlab.load_model(f"random:{preset}")
    ids = _prompt(2, 12, seed=2)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    ids[0, :5] = 0
    out = generate(model, ids, 16, attention_mask=mask)
    assert torch.equal(out.tokens, _hf(model, ids, 16, attention_mask=mask))
    # the padded row continues as its unpadded prompt does alone
    alone = generate(model, ids[:1, 5:], 16).new_tokens
    assert torch.equal(out.new_tokens[:1], alone)


def test_right_padding_is_refused(tiny_llama):
    model, _ = tiny_llama
    mask = torch.ones(1, 6, dtype=torch.long)
    mask[0, -1] = 0
    with pytest.raises(ValueError, match="left padding"):
        generate(model, _prompt(1, 6), 4, attention_mask=mask)


def test_eager_attention_float_mask_equals_hf():
    model, _ = actlab.load_model("random:tiny-llama")
    model.set_attn_implementation("eager")
    ids = _prompt(2, 9, seed=3)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    assert torch.equal(generate(model, ids, 12, attention_mask=mask).tokens, _hf(model, ids, 12, attention_mask=mask))


@pytest.mark.parametrize("preset", ["tiny-mistral", "tiny-gemma2"])
def test_sliding_window_shorter_than_generation_equals_hf(preset):
    model = _random_model(preset, sliding_window=8)
    ids = _prompt(1, 12, seed=4)
    assert torch.equal(generate(model, ids, 16).tokens, _hf(model, ids, 16))


def test_eos_stops_generation_as_hf_does(tiny_llama):
    model, _ = tiny_llama
    ids = _prompt(2, 8, seed=5)
    free = generate(model, ids, 20).new_tokens
    eos = int(free[0, 3])  # row 0 stops at its 4th token (row 1 maybe later, maybe never)
    out = generate(model, ids, 20, eos_token_id=eos, pad_token_id=0)
    hf = _hf(model, ids, 20, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out.tokens, hf)
    assert out.tokens[0, 8 + 3] == eos
    assert (out.tokens[0, 8 + 4 :] == 0).all()

    single = generate(model, ids[:1], 20, eos_token_id=eos)
    assert single.tokens.shape == (1, 8 + 4)  # stopped early: every sequence finished
    assert single.decode_steps == 3
    assert torch.equal(single.tokens, _hf(model, ids[:1], 20, eos_token_id=eos))


def test_eos_list_and_eos_on_first_token(tiny_llama):
    model, _ = tiny_llama
    ids = _prompt(1, 8, seed=6)
    first = int(generate(model, ids, 1).new_tokens[0, 0])
    out = generate(model, ids, 10, eos_token_id=[9999, first])
    assert out.tokens.shape == (1, 9)
    assert out.decode_steps == 0


def test_sampling_reproducible_with_seed_and_leaves_global_rng(tiny_llama):
    model, _ = tiny_llama
    ids = _prompt(1, 6, seed=7)
    state = torch.get_rng_state()
    a = generate(model, ids, 24, do_sample=True, temperature=1.5, seed=123).tokens
    b = generate(model, ids, 24, do_sample=True, temperature=1.5, seed=123).tokens
    c = generate(model, ids, 24, do_sample=True, temperature=1.5, seed=124).tokens
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # top_k=1 sampling is greedy
    assert torch.equal(generate(model, ids, 12, do_sample=True, top_k=1, seed=0).tokens, generate(model, ids, 12).tokens)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, ids, 4, do_sample=True, temperature=0.0)


def _snapshot(model: torch.nn.Module) -> dict:
    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "attrs": {name: sorted(vars(m)) for name, m in model.named_modules()},
        "hooks": [
            (name, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for name, m in model.named_modules()
        ],
        "training": [m.training for m in model.modules()],
        "config": model.config.to_dict(),
        "grad": torch.is_grad_enabled(),
        "threads": torch.get_num_threads(),
    }


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gemma2"])
def test_model_left_as_found(preset):
    model, _ = actlab.load_model(f"random:{preset}")
    before = _snapshot(model)
    generate(model, _prompt(2, 7), 10)
    generate(model, _prompt(1, 7), 6, do_sample=True, seed=1, eos_token_id=3)
    after = _snapshot(model)
    assert before["params"].keys() == after["params"].keys()
    for k in before["params"]:
        assert torch.equal(before["params"][k], after["params"][k]), k
    for key in ("attrs", "hooks", "training", "config", "grad", "threads"):
        assert before[key] == after[key], key


def test_cache_reuse_and_checks(tiny_llama):
    model, _ = tiny_llama
    ids = _prompt(1, 8, seed=8)
    cache = make_cache(model, 8 + 16)
    first = generate(model, ids, 16, cache=cache).tokens
    again = generate(model, ids, 16, cache=cache).tokens
    other = generate(model, _prompt(1, 8, seed=9), 10, cache=cache).tokens  # shorter run in a bigger cache
    assert torch.equal(first, again)
    assert torch.equal(other, generate(model, _prompt(1, 8, seed=9), 10).tokens)
    with pytest.raises(ValueError, match="needs 25"):
        generate(model, ids, 17, cache=cache)
    with pytest.raises(ValueError, match="batch size"):
        generate(model, _prompt(2, 8), 4, cache=cache)


def test_output_timings_and_single_token(tiny_llama):
    model, _ = tiny_llama
    out = generate(model, _prompt(1, 5), 8)
    assert out.prompt_len == 5 and out.decode_steps == 7
    assert out.prefill_s > 0 and out.decode_s > 0 and out.decode_tokens_per_s > 0
    one = generate(model, _prompt(1, 5), 1)
    assert one.tokens.shape == (1, 6) and one.decode_steps == 0
    assert one.decode_tokens_per_s != one.decode_tokens_per_s  # nan: no decode phase


def test_bad_arguments(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, _prompt(1, 5), 0)
    with pytest.raises(ValueError, match="input_ids"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 4)


def test_encoder_model_is_refused():
    model, _ = actlab.load_model("random:tiny-bert")
    with pytest.raises(NotImplementedError, match="model.generate"):
        generate(model, _prompt(1, 5), 4)


@pytest.mark.slow
def test_smollm2_greedy_equals_hf_generate(smollm2):
    model, tok = smollm2
    ids = tok("The three primary colours are", return_tensors="pt").input_ids
    out = generate(model, ids, 32)
    hf = _hf(model, ids, 32, pad_token_id=tok.pad_token_id or 0)
    assert torch.equal(out.tokens, hf), (tok.decode(out.new_tokens[0]), tok.decode(hf[0, ids.shape[1] :]))
