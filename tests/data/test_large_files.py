"""Large files: read only what the token budget needs, with the same text, tokens and splits as a small file."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from actlab.data import files, tokens, windows
from actlab.data.base import Corpus, text_fingerprint
from actlab.data.corpus import load_corpus
from actlab.data.windows import SPLITS, build_windows, make_windows


@pytest.fixture
def lazy(monkeypatch):
    """Every file is 'large' and read in 7-byte blocks, so block edges fall everywhere (CRLF, UTF-8 runs)."""
    monkeypatch.setattr(files, "LAZY_BYTES", 0)
    monkeypatch.setattr(files, "BLOCK_BYTES", 7)


def test_lazy_file_text_equals_the_eager_read(tmp_path: Path, lazy) -> None:
    text = "\ufeffline one\r\nline two\rthird é€ line\r\n\r\nend\r"
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    corpus = load_corpus(str(path))
    (doc,) = corpus.documents
    assert isinstance(doc, files.FileText)
    want = "line one\nline two\nthird é€ line\n\nend\n"
    assert str(doc) == want and len(doc) == len(want)
    assert corpus.fingerprint == text_fingerprint([want])


def test_lazy_binary_and_blank_files_are_refused(tmp_path: Path, lazy) -> None:
    from actlab.data.base import CorpusError

    (tmp_path / "bin").write_bytes(b"text" * 10 + b"\xff\xfe" + b"more")
    with pytest.raises(CorpusError, match="binary"):
        load_corpus(str(tmp_path / "bin"))
    (tmp_path / "blank").write_text(" \n\t\n" * 10)
    with pytest.raises(CorpusError, match="no text"):
        load_corpus(str(tmp_path / "blank"))


def test_pieces_do_not_depend_on_where_blocks_end() -> None:
    rng = random.Random(0)
    text = "".join(rng.choice(["ab", "c", " ", "\n", "defgh", "\t"]) for _ in range(5000))
    whole = list(tokens.pieces([text], size=64))
    assert "".join(whole) == text and max(map(len, whole)) <= 64
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), 30))
        blocks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert list(tokens.pieces(blocks, size=64)) == whole
    assert list(tokens.pieces([""])) == [""]  # an empty document still gets its separator


def test_large_file_windows_equal_the_in_memory_text_and_splits_stay_disjoint(tmp_path, int_tok, monkeypatch):
    monkeypatch.setattr(tokens, "PIECE_CHARS", 1000)  # many pieces, cut at spaces
    monkeypatch.setattr(windows, "POOL_TOKENS", 4000)
    text = " ".join(str(i) for i in range(20_000))  # one line; a token's id is its stream position
    path = tmp_path / "big.txt"
    path.write_text(text)
    monkeypatch.setattr(files, "LAZY_BYTES", 1000)
    monkeypatch.setattr(files, "BLOCK_BYTES", 333)
    big = load_corpus(str(path))
    assert isinstance(big.documents[0], files.FileText)
    small = Corpus.from_documents("big.txt", [text])
    assert big.fingerprint == small.fingerprint
    tok = int_tok()
    by_split = {}
    for split in SPLITS:
        w = build_windows(big, tok, 10, 500, split=split)
        tokens.clear_memory_cache()
        assert torch.equal(w.ids, make_windows(small, int_tok(), 10, 500, split=split))  # same text, same windows
        assert torch.equal(w.ids, make_windows(load_corpus(str(path)), int_tok(), 10, 500, split=split))
        assert w.spec.stream_tokens == 4000  # the pool, not the file
        by_split[split] = {int(r[0]) for r in w.ids}
        assert all(int(r[0]) < 4000 for r in w.ids)
    assert not (by_split["calib"] & by_split["eval"]) and not (by_split["eval"] & by_split["test"])
    assert not (by_split["calib"] & by_split["test"])
    calib, more = (make_windows(big, tok, 10, n, split="calib") for n in (500, 1000))
    assert {int(r[0]) for r in calib} <= {int(r[0]) for r in more}  # nested within one pool


def test_a_request_beyond_the_pool_reads_further(tmp_path, int_tok, monkeypatch):
    monkeypatch.setattr(windows, "POOL_TOKENS", 1000)
    corpus = Corpus.from_documents("count", [" ".join(str(i) for i in range(20_000))])
    w = build_windows(corpus, int_tok(), 10, 3000, split="eval")
    assert w.spec.n_windows == 300 and w.spec.stream_tokens == 8000  # 150 cycles of 5 windows: 7500 tokens, pool 8000


_MEASURE = textwrap.dedent("""
    import json, resource, sys
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from actlab.data import windows
    from actlab.data.corpus import load_corpus
    from actlab.data.windows import make_windows

    windows.POOL_TOKENS = int(sys.argv[2])
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["alpha beta gamma delta"], trainer=trainers.WordLevelTrainer(special_tokens=["<unk>", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
    tok(["alpha beta " * 5000], add_special_tokens=False)  # the tokenizer's thread pool and buffers: not the file's
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    corpus = load_corpus(sys.argv[1])
    evals = make_windows(corpus, tok, 256, 2048, split="eval")
    calib = make_windows(corpus, tok, 256, 4096, split="calib")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"delta_mb": (peak - before) / 1024, "shape": list(evals.shape) + list(calib.shape)}))
""")


def test_memory_is_bounded_on_a_large_one_line_file(tmp_path):
    """2048 eval + 4096 calib tokens of a 48 MB one-line file: peak memory far below the file's size, and
    no higher for a 4x larger file (a 50 MB file used to peak at 7.2 GB: the whole text went to the tokenizer)."""
    words = ("alpha", "beta", "gamma", "delta", "epsilon")
    line = " ".join(words[i % 5] for i in range(200_000)) + " "  # ~1.2 MB
    deltas = {}
    for mb in (12, 48):
        path = tmp_path / f"big{mb}.txt"
        with path.open("w") as f:
            for _ in range(mb * 1_000_000 // len(line)):
                f.write(line)
        res = subprocess.run([sys.executable, "-c", _MEASURE, str(path), str(1 << 18)], capture_output=True,
                             text=True, timeout=300, env={"ACTLAB_CACHE": str(tmp_path / "cache"), "PATH": ""})
        assert res.returncode == 0, res.stderr
        got = json.loads(res.stdout.strip().splitlines()[-1])
        assert got["shape"] == [8, 256, 16, 256]
        deltas[mb] = got["delta_mb"]
        path.unlink()
    assert deltas[48] < deltas[12] + 6, deltas  # not growing with the file (a fixed ~20 MB of buffers)
    assert deltas[48] < 48 / 2, deltas  # and below its size (the old reader peaked at ~160x the file size)
