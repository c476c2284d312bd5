"""The method registry and the machinery every threshold method shares.

A method handler is a class registered for one config class. Constructing it does the expensive work once
(one dense pass over the calibration windows; a greedy path, a Fisher pass where the allocation needs it);
:meth:`Method.plan` then returns a plan at any value of the config's knob, cheaply. That is what lets a
quality search try many sparsities without recalibrating.

A threshold method only says which groups it thresholds, how it weights channels (``|x_i| * w_i``) and how
the model-wide target maps to group levels; scores, quantiles, entries and metrics are shared here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from actlab.distributed import Dist, split_map
from actlab.models.adapters import linear_weight
from actlab.sparsity.allocate import GreedyPath, damage_curve, global_allocation, greedy_block
from actlab.sparsity.collect import CalibrationSample, collect
from actlab.sparsity.config import SparsityConfig
from actlab.sparsity.errors import PlanError
from actlab.sparsity.fingerprint import model_fingerprint
from actlab.sparsity.fisher import output_fisher
from actlab.sparsity.groups import Group, group_params, layer_groups
from actlab.sparsity.metrics import linear_sizes, plan_metrics
from actlab.sparsity.plan import PlanEntry, SparsityPlan
from actlab.sparsity.rotation import site_rotation
from actlab.sparsity.scores import QuantileTable, channel_thresholds, sparsity_of
from actlab.sparsity.sequential import check_sequential, collect_sequential

#: method name -> handler class
HANDLERS: dict[str, type[Method]] = {}

Progress = Callable[[str, int, int], None]


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: ``cls`` handles configs of ``cls.config_cls``."""
    HANDLERS[cls.config_cls.method] = cls
    return cls


def handler_for(config: SparsityConfig) -> type[Method]:
    from actlab.sparsity import methods  # noqa: F401  (registers the built-in handlers)

    try:
        return HANDLERS[config.method]
    except KeyError:
        raise PlanError(f"no handler registered for method {config.method!r}") from None


class Method:
    """Calibrated state of one method on one model."""

    config_cls: ClassVar[type[SparsityConfig]]

    def __init__(
        self,
        model: nn.Module,
        config: SparsityConfig,
        windows: torch.Tensor | None,
        progress: Progress | None = None,
        sample: CalibrationSample | None = None,
        dist: Dist | None = None,
        sequential: bool = False,
    ) -> None:
        if not isinstance(config, self.config_cls):
            raise PlanError(f"{type(self).__name__} handles {self.config_cls.__name__}, got {type(config).__name__}")
        self.model, self.config, self.progress = model, config, progress
        self.dist = dist  # the pass is sharded over the processes; every rank then holds the same state
        self.sequential = sequential  # the calibration pass runs one decoder layer at a time (sequential.py)
        self.fingerprint = model_fingerprint(model)
        self.sizes = linear_sizes(model)
        self.calibration: dict[str, Any] = {}
        if windows is not None:
            self.calibration = {"tokens": int(windows.numel()), "windows": int(windows.shape[0]),
                                "seq_len": int(windows.shape[1])}

    def entries(self, knob: float) -> list[PlanEntry]:
        raise NotImplementedError

    def extra(self) -> dict[str, Any]:
        return {}

    def max_knob(self) -> float:
        """Largest knob value the method can reach (the top of a quality search)."""
        return 0.99

    def plan(self, knob: float | None = None) -> SparsityPlan:
        """The plan at ``knob`` (default: the config's own value)."""
        config = self.config if knob is None else self.config.with_knob(knob)
        entries = self.entries(config.knob_value())
        metrics = plan_metrics(self.model, [(e.consumers, e.sparsity, e.site) for e in entries],
                               rotations={e.site: e.rotation for e in entries if e.rotation is not None})
        return SparsityPlan(config, self.fingerprint, entries, metrics, dict(self.calibration), self.extra())

    def _report(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)


class ThresholdMethod(Method):
    """Scores ``|x_i| * w_i`` per group, thresholds from calibration quantiles, pluggable allocation."""

    #: site kinds thresholded (input groups)
    kinds: ClassVar[tuple[str, ...]] = ("attn.qkv_in", "attn.o_in", "mlp.gate_up_in", "mlp.in", "mlp.down_in")

    def __init__(self, model, config, windows, progress=None, sample=None, dist=None, sequential=False) -> None:
        super().__init__(model, config, windows, progress, dist=dist, sequential=sequential)
        if windows is None:
            raise PlanError(f"{config.method} needs calibration windows")
        self.allocation = getattr(config, "allocation", "uniform")
        if sequential:
            check_sequential(self.allocation)  # before the pass, not after it
        self.groups = self.make_groups(split=self.allocation == "greedy")
        self.params = {g.name: group_params(model, g) for g in self.groups}
        self.own_sample = sample is None
        self.sample = self.collect(windows) if sample is None else self._check_sample(sample)
        self.rotations: dict[str, torch.Tensor] = {
            s: site_rotation(model, s.split(".", 2)[2], self.sample.second_moments[s]) for s in self.moment_sites()
        }
        self.weights = {g.name: self.channel_weights(g) for g in self.groups}
        # sorting every group's scores is most of the work after the pass: processes share it out
        by_name = {g.name: g for g in self.groups}
        self.tables = split_map(list(by_name), lambda name: QuantileTable.from_scores(self._scores(by_name[name])),
                                self.dist)
        self.path: GreedyPath | None = self._greedy() if self.allocation == "greedy" else None
        self.curves: dict[str, torch.Tensor] | None = None
        if self.allocation == "global":
            self.curves = self._damage_curves(windows)

    # -- what a method defines -------------------------------------------------------------------------
    def make_groups(self, split: bool) -> list[Group]:
        wanted = getattr(self.config, "sites", ())
        groups = layer_groups(self.model, tuple(k for k in self.kinds if not wanted or k in wanted), split=split)
        if not groups:
            raise PlanError(f"{self.config.method}: no input of this model matches sites {list(wanted)}")
        return groups

    def channel_weights(self, group: Group) -> torch.Tensor | None:
        """Per-channel score weights ``w`` (``None`` = 1: plain magnitude)."""
        return None

    def sample_sites(self) -> list[str]:
        """Sites whose rows calibration keeps (the global allocation also needs each act group's ``h``)."""
        sites = {g.site for g in self.groups}
        if self.allocation == "global":
            sites |= {f"layers.{g.layer}.mlp.down_in" for g in self.groups if g.kind == "act"}
        return sorted(sites)

    def moment_sites(self) -> list[str]:
        """Sites whose second moment calibration accumulates: the inputs the config rotates."""
        rotate = set(getattr(self.config, "rotate", ()))
        return sorted(g.site for g in self.groups if g.kind == "input" and g.site.split(".", 2)[2] in rotate)

    def _check_sample(self, sample: CalibrationSample) -> CalibrationSample:
        """A shared sample must hold what this method reads."""
        missing = sorted(set(self.sample_sites()) - set(sample.rows))
        if missing:
            raise PlanError(f"{self.config.method}: the calibration sample lacks sites {missing[:3]}")
        missing = sorted(set(self.moment_sites()) - set(sample.second_moments))
        if missing:
            raise PlanError(f"{self.config.method}: rotations need second moments the calibration sample lacks "
                            f"({missing[:3]}): collect it with moment_sites=...")
        if self.allocation == "greedy" and len(sample.blocks) == 0:
            raise PlanError("greedy allocation needs a sample collected with block_tokens > 0")
        return sample

    def collect(self, windows: torch.Tensor, up_moments: bool = False) -> CalibrationSample:
        tokens = getattr(self.config, "greedy_tokens", 0) if self.allocation == "greedy" else 0
        if self.sequential:
            return collect_sequential(
                self.model, windows, self.sample_sites(), block_tokens=tokens, up_moments=up_moments,
                moment_sites=self.moment_sites(),
                progress=lambda d, t: self._report("calibration pass (layer by layer)", d, t),
            )
        return collect(
            self.model, windows, self.sample_sites(), block_tokens=tokens, up_moments=up_moments,
            moment_sites=self.moment_sites(),
            progress=lambda d, t: self._report("calibration pass", d, t), dist=self.dist,
        )

    def levels(self, knob: float) -> dict[str, float]:
        """Group levels for the model-wide target ``knob``."""
        if self.path is not None:
            return self.path.levels_at(knob)
        level = knob * sum(self.sizes.values()) / sum(self.params.values())
        if self.curves is not None and level < 0.99:
            return global_allocation(self.curves, self.params, level)
        if level >= 1.0 or (self.curves is not None and level >= 0.99):
            covered = sum(self.params.values()) / sum(self.sizes.values())
            raise PlanError(
                f"{self.config.method} sparsifies {covered:.0%} of the linear weights, so it cannot reach "
                f"{knob:.0%} model-wide; ask for less than {covered:.0%}"
            )
        return {g.name: level for g in self.groups}

    def max_knob(self) -> float:
        if self.path is not None:
            return min(steps[-1][0] for steps in self.path.steps.values())
        if self.config.knob != "sparsity":
            return 0.99
        return 0.99 * sum(self.params.values()) / sum(self.sizes.values())

    # -- shared ----------------------------------------------------------------------------------------
    def _signed_rows(self, site: str) -> torch.Tensor:
        """The calibration rows of ``site`` in the basis its mask acts in."""
        rows = self.sample.rows[site]
        q = self.rotations.get(site)
        return rows if q is None else rows @ q

    def _rows(self, g: Group) -> torch.Tensor:
        return self._signed_rows(g.site).abs()

    def _scores(self, g: Group) -> torch.Tensor:
        w = self.weights[g.name]
        rows = self._rows(g)
        return rows if w is None else rows * w

    def threshold_at(self, g: Group, level: float) -> torch.Tensor:
        return channel_thresholds(self.tables[g.name].threshold(level), self.weights[g.name])

    def entries(self, knob: float) -> list[PlanEntry]:
        levels = self.levels(knob)
        out = []
        for g in self.groups:
            t = self.threshold_at(g, levels[g.name])
            out.append(PlanEntry(g.site, g.layer, g.kind, g.consumers, g.modules, t, sparsity_of(self._rows(g), t),
                                 self.rotations.get(g.site)))
        return out

    def extra(self) -> dict[str, Any]:
        if self.path is not None:
            return {"greedy_path": self.path.to_json()}
        if self.curves is not None:
            return {"allocation": "global"}
        return {}

    def _damage_curves(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per group, the estimated output damage at every level (global allocation)."""
        n = max(1, -(-self.config.fisher_tokens // windows.shape[1]))
        damaged = sorted({p for g in self.groups for p in _damaged_linears(g)})
        fisher = self.sample.fisher
        if not set(damaged) <= set(fisher):
            fisher.update(output_fisher(self.model, windows[:n], damaged,
                                        progress=lambda d, t: self._report("output sensitivity (Fisher)", d, t)))
        curves = {}
        for g in self.groups:
            q = self.rotations.get(g.site)
            cost = sum(_cost_weights(self.model, p, fisher[p], q) for p in _damaged_linears(g))  # [2, width]
            site = f"layers.{g.layer}.mlp.down_in" if g.kind == "act" else g.site
            first = (self.sample.positions[site] == 0)[:, None]  # [rows, 1]: rows at a window's position 0
            curves[g.name] = damage_curve(self._signed_rows(site), self._scores(g), torch.where(first, cost[0], cost[1]))
        return curves

    def _greedy(self) -> GreedyPath:
        from actlab.models.adapters import get_adapter

        layers = self.model.get_submodule(get_adapter(self.model).layers)
        n = len(layers)
        done = [0]

        def search(i: int) -> list[tuple[float, dict[str, float]]]:
            self._report("greedy allocation", done[0], n)
            done[0] += 1
            block = [g for g in self.groups if g.layer == i]
            return greedy_block(
                self.model, layers[i], self.sample.blocks[i], block, self.params, self.threshold_at,
                step=self.config.greedy_step,
            )

        # the layers' searches are independent (each replays its own recorded inputs): processes share them
        steps = split_map(list(range(n)), search, self.dist)
        self._report("greedy allocation", n, n)
        if self.own_sample:
            self.sample.blocks.clear()  # the recorded block inputs are only needed for the search
        return GreedyPath(steps)


def _damaged_linears(g: Group) -> tuple[str, ...]:
    """The linears whose output a group's mask perturbs: its consumers, or the down projection for act."""
    return (g.consumers[-1],) if g.kind == "act" else g.consumers


def _cost_weights(model: nn.Module, path: str, fisher: torch.Tensor, rotation: torch.Tensor | None = None) -> torch.Tensor:
    """``c_i = sum_j F_j W[j, i]**2``: the damage per unit ``x_i**2`` of zeroing input ``i`` of ``path``.

    ``fisher`` [classes, out] -> ``[classes, in]`` (one row per position class, see ``fisher.py``); with a
    rotation the inputs are ``x Q`` and the weights ``W Q``.
    """
    w = linear_weight(model.get_submodule(path)).detach().float().cpu()  # [out, in]
    if rotation is not None:
        w = w @ rotation
    return fisher.float() @ w.pow(2)


def column_norms(model: nn.Module, consumers: tuple[str, ...], rotation: torch.Tensor | None = None) -> torch.Tensor:
    """``||W[:, i]||_2`` over the concatenated consumers (rows of all of them), ``[in]`` float32.

    With a ``rotation`` ``Q``: the column norms of ``W Q``, the weights the rotated input meets.
    """
    def cols(p: str) -> torch.Tensor:
        w = linear_weight(model.get_submodule(p)).detach().float().cpu()
        return w if rotation is None else w @ rotation

    sq = sum(cols(p).pow(2).sum(0) for p in consumers)
    return sq.sqrt()
