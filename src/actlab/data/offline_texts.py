"""Held-out texts of other kinds than the default corpus, built offline from the Python standard library.

The default corpus (`actlab.data.stdlib_text`) is the stdlib's *prose*: docstrings, prose comment blocks and
the pydoc help topics. A quality budget measured on that kind of text says little about another kind, so these
corpora take what the default leaves out of the same files, and nothing it takes:

``stdlib-code``      the source code itself: every line that is not part of a docstring and not a full-line
                     comment (trailing comments on code lines stay), one document per file.
``stdlib-messages``  the string literals that are not docstrings and read like messages (error, warning and
                     help texts, format templates): at least five words, mostly letters; one document per file,
                     one message per line.

Both read the same file list as the default corpus (minus ``pydoc_data/topics.py``, which is all topics), are
deterministic for a given Python version and need nothing but Python. ``stdlib-code`` reads a fixed subset of
files (ranked by a hash of their path, so the subset spreads over the whole library) up to about
:data:`CODE_CHARS` characters; ``stdlib-messages`` reads every file. Both are cached on disk like the default.

Example:
    >>> corpus = load_offline_text("stdlib-code")     # doctest: +SKIP
    >>> corpus.name, corpus.num_chars > 300_000        # doctest: +SKIP
    ('stdlib-code', True)
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path

from actlab.data.base import Corpus, CorpusError, text_fingerprint
from actlab.data.cache import cache_root, read_bytes, write_bytes_atomic
from actlab.data.stdlib_text import TOPICS_FILE, source_files, stdlib_root

TEXTS_VERSION = 1  # bump when an extraction rule changes: part of the fingerprint and the cache key
CODE_CHARS = 600_000  # ~170k tokens: enough for every split at 256-token windows, quick to tokenise
MIN_MESSAGE_WORDS = 5
MIN_LETTER_RATIO = 0.7


def _docstring_lines(tree: ast.AST) -> set[int]:
    """The source lines (1-based) that hold a module, class or function docstring."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def _string_lines(tree: ast.AST) -> set[int]:
    """Lines inside multi-line string literals after their first (a ``#`` there is not a comment)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Constant, ast.JoinedStr)) and (node.end_lineno or 0) > node.lineno:
            inside.update(range(node.lineno + 1, node.end_lineno + 1))
    return inside


def code_of(source: str, tree: ast.AST) -> str:
    """``source`` without its docstrings and full-line comments; runs of blank lines become one.

    Example:
        >>> src = 'def f(x):\\n    \"\"\"Doc.\"\"\"\\n    # why\\n    return x  # keep\\n'
        >>> code_of(src, ast.parse(src))
        'def f(x):\\n    return x  # keep'
    """
    drop = _docstring_lines(tree)
    in_string = _string_lines(tree)
    out: list[str] = []
    for lineno, line in enumerate(source.splitlines(), start=1):
        if lineno in drop or (line.lstrip().startswith("#") and lineno not in in_string):
            continue
        if not line.strip() and (not out or not out[-1].strip()):
            continue
        out.append(line.rstrip())
    return "\n".join(out).strip("\n")


def _is_message(text: str) -> bool:
    words = text.split()
    if len(words) < MIN_MESSAGE_WORDS:
        return False
    return sum(ch.isalpha() or ch == " " for ch in text) / len(text) >= MIN_LETTER_RATIO


def messages_of(tree: ast.AST) -> list[str]:
    """The message-like string literals of a module, in source order, docstrings excluded.

    Example:
        >>> messages_of(ast.parse('raise ValueError("the size must be a positive number")'))
        ['the size must be a positive number']
    """
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    found = [(n.lineno, n.col_offset, n.value.strip()) for n in ast.walk(tree)
             if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
             and _is_message(n.value.strip())]
    return [text for _, _, text in sorted(found)]


def _rank(rel: str) -> str:
    return hashlib.sha256(rel.encode()).hexdigest()


def _parse(path: Path, rel: str) -> tuple[str, ast.AST] | None:
    try:
        source = importlib.util.decode_source(path.read_bytes())
        return source, ast.parse(source, filename=rel)
    except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
        return None  # a distro-patched or broken file: skipped, as the default corpus does


def _build_code(root: Path, files: list[Path]) -> list[str]:
    rels = {p: p.relative_to(root).as_posix() for p in files}
    picked: list[tuple[str, str]] = []
    total = 0
    for path in sorted(files, key=lambda p: _rank(rels[p])):
        if total >= CODE_CHARS:
            break
        parsed = _parse(path, rels[path])
        code = code_of(*parsed) if parsed else ""
        if code.strip():
            picked.append((rels[path], code))
            total += len(code)
    return [code for _, code in sorted(picked)]  # in path order, like the default corpus


def _build_messages(root: Path, files: list[Path]) -> list[str]:
    seen: set[str] = set()
    docs: list[str] = []
    for path in files:
        parsed = _parse(path, path.relative_to(root).as_posix())
        if parsed is None:
            continue
        fresh = [m for m in messages_of(parsed[1]) if m not in seen]
        seen.update(fresh)
        if fresh:
            docs.append("\n".join(fresh))
    return docs


#: name -> (what it is, builder)
TEXTS: dict[str, tuple[str, Callable[[Path, list[Path]], list[str]]]] = {
    "stdlib-code": ("python-stdlib-code-without-docstrings-or-comment-lines", _build_code),
    "stdlib-messages": ("python-stdlib-message-string-literals", _build_messages),
}


@functools.lru_cache(maxsize=4)
def _load_or_build(name: str, root_str: str) -> tuple[str, ...]:
    root = Path(root_str)
    files = [p for p in source_files(root) if p.relative_to(root).as_posix() != TOPICS_FILE]
    h = hashlib.sha256(f"{name}|{sys.version}|{TEXTS_VERSION}|{root}".encode())
    for p in files:
        st = p.stat()
        h.update(f"|{p.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns}".encode())
    path = cache_root() / "corpus" / f"{name}-{h.hexdigest()[:20]}.json"
    raw = read_bytes(path)
    if raw is not None:
        try:
            return tuple(json.loads(raw))
        except ValueError:
            pass  # corrupt: rebuild and overwrite
    docs = tuple(TEXTS[name][1](root, files))
    write_bytes_atomic(path, json.dumps(list(docs)).encode())
    return docs


def load_offline_text(name: str) -> Corpus:
    """One of :data:`TEXTS` as a `Corpus` (``--data stdlib-code``, ``--data stdlib-messages``).

    Raises:
        CorpusError: an unknown name, or no text found (a stdlib without sources).

    Example:
        >>> load_offline_text("stdlib-messages").meta["kind"]    # doctest: +SKIP
        'stdlib-messages'
    """
    if name not in TEXTS:
        raise CorpusError(f"unknown offline text {name!r}; use one of {', '.join(TEXTS)}")
    root = stdlib_root()
    docs = _load_or_build(name, str(root))
    if not docs:
        raise CorpusError(f"found no text for {name!r} under {root}; pass a corpus explicitly (a text file, "
                          "a directory, a .jsonl file or hf:<name>)")
    version = platform.python_version()
    return Corpus(name=name, documents=list(docs),
                  fingerprint=f"{name}-py{version}-v{TEXTS_VERSION}-{text_fingerprint(docs, 12)}",
                  meta={"kind": name, "source": TEXTS[name][0], "stdlib": str(root),
                        "python": f"{platform.python_implementation()} {version}", "texts_version": TEXTS_VERSION})
