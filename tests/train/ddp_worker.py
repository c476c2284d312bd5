"""One process of the two-process training test (started by torch.distributed.run from test_distributed)."""

import json
import os
import sys

import torch

import actlab
from actlab.train import DenseConfig
from actlab.train.loop import TrainArgs, train

SEQ = 16


def main(out: str, grad_accum: int) -> None:
    data = torch.randint(3, 200, (48, SEQ), generator=torch.Generator().manual_seed(0))
    model, tok = actlab.load_model("random:tiny-llama")
    args = TrainArgs(tokens=4 * 4 * SEQ, seq_len=SEQ, batch_size=2, grad_accum=grad_accum, precision="fp32",
                     lr=1e-3, log_every=1, checkpoint_every=2)
    res = train(model, DenseConfig(adapter="full"), data, args=args, out=out if out != "-" else None,
                progress=False, tokenizer=tok)
    rank = os.environ.get("RANK", "0")
    if out != "-":
        with open(os.path.join(os.path.dirname(out), f"rank{rank}.json"), "w") as f:
            json.dump({"rows": len(res.history), "out": str(res.out)}, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
