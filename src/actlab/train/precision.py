"""Training precision: bf16 autocast where the hardware computes bf16 natively, fp32 otherwise.

``auto`` picks bf16 on a CUDA device that supports it, and on a CPU with AMX or AVX-512 BF16 (where
oneDNN runs bf16 matmuls natively); elsewhere bf16 would be emulated and slower than fp32. Weights and
optimizer state stay fp32 in every mode: autocast only lowers the forward's matmuls.

Example:
    >>> resolve("fp32", torch.device("cpu"))
    'fp32'
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import lru_cache

import torch

from actlab.train.errors import TrainError

PRECISIONS = ("auto", "fp32", "bf16")


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AMX-BF16 or AVX-512 BF16)."""
    if "AMX" in str(torch.backends.cpu.get_cpu_capability()).upper():
        return True
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for a requested ``precision`` on ``device``."""
    if precision not in PRECISIONS:
        raise TrainError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The forward's autocast context for a resolved ``precision``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()
