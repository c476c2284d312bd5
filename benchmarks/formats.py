"""Quality of each weight format: perplexity dense and with a plan, for fp32, bf16, int8 and int4.

Each format is measured on the torch path with its weights replaced by what the kernels compute with
(``fake_quantize_``: pack then dequantize, lm_head included, in int8 for int4 as ``quantize_linears_``
keeps it), so a row is the perplexity the sparse kernels in that format give, up to summation order. The plan is calibrated once, on the fp32 model, and
applied unchanged to every format (what a user does: one plan, several weight formats). Strict protocol:
every token sparsified and scored, on the evaluation split, disjoint from the calibration text.

With ``--llamacpp`` (llama-cpp-python installed) llama.cpp's own perplexity of the GGUF files of the
matching formats is measured on the same windows (``actlab.engine.llamacpp``).

The default SmolLM2 ships as Q4_1 (Q8_0 embedding), and int4/int8 pack such weights back exactly, so on
it they measure 0.0%. ``--off-grid`` first moves every decoder weight off that grid (uniform noise of
one Q4_1 step of its block, seeded): a model with continuous weights, like a bf16 checkpoint, on which
each format's own rounding error shows. Its fp32 row is the baseline of its other rows.

``--native N`` adds the perplexity that decoding itself computes: the first N eval tokens fed one at a
time through the native engine (``actlab.engine.native``) on the real kernels of each format, dense and
with the plan. It differs from the torch rows by summation order and, where the int8/int4 kernels take
integer dot products (AVX-512 VNNI, as llama.cpp does), by their rounding of the activations to int8.

Usage:
    python benchmarks/formats.py --threads 2 --json benchmarks/formats.json [--llamacpp]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time

import torch

import actlab
from actlab.data.windows import make_windows
from actlab.engine.plan_bench import LLAMACPP_FORMAT
from actlab.envinfo import machine_line
from actlab.eval.perplexity import perplexity
from actlab.sparsity.config import config_from_dict


@torch.no_grad()
def off_grid_(model: torch.nn.Module, seed: int = 0) -> None:
    """Adds uniform noise of one step ((max - min) / 15 over each block of 32 inputs) to every decoder
    linear's weight: weights that no longer sit on a Q4_1 grid."""
    from actlab.kernels.quantize import decoder_linear_groups

    gen = torch.Generator().manual_seed(seed)
    for paths in decoder_linear_groups(model):
        for path in paths:
            w = model.get_submodule(path).weight
            out, n_in = w.shape
            if n_in % 32:
                continue
            wb = w.detach().float().view(out, n_in // 32, 32)
            step = (wb.amax(-1, keepdim=True) - wb.amin(-1, keepdim=True)) / 15
            w.copy_((wb + (torch.rand(wb.shape, generator=gen) - 0.5) * step).view(out, n_in).to(w.dtype))


def native_ppl(model: torch.nn.Module, windows: torch.Tensor) -> float:
    """Perplexity of ``windows`` decoded token by token through the native engine (every position scored
    from the logits of the step that read the token before it)."""
    from actlab.engine.native import NativeDecoder

    dec = NativeDecoder(model, max_len=windows.shape[1])
    nll, n = 0.0, 0
    for w in windows:
        dec.reset()
        for p in range(w.numel() - 1):
            dec.run(w[p : p + 1], p, logits=True)
            nll -= float(torch.log_softmax(dec.logits, -1)[w[p + 1]])
            n += 1
    return math.exp(nll / n)


def _native_rows(model, plan, windows, fmt: str) -> dict:
    from actlab.engine.plan_bench import dense_in, sparse_in

    with dense_in(model, fmt)():
        dense = native_ppl(model, windows)
    with sparse_in(model, plan, fmt)():
        sparse = native_ppl(model, windows)
    return {"ppl_native_dense": dense, "ppl_native_plan": sparse}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--formats", default="fp32,bf16,int8,int4")
    ap.add_argument("--method", default="teal")
    ap.add_argument("--allocation", default="uniform")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--calib-tokens", type=int, default=16384)
    ap.add_argument("--eval-tokens", type=int, default=32768)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llamacpp", action="store_true", help="also llama.cpp's perplexity of the matching GGUF files")
    ap.add_argument("--off-grid", action="store_true", help="move the decoder weights off their Q4_1 grid first")
    ap.add_argument("--native", type=int, default=0, metavar="N",
                    help="also the perplexity of N eval tokens decoded one at a time on the native engine's kernels")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    from actlab.kernels.quantize import fake_quantize_

    torch.set_num_threads(args.threads)
    t0 = time.time()
    model, tok = actlab.load_model(args.model)
    if args.off_grid:
        if args.llamacpp:
            ap.error("--off-grid changes the weights; llama.cpp's GGUF files hold the originals (drop --llamacpp)")
        off_grid_(model)
    corpus = actlab.load_corpus("default")
    calib = make_windows(corpus, tok, args.seq_len, args.calib_tokens, split="calib")
    windows = make_windows(corpus, tok, args.seq_len, args.eval_tokens, split="eval")
    extra = {"allocation": args.allocation} if args.method in ("teal", "wina") else {}
    plan = actlab.calibrate(model, config_from_dict({"method": args.method, "sparsity": args.sparsity, **extra}), calib)
    original = copy.deepcopy(model.state_dict())
    rows = []
    for fmt in args.formats.split(","):
        # the plan is applied to the fp32 weights it was calibrated on (its fingerprint), then rounded
        model.load_state_dict(original)
        if fmt != "fp32":
            fake_quantize_(model, fmt, lm_head=True)
        dense = perplexity(model, windows).ppl
        model.load_state_dict(original)
        actlab.apply_(model, plan)
        if fmt != "fp32":
            fake_quantize_(model, fmt, lm_head=True)
        sparse = perplexity(model, windows).ppl
        actlab.remove_(model)
        rows.append({"format": fmt, "ppl_dense": dense, "ppl_plan": sparse})
        print(f"{fmt}: dense {dense:.3f} plan {sparse:.3f}", file=sys.stderr, flush=True)
    if args.native:
        model.load_state_dict(original)
        nat = windows[: max(1, args.native // args.seq_len)]
        nat_fp32 = perplexity(model, nat).ppl
        print(f"native windows: torch fp32 dense {nat_fp32:.3f}", file=sys.stderr, flush=True)
        for row in rows:
            row.update(_native_rows(model, plan, nat, row["format"]))
            print(f"native {row['format']}: dense {row['ppl_native_dense']:.3f} plan {row['ppl_native_plan']:.3f}",
                  file=sys.stderr, flush=True)
    if args.llamacpp:
        from actlab.engine.llamacpp import gguf_for, llamacpp_perplexity

        for row in rows:
            gguf_fmt = LLAMACPP_FORMAT[row["format"]]
            row["llamacpp_format"] = gguf_fmt
            row["ppl_llamacpp"] = llamacpp_perplexity(gguf_for(args.model, gguf_fmt), windows)
            print(f"llama.cpp {gguf_fmt}: {row['ppl_llamacpp']:.3f}", file=sys.stderr, flush=True)
    base = rows[0]["ppl_dense"] if rows and rows[0]["format"] == "fp32" else None
    print(f"machine: {machine_line()}")
    print(f"command: python {' '.join(sys.argv)}")
    grid = ", decoder weights moved off their Q4_1 grid (--off-grid)" if args.off_grid else ""
    print(f"{args.model}{grid}, plan {args.method} {args.allocation} {args.sparsity:.0%} calibrated on fp32 "
          f"({args.calib_tokens} calib tokens), strict perplexity on {windows.numel()} eval tokens "
          f"(seq {args.seq_len}), {time.time() - t0:.0f} s\n")
    head = "| weights | PPL dense | vs fp32 | PPL with plan | plan vs its dense |"
    if args.llamacpp:
        head += " llama.cpp format | llama.cpp PPL |"
    if args.native:
        head += " native dense | native with plan |"
    print(head)
    print("|---|" + "---:|" * (head.count("|") - 2))
    for row in rows:
        vs = f"{row['ppl_dense'] / base - 1:+.2%}" if base else "-"
        line = (f"| {row['format']} | {row['ppl_dense']:.3f} | {vs} | {row['ppl_plan']:.3f} | "
                f"{row['ppl_plan'] / row['ppl_dense'] - 1:+.2%} |")
        if args.llamacpp:
            line += f" {row['llamacpp_format']} | {row['ppl_llamacpp']:.3f} |"
        if args.native:
            line += f" {row['ppl_native_dense']:.3f} | {row['ppl_native_plan']:.3f} |"
        print(line)
    if args.native:
        print(f"\nnative columns: the first {nat.numel()} eval tokens ({nat.shape[0]} windows) decoded one at a "
              f"time; the torch fp32 model scores {nat_fp32:.3f} on them")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": machine_line(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
