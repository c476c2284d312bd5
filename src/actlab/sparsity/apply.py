"""``apply_`` / ``remove_``: install a plan as hooks on the model's own modules, and take it off exactly.

The masking path changes no module: every ``nn.Linear`` and activation module stays where it is (so PEFT
can inject LoRA, and ``torch.compile`` / accelerate see the classes they expect). One owner,
:class:`PlanMasks`, is registered on the model as the submodule ``actlab_sparsity``: it holds each entry's
threshold (and rotation) as buffers, so they are in ``model.state_dict()`` and a training checkpoint keeps
them, and it owns the site hooks (``actlab.activations.hooks.attach``) that mask the tensors: the input of
each of an entry's modules for ``input`` / ``topk`` entries, the act module's output for ``act`` entries
(what each kind means is read from ``actlab.sparsity.kinds``). ``remove_`` takes the hooks and the owner
off again: outputs after ``remove_`` are bit-identical to before ``apply_``. The masks run on the weights'
device, inside Hugging Face ``generate`` and through ``torch.compile`` / DDP / PEFT wrappers
(``actlab.models.wrappers``). A kernel path (``kernels=True``) swaps ``actlab.kernels`` modules in for
the entries they take; the rest stay on the masking path.

Example:
    >>> plan = SparsityPlan.load("plans/teal50")     # doctest: +SKIP
    >>> actlab.apply_(model, plan)                   # doctest: +SKIP
    >>> sorted(model.state_dict())[0]                # doctest: +SKIP
    'actlab_sparsity.masks.layers_0_attn_qkv_in.threshold'
    >>> actlab.remove_(model)                        # doctest: +SKIP
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from actlab.activations.hooks import SiteHooks, attach
from actlab.activations.sites import Site
from actlab.distributed import Dist, is_multi, sum_ranks
from actlab.models.adapters import linear_weight
from actlab.models.wrappers import is_compiled, unwrap
from actlab.sparsity.errors import PlanError
from actlab.sparsity.fingerprint import fingerprint_mismatch, model_fingerprint
from actlab.sparsity.kinds import entry_kind, mask
from actlab.sparsity.plan import PlanEntry, SparsityPlan

#: the attribute under which the owner of an applied plan is registered on the (unwrapped) model
OWNER = "actlab_sparsity"


class EntryMask(nn.Module):
    """One plan entry's state: ``threshold`` (and ``rotation``) as buffers, in the model's ``state_dict``."""

    def __init__(self, e: PlanEntry, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.entry_key, self.kind = e.key, e.kind
        self.register_buffer("threshold", e.threshold.detach().float().to(device))
        self.rotation: torch.Tensor | None
        self.register_buffer("rotation", None if e.rotation is None else e.rotation.detach().to(device, dtype))


@dataclass
class HookedModule:
    """One module a mask acts on (``masked_modules`` lists them): its entry and the counts of what it dropped."""

    path: str
    entry: EntryMask
    dropped: int = 0
    seen: int = 0

    @property
    def entry_key(self) -> str:
        return self.entry.entry_key


class PlanMasks(nn.Module):
    """The owner of an applied plan: entry buffers, the hooks, and the switches ``dense_prefix`` / ``track``."""

    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = method
        self.masks = nn.ModuleDict()
        #: positions < dense_prefix are left dense (the TEAL evaluation protocol)
        self.dense_prefix = 0
        self.track = False
        #: masks pass gradients straight through the dropped channels (set by training objectives)
        self.straight_through = False
        self.hooked: dict[str, HookedModule] = {}
        self._hooks: SiteHooks | None = None

    def install(self, model: nn.Module, entries: list[PlanEntry]) -> None:
        sites: dict[str, Site] = {}
        for e in entries:
            row = entry_kind(e.kind)
            # act entries live on the device of their consumers (the act module may hold no tensor)
            w = linear_weight(model.get_submodule(e.consumers[0] if row.direction == "output" else e.modules[0]))
            state = EntryMask(e, w.device, w.dtype)
            self.masks[e.key.replace(".", "_")] = state
            for path in e.modules:
                self.hooked[path] = HookedModule(path, state)
                # one site per module: each consumer masks the tensor it reads, as the old wrappers did
                sites[path] = Site(e.site, e.layer, e.site.split(".", 2)[-1], row.direction, (path,), e.consumers)
        self._hooks = attach(model, sites, self._mask)

    def detach(self) -> None:
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None

    def _mask(self, site: Site, x: torch.Tensor) -> torch.Tensor:
        hooked = self.hooked[site.module_paths[0]]
        state = hooked.entry
        edit = self._edit_keep(hooked) if self.track or self.dense_prefix > 0 else None
        return mask(state.kind, x, state.threshold, state.rotation, edit, self.straight_through)

    def _edit_keep(self, hooked: HookedModule):
        prefix = self.dense_prefix

        def edit(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
            if self.track:  # counted over the positions that are sparsified
                counted = keep[..., prefix:, :] if prefix > 0 and x.dim() >= 3 else keep
                hooked.dropped += int((~counted).sum())
                hooked.seen += counted.numel()
            if prefix > 0 and x.dim() >= 3:
                keep = keep.clone()
                keep[..., :prefix, :] = True  # [batch, seq, width]: first positions dense
            return keep

        return edit


class MaskedLinear(nn.Module):
    """``inner(x)`` with ``x_i`` zeroed where ``|x_i| <= threshold_i``: a scoped helper for calibration only.

    The greedy allocator swaps it in around one block while it searches (and back in ``finally``);
    ``apply_`` never swaps modules. The mask is the ``input`` kind of ``actlab.sparsity.kinds``.
    """

    def __init__(self, inner: nn.Module, threshold: torch.Tensor, entry_key: str = "",
                 rotation: torch.Tensor | None = None) -> None:
        super().__init__()
        self.inner, self.entry_key = inner, entry_key
        w = linear_weight(inner)
        self.register_buffer("threshold", threshold.detach().float().to(w.device), persistent=False)
        self.rotation: torch.Tensor | None
        self.register_buffer("rotation", None if rotation is None else rotation.detach().to(w.device, w.dtype),
                             persistent=False)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.inner(mask("input", x, self.threshold, self.rotation), *args, **kwargs)


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def _owner(model: nn.Module) -> PlanMasks | None:
    owner = unwrap(model)[0]._modules.get(OWNER)
    return owner if isinstance(owner, PlanMasks) else None


def masked_modules(model: nn.Module) -> list[tuple[str, HookedModule]]:
    """``(module path, hooked module)`` for every module a mask of the applied plan acts on (masking path)."""
    owner = _owner(model)
    return list(owner.hooked.items()) if owner is not None else []


def _width(model: nn.Module, e: PlanEntry) -> int:
    return linear_weight(model.get_submodule(e.consumers[-1])).shape[1]


def _has_kernels(model: nn.Module) -> bool:
    swap = sys.modules.get("actlab.kernels.swap")
    return swap is not None and bool(swap.kernel_modules(model))


def check_plan(model: nn.Module, plan: SparsityPlan, kernels: bool = False) -> None:
    """Everything ``apply_`` needs, checked before touching the model.

    Raises:
        PlanError: the model already has masks, the plan was made for another model, or an entry's modules
            or threshold shapes do not fit.
    """
    model = unwrap(model)[0]
    if _owner(model) is not None or _has_kernels(model):
        raise PlanError("the model already has a sparsity plan applied: call actlab.remove_(model) first")
    why = fingerprint_mismatch(plan.model, model_fingerprint(model))
    if why is not None:
        raise PlanError(f"the plan does not fit this model: {why}")
    for e in plan.entries:
        row = entry_kind(e.kind)
        for path in e.modules + e.consumers:
            try:
                module = model.get_submodule(path)
            except AttributeError as err:
                raise PlanError(f"plan entry {e.key}: module {path} not found in the model") from err
            if path in e.consumers and not hasattr(module, "weight"):
                raise PlanError(f"plan entry {e.key}: {path} is not a linear layer")
        width = _width(model, e)
        if e.rotation is not None and kernels:
            raise PlanError(f"plan entry {e.key} is rotated: rotated plans run on the masking path; apply it "
                            "with kernels=False (actlab bench/optimize need an unrotated plan)")
        if e.rotation is not None and e.rotation.shape[0] != width:
            raise PlanError(f"plan entry {e.key}: rotation is {e.rotation.shape[0]} wide, the layer {width}")
        if row.per_channel and e.threshold.dim() == 1 and e.threshold.numel() != width:
            raise PlanError(f"plan entry {e.key}: threshold has {e.threshold.numel()} channels, the layer {width}")


def apply_(model: nn.Module, plan: SparsityPlan, kernels: bool = False, weights: str | None = None) -> nn.Module:
    """Install ``plan``'s masks in ``model`` (in place; returns it). Nothing is applied if a check fails.

    Args:
        model: the model the plan was made for, or that model inside ``torch.compile``, DDP or PEFT
            wrappers (a PEFT LoRA layer's input is masked for its base and LoRA branches alike;
            apply after ``get_peft_model``: LoRA injected later wraps the masked base layer, so
            its own branch would read the unmasked input).
        plan: a calibrated :class:`SparsityPlan`.
        kernels: swap in the sparse-input CPU kernel modules (``actlab.kernels``), which skip the
            weight rows of masked inputs and so decode faster; entries the kernels cannot take
            (top-k, LoRA layers) stay on the masking path. Without the compiled kernels this still
            works, on the pure-PyTorch reference, with a warning.
        weights: with ``kernels=True``, the weight format the kernels read: ``fp32`` (default), ``bf16``,
            ``int8`` or ``int4`` (see ``actlab.kernels.install_kernels``; not bit-exact to the dense model).

    Example:
        >>> actlab.apply_(model, actlab.SparsityPlan.load("plans/teal50"))   # doctest: +SKIP
        >>> model.generate(ids, max_new_tokens=20)                           # doctest: +SKIP
    """
    if weights is not None:
        if not kernels:
            raise ValueError(f"weights={weights!r} needs the kernels: call apply_(model, plan, kernels=True, "
                             f"weights={weights!r})")
        from actlab.kernels.quant import check_format

        check_format(weights)
    check_plan(model, plan, kernels)
    root = unwrap(model)[0]
    entries = plan.entries
    if kernels:
        from actlab.kernels.swap import install_kernels

        entries = install_kernels(root, plan, weights or "fp32")
    owner = PlanMasks(plan.method)
    try:
        owner.install(root, entries)
    except BaseException:
        owner.detach()
        remove_(model)
        raise
    root.add_module(OWNER, owner)
    _reset_compiled(model)
    return model


def remove_(model: nn.Module) -> nn.Module:
    """Take an applied plan off (in place; returns the model). Idempotent.

    Masking hooks and their buffers go; kernel modules rebuild bit-identical ``nn.Linear`` layers
    from their (transposed) weights.
    """
    root = unwrap(model)[0]
    owner = _owner(root)
    if owner is not None:
        owner.detach()
        del root._modules[OWNER]
    if "actlab.kernels.swap" in sys.modules:  # kernels can only be installed once this is imported
        sys.modules["actlab.kernels.swap"].remove_kernels(root)
    _reset_compiled(model)
    return model


def _reset_compiled(model: nn.Module) -> None:
    # torch.compile does not guard on hooks (dynamo's skip_nnmodule_hook_guards): graphs compiled before
    # apply_/remove_ would keep running without (or with) the masks. Drop them so the next call retraces.
    if is_compiled(model):
        import torch._dynamo

        torch._dynamo.reset()


@contextmanager
def dense_prefix(model: nn.Module, n: int) -> Iterator[None]:
    """Leave the first ``n`` positions of every sequence dense inside the block (TEAL's evaluation protocol)."""
    owner = _owner(model)
    if owner is None:
        yield
        return
    owner.dense_prefix = n
    try:
        yield
    finally:
        owner.dense_prefix = 0


@contextmanager
def track_sparsity(model: nn.Module, dist: Dist | None = None) -> Iterator[dict[str, float]]:
    """Measure the masks' sparsity while the block runs; the dict (path -> fraction dropped) fills on exit.

    With ``dist`` (each process ran its own share of the windows) the counts are summed over the processes,
    so every rank reads the fractions of all the windows.

    Example:
        >>> with track_sparsity(model) as dropped:      # doctest: +SKIP
        ...     model(ids)
        >>> dropped["model.layers.0.mlp.down_proj"]      # doctest: +SKIP
        0.5
    """
    owner = _owner(model)
    hooked = masked_modules(model)
    for _, m in hooked:
        m.dropped, m.seen = 0, 0
    if owner is not None:
        owner.track = True
    result: dict[str, float] = {}
    try:
        yield result
    finally:
        if owner is not None:
            owner.track = False
        for path, m in hooked:
            result[path] = m.dropped / m.seen if m.seen else 0.0
    if is_multi(dist) and hooked:  # reached only on success: a failed rank must not enter a collective
        counts = sum_ranks(torch.tensor([[m.dropped, m.seen] for _, m in hooked], dtype=torch.int64), dist)
        for (path, _), (dropped, seen) in zip(hooked, counts.tolist(), strict=True):
            result[path] = dropped / seen if seen else 0.0
