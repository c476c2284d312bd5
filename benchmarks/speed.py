"""End-to-end decode speed of calibrated plans: actlab dense vs sparse, per weight format, vs llama.cpp.

For each model, sparsity and weight format: calibrate a plan (method and allocation as given; once per
model and sparsity, on the fp32 model), then run the variants interleaved on one model object
(``actlab.engine.plan_bench.bench_plan``): actlab dense and sparse in that format on the chosen engine,
HF ``generate`` dense fp32, and with ``--llamacpp`` llama.cpp on the GGUF of the matching format
(fp32 F32, bf16 F16, int8 Q8_0, int4 Q4_1 or ``--int4-gguf q4_0``). Prints a markdown table with the
memory-traffic ceiling and the fraction of it reached. ``--busy N`` keeps N busy-loop processes running
for the whole measurement (a machine that is not idle). The kernel-level table is
``benchmarks/kernel_speed.py``.

    python benchmarks/speed.py --models smollm2-135m random:llama-3.2-1b --sparsity 0.5 \\
        --weights fp32,int8,int4 --engine auto --llamacpp --threads 2 --json benchmarks/speed.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator

import torch

import actlab
from actlab.data.windows import make_windows
from actlab.engine.plan_bench import LLAMACPP_FORMAT, bench_plan
from actlab.envinfo import machine_line
from actlab.kernels import ops
from actlab.sparsity.config import config_from_dict


@contextlib.contextmanager
def busy(n: int) -> Iterator[None]:
    """``n`` processes spinning on a core each, for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "random:llama-3.2-1b"])
    ap.add_argument("--sparsity", nargs="+", type=float, default=[0.5])
    ap.add_argument("--weights", default="fp32", help="comma-separated formats: fp32,bf16,int8,int4")
    ap.add_argument("--engine", default="auto", help="torch, native or auto")
    ap.add_argument("--llamacpp", action="store_true", help="also llama.cpp on the matching GGUF")
    ap.add_argument("--int4-gguf", default="q4_1", help="llama.cpp format int4 is compared with: q4_1 or q4_0")
    ap.add_argument("--method", default="teal")
    ap.add_argument("--allocation", default="uniform", help="teal/wina: uniform, greedy or global")
    ap.add_argument("--calib-tokens", type=int, default=4096)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--busy", type=int, default=0, help="busy-loop processes running meanwhile")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--json", metavar="PATH", help="also write every result as JSON")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)  # a script: the machine line below reports what ran
    formats = args.weights.split(",")
    gguf_format = {**LLAMACPP_FORMAT, "int4": args.int4_gguf}
    corpus = actlab.load_corpus("default")
    rows = []
    for spec in args.models:
        model, tok = actlab.load_model(spec)
        calib = make_windows(corpus, tok, 256, args.calib_tokens, split="calib")
        prompt = make_windows(corpus, tok, args.prompt_tokens, args.prompt_tokens, split="eval")[:1]
        for s in args.sparsity:
            extra = {"allocation": args.allocation} if args.method in ("teal", "wina") else {}
            plan = actlab.calibrate(model, config_from_dict({"method": args.method, "sparsity": s, **extra}), calib)
            for fmt in formats:
                gguf = None
                if args.llamacpp:
                    from actlab.engine.llamacpp import gguf_for

                    gguf = str(gguf_for(spec, gguf_format[fmt]))
                with busy(args.busy):
                    r = bench_plan(model, plan, prompt, new_tokens=args.new_tokens, reps=args.reps,
                                   num_threads=args.threads, hf=not args.no_hf, weights=fmt, engine=args.engine,
                                   llamacpp=gguf)
                r.update(model=spec, target=s, gguf_format=gguf_format[fmt] if gguf else None)
                rows.append(r)
                vs = f", {r['vs_llamacpp']:.2f}x llama.cpp" if gguf else ""
                print(f"{spec} @ {s:.0%} {fmt} ({r['engine']}): {r['speedup']:.2f}x dense (ceiling {r['ceiling']:.2f}x)"
                      f"{vs}", file=sys.stderr, flush=True)
                if args.json:  # written as it goes: a long run that stops keeps its rows
                    with open(args.json, "w") as f:
                        json.dump(rows, f, indent=2)
        del model
    print(f"machine: {machine_line()}; kernels: {ops.isa()}")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"method {args.method} ({args.allocation}), {args.new_tokens} new tokens after a {args.prompt_tokens}-token "
          f"prompt, batch 1, {args.threads} threads, {args.busy} busy-loop processes beside it, median of "
          f"{args.reps} interleaved rounds\n")
    head = ("| model | weights | engine | sparsity | dense tok/s | sparse tok/s | HF fp32 tok/s | speedup | ceiling "
            "| of ceiling |")
    if args.llamacpp:
        head += " llama.cpp | llama.cpp tok/s | sparse vs llama.cpp | dense vs llama.cpp |"
    print(head)
    print("|---|---|---|" + "---:|" * (head.count("|") - 4))
    for r in rows:
        hf = f"{r['tok_s_hf_dense']:.1f}" if r["tok_s_hf_dense"] else "-"
        line = (f"| {r['model']} | {r['weights']} | {r['engine']} | {r['sparsity_model_wide']:.1%} | "
                f"{r['tok_s_dense']:.1f} | {r['tok_s_sparse']:.1f} | {hf} | {r['speedup']:.2f}x | "
                f"{r['ceiling']:.2f}x | {r['ceiling_frac']:.0%} |")
        if args.llamacpp:
            line += (f" {r['gguf_format'].upper()} | {r['tok_s_llamacpp']:.1f} | {r['vs_llamacpp']:.2f}x | "
                     f"{r['dense_vs_llamacpp']:.2f}x |")
        print(line)


if __name__ == "__main__":
    main()
