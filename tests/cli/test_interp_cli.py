"""``actlab patch``, ``actlab steer`` and ``actlab generate --steer`` end to end on a tiny random Llama.

The commands are registered on a local Typer app the way ``cli/main.py`` registers them (``guarded``), so
these tests do not depend on the dispatcher's command list.
"""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from actlab.cli.common import guarded
from actlab.cli.generate import generate
from actlab.cli.patch import patch
from actlab.cli.steer import steer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
for _fn in (patch, steer, generate):
    app.command(name=_fn.__name__)(guarded(_fn))
runner = CliRunner()
TINY = ("--model", "random:tiny-llama")


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _json(res):
    return json.loads(res.stdout[res.stdout.index("{"):])


def _one_error(res, pattern):
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and pattern in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


@pytest.fixture
def pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"positive": "I love it", "negative": "I hate it"}, ["so good", "so bad"]]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_help_teaches_with_an_example():
    for cmd, text in (("patch", "--corrupt"), ("steer", "pairs.jsonl"), ("generate", "--steer")):
        res = _run(cmd, "--help")
        assert res.exit_code == 0 and "Example" in res.output and text in res.output, res.output


def test_patch_end_to_end(tmp_path):
    out = tmp_path / "p"
    res = _run("patch", *TINY, "--clean", "abcdefg", "--corrupt", "axcdefg", "--answer", "h", "--wrong", "q",
               "--out", out, "--json")
    assert res.exit_code == 0, res.output
    d = _json(res)
    assert len(d["restored"]) == 2 and len(d["restored"][0]) == 3 and d["kinds"][0] == "resid_out"
    assert d["restored"][1][0] == pytest.approx(1.0, abs=1e-5)
    assert (out / "patch_map.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "patch_map.json").read_text())["clean"] == "abcdefg"
    res = _run("patch", *TINY, "--clean", "abcdefg", "--corrupt", "axcdefg", "--answer", "h", "--wrong", "q",
               "--sites", "resid_out", "--per-position", "--json")
    assert res.exit_code == 0, res.output
    assert len(_json(res)["restored"][0][0]) == 7


@pytest.mark.parametrize("args, pattern", [
    (("--clean", "abc", "--corrupt", "abcd", "--answer", "h", "--wrong", "q"), "the same length"),
    (("--clean", "abc", "--corrupt", "abd", "--answer", "hh", "--wrong", "q"), "not one"),
    (("--clean", "abc", "--corrupt", "abd", "--answer", "h", "--wrong", "q", "--sites", "resid_in"),
     "unknown site kind 'resid_in'"),
    (("--clean", "", "--corrupt", "abd", "--answer", "h", "--wrong", "q"), "--clean is empty"),
])
def test_patch_errors(args, pattern):
    _one_error(_run("patch", *TINY, *args), pattern)


def test_steer_then_generate(tmp_path, pairs):
    out, cv = tmp_path / "vec", tmp_path / "cv.gguf"
    res = _run("steer", *TINY, "--pairs", pairs, "--layers", "1", "--out", out, "--gguf", cv, "--json")
    assert res.exit_code == 0, res.output
    d = _json(res)
    assert d["layers"] == [1] and d["n_pairs"] == 2 and d["d_model"] == 64
    assert (out / "steering.json").is_file() and cv.is_file()
    plain = _run("generate", *TINY, "--max-new-tokens", 6, "--json", "hello")
    zero = _run("generate", *TINY, "--steer", out, "--steer-scale", 0, "--max-new-tokens", 6, "--json", "hello")
    big = _run("generate", *TINY, "--steer", out, "--steer-scale", 500, "--max-new-tokens", 6, "--json", "hello")
    for r in (plain, zero, big):
        assert r.exit_code == 0, r.output
    assert _json(zero)["completion"] == _json(plain)["completion"]
    assert _json(big)["completion"] != _json(plain)["completion"] and _json(big)["steer_scale"] == 500


def test_steer_errors(tmp_path, pairs):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    _one_error(_run("steer", *TINY, "--pairs", empty, "--layers", "1", "--out", tmp_path / "a"), "no prompt pairs")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"positive": "x"}\n')
    _one_error(_run("steer", *TINY, "--pairs", bad, "--layers", "1", "--out", tmp_path / "a"), "line 1 must be")
    _one_error(_run("steer", *TINY, "--pairs", pairs, "--layers", "1-x", "--out", tmp_path / "a"), "--layers")
    _one_error(_run("steer", *TINY, "--pairs", pairs, "--layers", "5", "--out", tmp_path / "a"), "not layers of this model")
    _one_error(_run("steer", *TINY, "--pairs", pairs, "--layers", "0-1", "--out", tmp_path / "a", "--gguf",
                    tmp_path / "x.gguf"), "cannot steer layer 0")
    assert not (tmp_path / "a").exists()
    # a vector of another model is refused by generate, as one line
    _run("steer", *TINY, "--pairs", pairs, "--layers", "1", "--out", tmp_path / "v")
    _one_error(_run("generate", "--model", "random:tiny-qwen3", "--steer", tmp_path / "v", "hi"), "does not fit")
    _one_error(_run("generate", *TINY, "--steer", tmp_path / "nope", "hi"), "does not exist")
