"""The training report renders from a run's log.jsonl and train_config.json alone, and shows what they hold."""

from __future__ import annotations

import html as htmllib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from actlab.report.train_report import layer_density, read_log, render_train, summarize, write_train_report

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def _rows(layers: int = 4, steps: int = 6) -> list[dict]:
    """A synthetic run shaped like the loop's log: a loss falling by step, density before 0.9 per layer and
    after 0.3 + 0.05 * layer (at ε = 0.01), 250 tokens/s."""
    rows = [{"step": 0, "tokens": 0, "eval_ppl": 41.25, "eval_tokens": 256, "density_site": "mlp.act_out",
             "density": {"0": [1.0] * layers, "0.01": [0.9] * layers, "0.1": [0.5] * layers},
             "zero_frac": [0.0] * layers}]
    for s in range(1, steps + 1):
        rows.append({"step": s, "tokens": 512 * s, "loss": 4.0 - 0.25 * s, "lm_loss": 3.5 - 0.2 * s, "lr": 1e-4,
                     "tokens_per_s": 250.0, "grad_norm": 0.5, "density_loss": 0.8 - 0.1 * s})
    rows.append({"step": steps, "tokens": 512 * steps, "eval_ppl": 30.5, "eval_tokens": 256,
                 "density": {"0": [0.5] * layers, "0.01": [0.3 + 0.05 * i for i in range(layers)],
                             "0.1": [0.2] * layers},
                 "zero_frac": [0.5] * layers})
    return rows


def _meta() -> dict:
    return {"config": {"objective": "deft", "adapter": "lora", "lora_r": 8, "weight": 1.0, "site": "mlp.act_out"},
            "args": {"tokens": 3072, "seq_len": 64, "lr": 1e-4}, "steps": 6, "precision": "fp32"}


def _write_run(d: Path, rows: list[dict], torn: bool = False) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (d / "log.jsonl").write_text(text + ('{"step": 99, "lo' if torn else ""))
    (d / "train_config.json").write_text(json.dumps(_meta()))
    return d


def _text(page: str) -> str:
    return re.sub(r"\s+", " ", htmllib.unescape(re.sub(r"<[^>]+>", " ", page))).strip()


def test_summary_reads_the_first_and_last_evaluation():
    s = summarize(_rows())
    assert s["tokens"] == 3072 and s["steps"] == 6
    assert s["time_s"] == pytest.approx(3072 / 250.0)  # from each interval's tokens/s: evaluations not counted
    assert s["ppl_before"] == 41.25 and s["ppl_after"] == 30.5
    assert s["ppl_change_pct"] == pytest.approx(100 * (30.5 / 41.25 - 1))
    assert s["density_before"] == pytest.approx(0.9)
    assert s["density_after"] == pytest.approx(0.3 + 0.05 * 1.5)  # the 0.01 threshold, mean over 4 layers
    assert s["zero_frac_before"] == 0.0 and s["zero_frac_after"] == 0.5
    assert s["loss_first"] == 3.75 and s["loss_last"] == 2.5


def test_density_forms():
    assert layer_density({"density": [0.2, 0.4]}) == [0.2, 0.4]
    assert layer_density({"density": {"1": 0.4, "0": 0.2, "10": 0.9}}) == [0.2, 0.4, 0.9]
    assert layer_density({"density": {"0": [0.1], "0.01": [0.3]}}) == [0.3]  # ε keys: profile's report ε
    assert layer_density({"density": {"site": "mlp.act_out", "density": {"0.01": [0.7]}}}) == [0.7]
    assert layer_density({"eval_ppl": 3.0}) is None


def test_report_shows_headline_curves_and_config(tmp_path):
    run = _write_run(tmp_path / "run", _rows())
    page = write_train_report(run, run={"base_model": "random:tiny-llama", "command": "actlab train --objective deft"}
                              ).read_text()
    head = _text(page.split("<h2>", 1)[0])
    for shown in ("deft", "random:tiny-llama", "3,072", "41.250 → 30.500", "-26.06%", "90.0% → 37.5%",
                  "0.0% → 50.0% exact zeros"):
        assert shown in head, (shown, head)
    silu = [{**r, "zero_frac": [0.0] * 4} if "eval_ppl" in r else r for r in _rows()]
    assert "exact zeros" not in _text(render_train(silu, _meta()).split("<h2>", 1)[0])  # only where there are any
    assert page.count("data:image/png;base64,") == 3  # loss (with the density term), perplexity, density
    body = _text(page)
    for field in ("lora_r", "site", "mlp.act_out", "seq_len", "precision", "actlab train --objective deft"):
        assert field in body
    assert not list(run.glob(".report.html*"))  # written through a temporary file, none left
    assert f"actlab eval --model {run.absolute()} --tokens" in body and "--plan" not in body
    (run / "plan").mkdir()
    (run / "plan" / "plan.json").write_text("{}")
    body = _text(write_train_report(run).read_text())
    assert f"actlab bench --model {run.absolute()} --plan {run.absolute() / 'plan'}" in body
    assert "exact zeros" in body and "50.0%" in body


def test_no_evaluation_is_said_not_invented(tmp_path):
    rows = [r for r in _rows() if "eval_ppl" not in r]
    page = render_train(rows, _meta())
    assert "evaluated nothing" in page
    assert summarize(rows)["ppl_after"] is None and "- → -" in _text(page)
    assert page.count("data:image/png;base64,") == 1  # the loss only


def test_killed_and_resumed_log(tmp_path):
    rows = _rows()
    # a resume from step 3 logs steps 4.. again: the later rows win; the torn last line of the kill is skipped
    replay = [{**r, "loss": r["loss"] - 1.0} for r in rows if r.get("step", 0) >= 4 and "loss" in r]
    run = _write_run(tmp_path / "run", rows[:5] + replay + rows[-1:], torn=True)
    got = read_log(run / "log.jsonl")
    train = [r for r in got if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert train[3]["loss"] == rows[4]["loss"] - 1.0
    (run / "log.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_log(run / "log.jsonl")


@pytest.mark.skipif(BROWSER is None, reason="no chromium on PATH (apt-get install chromium to run this check)")
def test_train_report_loads_in_a_browser(tmp_path):
    page = write_train_report(_write_run(tmp_path / "run", _rows()))
    res = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert 'id="headline"' in res.stdout and "41.250" in res.stdout
    assert res.stdout.count("<img") == 3
