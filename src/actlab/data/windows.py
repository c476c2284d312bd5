"""Fixed-length token windows in named, disjoint splits ("calib", "eval", "test").

Scheme: the packed token stream (see `actlab.data.tokens`) is cut into consecutive, non-overlapping windows of
``seq_len`` tokens (the tail shorter than a window is dropped). Window ``i`` belongs to split
``SPLIT_CYCLE[i % 5]`` = calib, eval, calib, eval, test: 40 % / 40 % / 20 %, interleaved so every split samples
the whole corpus and no two splits share a token. The assignment depends only on the window index, never on
the seed, so calib windows are disjoint from eval windows for every seed and every ``num_tokens``.

``seed`` only picks *which* windows of the split are used when fewer than all are asked for: windows are ranked
by ``sha256(seed, index)`` and the first ``ceil(num_tokens / seq_len)`` are taken (returned in stream order).
The ranking is nested: asking for more tokens gives a superset.

Pool: the ranking runs over the windows of the first ``POOL_TOKENS`` tokens of the stream (every window, for
a corpus up to that size, such as the default corpus), or over the first ``POOL_TOKENS * 2**k`` tokens when a
request needs more; only that much text is read and tokenised. Requests within one pool size are nested and
see the same windows; the split of a window never changes, so splits stay disjoint across every request.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from actlab.data.base import Corpus
from actlab.data.tokens import token_stream, tokenizer_fingerprint

SPLIT_CYCLE = ("calib", "eval", "calib", "eval", "test")
SPLITS = ("calib", "eval", "test")
SCHEME = "interleave:" + ",".join(SPLIT_CYCLE)
#: the smallest pool windows are ranked over (tokens); 4M covers the default corpus with every tokenizer
POOL_TOKENS = 1 << 22


class WindowError(ValueError):
    """Windows cannot be made as asked (bad arguments or not enough tokens); the message says what to change."""


@dataclass(frozen=True)
class WindowSpec:
    """What a window tensor holds, for reports and plan provenance (``to_dict()`` is JSON-ready)."""

    split: str
    seq_len: int
    n_windows: int
    tokens: int  # n_windows * seq_len
    available_windows: int  # windows in this split before selection
    stream_tokens: int
    corpus: str
    corpus_fingerprint: str
    tokenizer: str
    tokenizer_fingerprint: str | None
    seed: int
    prepend_bos: bool
    scheme: str = SCHEME

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Windows:
    """A ``[n_windows, seq_len]`` int64 tensor and its `WindowSpec`."""

    ids: torch.Tensor
    spec: WindowSpec


def split_of(index: int) -> str:
    """The split of window ``index``.

    Example:
        >>> [split_of(i) for i in range(6)]
        ['calib', 'eval', 'calib', 'eval', 'test', 'calib']
    """
    return SPLIT_CYCLE[index % len(SPLIT_CYCLE)]


def _rank(seed: int, index: int) -> bytes:
    return hashlib.sha256(f"{seed}:{index}".encode()).digest()


def pool_tokens(wanted: int, split: str, chunk: int) -> int:
    """Tokens of stream the ranking runs over so that ``split`` can hold ``wanted`` windows of ``chunk`` tokens.

    Example:
        >>> pool_tokens(8, "eval", 256) == POOL_TOKENS
        True
    """
    per_cycle = SPLIT_CYCLE.count(split)
    need = -(-wanted // per_cycle) * len(SPLIT_CYCLE) * chunk  # whole cycles: enough windows of this split
    pool = POOL_TOKENS
    while pool < need:
        pool *= 2
    return pool


def _check_args(seq_len: int, num_tokens: int | None, split: str, prepend_bos: bool) -> None:
    if split not in SPLITS:
        raise WindowError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if seq_len < 2 + int(prepend_bos):
        raise WindowError(
            f"seq_len must be at least {2 + int(prepend_bos)} (got {seq_len}); nothing to predict"
        )
    if num_tokens is not None and num_tokens <= 0:
        raise WindowError(f"num_tokens must be positive (got {num_tokens}); pass a positive --tokens or none")


def build_windows(
    corpus: Corpus,
    tokenizer: Any,
    seq_len: int,
    num_tokens: int | None = None,
    split: str = "calib",
    seed: int = 0,
    prepend_bos: bool = False,
) -> Windows:
    """Token windows of one split, with their metadata.

    ``num_tokens`` is rounded up to whole windows; None takes every window of the split. With
    ``prepend_bos=True`` each window is ``[bos] + seq_len - 1`` stream tokens (for models that need a BOS at
    position 0); the split assignment then runs over those shorter chunks.

    Example:
        >>> w = build_windows(load_corpus(), tok, seq_len=512, num_tokens=65_536, split="eval")  # doctest: +SKIP
        >>> w.ids.shape, w.spec.n_windows  # doctest: +SKIP
        (torch.Size([128, 512]), 128)
    """
    _check_args(seq_len, num_tokens, split, prepend_bos)
    bos = getattr(tokenizer, "bos_token_id", None)
    if prepend_bos and not isinstance(bos, int):
        raise WindowError("prepend_bos=True but the tokenizer has no bos_token_id; pass prepend_bos=False")
    chunk = seq_len - int(prepend_bos)
    pool = None if num_tokens is None else pool_tokens(math.ceil(num_tokens / seq_len), split, chunk)
    stream = token_stream(corpus, tokenizer, min_tokens=pool)  # reads and tokenises only the pool
    stream = stream[:pool] if pool is not None else stream
    n_total = stream.numel() // chunk
    available = [i for i in range(n_total) if split_of(i) == split]
    wanted = len(available) if num_tokens is None else math.ceil(num_tokens / seq_len)
    if wanted > len(available) or wanted == 0:
        have = len(available) * seq_len
        asked = "at least one window" if num_tokens is None else f"{num_tokens:,} tokens ({wanted} windows)"
        raise WindowError(
            f"split {split!r} of corpus {corpus.name!r} has {len(available)} windows of {seq_len} tokens "
            f"({have:,} tokens; the corpus has {stream.numel():,} tokens in all); asked for {asked}. "
            "Ask for fewer tokens (--tokens), a shorter --seq-len, or use a larger corpus"
        )
    chosen = sorted(sorted(available, key=lambda i: _rank(seed, i))[:wanted])
    ids = stream[: n_total * chunk].view(n_total, chunk)[chosen]  # [n_windows, chunk]
    if prepend_bos:
        ids = torch.cat([torch.full((len(chosen), 1), bos, dtype=ids.dtype), ids], dim=1)  # [n, seq_len]
    spec = WindowSpec(
        split=split,
        seq_len=seq_len,
        n_windows=len(chosen),
        tokens=len(chosen) * seq_len,
        available_windows=len(available),
        stream_tokens=stream.numel(),
        corpus=corpus.name,
        corpus_fingerprint=corpus.fingerprint,
        tokenizer=str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        seed=seed,
        prepend_bos=prepend_bos,
    )
    return Windows(ids=ids.contiguous(), spec=spec)


def make_windows(
    corpus: Corpus,
    tokenizer: Any,
    seq_len: int,
    num_tokens: int | None = None,
    split: str = "calib",
    seed: int = 0,
    prepend_bos: bool = False,
) -> torch.Tensor:
    """`build_windows` without the metadata: a ``[n_windows, seq_len]`` LongTensor.

    Example:
        >>> calib = make_windows(corpus, tok, 256, 65_536, split="calib")  # doctest: +SKIP
        >>> evals = make_windows(corpus, tok, 256, 65_536, split="eval")  # doctest: +SKIP
    """
    return build_windows(corpus, tokenizer, seq_len, num_tokens, split, seed, prepend_bos).ids
