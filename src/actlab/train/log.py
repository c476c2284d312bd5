"""What a training run reports as it goes: JSONL rows (flushed at once) and a progress bar on stderr.

Each row is one JSON object per line (``step``, ``tokens``, ``loss``, ``lr``, ``tokens_per_s`` and the
objective's metrics; evaluation rows carry ``eval_ppl`` and the per-layer density). NaN and infinities are
written as ``null`` so every line is strict JSON.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "log.jsonl"
    >>> with JsonlLog(p) as log:
    ...     log.write({"step": 1, "loss": float("nan")})
    >>> p.read_text()
    '{"step": 1, "loss": null}\\n'
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def clean(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None and tensors/tuples made JSON-ready."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "tolist"):  # tensors, numpy scalars
        return clean(value.tolist())
    return value


class JsonlLog:
    """Append rows to a JSONL file, flushed after each row so a killed run keeps every row written."""

    def __init__(self, path: Path, rows: list[dict[str, Any]] | None = None) -> None:
        """Open ``path``; with ``rows``, the file is first rewritten to hold exactly those (a resume)."""
        self.path = Path(path)
        if rows is not None:
            self.path.write_text("".join(json.dumps(clean(r)) + "\n" for r in rows))
        self._f = self.path.open("a")

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(clean(row)) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Progress:
    """A rich progress bar over optimizer steps showing loss and tokens/s, or a no-op when disabled."""

    def __init__(self, enabled: bool, total: int, done: int = 0) -> None:
        self.enabled, self.total, self.done = enabled, total, done
        self._bar: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(  # its own stderr console: the library does not import the CLI
                TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=self.total, completed=self.done, info="")
        return self

    def update(self, step: int, loss: float | None = None, tokens_per_s: float | None = None,
               note: str | None = None) -> None:
        if self._bar is None:
            return
        info = note if note is not None else (f"loss {loss:.4f}  {tokens_per_s:,.0f} tok/s"
                                              if loss is not None and tokens_per_s is not None else "")
        self._bar.update(self._task, completed=step, info=info)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
