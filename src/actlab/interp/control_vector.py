"""A steering vector as a llama.cpp control vector (GGUF), and back.

The layout llama.cpp reads (``--control-vector FILE``, ``common_control_vector_load``) and its
``cvector-generator`` writes:

- ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (string: the model's
  architecture), ``controlvector.layer_count`` (int32: the number of direction tensors);
- one float32 tensor ``direction.<il>`` of ``n_embd`` values per steered layer.

Numbering: llama.cpp adds ``direction.<il>`` to the output of its layer ``il`` (``cvec.apply_to(ctx0, cur,
il)`` right before ``l_out-<il>``), with layers counted from 0 as in Hugging Face. So actlab's
``layers.{i}.resid_out`` direction is ``direction.{i}``, same number. llama.cpp never steers layer 0 (its
loader reads ``direction.1`` upward and keeps no slot for 0), so a vector with a layer-0 direction is refused
rather than silently shortened.

Example:
    >>> export_control_vector(SteeringVector.load("runs/love"), "love.gguf")   # doctest: +SKIP
    # llama-cli -m smollm2.gguf --control-vector-scaled love.gguf 4.0 -p "I think"
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from actlab.interp.steering import SteeringError, SteeringVector

__all__ = ["ARCH", "export_control_vector", "load_control_vector"]

ARCH = "controlvector"


def export_control_vector(vector: SteeringVector, path: str | os.PathLike, model_hint: str | None = None) -> Path:
    """Write ``vector`` as a llama.cpp control-vector GGUF at ``path`` (through a temporary file and a rename).

    Args:
        model_hint: ``controlvector.model_hint`` (default: the architecture in the vector's fingerprint).

    Raises:
        SteeringError: the vector has a layer-0 direction (llama.cpp cannot apply it) or no layer.

    Example:
        >>> export_control_vector(vec, "runs/love/love.gguf")    # doctest: +SKIP
        PosixPath('runs/love/love.gguf')
    """
    import gguf

    if not vector.layers:
        raise SteeringError("the steering vector has no layers to export")
    if 0 in vector.directions:
        raise SteeringError("llama.cpp control vectors cannot steer layer 0 (its loader starts at direction.1): "
                            "compute the vector for layers >= 1 (e.g. --layers 1-10)")
    path = Path(path).expanduser()
    if path.suffix.lower() != ".gguf":
        raise SteeringError(f"a control vector file ends in .gguf, got {path.name!r}")
    hint = model_hint or str(vector.model.get("architecture") or vector.model_name or "unknown")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), ARCH)  # writes general.architecture
    try:
        writer.add_string(f"{ARCH}.model_hint", hint)
        writer.add_int32(f"{ARCH}.layer_count", len(vector.layers))  # int32, as llama.cpp's generator writes it
        for il in vector.layers:
            writer.add_tensor(f"direction.{il}", vector.directions[il].detach().float().cpu().numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_control_vector(path: str | os.PathLike) -> SteeringVector:
    """Read a llama.cpp control-vector GGUF (ours or cvector-generator's) as a :class:`SteeringVector`.

    The result carries no model fingerprint (the file has none), so applying it checks only widths and layers.

    Raises:
        SteeringError: not a control-vector GGUF, or directions of different widths.
    """
    import gguf

    path = Path(path).expanduser()
    if not path.is_file():
        raise SteeringError(f"control vector file not found: {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise SteeringError(f"{path} is not a readable GGUF file: {e}") from e
    arch = reader.get_field("general.architecture")
    if arch is None or arch.contents() != ARCH:
        raise SteeringError(f"{path} is not a control vector (general.architecture is "
                            f"{arch.contents() if arch is not None else None!r}, not {ARCH!r})")
    directions = {}
    for t in reader.tensors:
        if t.name.startswith("direction."):
            directions[int(t.name.removeprefix("direction."))] = torch.from_numpy(np.array(t.data, dtype=np.float32))
    if not directions or len({v.numel() for v in directions.values()}) != 1:
        raise SteeringError(f"{path} holds no direction.<layer> tensors of one width")
    hint = reader.get_field(f"{ARCH}.model_hint")
    return SteeringVector(directions=directions, method="llama.cpp control vector",
                          model_name=hint.contents() if hint is not None else "")
