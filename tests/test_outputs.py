"""Outputs: atomic, with the modes a plain open/mkdir gives, never over foreign files, one writer at a time."""

import json
import os
import stat
import subprocess
import sys

import pytest

from actlab.outputs import (
    MANIFEST,
    OutputError,
    check_writable,
    claim_output,
    lock_path,
    output_lock,
    staged_output,
    write_json_atomic,
)


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


# ----------------------------------------------------------------- never over foreign files, one writer


def _write(out, files, overwrite=None):
    with staged_output(out, overwrite=overwrite) as tmp:
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def test_foreign_file_in_a_subdirectory_is_never_deleted(tmp_path):
    out = tmp_path / "D"
    _write(out, {"plan/plan.json": "1", "report.html": "r1"})
    (out / "plan" / "mine.txt").write_text("user data")
    with pytest.raises(OutputError, match="did not write.*plan/mine.txt.*--overwrite"):
        _write(out, {"plan/plan.json": "2", "report.html": "r2"})
    _write(out, {"plan/plan.json": "2", "report.html": "r2"}, overwrite=True)
    assert _tree(out) == {"plan/mine.txt": "user data", "plan/plan.json": "2", "report.html": "r2"}


def test_earlier_actlab_outputs_need_overwrite_and_stale_ones_go(tmp_path):
    out = tmp_path / "D"
    _write(out, {"a.json": "1", "old.png": "x"})
    with pytest.raises(OutputError, match="earlier actlab run.*--overwrite"):
        _write(out, {"a.json": "2"})
    assert _tree(out) == {"a.json": "1", "old.png": "x"}
    _write(out, {"a.json": "2"}, overwrite=True)
    assert _tree(out) == {"a.json": "2"}


def test_foreign_file_is_not_replaced_even_with_overwrite(tmp_path):
    out = tmp_path / "D"
    out.mkdir()
    (out / "report.html").write_text("the user's report")
    with pytest.raises(OutputError, match="report.html was not written by actlab.*even with --overwrite"):
        _write(out, {"report.html": "ours", "b.json": "1"}, overwrite=True)
    assert _tree(out) == {"report.html": "the user's report"}  # nothing moved, not even b.json
    with pytest.raises(OutputError, match="report.html"):
        check_writable(out, overwrite=True, expect=["report.html"])  # the early check sees it too


def test_overwrite_writes_beside_foreign_files(tmp_path):
    out = tmp_path / "D"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    _write(out, {"a.json": "1"}, overwrite=True)
    _write(out, {"b.json": "2"}, overwrite=True)
    assert _tree(out) == {"notes.txt": "keep", "b.json": "2"}


def test_a_file_actlab_wrote_then_the_user_edited_counts_as_foreign(tmp_path):
    out = tmp_path / "D"
    _write(out, {"report.html": "ours"})
    (out / "report.html").write_text("edited by hand")
    with pytest.raises(OutputError, match="report.html was not written by actlab"):
        _write(out, {"report.html": "new"}, overwrite=True)
    assert (out / "report.html").read_text() == "edited by hand"


def test_empty_directory_is_fine_without_overwrite(tmp_path):
    out = tmp_path / "D"
    out.mkdir()
    _write(out, {"a.json": "1"})
    assert _tree(out) == {"a.json": "1"}


_HOLD = """
import sys, time
from actlab.outputs import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_fails_at_once_naming_the_first(tmp_path):
    out = tmp_path / "D"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"another actlab run \\(pid {holder.pid} "):
            _write(out, {"a.json": "1"})
        with pytest.raises(OutputError, match=f"pid {holder.pid}"):
            with claim_output(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    _write(out, {"a.json": "1"})  # the dead holder's lock is gone with it (its lock file may stay: stale, harmless)
    assert _tree(out) == {"a.json": "1"}
    assert not lock_path(out).exists()


def test_stale_lock_file_does_not_block(tmp_path):
    out = tmp_path / "D"
    lock_path(out).write_text('{"pid": 999999}')  # left by a killed run: no process holds the flock
    _write(out, {"a.json": "1"})
    assert not lock_path(out).exists()


def test_lock_is_reentrant_and_carries_the_overwrite_choice(tmp_path):
    out = tmp_path / "D"
    _write(out, {"a.json": "1"})
    with claim_output(out, overwrite=True):
        check_writable(out)  # the run's choice, not False
        _write(out, {"a.json": "2"})  # staged_output inside the claim: same lock, overwrite inherited
    assert _tree(out) == {"a.json": "2"}
    with pytest.raises(OutputError, match="earlier actlab run"):
        with claim_output(out):
            pass


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupt_cleans_the_stage_and_releases_the_lock(tmp_path, exc):
    out = tmp_path / "D"
    with pytest.raises(exc), staged_output(out) as tmp:
        (tmp / "half.json").write_text("{")
        assert lock_path(out).exists()
        raise exc()
    assert list(tmp_path.iterdir()) == []
    with output_lock(out):  # free again, in this process and (no flock left) any other
        pass


def test_out_dot_keeps_stage_and_lock_outside(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(".", {"a.json": "1"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "a.json"]


def test_a_failed_run_leaves_no_empty_parent_directories(tmp_path):
    out = tmp_path / "a" / "b" / "D"
    with pytest.raises(RuntimeError), claim_output(out):
        raise RuntimeError("the model did not load")
    assert list(tmp_path.iterdir()) == []
    _write(out, {"x.json": "1"})  # a successful run keeps them, of course
    assert _tree(tmp_path) == {"a/b/D/x.json": "1"}


def test_record_outputs_makes_live_files_actlabs_and_remove_outputs_removes_only_those(tmp_path):
    from actlab.outputs import record_outputs, remove_outputs

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="lock"):
        record_outputs(out, written=["log.jsonl"])
    with claim_output(out) as o:
        (o / "ck").mkdir(parents=True)
        for name in ("ck/a.bin", "ck/b.bin", "log.jsonl"):
            (o / name).write_text(name)
        record_outputs(o, written=["ck/a.bin", "ck/b.bin", "log.jsonl"])
        (o / "ck" / "b.bin").write_text("changed by hand")  # no longer actlab's
        (o / "ck" / "mine.txt").write_text("foreign")
        assert remove_outputs(o, ["ck", "log.jsonl"]) == ["ck/a.bin", "log.jsonl"]
    assert sorted(p.name for p in (out / "ck").iterdir()) == ["b.bin", "mine.txt"]
    # the changed file's old record stays, and no longer matches it: still not actlab's
    assert set(json.loads((out / MANIFEST).read_text())["files"]) == {"ck/b.bin"}
    with pytest.raises(OutputError, match="was not written by actlab"):
        check_writable(out, overwrite=True, expect=["ck/b.bin"])
    with claim_output(tmp_path / "other") as o:  # a recorded file is replaced by a later run like any other
        o.mkdir()
        (o / "log.jsonl").write_text("1")
        record_outputs(o, written=["log.jsonl"])
    with staged_output(tmp_path / "other", overwrite=True) as tmp:
        (tmp / "log.jsonl").write_text("2")
    assert (tmp_path / "other" / "log.jsonl").read_text() == "2"
