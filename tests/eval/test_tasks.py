"""Local downstream tasks: deterministic items from the test split only, a scorer that picks the answer a
model prefers, the same numbers as lm-evaluation-harness (where it is installed), and one-line CLI errors."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
import yaml
from typer.testing import CliRunner

import actlab
from actlab.cli.main import app
from actlab.data.windows import make_windows
from actlab.eval.tasks import (
    TASKS,
    TaskError,
    build_items,
    encode_pair,
    loglikelihoods,
    parse_tasks,
    score_task,
    score_tasks,
    source_passages,
    write_task_dir,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny():
    return actlab.load_model("random:tiny-llama")


@pytest.fixture(scope="module")
def corpus():
    return actlab.load_corpus("default")


@pytest.fixture(scope="module")
def passages(tiny, corpus):
    return source_passages(corpus, tiny[1])


def test_items_are_deterministic_and_seeded(tiny, corpus, passages):
    for name in TASKS:
        a = build_items(name, corpus, tiny[1], n=15, seed=0, passages=passages)
        assert a == build_items(name, corpus, tiny[1], n=15, seed=0)  # passages rebuilt from scratch
        assert a != build_items(name, corpus, tiny[1], n=15, seed=1, passages=passages)
        assert len(a) == 15


def test_items_come_from_the_test_split_never_calibration(tiny, corpus, passages):
    tok = tiny[1]

    def text_of(split):
        return " ".join(" ".join(tok.decode(w).split()) for w in make_windows(corpus, tok, 256, None, split=split).tolist())

    calib, test = text_of("calib"), text_of("test")
    items = {n: build_items(n, corpus, tok, n=40, passages=passages) for n in TASKS}
    for it in items["actlab-cloze"]:
        assert it["context"] + it["target"] in test and it["context"] + it["target"] not in calib
        assert it["target"].strip().lower() in it["context"].lower()  # inferable from the passage
    for it in items["actlab-mc"]:
        gold = it["context"] + " " + it["choices"][it["gold"]]
        assert gold in test and gold not in calib
        assert len(set(it["choices"])) == 4
        g = len(it["choices"][it["gold"]])
        assert all(abs(len(c) - g) <= 0.25 * g for c in it["choices"])  # no length giveaway
        assert len({len(c.split()) for c in it["choices"]}) == 1


def test_golds_are_spread_over_positions(tiny, corpus, passages):
    golds = [it["gold"] for it in build_items("actlab-mc", corpus, tiny[1], n=40, passages=passages)]
    assert len(set(golds)) == 4


class _Memorizer(torch.nn.Module):
    """Predicts the next token of ``seq`` (logit 10) wherever the input so far is a prefix of it."""

    def __init__(self, seq: list[int], vocab: int) -> None:
        super().__init__()
        self.seq, self.vocab = seq, vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids: torch.Tensor) -> SimpleNamespace:
        logits = torch.zeros(*ids.shape, self.vocab)  # [B, T, V]
        for b, row in enumerate(ids.tolist()):
            for i in range(len(row)):
                if i + 1 < len(self.seq) and row[: i + 1] == self.seq[: i + 1]:
                    logits[b, i, self.seq[i + 1]] = 10.0
        return SimpleNamespace(logits=logits)


def test_scorer_picks_the_continuation_the_model_prefers(tiny):
    tok = tiny[1]
    text = "the quick brown fox jumps over the lazy dog"
    model = _Memorizer(tok.encode(text), len(tok))
    mc = [{"context": "the quick brown", "choices": ["cat naps", "fox jumps", "dog sits", "owl hoots"], "gold": 1},
          {"context": "the quick brown fox jumps", "choices": ["over the", "under it", "into a", "onto the"], "gold": 0}]
    r = score_task(model, tok, "actlab-mc", mc, batch_size=3)
    assert r.metrics == {"acc": 1.0, "acc_norm": 1.0}
    cloze = [{"context": "the quick brown fox jumps over the lazy", "target": " dog"},
             {"context": "the quick brown fox jumps over the lazy", "target": " cat"}]
    r = score_task(model, tok, "actlab-cloze", cloze)
    assert r.metrics["acc"] == 0.5  # greedy reproduces " dog", not " cat"
    (ll_dog, greedy), (ll_cat, _) = loglikelihoods(model, tok, [(c["context"], c["target"]) for c in cloze])
    assert greedy and ll_dog > ll_cat


def test_encode_pair_moves_trailing_spaces_to_the_continuation(tiny):
    tok = tiny[1]
    assert encode_pair(tok, "ab  ", "cd") == encode_pair(tok, "ab", "  cd")
    ctx, cont = encode_pair(tok, "ab", " cd")
    assert ctx + cont == tok.encode("ab cd")
    with pytest.raises(TaskError):
        encode_pair(tok, "", "x")


def test_task_yaml_reads_back(tmp_path, tiny, corpus, passages):
    items = {n: build_items(n, corpus, tiny[1], n=5, passages=passages) for n in TASKS}
    root = write_task_dir(items, tmp_path / "tasks")
    for name in TASKS:
        cfg = yaml.safe_load((root / f"{name}.yaml").read_text())
        assert cfg["task"] == name and cfg["dataset_path"] == "json"
        assert (root / f"{name}.jsonl").read_text().count("\n") == 5


def test_parse_tasks():
    assert parse_tasks("all") == list(TASKS)
    with pytest.raises(TaskError, match="unknown task 'lambada'"):
        parse_tasks("actlab-mc,lambada")


def test_same_numbers_as_the_harness(tiny, corpus, passages):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'actlab[tasks]')")
    from actlab.eval.harness import harness_score
    from actlab.sparsity.config import TealConfig

    model, tok = tiny
    items = {n: build_items(n, corpus, tok, n=12, passages=passages) for n in TASKS}
    # thresholds, not top-k: a rounding difference between the two scorers could flip a mask here
    plan = actlab.calibrate(model, TealConfig(0.5), make_windows(corpus, tok, 64, 512, split="calib"))
    runs = []
    for sparse in (False, True):  # dense, then with the plan's masks: the harness runs the model as it is
        if sparse:
            actlab.apply_(model, plan)
        try:
            ours = score_tasks(model, tok, items, batch_size=5)
            theirs = harness_score(model, tok, items, batch_size=5, log_samples=True)
        finally:
            actlab.remove_(model)
        for n in items:  # the same batches as the harness: the same numbers, to float rounding of the sums
            assert ours[n].metrics == pytest.approx(theirs[n].metrics, rel=1e-6)
            flat = [(a, b) for x, y in zip(ours[n].per_item, theirs[n].per_item, strict=True)
                    for a, b in zip(x, y, strict=True)]
            assert flat and all(a == pytest.approx(b, rel=1e-6, abs=1e-5) for a, b in flat)
        runs.append(ours)
    assert all(runs[0][n].per_item != runs[1][n].per_item for n in items)  # the plan did change the scores


def test_cli_unknown_task_is_one_error_line():
    res = runner.invoke(app, ["eval", "--model", "random:tiny-llama", "--tasks", "actlab-mc,hellaswag"])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert res.output.strip().startswith("error: unknown task 'hellaswag'")


def test_cli_missing_lm_eval_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    res = runner.invoke(app, ["eval", "--model", "random:tiny-llama", "--tasks", "all", "--scorer", "harness"])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert "error:" in res.output and "pip install 'actlab[tasks]'" in res.output


def test_cli_unknown_scorer():
    res = runner.invoke(app, ["eval", "--model", "random:tiny-llama", "--tasks", "all", "--scorer", "vibes"])
    assert res.exit_code == 2 and "error: unknown --scorer 'vibes'" in res.output


def test_cli_scores_dense_and_sparse_as_json(tmp_path):
    import json

    plan_dir = tmp_path / "plan"
    res = runner.invoke(app, ["calibrate", "--model", "random:tiny-llama", "--method", "topk", "--sparsity", "0.5",
                              "--tokens", "256", "--seq-len", "64", "--out", str(plan_dir)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval", "--model", "random:tiny-llama", "--tasks", "actlab-mc", "--items", "8",
                              "--plan", str(plan_dir), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output[res.output.index("{"):])
    assert d["scorer"] == "actlab" and d["method"] == "topk"
    assert set(d["tasks"]["actlab-mc"]) >= {"dense", "sparse", "n"}


def test_a_plan_on_the_kernels_scores_as_on_the_masking_path(tiny, corpus, passages):
    from actlab.sparsity.config import TealConfig
    from actlab.task_eval import evaluate_tasks

    model, tok = tiny
    items = {n: build_items(n, corpus, tok, n=8, passages=passages) for n in TASKS}
    plan = actlab.calibrate(model, TealConfig(0.5), make_windows(corpus, tok, 64, 512, split="calib"))
    masked = evaluate_tasks(model, tok, plan, items)
    kernels = evaluate_tasks(model, tok, plan, items, kernels=True)
    for n in items:
        for a, b in zip(masked.sparse[n].per_item, kernels.sparse[n].per_item, strict=True):
            assert a == pytest.approx(b, rel=1e-4, abs=1e-3)
    assert not hasattr(model, "actlab_sparsity")  # the plan was removed after each run
