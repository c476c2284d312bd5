"""CETT on the MLP down inputs combined with WINA (global allocation) on every other input, at one model-wide sparsity.

CETT picks one threshold per layer on the down input's neuron output norms ``|x_i| * ||W_down[:, i]||`` (the
WINA score of that input) so that the layer's CETT stays under a target; WINA with the global (Fisher-damage)
allocation then spends the rest of the model-wide budget on q/k/v, o and gate/up. The two plans touch disjoint
inputs, so ``actlab.merge_plans`` makes them one plan, evaluated like any other. The row to beat is
``wina global`` (and ``teal global``) at the same sparsity in the Quality table.

Example:
    python benchmarks/cett_wina.py --sparsity 0.5 --cett 0.05 0.1 0.2 --json benchmarks/cett_wina.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def _cli(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "actlab", *args, "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsity", type=float, default=0.5, help="model-wide target of the combined plan")
    ap.add_argument("--cett", type=float, nargs="+", default=[0.1, 0.2], help="CETT targets for the down inputs")
    ap.add_argument("--tokens", type=int, default=16384, help="calibration tokens")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--json", help="also write the rows (and the command) here")
    a = ap.parse_args(argv)

    from actlab import merge_plans
    from actlab.sparsity.plan import SparsityPlan

    common = ["--model", a.model, "--seq-len", str(a.seq_len)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in a.cett:
            cett_dir, wina_dir, both_dir = (str(Path(tmp) / f"{n}-{c}") for n in ("cett", "wina", "both"))
            down = _cli("calibrate", *common, "--method", "cett", "--cett", str(c), "--tokens", str(a.tokens), "--out", cett_dir)
            rest = a.sparsity - down["sparsity_model_wide"]
            if rest <= 0:
                print(f"CETT {c}: the down inputs alone reach {down['sparsity_model_wide']:.1%}; skipped", file=sys.stderr)
                continue
            _cli("calibrate", *common, "--method", "wina", "--allocation", "global", "--sites", "attn.qkv_in",
                 "--sites", "attn.o_in", "--sites", "mlp.gate_up_in", "--sparsity", f"{rest:.4f}",
                 "--tokens", str(a.tokens), "--out", wina_dir)
            merge_plans(SparsityPlan.load(cett_dir), SparsityPlan.load(wina_dir)).save(both_dir)
            ev = _cli("eval", *common, "--plan", both_dir, "--tokens", str(a.eval_tokens), "--protocol", "strict")
            rows.append({"cett": c, "down_sparsity_model_wide": down["sparsity_model_wide"], "wina_rest": rest,
                         "sparsity_model_wide": ev["sparsity_model_wide"], "ppl_dense": ev["ppl_dense"],
                         "ppl": ev["ppl"], "ppl_increase_pct": ev["ppl_increase_pct"]})
    print(f"model {a.model}, target {a.sparsity:.0%} model-wide, strict protocol, {a.eval_tokens} eval tokens\n")
    print("| CETT (down) | model-wide from down | WINA global on the rest | measured sparsity | PPL | increase |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['cett']:g} | {r['down_sparsity_model_wide']:.1%} | {r['wina_rest']:.1%} | {r['sparsity_model_wide']:.1%} "
              f"| {r['ppl']:.2f} | {r['ppl_increase_pct']:+.1f}% |")
    if a.json:
        from actlab.outputs import write_json_atomic

        cmd = "python benchmarks/cett_wina.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_json_atomic(a.json, {"command": cmd, "model": a.model, "target": a.sparsity, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
