"""Profile and calibration across processes (torch.distributed, gloo on CPU): wall time and equality.

Three ways to run the same job on the same windows, alternated over ``--reps`` rounds (so machine noise hits
them alike), each a fresh launch that loads the model, warms up, then times the verb alone:

* 1 process x 1 thread (the reference the others must equal),
* 1 process x 2 threads (the fair comparison on a 2-core machine: the same cores, one process),
* 2 processes x 1 thread (``torch.distributed.run --nproc_per_node 2``; each rank runs its share of the
  batches, the statistics / row samples are merged with collectives).

Equality: the two-process profile's counts and histograms must equal one process's exactly (moments to float
rounding) and its calibration thresholds exactly. Reported: median wall seconds of each verb, and the ratio
of 2 processes to each one-process run.

    python benchmarks/distributed.py --model smollm2-135m --tokens 2048 --seq-len 128 --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `actlab profile`: before torch loads


def _worker(args: argparse.Namespace) -> None:
    """One launch (one rank of it under torchrun): time profile_model and calibrate, save rank 0's results."""
    import torch

    import actlab
    from actlab import distributed
    from actlab.data.corpus import load_corpus
    from actlab.data.windows import make_windows
    from actlab.profile import profile_model

    torch.set_num_threads(args.threads)
    d = distributed.setup()
    try:
        model, tok = actlab.load_model(args.model)
        windows = make_windows(load_corpus(args.data), tok, args.seq_len, args.tokens, split="calib")
        with torch.inference_mode():  # warm-up: allocator, first touch of the weights
            model(input_ids=windows[: args.batch_size], use_cache=False)
        times: dict[str, float] = {}

        distributed.barrier(d)
        start = time.perf_counter()
        prof = profile_model(model, windows, batch_size=args.batch_size, progress=False, dist=d)
        times["profile"] = time.perf_counter() - start

        marks: dict[str, float] = {}

        def mark(stage: str, done: int, total: int) -> None:
            if stage == "calibration pass" and done == total:
                marks["pass"] = time.perf_counter()  # this rank's share of the forward passes is done

        distributed.barrier(d)
        start = time.perf_counter()
        plan = actlab.calibrate(model, actlab.TealConfig(args.sparsity), windows, progress=mark, dist=d)
        times["calibrate"] = time.perf_counter() - start
        times["calibrate_pass"] = marks.get("pass", start) - start
        if d.world_size > 1:  # the slowest rank sets the wall time
            per_rank = distributed.all_gather_objects(times, d)
            times = {k: max(t[k] for t in per_rank) for k in times}
        if d.is_main:
            doc = prof.to_dict()
            doc.pop("timing")
            torch.save({"times": times, "profile": doc, "thresholds": [e.threshold for e in plan.entries],
                        "sparsity": plan.metrics["sparsity_model_wide"]}, args.save)
    finally:
        distributed.teardown(d)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: argparse.Namespace, procs: int, threads: int, save: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("WORLD_SIZE", None)
    worker = [__file__, "--worker", "--save", str(save), "--threads", str(threads), "--model", args.model,
              "--data", args.data, "--tokens", str(args.tokens), "--seq-len", str(args.seq_len),
              "--batch-size", str(args.batch_size), "--sparsity", str(args.sparsity)]
    if procs == 1:
        cmd = [sys.executable, *worker]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(procs),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *worker]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[:6])}... failed:\n{done.stderr[-3000:]}")


def _compare(ref: dict, got: dict) -> dict[str, object]:
    """What the two-process run shares with the reference: exact counts / thresholds, float-close moments."""
    import torch

    exact_keys = ("tokens", "elements", "count", "nan", "inf", "density", "histogram", "topk_tokens", "channels")
    counts = all(got["profile"]["sites"][n][k] == s[k] for n, s in ref["profile"]["sites"].items()
                 for k in exact_keys)
    counts = counts and got["profile"]["massive_activations"] == ref["profile"]["massive_activations"] \
        and got["profile"]["neurons"] == ref["profile"]["neurons"]
    worst = 0.0
    for n, s in ref["profile"]["sites"].items():
        for k in ("mean", "std", "skew", "kurtosis"):
            a, b = s[k], got["profile"]["sites"][n][k]
            if a is not None and b is not None:
                worst = max(worst, abs(a - b) / max(abs(a), 1e-12))
    thr = all(torch.equal(a, b) for a, b in zip(ref["thresholds"], got["thresholds"], strict=True))
    return {"counts_exact": counts, "moments_max_rel_diff": worst, "thresholds_equal": thr}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="default")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--save", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args)
        return

    import torch

    import actlab
    from actlab.envinfo import machine_line

    actlab.load_model(args.model)  # converts / caches the model once, before processes race for it
    runs = {"1 process x 1 thread": (1, 1), "1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1)}
    times: dict[str, dict[str, list[float]]] = {k: {} for k in runs}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name, (procs, threads) in runs.items():
                save = Path(tmp) / f"{procs}x{threads}-{rep}.pt"
                _launch(args, procs, threads, save)
                res = torch.load(save, weights_only=False)
                results.setdefault(name, res)
                for k, v in res["times"].items():
                    times[name].setdefault(k, []).append(v)
    med = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    ref, two = results["1 process x 1 thread"], results["2 processes x 1 thread"]
    eq = _compare(ref, two)
    eq_threads = _compare(ref, results["1 process x 2 threads"])

    print(f"machine: {machine_line()}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    print(f"command: python benchmarks/distributed.py --model {args.model} --tokens {args.tokens} "
          f"--seq-len {args.seq_len} --batch-size {args.batch_size} --reps {args.reps}")
    n_win = args.tokens // args.seq_len
    print(f"windows: {n_win} x {args.seq_len} tokens; profile batches of {args.batch_size}, calibration "
          f"batches of 4 (TealConfig({args.sparsity}), uniform); median of {args.reps} launches each")
    print()
    print("| run | profile s | calibrate s | of which calibration pass s | profile / 1x1 | calibrate / 1x1 |")
    print("|---|---:|---:|---:|---:|---:|")
    base = med["1 process x 1 thread"]
    for name, m in med.items():
        print(f"| {name} | {m['profile']:.2f} | {m['calibrate']:.2f} | {m['calibrate_pass']:.2f} | "
              f"{m['profile'] / base['profile']:.2f} | {m['calibrate'] / base['calibrate']:.2f} |")
    fair = med["1 process x 2 threads"]
    print()
    print(f"2 processes / (1 process x 2 threads): profile {med['2 processes x 1 thread']['profile'] / fair['profile']:.2f}, "
          f"calibrate {med['2 processes x 1 thread']['calibrate'] / fair['calibrate']:.2f}")
    print("equality, 2 processes vs 1 process x 1 thread: " + json.dumps(eq))
    print("(for contrast) 1 process x 2 threads vs x 1 thread: " + json.dumps(eq_threads))
    if not (eq["counts_exact"] and eq["thresholds_equal"] and eq["moments_max_rel_diff"] < 1e-4):
        sys.exit("error: the two-process results differ from one process's")


if __name__ == "__main__":
    main()
