"""Cost of profiling: tokens/s of ``profile_model`` vs a plain forward over the same windows.

Both run in one process, interleaved (forward, profile, forward, profile, ...), and the median
of each is reported, so machine noise hits both alike. Target: profiling ≤ 1.5× a forward.

    python benchmarks/profile_overhead.py --model smollm2-135m --tokens 4096 --reps 3 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# as `actlab profile` does: must be set before torch (and its OpenMP runtime) loads; applies to both runs
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import actlab  # noqa: E402
from actlab.data.corpus import load_corpus  # noqa: E402
from actlab.data.windows import make_windows  # noqa: E402
from actlab.envinfo import machine_line  # noqa: E402
from actlab.profile import profile_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="default")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
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

    def backbone() -> float:
        body = getattr(model, "base_model", model)
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, windows.shape[0], args.batch_size):
                body(input_ids=windows[i : i + args.batch_size], use_cache=False)
        return time.perf_counter() - start

    def profiled() -> float:
        start = time.perf_counter()
        profile_model(model, windows, batch_size=args.batch_size, progress=False)
        return time.perf_counter() - start

    plain()  # warm-up: allocator, kernels, first-touch of weights
    runs = {"forward": plain, "backbone": backbone, "profile": profiled}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.reps):
        for k, run in runs.items():
            times[k].append(run())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {machine_line()}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    print(f"command: python benchmarks/profile_overhead.py --model {args.model} --tokens {args.tokens} "
          f"--seq-len {args.seq_len} --reps {args.reps} --threads {args.threads}")
    print()
    print("| run | tokens | median s | tokens/s |")
    print("|---|---:|---:|---:|")
    labels = {"forward": "forward (with logits)", "backbone": "backbone forward (no LM head)",
              "profile": "profile (every site; runs the backbone)"}
    for k in runs:
        print(f"| {labels[k]} | {n_tok} | {med[k]:.2f} | {n_tok / med[k]:.0f} |")
    print(f"\nprofiling cost: {med['profile'] / med['forward']:.2f}x a plain forward (target <= 1.5x); "
          f"the statistics alone: {med['profile'] / med['backbone']:.2f}x the backbone forward")


if __name__ == "__main__":
    main()
