"""Decode speed of a sparsity plan: dense vs sparse on the actlab engine, and HF ``generate`` dense.

One model object serves every variant: the sparse variant swaps the kernel modules in before
its run and restores the dense model after (``apply_(..., kernels=True)`` / ``remove_``), so
only one copy of the weights is alive. Variants run interleaved and report medians.

Example:
    >>> r = bench_plan(model, plan, prompt_ids, new_tokens=32, reps=3)    # doctest: +SKIP
    >>> r["speedup"], r["ceiling"]                                        # doctest: +SKIP
    (1.41, 1.62)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from actlab.engine.bench import interleaved, measure_decode, measure_hf_decode, peak_rss_mb, threads, within
from actlab.engine.traffic import ceiling_speedup, linear_bytes


def kept_fractions(plan: Any) -> dict[str, float]:
    """Per linear module path, the expected fraction of its weight rows a decoded token reads."""
    from actlab.sparsity.metrics import skipped_fractions

    skipped = skipped_fractions((e.consumers, e.sparsity) for e in plan.entries if e.kind != "topk")
    return {path: 1.0 - s for path, s in skipped.items()}


@contextlib.contextmanager
def kernels_applied(model: nn.Module, plan: Any) -> Iterator[nn.Module]:
    """The plan's kernel modules inside the block, the dense model again after."""
    from actlab.sparsity.apply import apply_, remove_

    apply_(model, plan, kernels=True)
    try:
        yield model
    finally:
        remove_(model)


def bench_plan(
    model: nn.Module,
    plan: Any,
    prompt_ids: torch.Tensor,
    new_tokens: int = 64,
    reps: int = 5,
    warmup: int = 1,
    num_threads: int | None = None,
    hf: bool = True,
) -> dict[str, Any]:
    """Measure decode tokens/s dense, sparse (kernels) and HF dense, interleaved; medians after warm-up.

    Returns the ``actlab bench --json`` object: ``tok_s_dense``, ``tok_s_sparse``, ``tok_s_hf_dense``,
    ``speedup`` (sparse / dense engine), ``speedup_vs_hf``, ``ceiling`` (dense bytes / bytes still read),
    ``ceiling_frac`` (speedup / ceiling), ``sparsity_model_wide``, ``bytes_skipped_frac``,
    ``peak_rss_mb``, ``threads`` and the per-variant samples.
    """
    with threads(num_threads) as n_threads:
        variants = {
            "dense": lambda: measure_decode(model, prompt_ids, new_tokens, reps=1, warmup=0).tokens_per_s,
            "sparse": within(
                lambda: kernels_applied(model, plan),
                lambda: measure_decode(model, prompt_ids, new_tokens, reps=1, warmup=1).tokens_per_s,
            ),
        }
        if hf:
            variants["hf_dense"] = lambda: measure_hf_decode(model, prompt_ids, new_tokens, reps=1, warmup=0).tokens_per_s
        result = interleaved(variants, reps=reps, warmup=warmup)
    med = result.medians
    kept = kept_fractions(plan)
    ceiling = ceiling_speedup(model, kept)
    speedup = med["sparse"] / med["dense"]
    dense_bytes = linear_bytes(model)
    metrics = dict(getattr(plan, "metrics", {}) or {})
    out: dict[str, Any] = {
        "tok_s_dense": med["dense"],
        "tok_s_sparse": med["sparse"],
        "tok_s_hf_dense": med.get("hf_dense"),
        "speedup": speedup,
        "speedup_vs_hf": med["sparse"] / med["hf_dense"] if hf else None,
        "ceiling": ceiling,
        "ceiling_frac": speedup / ceiling,
        "sparsity_model_wide": metrics.get("sparsity_model_wide"),
        "bytes_skipped_frac": 1.0 - 1.0 / ceiling,
        "dense_weight_mb": dense_bytes / 2**20,
        "peak_rss_mb": peak_rss_mb(),
        "threads": n_threads,
        "new_tokens": new_tokens,
        "prompt_tokens": int(prompt_ids.shape[1]),
        "reps": reps,
        "samples": result.samples,
    }
    return out
