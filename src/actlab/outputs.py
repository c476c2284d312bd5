"""Atomic output: a command's files appear in ``--out`` all together, or not at all.

Everything is written to a staging directory beside the target and moved into place only
when the work succeeded, so a failure (bad input, Ctrl-C, a crash) never leaves half-written
files behind.

Example:
    >>> with staged_output("runs/profile") as tmp:     # doctest: +SKIP
    ...     (tmp / "profile.json").write_text("{}")
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; done once, at import, before any worker threads
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _default_mode(base: int) -> int:
    """``base`` under the umask: what ``open``/``mkdir`` would give (mkstemp/mkdtemp make 0600/0700)."""
    return base & ~_UMASK


class OutputError(ValueError):
    """The output location cannot be written."""


def check_writable(out: str | os.PathLike) -> Path:
    """Fail early (before any long work) if ``out`` cannot be created or written.

    Raises:
        OutputError: ``out`` is a file, or its nearest existing parent is not writable.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a directory: choose a directory path")
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not probe.is_dir():
        raise OutputError(f"--out {out} cannot be created: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"--out {out} is not writable ({probe} denies writing): choose another directory")
    return out


@contextmanager
def staged_output(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging directory; on success its files are moved into ``out``, else removed."""
    out = check_writable(out)
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        os.chmod(tmp, _default_mode(0o777))  # the staging dir becomes ``out``: give it a normal directory's mode
        yield tmp
        if not out.exists():
            os.replace(tmp, out)
            return
        for item in sorted(tmp.iterdir()):
            dest = out / item.name
            if dest.is_dir() and not item.is_dir():
                shutil.rmtree(dest)
            if item.is_dir() and dest.exists():
                shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
            os.replace(item, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.chmod(tmp, _default_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
