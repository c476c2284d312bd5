"""The `Corpus` value and the errors every corpus reader raises.

Kept apart from `corpus.py` so the readers (files, stdlib, hub) can import these without a cycle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


class CorpusError(ValueError):
    """A corpus could not be loaded; the message names the problem and the fix, on one line."""


class CorpusWarning(UserWarning):
    """Something was skipped while loading a corpus (e.g. binary files in a directory)."""


def text_fingerprint(documents: Iterable[str], n_hex: int = 16) -> str:
    """Short sha256 over the documents, boundaries included.

    Each document is length-prefixed so that ``["ab", "c"]`` and ``["a", "bc"]`` differ.

    Example:
        >>> text_fingerprint(["hello"]) == text_fingerprint(["hello"])
        True
        >>> text_fingerprint(["ab", "c"]) != text_fingerprint(["a", "bc"])
        True
    """
    h = hashlib.sha256()
    for doc in documents:
        data = doc.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:n_hex]


@dataclass
class Corpus:
    """An ordered list of text documents with a content fingerprint.

    ``fingerprint`` identifies the text (and, for the built-in default corpus, its provenance); it is the key
    token caches and reports use, so two corpora with equal fingerprints tokenise identically.
    ``meta`` holds where the text came from (kind, path, python version, ...) for reports.

    Example:
        >>> c = Corpus.from_documents("demo", ["one doc", "another"])
        >>> len(c), c.num_chars
        (2, 14)
    """

    name: str
    documents: list[str]
    fingerprint: str
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_documents(cls, name: str, documents: list[str], **meta: Any) -> Corpus:
        """Build a corpus, fingerprinting its text; ``meta`` keywords are stored in ``Corpus.meta``."""
        return cls(name=name, documents=documents, fingerprint=text_fingerprint(documents), meta=dict(meta))

    def __len__(self) -> int:
        return len(self.documents)

    @property
    def num_chars(self) -> int:
        """Total number of characters over all documents."""
        return sum(len(d) for d in self.documents)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for reports (no text)."""
        return {
            "name": self.name,
            "documents": len(self),
            "chars": self.num_chars,
            "fingerprint": self.fingerprint,
            **self.meta,
        }
