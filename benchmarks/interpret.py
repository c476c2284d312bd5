"""Cost of neuron records, and whether LM-head decoding agrees with the contexts that fire a neuron.

1. Records of every MLP neuron (``mlp.act_out`` of every layer: 30 × 1536 = 46,080 on SmolLM2) over
   ``--tokens`` tokens of the corpus, against a plain forward (with logits) over the same windows, and the
   backbone alone (what the records run: the LM head is skipped). All in one process, interleaved
   (forward, backbone, records, forward, ...), median of ``--reps``. Target ≤ 2× the plain forward.
   Peak memory: the largest RSS increase during a records run (sampled every 5 ms from /proc) and the
   bytes the records themselves hold (bounded: independent of the token count).
2. LM-head agreement: a neuron *agrees* when one of its top-``--lm-k`` LM-head tokens (``decode_neurons``)
   is the next token (position + 1) of one of its top-``--k`` contexts. Baselines: (a) a random gaussian
   direction of the same norm per neuron, decoded the same way; (b) the LM-head tokens of another neuron of
   the same layer (a random permutation), which keeps whatever tokens decoding favours for every neuron.

    python benchmarks/interpret.py --model smollm2-135m --tokens 16384 --threads 1 --json interpret.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="default")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--sites", default="mlp.act_out")
    ap.add_argument("--k", type=int, default=20, help="top contexts per neuron")
    ap.add_argument("--lm-k", type=int, default=10, help="top LM-head tokens per neuron")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    return ap.parse_args()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRSS:
    """Largest RSS seen while the block runs, sampled from a thread (ru_maxrss cannot be reset)."""

    def __enter__(self) -> _PeakRSS:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())


def main() -> None:
    args = _args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # before torch loads its OpenMP runtime
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    import actlab
    from actlab.data.corpus import load_corpus
    from actlab.data.windows import make_windows
    from actlab.envinfo import machine_line
    from actlab.interp.lm_head import decode_directions, decode_neurons
    from actlab.interp.records import record_neurons
    from actlab.models.adapters import get_adapter, linear_weight

    torch.set_num_threads(args.threads)
    model, tok = actlab.load_model(args.model)
    windows = make_windows(load_corpus(args.data), tok, args.seq_len, args.tokens, split="calib")
    n_tok = windows.numel()

    def plain() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, windows.shape[0], args.batch_size):
                model(input_ids=windows[i : i + args.batch_size], use_cache=False)
        return time.perf_counter() - start

    def backbone() -> float:  # what record_neurons runs: every site is inside it, the LM head is skipped
        body = getattr(model, "base_model", model)
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, windows.shape[0], args.batch_size):
                body(input_ids=windows[i : i + args.batch_size], use_cache=False)
        return time.perf_counter() - start

    recs: dict = {}
    mem: dict = {}

    def records() -> float:
        recs.clear()
        with _PeakRSS() as peak:
            start = time.perf_counter()
            recs.update(record_neurons(model, windows, args.sites, k=args.k, batch_size=args.batch_size,
                                       progress=False))
            seconds = time.perf_counter() - start
        mem["rss_increase"] = max(mem.get("rss_increase", 0), peak.peak - peak.base)
        return seconds

    with torch.inference_mode():  # warm-up: allocator, kernels, first touch of the weights
        model(input_ids=windows[: args.batch_size], use_cache=False)
    runs = {"forward": plain, "backbone": backbone, "records": records}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.reps):
        for k, run in runs.items():
            times[k].append(run())
    med = {k: statistics.median(v) for k, v in times.items()}
    state_bytes = sum(t.numel() * t.element_size() for r in recs.values() for t in r.state_dict().values())
    n_neurons = sum(r.n for r in recs.values())

    # LM-head agreement, per layer
    g = torch.Generator().manual_seed(args.seed)
    seq = windows.shape[1]
    per_layer = []
    totals = {"lm_head": 0, "gaussian": 0, "permuted": 0, "neurons": 0}
    for name, r in recs.items():
        if r.layer is None or not name.endswith(("mlp.act_out", "mlp.down_in")):
            continue  # LM-head decoding reads MLP neurons' down-projection columns
        w, p = r.top_t >> 24, r.top_t & ((1 << 24) - 1)  # [n, k]
        valid = (p + 1 < seq) & (r.top_t != torch.iinfo(torch.int64).max)
        nxt = torch.where(valid, windows[w.clamp(0, windows.shape[0] - 1), (p + 1).clamp(max=seq - 1)], -1)

        def agree(ids: torch.Tensor, nxt=nxt) -> torch.Tensor:
            return (ids[:, :, None] == nxt[:, None, :]).any(2).any(1)  # [n]

        nt = decode_neurons(model, r.layer, k=args.lm_k)
        ad = get_adapter(model)
        w_down = linear_weight(model.get_submodule(f"{ad.layers}.{r.layer}.{ad.down}")).detach()  # [d_model, d_ff]
        rand = torch.randn(w_down.shape[1], w_down.shape[0], generator=g)
        rand = rand / rand.norm(dim=1, keepdim=True) * w_down.norm(dim=0)[:, None]
        rand_ids = decode_directions(model, rand, args.lm_k)[0]
        perm = torch.randperm(r.n, generator=g)
        row = {"layer": r.layer, "neurons": r.n, "lm_head": int(agree(nt.top_ids).sum()),
               "gaussian": int(agree(rand_ids).sum()), "permuted": int(agree(nt.top_ids[perm]).sum())}
        per_layer.append(row)
        for key in ("lm_head", "gaussian", "permuted"):
            totals[key] += row[key]
        totals["neurons"] += r.n

    cmd = "python benchmarks/interpret.py " + " ".join(sys.argv[1:])
    share = {k: totals[k] / max(totals["neurons"], 1) for k in ("lm_head", "gaussian", "permuted")}
    print(f"machine: {machine_line()}")
    print(f"command: {cmd}")
    print()
    print(f"Records of {n_neurons:,} neurons ({len(recs)} sites `{args.sites}`), k={args.k}, "
          f"{n_tok:,} tokens ({windows.shape[0]} windows × {seq}), {args.threads} thread(s), "
          f"median of {args.reps}:")
    print()
    print("| run | tokens | median s | tokens/s | ratio |")
    print("|---|---:|---:|---:|---:|")
    labels = {"forward": "plain forward (with logits)", "backbone": "backbone forward (no LM head)",
              "records": "record_neurons (runs the backbone)"}
    for k in runs:
        print(f"| {labels[k]} | {n_tok} | {med[k]:.2f} | {n_tok / med[k]:.0f} | {med[k] / med['forward']:.2f}× |")
    print()
    print(f"records cost: {med['records'] / med['forward']:.2f}× a plain forward (target ≤ 2×), "
          f"{med['records'] / med['backbone']:.2f}× the backbone forward it runs; peak RSS increase "
          f"{mem['rss_increase'] / 2**20:.0f} MiB; records state {state_bytes / 2**20:.0f} MiB")
    print()
    print(f"LM-head agreement (top-{args.lm_k} LM-head tokens ∩ next tokens of the top-{args.k} contexts):")
    print()
    print("| layers | neurons | LM head | random gaussian direction | permuted neuron | ratio to gaussian | "
          "ratio to permuted |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    thirds = [per_layer[i * len(per_layer) // 3 : (i + 1) * len(per_layer) // 3] for i in range(3)]
    for group in [*thirds, per_layer]:
        if not group:
            continue
        n = sum(x["neurons"] for x in group)
        s = {k: sum(x[k] for x in group) / n for k in ("lm_head", "gaussian", "permuted")}
        label = f"{group[0]['layer']}–{group[-1]['layer']}" if group is not per_layer else "all"
        print(f"| {label} | {n} | {s['lm_head']:.1%} | {s['gaussian']:.1%} | {s['permuted']:.1%} | "
              f"{s['lm_head'] / max(s['gaussian'], 1e-9):.2f} | {s['lm_head'] / max(s['permuted'], 1e-9):.2f} |")
    result = {
        "command": cmd, "machine": machine_line(), "model": args.model, "tokens": n_tok, "threads": args.threads,
        "neurons": n_neurons, "k": args.k, "lm_k": args.lm_k, "times": times, "median_s": med,
        "ratio": med["records"] / med["forward"], "ratio_backbone": med["records"] / med["backbone"],
        "peak_rss_increase_bytes": mem["rss_increase"],
        "records_state_bytes": state_bytes, "agreement": {"share": share, "per_layer": per_layer},
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
