"""Option checks every command runs first, before it loads a model or builds a corpus.

A bad value costs the user one ``error:`` line (exit code 2) at once, not minutes of work and then a
traceback. NaN never passes a range check here (each check is written so that NaN fails it).

Example:
    >>> at_least("--new-tokens", 64, 2)
    >>> at_least("--new-tokens", -5, 2)      # doctest: +SKIP
    error: --new-tokens must be at least 2, got -5
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

from actlab.cli.common import fail, process_rank

OVERWRITE_HELP = ("Replace actlab's own earlier outputs in --out. Files actlab did not write are never deleted "
                  "or replaced, with or without it.")


def at_least(name: str, value: int | float, lo: int | float) -> None:
    """``value >= lo`` (and not NaN), else fail."""
    if not value >= lo:
        fail(f"{name} must be positive, got {value}" if lo == 1 else f"{name} must be at least {lo}, got {value}")


def positive(name: str, value: int | float) -> None:
    """``value > 0`` and finite, else fail."""
    if not (value > 0 and math.isfinite(value)):
        fail(f"{name} must be a positive number, got {value}")


def non_negative(name: str, value: float | None) -> None:
    """``value >= 0`` and finite (None passes: the option was not given), else fail."""
    if value is not None and not (value >= 0 and math.isfinite(value)):
        fail(f"{name} must be a finite number >= 0, got {value}")


def fraction(name: str, value: float | None) -> None:
    """``0 <= value < 1`` (None passes), else fail."""
    if value is not None and not 0.0 <= value < 1.0:
        fail(f"{name} must be in [0, 1) (a fraction: 0.5 is 50%), got {value}")


def one_of(name: str, value: str, choices: Iterable[str]) -> None:
    """``value`` is one of ``choices``, else fail naming them."""
    choices = tuple(choices)
    if value not in choices:
        fail(f"unknown {name} {value!r}; use one of {', '.join(choices)}")


def corpus(spec: str) -> None:
    """A corpus spec that names a local path points at something that exists (cheap: nothing is read)."""
    from actlab.data.corpus import CorpusError, check_corpus_spec

    try:
        check_corpus_spec(spec)
    except CorpusError as e:
        fail(str(e))


def plan_dir(plan: Path | None) -> None:
    """``--plan`` exists, or is shaped like a Hub repo id (the plan itself is loaded, and checked in full, before
    the model)."""
    from actlab.sparsity.hub import is_repo_id

    if plan is not None and not Path(plan).expanduser().exists() and not is_repo_id(str(plan)):
        fail(f"--plan {plan} does not exist; pass a directory written by `actlab calibrate` or plan.save(), "
             "or a Hub repo id (owner/name)")


def out_dir(out: str | os.PathLike, overwrite: bool, expect: Iterable[str] = ()) -> None:
    """``--out`` can be written as asked: not locked by another run, empty or actlab's with ``--overwrite``.

    Under a launcher (torchrun, ``accelerate launch``) only the process that will write, rank 0, checks: the
    others taking the lock for this brief check would make rank 0's check fail against its own sibling.
    """
    from actlab.outputs import OutputError, check_writable, output_lock

    if process_rank() != 0:
        return
    try:
        # Fails at once, naming the other run, if one is writing ``out``; the command's library call then
        # holds the lock for its whole length (a run that slips in between is refused there, just as fast).
        with output_lock(out, overwrite):
            check_writable(out, overwrite, expect)
    except OutputError as e:
        fail(str(e))


def parse_range(name: str, spec: str) -> list[int]:
    """``"0-3"``, ``"1,4,7"`` or ``"0-2,8"`` as a sorted list of distinct ints; a bad spec fails with one line.

    Example:
        >>> parse_range("--layers", "0-2,5")
        [0, 1, 2, 5]
    """
    found: set[int] = set()
    try:
        for part in spec.split(","):
            lo, sep, hi = part.strip().partition("-")
            a = int(lo)
            b = int(hi) if sep else a
            if a < 0 or b < a:
                raise ValueError
            found.update(range(a, b + 1))
    except ValueError:
        fail(f"{name} {spec!r} is not a list of indices or ranges; write e.g. 0-3 or 0,2,5")
    return sorted(found)
