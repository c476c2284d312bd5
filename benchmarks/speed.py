"""End-to-end decode speed of calibrated plans: actlab engine dense vs sparse kernels vs HF generate.

For each model and sparsity: calibrate a plan (method and allocation as given), then run the three
variants interleaved on one model object (``actlab.engine.plan_bench.bench_plan``) and print a
markdown table with the memory-traffic ceiling and the fraction of it reached. The kernel-level
table is ``benchmarks/kernel_speed.py``.

    python benchmarks/speed.py --models smollm2-135m random:llama-3.2-1b --sparsity 0.5 0.7 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import actlab
from actlab.data.windows import make_windows
from actlab.engine.plan_bench import bench_plan
from actlab.envinfo import machine_line
from actlab.kernels import ops
from actlab.sparsity.config import config_from_dict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "random:llama-3.2-1b"])
    ap.add_argument("--sparsity", nargs="+", type=float, default=[0.5, 0.7])
    ap.add_argument("--method", default="teal")
    ap.add_argument("--allocation", default="uniform", help="teal/wina: uniform, greedy or global")
    ap.add_argument("--calib-tokens", type=int, default=4096)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--json", metavar="PATH", help="also write every result as JSON")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)  # a script: the machine line below reports what ran
    corpus = actlab.load_corpus("default")
    rows = []
    for spec in args.models:
        model, tok = actlab.load_model(spec)
        calib = make_windows(corpus, tok, 256, args.calib_tokens, split="calib")
        prompt = make_windows(corpus, tok, args.prompt_tokens, args.prompt_tokens, split="eval")[:1]
        for s in args.sparsity:
            extra = {"allocation": args.allocation} if args.method in ("teal", "wina") else {}
            plan = actlab.calibrate(model, config_from_dict({"method": args.method, "sparsity": s, **extra}), calib)
            r = bench_plan(model, plan, prompt, new_tokens=args.new_tokens, reps=args.reps,
                           num_threads=args.threads, hf=not args.no_hf)
            r.update(model=spec, target=s)
            rows.append(r)
            print(f"{spec} @ {s:.0%}: {r['speedup']:.2f}x (ceiling {r['ceiling']:.2f}x)", file=sys.stderr, flush=True)
        del model
    print(f"machine: {machine_line()}; kernels: {ops.isa()}")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"method {args.method} ({args.allocation}), {args.new_tokens} new tokens after a {args.prompt_tokens}-token "
          f"prompt, batch 1, fp32, {args.threads} threads, median of {args.reps} interleaved rounds\n")
    print("| model | target | model-wide sparsity | dense tok/s | sparse tok/s | HF dense tok/s | speedup | vs HF "
          "| ceiling | of ceiling | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        hf = f"{r['tok_s_hf_dense']:.1f}" if r["tok_s_hf_dense"] else "-"
        vs_hf = f"{r['speedup_vs_hf']:.2f}x" if r["speedup_vs_hf"] else "-"
        print(f"| {r['model']} | {r['target']:.0%} | {r['sparsity_model_wide']:.1%} | {r['tok_s_dense']:.1f} | "
              f"{r['tok_s_sparse']:.1f} | {hf} | {r['speedup']:.2f}x | {vs_hf} | {r['ceiling']:.2f}x | "
              f"{r['ceiling_frac']:.0%} | {r['peak_rss_mb']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
