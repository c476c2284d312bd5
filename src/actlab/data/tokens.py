"""Tokenise a corpus into one token stream (standard LM packing), cached in memory and on disk.

Packing: documents are tokenised without special tokens and concatenated with one separator id between them:
the tokenizer's ``eos_token_id``, else its ``bos_token_id``, else nothing. Windows cut from the stream may
therefore cross document boundaries, as in GPT-2/LLaMA pre-training.

Bounded memory: a document longer than ``PIECE_CHARS`` characters is tokenised in pieces cut at whitespace
(where the text alone decides, so the stream is the same however the text is read), a bounded batch at a
time, and only as far as asked (``min_tokens``): 2048 tokens of a 50 MB one-line file read the first
megabytes, not the file, and never hand the tokenizer 50 MB at once. A stream left partial is extended
on a later, larger request.

The tokenizer needs only ``tokenizer(list_of_texts, add_special_tokens=False)["input_ids"]`` and the
``eos_token_id``/``bos_token_id`` attributes, so any HF tokenizer (or a small fake in tests) works.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from actlab.data.base import Corpus
from actlab.data.cache import cache_root, read_bytes, write_bytes_atomic

BATCH_DOCS = 256  # texts per tokenizer call: fast tokenizers parallelise within a batch
BATCH_CHARS = 1 << 16  # ...and at most about this many characters, which bounds the tokenizer's memory
#: longer documents are tokenised in pieces (the default corpus's longest document is ~88k characters)
PIECE_CHARS = 1 << 17
STREAM_FORMAT = 2  # bump when packing changes: part of every cache key (2: long documents in pieces)
_MEMORY: OrderedDict[tuple[str, str], _Stream] = OrderedDict()
_MEMORY_ENTRIES = 4


def separator_id(tokenizer: Any) -> int | None:
    """The id put between documents: eos, else bos, else None (documents simply abut).

    Example:
        >>> class T: eos_token_id, bos_token_id = 2, 1
        >>> separator_id(T())
        2
    """
    for attr in ("eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return None


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """A content hash of the tokenizer (its full serialised pipeline or vocabulary), or None if unknowable.

    Content, not name, because two GGUF files in one folder share ``name_or_path`` but not their vocabularies.
    None disables caching for that tokenizer.

    Example:
        >>> tokenizer_fingerprint(object()) is None
        True
    """
    h = hashlib.sha256(f"{type(tokenizer).__name__}|sep={separator_id(tokenizer)}|".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode())
    elif callable(getattr(tokenizer, "get_vocab", None)):
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    else:
        return None
    return h.hexdigest()[:16]


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    kwargs: dict[str, Any] = {"add_special_tokens": False}
    transformers = sys.modules.get("transformers")
    if transformers is not None and isinstance(tokenizer, transformers.PreTrainedTokenizerBase):
        # A whole document is longer than model_max_length by design (it is cut into windows later);
        # verbose=False silences the "sequence length is longer than the maximum" warning for that.
        kwargs["verbose"] = False
    return tokenizer(texts, **kwargs)["input_ids"]


def pieces(blocks: Iterable[str], size: int = PIECE_CHARS) -> Iterator[str]:
    """Cut a text (given as consecutive blocks) into pieces of at most ``size`` characters, at whitespace.

    A piece ends just before the last space, newline or tab within reach (so the next piece starts with
    it, where BPE tokenizers attach it to the following word), or at ``size`` when there is none. Each cut
    depends only on the text, never on where the blocks end. An empty text gives one empty piece.

    Example:
        >>> list(pieces(["aaa bbb", " ccc"], size=5))
        ['aaa', ' bbb', ' ccc']
    """
    buf, pos, gave = "", 0, False
    for block in blocks:
        buf = buf[pos:] + block
        pos = 0
        while len(buf) - pos > size:  # more than a piece is known to remain: cut one
            end = pos + size
            cut = max(buf.rfind(c, pos + 1, end + 1) for c in " \n\t")
            cut = end if cut <= pos else cut
            yield buf[pos:cut]
            pos, gave = cut, True
    if len(buf) > pos or not gave:
        yield buf[pos:]


def _doc_blocks(doc: Any) -> Iterable[str]:
    return doc.blocks() if hasattr(doc, "blocks") else (doc,)  # a FileText (large file) or a str


def _batches(corpus: Corpus, tokenizer: Any) -> Iterator[np.ndarray]:
    """The stream in consecutive int64 parts, one tokenizer batch at a time."""
    sep = separator_id(tokenizer)
    texts: list[str] = []
    starts: list[bool] = []  # does the text begin a document after the first (a separator goes before it)?

    def flush() -> np.ndarray:
        parts: list[np.ndarray] = []
        for ids, new_doc in zip(_encode(tokenizer, texts), starts, strict=True):
            if sep is not None and new_doc:
                parts.append(np.array([sep], dtype=np.int64))
            parts.append(np.asarray(ids, dtype=np.int64))
        texts.clear()
        starts.clear()
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    chars = 0
    for d, doc in enumerate(corpus.documents):
        for j, piece in enumerate(pieces(_doc_blocks(doc))):
            texts.append(piece)
            starts.append(d > 0 and j == 0)
            chars += len(piece)
            if len(texts) >= BATCH_DOCS or chars >= BATCH_CHARS:
                yield flush()
                chars = 0
    if texts:
        yield flush()


class _Stream:
    """A corpus's token stream, tokenised as far as asked so far and extended on demand."""

    def __init__(self, corpus: Corpus, tokenizer: Any) -> None:
        self._parts: Iterator[np.ndarray] | None = _batches(corpus, tokenizer)
        self._done: list[np.ndarray] = []
        self.tokens = torch.zeros(0, dtype=torch.long)

    @classmethod
    def of(cls, tokens: torch.Tensor) -> _Stream:
        self = cls.__new__(cls)
        self._parts, self._done, self.tokens = None, [], tokens
        return self

    @property
    def complete(self) -> bool:
        return self._parts is None

    def upto(self, min_tokens: int | None) -> torch.Tensor:
        """At least ``min_tokens`` tokens (all, when None or when the corpus ends first)."""
        have = self.tokens.numel()
        while self._parts is not None and (min_tokens is None or have < min_tokens):
            part = next(self._parts, None)
            if part is None:
                self._parts = None
                break
            self._done.append(part)
            have += part.size
        if self._done:  # one contiguous tensor, rebuilt only when it grew
            self.tokens = torch.from_numpy(np.concatenate([self.tokens.numpy(), *self._done]))
            self._done = []
        return self.tokens


def _disk_path(key: tuple[str, str]) -> Any:
    return cache_root() / "tokens" / f"{key[0]}-{key[1]}-f{STREAM_FORMAT}.npy"


def _disk_load(key: tuple[str, str]) -> torch.Tensor | None:
    raw = read_bytes(_disk_path(key))
    if raw is None:
        return None
    try:
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError):
        return None
    return torch.from_numpy(arr.astype(np.int64))


def _disk_save(key: tuple[str, str], stream: torch.Tensor) -> None:
    buf = io.BytesIO()
    # int32 halves the file; every real vocabulary fits.
    dtype = np.int32 if stream.numel() == 0 or int(stream.max()) < 2**31 else np.int64
    np.save(buf, stream.numpy().astype(dtype), allow_pickle=False)
    write_bytes_atomic(_disk_path(key), buf.getvalue())


def token_stream(corpus: Corpus, tokenizer: Any, disk_cache: bool = True, min_tokens: int | None = None) -> torch.Tensor:
    """The corpus as one 1-D int64 token tensor (documents joined by the separator id). Treat it as read-only.

    With ``min_tokens``, tokenisation stops once at least that many tokens exist (the result is then a
    prefix of the full stream, longer only by the last batch); None tokenises everything.

    Cached per (corpus fingerprint, tokenizer fingerprint): in memory for the process (a partial stream is
    extended in place), and, once complete, on disk under `actlab.data.cache.cache_root` unless
    ``disk_cache=False``.

    Example:
        >>> stream = token_stream(load_corpus("default"), tokenizer)  # doctest: +SKIP
        >>> stream.shape  # doctest: +SKIP
        torch.Size([612345])
    """
    tok_fp = tokenizer_fingerprint(tokenizer)
    if tok_fp is None:
        return _Stream(corpus, tokenizer).upto(min_tokens)
    key = (corpus.fingerprint, tok_fp)
    stream = _MEMORY.get(key)
    if stream is not None:
        _MEMORY.move_to_end(key)
    else:
        cached = _disk_load(key) if disk_cache else None
        stream = _Stream.of(cached) if cached is not None else _Stream(corpus, tokenizer)
        _MEMORY[key] = stream
        while len(_MEMORY) > _MEMORY_ENTRIES:
            _MEMORY.popitem(last=False)
    was_complete = stream.complete
    tokens = stream.upto(min_tokens)
    if disk_cache and stream.complete and not was_complete:
        _disk_save(key, tokens)
    return tokens


def clear_memory_cache() -> None:
    """Forget the in-process token streams (the disk cache stays)."""
    _MEMORY.clear()
