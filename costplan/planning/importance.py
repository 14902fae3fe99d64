"""How much a pruning choice removes: the share of each layer's importance that goes with it.

Per-weight scores are squared magnitudes by default (needs no data) or first-order Taylor
|w * dL/dw| accumulated over calibration batches (Molchanov et al., CVPR 2019). Each layer's scores
are normalised to sum to one, as LAMP (Lee et al., ICLR 2021) normalises magnitudes layer by layer,
so no layer is cheap to prune merely because its weights are small. Where a model has no real
weights (traced on the meta device), weights are taken as Gaussian, for which the shares have closed
forms.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from scipy import stats

from costplan.planfile import Pattern
from costplan.planning.coupling import Group
from costplan.trace.graph import Layer, LayerGraph


def weight_of(module: torch.nn.Module, layer: Layer) -> torch.Tensor | None:
    """The layer's weight as (out, in, ...), or None if it has no named weight."""
    name = layer.attrs.get("weight")
    if not isinstance(name, str):
        return None
    try:
        weight = module.get_parameter(name)
    except AttributeError:
        return None
    return weight.detach().t() if layer.attrs.get("transposed_weight") else weight.detach()


def magnitude_scores(module: torch.nn.Module, layers: Iterable[Layer]) -> dict[str, torch.Tensor]:
    """w^2 per weight, for each layer that has a weight."""
    out = {}
    for layer in layers:
        w = weight_of(module, layer)
        if w is not None and not w.is_meta:
            out[layer.name] = w.float().pow(2)
    return out


def taylor_scores(module: torch.nn.Module, layers: Iterable[Layer], batches: Iterable[object],
                  loss_fn: Callable[[torch.nn.Module, object], torch.Tensor]) -> dict[str, torch.Tensor]:
    """|w * dL/dw| summed over ``batches``; ``loss_fn(module, batch)`` returns a scalar loss.

    Gradients are accumulated into copies: the module's own ``.grad`` fields are restored after.
    """
    layers = list(layers)
    params = {l.name: module.get_parameter(l.attrs["weight"]) for l in layers if isinstance(l.attrs.get("weight"), str)}
    everything = list(module.parameters())
    saved = [p.grad.clone() if p.grad is not None else None for p in everything]
    totals = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    was_training = module.training
    module.eval()
    try:
        for batch in batches:
            for p in everything:
                p.grad = None
            loss_fn(module, batch).backward()
            for name, p in params.items():
                if p.grad is not None:
                    totals[name] += (p.detach() * p.grad).abs().float()
    finally:
        for p, grad in zip(everything, saved):
            p.grad = grad
        module.train(was_training)
    layer_by_name = {l.name: l for l in layers}
    return {name: (t.t() if layer_by_name[name].attrs.get("transposed_weight") else t) for name, t in totals.items()}


# ---- Gaussian weights: closed forms -------------------------------------------------------------

def gaussian_unstructured(sparsity: float, block: int = 1) -> float:
    """Share of sum(w^2) in the lowest ``sparsity`` of blocks of ``block`` Gaussian weights.

    A block's energy is chi-squared with k = block degrees of freedom, and E[Y; Y <= q] / E[Y] for
    Y ~ chi2(k) is the chi2(k + 2) CDF at q.
    """
    if sparsity <= 0:
        return 0.0
    q = stats.chi2.ppf(sparsity, block)
    return float(stats.chi2.cdf(q, block + 2))


@functools.cache
def gaussian_nm(n: int, m: int) -> float:
    """Share of sum(w^2) removed by keeping the n largest of every m Gaussian weights (Monte Carlo,
    fixed seed, so plans are reproducible)."""
    x = np.sort(np.random.default_rng(0).standard_normal((200_000, m)) ** 2, axis=1)
    return float(x[:, : m - n].sum() / x.sum())


# ---- measured scores -----------------------------------------------------------------------------

def _normalised(scores: torch.Tensor) -> torch.Tensor:
    total = scores.sum()
    return scores / total if total > 0 else torch.full_like(scores, 1.0 / max(1, scores.numel()))


def _sorted(values: torch.Tensor) -> np.ndarray:
    # numpy's vectorised sort is about 10x torch's on CPU for millions of scores
    return np.sort(values.detach().flatten().cpu().float().numpy())


def _lowest_share(values: torch.Tensor, count: int) -> float:
    if count <= 0:
        return 0.0
    return float(_sorted(values)[:count].astype(np.float64).sum())


class Importance:
    """Removed-importance of every choice the planner can make, from scores or Gaussian weights."""

    def __init__(self, graph: LayerGraph, scores: Mapping[str, torch.Tensor] | None = None,
                 heads: Mapping[str, int] | None = None) -> None:
        self.graph = graph
        self.scores = {name: _normalised(s) for name, s in (scores or {}).items()}
        self.heads = dict(heads or graph.heads)
        self.kind = "measured" if self.scores else "gaussian"
        self._cumulative: dict[tuple[str, int, int], np.ndarray] = {}

    def _lowest(self, layer: str, rows: int, cols: int, count: int) -> float:
        """Sum of the ``count`` smallest (rows x cols)-block sums of a layer's scores; each layer's
        blocks are sorted once and their running sums reused for every ratio level."""
        key = (layer, rows, cols)
        if key not in self._cumulative:
            matrix = self.scores[layer].flatten(1)
            r, c = matrix.shape[0] - matrix.shape[0] % rows, matrix.shape[1] - matrix.shape[1] % cols
            blocks = matrix[:r, :c].reshape(r // rows, rows, c // cols, cols).sum((1, 3)).flatten()
            self._cumulative[key] = np.cumsum(_sorted(blocks), dtype=np.float64)
        cumulative = self._cumulative[key]
        count = min(count, cumulative.size)
        return float(cumulative[count - 1]) if count > 0 else 0.0

    def _blocks(self, layer: str, rows: int, cols: int) -> int:
        shape = self.scores[layer].flatten(1).shape
        return (shape[0] // rows) * (shape[1] // cols)

    def _channel_scores(self, group: Group) -> torch.Tensor | None:
        """Per output channel (or head) sums of the members' normalised scores."""
        if not all(m in self.scores for m in group.members):
            return None
        total: torch.Tensor | None = None
        for member in group.members:
            per_row = self.scores[member].flatten(1).sum(1)
            if group.kind == "head":
                chunks = 3 if len(group.members) == 1 else 1  # a fused q/k/v projection
                if per_row.numel() % (chunks * group.width):
                    return None
                per_row = per_row.view(chunks, group.width, -1).sum((0, 2))
            total = per_row if total is None else total + per_row
        return total

    def removed_structured(self, group: Group, kept: int) -> float:
        """Importance removed when ``group`` keeps ``kept`` of its ``width`` channels or heads."""
        removed = group.width - kept
        per_group = self._channel_scores(group)
        if per_group is None:
            return len(group.members) * removed / group.width
        return _lowest_share(per_group, removed)

    def removed_elementwise(self, layer: str, pattern: Pattern, sparsity: float) -> float:
        """Importance removed from ``layer`` by ``pattern`` at ``sparsity``."""
        if sparsity <= 0:
            return 0.0
        scores = self.scores.get(layer)
        if pattern.kind == "unstructured":
            if scores is None:
                return gaussian_unstructured(sparsity)
            return self._lowest(layer, 1, 1, math.floor(sparsity * scores.numel()))
        if pattern.kind == "nm":
            if scores is None:
                return gaussian_nm(pattern.n, pattern.m)
            rows = scores.movedim(1, -1).reshape(-1, scores.shape[1]) if scores.dim() > 2 else scores
            usable = rows.shape[1] - rows.shape[1] % pattern.m
            groups = rows[:, :usable].reshape(rows.shape[0], -1, pattern.m)
            return float(torch.sort(groups, dim=-1).values[..., : pattern.m - pattern.n].sum())
        if pattern.kind == "block":
            r, c = pattern.n, pattern.m
            if scores is None:
                return gaussian_unstructured(sparsity, r * c)
            return self._lowest(layer, r, c, math.floor(sparsity * self._blocks(layer, r, c)))
        raise ValueError(f"not an element-wise pattern: {pattern}")
