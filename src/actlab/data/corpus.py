"""`load_corpus`: one entry point for every corpus spec.

Spec forms (first match wins):
  ``None`` or ``"default"``     the built-in corpus: prose from the Python stdlib (see `actlab.data.stdlib_text`)
  ``stdlib-code``, ``stdlib-messages``   offline held-out texts of other kinds: the stdlib's code and its message
                                 strings (see `actlab.data.offline_texts`)
  ``hf:<name>[:<config>][:<split>]``   a Hugging Face dataset (needs ``pip install datasets``)
  an existing directory          every text file under it, sorted by relative path; one document per file
  an existing ``.jsonl`` file    one document per record, from the string field ``field`` (default ``text``)
  ``<file>.jsonl:<field>``       the same with the field named in the spec
  any other existing file        one UTF-8 text file = one document (not split on blank lines)
Whitespace-only documents are dropped; a corpus with no text left is an error.
"""

from __future__ import annotations

from pathlib import Path

from actlab.data.base import Corpus, CorpusError, CorpusWarning
from actlab.data.files import (
    JSONL_SUFFIXES,
    documents_fingerprint,
    is_blank,
    read_directory,
    read_jsonl,
    read_text_file,
)

DEFAULT_SPEC = "default"
DEFAULT_FIELD = "text"
OFFLINE_TEXTS = ("stdlib-code", "stdlib-messages")  # built by actlab.data.offline_texts; a path of that name wins
_FORMS = "pass a text file, a directory, a .jsonl file (optionally file.jsonl:field), hf:<name> or 'default'"


def _split_jsonl_field(spec: str) -> tuple[Path, str] | None:
    """``data.jsonl:content`` -> (Path('data.jsonl'), 'content'); None when the spec is not of that form."""
    head, sep, field = spec.rpartition(":")
    if sep and field and Path(head).suffix.lower() in JSONL_SUFFIXES:
        return Path(head).expanduser(), field
    return None


def _drop_empty(corpus: Corpus, spec: str) -> Corpus:
    docs = [d for d in corpus.documents if not is_blank(d)]  # is_blank: a large file's text is not read again
    if not docs:
        raise CorpusError(
            f"corpus {spec!r} has no text (empty or whitespace only); {_FORMS} with some text in it"
        )
    if len(docs) == len(corpus.documents):
        return corpus
    return Corpus(corpus.name, docs, documents_fingerprint(docs), corpus.meta)


def check_corpus_spec(spec: str | Path | None) -> None:
    """Fail fast, reading nothing: a spec naming a local path must point at something that exists.

    Commands call it before loading a model, so a typo in ``--data`` costs no minutes. Raises `CorpusError`.

    Example:
        >>> check_corpus_spec("default")
    """
    if spec is None or (isinstance(spec, str) and (spec.strip() == DEFAULT_SPEC or spec.strip().startswith("hf:"))):
        return
    text = str(spec).strip()
    path = Path(text).expanduser()
    if isinstance(spec, str) and text in OFFLINE_TEXTS:
        return
    with_field = _split_jsonl_field(text) if not path.exists() and isinstance(spec, str) else None
    if not path.exists() and (with_field is None or not with_field[0].exists()):
        raise CorpusError(f"corpus {text!r} does not exist; {_FORMS}")


def load_corpus(spec: str | Path | None = None, field: str | None = None) -> Corpus:
    """Load a corpus from a spec string or path (forms in the module docstring).

    ``field`` names the text field of a JSONL file or hub dataset; a field written in the spec
    (``file.jsonl:field``) wins. Raises `CorpusError` with a one-line message naming the problem and the fix.

    Example:
        >>> corpus = load_corpus("default")  # doctest: +SKIP
        >>> corpus = load_corpus("notes/")  # doctest: +SKIP
        >>> corpus = load_corpus("chat.jsonl:content")  # doctest: +SKIP
    """
    if spec is None or (isinstance(spec, str) and spec.strip() == DEFAULT_SPEC):
        from actlab.data.stdlib_text import load_default_corpus

        return load_default_corpus()
    text = str(spec).strip()
    if isinstance(spec, str) and text in OFFLINE_TEXTS and not Path(text).exists():
        from actlab.data.offline_texts import load_offline_text

        return load_offline_text(text)
    if isinstance(spec, str) and text.startswith("hf:"):
        from actlab.data.hub import load_hub_corpus

        return _drop_empty(load_hub_corpus(text, field), text)

    path = Path(text).expanduser()
    json_field = field or DEFAULT_FIELD
    if not path.exists() and isinstance(spec, str):
        with_field = _split_jsonl_field(text)
        if with_field is not None:
            path, json_field = with_field
    if not path.exists():
        raise CorpusError(f"corpus {text!r} does not exist; {_FORMS}")
    if path.is_dir():
        corpus = read_directory(path, json_field)
    elif path.suffix.lower() in JSONL_SUFFIXES:
        corpus = read_jsonl(path, json_field)
    else:
        corpus = read_text_file(path)
    return _drop_empty(corpus, text)


__all__ = ["Corpus", "CorpusError", "CorpusWarning", "check_corpus_spec", "load_corpus", "DEFAULT_SPEC"]
