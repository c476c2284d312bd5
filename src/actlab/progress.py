"""One progress bar for the library's long loops: rich, on stderr (stdout stays clean for ``--json``).

The library does not import the CLI, so the bar has its own stderr console.

Example:
    >>> with progress_bar(False, 10, "work") as advance:
    ...     advance(3)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["progress_bar"]


@contextmanager
def progress_bar(enabled: bool, total: int, label: str, unit: str = "", transient: bool = True
                 ) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n=1)``: a bar of ``total`` steps labelled ``label`` (and ``unit`` after the count),
    or a no-op when not ``enabled``. ``transient`` bars vanish when done."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), *([TextColumn(unit)] if unit else []),
               TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=transient) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)
