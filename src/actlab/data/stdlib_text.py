"""The built-in default corpus: English prose from the Python standard library's own source files.

Why the stdlib: it is on every machine that runs actlab, needs no network and no shipped data, and it is the same
text for a given Python version. Nothing is imported or executed: files are parsed with `ast` and scanned line by line.

What is taken, per source file (one document per file, in source order):
  - module, class and function docstrings;
  - comment blocks of two or more consecutive comment lines that read like prose (explanations, not code);
  - for ``pydoc_data/topics.py``, each help topic (the language reference text behind ``help("if")``) as its own
    document.
Which files: the top-level names in ``sys.stdlib_module_names`` (a fixed list per Python version), sorted, found
as ``<stdlib>/<name>.py`` or ``<stdlib>/<name>/**.py``; left out are test suites and the parts Linux distributions
ship as separate packages (tkinter, idlelib, turtle, distutils, lib2to3, ensurepip), so a stock CPython and a
distro Python give the same text where their sources agree.
Every docstring/comment block is deduplicated across the whole corpus (first occurrence wins in sorted order),
then documents are deduplicated. The fingerprint records the Python version and a hash of the file list.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import platform
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

from actlab.data.base import Corpus, CorpusError, text_fingerprint
from actlab.data.cache import cache_root, read_bytes, write_bytes_atomic

# Shipped separately by Debian/Ubuntu/Fedora (or absent from minimal images): leaving them out keeps the corpus
# the same across installs of one Python version.
OPTIONAL_PARTS = frozenset(
    {"tkinter", "idlelib", "turtle", "turtledemo", "distutils", "lib2to3", "ensurepip", "test"}
)
TEST_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__"})
TOPICS_FILE = "pydoc_data/topics.py"
MIN_COMMENT_LINES = 2
MIN_PROSE_RATIO = 0.8  # letters, spaces and light punctuation over all characters of a comment block
CORPUS_VERSION = 1  # bump when the extraction rules change: it is part of the fingerprint


def stdlib_root() -> Path:
    """The directory holding the pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: Path) -> list[Path]:
    """The stdlib source files the corpus reads, sorted by relative POSIX path."""
    files: list[Path] = []
    for name in sorted(set(sys.stdlib_module_names) - OPTIONAL_PARTS):
        module = root / f"{name}.py"
        package = root / name
        if module.is_file():
            files.append(module)
        elif package.is_dir():
            files.extend(
                p for p in package.rglob("*.py") if not TEST_DIRS.intersection(p.relative_to(root).parts[:-1])
            )
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _is_prose(text: str) -> bool:
    if len(text.split()) < 8:
        return False
    ok = sum(ch.isalpha() or ch in " \n.,;:'\"()-?!" for ch in text)
    return ok / len(text) >= MIN_PROSE_RATIO


def _scan(tree: ast.AST) -> tuple[list[tuple[int, str]], set[int]]:
    """Docstrings (line, text) and the lines that lie inside multi-line string literals.

    One walk serves both because parsing and walking dominate the build time; the string lines let the comment
    scan below skip a ``#`` that sits inside a string.
    """
    docs: list[tuple[int, str]] = []
    in_string: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and doc.strip():
                docs.append((getattr(node, "lineno", 0), doc.strip()))
        elif isinstance(node, (ast.Constant, ast.JoinedStr)):
            end = getattr(node, "end_lineno", None)
            if end is not None and end > node.lineno:
                in_string.update(range(node.lineno + 1, end + 1))
    return docs, in_string


def _comment_blocks(lines: list[str], in_string: set[int]) -> list[tuple[int, str]]:
    """(line, text) of each run of consecutive full-line comments that reads like prose.

    Full-line only: a trailing comment explains one line of code, not the design. A line scan instead of
    `tokenize` because the pure-Python tokenizer of 3.11 would triple the build time.
    """
    blocks: list[tuple[int, str]] = []
    run: list[str] = []
    start = 0
    for lineno, line in enumerate([*lines, ""], start=1):
        stripped = line.lstrip()
        if stripped.startswith("#") and lineno not in in_string:
            body = stripped[1:]
            if not run:
                start = lineno
            run.append((body[1:] if body.startswith(" ") else body).rstrip())
            continue
        if run:
            text = "\n".join(run).strip("\n#-=* ")
            if len(run) >= MIN_COMMENT_LINES and _is_prose(text):
                blocks.append((start, text))
            run = []
    return blocks


def _topics(tree: ast.Module) -> list[str]:
    """The help topics of ``pydoc_data/topics.py`` (a dict literal assigned to ``topics``), sorted by key."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "topics" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            return [value[k].strip() for k in sorted(value) if isinstance(value[k], str)]
    return []


def _file_pieces(path: Path, rel: str) -> list[list[str]]:
    """The documents of one file, each a list of text pieces (docstrings, comment blocks, topics)."""
    source = path.read_bytes()
    tree = ast.parse(source, filename=rel)
    if rel == TOPICS_FILE:
        return [[t] for t in _topics(tree) if t]
    docs, in_string = _scan(tree)
    lines = importlib.util.decode_source(source).splitlines()
    pieces = sorted(docs + _comment_blocks(lines, in_string))  # source order
    return [[text for _, text in pieces]] if pieces else []


@dataclass(frozen=True)
class _Built:
    documents: tuple[str, ...]
    files_hash: str  # hash of the sorted relative paths read: the "module list" part of the provenance
    n_files: int
    unreadable: int


def _build(root: Path, files: list[Path]) -> _Built:
    rels = [p.relative_to(root).as_posix() for p in files]
    seen_pieces: set[str] = set()
    seen_docs: set[str] = set()
    docs: list[str] = []
    unreadable = 0
    for path, rel in zip(files, rels, strict=True):
        try:
            file_docs = _file_pieces(path, rel)
        except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
            unreadable += 1  # a distro-patched or broken file: skip it rather than fail the default corpus
            continue
        for pieces in file_docs:
            fresh = [p for p in pieces if p not in seen_pieces]
            seen_pieces.update(fresh)
            doc = "\n\n".join(fresh)
            if doc and doc not in seen_docs:
                seen_docs.add(doc)
                docs.append(doc)
    files_hash = hashlib.sha256("\n".join(rels).encode()).hexdigest()[:8]
    return _Built(tuple(docs), files_hash, len(files), unreadable)


def _cache_key(root: Path, files: list[Path]) -> str:
    """Changes when the Python version, the extraction rules or any source file (size, mtime) changes."""
    h = hashlib.sha256(f"{sys.version}|{CORPUS_VERSION}|{root}".encode())
    for p in files:
        st = p.stat()
        h.update(f"|{p.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


@functools.lru_cache(maxsize=2)
def _load_or_build(root_str: str) -> _Built:
    # Parsing ~10 MB of stdlib source takes seconds; a disk cache makes every later process instant.
    root = Path(root_str)
    files = source_files(root)
    path = cache_root() / "corpus" / f"stdlib-{_cache_key(root, files)}.json"
    raw = read_bytes(path)
    if raw is not None:
        try:
            data = json.loads(raw)
            return _Built(**{**data, "documents": tuple(data["documents"])})
        except (ValueError, TypeError, KeyError):
            pass  # corrupt or from another layout: rebuild and overwrite
    built = _build(root, files)
    write_bytes_atomic(path, json.dumps({**asdict(built), "documents": list(built.documents)}).encode())
    return built


def load_default_corpus() -> Corpus:
    """The built-in corpus (about 2.5 MB of English prose on CPython 3.11), built from the stdlib on first use.

    Deterministic for a given Python version and install; cached within the process and on disk (under
    `actlab.data.cache.cache_root`), keyed by the Python version and the source files' sizes and mtimes.

    Example:
        >>> c = load_default_corpus()
        >>> c.name, c.num_chars > 2_000_000  # doctest: +SKIP
        ('default', True)
    """
    root = stdlib_root()
    built = _load_or_build(str(root))
    if not built.documents:
        raise CorpusError(
            f"the built-in default corpus found no text under {root}; pass a corpus explicitly "
            "(a text file, a directory, a .jsonl file or hf:<name>)"
        )
    version = platform.python_version()
    text_hash = text_fingerprint(built.documents, 12)
    return Corpus(
        name="default",
        documents=list(built.documents),
        fingerprint=f"stdlib-py{version}-v{CORPUS_VERSION}-{built.files_hash}-{text_hash}",
        meta={
            "kind": "default",
            "source": "python-stdlib-docstrings-comments-topics",
            "python": f"{platform.python_implementation()} {version}",
            "stdlib": str(root),
            "files": built.n_files,
            "files_hash": built.files_hash,
            "unreadable_files": built.unreadable,
            "corpus_version": CORPUS_VERSION,
        },
    )
