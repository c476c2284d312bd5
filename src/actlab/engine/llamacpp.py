"""llama.cpp as the speed and quality reference: decode tokens/s and perplexity of GGUF files.

An optional extra (``pip install "actlab[llamacpp]"``, see :data:`INSTALL`): nothing else in actlab imports
this module. GGUF files for a model come from :func:`actlab.engine.llamacpp_gguf.gguf_for`.

Decode speed follows llama-bench's tg128: after ``warmup`` untimed runs, each run clears the KV cache,
evaluates the prompt in one batch, then generates ``new_tokens`` greedily, one ``llama_decode`` of one token
each; decode tok/s = (new_tokens - 1) / time of those single-token evals, read from llama.cpp's own timers
(``llama_perf_context``: ``n_eval`` and ``t_eval_ms`` count exactly those calls). The wall time of the same
loop (argmax included) is reported beside it. Medians over ``reps``.

Perplexity scores exactly what :func:`actlab.eval.perplexity` scores: every window is evaluated from an empty
KV cache in one batch with logits at every position, and targets ``max(1, score_from) .. seq_len - 1``.

Example:
    >>> from actlab.engine.llamacpp import llamacpp_decode  # doctest: +SKIP
    >>> r = llamacpp_decode("model.q4_0.gguf", [1, 504, 3458], new_tokens=128, threads=2)  # doctest: +SKIP
    >>> round(r.tokens_per_s), r.tokens[:4]  # doctest: +SKIP
    (95, [28, 3458, 2056, 314])
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from actlab.eval.perplexity import PerplexityResult

VERSION = "0.3.36"
_NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
#: llama-cpp-python has no wheel for Linux x86 on PyPI: it compiles llama.cpp (cmake + g++, ~15 min on 2
#: cores). AMX off: the default build segfaults in its AMX matmul on quantized GGUFs (upstream bug).
INSTALL = (
    f"CMAKE_ARGS=\"-DCMAKE_C_FLAGS='{_NO_AMX}' -DCMAKE_CXX_FLAGS='{_NO_AMX}'\" "
    f"pip install llama-cpp-python=={VERSION} gguf==0.19.0 sentencepiece==0.2.3"
)


class LlamaCppError(ValueError):
    """llama.cpp is missing or refused an input; the message says what to do."""


def llamacpp_available() -> str | None:
    """None when ``llama_cpp`` imports, else the reason and the command that installs it.

    Example:
        >>> reason = llamacpp_available()
        >>> reason is None or "pip install llama-cpp-python" in reason
        True
    """
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:  # the package, or one of its own dependencies (diskcache, numpy)
        return f"llama.cpp reference needs llama-cpp-python ({e}); install it with: {INSTALL}"
    except OSError as e:  # the compiled libllama failed to load
        return f"llama-cpp-python is installed but libllama does not load ({e}); rebuild it with: {INSTALL}"
    return None


def _lib() -> Any:
    reason = llamacpp_available()
    if reason is not None:
        raise LlamaCppError(reason)
    import llama_cpp
    from llama_cpp import _logger

    _logger.set_verbose(False)  # llama.cpp logs every tensor at load otherwise; errors still print
    if not getattr(_lib, "_init", False):
        llama_cpp.llama_backend_init()
        _lib._init = True  # type: ignore[attr-defined]
    return llama_cpp


def build_has_amx() -> bool:
    """True when this libllama was compiled with AMX kernels (then quantized GGUFs need the workaround)."""
    return "AMX" in _lib().llama_print_system_info().decode(errors="replace")


@dataclass
class _Handle:
    lib: Any
    model: Any
    ctx: Any
    vocab: Any
    n_vocab: int
    extra_bufts: bool

    def logits(self, i: int = -1) -> Any:
        import numpy as np

        return np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))

    def clear(self) -> None:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)


@contextmanager
def _open(path: str | Path, n_ctx: int, threads: int, extra_bufts: bool | None = None) -> Iterator[_Handle]:
    """Model + context; ``extra_bufts=None`` keeps llama.cpp's weight repacking unless the build has AMX."""
    lib = _lib()
    path = Path(path).expanduser()
    if not path.is_file():
        raise LlamaCppError(f"GGUF file not found: {path}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1 (got {threads})")
    mparams = lib.llama_model_default_params()
    # The AMX workaround: extra buffer types hold the AMX (and repacked) weights; off only when needed,
    # because it also turns off the Q4_0 repacking that makes llama.cpp fast on AVX2/AVX-512.
    mparams.use_extra_bufts = (not build_has_amx()) if extra_bufts is None else bool(extra_bufts)
    model = lib.llama_model_load_from_file(str(path).encode(), mparams)
    if not model:
        raise LlamaCppError(f"llama.cpp could not load {path} (not a GGUF model file, or an unsupported one)")
    ctx = None
    try:
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = n_ctx
        cparams.n_ubatch = min(n_ctx, 512)
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = False  # the decode timers are the measurement
        ctx = lib.llama_init_from_model(model, cparams)
        if not ctx:
            raise LlamaCppError(f"llama.cpp could not create a context of {n_ctx} tokens for {path}")
        vocab = lib.llama_model_get_vocab(model)
        yield _Handle(lib, model, ctx, vocab, lib.llama_vocab_n_tokens(vocab), bool(mparams.use_extra_bufts))
    finally:
        if ctx:
            lib.llama_free(ctx)
        lib.llama_model_free(model)


def _flat_ids(ids: Any) -> list[int]:
    """A list of ids from a list, a 1-D tensor/array or a ``[1, T]`` one (what actlab's benches pass)."""
    shape = tuple(getattr(ids, "shape", ()))
    if len(shape) == 2:
        if shape[0] != 1:
            raise ValueError(f"llama.cpp decodes one sequence: prompt_ids has batch {shape[0]}, give [1, T]")
        ids = ids[0]
    if len(shape) > 2:
        raise ValueError(f"prompt_ids must be [T] or [1, T] token ids, got shape {shape}")
    return [int(t) for t in (ids.tolist() if hasattr(ids, "tolist") else ids)]


def _threads(threads: int | None) -> int:
    if threads is None:  # the caller's torch thread count, as actlab's own benches run
        import torch

        return torch.get_num_threads()
    return int(threads)


def _check_ids(ids: Sequence[int], n_vocab: int, what: str) -> None:
    bad = [t for t in ids if not 0 <= int(t) < n_vocab]
    if bad:
        raise ValueError(f"{what} holds token ids outside the GGUF vocabulary [0, {n_vocab}): {bad[:5]}")


def _decode(h: _Handle, tokens: Sequence[int]) -> None:
    arr = (h.lib.llama_token * len(tokens))(*[int(t) for t in tokens])
    rc = h.lib.llama_decode(h.ctx, h.lib.llama_batch_get_one(arr, len(tokens)))
    if rc != 0:
        raise LlamaCppError(f"llama_decode failed (code {rc}) on a batch of {len(tokens)} tokens")


@dataclass
class DecodeResult:
    """Medians of ``reps`` timed runs; ``tokens``: the greedy continuation (the same in every run)."""

    tokens_per_s: float  # llama.cpp timers: (new_tokens - 1) / t_eval
    tok_s_wall: float  # perf_counter around the same single-token loop, argmax included
    runs: list[float]
    tokens: list[int]
    new_tokens: int
    prompt_tokens: int
    threads: int
    extra_bufts: bool
    path: str
    timer: str = "llama_perf_context (n_eval, t_eval_ms)"
    wall_runs: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def llamacpp_decode(
    gguf_path: str | Path,
    prompt_ids: Any,
    new_tokens: int = 128,
    threads: int | None = 2,
    reps: int = 3,
    warmup: int = 1,
    extra_bufts: bool | None = None,
) -> DecodeResult:
    """Greedy decode ``new_tokens`` after ``prompt_ids`` with llama.cpp; decode tok/s (see the module doc).

    Example:
        >>> r = llamacpp_decode("smollm2.q4_1.gguf", tok("The capital of France is")["input_ids"])  # doctest: +SKIP
    """
    prompt_ids = _flat_ids(prompt_ids)
    threads = _threads(threads)
    if not prompt_ids:
        raise ValueError("prompt_ids is empty: give at least one token id")
    if new_tokens < 2 or reps < 1 or warmup < 0:
        raise ValueError(f"need new_tokens >= 2, reps >= 1, warmup >= 0 (got {new_tokens}, {reps}, {warmup})")
    with _open(gguf_path, len(prompt_ids) + new_tokens, threads, extra_bufts) as h:
        _check_ids(prompt_ids, h.n_vocab, "prompt_ids")
        speeds: list[float] = []
        walls: list[float] = []
        tokens: list[int] = []
        for run in range(warmup + reps):
            h.clear()
            _decode(h, prompt_ids)
            out = [int(h.logits().argmax())]
            h.lib.llama_perf_context_reset(h.ctx)  # the prompt's batch is not decode time
            t0 = time.perf_counter()
            for _ in range(new_tokens - 1):
                _decode(h, out[-1:])
                out.append(int(h.logits().argmax()))
            wall = time.perf_counter() - t0
            perf = h.lib.llama_perf_context(h.ctx)
            if perf.n_eval != new_tokens - 1:  # the timer counted something else: do not report it
                raise LlamaCppError(f"llama.cpp counted {perf.n_eval} evals, expected {new_tokens - 1}")
            if run >= warmup:
                speeds.append(perf.n_eval / (perf.t_eval_ms / 1e3))
                walls.append((new_tokens - 1) / wall)
            tokens = out
    return DecodeResult(
        tokens_per_s=statistics.median(speeds), tok_s_wall=statistics.median(walls), runs=speeds, tokens=tokens,
        new_tokens=new_tokens, prompt_tokens=len(prompt_ids), threads=threads, extra_bufts=h.extra_bufts,
        path=str(gguf_path), wall_runs=walls,
    )


def llamacpp_perplexity(
    gguf_path: str | Path, windows: Any, score_from: int = 0, threads: int | None = 2,
    extra_bufts: bool | None = None,
) -> float:
    """Perplexity of a GGUF model over ``windows`` (``[n_windows, seq_len]`` ids): the ``ppl`` that
    :func:`actlab.eval.perplexity` gives for the same windows and ``score_from``.

    Example:
        >>> windows = make_windows(actlab.load_corpus(), tok, 256, 16384, split="eval")  # doctest: +SKIP
        >>> llamacpp_perplexity("smollm2.f32.gguf", windows)  # doctest: +SKIP
        17.93
    """
    return llamacpp_perplexity_result(gguf_path, windows, score_from, threads, extra_bufts).ppl


def llamacpp_perplexity_result(
    gguf_path: str | Path, windows: Any, score_from: int = 0, threads: int | None = 2,
    extra_bufts: bool | None = None,
) -> PerplexityResult:
    """:func:`llamacpp_perplexity` as actlab's :class:`~actlab.eval.perplexity.PerplexityResult` (nll, tokens).

    Example:
        >>> llamacpp_perplexity_result("smollm2.f32.gguf", windows).tokens  # doctest: +SKIP
        16320
    """
    import numpy as np

    w = np.asarray(windows.cpu() if hasattr(windows, "cpu") else windows)
    if w.ndim != 2 or not np.issubdtype(w.dtype, np.integer):
        raise ValueError(f"windows must be integer ids [n_windows, seq_len], got {w.dtype} {tuple(w.shape)}")
    n_windows, seq_len = w.shape
    start = max(1, score_from)  # position 0 has no context, so it is never a target
    if n_windows == 0 or start >= seq_len:
        raise ValueError(f"nothing to score: {n_windows} windows of {seq_len} tokens, score_from={score_from}")
    total = 0.0
    with _open(gguf_path, seq_len, _threads(threads), extra_bufts) as h:
        _check_ids(w.reshape(-1).tolist(), h.n_vocab, "windows")
        batch = h.lib.llama_batch_init(seq_len, 0, 1)
        try:
            for row in w:
                h.clear()  # each window from an empty cache, as a fresh forward in actlab
                batch.n_tokens = seq_len
                for i, t in enumerate(row.tolist()):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, i, 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = 1
                rc = h.lib.llama_decode(h.ctx, batch)
                if rc != 0:
                    raise LlamaCppError(f"llama_decode failed (code {rc}) on a window of {seq_len} tokens")
                ptr = h.lib.llama_get_logits(h.ctx)
                logits = np.ctypeslib.as_array(ptr, shape=(seq_len, h.n_vocab))[start - 1 : seq_len - 1]
                logits = logits.astype(np.float64)
                mx = logits.max(axis=1, keepdims=True)
                lse = np.log(np.exp(logits - mx).sum(axis=1)) + mx[:, 0]
                targets = row[start:seq_len].astype(np.int64)
                total += float((lse - logits[np.arange(len(targets)), targets]).sum())
        finally:
            h.lib.llama_batch_free(batch)
    tokens = n_windows * (seq_len - start)
    nll = total / tokens
    return PerplexityResult(ppl=math.exp(nll), nll=nll, tokens=tokens, windows=n_windows, seq_len=seq_len,
                            score_from=score_from)


def gguf_for(model: str | Path, fmt: str, **kwargs: Any) -> Path:
    """:func:`actlab.engine.llamacpp_gguf.gguf_for` (the GGUF file of ``model`` in ``fmt``), re-exported.

    Example:
        >>> gguf_for("smollm2-135m", "shipped").name  # doctest: +SKIP
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    from actlab.engine.llamacpp_gguf import gguf_for as convert  # imports this module: not at the top

    return convert(model, fmt, **kwargs)


__all__ = ["llamacpp_available", "llamacpp_decode", "llamacpp_perplexity", "llamacpp_perplexity_result",
           "gguf_for", "DecodeResult", "LlamaCppError", "INSTALL", "build_has_amx"]
