"""Sparse autoencoders on one activation site: TopK and BatchTopK, saved in SAELens's layout.

An SAE maps a site's activation ``x`` (``d_in``) to ``d_sae`` latents and back:

    pre = (s·x − b_dec) @ W_enc + b_enc          # [..., d_sae]
    z   = TopK_k(pre) then ReLU                    # "topk": k largest per token (OpenAI, Gao et al. 2024)
        = top k·n of ReLU(pre) over a batch of n   # "batchtopk" while training (Bussmann et al. 2024)
        = ReLU(pre) · [pre > θ]                    # "batchtopk" at inference: the estimated threshold θ
    x̂   = (z @ W_dec + b_dec) / s

``s`` is the input scale (a power of two, so that folding it into the weights at save time is exact
in floating point): it brings E‖s·x‖² near ``d_in``, so learning rates carry across sites. Decoder rows
(the latents' directions) are kept at unit norm by the trainer.

On disk (:meth:`SparseAutoencoder.save`) it is what ``sae_lens.SAE.load_from_disk`` reads: ``cfg.json`` and
``sae_weights.safetensors`` with exactly ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
``b_dec [d_in]`` (plus ``threshold [d_sae]`` for a BatchTopK SAE, which SAELens saves as a JumpReLU SAE),
with ``s`` folded in so that ``normalize_activations`` is ``"none"``; actlab's own fields sit under the
``"actlab"`` key, which SAELens ignores.

Example:
    >>> sae = SparseAutoencoder(SAEConfig(d_in=64, d_sae=256, k=8, site="layers.1.resid_out"))
    >>> sae.encode(torch.randn(5, 64)).count_nonzero(dim=-1).max().item() <= 8
    True
    >>> sae.save("runs/sae")                                        # doctest: +SKIP
    >>> SparseAutoencoder.load("runs/sae").cfg.k                    # doctest: +SKIP
    8
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("topk", "batchtopk")
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"  # SAELens's name: log10 of each latent's firing frequency

#: The SAELens versions whose reader the layout was checked against (sae_lens/saes/sae.py, topk_sae.py,
#: loading/pretrained_sae_loaders.py at jbloomAus/SAELens 91ca16c = v6.18.0 and in the PyPI wheel 6.54.12;
#: and v5.11.0's SAEConfig).
SAELENS_CHECKED = ("5.11.0", "6.18.0", "6.54.12")


class SAEError(ValueError):
    """An SAE that cannot be built, loaded or used as asked; the message names the problem and the fix."""


# SAELens hook names (TransformerLens's) for the sites that have one; the others keep actlab's name.
_TL_HOOKS = {
    "resid_out": "hook_resid_post",
    "mlp.down_in": "mlp.hook_post",
    "attn.qkv_in": "ln1.hook_normalized",
    "mlp.gate_up_in": "ln2.hook_normalized",
    "mlp.in": "ln2.hook_normalized",
}


def saelens_hook_name(site: str) -> str:
    """The TransformerLens hook name SAELens uses for an actlab site (the site itself where there is none).

    Example:
        >>> saelens_hook_name("layers.15.resid_out")
        'blocks.15.hook_resid_post'
    """
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", site)
    if m and m.group(2) in _TL_HOOKS:
        return f"blocks.{m.group(1)}.{_TL_HOOKS[m.group(2)]}"
    return site


def site_from_hook_name(hook: str) -> str:
    """The inverse of :func:`saelens_hook_name` (``ln2.hook_normalized`` reads as ``mlp.gate_up_in``).

    Example:
        >>> site_from_hook_name("blocks.3.hook_resid_post")
        'layers.3.resid_out'
    """
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook)
    if m:
        for kind, tl in _TL_HOOKS.items():
            if tl == m.group(2):
                return f"layers.{m.group(1)}.{kind}"
    return hook


def _layer_of(site: str) -> int | None:
    m = re.match(r"layers\.(\d+)\.", site)
    return int(m.group(1)) if m else None


@dataclass
class SAEConfig:
    """What an SAE is and what it was trained on (JSON-ready through :meth:`to_dict`).

    Attributes:
        d_in: width of the site's activation.
        d_sae: number of latents.
        k: latents kept per token (``topk``), or on average per token of a batch (``batchtopk``).
        kind: ``"topk"`` or ``"batchtopk"``.
        site: the actlab site, e.g. ``layers.15.resid_out``.
        model_name: the model spec it was trained on (``smollm2-135m``).
        normalization: ``"scale"`` (inputs multiplied by the power of two that brings E‖x‖² near d_in; folded
            into the weights on save) or ``"none"``.
        exclude_first: leading positions of each window left out of training, evaluation and splicing: the
            first token's residual stream carries massive activations (SmolLM2: ~2.5e4 in one channel)
            that no dictionary should spend latents on. SAELens records this as ``seqpos_slice``.
        context_size: tokens per training window.
        dataset: the corpus spec.
        model_fingerprint: ``actlab.sparsity.fingerprint.model_fingerprint`` of the model (refuses another one).
    """

    d_in: int
    d_sae: int
    k: int = 32
    kind: str = "topk"
    site: str = ""
    model_name: str = ""
    normalization: str = "scale"
    exclude_first: int = 1
    context_size: int = 0
    dataset: str = ""
    model_fingerprint: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.d_in, int) or self.d_in < 1:
            raise SAEError(f"d_in must be a positive integer (got {self.d_in!r})")
        if not isinstance(self.d_sae, int) or self.d_sae < 1:
            raise SAEError(f"d_sae must be at least 1 (got {self.d_sae!r}); pass a positive --d-sae")
        if not isinstance(self.k, int) or not 1 <= self.k <= self.d_sae:
            raise SAEError(f"k must be between 1 and d_sae={self.d_sae} (got {self.k!r}); pass a smaller --k "
                           "or a larger --d-sae")
        if self.kind not in KINDS:
            raise SAEError(f"unknown SAE kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.normalization not in ("scale", "none"):
            raise SAEError(f"unknown normalization {self.normalization!r}; use 'scale' or 'none'")
        if self.exclude_first < 0:
            raise SAEError(f"exclude_first must be >= 0 (got {self.exclude_first})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class SparseAutoencoder(nn.Module):
    """A TopK or BatchTopK sparse autoencoder (see the module docstring for the maths).

    Parameters ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` (SAELens's
    names and shapes); buffers ``input_scale`` (scalar) and ``threshold [d_sae]`` (BatchTopK's inference
    threshold, NaN until estimated: until then inference uses the batch rule).

    Example:
        >>> sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=64, k=4))
        >>> sae(torch.randn(3, 16)).shape
        torch.Size([3, 16])
    """

    def __init__(self, cfg: SAEConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=g)
        w_dec /= w_dec.norm(dim=1, keepdim=True)  # unit-norm latent directions
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone().contiguous())  # encoder starts as the decoder's transpose
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("input_scale", torch.tensor(1.0))
        self.register_buffer("threshold", torch.full((cfg.d_sae,), math.nan))

    # -- the maps ---------------------------------------------------------------------------------------------

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``[..., d_sae]`` of raw site activations ``x [..., d_in]``.

        Written ``s·x @ W_enc + (b_enc − b_dec @ W_enc)``: the same map, but ``b_dec``'s gradient then costs a
        vector-matrix product instead of a second [tokens, d_in] × [d_in, d_sae] one.
        """
        bias = self.b_enc - self.b_dec @ self.W_enc  # [d_sae]
        xn = x * self.input_scale
        if torch.is_grad_enabled() and xn.dim() == 2 and self.W_enc.requires_grad:
            return _SparseGradLinear.apply(xn, self.W_enc, bias)
        return xn @ self.W_enc + bias

    def activate(self, pre: torch.Tensor, batch: bool | None = None) -> torch.Tensor:
        """Sparse latents from pre-activations: TopK per token, or BatchTopK (``batch``; default: while
        training, or before a threshold exists) over all tokens of ``pre``, else the threshold rule."""
        if self.cfg.kind == "topk":
            top = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        use_batch = (self.training or bool(torch.isnan(self.threshold).any())) if batch is None else batch
        if not use_batch:
            return pre.relu() * (pre > self.threshold)
        flat = pre.relu().reshape(-1)  # [tokens * d_sae]
        n_tokens = flat.numel() // self.cfg.d_sae
        top = flat.topk(min(flat.numel(), self.cfg.k * n_tokens))
        return torch.zeros_like(flat).scatter(0, top.indices, top.values).reshape(pre.shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations ``[..., d_sae]`` of site activations ``x [..., d_in]``."""
        return self.activate(self.pre_acts(x))

    def decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        """The reconstruction in the scaled space (``s·x``), where the loss is measured."""
        return z @ self.W_dec + self.b_dec

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` of site activations from latents ``z``."""
        return self.decode_normalized(z) / self.input_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def set_input_scale(self, sample: torch.Tensor) -> float:
        """Set ``s`` to the power of two nearest to ``sqrt(d_in / mean ‖x‖²)`` over ``sample [n, d_in]``."""
        mean_sq = sample.double().pow(2).sum(-1).mean().item()
        s = 2.0 ** round(0.5 * math.log2(self.cfg.d_in / mean_sq)) if mean_sq > 0 else 1.0
        self.input_scale.fill_(s if self.cfg.normalization == "scale" else 1.0)
        return float(self.input_scale)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder row (latent direction) to unit norm."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    # -- SAELens layout ---------------------------------------------------------------------------------------

    def saelens_state(self) -> dict[str, torch.Tensor]:
        """The tensors SAELens loads (``load_state_dict`` is strict there), ``s`` folded in (exact: a power of 2)."""
        s = float(self.input_scale)
        state = {
            "W_enc": (self.W_enc.detach() * s).contiguous(),
            "b_enc": self.b_enc.detach().clone().contiguous(),
            "W_dec": (self.W_dec.detach() / s).contiguous(),
            "b_dec": (self.b_dec.detach() / s).contiguous(),
        }
        if self.cfg.kind == "batchtopk":  # SAELens saves a BatchTopK SAE as JumpReLU with its threshold
            state["threshold"] = self.threshold.detach().clone().contiguous()
        return {k: v.float().cpu() for k, v in state.items()}

    def saelens_cfg(self) -> dict[str, Any]:
        """``cfg.json``: SAELens's keys (see :data:`SAELENS_KEYS`) and actlab's own under ``"actlab"``."""
        c = self.cfg
        topk = c.kind == "topk"
        return {
            "architecture": "topk" if topk else "jumprelu",
            "d_in": c.d_in,
            "d_sae": c.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",  # the scale is folded into the weights
            "reshape_activations": "none",
            **({"k": c.k, "rescale_acts_by_decoder_norm": False} if topk else {}),
            "activation_fn": "topk" if topk else "relu",
            "activation_fn_str": "topk" if topk else "relu",
            "activation_fn_kwargs": {"k": c.k} if topk else {},
            "finetuning_scaling_factor": False,
            "model_name": c.model_name,
            "hook_name": saelens_hook_name(c.site),
            "hook_layer": _layer_of(c.site),
            "hook_head_index": None,
            "context_size": c.context_size,
            "prepend_bos": False,
            "dataset_path": c.dataset,
            "dataset_trust_remote_code": False,
            "seqpos_slice": [c.exclude_first or None, None],
            "model_from_pretrained_kwargs": {},
            "sae_lens_training_version": None,
            "neuronpedia_id": None,
            "actlab": {"format": "actlab.sae", "version": 1, **c.to_dict()},
        }

    def save(self, directory: str | Path, log_sparsity: torch.Tensor | None = None) -> Path:
        """Write ``cfg.json`` and ``sae_weights.safetensors`` (and ``sparsity.safetensors`` if given) into
        ``directory`` (created). Use ``actlab.outputs.staged_output`` around it for an atomic run directory.

        Example:
            >>> sae.save("runs/sae-l15")                                       # doctest: +SKIP
        """
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        save_file(self.saelens_state(), str(out / WEIGHTS_FILE))
        if log_sparsity is not None:
            save_file({"sparsity": log_sparsity.detach().float().cpu().contiguous()}, str(out / SPARSITY_FILE))
        (out / CFG_FILE).write_text(json.dumps(self.saelens_cfg(), indent=2) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | Path) -> SparseAutoencoder:
        """Read an SAE written by :meth:`save`, or a SAELens TopK / JumpReLU SAE directory.

        Raises:
            SAEError: the directory, its cfg.json or its weights are missing, unreadable or inconsistent.

        Example:
            >>> sae = SparseAutoencoder.load("runs/sae-l15")                   # doctest: +SKIP
        """
        path = Path(directory).expanduser()
        hint = "pass a directory written by `actlab sae train` (cfg.json + sae_weights.safetensors)"
        if not (path / CFG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise SAEError(f"{path} is not an SAE directory (no {CFG_FILE} and {WEIGHTS_FILE}); {hint}")
        try:
            raw = json.loads((path / CFG_FILE).read_text())
        except (OSError, ValueError) as e:
            raise SAEError(f"cannot read {path / CFG_FILE}: {e}; {hint}") from e
        cfg = _config_from_saelens(raw, path)
        try:
            from safetensors.torch import load_file

            state = load_file(str(path / WEIGHTS_FILE))
        except Exception as e:  # safetensors raises its own error types for a damaged file
            raise SAEError(f"cannot read {path / WEIGHTS_FILE}: {e}; {hint}") from e
        expect = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,), "W_dec": (cfg.d_sae, cfg.d_in),
                  "b_dec": (cfg.d_in,)}
        if cfg.kind == "batchtopk":
            expect["threshold"] = (cfg.d_sae,)
        for name, shape in expect.items():
            if name not in state or tuple(state[name].shape) != shape:
                got = tuple(state[name].shape) if name in state else "missing"
                raise SAEError(f"{path / WEIGHTS_FILE}: tensor {name} is {got}, cfg.json implies {shape}; {hint}")
        sae = cls(cfg)
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(sae, name).copy_(state[name].float())
            if cfg.kind == "batchtopk":
                sae.threshold.copy_(state["threshold"].float())
        sae.eval()
        return sae


def _config_from_saelens(raw: dict[str, Any], path: Path) -> SAEConfig:
    ours = raw.get("actlab")
    arch = raw.get("architecture", "standard")
    if arch not in ("topk", "jumprelu"):
        raise SAEError(f"{path}: SAELens architecture {arch!r} is not supported (topk, or jumprelu as saved "
                       "from BatchTopK, are)")
    if raw.get("normalize_activations", "none") not in ("none", None):
        raise SAEError(f"{path}: normalize_activations={raw['normalize_activations']!r} is not supported; "
                       "fold the scaling into the weights first (SAELens: fold_activation_norm_scaling_factor)")
    try:
        if isinstance(ours, dict):
            cfg = SAEConfig.from_dict({**ours, "normalization": "none"})  # the scale is folded on disk
        else:  # a SAELens SAE: its metadata may sit at the top level (pre-6.0) or under "metadata"
            meta = {**raw, **(raw.get("metadata") or {})}
            k = raw.get("k") or (raw.get("activation_fn_kwargs") or {}).get("k")
            if k is None:
                raise SAEError(f"{path}: cfg.json names no k; an actlab SAE needs one")
            seqpos = meta.get("seqpos_slice") or [None]
            cfg = SAEConfig(d_in=int(raw["d_in"]), d_sae=int(raw["d_sae"]), k=int(k),
                            kind="topk" if arch == "topk" else "batchtopk",
                            site=site_from_hook_name(str(meta.get("hook_name") or "")),
                            model_name=str(meta.get("model_name") or ""), normalization="none",
                            exclude_first=int(seqpos[0] or 0), context_size=int(meta.get("context_size") or 0),
                            dataset=str(meta.get("dataset_path") or ""))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, SAEError):
            raise
        raise SAEError(f"{path}/{CFG_FILE} is not a valid SAE config: {e!r}") from e
    if (cfg.kind == "topk") != (arch == "topk"):
        raise SAEError(f"{path}: cfg.json says architecture {arch!r} but kind {cfg.kind!r}")
    return cfg


#: The keys SAELens reads from cfg.json, checked in the tests. From jbloomAus/SAELens at 91ca16c (v6.18.0; the same
#: in the 6.54.12 wheel):
#: ``SAEConfig`` fields in sae_lens/saes/sae.py (d_in, d_sae, dtype, device, apply_b_dec_to_input,
#: normalize_activations, reshape_activations, metadata) + ``architecture`` (``to_dict``) + ``TopKSAEConfig``'s
#: k and rescale_acts_by_decoder_norm (saes/topk_sae.py); a cfg.json without ``sae_lens_version`` goes through
#: ``handle_pre_6_0_config`` (loading/pretrained_sae_loaders.py), which builds ``metadata`` from the top-level
#: keys in ``LLM_METADATA_KEYS`` (model_name, hook_name, context_size, prepend_bos, seqpos_slice, dataset_path,
#: model_from_pretrained_kwargs, neuronpedia_id, hook_head_index, ...) and renames activation_fn_str; SAELens 5.x
#: (v5.11.0 sae_lens/sae.py ``SAEConfig``) requires architecture, d_in, d_sae, activation_fn_str,
#: apply_b_dec_to_input, finetuning_scaling_factor, context_size, model_name, hook_name, hook_layer,
#: hook_head_index, prepend_bos, dataset_path, dataset_trust_remote_code, normalize_activations, dtype, device,
#: sae_lens_training_version (and reads activation_fn_kwargs["k"]).
SAELENS_KEYS = frozenset({
    "architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
    "reshape_activations", "activation_fn", "activation_fn_str", "activation_fn_kwargs",
    "finetuning_scaling_factor", "model_name", "hook_name", "hook_layer", "hook_head_index", "context_size",
    "prepend_bos", "dataset_path", "dataset_trust_remote_code", "seqpos_slice", "model_from_pretrained_kwargs",
    "sae_lens_training_version", "neuronpedia_id",
})
SAELENS_TOPK_KEYS = frozenset({"k", "rescale_acts_by_decoder_norm"})
#: tensor names and shapes in sae_weights.safetensors (SAE.initialize_weights / _init_weights_topk;
#: BatchTopKTrainingSAE.process_state_dict_for_saving_inference adds ``threshold``)
SAELENS_TENSORS = {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_in"), "b_dec": ("d_in",)}


class _SparseGradLinear(torch.autograd.Function):
    """``x @ w + b`` whose gradient for ``w`` reads only the nonzero entries of the output gradient.

    Under TopK only k (+ AuxK's k_aux) of the d_sae pre-activations of a token get a gradient, so the dense
    ``xᵀ @ grad`` would multiply mostly zeros: a sparse product costs nnz · d_in instead of tokens · d_in · d_sae.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        return torch.addmm(b, x, w)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        x, w = ctx.saved_tensors
        gx = g @ w.T if ctx.needs_input_grad[0] else None
        rows, cols = g.nonzero(as_tuple=True)
        g_t = torch.sparse_coo_tensor(torch.stack([cols, rows]), g[rows, cols], (w.shape[1], x.shape[0]),
                                      check_invariants=False)  # built from nonzero(): valid by construction
        gw = torch.sparse.mm(g_t, x).T  # [d_in, d_sae]
        return gx, gw, g.sum(0)


def decoder_norm_grad_(sae: SparseAutoencoder) -> None:
    """Remove from ``W_dec.grad`` its component along each (unit) decoder row, so a step moves along the
    sphere and the renormalisation after it changes little (Gao et al., section 2.4)."""
    g, w = sae.W_dec.grad, sae.W_dec.detach()
    if g is not None:
        g -= (g * w).sum(dim=1, keepdim=True) * w


def sparse_decode(sae: SparseAutoencoder, z: torch.Tensor) -> torch.Tensor:
    """``z @ W_dec + b_dec`` (scaled space) reading only the nonzero latents: an ``embedding_bag`` over the
    active rows, so decoding costs k·d_in per token instead of d_sae·d_in, and its gradient too."""
    rows, cols = z.nonzero(as_tuple=True)  # row-major: grouped by token already
    counts = torch.bincount(rows, minlength=z.shape[0])
    offsets = torch.cumsum(counts, 0) - counts
    out = F.embedding_bag(cols, sae.W_dec, offsets, mode="sum", per_sample_weights=z[rows, cols])
    return out + sae.b_dec
