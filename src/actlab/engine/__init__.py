"""Generation engine (static KV cache decode loop) and speed-measurement utilities.

Example:
    >>> from actlab.engine import generate  # doctest: +SKIP
"""

from __future__ import annotations

from actlab.engine.cache import make_cache
from actlab.engine.generate import GenerateOutput, generate

__all__ = ["GenerateOutput", "generate", "make_cache"]
