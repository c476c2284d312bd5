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
from actlab.engine.traffic import ceiling_from_skipped, linear_bytes

#: actlab weight format -> the llama.cpp (GGUF) format it is measured against
LLAMACPP_FORMAT = {"fp32": "f32", "bf16": "f16", "int8": "q8_0", "int4": "q4_1"}


def calibratable_methods() -> list[str]:
    """Registered methods that calibrate a plan (a handler exists), sorted; ``composed`` is not one: its
    plans come from merging others (``actlab.merge_plans``)."""
    from actlab.sparsity import methods  # noqa: F401  (registers the built-in handlers)
    from actlab.sparsity.methods.base import HANDLERS

    return sorted(HANDLERS)


def check_calibratable(method: str) -> None:
    """Raises PlanError unless ``method`` can be calibrated at a sparsity target (cheap: before a model loads)."""
    from actlab.sparsity.config import CONFIGS
    from actlab.sparsity.errors import PlanError

    known = calibratable_methods()
    if method not in known:
        what = "is not calibrated (its plans come from merging others)" if method in CONFIGS else "is unknown"
        raise PlanError(f"method {method!r} {what}; calibrate one of {', '.join(known)}")


def calibrate_at_sparsity(
    model: nn.Module,
    method: str,
    sparsity: float,
    windows: torch.Tensor | None,
    *,
    tol: float = 0.005,
    progress: Any = None,
    **fields: Any,
) -> Any:
    """The plan of ``method`` calibrated at model-wide ``sparsity``, the target given in the method's terms.

    A method whose search knob is the sparsity itself (teal, wina, chess, cats; top-k, whose
    ``k = round((1 - sparsity) * in)``) takes the target as its config's ``sparsity``. A method with
    another knob (cett: a CETT target per layer) is calibrated once and its knob bisected until the
    calibration's ``sparsity_model_wide`` is within ``tol`` of the target (the plan records the knob found).

    Args:
        fields: other config fields (``allocation="global"``...).

    Raises:
        PlanError: an unknown or uncalibrated method (``composed``), an unknown field, or a target the
            method cannot reach on this model (cett and cats cover only part of the linears).

    Example:
        >>> plan = calibrate_at_sparsity(model, "cett", 0.15, calib)               # doctest: +SKIP
        >>> round(plan.metrics["sparsity_model_wide"], 2), plan.config.cett         # doctest: +SKIP
        (0.15, 0.0912)
    """
    from actlab.sparsity.calibrate import prepare
    from actlab.sparsity.config import CONFIGS, config_from_dict
    from actlab.sparsity.errors import PlanError

    check_calibratable(method)
    cls = CONFIGS[method]
    if cls.knob == "sparsity":
        return prepare(model, config_from_dict({"method": method, "sparsity": sparsity, **fields}), windows,
                       progress).plan()
    if not 0.0 <= sparsity < 1.0:
        raise PlanError(f"{method}: sparsity must be in [0, 1), got {sparsity}")
    prepared = prepare(model, config_from_dict({"method": method, **fields}), windows, progress)

    def reached(plan: Any) -> float:
        return float(plan.metrics["sparsity_model_wide"])

    lo, hi = 0.0, prepared.max_knob()
    best = top = prepared.plan(hi)
    if reached(top) < sparsity - tol:
        raise PlanError(
            f"{method} reaches at most {reached(top):.1%} model-wide sparsity on this model ({cls.knob} = {hi:g}: "
            f"it sparsifies only some of the linears); ask for at most that, or use another method"
        )
    for _ in range(30):  # sparsity grows with the knob
        if abs(reached(best) - sparsity) <= tol:
            break
        mid = (lo + hi) / 2
        plan = prepared.plan(mid)
        if abs(reached(plan) - sparsity) < abs(reached(best) - sparsity):
            best = plan
        lo, hi = (mid, hi) if reached(plan) < sparsity else (lo, mid)
    return best


@contextlib.contextmanager
def _original_linears(model: nn.Module) -> Iterator[None]:
    """Puts the model's own ``nn.Linear`` modules back when the block ends, before the kernels' own
    removal runs: that rebuilds linears from the dequantised weights (slow on a 1B model, and not the
    original weights), and the next variant must run on the original ones."""
    from actlab.kernels.swap import _set

    linears = {path: m for path, m in model.named_modules() if isinstance(m, nn.Linear)}
    try:
        yield
    finally:
        for path, original in linears.items():
            try:
                current = model.get_submodule(path)
            except AttributeError:  # inside a fused kernel module (a gated MLP): its removal restores it
                continue
            if current is not original:
                _set(model, path, original)


@contextlib.contextmanager
def kernels_applied(model: nn.Module, plan: Any, weights: str = "fp32") -> Iterator[nn.Module]:
    """The plan's kernel modules inside the block (weights in ``weights``, lm_head too when it is not
    fp32, so dense and sparse read the same format), the dense model again after."""
    from actlab.sparsity.apply import apply_, remove_

    try:
        with _original_linears(model):
            if weights == "fp32":
                apply_(model, plan, kernels=True)
            else:
                from actlab.kernels.quantize import quantize_linears_

                apply_(model, plan, kernels=True, weights=weights)
                quantize_linears_(model, weights, lm_head=True)  # lm_head (the plan covers the decoder)
            yield model
    finally:
        remove_(model)  # what the originals did not replace (a gated MLP kernel), and the plan's records


def _built_once(model: nn.Module, install: Any) -> Any:
    """A context factory that swaps in the modules ``install(model)`` puts in place, built once: the
    model's own modules are back after ``install`` and after every use. Quantising a 1B model's weights
    takes about a minute in Python; a bench round must not pay it (it is not timed, but it adds up)."""
    from actlab.kernels.swap import _set

    before = dict(model.named_modules())
    with _original_linears(model):
        install(model)
        built = {path: m for path, m in model.named_modules() if path in before and before[path] is not m}
    # the outermost replaced paths only (a replaced module brings its own children)
    built = {p: m for p, m in built.items() if not any(p.startswith(q + ".") for q in built)}

    @contextlib.contextmanager
    def swapped() -> Iterator[nn.Module]:
        for path, m in built.items():
            _set(model, path, m)
        try:
            yield model
        finally:
            for path in built:
                _set(model, path, before[path])

    return swapped


def dense_in(model: nn.Module, weights: str) -> Any:
    """A context factory: the dense model with its linears (lm_head included) in ``weights`` on the
    kernels (no threshold), built once; fp32 is the model as it is (torch's own dense matmuls)."""
    if weights == "fp32":
        return contextlib.nullcontext
    from actlab.kernels.quantize import quantize_linears_

    return _built_once(model, lambda m: quantize_linears_(m, weights, lm_head=True))


def sparse_in(model: nn.Module, plan: Any, weights: str) -> Any:
    """A context factory: the plan on the kernels in ``weights``. fp32 applies and removes the plan each
    time (bit-identical, cheap); other formats are quantised once and swapped in, which needs every entry
    of the plan on the kernels (masking hooks would not come back with the modules)."""
    if weights == "fp32":
        return lambda: kernels_applied(model, plan, weights)
    from actlab.kernels.quantize import quantize_linears_
    from actlab.kernels.swap import _kernel
    from actlab.sparsity.apply import apply_, remove_
    from actlab.sparsity.errors import PlanError

    masked = sorted({e.kind for e in plan.entries if _kernel(e) is None})
    if masked:
        raise PlanError(f"--weights {weights} needs a plan whose entries all run on the kernels; this one has "
                         f"{', '.join(masked)} entries, which run on the masking path: use --weights fp32")

    def install(m: nn.Module) -> None:
        apply_(m, plan, kernels=True, weights=weights)
        quantize_linears_(m, weights, lm_head=True)  # lm_head (the plan covers the decoder)

    swapped = _built_once(model, install)
    remove_(model)  # the plan's records (its modules are already back to the originals)
    return swapped


def bench_plan(
    model: nn.Module,
    plan: Any,
    prompt_ids: torch.Tensor,
    new_tokens: int = 64,
    reps: int = 5,
    warmup: int = 1,
    num_threads: int | None = None,
    hf: bool = True,
    weights: str = "fp32",
    engine: str = "torch",
    llamacpp: str | None = None,
) -> dict[str, Any]:
    """Measure decode tokens/s dense, sparse (kernels) and HF dense, interleaved; medians after warm-up.

    Args:
        weights: format of the actlab variants' weights (fp32, bf16, int8, int4): dense and sparse both in
            it (fp32 dense is torch's own matmuls; other formats run dense through the same kernels).
        engine: torch, native or auto (:data:`actlab.engine.bench.ENGINES`) for the actlab variants.
        llamacpp: a GGUF file: llama.cpp decodes it as one more interleaved variant (``tok_s_llamacpp``).

    Returns the ``actlab bench --json`` object: ``tok_s_dense``, ``tok_s_sparse``, ``tok_s_hf_dense``,
    ``speedup`` (sparse / dense engine), ``speedup_vs_hf``, ``ceiling`` (dense bytes / bytes still read),
    ``ceiling_frac`` (speedup / ceiling), ``sparsity_model_wide``, ``bytes_skipped_frac``,
    ``peak_rss_mb``, ``threads``, ``weights``, ``engine`` and the per-variant samples; with ``llamacpp``
    also ``tok_s_llamacpp`` and ``vs_llamacpp`` (sparse / llama.cpp).
    """
    from actlab.engine.bench import resolve_engine
    from actlab.sparsity.metrics import entry_metrics

    ran, not_native = resolve_engine(model, engine)
    with threads(num_threads) as n_threads:
        variants = {
            "dense": within(
                dense_in(model, weights),
                lambda: measure_decode(model, prompt_ids, new_tokens, reps=1, warmup=0, engine=ran).tokens_per_s,
            ),
            "sparse": within(
                sparse_in(model, plan, weights),
                lambda: measure_decode(model, prompt_ids, new_tokens, reps=1, warmup=1, engine=ran).tokens_per_s,
            ),
        }
        if hf:
            variants["hf_dense"] = lambda: measure_hf_decode(model, prompt_ids, new_tokens, reps=1, warmup=0).tokens_per_s
        if llamacpp is not None:
            from actlab.engine.llamacpp import llamacpp_decode

            variants["llamacpp"] = lambda: llamacpp_decode(
                llamacpp, prompt_ids, new_tokens=new_tokens, threads=n_threads, reps=1, warmup=0
            ).tokens_per_s
        result = interleaved(variants, reps=reps, warmup=warmup)
    med = result.medians
    # the plan's own definition (plan.metrics, eval, optimize): one bytes_skipped_frac per plan
    skipped = entry_metrics(model, plan.entries)["bytes_skipped_frac"]
    ceiling = ceiling_from_skipped(skipped)
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
        "bytes_skipped_frac": skipped,
        "dense_weight_mb": dense_bytes / 2**20,
        "peak_rss_mb": peak_rss_mb(),
        "threads": n_threads,
        "weights": weights,
        "engine": ran,
        "native_unsupported": not_native,
        "new_tokens": new_tokens,
        "prompt_tokens": int(prompt_ids.shape[1]),
        "reps": reps,
        "samples": result.samples,
    }
    if llamacpp is not None:
        out.update(tok_s_llamacpp=med["llamacpp"], vs_llamacpp=med["sparse"] / med["llamacpp"],
                   dense_vs_llamacpp=med["dense"] / med["llamacpp"], llamacpp_gguf=str(llamacpp))
    return out
