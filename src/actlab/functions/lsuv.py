"""LSUV: layer-sequential unit-variance initialisation (Mishkin & Matas, "All you need is a good init", 2016).

For a network and one batch of data: give every weight layer (Linear, Conv1d, Conv2d by default) an
orthonormal weight and a zero bias, then, one layer at a time in the order the forward pass reaches them,
divide its weight by the standard deviation of its output until ``|std - 1| < tol``, in at most
``max_iters`` rescalings. Earlier layers are final when a later one is rescaled, so every layer ends with a
unit-variance output on that batch.

What carries over from the reference code (the paper's Caffe code and the ``lsuv`` 0.3.0 package):

* orthonormal init through the SVD of a Gaussian matrix (``u`` or ``v``, whichever has the weight's
  flattened shape ``[out, in * kernel]``); biases set to zero;
* the std of the whole output tensor (every element of the batch), the rescale ``W *= target / std``;
* the model runs in eval mode (dropout off) without gradients, its modes are restored afterwards;
  PyTorch's fused attention fast path is switched off meanwhile, or the Linear layers inside
  ``nn.TransformerEncoderLayer`` would never be called as modules.

What differs: layers are taken in forward order (found by one forward pass), not registration order;
each measurement stops the forward pass right after the layer (the rest of the network does not
change its output), so a pass over layer ``i`` costs ``i`` layers, not the whole network. A layer whose
weight is shared with another module (tied embeddings), or that the forward pass never calls (the
``out_proj`` of ``nn.MultiheadAttention``, applied functionally), is left untouched and listed in
:attr:`LSUVReport.skipped`. ``center=True`` also shifts each bias by the output's mean, the fastai
course's variant (``bias -= mean``), until ``|mean| < tol`` too.

Hooks are the shared ones: :func:`actlab.activations.sites.module_sites` names the layers,
:func:`actlab.capture` hooks them for one forward pass at a time, and removes them in ``finally``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> net = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(32, 32), nn.Tanh())])
    >>> report = lsuv_(net, torch.randn(256, 32))
    >>> report.converged, len(report.layers), max(abs(x.std_after - 1) for x in report.layers) < 0.1
    (True, 6, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from actlab.activations.hooks import capture
from actlab.activations.sites import Site, SiteError, module_sites
from actlab.errors import ActlabError
from actlab.models.wrappers import unwrap

#: the layers LSUV initialises unless told otherwise (as the brief and the reference code's core set)
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)

#: errors a forward pass raises on a batch it cannot take (wrong shape, dtype, device, arguments)
_FORWARD_ERRORS = (RuntimeError, TypeError, ValueError, IndexError, KeyError, AttributeError)


class LSUVError(ActlabError):
    """A model LSUV cannot initialise (no weight layer) or a batch it cannot run."""


@dataclass(frozen=True)
class LSUVLayer:
    """What LSUV did to one layer.

    Attributes:
        path: module path in the model.
        type: the module's class name.
        std_before: output std after the orthonormal init, before any rescaling.
        std_after: output std when LSUV left the layer.
        mean_after: output mean when LSUV left the layer.
        passes: rescalings applied (each one followed by a forward pass to measure); 0 when the layer
            was already within tolerance.
        converged: ``|std_after - target| < tol`` (and ``|mean_after| < tol`` with ``center``).
    """

    path: str
    type: str
    std_before: float
    std_after: float
    mean_after: float
    passes: int
    converged: bool


@dataclass
class LSUVReport:
    """Per-layer outcome of :func:`lsuv_`, in forward order, and the layers left alone with the reason."""

    layers: list[LSUVLayer]
    skipped: dict[str, str] = field(default_factory=dict)
    target_std: float = 1.0
    tol: float = 0.1
    max_iters: int = 10

    @property
    def converged(self) -> bool:
        """Every initialised layer ended within tolerance."""
        return all(layer.converged for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"target_std": self.target_std, "tol": self.tol, "max_iters": self.max_iters,
                "converged": self.converged, "layers": [asdict(layer) for layer in self.layers],
                "skipped": dict(self.skipped)}

    def __str__(self) -> str:
        rows = [f"{'layer':<40} {'type':<8} {'std before':>10} {'std after':>10} {'passes':>6}  converged"]
        rows += [f"{x.path:<40} {x.type:<8} {x.std_before:>10.4g} {x.std_after:>10.4g} {x.passes:>6}  "
                 f"{'yes' if x.converged else 'NO'}" for x in self.layers]
        rows += [f"{path:<40} skipped: {why}" for path, why in self.skipped.items()]
        return "\n".join(rows)


@torch.no_grad()
def orthonormal_(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``weight`` [out, ...] in place with an orthonormal matrix of shape [out, in * kernel].

    Rows are orthonormal when ``out <= in * kernel``, columns otherwise: the SVD of a standard Gaussian
    matrix, taking ``u`` or ``v`` by shape, as the reference LSUV code does.

    Example:
        >>> w = orthonormal_(torch.empty(3, 5))
        >>> torch.allclose(w @ w.T, torch.eye(3), atol=1e-6)
        True
    """
    rows, cols = weight.shape[0], weight[0].numel()
    a = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(a, full_matrices=False)  # u [rows, k], vh [k, cols], k = min(rows, cols)
    q = u if rows >= cols else vh
    return weight.copy_(q.reshape(weight.shape))


class _Stop(Exception):
    """Raised from the hook once the measured layer has produced all its outputs: the rest need not run."""


@dataclass
class _Moments:
    n: int = 0
    s: float = 0.0
    ss: float = 0.0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        self.n += x.numel()
        self.s += float(x.sum())
        self.ss += float((x * x).sum())

    def mean_std(self) -> tuple[float, float]:
        mean = self.s / self.n
        return mean, math.sqrt(max(self.ss / self.n - mean * mean, 0.0))


def _describe(batch: Any) -> str:
    if isinstance(batch, torch.Tensor):
        return f"a {batch.dtype} tensor of shape {list(batch.shape)}"
    if isinstance(batch, dict):
        return "a dict of " + ", ".join(f"{k}: {_describe(v)}" for k, v in batch.items())
    return f"a {type(batch).__name__} of {len(batch)}"


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return type(batch)(_to(v, device) for v in batch)


def _check_batch(batch: Any) -> None:
    if not isinstance(batch, (torch.Tensor, tuple, list, dict)):
        raise LSUVError(f"the batch is a {type(batch).__name__}; pass a tensor (model(x)), a tuple of "
                        "arguments (model(*batch)) or a dict of keyword arguments (model(**batch))")
    tensors = [batch] if isinstance(batch, torch.Tensor) else [
        v for v in (batch.values() if isinstance(batch, dict) else batch) if isinstance(v, torch.Tensor)]
    if not tensors:
        raise LSUVError(f"the batch holds no tensor ({_describe(batch)}); LSUV measures outputs on real data")
    if any(t.numel() == 0 for t in tensors):
        raise LSUVError(f"the batch is empty ({_describe(batch)}); LSUV needs data to measure output stds")


def _expects(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return f"inputs [..., {module.in_features}]"
    if isinstance(module, nn.modules.conv._ConvNd):
        return f"inputs [batch, {module.in_channels}, ...]"
    return "its inputs"


def _tied(root: nn.Module, sites: dict[str, Site]) -> dict[str, str]:
    """Layers whose weight is also a parameter of another module (rescaling it would change that one too)."""
    owners: dict[int, list[tuple[str, int]]] = {}
    for path, m in root.named_modules(remove_duplicate=False):
        for p in m._parameters.values():
            if p is not None:
                owners.setdefault(id(p), []).append((path, id(m)))
    out = {}
    for path in sites:
        w = root.get_submodule(path).weight
        others = [p for p, mid in owners.get(id(w), []) if mid != id(root.get_submodule(path))]
        if others:
            out[path] = f"weight shared with {others[0]}"
    return out


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    mha = getattr(torch.backends, "mha", None)
    fast = mha.get_fastpath_enabled() if mha is not None else None
    try:
        model.eval()
        if mha is not None:
            mha.set_fastpath_enabled(False)
        yield
    finally:
        for m, training in modes:  # per module: a model partly in eval mode comes back as it was
            m.training = training
        if mha is not None:
            mha.set_fastpath_enabled(fast)


def _run(model: nn.Module, batch: Any) -> None:
    if isinstance(batch, torch.Tensor):
        model(batch)
    elif isinstance(batch, dict):
        model(**batch)
    else:
        model(*batch)


def lsuv_(
    model: nn.Module,
    batch: torch.Tensor | tuple | list | dict,
    *,
    tol: float = 0.1,
    max_iters: int = 10,
    target_std: float = 1.0,
    orthonormal: bool = True,
    center: bool = False,
    types: type[nn.Module] | tuple[type[nn.Module], ...] = WEIGHT_LAYERS,
    patterns: str | Iterable[str] | None = None,
    generator: torch.Generator | None = None,
) -> LSUVReport:
    """Initialise ``model``'s weight layers in place by LSUV on ``batch`` (see the module docstring).

    Args:
        model: any ``nn.Module`` (an HF model too: ``patterns="model.layers.*"`` takes the Linear layers of
            the blocks and leaves embeddings and the LM head alone).
        batch: what the model is called with: a tensor (``model(x)``), a tuple/list of arguments
            (``model(*batch)``) or a dict of keyword arguments (``model(**batch)``); moved to the model's device.
        tol: stop rescaling a layer once ``|std - target_std| < tol``.
        max_iters: most rescalings per layer.
        target_std: the output std aimed at.
        orthonormal: orthonormal weights and zero biases first (off: rescale the weights as they are).
        center: also shift biases until the output mean is within ``tol`` of 0.
        types: module classes to initialise (Linear, Conv1d, Conv2d by default).
        patterns: glob(s) over module paths restricting the layers (``None``: every layer of ``types``).
        generator: random source of the orthonormal init, for reproducibility.

    Returns:
        :class:`LSUVReport`, one :class:`LSUVLayer` per initialised layer in forward order.

    Raises:
        LSUVError: no layer of ``types`` (under ``patterns``), none called by the forward pass, or a
            batch the model cannot run (the error names the batch's shapes and what the first layer takes).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
        >>> rep = lsuv_(net, torch.randn(64, 1, 8, 8))
        >>> [x.path for x in rep.layers], rep.converged
        (['0', '3'], True)
    """
    if tol <= 0 or max_iters < 0 or target_std <= 0:
        raise LSUVError(f"need tol > 0, max_iters >= 0 and target_std > 0 (got {tol}, {max_iters}, {target_std})")
    names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
    try:
        sites = module_sites(model, types, patterns)
    except SiteError as e:
        raise LSUVError(f"nothing to initialise: {e}; LSUV rescales {names} layers") from e
    root = unwrap(model)[0]
    sites = {p: s for p, s in sites.items() if getattr(root.get_submodule(p), "weight", None) is not None}
    if not sites:
        raise LSUVError(f"nothing to initialise: no {names} layer of {type(model).__name__} has a weight")
    _check_batch(batch)
    param = next(root.parameters())
    batch = _to(batch, param.device)
    first = next(iter(sites))

    def forward(chosen: dict[str, Site], fn: Any) -> None:
        try:
            with capture(model, chosen, fn=fn):
                _run(model, batch)
        except _Stop:
            pass
        except _FORWARD_ERRORS as e:
            raise LSUVError(
                f"the batch ({_describe(batch)}) does not run through {type(model).__name__}: "
                f"{type(e).__name__}: {e}; its first {names} layer {first!r} takes "
                f"{_expects(root.get_submodule(first))}"
            ) from e

    with _eval_mode(model), torch.no_grad():
        calls: dict[str, int] = {}  # path -> calls per forward, in the order of the first call

        def count(site: Site, x: torch.Tensor) -> None:
            calls[site.name] = calls.get(site.name, 0) + 1

        forward(sites, count)
        skipped = {p: "never called by the forward pass" for p in sites if p not in calls}
        skipped.update(_tied(root, {p: sites[p] for p in calls}))
        order = [p for p in calls if p not in skipped]
        if not order:
            raise LSUVError(f"nothing to initialise: no untied {names} layer of {type(model).__name__} ran "
                            f"on this batch ({'; '.join(f'{p}: {w}' for p, w in skipped.items())})")
        if orthonormal:
            for p in order:
                m = root.get_submodule(p)
                orthonormal_(m.weight, generator)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()

        def measure(path: str) -> tuple[float, float]:
            acc, seen = _Moments(), [0]

            def read(site: Site, x: torch.Tensor) -> None:
                acc.add(x)
                seen[0] += 1
                if seen[0] == calls[path]:  # the layer's last call in this forward: nothing after it matters
                    raise _Stop

            forward({path: sites[path]}, read)
            return acc.mean_std()

        layers = [_rescale(root.get_submodule(p), p, measure, target_std, tol, max_iters, center) for p in order]
    return LSUVReport(layers, skipped, target_std, tol, max_iters)


def _rescale(module: nn.Module, path: str, measure: Any, target: float, tol: float, max_iters: int,
             center: bool) -> LSUVLayer:
    mean, std = measure(path)
    before, passes = std, 0

    def done(mean: float, std: float) -> bool:
        return abs(std - target) < tol and (not center or abs(mean) < tol)

    bias = getattr(module, "bias", None)
    while not done(mean, std) and passes < max_iters and math.isfinite(std) and std > 0:
        if center and bias is not None:
            bias.sub_(mean)  # a constant shift: the std is unchanged by it
        module.weight.mul_(target / std)
        passes += 1
        mean, std = measure(path)
    return LSUVLayer(path, type(module).__name__, before, std, mean, passes, done(mean, std))
