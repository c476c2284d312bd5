"""Dense decode speed of the actlab engine vs HF ``model.generate``, and the per-token framework overhead.

For each model: both run greedy generation of ``--new-tokens`` tokens after a ``--prompt-tokens`` random
prompt, interleaved (engine, HF, engine, HF, ...) after warm-up; the table gives median decode tokens/s
(prefill excluded), median prefill, the weight bytes a decode step reads and the bandwidth that implies,
Python calls and top-level aten ops per decode step (deterministic, from cProfile and torch.profiler:
a noise-free view of the overhead), CPU time per step (robust to other processes) and peak RSS.
Each model runs in its own process so its peak RSS is its own.

Per-token overhead estimate: decode steps of tiny random Llamas (d=64, weights negligible) with 2 and 8
layers are timed; the fit ``step = fixed + per_layer × layers`` is the Python/framework cost per token,
and ``fixed + per_layer × L`` its estimate for a model with L layers (a lower bound: bigger tensors add
per-op costs too).

Usage:
    PYTHONPATH=src python benchmarks/engine_overhead.py [--threads 2] [--new-tokens 64] [--skip-1b] [--json]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

MODELS = ["random:tiny-llama", "smollm2-135m", "random:llama-3.2-1b"]
BIG = "random:llama-3.2-1b"


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=5, help="timed interleaved rounds per model")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated model specs")
    p.add_argument("--skip-1b", action="store_true", help=f"skip {BIG} (~5 GB RAM, ~20 s to build)")
    p.add_argument("--hf-static", action="store_true", help="also time model.generate with its static cache")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of markdown")
    p.add_argument("--one", help=argparse.SUPPRESS)  # worker mode: measure one model, print JSON
    p.add_argument("--overhead-fit", action="store_true", help=argparse.SUPPRESS)  # worker mode
    return p.parse_args(argv)


def _counts(run) -> tuple[int, int]:
    """(Python function calls, top-level aten ops) of one call of ``run``."""
    from torch.profiler import ProfilerActivity, profile

    prof = cProfile.Profile()
    prof.enable()
    run()
    prof.disable()
    with profile(activities=[ProfilerActivity.CPU]) as ops:
        run()
    top = sum(1 for e in ops.events() if e.name.startswith("aten::") and not _under_aten(e))
    return pstats.Stats(prof).total_calls, top


def _under_aten(event) -> bool:
    parent = event.cpu_parent
    return parent is not None and parent.name.startswith("aten::")


def _per_step(run_n, n: int) -> tuple[float, float]:
    """Python calls and aten ops per decode step: two generations (n/2 and n tokens) differenced, so the
    prefill and the set-up cancel out. Deterministic, hence a noise-free view of the per-token overhead."""
    short, full = _counts(lambda: run_n(n // 2)), _counts(lambda: run_n(n))
    steps = n - n // 2
    return (full[0] - short[0]) / steps, (full[1] - short[1]) / steps


def _measure(model, ids, args: argparse.Namespace) -> dict:
    """Engine vs HF, interleaved, on one model (threads already set)."""
    from actlab.engine import bench, generate, make_cache

    n = args.new_tokens
    cache = make_cache(model, ids.shape[1] + n)
    measures = {
        "engine": lambda: bench.measure_decode(model, ids, n, reps=1, warmup=0, cache=cache),
        "hf": lambda: bench.measure_hf_decode(model, ids, n, reps=1, warmup=0),
    }
    if args.hf_static:
        measures["hf_static"] = lambda: bench.measure_hf_decode(model, ids, n, 1, 0, cache_implementation="static")
    speeds: dict[str, list] = {name: [] for name in measures}

    def variant(name: str):
        def run() -> float:
            speeds[name].append(measures[name]())
            return speeds[name][-1].tokens_per_s

        return run

    result = bench.interleaved({name: variant(name) for name in measures}, reps=args.reps, warmup=args.warmup)
    out = {}
    for name, runs in speeds.items():
        timed = runs[args.warmup :]
        out[name] = {
            "tokens_per_s": result.medians[name],
            "samples": result.samples[name],
            "prefill_s": statistics.median(s.prefill_s for s in timed),
            "cpu_step_s": statistics.median(s.cpu_step_s for s in timed),
        }
    out["engine"]["calls_per_token"], out["engine"]["ops_per_token"] = _per_step(
        lambda k: generate(model, ids, k, cache=cache), n
    )
    out["hf"]["calls_per_token"], out["hf"]["ops_per_token"] = _per_step(
        lambda k: bench.measure_hf_decode(model, ids, k, 1, 0), n
    )
    return out


def _one(args: argparse.Namespace) -> dict:
    """Worker: load one model, measure, report (JSON-able)."""
    import torch

    import actlab
    from actlab.engine import bench
    from actlab.engine.traffic import linear_bytes

    with bench.threads(args.threads):
        model, _ = actlab.load_model(args.one)
        cfg = model.config
        ids = torch.randint(0, cfg.vocab_size, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
        rss_loaded = bench.rss_mb()
        res = _measure(model, ids, args)
    return {
        "model": args.one,
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
        "linear_bytes": linear_bytes(model),
        "rss_loaded_mb": rss_loaded,
        "peak_rss_mb": bench.peak_rss_mb(),
        **res,
    }


def _overhead_fit(args: argparse.Namespace) -> dict:
    """Worker: decode-step cost of tiny Llamas with 2 and 8 layers -> fixed + per-layer cost per token.

    One thread: the overhead is serial Python/dispatch work. Time is CPU time (robust to other processes
    on the machine), and the lowest of the rounds: noise only ever adds to an intrinsic cost. Op and call
    counts, deterministic, are fitted the same way.
    """
    import torch
    import transformers

    from actlab.engine import bench, generate
    from actlab.models.presets import make_config

    n = max(args.new_tokens, 64)
    ids = torch.randint(3, 500, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    models, measures = {}, {}
    for layers in (2, 8):
        cfg = make_config("tiny-llama")
        cfg.num_hidden_layers = layers
        torch.manual_seed(0)
        models[layers] = model = transformers.LlamaForCausalLM(cfg).eval()
        measures[("engine", layers)] = lambda m=model: bench.measure_decode(m, ids, n, 1, 0)
        measures[("hf", layers)] = lambda m=model: bench.measure_hf_decode(m, ids, n, 1, 0)
        measures[("native", layers)] = lambda m=model: _native_speed(m, ids, n)
    speeds: dict[tuple, list] = {key: [] for key in measures}

    def variant(key):
        def run() -> float:
            speeds[key].append(measures[key]())
            return speeds[key][-1].tokens_per_s

        return run

    with bench.threads(1):
        bench.interleaved({f"{k}/{n}": variant((k, n)) for k, n in measures}, reps=max(args.reps, 7), warmup=1)
        counts = {
            ("native", layers): (0.0, 0.0) for layers in models  # the decode loop is one C call: no Python
        } | {
            ("engine", layers): _per_step(lambda k, m=m: generate(m, ids, k), n) for layers, m in models.items()
        } | {
            ("hf", layers): _per_step(lambda k, m=m: bench.measure_hf_decode(m, ids, k, 1, 0), n)
            for layers, m in models.items()
        }
    fit: dict = {}
    for kind in ("engine", "hf", "native"):
        per_metric = {
            "cpu": {layers: min(s.cpu_step_s for s in speeds[(kind, layers)][1:]) for layers in (2, 8)},
            "calls": {layers: counts[(kind, layers)][0] for layers in (2, 8)},
            "ops": {layers: counts[(kind, layers)][1] for layers in (2, 8)},
        }
        for metric, step in per_metric.items():
            per_layer = (step[8] - step[2]) / 6
            fit.setdefault(kind, {})[metric] = {"fixed": step[2] - 2 * per_layer, "per_layer": per_layer, "step": step}
    return fit


class _NativeSpeed:
    """The fields of bench.measure_decode's result the fit reads, for the native engine."""

    def __init__(self, out) -> None:
        self.tokens_per_s = out.decode_tokens_per_s
        self.cpu_step_s = out.decode_cpu_s / max(out.decode_steps, 1)


def _native_speed(model, ids, n: int) -> _NativeSpeed:
    from actlab.engine.native import generate_native

    return _NativeSpeed(generate_native(model, ids, n))


def _worker(flag: list[str], args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, *flag, "--threads", str(args.threads), "--new-tokens", str(args.new_tokens),
           "--prompt-tokens", str(args.prompt_tokens), "--reps", str(args.reps), "--warmup", str(args.warmup)]
    if args.hf_static:
        cmd.append("--hf-static")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"worker {' '.join(flag)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _step_s(speed: dict) -> float:
    """Seconds per decode step to set the overhead against: wall time, or CPU time where lower (other
    processes taking the cores stretch wall time; at one thread CPU time is the step's own work)."""
    return min(1.0 / speed["tokens_per_s"], speed["cpu_step_s"])


def _table(rows: list[dict], fit: dict, args: argparse.Namespace, command: str, machine: str) -> str:
    def est(kind: str, layers: int) -> float:  # seconds of overhead per token, from the CPU-time fit
        f = fit[kind]["cpu"]
        return f["fixed"] + f["per_layer"] * layers

    static = args.hf_static
    lines = [
        f"Threads: {args.threads}; prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens (greedy), "
        f"median of {args.reps} interleaved rounds after {args.warmup} warm-up; decode phase only (prefill apart).",
        "",
        "| model | layers | weights read/token | engine tok/s | HF generate tok/s | engine / HF "
        + ("| HF static-cache tok/s " if static else "")
        + "| CPU ms/token (engine / HF) | prefill ms (engine / HF) | engine GB/s "
        "| overhead ms/token est. (engine / HF) | overhead share (engine) | py calls/token (engine / HF) "
        "| aten ops/token (engine / HF) | peak RSS MB |",
        "|---|---|---|---|---|---|" + ("---|" if static else "") + "---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e, h = r["engine"], r["hf"]
        over_e, over_h = est("engine", r["layers"]), est("hf", r["layers"])
        lines.append(
            f"| {r['model']} | {r['layers']} | {r['linear_bytes'] / 1e6:.1f} MB | {e['tokens_per_s']:.1f} "
            f"| {h['tokens_per_s']:.1f} | {e['tokens_per_s'] / h['tokens_per_s']:.2f}x "
            + (f"| {r['hf_static']['tokens_per_s']:.1f} " if static else "")
            + f"| {e['cpu_step_s'] * 1e3:.2f} / {h['cpu_step_s'] * 1e3:.2f} "
            f"| {e['prefill_s'] * 1e3:.1f} / {h['prefill_s'] * 1e3:.1f} "
            f"| {r['linear_bytes'] * e['tokens_per_s'] / 1e9:.2f} "
            f"| {over_e * 1e3:.2f} / {over_h * 1e3:.2f} | {min(1.0, over_e / _step_s(e)):.0%} "
            f"| {e['calls_per_token']:.0f} / {h['calls_per_token']:.0f} "
            f"| {e['ops_per_token']:.0f} / {h['ops_per_token']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    fe, fh = fit["engine"], fit["hf"]
    fn = fit.get("native")

    def line(f: dict, metric: str, scale: float = 1.0, fmt: str = ".0f") -> str:
        return f"{f[metric]['fixed'] * scale:{fmt}} + {f[metric]['per_layer'] * scale:{fmt}}/layer"

    lines += [
        "",
        "Per-token overhead (Python + framework; tiny random Llamas, d=64, with 2 and 8 layers, 1 thread, "
        "fitted as fixed + per layer): CPU ms/step engine "
        f"{line(fe, 'cpu', 1e3, '.2f')}, HF generate {line(fh, 'cpu', 1e3, '.2f')} (lowest of the rounds); "
        f"aten ops/step engine {line(fe, 'ops')}, HF {line(fh, 'ops')}; Python calls/step engine "
        f"{line(fe, 'calls')}, HF {line(fh, 'calls')}. "
        + (f"Native engine (one C call per token): CPU ms/step {line(fn, 'cpu', 1e3, '.3f')}. " if fn else "")
        + "Overhead share = that CPU estimate / the engine's step time "
        "(wall, or CPU where lower).",
        f"Machine: {machine}",
        f"Command: `{command}`",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    if args.one:
        print(json.dumps(_one(args)))
        return
    if args.overhead_fit:
        print(json.dumps(_overhead_fit(args)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from actlab.engine.bench import threads
    from actlab.envinfo import machine_line

    specs = [s for s in args.models.split(",") if s and not (args.skip_1b and s == BIG)]
    fit = _worker(["--overhead-fit"], args)
    rows = [_worker(["--one", spec], args) for spec in specs]
    with threads(args.threads):
        machine = machine_line()
    command = "PYTHONPATH=src python benchmarks/engine_overhead.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.json:
        print(json.dumps({"overhead_fit": fit, "models": rows, "machine": machine, "command": command}, indent=1))
    else:
        print(_table(rows, fit, args, command.strip(), machine))


if __name__ == "__main__":
    main()
