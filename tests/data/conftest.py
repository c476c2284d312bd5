"""Fixtures for the data tests: an isolated cache dir and two offline tokenizers."""

from __future__ import annotations

import pytest

from actlab.data import tokens


class IntTokenizer:
    """A fake tokenizer: each whitespace-separated integer is its own id, so ids show stream positions."""

    name_or_path = "int-tokenizer"

    def __init__(self, eos_token_id: int | None = None, bos_token_id: int | None = None) -> None:
        self.eos_token_id = eos_token_id
        self.bos_token_id = bos_token_id
        self.calls = 0

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict[str, list[list[int]]]:
        assert add_special_tokens is False, "windows must not add special tokens per document"
        self.calls += 1
        return {"input_ids": [[int(w) for w in t.split()] for t in texts]}


@pytest.fixture
def int_tok() -> type[IntTokenizer]:
    """The fake tokenizer class (a fixture, so tests need no import of conftest)."""
    return IntTokenizer


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every data test caches under one session temp dir, never the user's cache, and starts with no
    in-memory token streams."""
    monkeypatch.setenv("ACTLAB_CACHE", str(tmp_path_factory.getbasetemp() / "actlab-cache"))
    tokens.clear_memory_cache()
    yield
    tokens.clear_memory_cache()


@pytest.fixture(scope="session")
def hf_tokenizer():
    """A real ``PreTrainedTokenizerFast`` (word-level, trained offline on a few strings)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog", "hello world"], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", model_max_length=8
    )
