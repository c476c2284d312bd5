"""Perplexity of a causal LM over token windows.

Definition: for every window ``w`` and every target position ``t`` with ``max(1, score_from) <= t < seq_len``,
the negative log-likelihood of ``w[t]`` given ``w[:t]``; ``nll`` is their mean (nats per token) and
``ppl = exp(nll)``. ``score_from=0`` scores every predicted token (``seq_len - 1`` per window).

``score_from`` is the hook for the TEAL protocol: the caller runs the first ``score_from`` tokens of each window
without sparsity (its own business, e.g. a hook that switches on at that position) and only the rest is scored.
This function never changes the model; it only chooses which positions count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from actlab.distributed import Dist, shard_windows
from actlab.models.scoring import per_window_nll


@dataclass(frozen=True)
class PerplexityResult:
    """``ppl = exp(nll)``; ``nll`` in nats per scored token; ``tokens`` = how many tokens were scored."""

    ppl: float
    nll: float
    tokens: int
    windows: int
    seq_len: int
    score_from: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _progress(total: int, enabled: bool) -> Any:
    """A rich progress bar on stderr (stdout stays clean for --json), or None when disabled."""
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("perplexity"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    windows: torch.Tensor,
    batch_size: int = 8,
    progress: bool = False,
    score_from: int = 0,
    dist: Dist | None = None,
) -> PerplexityResult:
    """Next-token perplexity of ``model`` over ``windows`` (``[n_windows, seq_len]`` token ids).

    Works with any model whose ``model(input_ids)`` returns an object with ``.logits`` (every HF causal LM).
    The model is put in eval mode for the call and its previous mode restored. Losses are computed per window in
    float32, so peak extra memory is one window's logits, not a batch's.

    ``dist`` (:func:`actlab.distributed.setup` under torchrun): every rank passes the same ``windows`` and
    scores its share of the batches; the per-window sums are gathered in window order and added up as one
    process adds them, so every rank returns the single-process result.

    Example:
        >>> from actlab.data.windows import make_windows  # doctest: +SKIP
        >>> result = perplexity(model, make_windows(corpus, tok, 512, 65_536, split="eval"))  # doctest: +SKIP
        >>> round(result.ppl, 2), result.tokens  # doctest: +SKIP
        (21.37, 65408)
        >>> perplexity(model, windows, dist=actlab.distributed.setup()).ppl  # doctest: +SKIP  (on every rank)
        21.37
    """
    if windows.dim() != 2 or windows.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"windows must be an integer tensor [n_windows, seq_len], got {windows.dtype} "
            f"{tuple(windows.shape)}"
        )
    n_windows, seq_len = windows.shape
    start = max(1, score_from)  # position 0 has no context, so it is never a target
    if n_windows == 0 or start >= seq_len:
        raise ValueError(
            f"nothing to score: {n_windows} windows of {seq_len} tokens, score_from={score_from}; "
            "pass windows and a score_from below seq_len"
        )
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive (got {batch_size})")

    bar = _progress(len(shard_windows(n_windows, batch_size, dist)), progress)  # this rank's windows
    try:
        if bar is not None:
            bar.start()
            task = bar.add_task("ppl", total=len(shard_windows(n_windows, batch_size, dist)))
        sums = per_window_nll(model, windows, batch_size, start, reduction="sum",
                              on_batch=None if bar is None else lambda n: bar.advance(task, n), dist=dist)
    finally:
        if bar is not None:
            bar.stop()
    total_nll = 0.0  # python float (float64), summed window by window so many windows do not drift
    for window_sum in sums.tolist():
        total_nll += window_sum

    tokens = n_windows * (seq_len - start)
    nll = total_nll / tokens
    return PerplexityResult(
        ppl=math.exp(nll), nll=nll, tokens=tokens, windows=n_windows, seq_len=seq_len, score_from=score_from
    )
