"""Corpora from local files: a text file, a directory of text files, a JSONL file.

Granularity: one text file is one document (it is not split on blank lines, so no separator token is inserted
inside a file); one JSONL record is one document. Newlines are normalised to ``\\n`` so a checkout with CRLF
line endings gives the same corpus and fingerprint.
"""

from __future__ import annotations

import codecs
import json
import warnings
from pathlib import Path

from actlab.data.base import Corpus, CorpusError, CorpusWarning

SNIFF_BYTES = 8192
JSONL_SUFFIXES = (".jsonl",)


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


def _decode(path: Path) -> str | None:
    """The file's text, or None when it is binary (NUL bytes or not UTF-8 anywhere in it)."""
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
    return Corpus.from_documents(path.name, [text], kind="file", path=str(path))


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
    head = path.read_bytes()[:SNIFF_BYTES]
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
    docs: list[str] = []
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
    return Corpus.from_documents(
        root.name or str(root), docs, kind="directory", path=str(root), skipped_binary=len(skipped)
    )
