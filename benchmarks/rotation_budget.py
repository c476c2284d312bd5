"""Do rotated masks pay for themselves? Layer output error at equal weights read, per basis.

A rotated mask keeps the largest coordinates of ``z = x Q`` and multiplies ``W Q`` by them; unless ``Q`` is
folded into the weights, each token also reads ``Q`` (``d x d``), so at the same number of weights read the
rotated mask must be sparser. This script compares, for the post-norm inputs of q/k/v and gate/up of every
layer, the relative output error ``||W (x - x_kept)||^2 / ||W x||^2`` of a per-token magnitude mask (TEAL's
rule) at **equal weights read per token** (the ``--budget`` fraction of the layer's weights):

* ``channel``: no rotation (the mask at sparsity 1 - budget);
* ``pca/layer``: one principal-component basis per layer and input, whose ``d x d`` product is paid;
* ``pca/shared``: one basis of the RMS-normalised residual stream shared by every layer (norm scales folded
  into the weights): foldable into the embedding and every residual writer, hence free;
* ``lowrank r``: the top-``r`` principal components kept dense (``W P`` and ``P`` paid), the rest masked in
  the channel basis (rank-aware sparsity).

A proxy, not perplexity: errors do not compose linearly across layers. But a basis that does not lower the
error of one layer at equal cost will not lower perplexity either, which is what this rules in or out.

Example:
    python benchmarks/rotation_budget.py --tokens 2048 --budget 0.5 --json benchmarks/rotation_budget.json
"""

from __future__ import annotations

import argparse
import sys

import torch

# The norm in front of each input, for the llama family (the only one this proxy reads norm scales of; the
# adapter table maps sites and consumers, not norms).
NORM_OF = {"attn.qkv_in": "input_layernorm", "mlp.gate_up_in": "post_attention_layernorm"}


def masked_error(z: torch.Tensor, w: torch.Tensor, sparsity: float, whole: torch.Tensor | None = None) -> float:
    """Output error of ``w`` when the smallest ``sparsity`` of ``|z_i|`` per token are dropped, relative to
    ``w`` applied to ``whole`` (default ``z``; the full input when ``z`` is only the masked part of it)."""
    k = min(int(round(z.shape[1] * sparsity)), z.shape[1])
    if k <= 0:
        return 0.0
    thr = z.abs().kthvalue(k, dim=1, keepdim=True).values
    dropped = torch.where(z.abs() <= thr, z, torch.zeros_like(z))
    return float((dropped @ w.T).pow(2).sum() / ((z if whole is None else whole) @ w.T).pow(2).sum())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="default")
    ap.add_argument("--tokens", type=int, default=2048, help="calibration tokens the bases and errors are measured on")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--budget", type=float, default=0.5, help="fraction of the layer's weights read per token")
    ap.add_argument("--ranks", default="8,16,32,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)
    if not 0.0 < a.budget <= 1.0:
        ap.error("--budget must be in (0, 1]")

    import actlab
    from actlab.data.windows import make_windows
    from actlab.envinfo import machine_line
    from actlab.models.adapters import linear_weight
    from actlab.sparsity.groups import layer_groups
    from actlab.sparsity.rotation import pca_rotation, second_moment

    torch.set_num_threads(a.threads)
    model, tok = actlab.load_model(a.model)
    if getattr(model.config, "model_type", "") not in ("llama", "mistral", "qwen2", "qwen3"):
        sys.exit(f"error: {a.model} is {model.config.model_type!r}; this proxy reads llama-family norm scales only")
    windows = make_windows(actlab.load_corpus(a.data), tok, a.seq_len, a.tokens, split="calib")
    with torch.no_grad(), actlab.capture(model, sites=list(NORM_OF)) as cap:
        model.model(input_ids=windows)
        acts = {k: v.reshape(-1, v.shape[-1]).float().clone() for k, v in cap.tensors.items()}
    layers = model.model.layers
    n_layers = len(layers)
    consumers = {g.site: g.consumers for g in layer_groups(model, kinds=tuple(NORM_OF))}

    def weights(layer: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        paths = consumers[f"layers.{layer}.{kind}"]
        w = torch.cat([linear_weight(model.get_submodule(p)) for p in paths]).detach().float()
        return w, layers[layer].get_submodule(NORM_OF[kind]).weight.detach().float()

    # The shared basis: pooled second moment of the normalised residual stream (scales divided out), each
    # input weighted equally.
    shared = 0
    for kind in NORM_OF:
        for i in range(n_layers):
            x = acts[f"layers.{i}.{kind}"]
            u = x / weights(i, kind)[1]
            shared = shared + second_moment(u) / u.double().pow(2).sum()
    q_shared = pca_rotation(shared)
    ranks = [int(r) for r in a.ranks.split(",") if r]
    rows = []
    with torch.no_grad():
        for kind in NORM_OF:
            errs: dict[str, list[float]] = {}
            levels: dict[str, float] = {}
            for i in range(n_layers):
                x = acts[f"layers.{i}.{kind}"]
                w, gamma = weights(i, kind)
                out, d = w.shape
                base = 1.0 - a.budget
                levels["channel"] = base
                errs.setdefault("channel", []).append(masked_error(x, w, base))
                q = pca_rotation(second_moment(x))
                s_rot = min(base + d * d / (out * d), 1.0)
                levels["pca/layer"] = s_rot
                errs.setdefault("pca/layer", []).append(masked_error(x @ q, w @ q, s_rot))
                levels["pca/shared"] = base
                errs.setdefault("pca/shared", []).append(masked_error((x / gamma) @ q_shared, (w * gamma) @ q_shared, base))
                for r in ranks:
                    s_lr = min(base + r * (out + 2 * d) / (out * d), 1.0)
                    levels[f"lowrank {r}"] = s_lr
                    p = q[:, :r]  # top-r components kept exactly, the residual masked in the channel basis
                    errs.setdefault(f"lowrank {r}", []).append(masked_error(x - (x @ p) @ p.T, w, s_lr, whole=x))
            for name, v in errs.items():
                rows.append({"input": kind, "basis": name, "mask_sparsity": levels[name],
                             "rel_error_mean": sum(v) / len(v), "rel_error_max": max(v)})
    res = {"model": a.model, "tokens": int(windows.numel()), "budget": a.budget, "machine": machine_line(),
           "command": "python benchmarks/rotation_budget.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "rows": rows}
    print(f"model {a.model}, {res['tokens']} calib tokens, {a.budget:.0%} of each layer's weights read per token")
    print("\n| input | basis | mask sparsity | rel. output error (mean over layers) | worst layer | vs channel |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        if r["mask_sparsity"] >= 1.0:
            print(f"| {r['input']} | {r['basis']} | infeasible: the rotation alone reads more than the budget | | | |")
            continue
        ref = next(x for x in rows if x["input"] == r["input"] and x["basis"] == "channel")["rel_error_mean"]
        print(f"| {r['input']} | {r['basis']} | {r['mask_sparsity']:.1%} | {r['rel_error_mean']:.4f} | "
              f"{r['rel_error_max']:.4f} | {r['rel_error_mean'] / ref:.2f}x |")
    if a.json:
        from actlab.outputs import write_json_atomic

        write_json_atomic(a.json, res)
    return res


if __name__ == "__main__":
    main()
