"""load_corpus: every spec kind, every error, and the built-in default corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from actlab.data import stdlib_text
from actlab.data.base import Corpus, text_fingerprint
from actlab.data.corpus import CorpusError, CorpusWarning, load_corpus
from actlab.data.files import is_binary
from actlab.data.hub import HubSpec, load_hub_corpus, pick_text_field

# --- text files -------------------------------------------------------------------------------------------


def test_text_file_is_one_document_with_normalised_newlines(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"first paragraph\r\n\r\nsecond paragraph\r\n")
    corpus = load_corpus(path)
    assert corpus.documents == ["first paragraph\n\nsecond paragraph\n"]
    assert corpus.name == "notes.txt" and len(corpus) == 1 and corpus.num_chars == 34
    assert corpus.fingerprint == load_corpus(str(path)).fingerprint  # str and Path specs agree


def test_any_extension_is_text_and_bom_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "README"
    path.write_bytes("\ufeffcafé ☕".encode())
    assert load_corpus(path).documents == ["café ☕"]


def test_fingerprint_depends_on_text_and_boundaries() -> None:
    assert text_fingerprint(["ab", "c"]) != text_fingerprint(["a", "bc"])
    assert Corpus.from_documents("x", ["a"]).fingerprint == Corpus.from_documents("y", ["a"]).fingerprint


# --- directories ------------------------------------------------------------------------------------------


def test_directory_sorted_by_relative_path_hidden_and_binary_skipped(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("bz")
    (tmp_path / "b" / "a.md").write_text("ba")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "c.rst").write_text("c")
    (tmp_path / ".hidden").write_text("secret")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.warns(CorpusWarning, match="skipped 2 binary file"):
        corpus = load_corpus(tmp_path)
    assert corpus.documents == ["a", "ba", "bz", "c"]
    assert corpus.meta["skipped_binary"] == 2


def test_directory_reads_jsonl_files_as_records(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("plain")
    (tmp_path / "b.jsonl").write_text('{"text": "r1"}\n{"text": "r2"}\n')
    assert load_corpus(tmp_path).documents == ["plain", "r1", "r2"]


def test_directory_without_text_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02")
    (tmp_path / "blank.txt").write_text("  \n\t\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorpusWarning)
        with pytest.raises(CorpusError, match="no text"):
            load_corpus(tmp_path)


# --- JSONL ------------------------------------------------------------------------------------------------


def _jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_jsonl_default_field_blank_lines_and_empty_records(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "one", "id": 1}\n\n{"text": "   "}\n{"text": "two"}\n')
    corpus = load_corpus(path)
    assert corpus.documents == ["one", "two"]  # whitespace-only records dropped
    assert corpus.meta["field"] == "text"


def test_jsonl_field_in_spec_and_as_argument(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"content": "x", "text": "t"}, {"content": "y", "text": "u"}])
    assert load_corpus(f"{path}:content").documents == ["x", "y"]
    assert load_corpus(path, field="content").documents == ["x", "y"]
    assert load_corpus(f"{path}:content", field="text").documents == ["x", "y"]  # the spec wins


def test_jsonl_missing_field_lists_fields_seen(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"body": "x", "id": 1}])
    with pytest.raises(CorpusError, match=r"line 1 has no field 'text' \(fields seen: body, id\)"):
        load_corpus(path)


def test_jsonl_malformed_line_names_its_number(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(CorpusError, match="line 2 is not valid JSON"):
        load_corpus(path)


@pytest.mark.parametrize(("line", "message"), [("[1, 2]", "not an object"), ('{"text": 3}', "not a string")])
def test_jsonl_wrong_shapes(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(CorpusError, match=message):
        load_corpus(path)


# --- errors -----------------------------------------------------------------------------------------------


def test_missing_path_is_an_error_naming_the_forms(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist; pass a text file") as info:
        load_corpus(tmp_path / "nope.txt")
    assert "\n" not in str(info.value)
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus(f"{tmp_path / 'nope.jsonl'}:text")


@pytest.mark.parametrize("content", [b"", b"   \n\n\t  "])
def test_empty_corpus_is_an_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match="has no text"):
        load_corpus(path)


@pytest.mark.parametrize("content", [b"text\x00with nul", b"\xff\xfe\xfd not utf-8"])
def test_binary_file_is_an_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "data.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match="is binary"):
        load_corpus(path)


def test_binary_sniff_tolerates_a_cut_multibyte_character() -> None:
    head = ("x" * 8191 + "é").encode()[:8192]  # the 2-byte é is cut in half at the sniff boundary
    assert not is_binary(head)
    assert is_binary(b"\x00")


# --- hub --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hf:wikitext", HubSpec("wikitext", None, "train")),
        ("hf:wikitext:wikitext-2-raw-v1", HubSpec("wikitext", "wikitext-2-raw-v1", "train")),
        ("hf:wikitext:wikitext-2-raw-v1:test", HubSpec("wikitext", "wikitext-2-raw-v1", "test")),
        ("hf:org/data::validation", HubSpec("org/data", None, "validation")),
        ("hf:wikitext:cfg:train[:10%]", HubSpec("wikitext", "cfg", "train[:10%]")),
    ],
)
def test_hub_spec_parsing(spec: str, expected: HubSpec) -> None:
    assert HubSpec.parse(spec) == expected


def test_hub_spec_without_name_is_an_error() -> None:
    with pytest.raises(CorpusError, match="no dataset name"):
        HubSpec.parse("hf:")


def test_hub_without_datasets_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(CorpusError, match="pip install datasets"):
        load_corpus("hf:wikitext:wikitext-2-raw-v1")
    with pytest.raises(CorpusError, match="pip install datasets"):
        load_hub_corpus("hf:x")


def test_hub_text_field_detection() -> None:
    class Feature:
        def __init__(self, dtype: str) -> None:
            self.dtype = dtype

    cols = {"id": Feature("int64"), "body": Feature("string"), "title": Feature("string")}
    assert pick_text_field(cols, None) == "body"
    assert pick_text_field({**cols, "text": Feature("string")}, None) == "text"
    assert pick_text_field(cols, "title") == "title"
    with pytest.raises(CorpusError, match="no column 'nope'"):
        pick_text_field(cols, "nope")
    with pytest.raises(CorpusError, match="no string column"):
        pick_text_field({"id": Feature("int64")}, None)


# --- the built-in default corpus --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Corpus, Corpus]:
    """The default corpus built from scratch, and the same loaded back from the disk cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ACTLAB_CACHE", str(tmp_path_factory.mktemp("default-cache")))
    try:
        stdlib_text._load_or_build.cache_clear()
        fresh = load_corpus("default")
        stdlib_text._load_or_build.cache_clear()
        cached = load_corpus(None)
    finally:
        stdlib_text._load_or_build.cache_clear()
        mp.undo()
    return fresh, cached


def test_default_corpus_is_large_unique_and_identical_from_cache(default_pair: tuple[Corpus, Corpus]) -> None:
    fresh, cached = default_pair
    assert fresh.num_chars >= 2_000_000
    assert fresh.documents == cached.documents and fresh.fingerprint == cached.fingerprint
    assert len(set(fresh.documents)) == len(fresh.documents)
    assert all(doc.strip() for doc in fresh.documents)


def test_default_corpus_records_provenance(default_pair: tuple[Corpus, Corpus]) -> None:
    corpus, _ = default_pair
    version = ".".join(map(str, sys.version_info[:3]))
    assert corpus.name == "default"
    assert corpus.fingerprint.startswith(f"stdlib-py{version}-")
    assert corpus.meta["files_hash"] in corpus.fingerprint
    assert corpus.meta["files"] > 100
    json.dumps(corpus.describe())


def test_default_corpus_reads_prose_not_tests_or_optional_parts(default_pair: tuple[Corpus, Corpus]) -> None:
    corpus, _ = default_pair
    text = "\n".join(corpus.documents)
    assert 'The "if" statement is used for conditional execution' in text  # a pydoc topic
    assert "Heap queue algorithm" in text  # heapq's module docstring
    files = stdlib_text.source_files(stdlib_text.stdlib_root())
    rels = [f.relative_to(stdlib_text.stdlib_root()).as_posix() for f in files]
    assert rels == sorted(rels)
    assert not any(r.split("/")[0] in stdlib_text.OPTIONAL_PARTS or "/test/" in f"/{r}" for r in rels)


def test_comment_scan_skips_hash_lines_inside_strings() -> None:
    import ast

    source = 's = """\n# not a comment, inside a string\n# still inside\n"""\n# a real comment block that\n# explains the code below in some detail\nx = 1\n'
    docs, in_string = stdlib_text._scan(ast.parse(source))
    blocks = stdlib_text._comment_blocks(source.splitlines(), in_string)
    assert [text for _, text in blocks] == [
        "a real comment block that\nexplains the code below in some detail"
    ]


@pytest.mark.slow
def test_default_corpus_is_the_same_in_another_process(
    default_pair: tuple[Corpus, Corpus], tmp_path: Path
) -> None:
    """Built again from scratch with another hash seed (set/dict order must not leak into the text)."""
    env = {**os.environ, "ACTLAB_CACHE": str(tmp_path), "PYTHONHASHSEED": "12345"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2] / "src"), env.get("PYTHONPATH", "")])
    code = "from actlab.data.corpus import load_corpus; print(load_corpus('default').fingerprint)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == default_pair[0].fingerprint
