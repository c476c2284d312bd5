"""Steering vectors by difference of means (CAA) over contrastive prompt pairs, and steering with them.

For each pair ``(positive, negative)`` both texts run through the model; at each chosen layer the residual
stream (``layers.{i}.resid_out``) is read at the last token (``position="last"``) or averaged over tokens
(``"mean"``), and the vector of that layer is ``mean(positive) - mean(negative)``. Differences of means are
stable between runs (PCA directions flip sign; llama.cpp's cvector-generator notes this).

Steering adds ``scale · v`` to the layer's output at every position, through an :func:`actlab.capture` hook
that lives only inside :func:`apply_steering`'s ``with`` block. This is also what llama.cpp does with a
control vector (``--control-vector``): :func:`actlab.interp.control_vector.export_control_vector` writes one.

Saved as a directory: ``steering.json`` (format, layers, site, how it was computed, the model's fingerprint)
and ``directions.safetensors`` (one ``[d_model]`` float32 tensor per layer, ``layers.{i}.resid_out``).

Example:
    >>> vec = steering_vector(model, tok, [("I love it", "I hate it")], layers=[6, 7])   # doctest: +SKIP
    >>> vec.save("runs/love")                                                            # doctest: +SKIP
    >>> with apply_steering(model, SteeringVector.load("runs/love"), scale=4.0):        # doctest: +SKIP
    ...     out = model.generate(ids, max_new_tokens=20)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actlab.activations.hooks import capture
from actlab.activations.sites import Site, resolve_sites
from actlab.models.adapters import get_adapter
from actlab.models.scoring import lm_logits, model_device
from actlab.models.wrappers import unwrap
from actlab.progress import progress_bar

__all__ = ["POSITIONS", "SteeringError", "SteeringVector", "apply_steering", "steering_vector"]

FORMAT = "actlab.steering-vector"
VERSION = 1
META = "steering.json"
DIRECTIONS = "directions.safetensors"
SITE_KIND = "resid_out"


class SteeringError(ValueError):
    """A steering vector that cannot be made, read or applied as asked (the message says what to change)."""


#: how one text's residual stream ``[T, d_model]`` becomes one vector: a registry, not a branch per name
POSITIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "last": lambda h: h[-1],
    "mean": lambda h: h.mean(0),
}


def _fingerprint(model: nn.Module) -> dict[str, Any]:
    from actlab.sparsity.fingerprint import model_fingerprint

    return model_fingerprint(model)


@dataclass
class SteeringVector:
    """Per layer a ``[d_model]`` direction to add to that layer's output residual stream.

    Attributes:
        directions: layer index -> ``[d_model]`` float32 (CPU) vector.
        position: how each text was reduced (a key of :data:`POSITIONS`).
        n_pairs: contrastive pairs averaged.
        model: fingerprint of the model it was computed on (see ``actlab.sparsity.fingerprint``).
        model_name: the model's config name (``config.name_or_path``), for people; the fingerprint decides.
        method: how it was computed (``mean_difference``).
    """

    directions: dict[int, torch.Tensor]
    position: str = "last"
    n_pairs: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""
    method: str = "mean_difference"
    site: str = SITE_KIND

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    @property
    def d_model(self) -> int:
        return int(next(iter(self.directions.values())).numel())

    def to_json(self) -> dict[str, Any]:
        from actlab import __version__

        return {"format": FORMAT, "version": VERSION, "actlab_version": __version__, "method": self.method,
                "site": self.site, "position": self.position, "layers": self.layers, "d_model": self.d_model,
                "n_pairs": self.n_pairs, "model_name": self.model_name, "model": self.model,
                "norms": {str(i): float(self.directions[i].norm()) for i in self.layers}}

    def save(self, out: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``steering.json`` and ``directions.safetensors`` into directory ``out``, atomically.

        Raises:
            OutputError: ``out`` is not empty (without ``overwrite``) or cannot be written.
        """
        from safetensors.torch import save_file

        from actlab.outputs import default_mode, staged_output, write_json_atomic

        tensors = {f"layers.{i}.{self.site}": self.directions[i].detach().float().cpu().contiguous()
                   for i in self.layers}
        with staged_output(out, overwrite=overwrite) as tmp:
            save_file(tensors, str(tmp / DIRECTIONS), metadata={"format": FORMAT, "version": str(VERSION)})
            os.chmod(tmp / DIRECTIONS, default_mode(0o666))  # safetensors writes 0600
            doc = self.to_json()
            doc["directions_sha256"] = hashlib.sha256((tmp / DIRECTIONS).read_bytes()).hexdigest()
            write_json_atomic(tmp / META, doc)
        return Path(out)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SteeringVector:
        """Read a directory written by :meth:`save` (or ``actlab steer``).

        Raises:
            SteeringError: missing, edited or truncated files, another format or version.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        root = Path(path).expanduser()
        if root.is_file() and root.name == META:
            root = root.parent
        meta = root / META
        if not meta.is_file():
            raise SteeringError(f"no {META} in {root}: pass a directory written by `actlab steer` or vector.save()")
        try:
            doc = json.loads(meta.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SteeringError(f"{meta} is not valid JSON (truncated or edited?): {e}") from e
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise SteeringError(f"{root}: not an actlab steering vector (format "
                                f"{doc.get('format') if isinstance(doc, dict) else None!r})")
        if doc.get("version") != VERSION:
            raise SteeringError(f"{root}: steering vector version {doc.get('version')!r} is not supported (this "
                                f"actlab reads version {VERSION}); recompute it with `actlab steer`")
        file = root / DIRECTIONS
        if not file.is_file() or hashlib.sha256(file.read_bytes()).hexdigest() != doc.get("directions_sha256"):
            raise SteeringError(f"{file} is missing or does not match {META} (truncated, edited or from another "
                                "vector); recompute it with `actlab steer`")
        try:
            tensors = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as e:
            raise SteeringError(f"{file} cannot be read: {e}") from e
        site = doc.get("site", SITE_KIND)
        try:
            directions = {int(i): tensors[f"layers.{int(i)}.{site}"] for i in doc["layers"]}
        except (KeyError, TypeError, ValueError) as e:
            raise SteeringError(f"{root}: {META} names layers that {DIRECTIONS} lacks ({e})") from e
        if not directions or len({v.shape for v in directions.values()}) != 1:
            raise SteeringError(f"{root}: a steering vector needs at least one layer, all of one width")
        return cls(directions=directions, position=doc.get("position", "last"), n_pairs=int(doc.get("n_pairs", 0)),
                   model=doc.get("model") or {}, model_name=doc.get("model_name", ""),
                   method=doc.get("method", "mean_difference"), site=site)

    def check(self, model: nn.Module) -> None:
        """Refuse a model this vector was not computed on (other width, layers or weights).

        Raises:
            SteeringError: naming the difference.
        """
        from actlab.sparsity.fingerprint import fingerprint_mismatch

        n_layers = len(unwrap(model)[0].get_submodule(get_adapter(model).layers))
        width = int(unwrap(model)[0].get_input_embeddings().weight.shape[1])
        made_for = f"made for {self.model_name or self.model.get('architecture', 'another model')!r}"
        if width != self.d_model:
            raise SteeringError(f"the steering vector has d_model {self.d_model} but the model {width} ({made_for}); "
                                "compute a vector for this model with `actlab steer`")
        if max(self.layers) >= n_layers:
            raise SteeringError(f"the steering vector steers layer {max(self.layers)} but the model has {n_layers} "
                                f"layers ({made_for}); compute a vector for this model with `actlab steer`")
        if self.model:
            why = fingerprint_mismatch(self.model, _fingerprint(model))
            if why is not None:
                why = why.replace("the plan was made for", "the vector was made for").replace("the plan", "the vector")
                raise SteeringError(f"the steering vector does not fit this model: {why} ({made_for}); compute a "
                                    "vector for this model with `actlab steer`")


def _check_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    if layers is None:
        return [n_layers // 2]  # CAA's usual choice: one middle layer
    chosen = sorted({int(i) for i in layers})
    bad = [i for i in chosen if not 0 <= i < n_layers]
    if not chosen or bad:
        raise SteeringError(f"layers {bad or list(layers)} are not layers of this model (0..{n_layers - 1})")
    return chosen


def _check_pairs(pairs: Sequence[Any]) -> list[tuple[str, str]]:
    if not pairs:
        raise SteeringError("no contrastive prompt pairs: give at least one (positive, negative) pair of texts")
    out = []
    for n, p in enumerate(pairs):
        if not (isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(t, str) and t for t in p)):
            raise SteeringError(f"pair {n} must be two non-empty texts (positive, negative), got {p!r}")
        out.append((p[0], p[1]))
    return out


@torch.no_grad()
def steering_vector(
    model: nn.Module,
    tok: Any,
    pairs: Sequence[tuple[str, str]],
    layers: Sequence[int] | None = None,
    position: str = "last",
    progress: bool = False,
) -> SteeringVector:
    """The difference of means of the residual stream between the positive and negative texts of ``pairs``.

    Args:
        pairs: ``(positive, negative)`` texts; each text runs alone (no padding enters the means).
        layers: layer indices to compute a direction for (default: the middle layer).
        position: ``"last"`` token or ``"mean"`` over tokens (a key of :data:`POSITIONS`).

    Raises:
        SteeringError: no pairs, an empty text, an unknown position or a layer out of range.

    Example:
        >>> pairs = [("The movie was wonderful", "The movie was terrible")]
        >>> vec = steering_vector(model, tok, pairs, layers=range(6, 11))      # doctest: +SKIP
        >>> vec.directions[6].shape                                           # doctest: +SKIP
        torch.Size([576])
    """
    pairs = _check_pairs(pairs)
    if position not in POSITIONS:
        raise SteeringError(f"unknown position {position!r}; use one of {', '.join(POSITIONS)}")
    reduce = POSITIONS[position]
    n_layers = len(unwrap(model)[0].get_submodule(get_adapter(model).layers))
    chosen = _check_layers(layers, n_layers)
    sites = resolve_sites(model, [f"layers.{i}.{SITE_KIND}" for i in chosen])
    sums: dict[int, torch.Tensor] = {}
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        with progress_bar(progress, 2 * len(pairs), "steering vector") as advance:
            for pos_text, neg_text in pairs:
                for sign, text in ((1.0, pos_text), (-1.0, neg_text)):
                    ids = tok(text, return_tensors="pt")["input_ids"]
                    if ids.shape[1] == 0:
                        raise SteeringError(f"{text!r} is empty after tokenisation")
                    with capture(model, sites=sites) as cap:
                        lm_logits(model, ids.to(device))
                    for name, h in cap.tensors.items():
                        layer = sites[name].layer
                        v = sign * reduce(h[0].double().cpu())  # [d_model]
                        sums[layer] = v if layer not in sums else sums[layer] + v
                    advance(1)
    finally:
        model.train(was_training)
    config = getattr(unwrap(model)[0], "config", None)
    return SteeringVector(
        directions={i: (sums[i] / len(pairs)).float() for i in chosen}, position=position, n_pairs=len(pairs),
        model=_fingerprint(model), model_name=str(getattr(config, "name_or_path", "") or ""),
    )


@contextmanager
def apply_steering(model: nn.Module, vector: SteeringVector, scale: float = 1.0, check: bool = True,
                   ) -> Iterator[dict[str, Site]]:
    """Add ``scale · v`` to the output residual stream of each of the vector's layers, inside the block.

    Every position is steered (prompt and generated tokens alike), as llama.cpp's control vectors are.

    Args:
        check: refuse a vector computed on another model (:meth:`SteeringVector.check`).

    Raises:
        SteeringError: the vector does not fit the model, or ``scale`` is not finite.

    Example:
        >>> with apply_steering(model, vec, scale=-4.0):         # doctest: +SKIP
        ...     model.generate(ids, max_new_tokens=16)
    """
    scale = float(scale)
    if not torch.isfinite(torch.tensor(scale)):
        raise SteeringError(f"the steering scale must be a finite number, got {scale}")
    if check:
        vector.check(model)
    sites = resolve_sites(model, [f"layers.{i}.{vector.site}" for i in vector.layers])
    add = {name: scale * vector.directions[s.layer] for name, s in sites.items()}

    def fn(site: Site, x: torch.Tensor) -> torch.Tensor:
        return x + add[site.name].to(device=x.device, dtype=x.dtype)

    with capture(model, sites=sites, fn=fn):
        yield sites
