"""The load guard: parallel kernel calls drop to one thread while other processes hold the cores."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from actlab.kernels import ops

ext = pytest.importorskip("actlab.kernels._sparse")
pytestmark = pytest.mark.skipif(not ops.available(), reason="compiled kernels unavailable")


@pytest.fixture
def guard():
    before = ext.set_load_guard(True)
    yield
    ext.set_load_guard(before)


def test_three_long_waits_in_a_row_switch_to_one_thread(guard):
    switches = ext.load_guard_state()["switches"]
    ext._guard_note(1e-3, 1.5e-3)
    ext._guard_note(1e-3, 1.5e-3)
    assert ext.load_guard_state()["serial_calls_left"] == 0
    ext._guard_note(1e-3, 1.5e-3)
    state = ext.load_guard_state()
    assert state["serial_calls_left"] > 0 and state["switches"] == switches + 1


def test_short_or_proportionate_waits_do_not_count(guard):
    for _ in range(10):
        ext._guard_note(10e-6, 12e-6)  # most of the call, but shorter than a scheduler hiccup
        ext._guard_note(1e-3, 4e-3)  # long, but a quarter of the call: imbalance, not preemption
    assert ext.load_guard_state()["serial_calls_left"] == 0


def test_an_ordinary_call_takes_a_strike_back(guard):
    for _ in range(5):
        ext._guard_note(1e-3, 1.5e-3)
        ext._guard_note(1e-3, 1.5e-3)
        ext._guard_note(0.0, 1e-3)
        ext._guard_note(0.0, 1e-3)
    assert ext.load_guard_state()["serial_calls_left"] == 0


def test_serial_calls_give_the_same_result(guard):
    torch.manual_seed(0)
    wt = torch.randn(1024, 2048)
    x, t = torch.randn(1, 1024), torch.full((1024,), 0.5)
    with torch.inference_mode():
        torch.set_num_threads(2)
        parallel = ops.sparse_linear(x, wt, t)
        for _ in range(3):
            ext._guard_note(1e-3, 1.5e-3)
        left = ext.load_guard_state()["serial_calls_left"]
        serial = ops.sparse_linear(x, wt, t)
    assert ext.load_guard_state()["serial_calls_left"] == left - 1  # this call ran on one thread
    assert torch.equal(parallel, serial)  # each output block sums its rows in one order on any thread


def test_turning_it_off_clears_a_pending_switch():
    before = ext.set_load_guard(True)
    try:
        for _ in range(3):
            ext._guard_note(1e-3, 1.5e-3)
        ext.set_load_guard(False)
        assert ext.load_guard_state() == {**ext.load_guard_state(), "on": False, "serial_calls_left": 0}
    finally:
        ext.set_load_guard(before)


def test_environment_variable_turns_it_off():
    code = "import actlab.kernels._sparse as e; print(e.load_guard_state()['on'])"
    env = {**os.environ, "ACTLAB_LOAD_GUARD": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
