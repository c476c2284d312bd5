"""Two CPU processes (torch.distributed.run, gloo) profile, calibrate and evaluate what one process does."""

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
from safetensors.torch import load_file

from actlab import distributed
from actlab.distributed import Dist, batch_shard

WORKER = Path(__file__).with_name("distributed_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def _worker():
    spec = importlib.util.spec_from_file_location("distributed_worker", WORKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_batch_shard_is_contiguous_whole_batches_in_rank_order():
    starts = list(range(0, 7 * 4, 4))
    shares = [batch_shard(starts, Dist(rank=r, world_size=3)) for r in range(3)]
    assert sum(shares, []) == starts and [len(s) for s in shares] == [2, 2, 3]
    assert batch_shard([0], Dist(rank=0, world_size=2)) == [] and batch_shard([0], Dist(rank=1, world_size=2)) == [0]
    assert batch_shard(starts, None) == starts


def test_one_process_collectives_are_the_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = distributed.setup()
    t = torch.arange(6.0).view(3, 2)
    assert d.world_size == 1 and distributed.cat_ranks(t, d) is t and distributed.sum_ranks(t, d) is t
    assert distributed.all_gather_objects({"a": 1}, d) == [{"a": 1}] and distributed.all_ok(True, d)
    from actlab.train import distributed as train_distributed  # training keeps its names

    assert train_distributed.setup is distributed.setup and train_distributed.Dist is Dist


def _close(a, b, path: str = "") -> None:
    """Equal structure; ints, strings and integer tensors exactly, floats to float rounding."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif torch.is_tensor(a):
        if a.dtype.is_floating_point:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=path)
        else:
            assert torch.equal(a, b), path
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-9, nan_ok=True), path
    else:
        assert a == b, path


def test_two_processes_equal_one(tmp_path):
    done = _torchrun([str(WORKER), str(tmp_path / "result.pt")], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    two = torch.load(tmp_path / "result.pt.rank0", weights_only=False)
    other = torch.load(tmp_path / "result.pt.rank1", weights_only=False)
    one = _worker().run(None)

    # profile: every count and histogram exactly, moments to float rounding
    p1, p2 = one["profile"], two["profile"]
    for name, s in p1["sites"].items():
        t = p2["sites"][name]
        for key in ("tokens", "elements", "count", "nan", "inf", "density", "histogram", "topk_tokens", "channels"):
            assert t[key] == s[key], (name, key)
        _close(s, t, name)
    assert p2["massive_activations"] == p1["massive_activations"] and p2["massive_counts"] == p1["massive_counts"]
    assert p2["neurons"] == p1["neurons"] and p2["tokens"] == p1["tokens"] == 7 * 16
    _close(p1, p2, "profile")

    # calibration: the same rows in the same order (exactly), so the same thresholds (exactly) and the same plans
    for key in ("rows", "positions", "blocks"):
        a, b = one["sample"][key], two["sample"][key]
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), key
    _close(one["sample"], two["sample"], "sample")
    for name, plan in one["plans"].items():
        got = two["plans"][name]
        for a, b in zip(plan["thresholds"], got["thresholds"], strict=True):
            assert torch.equal(a, b), name
        _close(plan, got, name)
    _close(one["search"], two["search"], "search")

    # perplexity: the single-process per-window sums in the single-process order
    assert torch.equal(two["nll"], one["nll"])
    assert two["ppl"] == one["ppl"] and two["ppl_one_batch"] == one["ppl_one_batch"]
    _close(one["eval"], two["eval"], "eval")
    _close(one["records"], two["records"], "records")

    _close(two, other, "rank1")  # every rank returns the whole result


def test_cli_profile_under_torchrun_writes_once_from_rank_0(tmp_path):
    out = tmp_path / "prof"
    corpus = tmp_path / "text.txt"
    corpus.write_text(" ".join(f"word{i % 97} and more text {i}." for i in range(4000)))
    done = _torchrun(["-m", "actlab.cli.main", "profile", "--model", "random:tiny-llama", "--data", str(corpus),
                      "--tokens", "512", "--seq-len", "32", "--batch-size", "4", "--out", str(out), "--json"],
                     tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # one JSON object: only rank 0 printed
    assert summary["tokens"] == 512 and Path(summary["profile"]) == out / "profile.json"
    doc = json.loads((out / "profile.json").read_text())
    assert doc["tokens"] == 512 and doc["world_size"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prof.tmp")]  # no staging left behind


def test_cli_calibrate_and_eval_under_torchrun_equal_one_process(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text(" ".join(f"word{i % 97} and more text {i}." for i in range(4000)))
    common = ["--model", "random:tiny-llama", "--data", str(corpus), "--tokens", "512", "--seq-len", "32"]
    plans = {}
    for procs in (2, 1):
        out = tmp_path / f"plan{procs}"
        cal = ["-m", "actlab.cli.main", "calibrate", *common, "--sparsity", "0.4", "--out", str(out), "--json"]
        ev = ["-m", "actlab.cli.main", "eval", *common, "--plan", str(out), "--batch-size", "3", "--json"]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        for args in (cal, ev):
            if procs == 2:
                done = _torchrun(args, tmp_path)
            else:
                done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-3000:]
            plans.setdefault(procs, []).append(json.loads(done.stdout))  # one JSON object: rank 0 alone
        plans[procs].append(load_file(out / "thresholds.safetensors"))
    cal2, ev2, thr2 = plans[2]
    cal1, ev1, thr1 = plans[1]
    # the same thresholds, bit for bit (not the file's bytes: safetensors writes its metadata keys in hash order)
    assert thr2.keys() == thr1.keys() and all(torch.equal(thr2[k], thr1[k]) for k in thr1)
    assert cal2.pop("plan") != cal1.pop("plan") and cal2 == cal1
    assert ev2.pop("plan") != ev1.pop("plan")
    _close(ev1, ev2, "eval")  # perplexities and the measured sparsity
