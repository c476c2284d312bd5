"""A small on-disk cache for derived data (built corpora, token streams).

Everything here is an optimisation: a cache that cannot be read is rebuilt, one that cannot be written is
skipped. Entries are written atomically (temp file + ``os.replace``) so a reader never sees half a file, even
with several processes sharing the cache.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """``$ACTLAB_CACHE`` or the user cache dir (same rule as the model cache in ``actlab.models.load``).

    Example:
        >>> cache_root().name  # doctest: +SKIP
        'actlab'
    """
    env = os.environ.get("ACTLAB_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("actlab"))


def read_bytes(path: Path) -> bytes | None:
    """The cached bytes, or None when absent or unreadable."""
    try:
        return path.read_bytes()
    except OSError:
        return None


def write_bytes_atomic(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically; False (and no file) when the cache dir is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError:
        return False
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        return True
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        return False
