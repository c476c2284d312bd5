"""The training loop: one for every objective (the objective's handler supplies only what differs).

Per optimizer step: the objective's ``step`` is set, the learning rate comes from the schedule, and each of
``grad_accum`` micro-batches runs ``with objective.active(module): outputs = model(input_ids=b, labels=b)``
and ``loss, metrics = objective.loss(module, batch, outputs)``; gradients are clipped and AdamW steps.
Batch order comes from the seed (:mod:`actlab.train.batches`), and the torch RNG is reseeded from
``(seed, step, rank)`` at every step, so a run is reproducible and a resumed run is the same run.

History rows (``TrainResult.history`` and ``log.jsonl``, one per ``log_every`` steps and per evaluation):

- training: ``step`` (optimizer steps done), ``tokens`` (trained so far, all processes), ``loss`` (the
  objective's total, mean over micro-batches and processes), ``lm_loss``, ``lr``, ``grad_norm`` (before
  clipping), ``tokens_per_s``, and the objective's metrics;
- evaluation (``eval_data`` given; step 0, every ``eval_every`` steps, the end): ``step``, ``tokens``,
  ``eval_ppl``, ``eval_nll``, ``eval_tokens``, ``density_site``, ``density`` ({ε: [per layer]} at
  profile's thresholds), ``zero_frac`` ([per layer]) and ``density_0.01`` (mean over layers).

Example:
    >>> import actlab, torch
    >>> from actlab.train import DenseConfig
    >>> model, tok = actlab.load_model("random:tiny-llama")
    >>> data = torch.randint(3, 200, (8, 16))
    >>> res = train(model, DenseConfig(adapter="full"), data, progress=False,
    ...             args=TrainArgs(tokens=64, seq_len=16, batch_size=2, precision="fp32", log_every=1))
    >>> [r["step"] for r in res.history]
    [1, 2]
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actlab.models.scoring import model_device
from actlab.train import checkpoint, distributed, precision
from actlab.train.args import REPORTING, TrainArgs, TrainResult
from actlab.train.batches import BatchOrder, plan_steps, window_ids
from actlab.train.config import TrainConfig
from actlab.train.errors import TrainError
from actlab.train.log import Progress, clean
from actlab.train.objective import Objective, handler_for
from actlab.train.output import RunOutput
from actlab.train.schedule import lr_at, warmup_steps

__all__ = ["REPORTING", "TrainArgs", "TrainResult", "train"]


def _fingerprint(ids: torch.Tensor | None) -> str | None:
    if ids is None:
        return None
    return f"{tuple(ids.shape)}:" + hashlib.sha256(ids.contiguous().numpy().tobytes()).hexdigest()[:16]


def _spec(data: Any) -> dict[str, Any] | None:
    """A ``Windows``' provenance (corpus, split, tokenizer) for train_config.json; not compared on a resume."""
    spec = getattr(data, "spec", None)
    return spec.to_dict() if hasattr(spec, "to_dict") else None


def _seed_of(seed: int, step: int, rank: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{step}:{rank}".encode()).digest()[:8], "little") >> 1


def train(
    model: nn.Module,
    config: TrainConfig,
    data: Any,
    *,
    args: TrainArgs = TrainArgs(),
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    eval_data: Any = None,
    callbacks: Iterable[Callable[[dict[str, Any]], None]] = (),
    tokenizer: Any = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train ``model`` with ``config``'s objective on ``data`` ([N, seq_len] token windows or ``Windows``).

    Evaluates perplexity and per-layer density (``mlp.act_out``, :mod:`actlab.train.density`) on ``eval_data``
    at the start, every ``eval_every`` steps and at the end, with the objective's hooks active. With ``out``,
    writes ``log.jsonl`` as it goes, checkpoints every ``checkpoint_every`` steps, and at the end the model
    (``save_pretrained``), ``tokenizer``, ``train_config.json`` and the log; ``resume=True`` continues from
    ``out``'s newest checkpoint. ``callbacks`` are called with every row this process logs.
    ``overwrite`` replaces actlab's own earlier outputs in ``out``. Launched by ``accelerate launch`` or
    ``torchrun``, every process trains its share of each step and only rank 0 writes.

    Raises:
        TrainError: too little data for one step or for ``args.tokens``, windows of another length, a resume
            without a checkpoint or from a run with other settings, nothing trainable.
        OutputError: ``out`` holds files of another run or is being written by one.
    """
    ids = window_ids(data, "data")
    if ids.shape[1] != args.seq_len:
        raise TrainError(f"the training windows are {ids.shape[1]} tokens long but seq_len is {args.seq_len}; "
                         f"pass TrainArgs(seq_len={ids.shape[1]}) or make windows of {args.seq_len} tokens")
    ev = None
    if eval_data is not None:
        ev = window_ids(eval_data, "eval_data")
        ev = ev[: max(1, math.ceil(args.eval_tokens / ev.shape[1]))]
    if out is None and (resume or args.checkpoint_every):
        raise TrainError("resume and checkpoint_every need an output directory (out=...)")
    handler = handler_for(config)
    d = distributed.setup()
    try:
        steps = plan_steps(ids.shape[0], ids.shape[1], args.tokens, args.batch_size, args.grad_accum,
                           d.world_size)
        handler.total_steps = steps
        device = d.device or model_device(model)
        prec = precision.resolve(args.precision, device)
        run = {"config": config.to_dict(), "world_size": d.world_size, "precision": prec,
               "args": {k: v for k, v in args.to_dict().items() if k not in REPORTING},
               "data": _fingerprint(ids), "eval_data": _fingerprint(ev)}
        specs = (_spec(data), _spec(eval_data))
        ro = RunOutput(out, resume, overwrite) if out is not None and d.is_main else None
        with ExitStack() as stack:
            failed = None
            if ro is not None:
                try:
                    stack.enter_context(ro)
                except Exception as e:  # raised below, once every process knows to stop
                    failed = e
            if not distributed.broadcast_flag(failed is None, d):
                raise failed or TrainError(f"process 0 could not claim the output directory {out}; see its error")
            ckpt = _resume_point(Path(out), run) if resume else None
            r = _Run(handler, model, ids, ev, args, d, prec, run, steps, ro, progress, tuple(callbacks),
                     tokenizer, device)
            r.specs = specs
            return r.go(ckpt)
    finally:
        distributed.teardown(d)


def _resume_point(out: Path, run: dict[str, Any]) -> Path:
    path = checkpoint.latest(out)
    if path is None:
        raise TrainError(f"resume: {out} has no checkpoint to resume from; run without resume (and with "
                         "checkpoint_every) to start one")
    diffs = checkpoint.differences(checkpoint.load_state(path).get("run", {}), clean(run))
    if diffs:
        raise TrainError(f"resume: checkpoint {path} is from a run with other settings: {'; '.join(diffs)}; "
                         "resume with the same config and arguments, or start a new run in another out")
    return path


class _Run:
    """One run's state between steps (kept on an object so the step loop reads top to bottom)."""

    def __init__(self, handler: Objective, model: nn.Module, ids: torch.Tensor, ev: torch.Tensor | None,
                 args: TrainArgs, d: distributed.Dist, prec: str, run: dict[str, Any], steps: int,
                 ro: RunOutput | None, progress: bool, callbacks: tuple, tokenizer: Any,
                 device: torch.device) -> None:
        self.h, self.model, self.ids, self.ev, self.args, self.d = handler, model, ids, ev, args, d
        self.prec, self.run, self.steps, self.ro, self.callbacks = prec, run, steps, ro, callbacks
        self.progress = progress and d.is_main
        self.tokenizer, self.device = tokenizer, device
        self.order = BatchOrder(ids.shape[0], args.batch_size, args.grad_accum, d.world_size, args.seed)
        self.tokens_per_step = self.order.per_step * ids.shape[1]
        self.history: list[dict[str, Any]] = []
        self.specs: tuple[dict | None, dict | None] = (None, None)

    def go(self, ckpt: Path | None) -> TrainResult:
        a = self.args
        torch.manual_seed(a.seed)  # LoRA's initialisation (DDP broadcasts rank 0's anyway)
        n_calib = math.ceil(a.calib_tokens / self.ids.shape[1])
        if self.d.device is not None:  # this process's GPU (or CPU) before the objective calibrates on it
            self.model.to(self.d.device)
        module = self.h.prepare(self.model, self.ids[:n_calib] if n_calib else None)
        if self.d.device is not None:
            module.to(self.d.device)  # what prepare added (LoRA weights, buffers)
        params = list(checkpoint.trainable(module).values())
        if not params:
            raise TrainError(f"objective {self.h.config.objective!r} left nothing trainable (no parameter "
                             "requires grad); check its adapter and LoRA targets")
        optimizer = torch.optim.AdamW(params, lr=a.lr, weight_decay=a.weight_decay)
        start = 0
        if ckpt is not None:
            state, obj_state = checkpoint.restore(ckpt, module, optimizer)
            self.h.load_state_dict(obj_state)
            start, self.history = int(state["step"]), list(state.get("history", []))
        if self.ro is not None:
            self.ro.start(self.history)
        ddp = distributed.wrap(module, self.d)
        warm = warmup_steps(self.steps, a.warmup)
        with Progress(self.progress, self.steps, start) as bar:
            if start == 0:
                self._evaluate(module, 0, bar)
            last_t, last_step = time.perf_counter(), start
            for step in range(start, self.steps):
                lr = lr_at(step, self.steps, a.lr, warm, a.min_lr_ratio)
                values = self._step(ddp, module, optimizer, params, step, lr)
                done = step + 1
                if done % a.log_every == 0 or done == self.steps:
                    keys = sorted(values)
                    mean = dict(zip(keys, distributed.mean([values[k] for k in keys], self.d), strict=True))
                    now = time.perf_counter()
                    tps = (done - last_step) * self.tokens_per_step / max(now - last_t, 1e-9)
                    last_t, last_step = now, done
                    row = {"step": done, "tokens": done * self.tokens_per_step, "loss": mean.pop("loss"),
                           "lr": lr, "tokens_per_s": tps, **mean}
                    self._log(row)
                    bar.update(done, row["loss"], tps)
                else:
                    bar.update(done)
                paused = False
                if done == self.steps or (a.eval_every and done % a.eval_every == 0):
                    paused = self._evaluate(module, done, bar)
                if a.checkpoint_every and done % a.checkpoint_every == 0 and done < self.steps:
                    self._checkpoint(module, optimizer, done)
                    paused = True
                if paused:  # tokens/s counts training only
                    last_t, last_step = time.perf_counter(), done
        return self._finish(module)

    def _step(self, ddp: nn.Module, module: nn.Module, optimizer: torch.optim.Optimizer,
              params: list[nn.Parameter], step: int, lr: float) -> dict[str, float]:
        a, h = self.args, self.h
        torch.manual_seed(_seed_of(a.seed, step, self.d.rank))  # dropout etc.: the same on a resume
        h.step = step
        for group in optimizer.param_groups:
            group["lr"] = lr
        module.train()
        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        micro = self.order.micro_batches(step, self.d.rank)
        for i, idx in enumerate(micro):
            b = self.ids[idx].to(self.device)  # [batch_size, seq_len]
            batch = {"input_ids": b, "labels": b}
            with distributed.no_sync(ddp, last=i == len(micro) - 1):
                with precision.autocast(self.prec, self.device), h.active(module):
                    outputs = ddp(input_ids=b, labels=b, use_cache=False)
                    loss, metrics = h.loss(module, batch, outputs)
                (loss.float() / len(micro)).backward()
            for k, v in {"loss": loss, "lm_loss": outputs.loss, **metrics}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v) / len(micro)
        if a.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, a.max_grad_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        if not math.isfinite(float(norm)):  # the same on every process: gradients are all-reduced
            raise TrainError(f"step {step + 1}: the gradient is not finite (loss {sums['loss']:.4g}); the weights "
                             "are left as they were before it: lower the learning rate, train in fp32, or check "
                             "the objective's terms")
        optimizer.step()
        sums["grad_norm"] = float(norm)
        return sums

    def _evaluate(self, module: nn.Module, step: int, bar: Progress) -> bool:
        """Perplexity and per-layer density on the eval windows (rank 0), with the objective's hooks on."""
        if self.ev is None:
            return False
        if self.d.is_main:
            from actlab.eval.perplexity import perplexity
            from actlab.train.density import REPORT_EPS, density_probe, mean_density

            bar.update(step, note="evaluating")
            module.eval()
            try:  # one forward pass for both: the density probe reads the perplexity pass's activations
                with torch.no_grad(), precision.autocast(self.prec, self.device), self.h.active(module):
                    with density_probe(module) as read:
                        ppl = perplexity(module, self.ev)
                dens = read()
            finally:
                module.train()
            self._log({"step": step, "tokens": step * self.tokens_per_step, "eval_ppl": ppl.ppl,
                       "eval_nll": ppl.nll, "eval_tokens": ppl.tokens, "density_site": dens["site"],
                       "density": dens["density"], "zero_frac": dens["zero_frac"],
                       f"density_{REPORT_EPS}": mean_density(dens)})
        distributed.barrier(self.d)
        return True

    def _log(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self.ro is not None:
            self.ro.write_row(row)
        for cb in self.callbacks:
            cb(row)

    def _checkpoint(self, module: nn.Module, optimizer: torch.optim.Optimizer, done: int) -> None:
        if self.ro is not None:
            state = {"run": clean(self.run), "tokens": done * self.tokens_per_step,
                     "data_position": done * self.order.per_step, "history": clean(self.history),
                     "args": self.args.to_dict()}
            self.ro.save_checkpoint(done, module=module, optimizer=optimizer, objective_state=self.h.state_dict(),
                                    state=state)
        distributed.barrier(self.d)

    def _finish(self, module: nn.Module) -> TrainResult:
        if self.ro is None:
            model = self.h.finalize(module, None)
            distributed.barrier(self.d)
            return TrainResult(model, self.history, None)
        doc = {"config": self.h.config.to_dict(), "args": self.args.to_dict(), "steps": self.steps,
               "tokens": self.steps * self.tokens_per_step, **{k: self.run[k] for k in
                                                               ("world_size", "precision", "data", "eval_data")},
               "data_spec": self.specs[0], "eval_data_spec": self.specs[1]}  # corpus, split, tokenizer
        model = self.ro.commit(lambda tmp: self.h.finalize(module, tmp), doc, self.history, self.tokenizer)
        distributed.barrier(self.d)
        return TrainResult(model, self.history, self.ro.out)
