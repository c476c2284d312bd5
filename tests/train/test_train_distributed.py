"""Two CPU processes (torch.distributed.run, gloo) train what one process with twice the accumulation does."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import actlab
from actlab.train import distributed

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_is_not_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = distributed.setup()
    assert (d.rank, d.world_size, d.is_main, d.device) == (0, 1, True, None)
    assert distributed.mean([1.0, 2.0], d) == [1.0, 2.0] and distributed.broadcast_flag(True, d)


@pytest.mark.slow
def test_two_processes_equal_one_with_double_accumulation(tmp_path):
    out = tmp_path / "ddp" / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), str(out), "1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # only rank 0 wrote; both processes finished with the full history of their rank
    r0, r1 = (json.loads((out.parent / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["out"] == str(out) and r1["out"] == "None"
    two = json.loads((out / "train_config.json").read_text())
    assert two["world_size"] == 2 and two["steps"] == 4
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-2"]

    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    single = tmp_path / "one" / "run"
    worker.main(str(single), 2)  # this process: world size 1, grad_accum doubled
    one = json.loads((single / "train_config.json").read_text())
    assert one["world_size"] == 1 and one["steps"] == 4

    a, _ = actlab.load_model(str(out))
    b, _ = actlab.load_model(str(single))
    base, _ = actlab.load_model("random:tiny-llama")
    sa, sb, s0 = a.state_dict(), b.state_dict(), base.state_dict()
    assert max(float((sa[k] - s0[k]).abs().max()) for k in sa) > 1e-4  # it trained
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-6, msg=k)
    losses = [[r["loss"] for r in map(json.loads, (d / "log.jsonl").read_text().splitlines()) if "loss" in r]
              for d in (out, single)]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-5)  # rank-averaged
