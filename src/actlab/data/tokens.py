"""Tokenise a corpus into one token stream (standard LM packing), cached in memory and on disk.

Packing: documents are tokenised without special tokens and concatenated with one separator id between them:
the tokenizer's ``eos_token_id``, else its ``bos_token_id``, else nothing. Windows cut from the stream may
therefore cross document boundaries, as in GPT-2/LLaMA pre-training.

The tokenizer needs only ``tokenizer(list_of_texts, add_special_tokens=False)["input_ids"]`` and the
``eos_token_id``/``bos_token_id`` attributes, so any HF tokenizer (or a small fake in tests) works.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from actlab.data.base import Corpus
from actlab.data.cache import cache_root, read_bytes, write_bytes_atomic

BATCH_DOCS = 256  # documents per tokenizer call: fast tokenizers parallelise within a batch
STREAM_FORMAT = 1  # bump when packing changes: part of every cache key
_MEMORY: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
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


def _tokenize(corpus: Corpus, tokenizer: Any) -> torch.Tensor:
    sep = separator_id(tokenizer)
    parts: list[np.ndarray] = []
    for start in range(0, len(corpus.documents), BATCH_DOCS):
        for i, ids in enumerate(_encode(tokenizer, corpus.documents[start : start + BATCH_DOCS])):
            if sep is not None and start + i > 0:
                parts.append(np.array([sep], dtype=np.int64))
            parts.append(np.asarray(ids, dtype=np.int64))
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(stream)


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


def token_stream(corpus: Corpus, tokenizer: Any, disk_cache: bool = True) -> torch.Tensor:
    """The corpus as one 1-D int64 token tensor (documents joined by the separator id). Treat it as read-only.

    Cached per (corpus fingerprint, tokenizer fingerprint): in memory for the process, and on disk under
    `actlab.data.cache.cache_root` unless ``disk_cache=False``.

    Example:
        >>> stream = token_stream(load_corpus("default"), tokenizer)  # doctest: +SKIP
        >>> stream.shape  # doctest: +SKIP
        torch.Size([612345])
    """
    tok_fp = tokenizer_fingerprint(tokenizer)
    if tok_fp is None:
        return _tokenize(corpus, tokenizer)
    key = (corpus.fingerprint, tok_fp)
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    stream = _disk_load(key) if disk_cache else None
    if stream is None:
        stream = _tokenize(corpus, tokenizer)
        if disk_cache:
            _disk_save(key, stream)
    _MEMORY[key] = stream
    while len(_MEMORY) > _MEMORY_ENTRIES:
        _MEMORY.popitem(last=False)
    return stream


def clear_memory_cache() -> None:
    """Forget the in-process token streams (the disk cache stays)."""
    _MEMORY.clear()
