"""Local downstream tasks built from offline text, and actlab's own scorer for them.

Two tasks, generated at run time from the *test* split of a corpus (the built-in default corpus unless told
otherwise), so they need no network and never contain a token the calibration read:

``actlab-cloze``  LAMBADA-style: a passage cut just before the last word of a sentence; the model must produce
                  that word. The word is alphabetic, at least 4 letters, and occurs earlier in the passage, so
                  it can be inferred from the context rather than guessed. Metric: ``acc`` (greedy decoding
                  reproduces every token of the word, lm-eval's ``is_greedy``) and ``perplexity`` of the word.
``actlab-mc``     pick the true continuation of a passage among 4. The 3 distractors are the true
                  continuations of *other* passages of the same split (the same kind of span: the same
                  number of words, cut at the same place, within 25% of the gold one's length), so length
                  and style do not give the answer away, and since the spans serve as gold for one item and
                  as distractors for others, a model's unconditional preference for some spans largely
                  cancels over the task. Metrics: ``acc`` and ``acc_norm`` by loglikelihood, as lm-eval's
                  ``multiple_choice`` computes them.

Disjointness: the text is decoded from the test-split windows of the corpus's token stream with the
*model's* tokenizer at ``seq_len`` (256, what ``actlab calibrate`` uses by default), so not one token of an
item lies in a calibration window (``split="calib"``) or in the perplexity windows (``split="eval"``).
Items therefore depend on the tokenizer; they are deterministic for a given corpus, tokenizer and seed.

The scorer (:func:`loglikelihoods`) encodes a (context, continuation) pair exactly as lm-eval's ``HFLM``
does (trailing context spaces move to the continuation; the continuation's tokens are those of
``encode(context + continuation)`` after ``encode(context)``) and batches the same way (right padding, no
attention mask), so its accuracies equal the harness's (``tests/eval/test_tasks.py``) without needing it.

Example:
    >>> import actlab
    >>> from actlab.eval.tasks import build_items, score_task
    >>> model, tok = actlab.load_model("random:tiny-llama")
    >>> items = build_items("actlab-mc", actlab.load_corpus("default"), tok, n=20)   # doctest: +SKIP
    >>> score_task(model, tok, "actlab-mc", items).metrics["acc"]                     # doctest: +SKIP
    0.25
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from actlab.data.base import Corpus
from actlab.data.tokens import separator_id
from actlab.data.windows import build_windows
from actlab.errors import ActlabError
from actlab.models.scoring import lm_logits, model_device

#: bump when the item rules change: part of every cache key and of the task YAML's metadata
TASKS_VERSION = 1
SOURCE_SPLIT = "test"
SOURCE_SEQ_LEN = 256
N_CHOICES = 4

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_PROSE_CHARS = re.compile(r"[A-Za-z ,.;:'\"()\-?!]")
_WORD = re.compile(r"[A-Za-z]+")


class TaskError(ActlabError):
    """A task that cannot be built or scored as asked (unknown name, too little text...)."""


@dataclass(frozen=True)
class TaskSpec:
    """One local task: how its items are made and how lm-eval reads them (``yaml_body``)."""

    name: str
    description: str
    output_type: str  # lm-eval's: "loglikelihood" or "multiple_choice"
    metrics: tuple[str, ...]
    build: Callable[[list[list[str]], random.Random, int], list[dict[str, Any]]]
    yaml_body: str


@dataclass(frozen=True)
class TaskResult:
    """Metrics of one task (``acc``, and ``acc_norm`` or ``perplexity``), with ``acc``'s standard error."""

    task: str
    n: int
    metrics: dict[str, float]
    acc_stderr: float
    scorer: str = "actlab"
    per_item: list[list[float]] = field(default_factory=list, repr=False)  # loglikelihood of each request

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("per_item")
        return d


# ---------------------------------------------------------------------------------------------- source text


def _is_prose(sentence: str) -> bool:
    # The default corpus is docstrings and comments: keep sentences of plain English, not code or tables.
    if len(sentence.split()) < 4 or ">>>" in sentence or "::" in sentence:
        return False
    return len(_PROSE_CHARS.findall(sentence)) >= 0.97 * len(sentence)


def source_passages(corpus: Corpus, tokenizer: Any, seq_len: int = SOURCE_SEQ_LEN,
                    split: str = SOURCE_SPLIT) -> list[list[str]]:
    """Runs of consecutive prose sentences (whitespace collapsed) decoded from ``split``'s token windows.

    A run never crosses a window or a document boundary; the sentence cut at a window's start or end is
    dropped, so every character comes from tokens of ``split``.

    Example:
        >>> passages = source_passages(actlab.load_corpus("default"), tok)   # doctest: +SKIP
        >>> passages[0][:2]                                                     # doctest: +SKIP
        ['Return the value of the attribute.', 'Raise an error if it is missing.']
    """
    # The corpus repeats some paragraphs (pydoc topics quote each other): a test sentence that also occurs in
    # a calibration window is left out, so the calibration never saw an item's text, not only its tokens.
    seen = {s for _, sentences in _window_sentences(corpus, tokenizer, seq_len, "calib") for s in sentences}
    passages: list[list[str]] = []
    for where, sentences in _window_sentences(corpus, tokenizer, seq_len, split):
        if where & 1:
            sentences = sentences[1:]  # starts mid-sentence (the window's cut)
        if where & 2 or not sentences or not sentences[-1].endswith((".", "!", "?")):
            sentences = sentences[:-1]  # ends mid-sentence
        run: list[str] = []
        for s in [*sentences, ""]:
            if s and _is_prose(s) and s not in seen:
                run.append(s)
                continue
            if len(run) >= 2:
                passages.append(run)
            run = []
    return passages


def _window_sentences(corpus: Corpus, tokenizer: Any, seq_len: int, split: str) -> Iterator[tuple[int, list[str]]]:
    """Sentences of each document segment of ``split``'s windows, with bit 1 set for a segment that starts at
    the window's start and bit 2 for one that ends at its end (cut there, not at a document boundary)."""
    windows = build_windows(corpus, tokenizer, seq_len, None, split=split).ids  # [n_windows, seq_len]
    sep = separator_id(tokenizer)
    for row in windows.tolist():
        segments: list[list[int]] = [[]]
        for t in row:
            if t == sep:
                segments.append([])
            else:
                segments[-1].append(t)
        for k, seg in enumerate(segments):
            text = " ".join(tokenizer.decode(seg).split())
            yield (k == 0) | 2 * (k == len(segments) - 1), _SENTENCE_END.split(text)


# ---------------------------------------------------------------------------------------------- item builders

CLOZE_MIN_WORDS, CLOZE_MAX_WORDS = 16, 60


def _cloze_items(passages: list[list[str]], rng: random.Random, n: int) -> list[dict[str, Any]]:
    candidates = []
    for p, run in enumerate(passages):
        for k in range(1, len(run)):
            words = run[k].split()
            last = words[-1].rstrip(".!?")
            if not (last.isalpha() and len(last) >= 4 and words[-1][-1] == "."):
                continue
            # the longest context of whole sentences that fits, then the sentence without its last word
            context = " ".join(words[:-1])
            for j in range(k - 1, -1, -1):
                longer = run[j] + " " + context
                if len(longer.split()) > CLOZE_MAX_WORDS:
                    break
                context = longer
            if len(context.split()) < CLOZE_MIN_WORDS:
                continue
            if last.lower() not in {w.lower() for w in _WORD.findall(context)}:
                continue  # not inferable from the passage: LAMBADA keeps only such words
            candidates.append((p, {"context": context, "target": " " + last}))
    return [item for _, item in _one_per_passage(candidates, rng, n)]


MC_CONTEXT_WORDS, MC_CONTINUATION_WORDS = 24, 10
MC_LENGTH_TOLERANCE = 0.25


def _mc_items(passages: list[list[str]], rng: random.Random, n: int) -> list[dict[str, Any]]:
    candidates = []
    for p, run in enumerate(passages):
        for k in range(len(run)):
            words = " ".join(run[k:]).split()
            if len(words) >= MC_CONTEXT_WORDS + MC_CONTINUATION_WORDS:
                context = " ".join(words[:MC_CONTEXT_WORDS])
                gold = " ".join(words[MC_CONTEXT_WORDS : MC_CONTEXT_WORDS + MC_CONTINUATION_WORDS])
                candidates.append((p, {"context": context, "gold_text": gold}))
                break  # one span per passage start is enough; overlapping spans would repeat text
    chosen = _one_per_passage(candidates, rng, len(candidates))  # all, in order; the first n usable are kept
    pool = [(p, item["gold_text"]) for p, item in chosen]
    items = []
    for p, item in chosen:
        if len(items) == n:
            break
        gold = item["gold_text"]
        near = [t for q, t in pool if q != p and t != gold
                and abs(len(t) - len(gold)) <= MC_LENGTH_TOLERANCE * len(gold)]
        if len(set(near)) < N_CHOICES - 1:
            continue
        choices = [gold, *rng.sample(sorted(set(near)), N_CHOICES - 1)]
        rng.shuffle(choices)
        items.append({"context": item["context"], "choices": choices, "gold": choices.index(gold)})
    return items


def _one_per_passage(candidates: list[tuple[int, dict]], rng: random.Random, n: int) -> list[tuple[int, dict]]:
    # One item per passage (items share no text), the passages drawn with the seed, in the drawn order.
    by_passage: dict[int, dict] = {}
    for p, item in candidates:
        by_passage.setdefault(p, item)
    keys = sorted(by_passage)
    return [(p, by_passage[p]) for p in rng.sample(keys, min(n, len(keys)))]


_COMMON_YAML = """dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_text: context
"""

TASKS: dict[str, TaskSpec] = {
    "actlab-cloze": TaskSpec(
        "actlab-cloze", "last word of a sentence, inferable from the passage (LAMBADA-style)",
        "loglikelihood", ("acc", "perplexity"), _cloze_items,
        "output_type: loglikelihood\ndoc_to_target: target\nmetric_list:\n"
        "  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"),
    "actlab-mc": TaskSpec(
        "actlab-mc", "true continuation of a passage among 4 (distractors: other passages' continuations)",
        "multiple_choice", ("acc", "acc_norm"), _mc_items,
        "output_type: multiple_choice\ndoc_to_choice: choices\ndoc_to_target: gold\nmetric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"),
}


def parse_tasks(spec: str | Sequence[str]) -> list[str]:
    """Task names from ``"a,b"`` or a list, checked against :data:`TASKS` (``"all"``: every task).

    Example:
        >>> parse_tasks("actlab-mc, actlab-cloze")
        ['actlab-mc', 'actlab-cloze']

    Raises:
        TaskError: an unknown or empty task list.
    """
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if names == ["all"]:
        return list(TASKS)
    unknown = [s for s in names if s not in TASKS]
    if unknown or not names:
        what = f"unknown task {unknown[0]!r}" if unknown else "no task given"
        raise TaskError(f"{what}; the local tasks are {', '.join(TASKS)} (or 'all')")
    return list(dict.fromkeys(names))


def build_items(task: str, corpus: Corpus, tokenizer: Any, n: int = 200, seed: int = 0,
                passages: list[list[str]] | None = None) -> list[dict[str, Any]]:
    """``n`` items of ``task`` (fewer if the text runs out, never zero), deterministic for a seed.

    ``passages`` reuses a :func:`source_passages` result (building it decodes the whole test split).

    Example:
        >>> items = build_items("actlab-cloze", actlab.load_corpus("default"), tok, n=5)   # doctest: +SKIP
        >>> items[0]["target"]                                                               # doctest: +SKIP
        ' object'

    Raises:
        TaskError: an unknown task, or a corpus whose test split yields no item.
    """
    spec = TASKS[parse_tasks([task])[0]]
    if n < 1:
        raise TaskError(f"the number of items must be positive, got {n}")
    if passages is None:
        passages = source_passages(corpus, tokenizer)
    seed_key = int.from_bytes(hashlib.sha256(f"{seed}:{task}".encode()).digest()[:8], "big")
    items = spec.build(passages, random.Random(seed_key), n)
    if not items:
        raise TaskError(f"corpus {corpus.name!r} yields no {task} item from its {SOURCE_SPLIT} split "
                        f"({len(passages)} prose passages); use a larger corpus of English prose")
    return items


def write_task_dir(items: dict[str, list[dict[str, Any]]], directory: str | Path) -> Path:
    """Write each task's items (``<task>.jsonl``) and its lm-eval task YAML (``<task>.yaml``) to ``directory``.

    Pass the directory to ``lm_eval.tasks.TaskManager(include_path=...)``; the YAML reads the items with
    ``dataset_path: json`` from their absolute path, so nothing touches the network.

    Example:
        >>> write_task_dir({"actlab-mc": items}, "/tmp/actlab-tasks")   # doctest: +SKIP
        PosixPath('/tmp/actlab-tasks')
    """
    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    for task, rows in items.items():
        spec = TASKS[task]
        data = root / f"{task}.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        (root / f"{task}.yaml").write_text(
            f"task: {task}\n" + _COMMON_YAML.format(data=json.dumps(str(data))) + spec.yaml_body
            + f"metadata:\n  version: {TASKS_VERSION}\n")
    return root


# ---------------------------------------------------------------------------------------------- the scorer


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-eval's ``HFLM`` makes them for a loglikelihood request.

    Trailing spaces of the context move to the continuation; the continuation's ids are those of the whole
    string after the context's own ids (so a merge across the boundary is tokenised as in the full text).
    Special tokens follow the tokenizer's default, unless the text already starts with the BOS string.

    Example:
        >>> encode_pair(tok, "The cat sat on the", " mat")   # doctest: +SKIP
        ([504, 2644, 3290, 335, 260], [9633])
    """
    if not context:
        raise TaskError("a loglikelihood request needs a non-empty context")
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]

    def encode(s: str) -> list[int]:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        kwargs = {"add_special_tokens": False} if bos is not None and s.startswith(tokenizer.decode(bos)) else {}
        return list(tokenizer.encode(s, **kwargs))

    whole, ctx = encode(context + continuation), encode(context)
    return ctx, whole[len(ctx):]


@torch.no_grad()
def loglikelihoods(model: torch.nn.Module, tokenizer: Any, requests: Sequence[tuple[str, str]],
                   batch_size: int = 16) -> list[tuple[float, bool]]:
    """``(log p(continuation | context), greedy)`` per request, ``greedy`` = argmax reproduces every token.

    Requests run in lm-eval's ``HFLM`` order (longest first, ties by token ids) in batches of ``batch_size``,
    right-padded: the same batches as the harness builds from the same requests, hence the same numbers
    bit for bit, which matters under a sparsity plan (a rounding difference can flip a threshold decision).
    Log-softmax in float32.

    Example:
        >>> loglikelihoods(model, tok, [("The cat sat on the", " mat")])   # doctest: +SKIP
        [(-3.21, True)]
    """
    device = model_device(model)
    encoded = [encode_pair(tokenizer, c, x) for c, x in requests]
    if any(not cont for _, cont in encoded):
        raise TaskError("a continuation encodes to no token")
    def key(i: int) -> tuple[int, tuple[int, ...]]:
        toks = encoded[i][0] + encoded[i][1]
        return -len(toks), tuple(toks)

    order = sorted(range(len(encoded)), key=key)
    out: list[tuple[float, bool]] = [(0.0, False)] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(order), batch_size):
            chunk = order[b : b + batch_size]
            inputs = [(encoded[i][0] + encoded[i][1])[:-1] for i in chunk]  # the last token predicts nothing
            width = max(len(x) for x in inputs)
            batch = torch.zeros(len(chunk), width, dtype=torch.long)  # [B, T], right-padded
            for r, x in enumerate(inputs):
                batch[r, : len(x)] = torch.tensor(x)
            logp = torch.log_softmax(lm_logits(model, batch.to(device)).float(), dim=-1)  # [B, T, V]
            for r, i in enumerate(chunk):
                cont = torch.tensor(encoded[i][1], device=device)
                rows = logp[r, len(inputs[r]) - len(cont) : len(inputs[r])]  # [n_cont, V]
                ll = rows.gather(1, cont[:, None]).sum().item()
                out[i] = (ll, bool((rows.argmax(-1) == cont).all()))
    finally:
        model.train(was_training)
    return out


def requests_of(task: str, items: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (context, continuation) requests of ``items``, in item order (choices in order within an item)."""
    if TASKS[task].output_type == "multiple_choice":
        return [(it["context"], " " + c) for it in items for c in it["choices"]]  # lm-eval's target_delimiter
    return [(it["context"], it["target"]) for it in items]


def metrics_of(task: str, items: Sequence[dict[str, Any]], results: Sequence[tuple[float, bool]]) -> TaskResult:
    """Aggregate per-request results into the task's metrics, as lm-eval's ``process_results`` does.

    Example:
        >>> metrics_of("actlab-cloze", [{"context": "a b", "target": " c"}], [(-0.5, True)]).metrics["acc"]
        1.0
    """
    spec = TASKS[task]
    per_item: list[list[float]] = []
    if spec.output_type == "multiple_choice":
        acc = acc_norm = 0.0
        k = 0
        for it in items:
            lls = [ll for ll, _ in results[k : k + len(it["choices"])]]
            k += len(it["choices"])
            per_item.append(lls)
            norm = [ll / len(c) for ll, c in zip(lls, it["choices"], strict=True)]  # by characters, as acc_norm
            acc += float(max(range(len(lls)), key=lls.__getitem__) == it["gold"])
            acc_norm += float(max(range(len(norm)), key=norm.__getitem__) == it["gold"])
        metrics = {"acc": acc / len(items), "acc_norm": acc_norm / len(items)}
    else:
        per_item = [[ll] for ll, _ in results]
        metrics = {"acc": sum(g for _, g in results) / len(items),
                   "perplexity": math.exp(-sum(ll for ll, _ in results) / len(items))}
    a = metrics["acc"]
    stderr = math.sqrt(a * (1 - a) / (len(items) - 1)) if len(items) > 1 else 0.0
    return TaskResult(task, len(items), metrics, stderr, "actlab", per_item)


def score_tasks(model: torch.nn.Module, tokenizer: Any, items: dict[str, Sequence[dict[str, Any]]],
                batch_size: int = 16) -> dict[str, TaskResult]:
    """actlab's own scorer: each task's metrics for ``model`` on ``items`` (task -> items; lm-eval not needed).

    The requests of all tasks run as one pool, as ``lm_eval.simple_evaluate`` runs them, so batches (and
    numbers) equal the harness's for the same set of tasks.

    Example:
        >>> score_tasks(model, tok, {"actlab-cloze": items})["actlab-cloze"].metrics   # doctest: +SKIP
        {'acc': 0.41, 'perplexity': 31.2}
    """
    requests = {name: requests_of(name, rows) for name, rows in items.items()}
    results = loglikelihoods(model, tokenizer, [r for rs in requests.values() for r in rs], batch_size)
    out, k = {}, 0
    for name, rs in requests.items():
        out[name] = metrics_of(name, items[name], results[k : k + len(rs)])
        k += len(rs)
    return out


def score_task(model: torch.nn.Module, tokenizer: Any, task: str, items: Sequence[dict[str, Any]],
               batch_size: int = 16) -> TaskResult:
    """:func:`score_tasks` for one task.

    Example:
        >>> score_task(model, tok, "actlab-cloze", items).metrics   # doctest: +SKIP
        {'acc': 0.41, 'perplexity': 31.2}
    """
    return score_tasks(model, tokenizer, {task: items}, batch_size)[task]
