"""The run record: arguments a user gave, stage times that add up, load and versions of the machine."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from actlab.envinfo import load_average, machine
from actlab.report.runlog import RunLog, _cli_command


def test_stages_are_timed_in_order_and_add_up():
    seen = []
    log, step = RunLog.start({"model": "m"}, seen.append)
    time.sleep(0.02)
    step("profiling activations")
    step("benchmarking decode speed")
    run = log.finish()
    assert seen == ["profiling activations", "benchmarking decode speed"]  # the caller's callback still runs
    assert [s["stage"] for s in run["stages"]] == ["loading model and data", "profiling activations",
                                                   "benchmarking decode speed"]
    assert run["stages"][0]["wall_s"] >= 0.02
    assert sum(s["wall_s"] for s in run["stages"]) == pytest.approx(run["wall_s"], abs=0.01)


def test_arguments_keep_what_a_user_typed_and_are_json():
    log, _ = RunLog.start({"out": Path("runs/x"), "threads": None, "max_ppl_increase": 5.0,
                           "step": print, "json": json})
    run = log.finish()
    assert run["arguments"] == {"out": "runs/x", "threads": None, "max_ppl_increase": 5.0}
    assert json.loads(json.dumps(run)) == run


def test_command_only_when_the_process_is_the_cli():
    assert _cli_command(["/venv/bin/actlab", "optimize", "--out", "a b"]) == "actlab optimize --out 'a b'"
    assert _cli_command(["/venv/bin/pytest", "-q"]) is None
    assert RunLog({}).command is None  # under pytest


def test_machine_names_versions_cores_and_load():
    import torch

    m = machine()
    assert m["versions"]["torch"] == torch.__version__ and m["versions"]["transformers"]
    assert 1 <= m["usable_cpus"] <= m["cpu_count"]
    assert isinstance(m["cpu_flags"], list) and m["cpu"]
    load = load_average()
    assert load is None or (len(load) == 3 and all(x >= 0 for x in load))
