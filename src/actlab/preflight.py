"""Checks that a long run can finish, made before its first expensive stage.

``actlab optimize`` profiles, calibrates and evaluates for minutes before it benchmarks decoding; a model
the engine cannot drive (a transformers release that renamed a forward argument, say) used to surface only
then, as a traceback. :func:`preflight` runs each later stage's cheapest real call first: two decode steps
of the engine on the loaded model, one sparse-kernel call, and the output directory check.

Example:
    >>> import actlab
    >>> from actlab.preflight import preflight
    >>> model, _ = actlab.load_model("random:tiny-llama")
    >>> preflight(model, engine=True, kernels=True)["engine"]
    'ok'
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch import nn

from actlab.errors import ActlabError

__all__ = ["PreflightError", "preflight"]


class PreflightError(ActlabError):
    """A stage of the run cannot work on this model or machine: found before the long work starts."""


def _check_engine(model: nn.Module) -> None:
    from actlab.engine.generate import generate

    ids = torch.zeros(1, 2, dtype=torch.long, device=model.device)
    try:
        generate(model, ids, max_new_tokens=2)
    except NotImplementedError as err:
        raise PreflightError(f"the decode benchmark cannot run: {err}") from err
    except Exception as err:  # an installed transformers the engine does not know: say so now, not later
        raise PreflightError(
            f"the decode engine failed on {type(model).__name__} with the installed transformers "
            f"({type(err).__name__}: {err}); install the tested versions with `bash scripts/install.sh`"
        ) from err


def _check_kernels() -> str:
    from actlab.kernels import ops

    x = torch.tensor([[1.0, -0.01, 2.0, 0.0]])
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)  # [out, in]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's own warning is reported below, once
        got = ops.sparse_linear(x, ops.kernel_weight(w.t()), 0.05)  # the kernels take [in, out]
    want = (x * (x.abs() > 0.05)) @ w.T
    if not torch.allclose(got, want, atol=1e-5):
        raise PreflightError(
            f"the sparse kernels give wrong results on this machine ({got.tolist()} != {want.tolist()}); "
            "rebuild them with `pip install -e . --no-build-isolation` or report the output of `actlab env`"
        )
    return "compiled" if ops.available() else "fallback"


def preflight(
    model: nn.Module,
    out: str | os.PathLike | None = None,
    engine: bool = True,
    kernels: bool = True,
) -> dict[str, Any]:
    """Check that the engine, the kernels and the output directory will work; returns what was found.

    Args:
        model: the loaded model the run will use (left as it was found).
        out: the output directory the run will write, checked for writability.
        engine: run two greedy decode steps of :func:`actlab.engine.generate`.
        kernels: run one sparse-kernel call against the masking reference.

    Returns:
        ``{"engine": "ok"|"skipped", "kernels": "compiled"|"fallback"|"skipped", "out": path|None}``.

    Raises:
        PreflightError: a stage cannot run; the message names it and the fix.
        OutputError: ``out`` cannot be written.
    """
    found: dict[str, Any] = {"engine": "skipped", "kernels": "skipped", "out": None}
    if out is not None:
        from actlab.outputs import check_writable

        found["out"] = str(check_writable(out))
    if engine:
        _check_engine(model)
        found["engine"] = "ok"
    if kernels:
        found["kernels"] = _check_kernels()
    return found
