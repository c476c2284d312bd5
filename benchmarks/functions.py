"""Activation functions, LSUV and activation shaping at small scale -> the issue 14 section of RESULTS.md.

Everything is offline and small: scikit-learn's digits (1,797 8x8 images, a fixed stratified 70/30 split)
and the default corpus (stdlib prose, character level, disjoint calib/eval windows of actlab's split
scheme). Per activation function of the table (``--functions``) x {PyTorch's default init, LSUV}:

* **digits MLP**: 8 Linear layers (7 activations), width 64, plain (no norm, no residual), batch 64,
  ``--mlp-steps`` steps, twice: SGD momentum 0.9 (the LSUV paper's setting) and Adam, each at one learning
  rate for every function (no per-function tuning, no gradient clipping: a divergence is reported as one);
* **digits CNN**: conv16-conv32-pool-conv32-pool-fc64-fc10 (5 activations), Adam;
  for both: final test accuracy, steps to ``--target`` test accuracy (evaluated every ``--eval-every``
  steps), median ms per training step, and the sparsity of the activation outputs on the test set:
  **exact zeros** (share of outputs == 0, over every activation) and **CETT-style**: for an activation ``h``
  feeding a Linear ``W``, unit ``i`` contributes ``n_i = |h_i| ||W[:, i]||``; dropping every unit with
  ``n_i <= t`` leaves the relative error ``CETT(t) = ||W (h 1[n <= t])|| / ||W h||``, averaged over inputs;
  the share is the fraction of units dropped at the ``t`` where the average CETT reaches ``--cett`` (0.2).
  That is actlab's CETT (``actlab.activations.cett.CettCurve``, ``sparsity/methods/cett.py``: Luo et al.,
  "Sparsing Law"; Zhang et al., "ReLU^2 Wins"), with ``W`` the next Linear in place of ``W_down``; one
  threshold per layer, on a grid of 128 quantiles of ``n``. MLP: every hidden activation; CNN: the fc one
  (conv outputs feed convolutions, where a unit's contribution is not one column);
* **activation codes** (``actlab.code_metrics``) of every trained MLP: unit on when its output is > 0
  (for ReLU-like functions the ReLU pattern; for GELU/SiLU/ELU... the sign of the pre-activation):
  determinism, purity, nearest-code test accuracy;
* **char-level transformer** (``--lm-functions``): 3 pre-LN blocks, d 96, 4 heads, MLP 4x with the
  function, context 128, AdamW, ``--lm-steps`` steps; eval loss (nats/char) on eval windows and the
  MLP activation's exact zeros and CETT share (``W`` = the down projection);
* **OOD on digits**: a 2x256 MLP (ReLU, and GELU for contrast) trained on digits; in-distribution test
  digits against Gaussian noise, digits rotated 90 degrees, inverted digits and 8x8 patches of
  scikit-learn's two sample photographs; AUROC and FPR95 of every score (``actlab.fit_detector``);
* **OOD on SmolLM2** (``--no-lm-ood`` to skip): mean-pooled ``resid_out`` of a middle and the last layer,
  default-corpus prose as in-distribution against the stdlib's code and message strings
  (``load_corpus("stdlib-code" / "stdlib-messages")``), Mahalanobis and feature norm;
* per function, the table's own measurement (``actlab.functions.measure``): exact zeros and near zeros
  (``|f| < 1% std``) at N(0, 1), ns/element of the forward at one thread.

Nothing here is a test; times on a shared machine are upper bounds.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/functions.py --threads 1 --json benchmarks/functions.json
    OMP_NUM_THREADS=1 python benchmarks/functions.py --quick --json /tmp/functions.json   # smoke, ~1 min
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FUNCTIONS = ["relu", "leaky_relu", "relu2", "gelu", "silu", "mish", "elu", "selu", "tanh", "softplus", "hardswish",
             "pau", "sau"]
LM_FUNCTIONS = ["relu", "relu2", "gelu", "silu", "leaky_relu", "pau"]
RELU_FAMILY = ("relu", "leaky_relu", "relu2")
INITS = ("default", "lsuv")
OOD_SCORES: dict[str, dict[str, Any]] = {
    "msp": {}, "max-logit": {}, "energy": {}, "react": {"percentile": 0.9}, "ash-p": {"percentile": 0.65},
    "ash-b": {"percentile": 0.65}, "ash-s": {"percentile": 0.65}, "scale": {"percentile": 0.65},
    "mahalanobis": {}, "feature-norm": {},
}


class Act(nn.Module):
    """One activation of the table; one class for all, so ``module_sites(net, Act)`` finds every one."""

    def __init__(self, name: str) -> None:
        super().__init__()
        from actlab.functions import get_function

        self.f = get_function(name).module()  # a fresh module: learnable ones (PAU, SAU) per layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)


# --- data ------------------------------------------------------------------------------------------------------


def digits() -> dict[str, torch.Tensor]:
    """Standardised digits (per pixel, sd floored at 1 grey level), fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    mu, sd = xtr.mean(0), xtr.std(0).clip(1.0)
    f = lambda a: torch.tensor((a - mu) / sd, dtype=torch.float32)  # noqa: E731
    return {"xtr": f(xtr), "xte": f(xte), "ytr": torch.tensor(ytr), "yte": torch.tensor(yte),
            "raw_tr": torch.tensor(xtr / 16.0, dtype=torch.float32), "raw_te": torch.tensor(xte / 16.0, dtype=torch.float32)}


def mlp(act: str, depth: int = 8, width: int = 64) -> nn.Sequential:
    dims = [64] + [width] * (depth - 1) + [10]
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < depth - 1:
            layers.append(Act(act))
    return nn.Sequential(*layers)


class Image(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, 1, 8, 8)


def cnn(act: str) -> nn.Sequential:
    return nn.Sequential(
        Image(), nn.Conv2d(1, 16, 3, padding=1), Act(act), nn.Conv2d(16, 32, 3, padding=1), Act(act),
        nn.MaxPool2d(2),  # [B, 32, 4, 4]
        nn.Conv2d(32, 32, 3, padding=1), Act(act), nn.MaxPool2d(2),  # [B, 32, 2, 2]
        nn.Flatten(), nn.Linear(128, 64), Act(act), nn.Linear(64, 10))


# --- sparsity ----------------------------------------------------------------------------------------------------


def consumers(net: nn.Module) -> dict[str, nn.Linear]:
    """Act path -> the Linear right after it in a Sequential (what its outputs are multiplied by)."""
    out = {}
    for path, m in net.named_modules():
        if isinstance(m, nn.Sequential):
            kids = list(m.named_children())
            for (n1, a), (_, b) in zip(kids, kids[1:], strict=False):
                if isinstance(a, Act) and isinstance(b, nn.Linear):
                    out[f"{path}.{n1}" if path else n1] = b
    return out


def cett_share(h: torch.Tensor, w: torch.Tensor, target: float, grid: int = 128) -> float | None:
    """Share of units dropped where the mean CETT reaches ``target`` (actlab's CettCurve on a quantile grid)."""
    from actlab.activations.cett import CettCurve

    n = (h.abs() * w.norm(dim=0)).flatten()
    t = torch.unique(torch.quantile(n[:1 << 20].double(), torch.linspace(0, 1, grid, dtype=torch.float64)))
    curve = CettCurve(t, w)
    curve.update(h)
    return curve.sparsity_at(target)


@torch.no_grad()
def activation_sparsity(net: nn.Module, x: torch.Tensor, target: float, max_rows: int = 1024,
                        seed: int = 0) -> dict[str, Any]:
    from actlab import capture, module_sites

    sites = module_sites(net, Act)
    seen: dict[str, list[torch.Tensor]] = {}
    with capture(net, sites, fn=lambda s, t: seen.setdefault(s.name, []).append(t.detach())):
        net(x)
    zeros = total = 0
    for parts in seen.values():
        for t in parts:
            zeros += int((t == 0).sum())
            total += t.numel()
    g = torch.Generator().manual_seed(seed)
    shares = []
    for path, lin in consumers(net).items():
        h = torch.cat(seen[path]).reshape(-1, lin.in_features)  # [rows, d]
        if h.shape[0] > max_rows:
            h = h[torch.randperm(h.shape[0], generator=g)[:max_rows]]
        shares.append(cett_share(h, lin.weight.detach(), target))
    ok = [s for s in shares if s is not None]
    return {"zeros": zeros / total, "cett": statistics.fmean(ok) if ok else None,
            "cett_per_layer": shares}


# --- digits --------------------------------------------------------------------------------------------------


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def train_digits(net: nn.Module, d: dict[str, torch.Tensor], steps: int, opt_name: str, lr: float, seed: int,
                 target: float, eval_every: int, early_step: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    opt = (torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9) if opt_name == "sgd"
           else torch.optim.Adam(net.parameters(), lr=lr))
    times, curve, reached, diverged = [], [], None, False
    for s in range(1, steps + 1):
        idx = torch.randint(0, len(d["xtr"]), (64,), generator=g)
        t0 = time.perf_counter()
        loss = F.cross_entropy(net(d["xtr"][idx]), d["ytr"][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        if not math.isfinite(float(loss.detach())):
            diverged = True
            break
        if s % eval_every == 0:
            acc = accuracy(net, d["xte"], d["yte"])
            curve.append((s, round(acc, 4)))
            if reached is None and acc >= target:
                reached = s
    early = next((acc for s, acc in curve if s >= early_step), None)
    return {"test_acc": accuracy(net, d["xte"], d["yte"]) if not diverged else None, "steps_to_target": reached,
            "early_acc": early,
            "ms_per_step": 1e3 * statistics.median(times), "diverged": diverged, "curve": curve}


def init_(net: nn.Module, init: str, batch: Any, seed: int) -> dict[str, Any] | None:
    if init == "default":
        return None
    from actlab import lsuv_

    t0 = time.perf_counter()
    rep = lsuv_(net, batch, generator=torch.Generator().manual_seed(seed))
    return {"converged": rep.converged, "passes": sum(x.passes for x in rep.layers), "layers": len(rep.layers),
            "seconds": round(time.perf_counter() - t0, 3)}


def digits_runs(a: argparse.Namespace, d: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    from actlab import code_metrics, module_sites

    rows = []
    train_b = [(d["xtr"][i:i + 512], d["ytr"][i:i + 512]) for i in range(0, len(d["xtr"]), 512)]
    test_b = [(d["xte"], d["yte"])]
    arms = (("mlp", "sgd", mlp, a.mlp_steps, a.lr), ("mlp", "adam", mlp, a.mlp_steps, a.adam_lr),
            ("cnn", "adam", cnn, a.cnn_steps, a.adam_lr))
    for arch, opt, build, steps, lr in arms:
        for fn in a.functions:
            for init in INITS:
                for seed in range(a.seeds):
                    torch.manual_seed(seed)
                    net = build(fn)
                    lsuv = init_(net, init, d["xtr"][:256], seed)
                    r = train_digits(net, d, steps, opt, lr, seed, a.target, a.eval_every, a.early)
                    row = {"arch": arch, "opt": opt, "function": fn, "init": init, "seed": seed, "lsuv": lsuv, **r}
                    if not r["diverged"]:
                        row["sparsity"] = activation_sparsity(net, d["xte"], a.cett)
                        if arch == "mlp":
                            sites = module_sites(net, Act)
                            row["codes"] = code_metrics(net, sites, train_b, test_b)
                            last = list(sites)[-1]  # 64 bits: short enough for codes to collide
                            row["codes_last"] = code_metrics(net, {last: sites[last]}, train_b, test_b)
                    rows.append(row)
                    print(f"  {arch} {opt} {fn:<10} {init:<7} seed {seed}: acc {r['test_acc']}, to {a.target:.0%} "
                          f"{r['steps_to_target']}, {r['ms_per_step']:.2f} ms/step", file=sys.stderr, flush=True)
    return rows


# --- char-level transformer ---------------------------------------------------------------------------------


class CharTokenizer:
    """Characters seen at least ``min_count`` times in the corpus, the rest one unknown id (0)."""

    eos_token_id = None
    bos_token_id = None

    def __init__(self, documents: list[str], min_count: int = 20) -> None:
        counts: dict[str, int] = {}
        for doc in documents:
            for ch in doc:
                counts[ch] = counts.get(ch, 0) + 1
        self.vocab = {ch: i + 1 for i, ch in enumerate(sorted(c for c, n in counts.items() if n >= min_count))}

    def __len__(self) -> int:
        return len(self.vocab) + 1

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        return {"input_ids": [[self.vocab.get(ch, 0) for ch in t] for t in texts]}


class Block(nn.Module):
    def __init__(self, d: int, heads: int, act: str) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), Act(act), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # [3, B, H, T, hd]
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, hd]
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.ln2(x))


class CharLM(nn.Module):
    def __init__(self, vocab: int, act: str, d: int = 96, layers: int = 3, heads: int = 4, ctx: int = 128) -> None:
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.Sequential(*[Block(d, heads, act) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        return self.head(self.ln(self.blocks(x)))  # [B, T, vocab]


def lm_loss(model: nn.Module, w: torch.Tensor) -> torch.Tensor:
    logits = model(w[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1))


def lm_runs(a: argparse.Namespace) -> dict[str, Any]:
    from actlab import load_corpus
    from actlab.data.windows import make_windows

    corpus = load_corpus("default")
    tok = CharTokenizer(corpus.documents)
    ctx = a.lm_ctx
    train = make_windows(corpus, tok, ctx + 1, split="calib")  # [n, ctx + 1]
    evals = make_windows(corpus, tok, ctx + 1, num_tokens=a.lm_eval_windows * (ctx + 1), split="eval", seed=0)
    rows = []
    for fn in a.lm_functions:
        for init in INITS:
            torch.manual_seed(0)
            model = CharLM(len(tok), fn, d=a.lm_d, layers=a.lm_layers, ctx=ctx)
            g = torch.Generator().manual_seed(0)
            lsuv = init_(model, init, train[torch.randperm(len(train), generator=g)[:16], :-1], 0)
            opt = torch.optim.AdamW(model.parameters(), lr=a.lm_lr, weight_decay=0.01)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
            times, curve, diverged = [], [], False
            for s in range(1, a.lm_steps + 1):
                batch = train[torch.randint(0, len(train), (a.lm_batch,), generator=g)]
                t0 = time.perf_counter()
                loss = lm_loss(model, batch)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                times.append(time.perf_counter() - t0)
                if not math.isfinite(float(loss.detach())):
                    diverged = True
                    break
                if s % max(1, a.lm_steps // 4) == 0:
                    curve.append((s, round(float(loss.detach()), 4)))
            with torch.no_grad():
                ev = None if diverged else float(torch.stack([lm_loss(model, evals[i:i + 16])
                                                              for i in range(0, len(evals), 16)]).mean())
                sp = None if diverged else activation_sparsity(model, evals[:16, :-1], a.cett, max_rows=512)
            rows.append({"function": fn, "init": init, "lsuv": lsuv, "eval_loss": ev, "train_curve": curve,
                         "ms_per_step": 1e3 * statistics.median(times), "diverged": diverged, "sparsity": sp})
            print(f"  lm {fn:<10} {init:<7}: eval loss {ev}, {1e3 * statistics.median(times):.0f} ms/step",
                  file=sys.stderr, flush=True)
    return {"vocab": len(tok), "train_windows": len(train), "eval_windows": len(evals), "ctx": ctx, "rows": rows}


# --- OOD ---------------------------------------------------------------------------------------------------------


def ood_sets(x: torch.Tensor, seed: int = 1) -> dict[str, torch.Tensor]:
    """Outliers built from the test digits ``x`` [N, 64] in [0, 1], and photo patches of the same count."""
    import numpy as np
    from sklearn.datasets import load_sample_images

    g = torch.Generator().manual_seed(seed)
    imgs = x.reshape(-1, 8, 8)
    out = {
        "noise": (x.mean() + x.std() * torch.randn(x.shape, generator=g)).clamp(0, 1),
        "rotated-90": torch.rot90(imgs, 1, dims=(1, 2)).reshape(-1, 64),
        "inverted": 1.0 - x,
    }
    photos = torch.tensor(np.stack(load_sample_images().images), dtype=torch.float32).mean(-1) / 255.0  # [2, 427, 640]
    small = F.avg_pool2d(photos[:, None], 4)[:, 0]  # [2, 106, 160]: digit-like coarseness
    i = torch.randint(0, small.shape[1] - 8, (len(x),), generator=g)
    j = torch.randint(0, small.shape[2] - 8, (len(x),), generator=g)
    k = torch.randint(0, 2, (len(x),), generator=g)
    out["photo-patches"] = torch.stack([small[a, b:b + 8, c:c + 8] for a, b, c in zip(k, i, j, strict=True)]).reshape(-1, 64)
    return out


def digits_ood(a: argparse.Namespace, d: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    from actlab import classifier_features, fit_detector, ood_metrics

    outliers = ood_sets(d["raw_te"])
    rows = []
    for fn in ("relu", "gelu"):
        for seed in range(a.seeds):
            torch.manual_seed(seed)
            net = nn.Sequential(nn.Linear(64, 256), Act(fn), nn.Linear(256, 256), Act(fn), nn.Linear(256, 10))
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)
            g = torch.Generator().manual_seed(seed)
            for _ in range(a.ood_steps):
                idx = torch.randint(0, len(d["raw_tr"]), (64,), generator=g)
                loss = F.cross_entropy(net(d["raw_tr"][idx]), d["ytr"][idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            acc = accuracy(net, d["raw_te"], d["yte"])
            f_tr, f_te = classifier_features(net, d["raw_tr"]), classifier_features(net, d["raw_te"])
            f_out = {k: classifier_features(net, v).features for k, v in outliers.items()}
            for score, params in OOD_SCORES.items():
                det = fit_detector(score, f_tr.features, labels=d["ytr"], head=f_tr.head, **params)
                s_in = det.score(f_te.features)
                for k, z in f_out.items():
                    m = ood_metrics(s_in, det.score(z))
                    rows.append({"function": fn, "seed": seed, "test_acc": acc, "score": score, "outliers": k,
                                 "AUROC": m["AUROC"], "FPR95": m["FPR95TPR"]})
    return rows


def lm_ood(a: argparse.Namespace) -> dict[str, Any]:
    import actlab
    from actlab import fit_detector, lm_features, load_corpus, ood_metrics

    t0 = time.perf_counter()
    model, tok = actlab.load_model("smollm2-135m")
    model.eval()

    def sample(spec: str, n: int, seed: int) -> list[str]:
        docs = [doc for doc in load_corpus(spec).documents if len(doc) > 200]
        random.Random(seed).shuffle(docs)
        return docs[:n]

    n = a.lm_ood_docs
    prose = sample("default", 2 * n, 0)
    sets = {"fit": prose[:n], "prose": prose[n:], "stdlib-code": sample("stdlib-code", n, 1),
            "stdlib-messages": sample("stdlib-messages", n, 2)}
    layers = model.config.num_hidden_layers
    rows = []
    for site in (f"layers.{layers // 2}.resid_out", f"layers.{layers - 1}.resid_out"):
        f = {k: lm_features(model, v, tok, site=site, pool="mean", max_length=a.lm_ood_tokens) for k, v in sets.items()}
        for score, params in (("mahalanobis", {}), ("feature-norm", {})):
            det = fit_detector(score, f["fit"], **params)
            s_in = det.score(f["prose"])
            for k in ("stdlib-code", "stdlib-messages"):
                m = ood_metrics(s_in, det.score(f[k]))
                rows.append({"site": site, "score": score, "outliers": k, "AUROC": m["AUROC"], "FPR95": m["FPR95TPR"]})
    return {"docs": {k: len(v) for k, v in sets.items()}, "max_tokens": a.lm_ood_tokens, "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1)}


# --- report ------------------------------------------------------------------------------------------------------


def _ms(xs: list[float | None], fmt: str = "{:.3f}") -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(statistics.fmean(xs))} ± {fmt.format(statistics.stdev(xs))}"


def _pct(xs: list[float | None]) -> str:
    xs = [x for x in xs if x is not None]
    return f"{100 * statistics.fmean(xs):.1f}%" if xs else "-"


def print_tables(out: dict[str, Any], a: argparse.Namespace) -> None:
    meas = out["measured"]
    rows = out["digits"]
    for arch, opt, what in (("mlp", "sgd", f"digits MLP, 8 Linear x 64, SGD lr {a.lr} momentum 0.9, {a.mlp_steps} steps"),
                            ("mlp", "adam", f"digits MLP, 8 Linear x 64, Adam lr {a.adam_lr}, {a.mlp_steps} steps"),
                            ("cnn", "adam", f"digits CNN, Adam lr {a.adam_lr}, {a.cnn_steps} steps")):
        print(f"\n{what}; {a.seeds} seeds (mean ± sample std); steps to {a.target:.0%} test accuracy per seed "
              f"(- = not reached); sparsity of the activation outputs on the test set\n")
        print(f"| function | init | test acc | acc at step {a.early} | steps to target | exact zeros | CETT-{a.cett:g} share "
              "| ms/step |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for fn in a.functions:
            for init in INITS:
                rs = [r for r in rows if (r["arch"], r["opt"], r["function"], r["init"]) == (arch, opt, fn, init)]
                div = sum(r["diverged"] for r in rs)
                steps = ", ".join("-" if r["steps_to_target"] is None else str(r["steps_to_target"]) for r in rs)
                sp = [r.get("sparsity") or {} for r in rs]
                print(f"| {fn} | {init} | {_ms([r['test_acc'] for r in rs])}{f' ({div} diverged)' if div else ''} "
                      f"| {_ms([r['early_acc'] for r in rs])} | {steps} | {_pct([s.get('zeros') for s in sp])} | {_pct([s.get('cett') for s in sp])} "
                      f"| {statistics.median(r['ms_per_step'] for r in rs):.2f} |")
    print("\nActivation codes of the trained MLPs (7 x 64 = 448 bits, unit on when its output > 0), test set "
          "nearest-code accuracy vs the network's own\n")
    print("| function | optimiser, init | codes / inputs | determinism | purity | nearest-code acc | last layer only (64 bits): "
          "determinism / purity / nearest-code acc | network acc |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for fn, opt, init in ((f, o, i) for f in a.functions for o in ("sgd", "adam") for i in INITS):
        rs = [r for r in rows if (r["arch"], r["opt"], r["function"], r["init"]) == ("mlp", opt, fn, init)
              and "codes" in r]
        if not rs:
            continue
        c, cl = [r["codes"] for r in rs], [r["codes_last"] for r in rs]
        last = " / ".join(f"{statistics.fmean(x[k] for x in cl):.3f}"
                          for k in ("determinism", "purity", "nearest_code_accuracy"))
        print(f"| {fn} | {opt}, {init} | {statistics.fmean(x['codes'] for x in c):.0f} / {c[0]['inputs']} "
              f"| {_ms([x['determinism'] for x in c])} | {_ms([x['purity'] for x in c])} "
              f"| {_ms([x['nearest_code_accuracy'] for x in c])} | {last} | {_ms([r['test_acc'] for r in rs])} |")
    if out.get("lm"):
        lm = out["lm"]
        print(f"\nChar-level transformer ({a.lm_layers} blocks, d {a.lm_d}, ctx {lm['ctx']}, vocab {lm['vocab']}), "
              f"{a.lm_steps} steps x {a.lm_batch} windows, AdamW {a.lm_lr}; eval loss on {lm['eval_windows']} eval "
              "windows (nats/char); MLP activation sparsity on 16 eval windows\n")
        print(f"| function | init | eval loss | exact zeros | CETT-{a.cett:g} share | ms/step |")
        print("|---|---|---:|---:|---:|---:|")
        for r in lm["rows"]:
            sp = r["sparsity"] or {}
            ev = "diverged" if r["eval_loss"] is None else f"{r['eval_loss']:.3f}"
            print(f"| {r['function']} | {r['init']} | {ev} | {_pct([sp.get('zeros')])} | {_pct([sp.get('cett')])} "
                  f"| {r['ms_per_step']:.0f} |")
    ood = out["ood_digits"]
    sets = list(dict.fromkeys(r["outliers"] for r in ood))
    for fn in dict.fromkeys(r["function"] for r in ood):
        accs = sorted({r["test_acc"] for r in ood if r["function"] == fn})
        print(f"\nOOD on digits, 2x256 {fn} MLP (test acc {', '.join(f'{x:.3f}' for x in accs)}); AUROC / FPR95, "
              f"mean over {a.seeds} seeds\n")
        print("| score | " + " | ".join(sets) + " |")
        print("|---|" + "---:|" * len(sets))
        for score in OOD_SCORES:
            cells = []
            for k in sets:
                rs = [r for r in ood if r["function"] == fn and r["score"] == score and r["outliers"] == k]
                cells.append(f"{statistics.fmean(r['AUROC'] for r in rs):.3f} / {statistics.fmean(r['FPR95'] for r in rs):.2f}")
            print(f"| {score} | " + " | ".join(cells) + " |")
    if out.get("ood_lm"):
        lo = out["ood_lm"]
        print(f"\nOOD on SmolLM2, mean-pooled resid_out, first {lo['max_tokens']} tokens, docs {lo['docs']}; "
              "AUROC / FPR95\n")
        print("| site | score | stdlib-code | stdlib-messages |")
        print("|---|---|---:|---:|")
        for site in dict.fromkeys(r["site"] for r in lo["rows"]):
            for score in ("mahalanobis", "feature-norm"):
                rs = {r["outliers"]: r for r in lo["rows"] if r["site"] == site and r["score"] == score}
                print(f"| {site} | {score} | " + " | ".join(f"{rs[k]['AUROC']:.3f} / {rs[k]['FPR95']:.2f}"
                                                         for k in ("stdlib-code", "stdlib-messages")) + " |")
    print("\nThe table's own measurement (actlab.functions.measure, 2^20 draws of N(0, 1), 1 thread)\n")
    print("| function | zeros at N(0,1) | near zeros (< 1% std) | ns/element |")
    print("|---|---:|---:|---:|")
    for fn in a.functions:
        m = meas[fn]
        print(f"| {fn} | {m['zeros']:.1%} | {m['near_zero']:.1%} | {m['ns_per_element']:.2f} |")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--functions", nargs="+", default=FUNCTIONS)
    ap.add_argument("--lm-functions", nargs="+", default=LM_FUNCTIONS)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--mlp-steps", type=int, default=500)
    ap.add_argument("--cnn-steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (momentum 0.9) of the digits MLP")
    ap.add_argument("--adam-lr", type=float, default=1e-3, help="Adam learning rate of the digits MLP and CNN")
    ap.add_argument("--target", type=float, default=0.9, help="test accuracy for 'steps to target'")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--early", type=int, default=100, help="step of the 'early accuracy' column")
    ap.add_argument("--cett", type=float, default=0.2, help="CETT level of the CETT-style sparsity")
    ap.add_argument("--lm-steps", type=int, default=250)
    ap.add_argument("--lm-batch", type=int, default=16)
    ap.add_argument("--lm-ctx", type=int, default=128)
    ap.add_argument("--lm-d", type=int, default=96)
    ap.add_argument("--lm-layers", type=int, default=3)
    ap.add_argument("--lm-lr", type=float, default=2e-3)
    ap.add_argument("--lm-eval-windows", type=int, default=64)
    ap.add_argument("--ood-steps", type=int, default=300)
    ap.add_argument("--lm-ood-docs", type=int, default=40, help="SmolLM2 OOD: documents per set")
    ap.add_argument("--lm-ood-tokens", type=int, default=64)
    ap.add_argument("--no-lm", action="store_true", help="skip the char-level transformer")
    ap.add_argument("--no-lm-ood", action="store_true", help="skip SmolLM2 OOD")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 functions, 1 seed, few steps, tiny LM")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write everything (and the command) here")
    a = ap.parse_args(argv)
    if a.quick:
        a.functions, a.lm_functions, a.seeds = ["relu", "gelu", "pau"], ["relu", "pau"], 1
        a.mlp_steps = a.cnn_steps = a.ood_steps = 60
        a.lm_steps, a.lm_eval_windows, a.lm_ood_docs, a.lm_ood_tokens = 8, 16, 6, 16
    torch.set_num_threads(a.threads)

    from actlab.envinfo import load_average, machine_line
    from actlab.functions import get_function, measure_all

    for fn in {*a.functions, *a.lm_functions}:
        get_function(fn)  # unknown names fail here, before minutes of training
    t_start = time.perf_counter()
    out: dict[str, Any] = {"machine": machine_line(), "load_before": load_average(), "config": vars(a).copy()}
    timings = {}
    t0 = time.perf_counter()
    out["measured"] = measure_all(cost=True, n=1 << 20, reps=15)
    timings["measure"] = time.perf_counter() - t0
    d = digits()
    t0 = time.perf_counter()
    out["digits"] = digits_runs(a, d)
    timings["digits"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out["ood_digits"] = digits_ood(a, d)
    timings["ood_digits"] = time.perf_counter() - t0
    if not a.no_lm:
        t0 = time.perf_counter()
        out["lm"] = lm_runs(a)
        timings["lm"] = time.perf_counter() - t0
    if not a.no_lm_ood:
        t0 = time.perf_counter()
        out["ood_lm"] = lm_ood(a)
        timings["ood_lm"] = time.perf_counter() - t0
    out["seconds"] = {k: round(v, 1) for k, v in {**timings, "total": time.perf_counter() - t_start}.items()}
    out["load_after"] = load_average()
    print(out["machine"])
    print_tables(out, a)
    print(f"\nseconds: {out['seconds']}; load average before {out['load_before']}, after {out['load_after']}")
    if a.json:
        from actlab.outputs import write_json_atomic

        out["command"] = "python benchmarks/functions.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_json_atomic(a.json, out)
    return out


if __name__ == "__main__":
    main()
