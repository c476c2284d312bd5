"""One steering example and one activation-patching map on SmolLM2, with the numbers behind them.

1. Steering (difference of means, CAA): a vector from ``--pairs-n`` contrastive sentiment pairs (positive vs
   negative sentences, built below) at ``--layers``. Measured on neutral prompts the pairs never contain:
   the next-token log-probability of positive words minus negative words (mean over prompts and words,
   each word's first token), at each scale in ``--scales``; then a greedy generation of each prompt
   unsteered and at ``±--scale``. Prompts and words are listed below, so the number can be re-derived.
2. Patching: ``"The Eiffel Tower is in the city of"`` (answer " Paris") against a corrupted subject of the
   same token length (answer " Rome"); the share of the logit difference restored by patching each
   layer × site kind (all positions), and per position for the residual stream. Maps written as PNG.

    OMP_NUM_THREADS=1 python benchmarks/interpret_interventions.py --threads 1 --out runs/interventions
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

GOOD = ["wonderful", "great", "lovely", "delightful", "excellent", "fantastic", "beautiful", "amazing"]
BAD = ["terrible", "awful", "horrible", "dreadful", "miserable", "disgusting", "ugly", "boring"]
SUBJECTS = ["The film", "Our trip", "The meal", "This book", "The concert", "My weekend", "The hotel", "The party",
            "The game", "Her speech", "The garden", "His song"]
PROMPTS = ["I think that the weather today is", "My opinion of the new phone is that it is",
           "When I walked into the room, I felt", "The movie I watched last night was"]
# the measured words are disjoint from the words the pairs contrast
POS_WORDS = [" good", " happy", " nice", " perfect", " pleasant", " brilliant", " superb", " love"]
NEG_WORDS = [" bad", " sad", " poor", " worst", " nasty", " annoying", " painful", " hate"]
CLEAN = "The Eiffel Tower is in the city of"
CORRUPT_SUBJECTS = ["The Colosseum", "The Trevi Fountain", "The Pantheon", "The Vatican", "Saint Peter's Square"]


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layers", default="10", help="steered layers, e.g. 10 or 9-11")
    ap.add_argument("--pairs-n", type=int, default=12)
    ap.add_argument("--scales", default="-4,-2,-1,0,1,2,4")
    ap.add_argument("--scale", type=float, default=2.0, help="scale of the generations shown")
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/interventions")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    return ap.parse_args()


def _pairs(n: int) -> list[tuple[str, str]]:
    return [(f"{SUBJECTS[i % len(SUBJECTS)]} was {GOOD[i % len(GOOD)]}.", f"{SUBJECTS[i % len(SUBJECTS)]} was "
             f"{BAD[i % len(BAD)]}.") for i in range(n)]


def _word_ids(tok, words: list[str]) -> list[int]:
    return [tok(w, add_special_tokens=False)["input_ids"][0] for w in words]


def _sentiment_gap(model, tok, torch) -> float:
    """Mean over prompts of mean log p(positive words) - mean log p(negative words) at the next token."""
    pos, neg = _word_ids(tok, POS_WORDS), _word_ids(tok, NEG_WORDS)
    gaps = []
    with torch.no_grad():
        for p in PROMPTS:
            lp = torch.log_softmax(model(tok(p, return_tensors="pt")["input_ids"]).logits[0, -1].double(), -1)
            gaps.append(float(lp[pos].mean() - lp[neg].mean()))
    return sum(gaps) / len(gaps)


def _generate(model, tok, torch, prompt: str, n: int) -> str:
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=pad)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def main() -> int:
    a = _args()
    import torch
    import transformers

    import actlab
    from actlab.interp.control_vector import export_control_vector
    from actlab.interp.patching import draw_patch_map, patch_map, single_token
    from actlab.interp.steering import apply_steering, steering_vector

    torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, tok = actlab.load_model(a.model)
    lo, _, hi = a.layers.partition("-")
    layers = list(range(int(lo), int(hi or lo) + 1))
    result: dict = {"model": a.model, "threads": a.threads, "layers": layers, "pairs_n": a.pairs_n}

    # ---- 1. steering
    t = time.perf_counter()
    pairs = _pairs(a.pairs_n)
    vec = steering_vector(model, tok, pairs, layers=layers, position="last")
    result["steer_vector_s"] = round(time.perf_counter() - t, 2)
    result["vector_norms"] = {str(i): round(float(vec.directions[i].norm()), 3) for i in vec.layers}
    vec.save(out / "vector", overwrite=True)
    export_control_vector(vec, out / "sentiment.gguf")
    gaps = {}
    for s in [float(x) for x in a.scales.split(",")]:
        with apply_steering(model, vec, s):
            gaps[s] = _sentiment_gap(model, tok, torch)
    result["sentiment_gap_by_scale"] = {f"{s:g}": round(g, 4) for s, g in gaps.items()}
    print(f"steering: {len(pairs)} pairs, layers {layers}, |v| {result['vector_norms']}")
    print("  log p(positive words) - log p(negative words), mean over prompts, by scale:")
    for s, g in gaps.items():
        print(f"    scale {s:+5g}: {g:+.3f}  (change vs unsteered {g - gaps.get(0.0, g):+.3f})")
    gens = []
    for p in PROMPTS[:3]:
        row = {"prompt": p, "unsteered": _generate(model, tok, torch, p, a.new_tokens)}
        for s in (a.scale, -a.scale):
            with apply_steering(model, vec, s):
                row[f"{s:+g}"] = _generate(model, tok, torch, p, a.new_tokens)
        gens.append(row)
        print(f"  {p!r}\n    unsteered: {row['unsteered']!r}\n    {a.scale:+g}: {row[f'{a.scale:+g}']!r}\n"
              f"    {-a.scale:+g}: {row[f'{-a.scale:+g}']!r}")
    result["generations"] = gens

    # ---- 2. patching
    t = time.perf_counter()
    clean_ids = tok(CLEAN, return_tensors="pt")["input_ids"]
    corrupt = next((c + " is in the city of" for c in CORRUPT_SUBJECTS
                    if tok(c + " is in the city of", return_tensors="pt")["input_ids"].shape[1] == clean_ids.shape[1]),
                   None)
    if corrupt is None:
        print("no corrupted subject of the same token length", file=sys.stderr)
        return 1
    corrupt_ids = tok(corrupt, return_tensors="pt")["input_ids"]
    paris, rome = single_token(tok, " Paris"), single_token(tok, " Rome")
    pm = patch_map(model, clean_ids, corrupt_ids, paris, rome, tok=tok)
    pp = patch_map(model, clean_ids, corrupt_ids, paris, rome, sites=("resid_out", "mlp.down_in", "attn.o_in"),
                   per_position=True, tok=tok)
    result["patch_s"] = round(time.perf_counter() - t, 2)
    draw_patch_map(pm, out / "patch_map.png")
    draw_patch_map(pp, out / "patch_map_positions.png")
    result["patching"] = {"clean": CLEAN, "corrupt": corrupt, "answer": " Paris", "wrong": " Rome",
                          "logit_diff_clean": round(pm.logit_diff_clean, 4),
                          "logit_diff_corrupt": round(pm.logit_diff_corrupt, 4),
                          "restored": [[round(float(v), 4) for v in row] for row in pm.restored],
                          "kinds": pm.kinds, "best": pm.best(8, ("mlp.down_in", "attn.o_in")), "best_per_position": pp.best(8),
                          "tokens": pp.tokens}
    print(f"patching: {CLEAN!r} vs {corrupt!r}, LD = logit(' Paris') - logit(' Rome'): clean "
          f"{pm.logit_diff_clean:.3f}, corrupted {pm.logit_diff_corrupt:.3f}")
    print("  layer  " + "  ".join(f"{k:>12}" for k in pm.kinds))
    for li, layer in enumerate(pm.layers):
        print(f"  {layer:>5}  " + "  ".join(f"{float(v):>12.3f}" for v in pm.restored[li]))
    ri = pp.kinds.index("resid_out")
    print("  resid_out per position (rows: every 3rd layer; columns: tokens " + repr(pp.tokens) + ")")
    for li in range(0, len(pp.layers), 3):
        print(f"  {pp.layers[li]:>5}  " + " ".join(f"{float(v):6.2f}" for v in pp.restored[li, ri]))
    print("  most restoring (per position): " + ", ".join(
        f"{b['site']}@{b['position']} {b['restored']:.3f}" for b in pp.best(5)))
    result["total_s"] = round(time.perf_counter() - t0, 1)
    print(f"wrote {out}/patch_map.png, patch_map_positions.png, vector/, sentiment.gguf; total "
          f"{result['total_s']} s at {a.threads} thread(s)")
    (out / "interventions.json").write_text(json.dumps(result, indent=2) + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
