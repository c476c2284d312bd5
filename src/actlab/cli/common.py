"""Helpers shared by the CLI commands: errors as one clear line, JSON output, quiet libraries."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console

#: human-facing output goes to stderr so that ``--json`` stdout stays machine-readable
console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on one line and exit with ``code``."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(obj: Any) -> None:
    """Print one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (shown as one line, not a traceback)."""
    from actlab.errors import user_error_types

    return user_error_types()


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn actlab's user-facing errors into ``error: ...`` and exit code 2."""
    try:
        yield
    except user_errors() as e:
        fail(str(e))


def quiet_libraries() -> None:
    """Silence transformers' own progress bars and warnings; actlab shows its own progress."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def run_guarded(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with the CLI's error handling."""
    with cli_errors():
        return fn()
