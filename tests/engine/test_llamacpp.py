"""llama.cpp reference: format names, install reason, converter paths, atomic cache (no llama_cpp needed);
round trips through llama.cpp where llama-cpp-python is installed (and the converter, for conversions)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

import actlab
from actlab.engine import llamacpp, llamacpp_gguf
from actlab.engine.llamacpp import LlamaCppError, _flat_ids, llamacpp_available
from actlab.engine.llamacpp_gguf import FORMATS, check_format, converter_script, gguf_for, hf_dir_for


def test_check_format_accepts_known_names_and_names_the_allowed_ones():
    assert [check_format(f) for f in FORMATS] == list(FORMATS)
    assert check_format("Q4_0") == "q4_0"
    assert check_format("shipped", "smollm2-135m") == "shipped"
    with pytest.raises(ValueError, match="allowed are f32, f16, q8_0, q4_0, q4_1"):
        check_format("int4")
    with pytest.raises(ValueError, match="'shipped' only for smollm2-135m"):
        check_format("shipped", "random:tiny-llama")


def test_bad_format_is_refused_before_any_conversion(tmp_path):
    with pytest.raises(ValueError, match="unknown GGUF format"):
        gguf_for("random:tiny-llama", "q4_k", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_package_reason_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    reason = llamacpp_available()
    assert reason is not None and "pip install llama-cpp-python==0.3.36" in reason
    assert "-mno-amx-int8" in reason  # the AMX workaround is part of the command
    with pytest.raises(LlamaCppError, match="pip install llama-cpp-python"):
        llamacpp.llamacpp_decode("nowhere.gguf", [1, 2, 3])


def test_converter_script_found_in_sdist_vendor_dir_or_as_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv(llamacpp_gguf.SRC_ENV, raising=False)
    with pytest.raises(LlamaCppError, match="pip download --no-deps --no-binary :all: llama-cpp-python"):
        converter_script()
    with pytest.raises(LlamaCppError, match="no convert_hf_to_gguf.py in"):
        converter_script(tmp_path)
    vendor = tmp_path / "vendor" / "llama.cpp"
    vendor.mkdir(parents=True)
    script = vendor / "convert_hf_to_gguf.py"
    script.write_text("")
    assert converter_script(tmp_path) == script.resolve()
    assert converter_script(vendor) == script.resolve()
    assert converter_script(script) == script.resolve()
    monkeypatch.setenv(llamacpp_gguf.SRC_ENV, str(tmp_path))
    assert converter_script() == script.resolve()


def test_hf_dir_for_takes_a_model_directory_and_refuses_other_paths(tmp_path):
    with pytest.raises(ValueError, match="a directory with config.json"):
        hf_dir_for(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    assert hf_dir_for(tmp_path) == (tmp_path.resolve().name, tmp_path.resolve())


def test_cache_key_follows_the_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"a")
    first = llamacpp_gguf._key(tmp_path)
    assert llamacpp_gguf._key(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"ab")
    assert llamacpp_gguf._key(tmp_path) != first


def test_failed_conversion_leaves_no_file(tmp_path, monkeypatch):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")

    def half_written(hf, out, fmt, script, lenient):
        out.write_bytes(b"GGUF partial")
        raise LlamaCppError("converter died")

    monkeypatch.setattr(llamacpp_gguf, "_convert", half_written)
    monkeypatch.setattr(llamacpp_gguf, "converter_script", lambda src=None: tmp_path / "convert_hf_to_gguf.py")
    with pytest.raises(LlamaCppError, match="converter died"):
        gguf_for(model, "f16", cache_dir=tmp_path / "cache")
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_prompt_ids_from_lists_and_tensors():
    assert _flat_ids([1, 2]) == [1, 2]
    assert _flat_ids(torch.tensor([[5, 6, 7]])) == [5, 6, 7]
    with pytest.raises(ValueError, match="one sequence"):
        _flat_ids(torch.zeros(2, 3, dtype=torch.long))


# --- through llama.cpp: the shipped GGUF (no conversion), then conversions (slow: the converter imports torch
# and transformers in a subprocess; they also need the sdist, named by ACTLAB_LLAMACPP_SRC) ------------------

@pytest.fixture(scope="module")
def shipped():
    pytest.importorskip("llama_cpp")
    return gguf_for("smollm2-135m", "shipped")


def test_decode_is_greedy_and_repeatable(shipped):
    prompt = [504, 3575, 282, 4649, 314]  # "The capital of France is" in SmolLM2's tokenizer
    a = llamacpp.llamacpp_decode(shipped, prompt, new_tokens=4, threads=1, reps=2, warmup=0)
    b = llamacpp.llamacpp_decode(shipped, torch.tensor([prompt]), new_tokens=4, threads=1, reps=1, warmup=0)
    assert a.tokens == b.tokens and len(a.tokens) == 4
    assert len(a.runs) == 2 and a.tokens_per_s > 0 and a.tok_s_wall > 0 and a.prompt_tokens == 5


def test_perplexity_scores_the_next_token(shipped):
    # a 16-token phrase four times: once seen, the model copies it, so the later positions score far lower;
    # logits read one position off would not show that
    phrase = torch.randint(100, 40000, (16,), generator=torch.Generator().manual_seed(0))
    windows = phrase.repeat(4).unsqueeze(0)
    whole = llamacpp.llamacpp_perplexity_result(shipped, windows, threads=1)
    repeats = llamacpp.llamacpp_perplexity_result(shipped, windows, score_from=32, threads=1)
    assert (whole.tokens, repeats.tokens) == (63, 32)
    assert repeats.nll < 0.5 * whole.nll
    assert llamacpp.llamacpp_perplexity(shipped, windows, threads=1) == pytest.approx(whole.ppl)


def test_bad_inputs_are_refused(shipped, tmp_path):
    with pytest.raises(ValueError, match="outside the GGUF vocabulary"):
        llamacpp.llamacpp_decode(shipped, [1, 60_000], new_tokens=2, threads=1, reps=1)
    with pytest.raises(LlamaCppError, match="GGUF file not found"):
        llamacpp.llamacpp_decode(tmp_path / "missing.gguf", [1], new_tokens=2)
    with pytest.raises(ValueError, match="integer ids"):
        llamacpp.llamacpp_perplexity(shipped, torch.zeros(2, 8))


def _tiny_gguf(fmt: str, cache) -> str:
    pytest.importorskip("llama_cpp")
    if not os.environ.get(llamacpp_gguf.SRC_ENV):
        pytest.skip(f"set {llamacpp_gguf.SRC_ENV} to the unpacked llama-cpp-python sdist to test conversions")
    return str(gguf_for("random:tiny-llama", fmt, cache_dir=cache, threads=1))


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf")


@pytest.mark.slow
def test_f32_gguf_decodes_the_hf_models_greedy_tokens(tiny_cache):
    path = _tiny_gguf("f32", tiny_cache)
    model, _ = actlab.load_model("random:tiny-llama")
    prompt = torch.tensor([[1, 50, 60, 70]])
    hf = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
    r = llamacpp.llamacpp_decode(path, prompt, new_tokens=6, threads=1, reps=1, warmup=0)
    assert r.tokens == hf[0, 4:].tolist()  # same fp32 weights: the same argmax at every step


@pytest.mark.slow
def test_f32_gguf_perplexity_equals_actlabs_on_the_same_windows(tiny_cache):
    from actlab.eval.perplexity import perplexity

    path = _tiny_gguf("f32", tiny_cache)
    model, _ = actlab.load_model("random:tiny-llama")
    windows = torch.randint(3, 259, (3, 33), generator=torch.Generator().manual_seed(0))
    for score_from in (0, 8):
        ours = perplexity(model, windows, score_from=score_from)
        theirs = llamacpp.llamacpp_perplexity_result(path, windows, score_from=score_from, threads=1)
        assert theirs.tokens == ours.tokens
        assert theirs.nll == pytest.approx(ours.nll, rel=1e-4)


@pytest.mark.slow
def test_quantized_gguf_is_smaller_and_still_decodes(tiny_cache):
    f32 = _tiny_gguf("f32", tiny_cache)
    q4 = _tiny_gguf("q4_0", tiny_cache)
    assert os.path.getsize(q4) < os.path.getsize(f32) / 3
    assert len(llamacpp.llamacpp_decode(q4, [1, 50], new_tokens=3, threads=1, reps=1, warmup=0).tokens) == 3


@pytest.mark.slow
def test_shipped_smollm2_gguf_agrees_with_the_hf_model():
    """The shipped Q4_1 file holds exactly the weights actlab dequantises (q4_1 re-quantised from them is
    byte-identical), but llama.cpp's Q4_1 matmul quantises activations to 8 bits, so logits differ slightly:
    on this prompt 5 of 16 greedy tokens agree (the f32 conversion: 16 of 16), so only the first 4 are tested.
    The GGUF vocabulary is the HF tokenizer's, id for id."""
    pytest.importorskip("llama_cpp")
    model, tok = actlab.load_model("smollm2-135m")
    path = gguf_for("smollm2-135m", "shipped")
    assert llamacpp_gguf.vocab_mismatches(path, tok, range(0, len(tok), 13)) == []
    prompt = tok("The capital of France is", return_tensors="pt")["input_ids"]
    hf = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False)
    r = llamacpp.llamacpp_decode(path, prompt, new_tokens=4, threads=1, reps=1, warmup=0)
    assert r.tokens == hf[0, prompt.shape[1]:].tolist()
