"""``SparsityPlan``: the result of calibration, saved as ``plan.json`` + ``thresholds.safetensors``.

A plan is a list of :class:`PlanEntry` (site, the linears it applies to, kind, threshold tensor), the method
and config that made it, the fingerprint of the model it was made for and its measured sparsity. Both files
are written atomically into a directory (a temp directory renamed into place); ``plan.json`` records the
sha256 of the thresholds file, so a truncated, swapped or hand-edited pair is refused on load.

Format (``format = "actlab.sparsity-plan"``, ``version`` 1, or 2 when an entry is rotated)::

    plan.json
      format, version, actlab_version, method, config{method, ...}, model{fingerprint},
      entries[{key, site, layer, kind, consumers[], modules[], threshold_shape[], sparsity, rotated}],
      metrics{sparsity_model_wide, bytes_skipped_frac, ...}, calibration{...}, extra{...},
      thresholds_sha256
    thresholds.safetensors
      one float32 tensor per entry, named by its key: shape [] (one threshold) or [width] (per channel);
      ``<key>@rotation`` [width, width] for a rotated entry (see ``rotation.py``)

Example:
    >>> plan = actlab.sparsify_(model, actlab.TealConfig(0.5), calib_windows)   # doctest: +SKIP
    >>> plan.save("plans/teal50")                                               # doctest: +SKIP
    >>> actlab.apply_(other_model, SparsityPlan.load("plans/teal50"))           # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from actlab.sparsity.config import SparsityConfig, config_from_dict
from actlab.sparsity.errors import PlanError
from actlab.sparsity.plan_schema import (
    METRIC_NUMBERS,
    check_config_fields,
    check_entry_fields,
    check_numbers,
    finite_or_null,
)

FORMAT = "actlab.sparsity-plan"
VERSION = 1
#: version 2 adds rotated entries; a plan without them is still written as version 1 for older readers
VERSION_ROTATED = 2
ROTATION_SUFFIX = "@rotation"
PLAN_JSON = "plan.json"
THRESHOLDS = "thresholds.safetensors"
KINDS = ("input", "act", "topk")


@dataclass
class PlanEntry:
    """One thresholded unit, exactly what a kernel consumes.

    Attributes:
        site: canonical site name (``layers.3.attn.qkv_in``; ``layers.3.mlp.act_out`` for ``act``).
        layer: layer index.
        kind: ``"input"``: keep ``x_i`` iff ``|x_i| > threshold_i`` at the input of ``consumers``;
            ``"act"``: keep neuron ``i`` iff ``|act(gate)_i| > threshold_i`` (consumers = up, down);
            ``"topk"``: keep the ``threshold`` (an integer k) largest ``|x_i|`` per token (masking only).
        consumers: module paths of the linears whose weights a masked channel lets a token skip.
        modules: module paths the masking path wraps (the consumers, or the act module).
        threshold: float32, shape ``[]`` or ``[width]``.
        sparsity: fraction of the channels masked on the calibration sample.
        rotation: ``[width, width]`` orthogonal ``Q`` or ``None``: when set, the mask keeps ``(x Q)_i`` with
            ``|(x Q)_i| > threshold_i`` and the consumers read ``mask(x Q) Q^T`` (``input`` entries only).
    """

    site: str
    layer: int
    kind: str
    consumers: tuple[str, ...]
    modules: tuple[str, ...]
    threshold: torch.Tensor
    sparsity: float
    rotation: torch.Tensor | None = None

    @property
    def key(self) -> str:
        """Unique name: the site, plus the consumer when one shared input is split between entries."""
        if self.kind == "input" and self.site.endswith(("qkv_in", "gate_up_in")) and len(self.consumers) == 1:
            return f"{self.site}:{self.consumers[0].rsplit('.', 1)[-1]}"
        return self.site

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "site": self.site,
            "layer": self.layer,
            "kind": self.kind,
            "consumers": list(self.consumers),
            "modules": list(self.modules),
            "threshold_shape": list(self.threshold.shape),
            "sparsity": self.sparsity,
            "rotated": self.rotation is not None,
        }


@dataclass
class SparsityPlan:
    """Thresholds per site (and channel) for one model, with everything needed to check and reuse them.

    Attributes:
        config: the method config (``config.method`` names the method).
        model: fingerprint of the model the plan was calibrated on (see ``fingerprint.py``).
        entries: the thresholded units, in model order.
        metrics: ``sparsity_model_wide``, ``bytes_skipped_frac`` and per-site-kind sparsity on calibration.
        calibration: provenance (tokens, seq_len, data spec, ...).
        extra: method-specific records (the greedy allocation path, a quality search's trace, ...).
    """

    config: SparsityConfig
    model: dict[str, Any]
    entries: list[PlanEntry]
    metrics: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.config.method

    def kernel_entries(self) -> list[PlanEntry]:
        """The entries a sparse kernel can take over (``input`` and ``act``; not per-token ``topk``).

        ``input``: ``SparseLinear([model.get_submodule(p) for p in e.consumers], e.threshold)`` (the
        consumers share the input; keep iff ``|x_i| > t_i``). ``act``: ``SparseGatedMLP(gate, up, down, act,
        e.threshold)`` with the paths from ``actlab.sparsity.groups.gated_mlp_paths(model, e.layer)``.

        Example:
            >>> [(e.kind, e.consumers, tuple(e.threshold.shape)) for e in plan.kernel_entries()][:1]  # doctest: +SKIP
            [('input', ('model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.k_proj', ...), ())]
        """
        return [e for e in self.entries if e.kind in ("input", "act")]

    def to_json(self) -> dict[str, Any]:
        from actlab import __version__

        return {
            "format": FORMAT,
            "version": VERSION_ROTATED if any(e.rotation is not None for e in self.entries) else VERSION,
            "actlab_version": __version__,
            "method": self.method,
            "config": self.config.to_dict(),
            "model": self.model,
            "entries": [e.to_json() for e in self.entries],
            "metrics": self.metrics,
            "calibration": self.calibration,
            "extra": self.extra,
        }

    def save(self, out: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``plan.json`` and ``thresholds.safetensors`` into directory ``out``, atomically.

        An existing non-empty ``out`` is refused unless ``overwrite=True``, which replaces only what actlab wrote
        there (see :mod:`actlab.outputs`). Non-finite numbers in ``calibration``/``extra`` are written as null
        (JSON has no NaN); in ``metrics`` they are an error.

        Raises:
            PlanError: invalid entries or metrics. OutputError: ``out`` cannot be written as asked.
        """
        from actlab.outputs import staged_output

        self._check()
        with staged_output(out, overwrite=overwrite) as tmp:
            self._write_into(tmp)
        return Path(out)

    def save_pretrained(self, out: str | os.PathLike, overwrite: bool = False) -> Path:
        """:meth:`save` plus a Hub model card (``README.md``): the directory is a Hub artefact as it stands.

        Example:
            >>> plan.save_pretrained("plans/teal50")                                  # doctest: +SKIP
            >>> SparsityPlan.from_pretrained("plans/teal50").method                  # doctest: +SKIP
            'teal'
        """
        from actlab.sparsity.hub import save_pretrained

        return save_pretrained(self, out, overwrite=overwrite)

    @classmethod
    def from_pretrained(cls, repo_or_dir: str | os.PathLike, revision: str | None = None) -> SparsityPlan:
        """Load a plan from a local directory (offline) or a Hub repository id (``owner/name``).

        Example:
            >>> SparsityPlan.from_pretrained("someone/smollm2-teal50")               # doctest: +SKIP
        """
        from actlab.sparsity.hub import from_pretrained

        return from_pretrained(repo_or_dir, revision=revision)

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str | None = None) -> str:
        """Upload the plan and its model card to Hub repository ``repo_id`` (created if missing); needs
        ``huggingface_hub`` and the network. Returns the commit URL.

        Example:
            >>> plan.push_to_hub("me/smollm2-teal50")                                # doctest: +SKIP
        """
        from actlab.sparsity.hub import push_to_hub

        return push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message)

    def _check(self) -> None:
        _check_entries(self.entries)
        check_numbers(self.metrics, "metrics", METRIC_NUMBERS, where="plan")

    def _write_into(self, tmp: Path) -> None:
        """Write the two plan files into the staging directory ``tmp``."""
        from safetensors.torch import save_file

        from actlab.outputs import default_mode, write_json_atomic

        tensors = {e.key: e.threshold.detach().float().cpu().contiguous() for e in self.entries}
        tensors.update({e.key + ROTATION_SUFFIX: e.rotation.detach().float().cpu().contiguous()
                        for e in self.entries if e.rotation is not None})
        save_file(tensors, str(tmp / THRESHOLDS), metadata={"format": FORMAT, "version": str(VERSION)})
        os.chmod(tmp / THRESHOLDS, default_mode(0o666))  # safetensors writes 0600; plan.json gets the umask's
        doc = self.to_json()
        doc["calibration"], doc["extra"] = finite_or_null(doc["calibration"]), finite_or_null(doc["extra"])
        doc["thresholds_sha256"] = _sha256(tmp / THRESHOLDS)
        write_json_atomic(tmp / PLAN_JSON, doc)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SparsityPlan:
        """Read and validate a plan directory (or its ``plan.json``).

        Raises:
            PlanError: missing, truncated or edited files, an unknown format version or method, or
                invalid entries/thresholds. The message says which and why.
        """
        root = Path(path).expanduser()
        if root.is_file() and root.name == PLAN_JSON:
            root = root.parent
        doc = _read_plan_json(root)
        version = doc.get("version")
        if doc.get("format") != FORMAT:
            raise PlanError(f"{root}: not an actlab sparsity plan (format {doc.get('format')!r})")
        if version not in (VERSION, VERSION_ROTATED):
            raise PlanError(
                f"{root}: plan format version {version!r} is not supported by this actlab (reads versions "
                f"{VERSION} and {VERSION_ROTATED}); recalibrate with `actlab calibrate` or upgrade actlab"
            )
        check_config_fields(root, doc.get("config"))
        config = config_from_dict(doc.get("config"))
        if doc.get("method") != config.method:
            raise PlanError(f"{root}: method {doc.get('method')!r} does not match its config ({config.method!r})")
        if not isinstance(doc.get("model"), dict) or not isinstance(doc.get("entries"), list):
            raise PlanError(f"{root}: plan.json lacks its 'model' fingerprint or 'entries' list")
        for name in ("metrics", "calibration", "extra"):
            if not isinstance(doc.get(name) or {}, dict):
                raise PlanError(f"{root}: plan.json field {name!r} must be an object, got {type(doc[name]).__name__}; "
                                "restore the file written by actlab or recalibrate")
        check_numbers(doc.get("metrics") or {}, "metrics", METRIC_NUMBERS, where=str(root))
        tensors = _read_thresholds(root, doc.get("thresholds_sha256"))
        entries = [_entry_from_json(root, e, tensors) for e in doc["entries"]]
        named = {e.key for e in entries} | {e.key + ROTATION_SUFFIX for e in entries if e.rotation is not None}
        extra_keys = sorted(set(tensors) - named)
        if extra_keys:
            raise PlanError(f"{root}: {THRESHOLDS} holds tensors no entry names: {extra_keys[:3]}")
        _check_entries(entries, where=str(root))
        return cls(
            config=config,
            model=doc["model"],
            entries=entries,
            metrics=dict(doc.get("metrics") or {}),
            calibration=finite_or_null(dict(doc.get("calibration") or {})),
            extra=finite_or_null(dict(doc.get("extra") or {})),
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_plan_json(root: Path) -> dict[str, Any]:
    file = root / PLAN_JSON
    if not file.is_file():
        raise PlanError(f"no {PLAN_JSON} in {root}: pass a directory written by `actlab calibrate` or plan.save()")
    try:
        doc = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PlanError(f"{file} is not valid JSON (truncated or edited?): {e}") from e
    if not isinstance(doc, dict):
        raise PlanError(f"{file} must hold a JSON object")
    return doc


def _read_thresholds(root: Path, expected_sha: Any) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = root / THRESHOLDS
    if not file.is_file():
        raise PlanError(f"{root}: {THRESHOLDS} is missing")
    if expected_sha != _sha256(file):
        raise PlanError(
            f"{file} does not match plan.json (checksum differs: truncated, edited or from another plan)"
        )
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise PlanError(f"{file} cannot be read: {e}") from e


def _entry_from_json(root: Path, e: Any, tensors: dict[str, torch.Tensor]) -> PlanEntry:
    check_entry_fields(root, e)
    entry = PlanEntry(
        site=e["site"],
        layer=e["layer"],
        kind=e["kind"],
        consumers=tuple(e["consumers"]),
        modules=tuple(e["modules"]),
        threshold=torch.empty(0),
        sparsity=float(e["sparsity"]),
    )
    key, shape = e["key"], list(e["threshold_shape"])
    if key != entry.key:
        raise PlanError(f"{root}: entry key {key!r} does not match its site/consumers ({entry.key!r})")
    if key not in tensors:
        raise PlanError(f"{root}: {THRESHOLDS} has no threshold for {key}")
    t = tensors[key]
    if list(t.shape) != shape:
        raise PlanError(f"{root}: threshold {key} has shape {list(t.shape)}, plan.json says {shape}")
    entry.threshold = t
    if e.get("rotated", False):
        q = tensors.get(key + ROTATION_SUFFIX)
        width = q.shape[0] if q is not None else 0
        if q is None or list(q.shape) != [width, width] or (t.dim() == 1 and t.numel() != width):
            raise PlanError(f"{root}: rotated entry {key} has no [width, width] rotation in {THRESHOLDS}")
        entry.rotation = q
    return entry


def _check_entries(entries: list[PlanEntry], where: str = "plan") -> None:
    """Invariants every plan keeps: known kinds, unique keys and modules, thresholds >= 0 and not NaN."""
    keys: set[str] = set()
    wrapped: set[str] = set()
    for e in entries:
        if e.kind not in KINDS:
            raise PlanError(f"{where}: entry {e.key} has unknown kind {e.kind!r} (kinds: {', '.join(KINDS)})")
        if e.key in keys:
            raise PlanError(f"{where}: two entries for {e.key}")
        keys.add(e.key)
        if not e.modules or not e.consumers:
            raise PlanError(f"{where}: entry {e.key} names no modules")
        for m in e.modules:
            if m in wrapped:
                raise PlanError(f"{where}: module {m} is masked by two entries")
            wrapped.add(m)
        t = e.threshold
        if t.dim() > 1 or not t.is_floating_point():
            raise PlanError(f"{where}: threshold {e.key} must be a float scalar or vector, got {t.dtype} {list(t.shape)}")
        if torch.isnan(t).any() or (t < 0).any():
            raise PlanError(f"{where}: threshold {e.key} has NaN or negative values; thresholds are |x| cut-offs "
                            ">= 0: recalibrate the plan")
        if torch.isinf(t).any():
            raise PlanError(f"{where}: threshold {e.key} has +inf values (would mask every input); thresholds must "
                            "be finite: recalibrate the plan")
        if e.kind == "topk" and (t.dim() != 0 or t.item() < 1 or not math.isfinite(t.item())):
            raise PlanError(f"{where}: top-k entry {e.key} needs a scalar k >= 1")
        if e.rotation is not None:
            q = e.rotation
            if e.kind != "input" or q.dim() != 2 or q.shape[0] != q.shape[1]:
                raise PlanError(f"{where}: rotation of {e.key} must be a square matrix on an input entry")
            eye = torch.eye(q.shape[0], dtype=torch.float64)
            if not torch.allclose(q.double() @ q.double().T, eye, atol=1e-3):
                raise PlanError(f"{where}: rotation of {e.key} is not orthogonal (edited or corrupted)")
        if not math.isfinite(e.sparsity) or not 0.0 <= e.sparsity <= 1.0:
            raise PlanError(f"{where}: entry {e.key} has sparsity {e.sparsity} outside [0, 1]")

