"""Helpers shared by the CLI commands: errors as one clear line, JSON output, quiet libraries."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console

#: human-facing output goes to stderr so that ``--json`` stdout stays machine-readable
console = Console(stderr=True)


def process_rank() -> int:
    """This process's rank under ``torchrun`` / ``accelerate launch`` (``RANK``), 0 in a plain run.

    Example:
        >>> process_rank()   # doctest: +SKIP  (a plain run)
        0
    """
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def quiet_unless_main() -> None:
    """Under torchrun only rank 0 talks: the other ranks' console prints nothing (errors of their own aside).

    Example:
        >>> quiet_unless_main(); console.quiet   # doctest: +SKIP  (rank 0 or a plain run)
        False
    """
    console.quiet = process_rank() != 0


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on one line and exit with ``code``."""
    from rich.markup import escape

    message = escape(message)  # as written: "pip install 'actlab[tasks]'" is not a style tag
    rank = process_rank()
    if rank and code != 2:  # an unexpected failure may be this rank's alone: show it, labelled
        Console(stderr=True).print(f"[bold red]error:[/] (rank {rank}) {message}", highlight=False, soft_wrap=True)
    else:  # bad input is the same on every rank: said once, by rank 0
        console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(obj: Any) -> None:
    """Print one JSON object on stdout; NaN and ±inf become null, so the output is always valid JSON.

    Under torchrun only rank 0 prints it, so stdout holds one object.
    """
    if process_rank() != 0:
        return
    sys.stdout.write(json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite(v: Any) -> Any:
    """``v`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return _finite(o.item())
    if hasattr(o, "tolist"):
        return _finite(o.tolist())
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


@contextmanager
def processes() -> Iterator[Any]:
    """The process group of a ``torchrun`` / ``accelerate launch`` run (a one-process ``Dist`` in a plain run),
    left on exit: the commands that read token windows pass it on as ``dist=``.

    Example:
        >>> with cli_errors(), processes() as d:                    # doctest: +SKIP
        ...     result = evaluate_plan(net, plan, windows, dist=d)
    """
    from actlab import distributed

    d = distributed.setup()
    try:
        yield d
    finally:
        distributed.teardown(d)


def quiet_libraries() -> None:
    """Silence transformers' own progress bars and warnings; actlab shows its own progress."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


#: set by ``actlab --debug``; ``ACTLAB_DEBUG=1`` does the same
debug_mode = {"on": False}

#: exit code of a run stopped by Ctrl-C (128 + SIGINT, what shells report)
INTERRUPTED = 130


def _debugging() -> bool:
    return debug_mode["on"] or os.environ.get("ACTLAB_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def guarded(command: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a CLI command so that it never ends in a traceback.

    Bad input (actlab's user errors) is one ``error:`` line and exit code 2; an unexpected exception is one
    ``error:`` line with its type and message, how to see the traceback, and exit code 1; Ctrl-C says that
    nothing was left half-written and exits 130. With ``--debug`` or ``ACTLAB_DEBUG=1`` unexpected
    exceptions propagate with their traceback.

    Example:
        >>> app.command(name="env")(guarded(env))   # doctest: +SKIP
    """

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            console.print(
                "[bold yellow]interrupted:[/] stopped before finishing; nothing was written (outputs are staged "
                "and moved into place only when a run succeeds)", highlight=False, soft_wrap=True,
            )
            raise typer.Exit(INTERRUPTED) from None
        except user_errors() as e:
            fail(str(e))
        except Exception as e:
            if _debugging():
                raise
            message = str(e).strip().splitlines()[0] if str(e).strip() else "(no message)"
            fail(f"{type(e).__name__}: {message} (unexpected: run `actlab --debug ...` or set ACTLAB_DEBUG=1 "
                 "for the traceback, and include it with the output of `actlab env` in a bug report)", code=1)

    return run
