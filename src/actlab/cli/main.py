"""The ``actlab`` command: a thin dispatcher; each command lives in its own module.

Every command calls only the public Python API, so anything the CLI does a script can do.
"""

from __future__ import annotations

import importlib

import typer

from actlab.cli.common import debug_mode, guarded, quiet_unless_main

app = typer.Typer(
    name="actlab",
    help="Neuron activations of transformer models as a first-class object: measure, sparsify, accelerate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# (module under actlab.cli, function name): one line per command. Modules are imported here,
# but each imports torch/transformers only inside its function, so `actlab --help` stays fast.
_COMMANDS: list[tuple[str, str]] = [
    ("env", "env"),
    ("profile", "profile"),
    ("calibrate", "calibrate"),
    ("eval", "eval"),
    ("generate", "generate"),
    ("bench", "bench"),
    ("optimize", "optimize"),
    ("train", "train"),
    ("neurons", "neurons"),
    ("patch", "patch"),
    ("steer", "steer"),
    ("sae", "sae"),
]



@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an unexpected error (or set ACTLAB_DEBUG=1)."),
) -> None:
    """Neuron activations of transformer models as a first-class object: measure, sparsify, accelerate."""
    debug_mode["on"] = debug
    quiet_unless_main()  # torchrun / accelerate launch start one copy of the command per process


for _module, _func in _COMMANDS:
    _mod = importlib.import_module(f"actlab.cli.{_module}")
    # a module may name its own click command class (train's help reads the objective registry only when shown)
    app.command(name=_func, cls=getattr(_mod, "COMMAND_CLASS", None))(guarded(getattr(_mod, _func)))


if __name__ == "__main__":  # pragma: no cover
    app()
