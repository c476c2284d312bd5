"""Build of the optional C extension ``actlab.kernels._sparse``; all metadata lives in pyproject.toml.

The extension is optional: if the compiler (or OpenMP) is missing, the install still succeeds, prints a
warning, and actlab falls back to its pure-PyTorch reference kernels. ``-march`` is deliberately not set:
the C code picks AVX2/AVX-512 per function at run time, so one build runs on any x86-64 CPU.

Example:
    pip install -e . --no-deps --no-build-isolation   # builds the extension in place
"""

from __future__ import annotations

import glob
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = "src/actlab/kernels/csrc"
# module.c is the extension's entry; each module_*.c binds the part of the same name
SOURCES = ["module", "sparse_gemv", "gated_mlp", "load_guard", "weights", "module_weights", "decode", "module_decode"]
OPENMP_FLAGS = ["-fopenmp"]


class OptionalBuildExt(build_ext):
    """Builds with OpenMP, retries without it, and only warns if the C build fails altogether."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
            return
        except Exception as err:  # any compiler failure must not fail the install
            first_error = err
        serial_compile = [f for f in ext.extra_compile_args if f not in OPENMP_FLAGS]
        serial_link = [f for f in ext.extra_link_args if f not in OPENMP_FLAGS]
        if serial_compile != ext.extra_compile_args:
            ext.extra_compile_args, ext.extra_link_args = serial_compile, serial_link
            try:
                super().build_extension(ext)
                _warn(f"built {ext.name} without OpenMP ({first_error}); kernels run single-threaded")
                return
            except Exception as err:
                first_error = err
        _warn(
            f"could not build the optional extension {ext.name} ({first_error}); actlab will use its "
            "pure-PyTorch fallback kernels (slower, same results)"
        )


def _warn(message: str) -> None:
    line = "*" * 78
    print(f"\n{line}\nWARNING: {message}\n{line}\n", file=sys.stderr)


def _extension() -> Extension:
    compile_args = ["-O3", "-std=gnu11", "-ffp-contract=fast", "-fvisibility=hidden", *OPENMP_FLAGS]
    if sys.platform == "win32":  # MSVC: no GCC vector extensions; the build fails and the fallback is used
        compile_args = ["/O2", "/openmp"]
    return Extension(
        "actlab.kernels._sparse",
        sources=[f"{CSRC}/{name}.c" for name in SOURCES],
        depends=sorted(glob.glob(f"{CSRC}/*.h")),
        include_dirs=[CSRC],
        extra_compile_args=compile_args,
        extra_link_args=list(OPENMP_FLAGS) if sys.platform != "win32" else [],
        optional=True,
    )


setup(ext_modules=[_extension()], cmdclass={"build_ext": OptionalBuildExt})
