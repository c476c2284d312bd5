"""Where a training run writes: the live log and checkpoints in ``OUT`` as it goes, the model at the end.

``OUT`` is claimed for the whole run (:func:`actlab.outputs.claim_output`: locked, a foreign non-empty
directory refused). ``log.jsonl`` and ``checkpoints/`` are written straight into it while training, since a
killed run must keep them to resume, and recorded in its manifest as actlab's own. The model itself
(``save_pretrained``, safetensors), the tokenizer, ``train_config.json`` and the final log appear only
when everything succeeded, through :func:`actlab.outputs.staged_output`; the checkpoints are hard-linked
into the stage so the commit keeps them. A run that fails before its first checkpoint removes its log
again (and ``OUT`` itself when it created it), so it leaves nothing behind.

Example:
    >>> with RunOutput("runs/t", resume=False, overwrite=False) as ro:   # doctest: +SKIP
    ...     ro.write_row({"step": 1, "loss": 2.3})
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actlab.outputs import MANIFEST, claim_output, record_outputs, remove_outputs, staged_output
from actlab.train import checkpoint
from actlab.train.log import JsonlLog, clean

LOG = "log.jsonl"
CONFIG = "train_config.json"
#: what a finished run adds (besides the model's own files, which save_pretrained names)
FINAL = ("config.json", "model.safetensors", CONFIG, LOG)


class RunOutput:
    """The output directory of one run (rank 0 only): claim, live log, checkpoints, final commit."""

    def __init__(self, out: str | os.PathLike, resume: bool, overwrite: bool) -> None:
        self.out = Path(out).expanduser()
        self.resume, self.overwrite = resume, overwrite
        self.created = not self.out.exists()
        self.checkpointed = False
        self._log: JsonlLog | None = None

    def __enter__(self) -> RunOutput:
        # A resume continues this directory's run, so its own files may be replaced; its log is rewritten from
        # the checkpoint (a kill may have left it changed since the manifest recorded it).
        expect = [f for f in FINAL if not (self.resume and f == LOG)]
        self._claim = claim_output(self.out, overwrite=self.overwrite or self.resume, expect=expect)
        self._claim.__enter__()
        return self

    def start(self, history: list[dict[str, Any]]) -> None:
        """Begin the live log with ``history`` (a resume's rows so far); a fresh run drops stale checkpoints."""
        if not self.resume and self.out.is_dir():
            remove_outputs(self.out, [checkpoint.DIR, LOG])  # --overwrite: the earlier run's, never foreign
        root = self.out / checkpoint.DIR
        for stale in root.glob(".step-*") if root.is_dir() else []:  # a checkpoint a kill cut short
            shutil.rmtree(stale, ignore_errors=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self._log = JsonlLog(self.out / LOG, rows=history)
        record_outputs(self.out, written=[LOG])

    def write_row(self, row: dict[str, Any]) -> None:
        assert self._log is not None
        self._log.write(row)
        record_outputs(self.out, written=[LOG])

    def save_checkpoint(self, step: int, **kwargs: Any) -> Path:
        path = checkpoint.save(self.out, step, **kwargs)
        self.checkpointed = True
        return path

    def commit(self, finalize: Callable[[Path], Any], config: dict[str, Any], history: list[dict[str, Any]],
               tokenizer: Any = None) -> Any:
        """Stage the final model (``finalize(tmp)`` returns it), its config and log, then move them into OUT."""
        if self._log is not None:
            self._log.close()
            self._log = None
        with staged_output(self.out, overwrite=True) as tmp:  # every actlab file in OUT is this run's
            model = finalize(tmp)
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            (tmp / CONFIG).write_text(json.dumps(clean(config), indent=2) + "\n")
            (tmp / LOG).write_text("".join(json.dumps(clean(r)) + "\n" for r in history))
            for _, ck in checkpoint.checkpoints(self.out):
                dest = tmp / checkpoint.DIR / ck.name
                dest.mkdir(parents=True)
                for f in ck.iterdir():
                    try:
                        os.link(f, dest / f.name)  # same inode: no copy of a large checkpoint
                    except OSError:
                        shutil.copy2(f, dest / f.name)
        return model

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if self._log is not None:
                self._log.close()
            if exc_type is not None and not self.checkpointed and not self.resume:
                remove_outputs(self.out, [LOG])  # nothing to resume from: leave nothing behind
                if self.created and self.out.is_dir() and [p.name for p in self.out.iterdir()] in ([], [MANIFEST]):
                    (self.out / MANIFEST).unlink(missing_ok=True)
                    self.out.rmdir()
        finally:
            self._claim.__exit__(exc_type, exc, tb)
