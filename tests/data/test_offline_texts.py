"""The offline held-out texts: what they take, that they are deterministic, sizeable, and not the default's kind."""

from __future__ import annotations

import ast
import re

import pytest

from actlab.data import offline_texts
from actlab.data.base import CorpusError
from actlab.data.corpus import OFFLINE_TEXTS, load_corpus
from actlab.data.offline_texts import TEXTS, code_of, load_offline_text, messages_of

SOURCE = '''"""Module docstring: prose the default corpus takes."""
import os  # trailing comment stays

# a full-line comment
# that reads like prose, which the default corpus takes
X = """a multi-line string
# not a comment
"""


def f(path):
    """Function docstring."""
    if not os.path.exists(path):
        raise FileNotFoundError("the file does not exist, pass another path")
    return "ok"
'''


def test_code_keeps_code_and_trailing_comments_drops_docstrings_and_comment_lines():
    code = code_of(SOURCE, ast.parse(SOURCE))
    assert "docstring" not in code.lower()
    assert "full-line comment" not in code and "reads like prose" not in code
    assert "import os  # trailing comment stays" in code
    assert "# not a comment" in code  # inside a string literal, so code
    assert "raise FileNotFoundError" in code and "\n\n\n" not in code


def test_messages_are_long_non_docstring_literals_in_source_order():
    msgs = messages_of(ast.parse(SOURCE))
    assert msgs == ["a multi-line string\n# not a comment", "the file does not exist, pass another path"]
    assert messages_of(ast.parse('x = "too short"\ny = "a_b_c_d_e {0} {1} {2} {3}"')) == []


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each text built twice from scratch in fresh caches, and once more read back from the disk cache."""
    mp = pytest.MonkeyPatch()
    out = {}
    try:
        for name in TEXTS:
            runs = []
            for i in range(2):
                mp.setenv("ACTLAB_CACHE", str(tmp_path_factory.mktemp(f"{name}-{i}")))
                offline_texts._load_or_build.cache_clear()
                runs.append(load_offline_text(name))
            offline_texts._load_or_build.cache_clear()
            runs.append(load_corpus(name))  # the last cache dir: read from disk
            out[name] = runs
    finally:
        offline_texts._load_or_build.cache_clear()
        mp.undo()
    return out


def test_deterministic_and_identical_from_cache(built):
    for name, (a, b, cached) in built.items():
        assert a.fingerprint == b.fingerprint == cached.fingerprint, name
        assert a.documents == b.documents == cached.documents, name
        assert a.name == name and a.meta["kind"] == name


def test_sizeable_enough_for_every_split(built):
    # 256-token windows, 40 % of them in the eval split, ~3.5 characters per token: >= 8192 eval tokens
    for name, (corpus, *_) in built.items():
        assert corpus.num_chars >= 100_000, (name, corpus.num_chars)
        assert len(corpus) >= 20, (name, len(corpus))
    assert built["stdlib-code"][0].num_chars >= offline_texts.CODE_CHARS


def _letters(text: str) -> float:
    return sum(ch.isalpha() for ch in text) / max(1, len(text))


def _placeholders(corpus) -> float:
    """The fraction of non-blank lines holding a %-format or {}-format placeholder."""
    lines = [ln for d in corpus.documents for ln in d.splitlines() if ln.strip()]
    return sum(bool(re.search(r"%[-0-9.]*[srdx]|\{[^}]*\}", ln)) for ln in lines) / len(lines)


def test_a_different_kind_from_the_default_corpus(built):
    default = load_corpus("default")
    prose = {ln.strip() for d in default.documents for ln in d.splitlines() if len(ln.strip()) >= 60}
    code, messages = built["stdlib-code"][0], built["stdlib-messages"][0]
    for corpus in (code, messages):
        lines = {ln.strip() for d in corpus.documents for ln in d.splitlines()}
        shared = prose & lines
        # a docstring line quoted verbatim in a message is possible; anything beyond a trace means overlap
        assert len(shared) <= 0.002 * len(prose), (corpus.name, sorted(shared)[:5])
    # measured on CPython 3.11: letters 0.74 of the default's characters, 0.51 of the code's
    assert _letters("".join(code.documents)) < 0.6 < 0.68 < _letters("".join(default.documents))
    # messages are templates: 23 % of their lines hold a placeholder, 0.5 % of the default's
    assert _placeholders(messages) > 0.1 > 0.02 > _placeholders(default)


def test_registered_names_and_errors():
    assert OFFLINE_TEXTS == tuple(TEXTS)
    with pytest.raises(CorpusError, match="unknown offline text"):
        load_offline_text("stdlib-poetry")
