"""Shared fixtures: tiny random models (fast) and the real embedded model (slow, cached)."""

from __future__ import annotations

import functools

import pytest


@functools.cache
def _load(spec: str):
    import actlab

    return actlab.load_model(spec)


@pytest.fixture
def tiny_llama():
    """A fresh tiny random Llama and its byte tokenizer (fresh so tests may modify it)."""
    import actlab

    return actlab.load_model("random:tiny-llama")


@pytest.fixture(scope="session")
def tiny_llama_saved(tmp_path_factory):
    """``(model, directory)``: a tiny random Llama saved with its tokenizer (shared: tests must not modify it)."""
    import actlab

    model, tok = actlab.load_model("random:tiny-llama")
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, path


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M (shared: tests must leave it as they found it)."""
    pytest.importorskip("gguf")
    from actlab.models.load import ModelLoadError

    try:
        return _load("smollm2-135m")
    except ModelLoadError as e:
        pytest.skip(str(e))
