"""Massive activations (Sun et al., "Massive Activations in Large Language Models", 2024).

In the residual stream of most LLMs a handful of (channel, token) entries are 100-10,000x larger than the
rest, at fixed channels and on special tokens (the first token, delimiters). An entry of a residual output
``x`` [batch, seq, d] counts as massive when

    |x| >= abs_threshold   and   |x| >= ratio * median(|x|)

where the median (the lower median, as ``torch.median``) is over the whole tensor handed to ``update``:
the current batch at that layer, as the paper's per-tensor ratio. NaN/inf entries are never massive and
count as 0 in the median; when the median is 0 the ratio test always passes and ``ratio`` is None.

State is bounded and mergeable: the ``top_n`` records with the largest |value| (ties broken by layer,
position, channel, token id, so merging in any order keeps the same records) plus a hit count per
(layer, channel).

Example:
    >>> import torch
    >>> x = torch.randn(2, 16, 64)
    >>> x[0, 0, 7] = 2000.0                              # plant a spike
    >>> tr = MassiveTracker(MassiveConfig())
    >>> tr.update(x, layer=3, token_ids=torch.arange(32).view(2, 16))
    1
    >>> r = tr.records()[0]
    >>> r["layer"], r["channel"], r["position"], r["token_id"], r["value"]
    (3, 7, 0, 0, 2000.0)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from actlab.activations import scratch

_FIELDS = ("value", "ratio", "layer", "channel", "position", "token_id")


@dataclass(frozen=True)
class MassiveConfig:
    """Thresholds and bound of ``MassiveTracker``; JSON round-trips with ``to_dict`` / ``from_dict``."""

    abs_threshold: float = 100.0  # |x| at least this ...
    ratio: float = 1000.0  # ... and at least this many times the tensor's median |x|
    top_n: int = 200  # records kept (largest |value|)

    def __post_init__(self) -> None:
        if self.abs_threshold < 0 or self.ratio < 0 or self.top_n < 1:
            raise ValueError("need abs_threshold >= 0, ratio >= 0 and top_n >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MassiveConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown MassiveConfig keys: {sorted(unknown)}")
        return cls(**d)


def _lower_median(a: torch.Tensor) -> float:
    """Lower median of all entries, as ``torch.median``; numpy's partition is ~10x faster on CPU."""
    if a.device.type != "cpu":
        return float(a.median())
    flat = a.reshape(-1).numpy()
    k = (flat.size - 1) // 2
    return float(np.partition(flat, k)[k])


def _f32_ceil(t: float) -> float:
    """Smallest float32 >= ``t``: ``a >= it`` on float32 ``a`` is then exactly ``a >= t`` in real numbers
    (comparing with ``t`` itself would round it to the nearest float32, which can fall below ``t``)."""
    t32 = np.float32(t)
    if float(t32) < t:
        t32 = np.nextafter(t32, np.float32(np.inf))
    return float(t32)


def _empty_records() -> dict[str, torch.Tensor]:
    return {
        k: torch.zeros(0, dtype=torch.float64 if k in ("value", "ratio") else torch.int64) for k in _FIELDS
    }


class MassiveTracker:
    """Top-N massive activations across layers plus per-(layer, channel) hit counts."""

    def __init__(self, config: MassiveConfig | None = None) -> None:
        self.config = config or MassiveConfig()
        self.rec = _empty_records()  # field -> [K] tensor, sorted by descending |value|
        self.counts: dict[tuple[int, int], int] = {}
        self.total = 0  # every hit, including those no longer among the records
        self.token_text: dict[int, str] = {}

    @torch.no_grad()
    def update(
        self,
        x: torch.Tensor,
        layer: int,
        token_ids: torch.Tensor | None = None,
        median: float | None = None,
    ) -> int:
        """Scan ``x`` [batch, seq, d] (or [seq, d]) from ``layer``; returns the number of hits.

        ``token_ids`` [batch, seq] labels the records (-1 without it). ``median`` overrides the median of
        |x| (e.g. a histogram estimate) when the caller already has one.
        """
        x = x.detach()
        if x.dim() == 2:
            x = x.unsqueeze(0)
            if token_ids is not None and token_ids.dim() == 1:
                token_ids = token_ids.unsqueeze(0)
        if x.dim() != 3:
            raise ValueError(f"expected [batch, seq, d], got shape {tuple(x.shape)}")
        if token_ids is not None and tuple(token_ids.shape) != tuple(x.shape[:2]):
            raise ValueError(f"token_ids shape {tuple(token_ids.shape)} != {tuple(x.shape[:2])}")
        if x.numel() == 0:
            return 0
        x32 = x if x.dtype == torch.float32 else x.float()
        a = torch.abs(x32, out=scratch.get(0, x.shape, torch.float32, x.device))  # [B, S, d]
        cfg = self.config
        top = float(a.max())
        if not math.isfinite(top):  # NaN or inf somewhere: they are not massive activations
            a = torch.where(torch.isfinite(a), a, 0)
            top = float(a.max())
        if top < cfg.abs_threshold:
            return 0  # the common cheap exit: no candidate at all
        med = _lower_median(a) if median is None else float(median)
        hits = (a >= _f32_ceil(max(cfg.abs_threshold, cfg.ratio * med))).nonzero()  # [K, 3] = (b, s, c)
        k = hits.shape[0]
        if k == 0:
            return 0
        b, s, c = hits.unbind(1)
        val = x[b, s, c].to(torch.float64).cpu()
        ch, n = torch.unique(c.cpu(), return_counts=True)
        for ci, ni in zip(ch.tolist(), n.tolist(), strict=True):
            self.counts[(layer, ci)] = self.counts.get((layer, ci), 0) + ni
        self.total += k
        tok = token_ids.to(hits.device)[b, s].cpu() if token_ids is not None else torch.full((k,), -1)
        new = {
            "value": val,
            "ratio": val.abs() / med if med > 0 else torch.full((k,), math.inf, dtype=torch.float64),
            "layer": torch.full((k,), int(layer)),
            "channel": c.cpu(),
            "position": s.cpu(),
            "token_id": tok.to(torch.int64),
        }
        self.rec = self._top(self.rec, new)
        return k

    def _top(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The ``top_n`` records of both, in a deterministic total order."""
        r = {f: torch.cat([a[f], b[f]]) for f in _FIELDS}
        mag = r["value"].abs()
        n = self.config.top_n
        if mag.numel() > n:  # cheap cut before the exact sort; keep every tie of the n-th value
            keep = mag >= mag.topk(n).values[-1]
            r, mag = {f: v[keep] for f, v in r.items()}, mag[keep]
        keys = [r[f].numpy() for f in ("value", "token_id", "channel", "position", "layer")]
        order = np.lexsort([*keys, -mag.numpy()])[:n]  # last key is the primary one
        idx = torch.from_numpy(order.copy())
        return {f: v[idx] for f, v in r.items()}

    def merge(self, other: MassiveTracker) -> MassiveTracker:
        """New tracker holding both; configs must match."""
        if self.config != other.config:
            raise ValueError("cannot merge MassiveTrackers with different configs")
        out = MassiveTracker(self.config)
        out.rec = out._top(self.rec, other.rec)
        out.counts = dict(self.counts)
        for key, n in other.counts.items():
            out.counts[key] = out.counts.get(key, 0) + n
        out.total = self.total + other.total
        out.token_text = {**self.token_text, **other.token_text}
        return out

    def label_tokens(self, tokenizer: Any) -> None:
        """Decode the token ids of the kept records (for reports); ``tokenizer.decode([id])``."""
        for t in set(self.rec["token_id"].tolist()) - {-1} - set(self.token_text):
            self.token_text[t] = tokenizer.decode([t])

    def records(self, limit: int | None = None) -> list[dict]:
        """JSON-ready records, largest |value| first: layer, channel, position, token_id, value, ratio
        (None when the median was 0) and ``token`` (text, after ``label_tokens``)."""
        out = []
        n = len(self.rec["value"]) if limit is None else min(limit, len(self.rec["value"]))
        for i in range(n):
            r: dict[str, Any] = {
                f: self.rec[f][i].item() for f in ("layer", "channel", "position", "token_id")
            }
            r["value"] = float(self.rec["value"][i])
            ratio = float(self.rec["ratio"][i])
            r["ratio"] = ratio if math.isfinite(ratio) else None
            if r["token_id"] in self.token_text:
                r["token"] = self.token_text[r["token_id"]]
            out.append(r)
        return out

    def summary(self, limit: int | None = None) -> dict:
        """``{config, total, records, counts}``; counts: ``[{layer, channel, count}]``, most hits first."""
        counts = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return {
            "config": self.config.to_dict(),
            "total": self.total,
            "records": self.records(limit),
            "counts": [{"layer": lc[0], "channel": lc[1], "count": n} for lc, n in counts],
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat dict of CPU tensors; token texts are not part of the state."""
        keys = sorted(self.counts)
        cfg = json.dumps(self.config.to_dict(), sort_keys=True).encode()
        return {
            "config_json": torch.tensor(list(cfg), dtype=torch.uint8),
            "total": torch.tensor(self.total),
            "counts.key": torch.tensor(keys, dtype=torch.int64).view(-1, 2),
            "counts.n": torch.tensor([self.counts[k] for k in keys], dtype=torch.int64),
            **{f"records.{f}": v.clone() for f, v in self.rec.items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> MassiveTracker:
        cfg = MassiveConfig.from_dict(json.loads(bytes(state["config_json"].tolist()).decode()))
        out = cls(cfg)
        out.total = int(state["total"])
        keys = state["counts.key"].tolist()
        out.counts = {
            (int(lc[0]), int(lc[1])): int(n) for lc, n in zip(keys, state["counts.n"].tolist(), strict=True)
        }
        out.rec = {f: state[f"records.{f}"].clone() for f in _FIELDS}
        return out
