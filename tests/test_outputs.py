"""Atomic outputs keep the modes a plain open/mkdir would give (temp files are created private)."""

import json
import os
import stat

import pytest

from actlab.outputs import OutputError, staged_output, write_json_atomic


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_write_json_atomic_has_umask_mode(tmp_path):
    target = tmp_path / "a.json"
    write_json_atomic(target, {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1}
    plain = tmp_path / "plain"
    plain.write_text("")
    assert _mode(target) == _mode(plain)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_staged_output_dir_has_umask_mode(tmp_path):
    with staged_output(tmp_path / "run") as tmp:
        (tmp / "f.txt").write_text("ok")
    plain = tmp_path / "plain"
    plain.mkdir()
    assert _mode(tmp_path / "run") == _mode(plain)
    assert (tmp_path / "run" / "f.txt").read_text() == "ok"


def test_staged_output_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), staged_output(tmp_path / "run") as tmp:
        (tmp / "half.txt").write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_out_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(OutputError, match="not a directory"):
        with staged_output(f):
            pass
