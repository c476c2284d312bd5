"""Generation engine (static KV cache decode loop) and speed-measurement utilities.

Example:
    >>> from actlab.engine import generate  # doctest: +SKIP
"""

from __future__ import annotations

from actlab.engine.generate import GenerateOutput, generate, make_cache

__all__ = ["GenerateOutput", "generate", "make_cache"]
