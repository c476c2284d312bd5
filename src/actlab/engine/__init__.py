"""Generation engine (static KV cache decode loop) and speed-measurement utilities.

Example:
    >>> from actlab.engine import generate  # doctest: +SKIP
"""

from __future__ import annotations

from actlab.engine.cache import make_cache
from actlab.engine.generate import GenerateOutput, generate
from actlab.engine.native import NativeDecoder, generate_native, native_unsupported

__all__ = ["GenerateOutput", "NativeDecoder", "generate", "generate_native", "make_cache", "native_unsupported"]
