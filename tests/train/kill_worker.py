"""A training run that stops dead at a step (for the SIGKILL test in test_checkpoint): writes a marker, sleeps."""

import sys
import time
from pathlib import Path

import torch

import actlab
from actlab.train import DenseConfig
from actlab.train.loop import TrainArgs, train

SEQ = 16
DATA = torch.randint(3, 200, (32, SEQ), generator=torch.Generator().manual_seed(0))
ARGS = TrainArgs(tokens=8 * 2 * SEQ, seq_len=SEQ, batch_size=2, precision="fp32", log_every=1, lr=1e-3,
                 checkpoint_every=2)


def run(out: str, stop_at: int | None = None, resume: bool = False):
    def stop(row):
        if stop_at is not None and row.get("step") == stop_at and "loss" in row:
            Path(out, "..", "stopped").resolve().write_text("1")
            time.sleep(600)  # the parent kills us here

    model, tok = actlab.load_model("random:tiny-llama")
    return train(model, DenseConfig(adapter="full"), DATA, args=ARGS, out=out, resume=resume, progress=False,
                 tokenizer=tok, callbacks=[stop])


if __name__ == "__main__":
    run(sys.argv[1], stop_at=int(sys.argv[2]))
