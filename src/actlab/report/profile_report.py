"""The ``profile`` job end to end: load, window, profile, write JSON + plots + HTML atomically.

Example:
    >>> result = profile_report("random:tiny-llama", data="notes.txt", tokens=2048, seq_len=64,
    ...                         out="runs/tiny")                       # doctest: +SKIP
    >>> result["report"]                                               # doctest: +SKIP
    'runs/tiny/report.html'
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from actlab.activations.massive import MassiveConfig
from actlab.activations.stats import StatsConfig
from actlab.outputs import claim_output_main, staged_output, write_json_atomic

#: the ε whose density the summary and the per-layer table show
REPORT_EPS = 0.01


def _nearest_key(keys: Iterable[str], value: float) -> str:
    return min(keys, key=lambda k: abs(float(k) - value))


def _mean(values: Iterable[float | None]) -> float | None:
    """Mean of the defined values (a constant site has no kurtosis)."""
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """The short summary printed by ``--json``: per site kind, the mean over layers."""
    by_kind: dict[str, list[dict]] = {}
    for s in doc["sites"].values():
        by_kind.setdefault(s["kind"], []).append(s)
    eps_key = doc["report_eps"]
    return {
        "model": doc["model"]["name"],
        "tokens": doc["tokens"],
        "num_layers": doc["num_layers"],
        "tokens_per_s": round(doc["timing"]["tokens_per_s"], 1),
        "density_nonzero": {k: sum(s["density"]["0"] for s in v) / len(v) for k, v in by_kind.items()},
        f"density_above_{eps_key}": {k: sum(s["density"][eps_key] for s in v) / len(v) for k, v in by_kind.items()},
        "mean_kurtosis": {k: _mean(s["kurtosis"] for s in v) for k, v in by_kind.items()},
        "massive_activations": len(doc["massive_activations"]),
        "dead_neurons": sum(n.get("dead", 0) for n in doc["neurons"].values()),
    }


def profile_report(
    model: str = "smollm2-135m",
    data: str = "default",
    tokens: int = 16384,
    seq_len: int = 256,
    out: str | os.PathLike = "runs/profile",
    sites: Iterable[str] | None = None,
    batch_size: int = 8,
    massive: MassiveConfig | None = None,
    stats: StatsConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
    dist: Any = None,
) -> dict[str, Any]:
    """Profile ``model`` on ``tokens`` tokens of ``data`` and write ``out``/{profile.json, report.html, *.png}.

    Nothing appears in ``out`` unless everything succeeded. A non-empty ``out`` needs ``overwrite=True``, which
    replaces only actlab's own earlier outputs (see :mod:`actlab.outputs`). Returns the ``--json`` summary with
    the paths of the report and the JSON.

    ``dist`` (an :class:`actlab.distributed.Dist`, under torchrun): the profiling pass is split over the
    processes (:func:`actlab.profile.profile_model`); rank 0 alone claims ``out`` and writes it, and every rank
    returns the summary.
    """
    # locked from the first check to the last write (by rank 0 only, the one that writes)
    with claim_output_main(out, overwrite, ("profile.json", "report.html"), dist) as claimed:
        return _profile_report(model, data, tokens, seq_len, Path(out), sites, batch_size, massive, stats,
                               progress, overwrite, dist, write=claimed is not None)


def _profile_report(model: str, data: str, tokens: int, seq_len: int, out: Path, sites: Iterable[str] | None,
                    batch_size: int, massive: MassiveConfig | None, stats: StatsConfig | None, progress: bool,
                    overwrite: bool, dist: Any, write: bool) -> dict[str, Any]:
    import torch

    from actlab import __version__
    from actlab.data.corpus import load_corpus
    from actlab.data.windows import build_windows
    from actlab.models.load import load_model
    from actlab.profile import profile_model
    from actlab.report.html import render_profile
    from actlab.report.plots import draw_all

    corpus = load_corpus(data)
    net, tok = load_model(model)
    windows = build_windows(corpus, tok, seq_len, tokens, split="calib")
    prof = profile_model(net, windows.ids, sites=sites, config=stats, massive=massive,
                         batch_size=batch_size, progress=progress, tokenizer=tok, dist=dist)
    doc = prof.to_dict()
    doc.update(
        actlab_version=__version__,
        model={"name": model, "model_type": net.config.model_type,
               "name_or_path": str(getattr(net.config, "name_or_path", "")),
               "num_parameters": sum(p.numel() for p in net.parameters())},
        data={"name": data, **windows.spec.to_dict()},
        threads=torch.get_num_threads(),
        world_size=dist.world_size if dist is not None else 1,  # processes that shared the pass
    )
    doc["report_eps"] = _nearest_key(next(iter(doc["sites"].values()))["density"], REPORT_EPS)
    if write:
        with staged_output(out, overwrite=overwrite) as tmp:
            write_json_atomic(tmp / "profile.json", doc)
            images = draw_all(doc, tmp)
            (tmp / "report.html").write_text(render_profile(doc, images), encoding="utf-8")
    summary = summarize(doc)
    summary.update(report=str(out / "report.html"), profile=str(out / "profile.json"))
    return summary
