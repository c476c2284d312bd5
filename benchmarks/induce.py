"""Induce activation sparsity by training -> the "Induce sparsity by training" section of RESULTS.md.

Every arm trains a fresh copy of the model on the **calib split** of the default corpus for the same
``--tokens`` (each window once, same windows in the same order: the loop's order is a function of the seed),
through ``actlab.train`` with the loop's defaults (LoRA r=8 on the seven projections unless ``--adapter full``,
AdamW, lr 2e-4, 6% warmup, cosine), and is evaluated on the disjoint **eval split**, strict protocol (every
token sparsified and scored), with its plan or activation swap active:

* ``dense-ft``       plain fine-tuning: the reference every arm is compared with (same text, same tokens), so
                     adapting to the corpus does not count as recovery.
* ``mask-lora``      LoRA under the best training-free 50% plan (TEAL, global allocation, calibrated here on
                     the calib split; RESULTS.md "Quality": +35.6% training-free), straight-through masks.
* ``deft``           DEFT's density loss at ``mlp.act_out`` (weight 1.0, ε 1e-4 = profile's threshold squared).
* ``relufy-relu``, ``relufy-drelu``, ``relufy-relu2``: the activation swap with ProSparse's L1 (peak λ: the relufy default,
                     sine schedule).
* ``topk-ste``       Q-Sparse: top-k at 50% on every linear input, straight-through.

Per arm: perplexity, % over dense-FT, and its sparsity: the measured model-wide sparsity of its plan
(mask-lora, topk-ste; parameter-weighted, TEAL's definition), the exact-zero fraction of the MLP
intermediate (``mlp.down_in``) for relufy, and for every arm the MLP activation density at profile's
threshold (|x| > 0.01 at ``mlp.act_out``) before and after. With ``--ppl1``: the PPL-1% model-wide sparsity
(``actlab.search_quality`` on held-out calib windows the training never saw, then checked on the eval
split) of the best arm's trained model and of the dense-FT model. Nothing is timed beyond each arm's wall
time (a shared machine's times are not speed claims).

Usage:
    python benchmarks/induce.py --threads 2 --ppl1               # writes benchmarks/induce.json
    python benchmarks/induce.py --model random:tiny-llama --tokens 512 --seq-len 64 --eval-tokens 256 \\
        --calib-tokens 512 --search-tokens 512 --ppl1 --json /tmp/induce.json     # a quick smoke run
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

#: arm -> (objective config without the plan path, what it is); mask-lora's plan is calibrated by the script
ARMS: dict[str, tuple[dict[str, Any], str]] = {
    "dense-ft": ({"objective": "dense"}, "dense fine-tuning (reference)"),
    "mask-lora": ({"objective": "mask-lora", "gradient": "ste"}, "teal-global 50% plan applied, straight-through"),
    # DEFT's eps 1e-7 counts every nonzero SiLU output as dense and its loss does not move; eps = 0.01² makes
    # a²/(a²+eps) a soft count of |a| > 0.01, profile's density threshold, which is what is measured
    "deft": ({"objective": "deft", "weight": 1.0, "eps": 1e-4}, "DEFT density loss at mlp.act_out, weight 1, eps 1e-4"),
    "relufy-relu": ({"objective": "relufy", "activation": "relu"}, "SiLU -> ReLU + L1 (ProSparse)"),
    "relufy-drelu": ({"objective": "relufy", "activation": "drelu"}, "dReLU (gate and up) + L1"),
    "relufy-relu2": ({"objective": "relufy", "activation": "relu2"}, "ReLU² + L1"),
    "topk-ste": ({"objective": "topk-ste", "sparsity": 0.5}, "top-k 50% on every linear input, straight-through"),
}
PLAN_SPARSITY = 0.5
EPS = "0.01"  # profile's report threshold


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from: {', '.join(ARMS)}")
    p.add_argument("--tokens", type=int, default=200_000, help="training tokens per arm (the same for every arm)")
    p.add_argument("--eval-tokens", type=int, default=4096, help="eval-split tokens for every measurement")
    p.add_argument("--calib-tokens", type=int, default=16384, help="calib tokens for mask-lora's plan")
    p.add_argument("--search-tokens", type=int, default=4096,
                   help="held-out calib tokens (never trained on) for the --ppl1 search")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--adapter", default="lora", choices=("lora", "full"), help="for every arm")
    p.add_argument("--curve", type=int, default=4, help="evaluations during training (the curve against tokens)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ppl1", action="store_true", help="also the PPL-1%% sparsity of the best arm and of dense-FT")
    p.add_argument("--ppl1-arm", default=None,
                   help="the arm searched (default: mask-lora when it runs, else the non-dense arm of lowest ppl)")
    p.add_argument("--ppl1-method", default="teal-global", help="METHOD[-ALLOCATION] calibrated for the search")
    p.add_argument("--work", type=Path, default=Path("runs/induce"), help="run directories (replaced)")
    p.add_argument("--json", type=Path, default=Path(__file__).with_name("induce.json"),
                   help="write every number here (default: benchmarks/induce.json)")
    p.add_argument("--set", action="append", default=[], metavar="ARM.KEY=VALUE", dest="overrides",
                   help="override one setting of one arm: a field of its objective config (deft.weight=30, "
                        "relufy-relu.adapter=full, relufy-relu.kl=1) or of the loop (mask-lora.lr=5e-4); repeatable")
    p.add_argument("--reference", type=Path, default=None, metavar="JSON",
                   help="another run's JSON whose dense-ft row the arms are compared with, when dense-ft is not "
                        "among --arms (same --tokens, --seq-len and --eval-tokens)")
    args = p.parse_args(argv)
    unknown = [a for a in args.arms.split(",") if a not in ARMS]
    if unknown:
        p.error(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    if args.ppl1_arm is not None and args.ppl1_arm not in args.arms.split(","):
        p.error(f"--ppl1-arm {args.ppl1_arm} is not among --arms")
    try:
        args.overrides = _overrides(args.overrides, args.arms.split(","))
    except ValueError as e:
        p.error(str(e))
    if args.reference is not None and not args.reference.is_file():
        p.error(f"--reference {args.reference} is not a file; pass the JSON of a run that has a dense-ft arm")
    return args


def _overrides(items: list[str], arms: list[str]) -> dict[str, dict[str, Any]]:
    """``["deft.weight=30"]`` -> ``{"deft": {"weight": 30.0}}`` (values parsed as JSON where they parse)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        arm, dot, field = key.rpartition(".")
        if not eq or not dot or not field:
            raise ValueError(f"--set {item!r}: write ARM.KEY=VALUE, e.g. deft.weight=30")
        if arm not in arms:
            raise ValueError(f"--set {item!r}: arm {arm!r} is not among --arms ({', '.join(arms)})")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(arm, {})[field] = value
    _check_fields(out)
    return out


def _check_fields(overrides: dict[str, dict[str, Any]]) -> None:
    """Refuse a key that is neither a field of the arm's config nor of the loop, before anything is trained."""
    import actlab.train.objectives  # noqa: F401  (registers the objectives)
    from actlab.train.config import CONFIGS
    from actlab.train.loop import TrainArgs

    loop = {f.name for f in dataclasses.fields(TrainArgs)}
    for arm, changes in overrides.items():
        known = loop | {f.name for f in dataclasses.fields(CONFIGS[ARMS[arm][0]["objective"]])}
        bad = sorted(set(changes) - known)
        if bad:
            raise ValueError(f"--set {arm}.{bad[0]}: {arm} has no setting {bad[0]!r}; its settings are "
                             f"{', '.join(sorted(known))}")


def _log(msg: str) -> None:
    print(f"· {msg}", file=sys.stderr, flush=True)


def _density(model: Any, windows: Any) -> dict[str, Any]:
    from actlab.train.density import layer_density, mean_density

    act = layer_density(model, windows, site="mlp.act_out")
    down = layer_density(model, windows, site="mlp.down_in")
    zeros = [z for z in down["zero_frac"] if z is not None]
    return {"density_act_out": mean_density(act, EPS), "density_act_out_layers": act["density"][EPS],
            "zero_frac_down_in": sum(zeros) / len(zeros) if zeros else None}


def _measure(model: Any, plan: Any, windows: Any) -> dict[str, Any]:
    """Strict perplexity on the eval split with the arm's plan (if any) active, its sparsity, its density."""
    import actlab

    res = actlab.evaluate_plan(model, plan, windows, protocol="strict")
    out = {"ppl": res.ppl, "ppl_unmasked": res.ppl_dense, "plan": plan is not None}
    if plan is not None:
        out.update(sparsity_model_wide=res.sparsity_model_wide, bytes_skipped_frac=res.bytes_skipped_frac)
    return {**out, **_density(model, windows)}


def _teal_plan(net: Any, calib: Any, work: Path) -> tuple[Path, Any]:
    import actlab

    _log(f"calibrating the training-free plan (teal, global, {PLAN_SPARSITY:.0%})")
    plan = actlab.calibrate(net, actlab.TealConfig(PLAN_SPARSITY, allocation="global"), calib)
    path = work / "plan-teal-global-50"
    plan.save(path, overwrite=True)
    return path, plan


def _train_arm(name: str, base: Any, tok: Any, train_w: Any, eval_w: Any, plan_dir: Path | None,
               args: argparse.Namespace) -> dict[str, Any]:
    import actlab
    from actlab.train import config_from_dict
    from actlab.train.loop import TrainArgs, train

    cfg, what = ARMS[name]
    loop_fields = {f.name for f in dataclasses.fields(TrainArgs)}
    changes = args.overrides.get(name, {})
    cfg = {**cfg, "adapter": args.adapter, **({"plan": str(plan_dir)} if name == "mask-lora" else {}),
           **{k: v for k, v in changes.items() if k not in loop_fields}}
    if changes:
        what += " [" + ", ".join(f"{k}={v}" for k, v in changes.items()) + "]"
    config = config_from_dict(cfg)
    per_step = args.batch_size * args.seq_len
    steps = max(1, args.tokens // per_step)
    targs = TrainArgs(**{"tokens": args.tokens, "seq_len": args.seq_len, "batch_size": args.batch_size,
                         "precision": args.precision, "eval_tokens": args.eval_tokens,
                         "eval_every": max(1, steps // args.curve) if args.curve else 0,
                         "calib_tokens": args.calib_tokens, **{k: v for k, v in changes.items() if k in loop_fields}})
    out = args.work / name
    _log(f"training {name}: {what}, {args.tokens:,} tokens")
    t0 = time.perf_counter()
    res = train(copy.deepcopy(base), config, train_w, args=targs, out=out, eval_data=eval_w, tokenizer=tok,
                overwrite=True, progress=True)
    wall = time.perf_counter() - t0
    model, _ = actlab.load_model(str(out))  # what a user gets: the saved model directory, reloaded
    plan = actlab.SparsityPlan.load(out / "plan") if (out / "plan" / "plan.json").is_file() else None
    _log(f"evaluating {name}")
    m = _measure(model, plan, eval_w)
    curve = [{"tokens": r["tokens"], "ppl": r["eval_ppl"], "density_act_out": r.get(f"density_{EPS}"),
              "zero_frac_act_out": _mean(r.get("zero_frac"))} for r in res.history if "eval_ppl" in r]
    return {"arm": name, "what": what, "config": config.to_dict(), "loop": dataclasses.asdict(targs), "out": str(out), "tokens": res.history[-1]["tokens"]
            if res.history else 0, "wall_s": wall, **m, "curve": curve}


def _mean(xs: Any) -> float | None:
    vals = [x for x in xs or [] if x is not None]
    return sum(vals) / len(vals) if vals else None


def _ppl1(model: Any, calib: Any, heldout: Any, eval_w: Any, method: str) -> dict[str, Any]:
    """PPL-1% on held-out calib windows (never trained on), then the chosen plan on the eval split."""
    import actlab
    from actlab.sparsity.config import config_from_dict

    name, _, alloc = method.partition("-")
    cfg = config_from_dict({"method": name, "sparsity": 0.5, **({"allocation": alloc} if alloc else {})})
    prepared = actlab.prepare(model, cfg, calib)
    found = actlab.search_quality(model, prepared, heldout, 1.0)
    res = actlab.evaluate_plan(model, found.plan, eval_w, protocol="strict")
    return {"method": method, "sparsity_model_wide": res.sparsity_model_wide, "heldout_increase_pct":
            found.increase_pct, "eval_increase_pct": res.ppl_increase_pct, "ppl": res.ppl, "ppl_own_dense": res.ppl_dense}


def run(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    import actlab
    from actlab.data.windows import make_windows
    from actlab.envinfo import machine_line
    from actlab.sparsity.calibrate import calibration_windows

    args = _args(argv)
    torch.set_num_threads(args.threads)
    from actlab.cli.common import quiet_libraries

    quiet_libraries()  # transformers' own save/load bars would bury the arms' progress
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)  # PEFT's
    args.work.mkdir(parents=True, exist_ok=True)
    arms = args.arms.split(",")
    base, tok = actlab.load_model(args.model)
    corpus = actlab.load_corpus("default")
    extra = args.search_tokens if args.ppl1 else 0
    train_w, heldout = calibration_windows(corpus, tok, args.seq_len, args.tokens, extra)
    eval_w = make_windows(corpus, tok, args.seq_len, args.eval_tokens, split="eval")
    calib = train_w[: math.ceil(args.calib_tokens / args.seq_len)]

    _log("measuring the untrained model")
    reference = {"untrained": _measure(base, None, eval_w)}
    plan_dir = None
    if "mask-lora" in arms:
        plan_dir, plan = _teal_plan(base, calib, args.work)
        reference["training-free teal-global 50%"] = _measure(base, plan, eval_w)
    rows = [_train_arm(a, base, tok, train_w, eval_w, plan_dir, args) for a in arms]
    dense = next((r for r in rows if r["arm"] == "dense-ft"), None)
    if dense is None and args.reference is not None:
        dense = next((r for r in json.loads(args.reference.read_text())["arms"] if r["arm"] == "dense-ft"), None)
        if dense is None:
            raise SystemExit(f"error: --reference {args.reference} has no dense-ft arm; pass a run that trained one")
    for r in rows:
        r["vs_dense_ft_pct"] = 100.0 * (r["ppl"] / dense["ppl"] - 1.0) if dense else None

    ppl1 = None
    if args.ppl1:
        best = args.ppl1_arm or ("mask-lora" if "mask-lora" in arms else min(
            (r for r in rows if r["arm"] != "dense-ft"), key=lambda r: r["ppl"], default=rows[0])["arm"])
        ppl1 = {}
        for arm in dict.fromkeys([best] + (["dense-ft"] if "dense-ft" in arms else [])):
            r = next(x for x in rows if x["arm"] == arm)
            _log(f"PPL-1% search ({args.ppl1_method}) on the {arm} model")
            model, _ = actlab.load_model(r["out"])
            found = _ppl1(model, calib, heldout, eval_w, args.ppl1_method)
            found["vs_dense_ft_pct"] = 100.0 * (found["ppl"] / dense["ppl"] - 1.0) if dense else None
            ppl1[arm] = found
    return {"model": args.model, "tokens_per_arm": args.tokens, "seq_len": args.seq_len, "batch_size": args.batch_size,
            "adapter": args.adapter, "eval_tokens": int(eval_w.numel()), "search_tokens": int(heldout.numel()),
            "calib_tokens": int(calib.numel()), "machine": machine_line(), "command": " ".join(sys.argv),
            "reference_json": str(args.reference) if args.reference and "dense-ft" not in arms else None,
            "reference": reference, "arms": rows, "ppl1": ppl1}


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:+.1f}%" if signed else f"{100 * x:.1f}%"


def table(res: dict[str, Any]) -> str:
    """The markdown tables of RESULTS.md."""
    lines = [f"| arm | what | PPL (eval, strict) | vs dense-FT | plan sparsity (model-wide, measured) | "
             f"MLP exact zeros (down_in) | act_out density > {EPS} |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, m in res["reference"].items():
        lines.append(f"| {name} | no training | {m['ppl']:.2f} | - | {_pct(m.get('sparsity_model_wide'))} | "
                     f"{_pct(m['zero_frac_down_in'])} | {_pct(m['density_act_out'])} |")
    for r in res["arms"]:
        lines.append(f"| {r['arm']} | {r['what']} | {r['ppl']:.2f} | {_pct(r['vs_dense_ft_pct'], True)} | "
                     f"{_pct(r.get('sparsity_model_wide'))} | {_pct(r['zero_frac_down_in'])} | "
                     f"{_pct(r['density_act_out'])} |")
    curves = [r for r in res["arms"] if r["arm"].startswith("relufy") and len(r["curve"]) > 2]
    if curves:
        lines += ["", "Against tokens trained (the loop's evaluations, at the training precision; exact zeros of "
                  "mlp.act_out):", "", "| arm | tokens | PPL | exact zeros | density > " + EPS + " |",
                  "|---|---:|---:|---:|---:|"]
        for r in curves:
            for c in r["curve"]:
                lines.append(f"| {r['arm']} | {c['tokens']:,} | {c['ppl']:.2f} | {_pct(c['zero_frac_act_out'])} | "
                             f"{_pct(c['density_act_out'])} |")
    if res.get("ppl1"):
        lines += ["", "| model | PPL-1% method | model-wide sparsity | held-out increase | eval increase | "
                  "PPL vs dense-FT |", "|---|---|---:|---:|---:|---:|"]
        for arm, p in res["ppl1"].items():
            lines.append(f"| {arm} | {p['method']} | {_pct(p['sparsity_model_wide'])} | "
                         f"{_pct(p['heldout_increase_pct'], True)} | {_pct(p['eval_increase_pct'], True)} | "
                         f"{_pct(p['vs_dense_ft_pct'], True)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    res = run(argv)
    _args(argv).json.write_text(json.dumps(res, indent=1) + "\n")
    print(f"Machine: {res['machine']}\nModel {res['model']}, {res['tokens_per_arm']:,} training tokens per arm "
          f"(calib split), adapter {res['adapter']}; eval split {res['eval_tokens']:,} tokens, strict\n")
    print(table(res))


if __name__ == "__main__":
    main()
