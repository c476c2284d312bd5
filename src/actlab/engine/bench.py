"""Speed measurement shared by ``actlab bench`` and ``benchmarks/``: decode tokens/s, interleaving, memory.

Protocol (see DESIGN.md, "Measuring honestly"): speed is a ratio measured in one run. Variants (dense
engine, sparse engine, HF generate) run interleaved, A B C A B C ..., so machine noise hits all alike; each
reports the median of its samples after warm-up, with the thread count stated.

Sparse vs dense on one model object (one copy of the weights alive): wrap the measurement of the sparse
variant in the context manager that swaps the sparse modules in and back out, with :func:`within`::

    variants = {
        "dense": lambda: decode_tokens_per_s(model, ids, 64),
        "sparse": within(lambda: sparse_modules_in(model, plan), lambda: decode_tokens_per_s(model, ids, 64)),
        "hf": lambda: hf_decode_tokens_per_s(model, ids, 64),
    }
    result = interleaved(variants, reps=5, warmup=1)
    result.medians["sparse"] / result.medians["dense"]

Example:
    >>> from actlab.engine.bench import interleaved
    >>> r = interleaved({"a": lambda: 1.0, "b": lambda: 2.0}, reps=3)
    >>> r.medians
    {'a': 1.0, 'b': 2.0}
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from actlab.engine.cache import make_cache
from actlab.engine.generate import generate
from actlab.engine.traffic import ceiling_seconds, ceiling_speedup, linear_bytes

__all__ = [  # the traffic functions are re-exported: one import for a bench script
    "ENGINES",
    "DecodeSpeed",
    "Interleaved",
    "ceiling_seconds",
    "ceiling_speedup",
    "decode_tokens_per_s",
    "hf_decode_tokens_per_s",
    "interleaved",
    "linear_bytes",
    "measure_decode",
    "measure_hf_decode",
    "peak_rss_mb",
    "resolve_engine",
    "rss_mb",
    "threads",
    "within",
]


@dataclass(frozen=True)
class DecodeSpeed:
    """Medians (and samples) of repeated generations of one prompt.

    Attributes:
        tokens_per_s: median decode tokens/s (all sequences of the batch counted; prefill excluded).
        prefill_s: median prefill seconds (forward over the prompt + first token).
        samples: decode tokens/s of each timed repetition.
        prefill_samples: prefill seconds of each timed repetition.
        cpu_step_s: median CPU seconds (all threads) per decode step: robust to other processes taking
            the cores, but it counts threads spinning while they wait, so compare it at one thread count.
    """

    tokens_per_s: float
    prefill_s: float
    samples: list[float]
    prefill_samples: list[float]
    cpu_step_s: float = float("nan")

    @property
    def step_s(self) -> float:
        """Median seconds per decode step (batch 1: per token)."""
        return 1.0 / self.tokens_per_s


def _speed(runs: list[tuple[float, float, float]]) -> DecodeSpeed:
    """``[(decode tokens/s, prefill s, CPU s per step)]`` -> medians and samples."""
    tps, pre = [r[0] for r in runs], [r[1] for r in runs]
    return DecodeSpeed(statistics.median(tps), statistics.median(pre), tps, pre, statistics.median(r[2] for r in runs))


def _check_reps(reps: int, warmup: int) -> None:
    if reps < 1 or warmup < 0:
        raise ValueError(f"need reps >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")


#: decode engines ``measure_decode`` drives: the torch layer loop (HF modules, static cache) and the native
#: one (one C call per token, :mod:`actlab.engine.native`); ``auto`` is native where it supports the model
ENGINES = ("torch", "native", "auto")


def resolve_engine(model: nn.Module, engine: str) -> tuple[str, str | None]:
    """``(engine that will run, reason native does not)``: ``auto`` becomes native where it can run.

    Raises:
        ValueError: an unknown engine, or ``native`` asked for a model it does not support (the reason).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if engine == "torch":
        return "torch", None
    from actlab.engine.native import native_unsupported

    reason = native_unsupported(model)
    if reason is None:
        return "native", None
    if engine == "native":
        raise ValueError(f"the native engine cannot run this model: {reason}; use --engine torch")
    return "torch", reason


def measure_decode(
    model: nn.Module,
    prompt_ids: Tensor,
    new_tokens: int,
    reps: int = 5,
    warmup: int = 1,
    cache: object = None,
    engine: str = "torch",
) -> DecodeSpeed:
    """Decode speed of :func:`actlab.engine.generate` (greedy, no eos stop), median over ``reps``.

    One static cache (``cache``, or a new one from :func:`~actlab.engine.make_cache`) serves every
    repetition; it is allocated during the first prefill, never in the decode phase. ``engine="native"``
    times :func:`actlab.engine.native.generate_native` instead (the same timing fields; ``cache`` unused).

    Example:
        >>> import actlab, torch
        >>> model, _ = actlab.load_model("random:tiny-llama")
        >>> measure_decode(model, torch.tensor([[1, 2, 3]]), 8, reps=2).tokens_per_s > 0
        True
    """
    _check_reps(reps, warmup)
    if new_tokens < 2:
        raise ValueError("new_tokens must be >= 2 (the first new token comes from the prefill)")
    engine, _ = resolve_engine(model, engine)
    if engine == "native":
        from actlab.engine.native import generate_native

        def run() -> object:
            return generate_native(model, prompt_ids, new_tokens)
    else:
        if cache is None:
            cache = make_cache(model, prompt_ids.shape[1] + new_tokens)

        def run() -> object:
            return generate(model, prompt_ids, new_tokens, cache=cache)
    runs = []
    for i in range(warmup + reps):
        out = run()
        if i >= warmup:
            runs.append((out.decode_tokens_per_s, out.prefill_s, out.decode_cpu_s / out.decode_steps))
    return _speed(runs)


def decode_tokens_per_s(
    model: nn.Module, prompt_ids: Tensor, new_tokens: int, reps: int = 5, warmup: int = 1
) -> float:
    """Median decode tokens/s of the actlab engine (prefill excluded; see :func:`measure_decode`)."""
    return measure_decode(model, prompt_ids, new_tokens, reps, warmup).tokens_per_s


class _Timestamps:
    """A ``model.generate`` streamer that only records when each chunk arrives.

    ``generate`` calls ``put`` with the prompt before the prefill, then with each new token right after it
    is chosen, so consecutive timestamps delimit the prefill and every decode step.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []

    def put(self, value: Tensor) -> None:
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def end(self) -> None:
        pass


def measure_hf_decode(
    model: nn.Module,
    prompt_ids: Tensor,
    new_tokens: int,
    reps: int = 5,
    warmup: int = 1,
    cache_implementation: str | None = None,
) -> DecodeSpeed:
    """Decode speed of HF ``model.generate`` (greedy, eos disabled), the dense baseline.

    Method: a streamer timestamps each token as ``generate`` emits it; decode time = last timestamp −
    first-new-token timestamp (``new_tokens − 1`` steps), prefill = first-new-token − prompt timestamp.
    Decode thus includes everything ``generate`` does per step (input preparation, cache update, logits
    processors, stopping criteria) but not its one-off set-up before the prefill.

    Args:
        cache_implementation: ``None`` = generate's default (a dynamic cache); ``"static"`` for its
            static cache.
    """
    _check_reps(reps, warmup)
    if new_tokens < 2:
        raise ValueError("new_tokens must be >= 2 (the first new token comes from the prefill)")
    kwargs = dict(
        attention_mask=torch.ones_like(prompt_ids), max_new_tokens=new_tokens, do_sample=False,
        eos_token_id=None, pad_token_id=getattr(model.config, "pad_token_id", None) or 0,
    )
    if cache_implementation is not None:
        kwargs["cache_implementation"] = cache_implementation
    runs = []
    for i in range(warmup + reps):
        stamps = _Timestamps()
        with torch.inference_mode():
            model.generate(prompt_ids, streamer=stamps, **kwargs)
        t = stamps.times  # [prompt, token 1, ..., token new_tokens]
        if len(t) != new_tokens + 1:
            raise RuntimeError(f"model.generate emitted {len(t) - 1} tokens, expected {new_tokens}")
        if i >= warmup:
            cpu_step = (stamps.cpu[-1] - stamps.cpu[1]) / (new_tokens - 1)
            runs.append((prompt_ids.shape[0] * (new_tokens - 1) / (t[-1] - t[1]), t[1] - t[0], cpu_step))
    return _speed(runs)


def hf_decode_tokens_per_s(
    model: nn.Module, prompt_ids: Tensor, new_tokens: int, reps: int = 5, warmup: int = 1
) -> float:
    """Median decode tokens/s of HF ``model.generate`` (see :func:`measure_hf_decode` for the method)."""
    return measure_hf_decode(model, prompt_ids, new_tokens, reps, warmup).tokens_per_s


@dataclass(frozen=True)
class Interleaved:
    """Result of :func:`interleaved`.

    Attributes:
        medians: variant -> median of its timed samples.
        samples: variant -> every timed sample, in run order.
        order: the names in the order they ran (warm-up included), to check the interleaving.
    """

    medians: dict[str, float]
    samples: dict[str, list[float]]
    order: list[str] = field(default_factory=list)

    def ratio(self, a: str, b: str) -> float:
        """``medians[a] / medians[b]`` (e.g. sparse tokens/s over dense tokens/s)."""
        return self.medians[a] / self.medians[b]


def interleaved(variants: dict[str, Callable[[], float]], reps: int, warmup: int = 0) -> Interleaved:
    """Run the variants in rounds, A B C A B C ..., and take the median of each one's samples.

    Args:
        variants: name -> callable returning one measurement (e.g. tokens/s of one generation).
        reps: timed rounds.
        warmup: untimed rounds first (caches, allocator, lazy initialisation).

    Example:
        >>> calls = []
        >>> r = interleaved({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 3.0}, 2)
        >>> calls, r.samples
        (['a', 'b', 'a', 'b'], {'a': [1.0, 1.0], 'b': [3.0, 3.0]})
    """
    _check_reps(reps, warmup)
    if not variants:
        raise ValueError("no variants to run")
    samples: dict[str, list[float]] = {name: [] for name in variants}
    order: list[str] = []
    for round_ in range(warmup + reps):
        for name, run in variants.items():
            value = float(run())
            order.append(name)
            if round_ >= warmup:
                samples[name].append(value)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return Interleaved(medians, samples, order)


def within(context: Callable[[], AbstractContextManager], run: Callable[[], float]) -> Callable[[], float]:
    """A variant that runs ``run`` inside a fresh ``context()`` each time (e.g. sparse modules swapped in).

    The swap in and out happens outside ``run``'s own timing, and the model is restored between rounds,
    so dense and sparse variants share one model object.

    Example:
        >>> import contextlib
        >>> within(contextlib.nullcontext, lambda: 2.0)()
        2.0
    """

    def variant() -> float:
        with context():
            return run()

    return variant


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[int]:
    """Set ``torch.set_num_threads(n)`` inside the block and restore the previous count after.

    ``None`` leaves the count alone. Yields the count in effect.

    Example:
        >>> with threads(1) as n:
        ...     n
        1
    """
    before = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise ValueError(f"threads must be >= 1, got {n}")
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (``getrusage`` maxrss: KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # macOS reports bytes


def rss_mb() -> float:
    """Current resident memory of this process in MiB (``/proc/self/statm``; peak RSS where absent)."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
    except OSError:
        return peak_rss_mb()
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
