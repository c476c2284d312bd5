"""What a run needs to be judged and repeated: the command, the machine and its load, versions, stage times.

A job calls :meth:`RunLog.start` first thing (with its arguments and its progress callback), reports its
stages through the callback it gets back, and puts :meth:`RunLog.finish` into its summary. Load is read at
both ends because a shared machine's load, not the code, is often what moved a speed number.

Example:
    >>> log, step = RunLog.start({"model": "random:tiny-llama", "threads": 1})
    >>> step("profiling activations")
    >>> run = log.finish()
    >>> [s["stage"] for s in run["stages"]]
    ['loading model and data', 'profiling activations']
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from actlab.envinfo import load_average, machine

_FIRST_STAGE = "loading model and data"


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _cli_command(argv: list[str]) -> str | None:
    """The command line when this process is the actlab CLI (None when called from Python or a test)."""
    prog = Path(argv[0]).name if argv else ""
    if prog == "actlab" or argv[:1] and argv[0].endswith(os.path.join("actlab", "__main__.py")):
        return shlex.join(["actlab", *argv[1:]])
    return None


class RunLog:
    """Wall time per stage, load average at start and end, and the arguments, of one job."""

    def __init__(self, arguments: dict[str, Any]) -> None:
        # paths become strings; callables (the progress callback) and other objects are not arguments a user typed
        self.arguments = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in arguments.items()
                          if _jsonable(v) or isinstance(v, os.PathLike)}
        self.command = _cli_command(sys.argv)
        self.started = datetime.now(timezone.utc)
        self.load_start = load_average()
        self._t0 = time.perf_counter()
        self._stages: list[tuple[str, float]] = [(_FIRST_STAGE, self._t0)]

    @classmethod
    def start(cls, arguments: dict[str, Any],
              step: Callable[[str], None] = lambda msg: None) -> tuple[RunLog, Callable[[str], None]]:
        """A new log and ``step`` wrapped so that each message also opens a timed stage."""
        log = cls(arguments)

        def timed_step(msg: str) -> None:
            log._stages.append((msg, time.perf_counter()))
            step(msg)

        return log, timed_step

    def finish(self) -> dict[str, Any]:
        """The record, as JSON-ready values: call it once the measured stages are done."""
        now = time.perf_counter()
        ends = [t for _, t in self._stages[1:]] + [now]
        return {
            "date": self.started.isoformat(timespec="seconds"),
            "command": self.command,
            "arguments": self.arguments,
            "machine": machine(),
            "load_start": self.load_start,
            "load_end": load_average(),
            "stages": [{"stage": name, "wall_s": round(end - t, 3)}
                       for (name, t), end in zip(self._stages, ends, strict=True)],
            "wall_s": round(now - self._t0, 3),
        }
