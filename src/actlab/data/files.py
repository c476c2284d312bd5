"""Corpora from local files: a text file, a directory of text files, a JSONL file.

Granularity: one text file is one document (it is not split on blank lines, so no separator token is inserted
inside a file); one JSONL record is one document. Newlines are normalised to ``\\n`` so a checkout with CRLF
line endings gives the same corpus and fingerprint.

Memory: a file larger than ``LAZY_BYTES`` is never held whole. Its document is a :class:`FileText`, checked
and fingerprinted in a streaming pass at load and read again in blocks only as far as tokenisation needs
(``actlab.data.tokens`` stops once the windows asked for are covered).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from actlab.data.base import Corpus, CorpusError, CorpusWarning

SNIFF_BYTES = 8192
JSONL_SUFFIXES = (".jsonl",)
#: files larger than this are read lazily, in blocks (see the module docstring)
LAZY_BYTES = 8 << 20
BLOCK_BYTES = 1 << 20


class FileText:
    """The normalised text of one large UTF-8 file, read in blocks on demand instead of held in memory.

    ``blocks()`` yields the same text ``read_text_file`` would hold for a small file (BOM dropped, newlines
    normalised), so tokens and fingerprints do not depend on the file's size. ``len()`` is its length in
    characters; ``str()`` reads it whole (only for code that truly needs the string).

    Example:
        >>> doc = FileText.scan(Path("big.txt"))            # doctest: +SKIP
        >>> sum(len(b) for b in doc.blocks()) == len(doc)   # doctest: +SKIP
        True
    """

    def __init__(self, path: Path, chars: int, nbytes: int, blank: bool) -> None:
        self.path, self.chars, self.nbytes, self.blank = path, chars, nbytes, blank

    @classmethod
    def scan(cls, path: Path) -> FileText | None:
        """Check the whole file in one streaming pass; None when it is binary (NUL bytes or not UTF-8)."""
        with path.open("rb") as f:
            if is_binary(f.read(SNIFF_BYTES)):
                return None
        chars = nbytes = 0
        blank = True
        try:
            for block in cls(path, 0, 0, False).blocks():
                chars += len(block)
                nbytes += len(block.encode("utf-8", "surrogatepass"))
                blank = blank and not block.strip()
        except UnicodeDecodeError:
            return None
        return cls(path, chars, nbytes, blank)

    def blocks(self) -> Iterator[str]:
        """The text in blocks of about ``BLOCK_BYTES``, normalised as a whole file would be."""
        decoder = codecs.getincrementaldecoder("utf-8-sig")()
        carry = ""  # a trailing "\r" waits for the next block: it may be half of "\r\n"
        with self.path.open("rb") as f:
            while True:
                raw = f.read(BLOCK_BYTES)
                text = carry + decoder.decode(raw, final=not raw)
                carry = "\r" if text.endswith("\r") and raw else ""
                text = text[:-1] if carry else text
                if text:
                    yield text.replace("\r\n", "\n").replace("\r", "\n")
                if not raw:
                    return

    def __len__(self) -> int:
        return self.chars

    def __str__(self) -> str:
        return "".join(self.blocks())

    def __repr__(self) -> str:
        return f"FileText({str(self.path)!r}, {self.chars} chars)"


def is_blank(doc: str | FileText) -> bool:
    """True when a document holds only whitespace (a FileText knows without reading itself again)."""
    return doc.blank if isinstance(doc, FileText) else not doc.strip()


def documents_fingerprint(documents: Iterable[str | FileText], n_hex: int = 16) -> str:
    """`actlab.data.base.text_fingerprint` that streams `FileText` documents (equal text, equal fingerprint)."""
    h = hashlib.sha256()
    for doc in documents:
        if isinstance(doc, FileText):
            h.update(doc.nbytes.to_bytes(8, "little"))
            for block in doc.blocks():
                h.update(block.encode("utf-8", "surrogatepass"))
        else:
            data = doc.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()[:n_hex]


def is_binary(head: bytes) -> bool:
    """True when ``head`` (the first bytes of a file) has NUL bytes or is not UTF-8.

    The incremental decoder tolerates a multi-byte character cut at the end of ``head``.

    Example:
        >>> is_binary(b"plain text"), is_binary(b"\\x00\\x01"), is_binary(b"\\xff\\xfe\\xfa")
        (False, True, True)
    """
    if b"\x00" in head:
        return True
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return True
    return False


def _decode(path: Path) -> str | FileText | None:
    """The file's text (a `FileText` when large), or None when it is binary (NUL bytes or not UTF-8 anywhere)."""
    if os.path.getsize(path) > LAZY_BYTES:
        return FileText.scan(path)
    data = path.read_bytes()
    if is_binary(data[:SNIFF_BYTES]):
        return None
    try:
        text = data.decode("utf-8-sig")  # -sig: a BOM is an encoding artefact, not text
    except UnicodeDecodeError:
        return None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text_file(path: Path) -> Corpus:
    """One text file as a one-document corpus.

    Example:
        >>> read_text_file(Path("notes.txt"))  # doctest: +SKIP
    """
    text = _decode(path)
    if text is None:
        raise CorpusError(
            f"corpus file {str(path)!r} is binary (NUL bytes or not UTF-8); pass a UTF-8 text file, "
            "a .jsonl file or a directory of text files"
        )
    return Corpus(path.name, [text], documents_fingerprint([text]), {"kind": "file", "path": str(path)})


def _jsonl_documents(path: Path, field: str) -> list[str]:
    docs: list[str] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CorpusError(
                    f"{path}: line {lineno} is not valid JSON ({exc.__class__.__name__}: {exc}); "
                    "fix or remove that line (JSONL wants one JSON object per line)"
                ) from None
            if not isinstance(record, dict):
                raise CorpusError(
                    f"{path}: line {lineno} is a JSON {type(record).__name__}, not an object; "
                    'JSONL corpora want one object per line, e.g. {"text": "..."}'
                )
            if field not in record:
                seen = ", ".join(sorted(record)) or "(none)"
                raise CorpusError(
                    f"{path}: line {lineno} has no field {field!r} (fields seen: {seen}); "
                    f"pick one with '{path}:<field>'"
                )
            value = record[field]
            if not isinstance(value, str):
                raise CorpusError(
                    f"{path}: line {lineno} field {field!r} is a {type(value).__name__}, not a string; "
                    "pick a text field with '<file>.jsonl:<field>'"
                )
            docs.append(value.replace("\r\n", "\n"))
    return docs


def read_jsonl(path: Path, field: str = "text") -> Corpus:
    """A JSONL file, one document per record, taken from the string field ``field``.

    Example:
        >>> read_jsonl(Path("data.jsonl"), field="content")  # doctest: +SKIP
    """
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
    if is_binary(head):
        raise CorpusError(f"corpus file {str(path)!r} is binary, not JSONL text; pass a UTF-8 .jsonl file")
    docs = _jsonl_documents(path, field)
    return Corpus.from_documents(path.name, docs, kind="jsonl", path=str(path), field=field)


def _walk(root: Path) -> list[Path]:
    """Regular files under ``root``, hidden files and folders (``.git``, ``.DS_Store``) left out."""
    files = [
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    # Sort by the POSIX relative path so the order is the same on every OS and file system.
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def read_directory(root: Path, field: str = "text") -> Corpus:
    """Every text file under ``root`` (recursively, sorted by relative path), one document per file.

    ``.jsonl`` files inside are read as JSONL (one document per record, field ``field``). Binary files are
    skipped and counted in one `CorpusWarning`.

    Example:
        >>> read_directory(Path("my_texts/"))  # doctest: +SKIP
    """
    docs: list[str | FileText] = []
    skipped: list[str] = []
    for path in _walk(root):
        if path.suffix.lower() in JSONL_SUFFIXES:
            docs.extend(_jsonl_documents(path, field))
            continue
        text = _decode(path)
        if text is None:
            skipped.append(path.relative_to(root).as_posix())
        else:
            docs.append(text)
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(
            f"corpus directory {str(root)!r}: skipped {len(skipped)} binary file(s): {shown}",
            CorpusWarning,
            stacklevel=3,
        )
    return Corpus(root.name or str(root), docs, documents_fingerprint(docs),
                  {"kind": "directory", "path": str(root), "skipped_binary": len(skipped)})
