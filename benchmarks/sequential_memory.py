"""Peak memory of layer-by-layer calibration against a full load, same plan within tolerance.

Saves ``random:<preset>`` (Llama-3.2-1B shapes, random weights) to a temporary directory, then in separate
processes (so neither run's allocations inflate the other's peak) calibrates the same plan twice on the same
windows of the default corpus:

* ``full``: ``load_model(dir)`` (every weight in memory) + ``calibrate(model, config, calib)``;
* ``sequential``: ``load_model(dir, device_map="disk")`` (decoder layers stay in the safetensors file) +
  ``calibrate(..., sequential=True)`` (one layer in memory at a time, activations of all windows kept).

Peak memory is the child's ``ru_maxrss`` (resident set, file-backed pages included), beside its RSS just after
``import actlab`` (the interpreter + torch floor). The plans are compared threshold by threshold.

Example:
    python benchmarks/sequential_memory.py --tokens 2048 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _child(mode: str, a: argparse.Namespace) -> dict:
    """One measured run, in its own process; the JSON line it prints is the parent's result."""
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    import actlab
    from actlab.sparsity.calibrate import calibration_windows

    floor = _peak_mb()
    dtype = getattr(torch, a.dtype)
    if mode == "save":
        model, tok = actlab.load_model(f"random:{a.preset}", dtype=dtype)
        model.save_pretrained(a.dir)
        tok.save_pretrained(a.dir)
        return {"mode": mode, "bytes": sum(f.stat().st_size for f in Path(a.dir).glob("*.safetensors"))}
    t0 = time.perf_counter()
    model, tok = actlab.load_model(a.dir, dtype=dtype, device_map="disk" if mode == "sequential" else None)
    t_load = time.perf_counter() - t0
    calib, _ = calibration_windows(actlab.load_corpus("default"), tok, a.seq_len, a.tokens)
    t1 = time.perf_counter()
    plan = actlab.calibrate(model, actlab.TealConfig(a.sparsity), calib, sequential=mode == "sequential")
    t_cal = time.perf_counter() - t1
    plan.save(Path(a.out) / mode)
    return {"mode": mode, "floor_mb": floor, "peak_mb": _peak_mb(), "load_s": t_load, "calibrate_s": t_cal,
            "tokens": int(calib.numel()), "sparsity_model_wide": plan.metrics["sparsity_model_wide"]}


def _spawn(mode: str, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, *argv], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--tokens", type=int, default=2048, help="calibration tokens (default corpus, calib split)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--sparsity", type=float, default=0.5, help="TEAL, uniform allocation")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tmp", default=None, help="where the saved model goes (needs ~5 GB for the fp32 1B)")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(_child(a.child, a)))
        return {}

    from actlab.envinfo import machine_line
    from actlab.sparsity.plan import SparsityPlan

    work = Path(tempfile.mkdtemp(prefix="actlab-seqmem-", dir=a.tmp))
    try:
        common = ["--preset", a.preset, "--dtype", a.dtype, "--tokens", str(a.tokens), "--seq-len", str(a.seq_len),
                  "--sparsity", str(a.sparsity), "--threads", str(a.threads), "--dir", str(work / "model"),
                  "--out", str(work / "plans")]
        saved = _spawn("save", common)
        runs = {m: _spawn(m, common) for m in ("full", "sequential")}
        full, seq = (SparsityPlan.load(work / "plans" / m) for m in ("full", "sequential"))
        diff = max(float((x.threshold - y.threshold).abs().max())
                   for x, y in zip(full.entries, seq.entries, strict=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res = {"preset": a.preset, "dtype": a.dtype, "weights_gb": saved["bytes"] / 1e9, "runs": runs,
           "peak_ratio": runs["full"]["peak_mb"] / runs["sequential"]["peak_mb"], "max_threshold_diff": diff,
           "machine": machine_line(), "command": " ".join(["benchmarks/sequential_memory.py", *(argv or sys.argv[1:])])}
    print(f"{a.preset} ({a.dtype}, {res['weights_gb']:.2f} GB of weights), TEAL {a.sparsity:.0%} uniform, "
          f"{runs['full']['tokens']} calibration tokens, {a.threads} thread(s)\nMachine: {res['machine']}\n")
    print("| pass | peak RSS (MB) | RSS after import (MB) | load (s) | calibrate (s) |")
    print("|---|---|---|---|---|")
    for m, r in runs.items():
        print(f"| {m} | {r['peak_mb']:.0f} | {r['floor_mb']:.0f} | {r['load_s']:.1f} | {r['calibrate_s']:.1f} |")
    print(f"\npeak ratio full / sequential: {res['peak_ratio']:.2f}x; max |threshold difference|: {diff:.3g}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
