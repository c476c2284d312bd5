"""llama.cpp as the reference: decode tok/s (and with ``--ppl`` strict perplexity) per GGUF format.

For each model, each format's GGUF (``actlab.engine.llamacpp.gguf_for``: converted once, cached) is decoded
greedily after the same prompt actlab's benches use, llama-bench's tg128 convention: decode tok/s =
(new tokens - 1) / time of those single-token evals from llama.cpp's own timers, after one warm-up run,
median of ``--reps``. With ``--ppl`` each format's perplexity on ``--ppl-tokens`` eval tokens of the default
corpus (windows of ``--seq-len``, actlab's tokenizer, every position scored as ``actlab.eval.perplexity``).
Needs ``llama-cpp-python`` and, for formats other than ``shipped``, the converter (``--llamacpp-src`` or
``$ACTLAB_LLAMACPP_SRC``). Run it on an idle machine:

    ACTLAB_LLAMACPP_SRC=/tmp/llsrc/llama_cpp_python-0.3.36 python benchmarks/llamacpp_ref.py \\
        --models smollm2-135m random:llama-3.2-1b --threads 2 --ppl --json benchmarks/llamacpp_ref.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from transformers import AutoTokenizer

import actlab
from actlab.data.windows import make_windows
from actlab.engine.llamacpp import llamacpp_available, llamacpp_decode, llamacpp_perplexity_result
from actlab.engine.llamacpp_gguf import FORMATS, SHIPPED, check_format, gguf_for, hf_dir_for
from actlab.envinfo import machine_line

PROMPT = "The capital of France is"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m"])
    ap.add_argument("--formats", default=None, help=f"comma-separated: {','.join(FORMATS)} (+{SHIPPED})")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--ppl", action="store_true", help="also perplexity per format")
    ap.add_argument("--ppl-tokens", type=int, default=16384)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--llamacpp-src", default=None, help="unpacked llama-cpp-python sdist (the converter)")
    ap.add_argument("--json", default=None, help="write the rows to this file")
    args = ap.parse_args()
    reason = llamacpp_available()
    if reason:
        sys.exit(f"error: {reason}")
    rows = []
    t0 = time.time()
    for spec in args.models:
        names = args.formats.split(",") if args.formats else ([SHIPPED] if spec == "smollm2-135m" else []) + list(FORMATS)
        try:
            formats = [check_format(f, spec) for f in names]
        except ValueError as e:
            sys.exit(f"error: {e}")
        tok = AutoTokenizer.from_pretrained(hf_dir_for(spec)[1])  # the tokenizer actlab's model of spec has
        prompt = tok(args.prompt)["input_ids"]
        windows = make_windows(actlab.load_corpus(), tok, args.seq_len, args.ppl_tokens, split="eval") if args.ppl else None
        for fmt in formats:
            path = gguf_for(spec, fmt, llamacpp_src=args.llamacpp_src)
            r = llamacpp_decode(path, prompt, new_tokens=args.new_tokens, threads=args.threads, reps=args.reps,
                                warmup=args.warmup)
            row = {"model": spec, "format": fmt, "gguf": str(path), "gguf_mb": path.stat().st_size / 2**20,
                   **r.to_dict()}
            if windows is not None:
                row["ppl"] = llamacpp_perplexity_result(path, windows, threads=args.threads).to_dict()
            rows.append(row)
            ppl = f", ppl {row['ppl']['ppl']:.3f}" if windows is not None else ""
            print(f"{spec} {fmt}: {r.tokens_per_s:.1f} tok/s{ppl}", file=sys.stderr, flush=True)
            if args.json:  # written as it goes: a long run that stops keeps its rows
                with open(args.json, "w") as f:
                    json.dump(rows, f, indent=2)
    print(f"machine: {machine_line()}")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"llama.cpp decode, {args.new_tokens} new tokens after the prompt {args.prompt!r}, {args.threads} "
          f"threads, median of {args.reps} after {args.warmup} warm-up; tok/s from llama_perf_context, "
          f"{time.time() - t0:.0f} s\n")
    head = "| model | format | GGUF MB | decode tok/s | loop tok/s |" + (" PPL | scored tokens |" if args.ppl else "")
    print(head)
    print("|---|---|" + "---:|" * (head.count("|") - 3))
    for r in rows:
        line = f"| {r['model']} | {r['format']} | {r['gguf_mb']:.0f} | {r['tokens_per_s']:.1f} | {r['tok_s_wall']:.1f} |"
        if args.ppl:
            line += f" {r['ppl']['ppl']:.3f} | {r['ppl']['tokens']} |"
        print(line)


if __name__ == "__main__":
    main()
