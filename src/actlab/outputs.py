"""Safe output: a command's files appear in ``--out`` all together or not at all, and never over others' files.

Three promises, kept by :func:`staged_output` (and :func:`claim_output` for a whole run):

- **Atomic**: everything is written to a staging directory beside the target and moved into place only when
  the work succeeded, so a failure (bad input, Ctrl-C, a crash) leaves nothing half-written.
- **Never over foreign files**: actlab records what it wrote in ``OUT/.actlab-outputs.json`` (path, size,
  sha256 of each file). A non-empty ``--out`` is refused unless ``overwrite=True`` (``--overwrite``); with it
  actlab replaces and removes only files it wrote itself (unchanged since), and refuses, before writing
  anything, to replace a file it did not write. Files it did not write are never deleted.
- **One writer**: a run holds an exclusive lock (``flock`` on ``.OUT.actlab-lock`` beside ``OUT``) while it
  works; a second run on the same ``--out`` fails at once, naming the first one's pid. The kernel drops the
  lock when its process dies, so a stale lock file never blocks anyone. A run of several processes
  (torchrun) claims and writes from rank 0 only (:func:`claim_output_main`).

Example:
    >>> with staged_output("runs/profile") as tmp:     # doctest: +SKIP
    ...     (tmp / "profile.json").write_text("{}")
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import inspect
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

#: the record of what actlab wrote into an output directory (relative paths, sizes, sha256)
MANIFEST = ".actlab-outputs.json"
MANIFEST_FORMAT = "actlab.outputs"
LOCK_SUFFIX = ".actlab-lock"
_SHOWN = 4  # file names quoted in an error message

F = TypeVar("F", bound=Callable[..., Any])


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; done once, at import, before any worker threads
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def default_mode(base: int) -> int:
    """``base`` under the umask: what ``open``/``mkdir`` would give (mkstemp/mkdtemp make 0600/0700)."""
    return base & ~_UMASK


class OutputError(ValueError):
    """The output location cannot be written (or not without overwriting something)."""


# ---------------------------------------------------------------------------------------------- the lock


@dataclass
class _Claim:
    fd: int
    count: int
    overwrite: bool | None
    created: list[Path]  # parent directories the lock file needed: removed again if left empty


#: locks this process holds, by resolved path: re-entrant, so a run that holds ``out`` can stage into it
_CLAIMS: dict[str, _Claim] = {}
_CLAIMS_GUARD = threading.Lock()


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of output directory ``out`` (beside it, so ``out`` itself need not exist yet)."""
    out = Path(out).expanduser().resolve()  # resolved: ``--out .`` has no name of its own
    return out.parent / f".{out.name}{LOCK_SUFFIX}"


def _key(out: Path) -> str:
    return str(out.expanduser().resolve())


def _owner(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return (f"pid {info['pid']} on {info.get('host', '?')}, started {info.get('started', '?')}: "
                f"{info.get('command', '?')}")
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


def _acquire(out: Path) -> tuple[int, list[Path]]:
    _check_path(out)
    lock = lock_path(out)
    created = [p for p in (lock.parent, *lock.parent.parents) if not p.exists()]
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"--out {out} cannot be created ({e.strerror}): choose another directory") from None
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, default_mode(0o666))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _owner(fd)
            os.close(fd)
            raise OutputError(
                f"--out {out} is being written by another actlab run ({other}); wait for it to finish or "
                "choose another --out"
            ) from None
        # The previous holder unlinks the file before unlocking: if we locked that orphan, retry on the new one.
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return fd, created


@contextmanager
def output_lock(out: str | os.PathLike, overwrite: bool | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of output directory ``out`` (re-entrant within this process).

    ``overwrite`` is remembered for the duration, so calls inside that pass none (``check_writable(out)``)
    follow the run's choice.

    Raises:
        OutputError: another process holds the lock; the message names its pid and command.
    """
    path = Path(out).expanduser()
    key = _key(path)
    with _CLAIMS_GUARD:
        held = _CLAIMS.get(key)
        if held is not None:
            held.count += 1
            if held.overwrite is None:
                held.overwrite = overwrite
    if held is None:
        fd, created = _acquire(path)
        with _CLAIMS_GUARD:
            _CLAIMS[key] = _Claim(fd, 1, overwrite, created)
    try:
        yield path
    finally:
        with _CLAIMS_GUARD:
            claim = _CLAIMS[key]
            claim.count -= 1
            done = claim.count == 0
            if done:
                del _CLAIMS[key]
        if done:
            with _suppress_os():
                lock_path(path).unlink()  # while still locked: see _acquire
            os.close(claim.fd)
            for d in claim.created:  # innermost first: a failed run leaves no empty parents behind
                with _suppress_os():
                    d.rmdir()


@contextmanager
def _suppress_os() -> Iterator[None]:
    try:
        yield
    except OSError:
        pass


def _claimed_overwrite(out: Path, overwrite: bool | None) -> bool:
    if overwrite is not None:
        return overwrite
    with _CLAIMS_GUARD:
        claim = _CLAIMS.get(_key(out))
    return bool(claim and claim.overwrite)


# ---------------------------------------------------------------------------------------------- the manifest


def _files(root: Path) -> list[str]:
    """Relative POSIX paths of everything under ``root`` that is not a directory (links not followed)."""
    found: list[str] = []

    def walk(d: Path, prefix: str) -> None:
        with os.scandir(d) as it:
            for entry in sorted(it, key=lambda e: e.name):
                rel = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    walk(Path(entry.path), rel + "/")
                elif rel != MANIFEST:
                    found.append(rel)

    walk(root, "")
    return found


def _fingerprint(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def _read_manifest(out: Path) -> dict[str, Any]:
    """``{relative path: {size, sha256}}`` of what actlab wrote into ``out``; {} when unknown (all foreign)."""
    try:
        doc = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    files = doc.get("files") if isinstance(doc, dict) and doc.get("format") == MANIFEST_FORMAT else None
    return files if isinstance(files, dict) else {}


def _ours(out: Path, present: Iterable[str]) -> set[str]:
    """The files of ``present`` that actlab wrote and that are unchanged since."""
    manifest = _read_manifest(out)
    ours = set()
    for rel in present:
        rec = manifest.get(rel)
        p = out / rel
        if (isinstance(rec, dict) and not p.is_symlink() and p.is_file() and p.stat().st_size == rec.get("size")
                and _fingerprint(p)["sha256"] == rec.get("sha256")):
            ours.add(rel)
    return ours


def _names(rels: Iterable[str]) -> str:
    rels = sorted(rels)
    return ", ".join(rels[:_SHOWN]) + (f" and {len(rels) - _SHOWN} more" if len(rels) > _SHOWN else "")


def _conflicts(out: Path, new: Iterable[str], present: list[str], foreign: set[str]) -> list[str]:
    """Paths where a new file would replace, or need to remove, a file actlab did not write."""
    bad: set[str] = set()
    for rel in new:
        parts = rel.split("/")
        bad.update("/".join(parts[:i]) for i in range(1, len(parts)) if "/".join(parts[:i]) in foreign)
        if rel in foreign:
            bad.add(rel)
        elif (out / rel).is_dir() and not (out / rel).is_symlink():
            bad.update(p for p in present if p.startswith(rel + "/") and p in foreign)
    return sorted(bad)


def _check_existing(out: Path, overwrite: bool, expect: Iterable[str] = ()) -> tuple[list[str], set[str]]:
    """Refuse ``out`` (an existing directory) per the module's rules; returns (present files, ours)."""
    present = _files(out)
    if not present:
        return present, set()
    ours = _ours(out, present)
    foreign = set(present) - ours
    if not overwrite:
        if foreign:
            raise OutputError(
                f"--out {out} is not empty and holds files actlab did not write ({_names(foreign)}); choose a new "
                "or empty directory, or pass --overwrite (overwrite=True) to write beside them: actlab never "
                "deletes or replaces files it did not write"
            )
        raise OutputError(
            f"--out {out} holds the outputs of an earlier actlab run ({_names(ours)}); pass --overwrite "
            "(overwrite=True) to replace them, or choose another --out"
        )
    clash = _conflicts(out, expect, present, foreign)
    if clash:
        raise OutputError(
            f"--out {out}: {_names(clash)} was not written by actlab (or was changed since), and this run "
            "would replace it; actlab never does, even with --overwrite: move it away or choose another --out "
            f"(files are actlab's only if {MANIFEST} lists them unchanged: outputs of older actlab versions are not)"
        )
    return present, ours


# ---------------------------------------------------------------------------------------------- public API


def _check_path(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a directory: choose a directory path")
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not probe.is_dir():
        raise OutputError(f"--out {out} cannot be created: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"--out {out} is not writable ({probe} denies writing): choose another directory")
    return out


def check_writable(out: str | os.PathLike, overwrite: bool | None = None, expect: Iterable[str] = ()) -> Path:
    """Fail early (before any long work) if ``out`` cannot be written as asked.

    Args:
        overwrite: allow replacing actlab's own earlier outputs; None: the choice of the run that holds
            ``out``'s lock (:func:`claim_output`), else False.
        expect: relative paths the run will write, checked now against files actlab did not write.

    Raises:
        OutputError: ``out`` is a file, its nearest existing parent is not writable, or it is not empty
            (without ``overwrite``) or holds a foreign file at an expected path.
    """
    out = _check_path(Path(out).expanduser())
    if out.is_dir():
        _check_existing(out, _claimed_overwrite(out, overwrite), expect)
    return out


@contextmanager
def claim_output(out: str | os.PathLike, overwrite: bool = False, expect: Iterable[str] = ()) -> Iterator[Path]:
    """Lock ``out`` and check it for a whole run: the check comes first, the lock holds until the end.

    Example:
        >>> with claim_output("runs/opt", overwrite=True) as out:   # doctest: +SKIP
        ...     ...                                                  # minutes of work
        ...     with staged_output(out) as tmp: ...                  # same lock, same overwrite choice
    """
    with output_lock(out, overwrite) as path:
        yield check_writable(path, overwrite, expect)


@contextmanager
def claim_output_main(out: str | os.PathLike, overwrite: bool = False, expect: Iterable[str] = (),
                      dist: Any = None) -> Iterator[Path | None]:
    """:func:`claim_output` by rank 0 of ``dist`` (an :class:`actlab.distributed.Dist`) only, the one process
    that writes; yields the path there and None on the other ranks.

    Every rank learns whether the claim held before any work starts, so a refused ``--out`` stops all of them
    at once (rank 0 raises its own error, the others an :class:`OutputError` saying so) instead of leaving
    them waiting in a collective. ``dist=None`` or one process: exactly :func:`claim_output`.

    Example:
        >>> with claim_output_main("runs/prof", dist=d) as out:   # doctest: +SKIP
        ...     if out is not None: ...                           # rank 0 writes
    """
    from actlab.distributed import all_ok, is_multi

    if not is_multi(dist):
        with claim_output(out, overwrite, expect) as path:
            yield path
        return
    with ExitStack() as stack:
        path, failed = None, None
        if dist.is_main:
            try:
                path = stack.enter_context(claim_output(out, overwrite, expect))
            except Exception as e:  # raised below, once every process knows to stop
                failed = e
        if not all_ok(failed is None, dist):
            raise failed if failed is not None else OutputError(
                f"--out {out}: process 0 could not claim it (see its error)")
        yield path


def claims_output(param: str = "out", expect: Iterable[str] = ()) -> Callable[[F], F]:
    """Decorator: the call holds its ``param`` directory (and its ``overwrite`` argument) from start to end.

    Example:
        >>> @claims_output(expect=("report.html",))
        ... def job(out="runs/x", overwrite=False): ...
    """
    names = tuple(expect)

    def wrap(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            with claim_output(bound.arguments[param], bool(bound.arguments.get("overwrite", False)), names):
                return fn(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap


@contextmanager
def staged_output(out: str | os.PathLike, overwrite: bool | None = None) -> Iterator[Path]:
    """Yield a staging directory; on success its files move into ``out`` (see the module rules), else vanish.

    Raises:
        OutputError: ``out`` is locked by another run, or cannot be written as asked (before any file moves).
    """
    with output_lock(out, overwrite) as path:
        path = check_writable(path, overwrite)
        parent = path.resolve().parent  # resolved: the staging dir must not land inside ``--out .``
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
        try:
            os.chmod(tmp, default_mode(0o777))  # the staging dir becomes ``out``: give it a normal directory's mode
            yield tmp
            _commit(tmp, path, _claimed_overwrite(path, overwrite))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _manifest_doc(files: dict[str, Any]) -> dict[str, Any]:
    from actlab import __version__

    return {"format": MANIFEST_FORMAT, "version": 1, "actlab_version": __version__,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:300], "files": files}


def _commit(tmp: Path, out: Path, overwrite: bool) -> None:
    new = _files(tmp)
    record = {rel: _fingerprint(tmp / rel) for rel in new}
    if not out.exists():
        write_json_atomic(tmp / MANIFEST, _manifest_doc(record))
        os.replace(tmp, out)
        return
    _, ours = _check_existing(out, overwrite, new)  # decided in full before anything moves
    for rel in sorted(ours - set(new), reverse=True):  # actlab's own earlier files this run does not write
        (out / rel).unlink(missing_ok=True)
        _prune_empty(out, (out / rel).parent)
    for rel in new:
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, dest)
    write_json_atomic(out / MANIFEST, _manifest_doc(record))  # foreign files stay unlisted: still foreign


def _prune_empty(root: Path, d: Path) -> None:
    """Remove ``d`` and its parents up to ``root`` while empty (directories that held only actlab's files)."""
    while d != root and root in d.parents:
        try:
            d.rmdir()
        except OSError:
            return
        d = d.parent


def record_outputs(out: str | os.PathLike, written: Iterable[str] = (), removed: Iterable[str] = ()) -> None:
    """List files a run wrote straight into ``out`` (live logs, checkpoints) as actlab's in its manifest.

    For outputs that must survive the run's own failure (a training checkpoint to resume from), so they
    cannot wait for :func:`staged_output`. ``written``/``removed`` are paths relative to ``out``; a removed
    directory drops every entry under it. The caller must hold ``out``'s lock (:func:`claim_output`).
    """
    out = Path(out).expanduser()
    with _CLAIMS_GUARD:
        held = _key(out) in _CLAIMS
    if not held:
        raise RuntimeError(f"record_outputs({out}) without holding its lock (claim_output)")
    files = dict(_read_manifest(out))
    for rel in removed:
        files = {k: v for k, v in files.items() if k != rel and not k.startswith(rel.rstrip("/") + "/")}
    for rel in written:
        files[rel] = _fingerprint(out / rel)
    write_json_atomic(out / MANIFEST, _manifest_doc(files))


def remove_outputs(out: str | os.PathLike, rels: Iterable[str]) -> list[str]:
    """Delete those of ``rels`` (files or directories under ``out``) that actlab wrote, unchanged since.

    Files it did not write stay (and so do the directories holding them). Returns the files removed. The
    caller must hold ``out``'s lock.
    """
    out = Path(out).expanduser()
    present = _files(out) if out.is_dir() else []
    wanted = [p for p in present if any(p == r or p.startswith(r.rstrip("/") + "/") for r in rels)]
    ours = sorted(_ours(out, wanted))
    for rel in reversed(ours):
        (out / rel).unlink(missing_ok=True)
        _prune_empty(out, (out / rel).parent)
    if ours:
        record_outputs(out, removed=ours)
    return ours


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.chmod(tmp, default_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
