"""Train and evaluate a sparse autoencoder on one site, streaming activations from the model.

Activations are never dumped: :func:`site_activations` runs the model over token windows and stops each
forward at the site (a hook raises once it has read the tensor, so the later layers and the LM head are
skipped), and :func:`train_sae` keeps a bounded shuffle buffer of ``buffer_batches × batch_size`` token
activations. Each step trains on a random batch of the buffer and then replaces ``batch_size / reuse`` of
its oldest tokens with new ones from the model, so every token is trained on ``reuse`` times on average.

The recipe is the TopK SAE of Gao et al. (OpenAI, "Scaling and evaluating sparse autoencoders", 2024):
encoder initialised to the decoder's transpose, ``b_dec`` to the geometric median of the first buffer,
Adam (eps 6.25e-10), unit-norm decoder rows (gradient projected off each row, rows renormalised after
each step), and the AuxK loss: the ``k_aux`` largest pre-activations among dead latents (no firing in the
last ``dead_tokens`` training tokens) reconstruct the residual ``x − x̂``, weighted ``aux_coef`` (1/32).
BatchTopK (Bussmann et al. 2024) keeps the k·n largest activations over a batch of n tokens and
estimates an inference threshold from the smallest kept activation (an exponential moving average).

Example:
    >>> sae = sae_for_site(model, "layers.15.resid_out", d_sae=4608, k=32)                  # doctest: +SKIP
    >>> windows = make_windows(corpus, tok, 256, 1_000_000, split="calib")                   # doctest: +SKIP
    >>> train_sae(site_activations(model, sae.cfg.site, windows), sae, SAETrainArgs(max_seconds=600))  # doctest: +SKIP
    >>> evaluate_sae(model, sae, make_windows(corpus, tok, 256, 16384, split="eval")).fvu  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from actlab.activations.hooks import capture
from actlab.activations.sites import Site, SiteError, resolve_sites
from actlab.interp.sae import SAEConfig, SAEError, SparseAutoencoder, decoder_norm_grad_, sparse_decode
from actlab.models.scoring import lm_logits, model_device, per_window_nll


class _Stop(Exception):
    """Raised by a site hook once it has read the tensor: the rest of the forward is not needed."""


def resolve_site(model: nn.Module, site: str) -> Site:
    """The one site named ``site`` (a full name such as ``layers.15.resid_out``).

    Raises:
        SiteError: the model has no such site (another model's site, a typo) or the name matches several.
    """
    found = resolve_sites(model, site)
    if len(found) != 1:
        raise SiteError(f"{site!r} matches {len(found)} sites ({', '.join(list(found)[:3])}, ...); an SAE reads "
                        "one site: give its full name, e.g. layers.15.resid_out")
    return next(iter(found.values()))


@torch.no_grad()
def _read_site(model: nn.Module, site: Site, ids: torch.Tensor) -> torch.Tensor:
    """The site's tensor ``[B, T, d]`` for token ids ``[B, T]``, without running the layers after it."""
    got: dict[str, torch.Tensor] = {}

    def grab(s: Site, x: torch.Tensor) -> None:
        got["x"] = x.detach()
        raise _Stop

    with capture(model, sites={site.name: site}, fn=grab):
        try:
            lm_logits(model, ids.to(model_device(model)))
        except _Stop:
            pass
    if "x" not in got:
        raise SAEError(f"site {site.name} was not reached by a forward pass of this model")
    return got["x"]


def site_activations(model: nn.Module, site: str, windows: torch.Tensor, batch_size: int = 8,
                     exclude_first: int = 1, shuffle_seed: int | None = None) -> Iterator[torch.Tensor]:
    """Stream ``[tokens, d]`` float32 activations of ``site`` over ``windows [n, T]``, ``batch_size`` windows at a
    time, leaving out the first ``exclude_first`` positions of each window. With ``shuffle_seed`` the windows
    are read in a seeded random order: ``make_windows`` returns them in corpus order, and a run stopped by a
    time budget should have seen the whole corpus, not its first documents.

    Example:
        >>> next(site_activations(model, "layers.1.resid_out", windows)).shape        # doctest: +SKIP
        torch.Size([2040, 64])
    """
    s = resolve_site(model, site)
    model.eval()
    if shuffle_seed is not None:
        windows = windows[torch.randperm(windows.shape[0], generator=torch.Generator().manual_seed(shuffle_seed))]
    for b in range(0, windows.shape[0], batch_size):
        x = _read_site(model, s, windows[b : b + batch_size])[:, exclude_first:]  # [B, T - e, d]
        yield x.reshape(-1, x.shape[-1]).float().cpu()


def sae_for_site(model: nn.Module, site: str, d_sae: int, k: int, kind: str = "topk", model_name: str = "",
                 normalization: str = "scale", exclude_first: int = 1, context_size: int = 0,
                 dataset: str = "", seed: int = 0) -> SparseAutoencoder:
    """A fresh SAE for ``site`` of ``model``: ``d_in`` read from the site, the model's fingerprint recorded.

    Raises:
        SiteError: the model has no such site.  SAEError: bad d_sae / k / kind.
    """
    from actlab.sparsity.fingerprint import model_fingerprint

    s = resolve_site(model, site)
    d_in = _read_site(model, s, torch.zeros(1, max(2, exclude_first + 1), dtype=torch.long)).shape[-1]
    cfg = SAEConfig(d_in=int(d_in), d_sae=d_sae, k=k, kind=kind, site=s.name, model_name=model_name,
                    normalization=normalization, exclude_first=exclude_first, context_size=context_size,
                    dataset=dataset, model_fingerprint=model_fingerprint(model))
    return SparseAutoencoder(cfg, seed=seed)


def check_model(sae: SparseAutoencoder, model: nn.Module) -> Site:
    """The SAE's site on ``model``, after checking that ``model`` is the one the SAE was trained on.

    Raises:
        SiteError: the model has no such site.  SAEError: another model (fingerprint) or another width.
    """
    from actlab.sparsity.fingerprint import fingerprint_mismatch, model_fingerprint

    c = sae.cfg
    if not c.site:
        raise SAEError("the SAE names no site (cfg.json has no hook_name); it cannot be run on a model")
    s = resolve_site(model, c.site)
    if c.model_fingerprint:
        why = fingerprint_mismatch(c.model_fingerprint, model_fingerprint(model))
        if why:
            why = why.replace("the plan was made for", "the SAE was trained on").replace("the plan", "the SAE")
            raise SAEError(f"this SAE was trained on {c.model_name or 'another model'} ({c.site}); the model given "
                           f"differs: {why}. Pass --model {c.model_name or 'the model it was trained on'}")
    d = _read_site(model, s, torch.zeros(1, max(2, c.exclude_first + 1), dtype=torch.long)).shape[-1]
    if d != c.d_in:
        raise SAEError(f"site {c.site} of this model is {d} wide but the SAE reads {c.d_in}: another model")
    return s


@dataclass
class SAETrainArgs:
    """The training loop's settings. Stops at ``max_tokens`` (read from the model), ``max_seconds`` (wall
    time) or the end of the source, whichever comes first; the learning-rate schedule follows the fraction of
    that budget used (linear warmup over ``warmup`` of it, linear decay to 0 over the last ``decay``).

    ``lr=None`` is Gao et al.'s scaling, 2e-4 · sqrt(2^14 / d_sae). ``max_norm_ratio``: tokens whose norm exceeds
    this many times the median norm of the first tokens read are left out (``SAETrainResult.dropped``): SmolLM2's
    residual stream has attention-sink tokens of norm ~2.5e4 (median ~170) inside some windows too, and one of
    them in a batch dominates its loss and its gradient. None keeps every token.
    """

    max_tokens: int | None = None
    max_seconds: float | None = None
    batch_size: int = 4096
    buffer_batches: int = 8
    reuse: int = 1
    lr: float | None = None
    warmup: float = 0.05
    decay: float = 0.2
    aux_coef: float = 1 / 32
    k_aux: int | None = None
    dead_tokens: int = 100_000
    threshold_lr: float = 0.01
    max_norm_ratio: float | None = 10.0
    log_every: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "buffer_batches", "reuse", "log_every", "dead_tokens"):
            if getattr(self, name) < 1:
                raise SAEError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.reuse > self.batch_size:
            raise SAEError(f"reuse ({self.reuse}) cannot exceed batch_size ({self.batch_size})")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise SAEError(f"max_tokens must be positive (got {self.max_tokens})")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise SAEError(f"max_seconds must be positive (got {self.max_seconds})")
        if self.lr is not None and not self.lr > 0:
            raise SAEError(f"lr must be positive (got {self.lr})")
        if not (0 <= self.warmup < 1 and 0 <= self.decay <= 1 and self.warmup + self.decay <= 1):
            raise SAEError(f"warmup ({self.warmup}) and decay ({self.decay}) must be fractions summing to at most 1")


@dataclass
class SAETrainResult:
    """What :func:`train_sae` did: ``tokens`` read from the source, ``tokens_trained`` = steps × batch_size."""

    steps: int
    tokens: int
    tokens_trained: int
    seconds: float
    lr: float
    input_scale: float
    fvu: float  # over the last log interval's batches
    l0: float
    dead_fraction: float  # no firing in the last min(dead_tokens, tokens_trained) training tokens
    dropped: int = 0  # tokens left out for a norm above max_norm_ratio × the median
    log: list[dict[str, float]] = field(default_factory=list, repr=False)
    fire_counts: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("fire_counts")
        return d

    def log_sparsity(self) -> torch.Tensor | None:
        """log10 firing frequency per latent (SAELens's ``sparsity.safetensors``), -10 for never."""
        if self.fire_counts is None or self.tokens_trained == 0:
            return None
        return torch.log10(self.fire_counts.double() / self.tokens_trained + 1e-10).float()


class _Ring:
    """A fixed-capacity buffer of token activations filled from an iterator of ``[n, d]`` chunks."""

    def __init__(self, source: Iterable[torch.Tensor], capacity: int) -> None:
        self.source, self.capacity = iter(source), capacity
        self.pending: list[torch.Tensor] = []
        self.data: torch.Tensor | None = None
        self.size = self.pos = self.read = self.dropped = 0
        self.max_norm: float | None = None

    def keep(self, chunk: torch.Tensor) -> torch.Tensor:
        """``chunk`` without the tokens above ``max_norm`` (counted in ``dropped``)."""
        if self.max_norm is None:
            return chunk
        ok = chunk.norm(dim=1) <= self.max_norm
        self.dropped += int((~ok).sum())
        return chunk if bool(ok.all()) else chunk[ok]

    def pull(self, n: int) -> torch.Tensor | None:
        have = sum(c.shape[0] for c in self.pending)
        while have < n:
            chunk = next(self.source, None)
            if chunk is None:
                break
            chunk = chunk.reshape(-1, chunk.shape[-1]).float()
            self.read += chunk.shape[0]  # tokens read from the source, kept or not
            chunk = self.keep(chunk)
            self.pending.append(chunk)
            have += chunk.shape[0]
        if have == 0:
            return None
        cat = torch.cat(self.pending)
        out, rest = cat[:n], cat[n:]
        self.pending = [rest] if rest.shape[0] else []
        return out

    def put(self, x: torch.Tensor) -> None:
        if self.data is None:
            self.data = torch.empty(self.capacity, x.shape[1])
        for part in (x[: self.capacity - self.pos], x[self.capacity - self.pos :]):
            if part.shape[0]:
                self.data[self.pos : self.pos + part.shape[0]] = part
                self.pos = (self.pos + part.shape[0]) % self.capacity
                self.size = min(self.capacity, self.size + part.shape[0])


@torch.no_grad()
def geometric_median(x: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """Weiszfeld's iterations for the point minimising the sum of distances to the rows of ``x``."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-8)
        y = (w[:, None] * x).sum(0) / w.sum()
    return y


def _progress_bar(enabled: bool) -> Any:
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("sae"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=Console(stderr=True),
                    transient=True)


def _aux_loss(sae: SparseAutoencoder, pre: torch.Tensor, err: torch.Tensor, dead: torch.Tensor,
              k_aux: int) -> torch.Tensor:
    """AuxK: the top ``k_aux`` dead latents' reconstruction of the (detached) residual ``err``.

    Their pre-activations are used as they are, without a ReLU (SAELens's ``_calculate_topk_aux_acts``): a
    latent whose pre-activations are all negative still gets a gradient, which is what revives it. The loss is
    scaled by min(n_dead / k_aux, 1) (SAELens) so that a few dead latents do not dominate it.
    """
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    k = min(k_aux, n_dead)
    top = pre.masked_fill(~dead, -math.inf).topk(k, dim=-1)
    z_aux = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    e_hat = sparse_decode(sae, z_aux) - sae.b_dec
    return min(n_dead / k_aux, 1.0) * (e_hat - err.detach()).pow(2).sum(-1).mean()


def train_sae(source: Iterable[torch.Tensor], sae: SparseAutoencoder, args: SAETrainArgs | None = None,
              progress: bool = False, init: bool = True) -> SAETrainResult:
    """Train ``sae`` on activations from ``source`` (an iterable of ``[n, d_in]`` tensors, e.g.
    :func:`site_activations`, or synthetic data). ``init``: set the input scale and ``b_dec`` from the first
    tokens read (leave False to continue a trained SAE).

    Example:
        >>> result = train_sae(site_activations(model, site, windows), sae, SAETrainArgs(max_tokens=200_000))  # doctest: +SKIP
        >>> result.fvu, result.l0                                                                                 # doctest: +SKIP
    """
    args = args or SAETrainArgs()
    c, B = sae.cfg, args.batch_size
    gen = torch.Generator().manual_seed(args.seed)
    ring = _Ring(source, args.buffer_batches * B)
    start = time.perf_counter()
    # Start on a few batches (the model is the slow part: filling the whole buffer first would spend minutes of a
    # CPU budget idle); the buffer then grows by batch_size / reuse per step up to its capacity.
    first = ring.pull(min(ring.capacity, 4 * B))
    if first is None:
        raise SAEError("the activation source gave no tokens; pass more windows (--tokens)")
    if first.shape[1] != c.d_in:
        raise SAEError(f"activations are {first.shape[1]} wide, the SAE reads d_in={c.d_in}")
    if args.max_norm_ratio is not None:
        ring.max_norm = args.max_norm_ratio * float(first.norm(dim=1).median())
        first = ring.keep(first)
        ring.pending = [ring.keep(p) for p in ring.pending]
    ring.put(first)
    if init:
        sae.set_input_scale(first)
        with torch.no_grad():
            sae.b_dec.copy_(geometric_median(first[:8192] * sae.input_scale))
    sae.train()
    lr0 = args.lr if args.lr is not None else 2e-4 * math.sqrt(2**14 / c.d_sae)
    opt = torch.optim.Adam(sae.parameters(), lr=lr0, betas=(0.9, 0.999), eps=6.25e-10)
    k_aux = args.k_aux or max(1, c.d_in // 2)
    last_fired = torch.zeros(c.d_sae, dtype=torch.long)
    fire_counts = torch.zeros(c.d_sae, dtype=torch.long)
    threshold: float | None = None
    steps = trained = 0
    lr = 0.0
    window = {"sse": 0.0, "sst": 0.0, "l0": 0.0, "n": 0, "loss": 0.0, "aux": 0.0}
    fvu = l0 = dead_frac = math.nan
    log: list[dict[str, float]] = []
    bar = _progress_bar(progress)
    if bar is not None:
        bar.start()
        task = bar.add_task("sae", total=1000, info="")
    try:
        while True:
            elapsed = time.perf_counter() - start
            frac = max(ring.read / args.max_tokens if args.max_tokens else 0.0,
                       elapsed / args.max_seconds if args.max_seconds else 0.0)
            if frac >= 1.0:
                break
            warm = min(1.0, frac / args.warmup) if args.warmup > 0 else 1.0
            cool = min(1.0, (1.0 - frac) / args.decay) if args.decay > 0 else 1.0
            lr = lr0 * max(warm, 1e-3) * cool
            for group in opt.param_groups:
                group["lr"] = lr
            x = ring.data[torch.randint(ring.size, (B,), generator=gen)]  # [B, d_in]
            xn = x * sae.input_scale
            pre = sae.pre_acts(x)  # [B, d_sae]
            z = sae.activate(pre)
            err = xn - sparse_decode(sae, z)
            mse = err.pow(2).sum(-1).mean()
            dead = (trained - last_fired) >= args.dead_tokens
            aux = _aux_loss(sae, pre, err, dead, k_aux) if args.aux_coef > 0 else mse.new_zeros(())
            loss = mse + args.aux_coef * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            decoder_norm_grad_(sae)
            opt.step()
            sae.normalize_decoder()
            with torch.no_grad():
                fired_tok = z > 0  # [B, d_sae]
                fired = fired_tok.any(0)
                trained += B
                last_fired[fired] = trained
                fire_counts += fired_tok.sum(0)
                if c.kind == "batchtopk" and bool(fired.any()):
                    m = float(z[fired_tok].min())
                    threshold = m if threshold is None else (1 - args.threshold_lr) * threshold + args.threshold_lr * m
                    sae.threshold.fill_(threshold)
                window["sse"] += float(err.pow(2).sum())
                window["sst"] += float((xn - xn.mean(0)).pow(2).sum())
                window["l0"] += float(fired_tok.sum()) / B
                window["loss"] += float(loss)
                window["aux"] += float(aux)
                window["n"] += 1
            steps += 1
            if steps % args.log_every == 0:
                n = window["n"]
                fvu, l0 = window["sse"] / max(window["sst"], 1e-30), window["l0"] / n
                dead_frac = float(((trained - last_fired) >= min(args.dead_tokens, trained)).float().mean())
                secs = time.perf_counter() - start
                row = {"step": steps, "tokens": ring.read, "tokens_trained": trained, "loss": window["loss"] / n,
                       "aux": window["aux"] / n, "fvu": fvu, "l0": l0, "dead_fraction": dead_frac, "lr": lr,
                       "seconds": secs, "tokens_per_s": ring.read / max(secs, 1e-9)}
                log.append(row)
                window = dict.fromkeys(window, 0.0) | {"n": 0}
                if bar is not None:
                    bar.update(task, completed=int(1000 * frac),
                               info=f"loss {row['loss']:.3g}  FVU {fvu:.3f}  L0 {l0:.1f}  dead {dead_frac:.1%}  "
                                    f"{ring.read:,} tok  {row['tokens_per_s']:,.0f} tok/s")
            new = ring.pull(max(1, B // args.reuse))
            if new is None:
                break
            ring.put(new)
    finally:
        if bar is not None:
            bar.stop()
    if window["n"] >= max(1, args.log_every // 2) or not log:  # else the last full interval is the better estimate
        if window["n"]:
            fvu, l0 = window["sse"] / max(window["sst"], 1e-30), window["l0"] / window["n"]
    if trained:
        dead_frac = float(((trained - last_fired) >= min(args.dead_tokens, trained)).float().mean())
    sae.eval()
    return SAETrainResult(steps=steps, tokens=ring.read, tokens_trained=trained,
                          seconds=time.perf_counter() - start, lr=lr0, input_scale=float(sae.input_scale), fvu=fvu,
                          l0=l0, dead_fraction=dead_frac, dropped=ring.dropped, log=log, fire_counts=fire_counts)


# ------------------------------------------------------------------------------------------------ evaluation


@dataclass
class SAEEvalResult:
    """Quality of an SAE on held-out windows (positions from ``exclude_first`` on).

    ``fvu`` = Σ‖x − x̂‖² / Σ‖x − mean‖²; ``l0`` mean active latents per token; ``dead_fraction`` latents that
    never fired on these tokens. Losses are next-token NLL (nats) over the targets whose context includes a
    spliced position (targets ``exclude_first + 1`` on): clean, with x̂ spliced in place of the site's
    activation, and with the site zero- or mean-ablated (the eval tokens' mean). ``recovered_*`` =
    (ablated − spliced) / (ablated − clean): 1 is as good as the model, 0 as bad as the ablation.
    """

    fvu: float
    variance_explained: float
    l0: float
    dead_fraction: float
    loss_clean: float
    loss_spliced: float
    loss_zero_ablated: float
    loss_mean_ablated: float
    recovered_vs_zero: float
    recovered_vs_mean: float
    tokens: int
    windows: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _loss(model: nn.Module, windows: torch.Tensor, batch_size: int, start: int) -> float:
    sums = per_window_nll(model, windows, batch_size, start, reduction="sum")
    return float(sums.double().sum()) / (windows.shape[0] * (windows.shape[1] - start))


@torch.no_grad()
def evaluate_sae(model: nn.Module, sae: SparseAutoencoder, windows: torch.Tensor, batch_size: int = 8,
                 progress: bool = False) -> SAEEvalResult:
    """FVU, L0, dead latents and the next-token loss clean / spliced / ablated on ``windows [n, T]``.

    Raises:
        SiteError / SAEError: see :func:`check_model`; windows too short for ``exclude_first``.

    Example:
        >>> r = evaluate_sae(model, sae, make_windows(corpus, tok, 256, 16384, split="eval"))   # doctest: +SKIP
        >>> r.variance_explained, r.loss_spliced - r.loss_clean                                # doctest: +SKIP
    """
    site = check_model(sae, model)
    e = sae.cfg.exclude_first
    if windows.dim() != 2 or windows.shape[1] < e + 2:
        raise SAEError(f"windows must be [n, seq_len] with seq_len >= {e + 2} (exclude_first={e}); "
                       f"got {tuple(windows.shape)}")
    sae.eval()
    start, t0 = e + 1, time.perf_counter()
    sites = {site.name: site}
    acc = {"n": 0, "sum": None, "sq": 0.0, "sse": 0.0, "l0": 0.0}
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    bar = _progress_bar(progress)
    if bar is not None:
        bar.start()
        task = bar.add_task("eval", total=4, info="clean")

    def stats(s: Site, x: torch.Tensor) -> None:
        flat = x[:, e:].reshape(-1, x.shape[-1]).double()
        acc["n"] += flat.shape[0]
        acc["sum"] = flat.sum(0) if acc["sum"] is None else acc["sum"] + flat.sum(0)
        acc["sq"] += float(flat.pow(2).sum())

    def splice(s: Site, x: torch.Tensor) -> torch.Tensor:
        z = sae.encode(x[:, e:].float())  # [B, T - e, d_sae]
        x_hat = sae.decode(z).to(x.dtype)
        acc["sse"] += float((x[:, e:].double() - x_hat.double()).pow(2).sum())
        acc["l0"] += float((z > 0).sum())
        fired.logical_or_(z.reshape(-1, z.shape[-1]).gt(0).any(0))
        out = x.clone()
        out[:, e:] = x_hat
        return out

    def replace_with(value: torch.Tensor | float) -> Any:
        def fn(s: Site, x: torch.Tensor) -> torch.Tensor:
            out = x.clone()
            out[:, e:] = value if isinstance(value, float) else value.to(x.dtype)
            return out
        return fn

    try:
        with capture(model, sites=sites, fn=stats):
            clean = _loss(model, windows, batch_size, start)
        if bar is not None:
            bar.update(task, advance=1, info="spliced")
        with capture(model, sites=sites, fn=splice):
            spliced = _loss(model, windows, batch_size, start)
        if bar is not None:
            bar.update(task, advance=1, info="zero-ablated")
        with capture(model, sites=sites, fn=replace_with(0.0)):
            zero = _loss(model, windows, batch_size, start)
        if bar is not None:
            bar.update(task, advance=1, info="mean-ablated")
        mean = (acc["sum"] / acc["n"]).float()
        with capture(model, sites=sites, fn=replace_with(mean)):
            mean_abl = _loss(model, windows, batch_size, start)
    finally:
        if bar is not None:
            bar.stop()
    n = acc["n"]
    sst = acc["sq"] - float(acc["sum"].pow(2).sum()) / n
    fvu = acc["sse"] / max(sst, 1e-30)

    def recovered(ablated: float) -> float:
        return (ablated - spliced) / (ablated - clean) if ablated != clean else math.nan

    return SAEEvalResult(fvu=fvu, variance_explained=1.0 - fvu, l0=acc["l0"] / n,
                         dead_fraction=float((~fired).float().mean()), loss_clean=clean, loss_spliced=spliced,
                         loss_zero_ablated=zero, loss_mean_ablated=mean_abl, recovered_vs_zero=recovered(zero),
                         recovered_vs_mean=recovered(mean_abl), tokens=n, windows=windows.shape[0],
                         seconds=time.perf_counter() - t0)


@torch.no_grad()
def latent_activations(model: nn.Module, sae: SparseAutoencoder, windows: torch.Tensor,
                       batch_size: int = 8) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per-latent activations for neuron records: yields ``(acts [tokens, d_sae], window_ids [tokens],
    positions [tokens])`` per batch of windows, positions from ``exclude_first`` on; ``window_ids`` index
    ``windows``.

    Example:
        >>> for acts, win, pos in latent_activations(model, sae, windows):             # doctest: +SKIP
        ...     records.update(acts, win, pos)
    """
    site = check_model(sae, model)
    e = sae.cfg.exclude_first
    sae.eval()
    model.eval()
    for b in range(0, windows.shape[0], batch_size):
        x = _read_site(model, site, windows[b : b + batch_size])[:, e:].float()  # [B, T - e, d_in]
        n_win, n_pos = x.shape[0], x.shape[1]
        acts = sae.encode(x.reshape(-1, x.shape[-1]).cpu())  # [B * (T - e), d_sae]
        win = (torch.arange(n_win) + b).repeat_interleave(n_pos)
        pos = (torch.arange(n_pos) + e).repeat(n_win)
        yield acts, win, pos


def latent_records(model: nn.Module, sae: SparseAutoencoder, windows: torch.Tensor, config: Any = None,
                   batch_size: int = 8, progress: bool = False) -> Any:
    """``actlab.interp.records.NeuronRecords`` of the SAE's latents over ``windows``, named ``{site}.sae``
    (``progress``: a bar over the windows on stderr).

    Example:
        >>> rec = latent_records(model, sae, windows)                                   # doctest: +SKIP
        >>> rec.top(0)[0].window, rec.top(0)[0].position                                # doctest: +SKIP
    """
    from actlab.interp.records import NeuronRecords  # the records module is the other half of this
    from actlab.progress import progress_bar

    rec = NeuronRecords(f"{sae.cfg.site}.sae", sae.cfg.d_sae, config)
    with progress_bar(progress, windows.shape[0], "latent records") as advance:
        for acts, win, pos in latent_activations(model, sae, windows, batch_size):
            rec.update(acts, win, pos)
            advance(int(win.unique().numel()))
    return rec
