"""One process of the two-process profile / calibration / evaluation test (started by torch.distributed.run).

``run(d)`` is also called in the test's own process with ``d=None``: the single-process reference.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

import actlab
from actlab import distributed
from actlab.eval.perplexity import perplexity
from actlab.interp.records import record_neurons
from actlab.models.scoring import per_window_nll
from actlab.plan_eval import evaluate_plan
from actlab.profile import profile_model
from actlab.sparsity.collect import collect
from actlab.sparsity.search import search_quality

# 7 windows: odd batch counts, so the ranks' shares differ in size (and in where they start)
N, SEQ = 7, 16


def windows() -> torch.Tensor:
    return torch.randint(3, 200, (N, SEQ), generator=torch.Generator().manual_seed(0))


def configs() -> dict[str, Any]:
    """One config per path through ``collect``: rows, up sums (chess), block inputs (greedy), second
    moments and the Fisher pass (global + rotate)."""
    return {
        "teal": actlab.TealConfig(0.4),
        "greedy": actlab.TealConfig(0.4, allocation="greedy", greedy_tokens=2 * SEQ, greedy_step=0.1),
        "wina_global_rot": actlab.WinaConfig(0.3, allocation="global", rotate=("attn.o_in",), fisher_tokens=2 * SEQ),
        "chess": actlab.ChessConfig(0.3),
    }


def run(d: distributed.Dist | None) -> dict[str, Any]:
    torch.set_num_threads(1)  # the same thread count in every process: identical float rounding
    model, _ = actlab.load_model("random:tiny-llama")
    ids = windows()
    out: dict[str, Any] = {}
    prof = profile_model(model, ids, batch_size=2, progress=False, dist=d)
    doc = prof.to_dict()
    doc.pop("timing")
    out["profile"] = doc
    out["plans"] = {}
    for name, cfg in configs().items():
        plan = actlab.calibrate(model, cfg, ids, dist=d)
        out["plans"][name] = {"thresholds": [e.threshold for e in plan.entries],
                              "rotations": [e.rotation for e in plan.entries], "metrics": plan.metrics,
                              "extra": plan.extra}
    # the sample itself, in order: rows with their positions, sums, the block inputs of the first batch
    s = collect(model, ids, ["layers.0.mlp.down_in", "layers.1.attn.o_in"], max_values=2048, up_moments=True,
                moment_sites=["layers.1.attn.o_in"], block_tokens=3 * SEQ, batch_size=2, dist=d)
    out["sample"] = {"rows": s.rows, "positions": s.positions, "up": s.up_sq_sum, "moments": s.second_moments,
                     "tokens": s.tokens, "blocks": {i: b.calls[0][0][0] for i, b in s.blocks.items()}}
    out["nll"] = per_window_nll(model, ids, batch_size=3, dist=d)
    method = actlab.prepare(model, configs()["teal"], ids, dist=d)
    res = search_quality(model, method, ids[:5], 5.0, iters=3, batch_size=2, dist=d)
    out["search"] = {"knob": res.knob, "trace": res.trace}
    out["ppl"] = perplexity(model, ids, batch_size=2, dist=d).to_dict()
    out["ppl_one_batch"] = perplexity(model, ids[:3], batch_size=4, dist=d).to_dict()  # rank 0 has no batch
    out["eval"] = evaluate_plan(model, method.plan(), ids, batch_size=3, dist=d).to_dict()
    recs = record_neurons(model, ids, "layers.0.mlp.act_out", k=3, batch_size=2, progress=False, dist=d)
    out["records"] = {k: r.state_dict() for k, r in recs.items()}
    return out


def main(path: str) -> None:
    d = distributed.setup()
    try:
        result = run(d)
        torch.save(result, f"{path}.rank{d.rank}")  # every rank: each must hold the whole result
    finally:
        distributed.teardown(d)


if __name__ == "__main__":
    main(sys.argv[1])
