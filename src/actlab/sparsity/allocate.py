"""Allocation: which sparsity each group gets for a model-wide target.

* ``uniform``: every group at the same level.
* ``greedy`` (TEAL's block-wise greedy): inside each block, start dense and repeatedly raise, by one step of
  *block* sparsity (projections weighted by their parameter count), the projection whose increase adds the
  least error to the block's output on calibration inputs. The whole path is recorded, so any block
  sparsity can be read off it later without searching again; every block then gets the target sparsity.
  One deviation from TEAL: the error is measured relative to each token's output norm, because the first
  token of a window (the attention sink) carries massive activations that would otherwise decide alone.
* ``global`` (``damage_curve`` + ``global_allocation``): every group of every layer at once, by estimated
  damage to the model's output (see ``fisher.py``).

Example:
    >>> path = GreedyPath({0: [(0.0, {"a": 0.0}), (0.5, {"a": 1.0})]})
    >>> path.levels_at(0.25)
    {'a': 0.5}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from actlab.sparsity.apply import MaskedLinear, _set_module
from actlab.sparsity.collect import BlockInputs
from actlab.sparsity.groups import Group


@dataclass
class GreedyPath:
    """Per layer, the greedy steps: ``(block sparsity, {group name: level})``, block sparsity increasing."""

    steps: dict[int, list[tuple[float, dict[str, float]]]]

    def levels_at(self, block_sparsity: float, layer: int | None = None) -> dict[str, float]:
        """Group levels where the path reaches ``block_sparsity`` (linear between recorded steps).

        Beyond the end of a path the last step is used.
        """
        layers = [layer] if layer is not None else sorted(self.steps)
        out: dict[str, float] = {}
        for i in layers:
            steps = self.steps[i]
            hi = next((k for k, (s, _) in enumerate(steps) if s >= block_sparsity), len(steps) - 1)
            if hi == 0 or steps[hi][0] < block_sparsity:
                out.update(steps[hi][1])
                continue
            (s0, l0), (s1, l1) = steps[hi - 1], steps[hi]
            f = (block_sparsity - s0) / (s1 - s0) if s1 > s0 else 1.0
            out.update({g: l0[g] + f * (l1[g] - l0[g]) for g in l1})
        return out

    def to_json(self) -> dict[str, Any]:
        return {str(i): [[s, lv] for s, lv in steps] for i, steps in self.steps.items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GreedyPath:
        return cls({int(i): [(float(s), dict(lv)) for s, lv in steps] for i, steps in d.items()})


def _replay(layer: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    outs = []
    for args, kwargs in inputs.calls:
        out = layer(*args, **kwargs)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


@torch.no_grad()
def greedy_block(
    model: nn.Module,
    layer: nn.Module,
    inputs: BlockInputs,
    groups: list[Group],
    params: dict[str, int],
    threshold_at: Callable[[Group, float], torch.Tensor],
    step: float,
    max_sparsity: float = 0.9,
    max_level: float = 0.99,
) -> list[tuple[float, dict[str, float]]]:
    """TEAL's greedy inside one block: the path of group levels as block sparsity grows by ``step``.

    Args:
        layer: the decoder layer; ``inputs`` its recorded calls.
        groups: the block's groups (one consumer each: q, k, v, o, gate, up, down).
        params: weights per group; the block sparsity is the parameter-weighted mean level.
        threshold_at: ``(group, level) -> threshold on |x|`` from calibration quantiles.
    """
    dense = _replay(layer, inputs)
    total = sum(params[g.name] for g in groups)
    wrappers: dict[str, MaskedLinear] = {}
    try:
        for g in groups:
            (path,) = g.consumers
            wrappers[g.name] = MaskedLinear(model.get_submodule(path), threshold_at(g, 0.0))
            _set_module(model, path, wrappers[g.name])

        # Error relative to each token's own output norm: the attention-sink token's output is 100x the others
        # (massive activations), so a plain squared error would rank candidates by that one token alone.
        scale = [d.float().pow(2).sum(-1, keepdim=True).clamp_min(1e-12) for d in dense]  # [batch, seq, 1]

        def error() -> float:
            outs = _replay(layer, inputs)
            return sum(float(((o - d).float().pow(2) / s).sum()) for o, d, s in zip(outs, dense, scale, strict=True))

        levels = {g.name: 0.0 for g in groups}
        current, block = 0.0, 0.0
        steps = [(0.0, dict(levels))]
        while block < max_sparsity - 1e-9:
            best: tuple[float, str, float] | None = None
            for g in groups:
                if levels[g.name] >= max_level:
                    continue
                new = min(max_level, levels[g.name] + step * total / params[g.name])
                gained = (new - levels[g.name]) * params[g.name] / total
                wrappers[g.name].threshold = threshold_at(g, new).to(wrappers[g.name].threshold.device)
                cost = (error() - current) / gained
                wrappers[g.name].threshold = threshold_at(g, levels[g.name]).to(wrappers[g.name].threshold.device)
                if best is None or cost < best[0]:
                    best = (cost, g.name, new)
            if best is None:
                break
            _, name, new = best
            levels[name] = new
            wrappers[name].threshold = threshold_at(next(g for g in groups if g.name == name), new).to(
                wrappers[name].threshold.device
            )
            current = error()
            block = sum(levels[g.name] * params[g.name] for g in groups) / total
            steps.append((block, dict(levels)))
    finally:
        for g in groups:
            if g.name in wrappers:
                _set_module(model, g.consumers[0], wrappers[g.name].inner)
    return steps


def damage_curve(x: torch.Tensor, scores: torch.Tensor, cost_weight: torch.Tensor) -> torch.Tensor:
    """Estimated damage of masking a group at every grid level: ``[GRID + 1]``, per token.

    ``x`` [rows, width] signed inputs, ``scores`` [rows, width] the method's ordering (lowest masked first),
    ``cost_weight`` [width] or [rows, width]: the damage of zeroing ``x[r, i]`` is ``x[r, i]**2 *
    cost_weight[(r,) i]`` (the diagonal Fisher form of the output error, see ``fisher.py``).
    """
    from actlab.sparsity.scores import GRID

    rows = x.shape[0]
    order = scores.flatten().argsort()
    cost = (x.float().pow(2) * cost_weight).flatten()[order]  # [rows*width], in masking order
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), cost.double().cumsum(0)])
    idx = torch.linspace(0, cost.numel(), GRID + 1).round().long()
    return (cum[idx] / max(rows, 1)).float()


def _lower_hull(y: list[float]) -> list[int]:
    """Indices of the lower convex hull of points ``(k, y[k])`` (Andrew's monotone chain)."""
    hull: list[int] = []
    for k in range(len(y)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b if it lies on or above the segment a -> k
            if (y[b] - y[a]) * (k - a) >= (y[k] - y[a]) * (b - a):
                hull.pop()
            else:
                break
        hull.append(k)
    return hull


def global_allocation(
    curves: dict[str, torch.Tensor], params: dict[str, int], target: float, max_level: float = 0.99
) -> dict[str, float]:
    """Levels minimising the summed damage subject to ``sum(params * level) = target * sum(all params)``.

    Each curve is replaced by its lower convex hull; hull segments of all groups are taken in order of
    damage per skipped weight until the target is met (the last one partly), which is optimal for convex
    curves. ``target`` is a fraction of ``sum(params.values())``.
    """
    grid = len(next(iter(curves.values()))) - 1
    top = int(max_level * grid)
    segments = []  # (damage per weight, group, start level, end level)
    for name, y in curves.items():
        ys = y[: top + 1].double().tolist()
        hull = _lower_hull(ys)
        for a, b in zip(hull, hull[1:], strict=False):
            slope = (ys[b] - ys[a]) / ((b - a) / grid * params[name])
            segments.append((slope, name, a / grid, b / grid))
    segments.sort(key=lambda s: s[0])
    budget = target * sum(params.values())
    levels = {name: 0.0 for name in curves}
    for _, name, a, b in segments:
        if budget <= 0:
            break
        gain = (b - a) * params[name]
        take = min(1.0, budget / gain)
        levels[name] = a + take * (b - a)
        budget -= take * gain
    return levels
