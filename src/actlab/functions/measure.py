"""Measured properties of the table's functions: sparsity at standard-normal input and CPU cost per element.

Sparsity is what a function does to pre-activations that look like a normalised layer's: the share of exact
zeros, and the share below 1% of the output's standard deviation (near zeros a threshold would drop). Cost is
the median time of the forward on a 1M-element fp32 tensor with torch at one thread, in ns per element; it is a
number for the benchmark and the curves page, varies by machine, and no test asserts more than that it is
finite and positive.

Example:
    >>> sparsity_at_normal("relu")["zeros"]            # doctest: +SKIP
    0.5001
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from actlab.functions.table import ActivationFunction, lookup


def sparsity_at_normal(function: str | ActivationFunction, n: int = 1 << 20, seed: int = 0,
                       rel: float = 0.01, **params: Any) -> dict[str, float]:
    """The share of exact zeros and of ``|f(x)| < rel * std(f(x))`` for ``x ~ N(0, 1)`` (``n`` draws, fixed seed).

    Example:
        >>> round(sparsity_at_normal("relu", n=100_000)["zeros"], 2)
        0.5
    """
    entry = lookup(function)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen)
    with torch.no_grad():
        y = entry.apply(x, **params)
    std = float(y.std())
    return {"zeros": float((y == 0).float().mean()), "near_zero": float((y.abs() < rel * std).float().mean()),
            "std": std}


def cost_per_element(function: str | ActivationFunction, n: int = 1 << 20, reps: int = 15, warmup: int = 3,
                     **params: Any) -> float:
    """Median ns per element of the forward on an ``n``-element fp32 tensor, torch at one thread (restored after).

    Example:
        >>> cost_per_element("relu", n=1 << 16, reps=3) > 0
        True
    """
    entry = lookup(function)
    x = torch.randn(n, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        with torch.no_grad():
            for i in range(warmup + reps):
                t0 = time.perf_counter()
                entry.apply(x, **params)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times) / n * 1e9


def measure_all(cost: bool = True, n: int = 1 << 20, reps: int = 15) -> dict[str, dict[str, float]]:
    """:func:`sparsity_at_normal` (and :func:`cost_per_element` when ``cost``) of every entry, by name.

    Example:
        >>> table = measure_all(cost=False, n=10_000)
        >>> table["relu"]["zeros"] > table["silu"]["zeros"]
        True
    """
    from actlab.functions.table import FUNCTIONS

    out = {}
    for name, entry in FUNCTIONS.items():
        row = sparsity_at_normal(entry, n=n)
        if cost:
            row["ns_per_element"] = cost_per_element(entry, n=n, reps=reps)
        out[name] = row
    return out


__all__ = ["cost_per_element", "measure_all", "sparsity_at_normal"]
