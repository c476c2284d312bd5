"""``actlab env``: what a bug report needs."""

from __future__ import annotations

import typer

from actlab.cli.common import print_json


def env(json_out: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Print versions, threads, CPU flags and the compiled-kernel status for bug reports."""
    from actlab.envinfo import collect

    info = collect()
    if json_out:
        print_json(info)
        return
    width = max(len(k) for k in info)
    for key, value in info.items():
        typer.echo(f"{key:<{width}}  {value}")
