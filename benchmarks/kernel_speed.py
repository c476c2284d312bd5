"""Sparse-input GEMV speed: dense torch vs actlab's kernel, interleaved in one run.

For each weight shape (out x in, as ``nn.Linear`` stores it) and sparsity s, x ~ N(0, 1) and the threshold
is placed so that exactly floor(s * in) inputs are masked. Each repetition times ``F.linear(x, W)`` and
``ops.sparse_linear(x, W^T, t)`` back to back (alternating which goes first); the table reports medians
after warm-up, the speedup, and the memory-traffic ceiling 1 / (1 - s). As in one decode step through a
whole model, every call should stream its weights from DRAM with a fresh mask: weights rotate through
enough copies (>= 96 MiB per side, 3x the L3) and the input through a pool of different vectors
(``--warm``: one copy, so small shapes run from cache). Flushing the caches before each call instead would
also evict the Python and torch code paths, which stay hot in a real decode loop.

Example:
    python benchmarks/kernel_speed.py --threads 2
    python benchmarks/kernel_speed.py --shapes 4096x11008 --sparsity 0 50 --batch 4 --json out.json
    python benchmarks/kernel_speed.py --mlp 4096x11008   # fused gated MLP vs three dense GEMVs
    python benchmarks/kernel_speed.py --formats fp32,bf16,int8,int4 --sparsity 0 50 70 90

``--formats`` replaces the fp32-vs-torch table by one per weight format: the format's kernel at each
sparsity against the same kernel with no threshold (dense, same format), the ceiling 1 / kept, and the GB/s
each achieves counting the bytes actually read (kept rows x packed row bytes, scales included).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from actlab.kernels import ops
from actlab.kernels.linear import SparseGatedMLP, SparseLinear
from actlab.kernels.quant import pack, sparse_linear_packed

SHAPES = ["576x1536", "1536x576", "2048x8192", "8192x2048", "4096x11008", "11008x4096"]
SPARSITIES = [0, 25, 50, 70, 90]
COLD_BYTES = 96 << 20  # 3x a 32 MiB L3: rotating through this much keeps the weights out of cache
POOL = 8  # different inputs (masks) cycled through, so no call finds its own kept rows still cached


def _copies(nbytes: int, warm: bool) -> int:
    return 1 if warm else max(1, math.ceil(COLD_BYTES / nbytes))


def _layout(w: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """Contiguous copy; on huge pages unless --no-hugepages, for dense and sparse alike (same memory)."""
    return w.contiguous().clone() if args.no_hugepages else ops.kernel_weight(w)


def _threshold_masking(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """A scalar threshold masking exactly floor(fraction * n) of the |x| values (midpoint of a gap)."""
    v = x.abs().flatten().sort().values
    k = int(fraction * v.numel())
    if k == 0:
        return torch.tensor(-1.0)
    if k >= v.numel():
        return v[-1] + 1.0
    return (v[k - 1] + v[k]) / 2


def _interleaved(fns: list[Callable[[int], object]], reps: int, warmup: int) -> list[float]:
    """Median seconds per call of each fn(rep), run back to back each repetition, order alternating."""
    times: list[list[float]] = [[] for _ in fns]
    for r in range(warmup + reps):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t0 = time.perf_counter()
            fns[i](r)
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[i].append(dt)
    return [statistics.median(t) for t in times]


def bench_linear(shape: str, sparsities: list[float], batch: int, args: argparse.Namespace) -> list[dict]:
    n_out, n_in = (int(v) for v in shape.split("x"))
    n = _copies(n_out * n_in * 4, args.warm)
    ws = [_layout(torch.randn(n_out, n_in), args) for _ in range(n)]  # [out, in], as nn.Linear has it
    wts = [_layout(w.t(), args) for w in ws]  # [in, out], what the kernel reads
    rows = []
    for s in sparsities:
        xs = [torch.randn(batch, n_in) for _ in range(POOL)]
        ts = [_threshold_masking(x, s / 100) for x in xs]
        kept = statistics.mean(
            (x.abs() > t).any(0).float().mean().item() for x, t in zip(xs, ts, strict=True)
        )  # union
        err = (
            (F.linear(xs[0], ws[0]) - ops.sparse_linear(xs[0], wts[0], ts[0])).abs().max().item()
            if s == 0
            else None
        )
        dense_s, sparse_s = _interleaved(
            [
                lambda r, xs=xs: F.linear(xs[r % POOL], ws[r % n]),
                lambda r, xs=xs, ts=ts: ops.sparse_linear(xs[r % POOL], wts[r % n], ts[r % POOL]),
            ],
            args.reps,
            args.warmup,
        )
        rows.append(
            {
                "shape": shape, "batch": batch, "sparsity": s, "kept": kept,
                "dense_us": dense_s * 1e6, "sparse_us": sparse_s * 1e6, "speedup": dense_s / sparse_s,
                "ceiling": 1 / kept if kept > 0 else math.inf, "max_abs_err_vs_dense_at_0": err,
            }
        )  # fmt: skip
        print(_row(rows[-1]), flush=True)
    return rows


def bench_mlp(shape: str, sparsities: list[float], args: argparse.Namespace) -> list[dict]:
    """Gated MLP (d_model x d_ff): three dense GEMVs vs the fused CATS kernel at act-sparsity s."""
    d_model, d_ff = (int(v) for v in shape.split("x"))
    n = _copies(3 * d_model * d_ff * 4, args.warm)
    mlps = []  # n copies of (gate, up, down), in the same page layout as the kernel's weights
    for _ in range(n):
        layers = [torch.nn.Linear(d_model, d_ff, bias=False), torch.nn.Linear(d_model, d_ff, bias=False)]
        layers.append(torch.nn.Linear(d_ff, d_model, bias=False))
        for lin in layers:
            lin.weight = torch.nn.Parameter(_layout(lin.weight.detach(), args), requires_grad=False)
        mlps.append(layers)
    xs = [torch.randn(1, d_model) for _ in range(POOL)]
    rows = []
    with torch.no_grad():
        acts = torch.cat([F.silu(mlps[0][0](x)) for x in xs])  # [POOL, d_ff]

        def dense(r: int) -> torch.Tensor:
            gate, up, down = mlps[r % n]
            x = xs[r % POOL]
            return down(F.silu(gate(x)) * up(x))

        for s in sparsities:
            t_act = _threshold_masking(acts, s / 100)  # masks s of the neurons over the pool
            fused = [SparseGatedMLP.from_linears(*layers, "silu", t_act=t_act) for layers in mlps]
            dense_s, sparse_s = _interleaved(
                [dense, lambda r, fused=fused: fused[r % n](xs[r % POOL])], args.reps, args.warmup
            )
            kept = (acts.abs() > t_act).float().mean().item()
            read = (1 + 2 * kept) / 3  # gate always read, up and down only for kept neurons
            rows.append(
                {
                    "shape": f"mlp {shape}", "batch": 1, "sparsity": s, "kept": read,
                    "dense_us": dense_s * 1e6, "sparse_us": sparse_s * 1e6, "speedup": dense_s / sparse_s,
                    "ceiling": 1 / read, "max_abs_err_vs_dense_at_0": None,
                }
            )  # fmt: skip
            print(_row(rows[-1]), flush=True)
            del fused
    return rows


def bench_formats(shape: str, sparsities: list[float], fmt: str, args: argparse.Namespace) -> list[dict]:
    """One format's kernel: sparse (threshold) vs dense (no threshold) on the same packed weights."""
    n_out, n_in = (int(v) for v in shape.split("x"))
    first = pack(torch.randn(n_in, n_out), fmt)  # [in, out], the transposed layout
    n = _copies(first.nbytes, args.warm)
    ps = [first] + [pack(torch.randn(n_in, n_out), fmt) for _ in range(n - 1)]
    rows = []
    for s in sparsities:
        xs = [torch.randn(args.batch, n_in) for _ in range(POOL)]
        ts = [_threshold_masking(x, s / 100) for x in xs]
        masks = [(x.abs() > t).any(0) for x, t in zip(xs, ts, strict=True)]
        kept = statistics.mean(m.float().mean().item() for m in masks)
        read = statistics.mean(first.read_bytes(m) for m in masks)  # kept rows, their blocks' scales
        dense_s, sparse_s = _interleaved(
            [
                lambda r, xs=xs: sparse_linear_packed(xs[r % POOL], ps[r % n]),
                lambda r, xs=xs, ts=ts: sparse_linear_packed(xs[r % POOL], ps[r % n], ts[r % POOL]),
            ],
            args.reps,
            args.warmup,
        )
        rows.append(
            {
                "shape": shape, "format": fmt, "batch": args.batch, "sparsity": s, "kept": kept,
                "dense_us": dense_s * 1e6, "sparse_us": sparse_s * 1e6, "speedup": dense_s / sparse_s,
                "ceiling": 1 / kept if kept > 0 else math.inf,
                "dense_gbs": first.nbytes / dense_s / 1e9, "sparse_gbs": read / sparse_s / 1e9,
            }
        )  # fmt: skip
        r = rows[-1]
        ceiling = "inf" if math.isinf(r["ceiling"]) else f"{r['ceiling']:.2f}x"
        print(
            f"| {shape} | {fmt} | {s:g}% | {r['dense_us']:.1f} | {r['sparse_us']:.1f} | {r['speedup']:.2f}x "
            f"| {ceiling} | {r['dense_gbs']:.1f} | {r['sparse_gbs']:.1f} |",
            flush=True,
        )
    return rows


def dispatcher_overhead(args: argparse.Namespace) -> dict:
    """Microseconds per call of each entry point on a small, cache-resident layer (576x1536, 50%)."""
    lin = torch.nn.Linear(1536, 576, bias=False)
    mod = SparseLinear.from_linear(lin, 0.6745)
    x, wt, t = torch.randn(1, 1536), mod.weight_t, mod.threshold
    y = torch.empty(1, 576)
    ext = ops._extension()

    def raw(_: int) -> None:
        ext.sparse_linear(
            x.data_ptr(), 1, 1536, 1536, wt.data_ptr(), 576, 576, t.data_ptr(), 0, 0, y.data_ptr(), 576,
            torch.get_num_threads(),
        )  # fmt: skip

    fns = {
        "raw extension call": raw,
        "ops.sparse_linear (direct)": lambda _: ops.sparse_linear(x, wt, t),
        "torch.ops.actlab.sparse_linear (dispatcher)": lambda _: torch.ops.actlab.sparse_linear(
            x, wt, t, None
        ),
        "SparseLinear module": lambda _: mod(x),
    }
    with torch.no_grad():
        times = _interleaved(list(fns.values()), reps=max(args.reps * 20, 500), warmup=50)
    return {name: t * 1e6 for name, t in zip(fns, times, strict=True)}


def _row(r: dict) -> str:
    ceiling = "inf" if math.isinf(r["ceiling"]) else f"{r['ceiling']:.2f}x"
    return (
        f"| {r['shape']} | {r['batch']} | {r['sparsity']:g}% | {r['dense_us']:.1f} | {r['sparse_us']:.1f} "
        f"| {r['speedup']:.2f}x | {ceiling} |"
    )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} x{len(names)}"
    except (OSError, IndexError):
        return platform.processor() or platform.machine()


def _loadavg() -> str:
    """1/5/15-minute load: a busy machine (other jobs) makes every timing here unreliable."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="torch and kernel threads (default 2)")
    parser.add_argument("--shapes", nargs="*", default=SHAPES, help="out x in, e.g. 4096x11008")
    parser.add_argument("--sparsity", nargs="*", type=float, default=SPARSITIES, help="percent masked")
    parser.add_argument("--batch", type=int, default=1, help="tokens per call (<= 8 uses the kernel)")
    parser.add_argument("--mlp", nargs="*", default=[], help="also time the gated MLP, d_model x d_ff")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--warm", action="store_true", help="one weight copy (small shapes run from cache)")
    parser.add_argument("--no-hugepages", action="store_true", help="plain 4 KiB pages for both sides")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--formats", help="comma list of weight formats (fp32,bf16,int8,int4): per-format table")
    args = parser.parse_args()
    formats = [f for f in (args.formats or "").split(",") if f]

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    if not ops.available():
        print("WARNING: compiled kernels unavailable; timing the pure-PyTorch fallback")
    machine = f"{_cpu_name()}, torch {torch.__version__}, actlab isa {ops.isa()}"
    pages = "4KiB" if args.no_hugepages else "huge (both sides)"
    print(
        f"threads={args.threads} batch={args.batch} fp32 cache={'warm' if args.warm else 'cold'} pages={pages}"
    )
    print(f"{machine}; load average before: {_loadavg()}\n")
    if formats:
        print("| shape (out x in) | format | sparsity | dense kernel us | sparse us | speedup | ceiling "
              "| dense GB/s | sparse GB/s |")
        print("|---|---|---|---|---|---|---|---|---|")
        rows = [r for shape in args.shapes for f in formats for r in bench_formats(shape, args.sparsity, f, args)]
    else:
        print("| shape (out x in) | batch | sparsity | dense torch us | actlab us | speedup | ceiling 1/(1-s) |")
        print("|---|---|---|---|---|---|---|")
        rows = [r for shape in args.shapes for r in bench_linear(shape, args.sparsity, args.batch, args)]
    rows += [r for shape in args.mlp for r in bench_mlp(shape, args.sparsity, args)]
    overhead = dispatcher_overhead(args) if ops.available() else {}
    print(f"\nload average after: {_loadavg()}")
    print("per-call time, 576x1536 at 50% (us):")
    for name, us in overhead.items():
        print(f"  {name:<45} {us:8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "threads": args.threads,
                    "machine": machine,
                    "rows": rows,
                    "overhead_us": overhead,
                    "load_after": _loadavg(),
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
