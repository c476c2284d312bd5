"""Activation patterns as codes ("Neural networks behave as hash encoders", He, Lei, Ji & Tao, 2021).

The on/off pattern of a network's ReLU-like units on one input is a binary code: unit ``j`` is on when
``x_j > 0`` (the ReLU pattern; also right on a pre-activation) or, with ``eps`` given, when
``|x_j| > eps`` (for SiLU/GELU outputs, which are rarely exactly zero). The code of an input is the
concatenation of the patterns at the chosen sites, in site order (a module called twice, such as one
``nn.ReLU`` reused, contributes both calls). Three measures of the paper:

* **determinism**: the share of inputs whose code no other input has (a hash with no collision: 1.0);
* **categorization**: the purity of codes by class label: the share of inputs whose code's majority class
  is their own (``sum over codes of the majority count / inputs``, tie-free), and the share of distinct
  codes all of whose inputs have one class. When every code is unique both are trivially 1, which is why
  the paper also measures
* **the nearest-code classifier**: a test input takes the majority label of the training inputs whose codes
  are nearest to its own in Hamming distance (all of those at the minimal distance; ties between labels go
  to the smallest label); its accuracy on held-out inputs.

For sequence models (``sequence=True``, a site tensor [batch, seq, d]) each token is an input, with its own
label or its sequence's; with ``pool=q`` each sequence is one input, unit ``j`` on when it is on in more
than a fraction ``q`` of the sequence's (unmasked) tokens (``q=0``: on anywhere in the sequence).

:class:`ActivationCodes` is a mergeable statistic in the sense of the design notes: ``update`` per batch,
``merge`` of two shards equals the codes of the whole (inputs in shard order). Raw activations are never
kept: one bit per unit and input, packed 8 to a byte, plus one int64 label per input.
:func:`record_codes` fills it through :func:`actlab.capture` on canonical sites (an HF model, e.g.
``"mlp.act_out"``) or on :func:`~actlab.activations.sites.module_sites` of any network
(``module_sites(net, nn.ReLU)``); :class:`CodeTracker` is the hook for "during and after training":
called at each evaluation point it records the measures of the model as it is then.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from actlab.activations.sites import module_sites
    >>> net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU())
    >>> with torch.no_grad():
    ...     _ = net[0].weight.copy_(torch.eye(2))
    >>> x = torch.tensor([[1., 1.], [2., 3.], [-1., 1.], [-1., -2.]])
    >>> codes = record_codes(net, x, module_sites(net, nn.ReLU), labels=torch.tensor([0, 0, 1, 2]))
    >>> codes.bits().int().tolist()
    [[1, 1], [1, 1], [0, 1], [0, 0]]
    >>> codes.determinism(), codes.categorization()
    (0.5, (1.0, 1.0))
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from actlab.activations.hooks import capture
from actlab.activations.sites import Site
from actlab.errors import ActlabError

# popcount of every byte value
_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32)
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
_CHUNK = 1 << 24  # bytes of XOR per block of the distance computation


class CodesError(ActlabError):
    """Codes that cannot be recorded, merged or compared (layouts, labels, shapes)."""


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Bool [N, n_bits] -> uint8 [N, ceil(n_bits / 8)], most significant bit first, zero-padded.

    Example:
        >>> pack_bits(torch.tensor([[True, False, True, True, False, False, False, False, True]])).tolist()
        [[176, 128]]
    """
    n, k = bits.shape
    pad = (-k) % 8
    b = torch.cat([bits.to(torch.uint8), bits.new_zeros(n, pad, dtype=torch.uint8)], 1)
    return (b.reshape(n, -1, 8) * _BIT_WEIGHTS.to(b.device)).sum(-1, dtype=torch.uint8)  # [N, bytes]


def unpack_bits(packed: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: uint8 [N, bytes] -> bool [N, n_bits]."""
    b = (packed.unsqueeze(-1) & _BIT_WEIGHTS.to(packed.device)) != 0  # [N, bytes, 8]
    return b.reshape(packed.shape[0], -1)[:, :n_bits]


def hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamming distances between packed codes a [M, bytes] and b [N, bytes] -> int32 [M, N].

    Example:
        >>> hamming(pack_bits(torch.tensor([[True, True]])), pack_bits(torch.tensor([[True, False], [False, False]])))
        tensor([[1, 2]], dtype=torch.int32)
    """
    if a.shape[1] != b.shape[1]:
        raise CodesError(f"codes of {a.shape[1]} and {b.shape[1]} bytes cannot be compared")
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.int32)
    table = _POPCOUNT.to(a.device)
    step = max(1, _CHUNK // max(1, b.shape[0] * b.shape[1]))
    for i in range(0, a.shape[0], step):
        x = a[i : i + step, None, :] ^ b[None, :, :]  # [m, N, bytes]
        out[i : i + step] = table[x.long()].sum(-1, dtype=torch.int32).cpu()
    return out


class ActivationCodes:
    """Packed on/off codes of N inputs and their labels (-1: none), mergeable across batches and shards.

    Args:
        layout: (site name, bits) in code order; fixed by the first :meth:`update` when not given.

    Example:
        >>> a, b = ActivationCodes(), ActivationCodes()
        >>> a.update(torch.tensor([[True, False], [True, False]]), torch.tensor([0, 1]))
        >>> b.update(torch.tensor([[False, True]]), torch.tensor([1]))
        >>> whole = a.merge(b)
        >>> len(whole), whole.determinism(), whole.categorization()
        (3, 0.3333333333333333, (0.6666666666666666, 0.5))
    """

    def __init__(self, layout: Iterable[tuple[str, int]] | None = None) -> None:
        self.layout: tuple[tuple[str, int], ...] | None = None if layout is None else tuple(
            (str(n), int(k)) for n, k in layout)
        self.codes = torch.zeros(0, self._bytes(), dtype=torch.uint8)  # [N, bytes]
        self.labels = torch.zeros(0, dtype=torch.int64)  # [N]

    @property
    def n_bits(self) -> int:
        """Bits per code (units over all sites)."""
        return 0 if self.layout is None else sum(k for _, k in self.layout)

    def _bytes(self) -> int:
        return (self.n_bits + 7) // 8

    def __len__(self) -> int:
        return self.codes.shape[0]

    # -- accumulation --------------------------------------------------------------------------------
    def update(self, bits: torch.Tensor, labels: torch.Tensor | None = None,
               layout: Iterable[tuple[str, int]] | None = None) -> None:
        """Append inputs: ``bits`` bool [n, n_bits], ``labels`` [n] (or ``None``: unlabelled)."""
        if bits.dim() != 2:
            raise CodesError(f"bits must be [inputs, units], got shape {list(bits.shape)}")
        if layout is not None:
            layout = tuple((str(n), int(k)) for n, k in layout)
        elif self.layout is not None and self.n_bits == bits.shape[1]:
            layout = self.layout
        else:
            layout = (("bits", bits.shape[1]),)
        if sum(k for _, k in layout) != bits.shape[1]:
            raise CodesError(f"layout {list(layout)} does not add up to the {bits.shape[1]} bits given")
        if self.layout is None:
            self.layout = layout
            self.codes = torch.zeros(0, self._bytes(), dtype=torch.uint8)
        elif layout != self.layout:
            raise CodesError(f"these codes have layout {list(self.layout)}; the batch gives {list(layout)}: record "
                             "every batch at the same sites of the same model")
        if labels is None:
            labels = torch.full((bits.shape[0],), -1, dtype=torch.int64)
        labels = torch.as_tensor(labels).reshape(-1).to("cpu", torch.int64)
        if labels.shape[0] != bits.shape[0]:
            raise CodesError(f"{labels.shape[0]} labels for {bits.shape[0]} inputs")
        self.codes = torch.cat([self.codes, pack_bits(bits.bool()).cpu()])
        self.labels = torch.cat([self.labels, labels])

    def merge(self, other: ActivationCodes) -> ActivationCodes:
        """The codes of both (this shard's inputs first); layouts must agree."""
        if self.layout is not None and other.layout is not None and self.layout != other.layout:
            raise CodesError(f"cannot merge codes of layouts {list(self.layout)} and {list(other.layout)}")
        out = ActivationCodes(self.layout if self.layout is not None else other.layout)
        out.codes = torch.cat([out.codes, *(c.codes for c in (self, other) if len(c))])
        out.labels = torch.cat([self.labels, other.labels])
        return out

    def bits(self) -> torch.Tensor:
        """The codes unpacked: bool [N, n_bits]."""
        return unpack_bits(self.codes, self.n_bits)

    # -- measures ------------------------------------------------------------------------------------
    def _unique(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not len(self):
            raise CodesError("no codes recorded yet")
        _, inverse, counts = torch.unique(self.codes, dim=0, return_inverse=True, return_counts=True)
        return inverse, counts

    def n_codes(self) -> int:
        """Distinct codes."""
        return int(self._unique()[1].numel())

    def determinism(self) -> float:
        """Share of inputs whose code is unique among all inputs."""
        inverse, counts = self._unique()
        return float((counts[inverse] == 1).double().mean())

    def categorization(self) -> tuple[float, float]:
        """(share of labelled inputs whose code's majority class is theirs, share of codes with one class).

        Over labelled inputs only (label >= 0) and the codes they have.
        """
        inverse, _ = self._unique()
        keep = self.labels >= 0
        if not bool(keep.any()):
            raise CodesError("categorization needs labels: pass labels= when recording")
        inv, lab = inverse[keep], self.labels[keep]
        n_classes = int(lab.max()) + 1
        joint = torch.bincount(inv * n_classes + lab, minlength=(int(inverse.max()) + 1) * n_classes)
        joint = joint.reshape(-1, n_classes)  # [codes, classes]
        joint = joint[joint.sum(1) > 0]
        purity = float(joint.max(1).values.sum()) / int(keep.sum())
        pure = float(((joint > 0).sum(1) == 1).double().mean())
        return purity, pure

    def predict(self, test: ActivationCodes) -> torch.Tensor:
        """Nearest-code labels of ``test``'s inputs: majority label of the training inputs (these codes) at
        the minimal Hamming distance, ties to the smallest label. int64 [len(test)]."""
        if not len(self):
            raise CodesError("no training codes recorded yet")
        if bool((self.labels < 0).any()):
            raise CodesError("the nearest-code classifier needs every training input labelled")
        if self.layout is not None and test.layout is not None and test.n_bits != self.n_bits:
            raise CodesError(f"test codes have {test.n_bits} bits, training codes {self.n_bits}")
        onehot = nn.functional.one_hot(self.labels, int(self.labels.max()) + 1).float()  # [N, classes]
        out = torch.empty(len(test), dtype=torch.int64)
        step = max(1, _CHUNK // max(1, len(self) * 4))
        for i in range(0, len(test), step):
            d = hamming(test.codes[i : i + step], self.codes)  # [m, N]
            nearest = (d == d.min(1, keepdim=True).values).float()
            out[i : i + step] = (nearest @ onehot).argmax(1)  # argmax: first (smallest) label on ties
        return out

    def nearest_code_accuracy(self, test: ActivationCodes) -> float:
        """Accuracy of :meth:`predict` on ``test``'s labels (every test input must be labelled)."""
        if bool((test.labels < 0).any()) or not len(test):
            raise CodesError("nearest-code accuracy needs labelled test codes")
        return float((self.predict(test) == test.labels).double().mean())

    def summary(self) -> dict[str, Any]:
        """Inputs, bits, distinct codes, determinism and (with labels) categorization, JSON-ready."""
        out: dict[str, Any] = {"inputs": len(self), "bits": self.n_bits, "codes": self.n_codes(),
                               "determinism": self.determinism()}
        if bool((self.labels >= 0).any()):
            out["purity"], out["pure_codes"] = self.categorization()
        return out

    # -- persistence ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tensors and layout (safetensors-friendly tensors; layout as a JSON-able list)."""
        return {"codes": self.codes, "labels": self.labels, "layout": [list(x) for x in self.layout or ()]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ActivationCodes:
        """Inverse of :meth:`state_dict`."""
        out = cls([tuple(x) for x in state["layout"]] or None)
        out.codes, out.labels = state["codes"].to(torch.uint8), state["labels"].to(torch.int64)
        return out


def _on(x: torch.Tensor, eps: float | None) -> torch.Tensor:
    return x > 0 if eps is None else x.abs() > eps


def _site_bits(x: torch.Tensor, eps: float | None, sequence: bool, pool: float | None,
               mask: torch.Tensor | None) -> torch.Tensor:
    on = _on(x.detach(), eps)
    if not sequence:
        return on.reshape(on.shape[0], -1)  # [B, units]: the whole activation of one input
    if on.dim() != 3:
        raise CodesError(f"sequence=True needs site tensors [batch, seq, d], got {list(on.shape)}")
    m = torch.ones(on.shape[:2], dtype=torch.bool, device=on.device) if mask is None else mask.bool().to(on.device)
    if pool is None:
        return on[m]  # [tokens, d]
    frac = (on & m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1)  # [B, d]
    return frac > pool


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()  # dropout would make the pattern of an input random
        yield
    finally:
        for m, training in modes:
            m.training = training


def _call(model: nn.Module, inputs: Any) -> None:
    if isinstance(inputs, dict):
        model(**inputs)
    elif isinstance(inputs, (tuple, list)):
        model(*inputs)
    else:
        model(inputs)


def _labels_for(labels: Any, shape: torch.Size, sequence: bool, pool: float | None,
                mask: torch.Tensor | None) -> torch.Tensor | None:
    """Labels per input: as given, or per token ([batch, seq], or [batch] spread over its tokens)."""
    if labels is None:
        return None
    labels = torch.as_tensor(labels).cpu()
    if not sequence or pool is not None:
        return labels.reshape(-1)
    if labels.dim() == 1:
        labels = labels[:, None].expand(shape[0], shape[1])
    if tuple(labels.shape) != tuple(shape[:2]):
        raise CodesError(f"token labels must be [batch, seq] = {list(shape[:2])} or [batch], got {list(labels.shape)}")
    return labels[torch.ones(shape[:2], dtype=torch.bool) if mask is None else mask.bool().cpu()]


def record_codes(
    model: nn.Module,
    inputs: torch.Tensor | tuple | list | dict,
    sites: str | Iterable[str] | dict[str, Site],
    labels: torch.Tensor | None = None,
    codes: ActivationCodes | None = None,
    *,
    eps: float | None = None,
    sequence: bool = False,
    pool: float | None = None,
    mask: torch.Tensor | None = None,
) -> ActivationCodes:
    """Run ``model`` on one batch and append each input's code (and label) to ``codes`` (new when ``None``).

    Args:
        model: any module; run in eval mode without gradients, its modes restored after.
        inputs: a tensor (``model(x)``), a tuple/list of arguments, or a dict of keyword arguments.
        sites: canonical site patterns (``"mlp.act_out"``) or resolved sites
            (``module_sites(net, nn.ReLU)``).
        labels: [batch] class labels (for ``sequence`` without ``pool``: [batch, seq] or [batch]).
        codes: the accumulator to extend.
        eps: ``None``: a unit is on when ``x > 0``; a float: when ``|x| > eps``.
        sequence: site tensors are [batch, seq, d] and each token is an input (with ``pool``: each sequence).
        pool: per-sequence code: on when on in more than this fraction of the sequence's tokens.
        mask: [batch, seq] tokens to count (an attention mask) for ``sequence``.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.ReLU())
        >>> from actlab.activations.sites import module_sites
        >>> c = record_codes(net, torch.randn(5, 3), module_sites(net, nn.ReLU))
        >>> len(c), c.n_bits, c.codes.shape
        (5, 8, torch.Size([5, 1]))
    """
    if pool is not None and not sequence:
        raise CodesError("pool applies to sequence models: pass sequence=True with it")
    codes = ActivationCodes() if codes is None else codes
    seen: dict[str, list[torch.Tensor]] = {}
    shapes: list[torch.Size] = []

    def read(site: Site, x: torch.Tensor) -> None:
        shapes.append(x.shape)
        seen.setdefault(site.name, []).append(_site_bits(x, eps, sequence, pool, mask))

    with _eval(model), torch.no_grad(), capture(model, sites, fn=read) as cap:
        _call(model, inputs)
        order = list(cap.sites)
    missing = [s for s in order if s not in seen]
    if missing:
        raise CodesError(f"sites {missing} saw no tensor in the forward pass; choose sites the model runs")
    parts = [b for s in order for b in seen[s]]
    if len({p.shape[0] for p in parts}) != 1:
        raise CodesError(f"the sites give different numbers of inputs {[p.shape[0] for p in parts]}; "
                         "with sequence models pass sequence=True")
    layout = [(f"{s}#{j}" if len(seen[s]) > 1 else s, b.shape[1]) for s in order for j, b in enumerate(seen[s])]
    lab = _labels_for(labels, shapes[0], sequence, pool, mask)
    codes.update(torch.cat(parts, 1).cpu(), lab, layout)
    return codes


def collect_codes(
    model: nn.Module, batches: Iterable[tuple[Any, Any]], sites: str | Iterable[str] | dict[str, Site], **kwargs: Any
) -> ActivationCodes:
    """Codes of every ``(inputs, labels)`` batch (labels may be ``None``); ``kwargs`` as :func:`record_codes`.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.ReLU())
        >>> from actlab.activations.sites import module_sites
        >>> c = collect_codes(net, [(torch.randn(4, 3), torch.zeros(4)), (torch.randn(2, 3), torch.ones(2))],
        ...                   module_sites(net, nn.ReLU))
        >>> len(c), c.labels.tolist()
        (6, [0, 0, 0, 0, 1, 1])
    """
    codes = ActivationCodes()
    for inputs, labels in batches:
        record_codes(model, inputs, sites, labels, codes, **kwargs)
    return codes


def code_metrics(
    model: nn.Module, sites: str | Iterable[str] | dict[str, Site], train: Iterable[tuple[Any, Any]],
    test: Iterable[tuple[Any, Any]], **kwargs: Any
) -> dict[str, Any]:
    """The paper's measures of ``model`` now: training codes' summary, test determinism and nearest-code accuracy.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 16), nn.ReLU())
        >>> from actlab.activations.sites import module_sites
        >>> data = [(torch.randn(8, 3), torch.arange(8) % 2)]
        >>> sorted(code_metrics(net, module_sites(net, nn.ReLU), data, data))[:3]
        ['bits', 'codes', 'determinism']
    """
    tr = collect_codes(model, train, sites, **kwargs)
    te = collect_codes(model, test, sites, **kwargs)
    return {**tr.summary(), "test_determinism": te.determinism(), "nearest_code_accuracy": tr.nearest_code_accuracy(te)}


class CodeTracker:
    """Call at evaluation points during training: appends :func:`code_metrics` (with the step) to ``history``.

    ``train`` and ``test`` must be re-iterable (lists of ``(inputs, labels)``).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 16), nn.ReLU())
        >>> from actlab.activations.sites import module_sites
        >>> data = [(torch.randn(8, 3), torch.arange(8) % 2)]
        >>> track = CodeTracker(module_sites(net, nn.ReLU), data, data)
        >>> _ = track(net, step=0); _ = track(net, step=10)
        >>> [row["step"] for row in track.history]
        [0, 10]
    """

    def __init__(self, sites: str | Iterable[str] | dict[str, Site], train: list, test: list, **kwargs: Any) -> None:
        self.sites, self.train, self.test, self.kwargs = sites, train, test, kwargs
        self.history: list[dict[str, Any]] = []

    def __call__(self, model: nn.Module, step: int | None = None) -> dict[str, Any]:
        row = {"step": step, **code_metrics(model, self.sites, self.train, self.test, **self.kwargs)}
        self.history.append(row)
        return row
