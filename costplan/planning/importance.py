"""How much a pruning choice removes: the share of each layer's importance that goes with it.

Per-weight scores come from :mod:`costplan.scoring`, the criteria the pruner ranks by: squared
magnitudes by default (needs no data), or any other criterion (``l1``, first-order Taylor
|w * dL/dw| accumulated over calibration batches, Molchanov et al., CVPR 2019, ...). Each layer's scores
are normalised to sum to one, as LAMP (Lee et al., ICLR 2021) normalises magnitudes layer by layer,
so no layer is cheap to prune merely because its weights are small. Where a model has no real
weights (traced on the meta device), weights are taken as Gaussian, for which the shares have closed
forms.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy import stats

from costplan.modules import out_in
from costplan.patterns import Pattern, block_sums, elementwise_mask
from costplan.trace.graph import LayerGraph
from costplan.trace.groups import PrunableGroup, structure_of, unit_scores


def scored_params(graph: LayerGraph) -> list[str]:
    """The parameters importance reads: every conv/linear weight, and the rows the prunable groups'
    members write (an LSTM's gate weights)."""
    names = [l.weight_param for l in graph.layers if l.weight_param]
    names += [s.param for g in structure_of(graph).prunable() for s in g.slices if s.role == "out" and s.tensor != "bias"
              and not s.tensor.startswith("bias")]
    return list(dict.fromkeys(names))


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
    """Removed-importance of every choice the planner can make, from scores or Gaussian weights.

    ``scores`` are per-element scores keyed by parameter name, in the parameter's own layout; ``kind``
    names what scored them (a criterion of :mod:`costplan.scoring`), ``origin`` whose weights."""

    def __init__(self, graph: LayerGraph, scores: Mapping[str, torch.Tensor] | None = None,
                 heads: Mapping[str, int] | None = None, origin: str | None = None, kind: str | None = None) -> None:
        self.graph = graph
        self.raw = dict(scores or {})
        self.transposed = {l.weight_param for l in graph.layers if l.transposed_weight}
        # element-wise patterns read weights as (outputs, inputs, ...), each normalised to sum to one
        self.scores = {name: _normalised(out_in(s, name in self.transposed)) for name, s in self.raw.items()}
        self.heads = dict(heads or graph.heads)
        # what scored the weights (plan JSON's "importance"): the criterion's name, or gaussian
        self.kind = kind or ("measured" if self.scores else "gaussian")
        self.origin = origin or ("scores given" if self.scores else "Gaussian weights")   # said with every plan
        self._cumulative: dict[tuple[str, int, int], np.ndarray] = {}
        self._units: dict[str, np.ndarray | None] = {}

    def _lowest(self, layer: str, rows: int, cols: int, count: int) -> float:
        """Sum of the ``count`` smallest (rows x cols)-block sums of a weight's scores; each weight's
        blocks are sorted once and their running sums reused for every ratio level."""
        key = (layer, rows, cols)
        if key not in self._cumulative:
            blocks = block_sums(self.scores[layer], rows, cols) if (rows, cols) != (1, 1) else self.scores[layer]
            self._cumulative[key] = np.cumsum(_sorted(blocks), dtype=np.float64)
        cumulative = self._cumulative[key]
        count = min(count, cumulative.size)
        return float(cumulative[count - 1]) if count > 0 else 0.0

    def _blocks(self, layer: str, rows: int, cols: int) -> int:
        return block_sums(self.scores[layer], rows, cols).numel()

    def removed_structured(self, group: PrunableGroup, kept: int) -> float:
        """Importance removed when ``group`` keeps ``kept`` of its ``width`` units (channels or heads):
        the lowest units by :func:`costplan.trace.groups.unit_scores`, the ranking the pruner uses."""
        removed = group.width - kept
        if group.name not in self._units:
            units = unit_scores(group, self.raw) if self.raw else None
            self._units[group.name] = None if units is None else np.cumsum(np.sort(units.numpy()))
        cumulative = self._units[group.name]
        if cumulative is None:
            return len(group.members) * removed / group.width
        return float(cumulative[removed - 1]) if removed > 0 else 0.0

    def prepare(self, units: Sequence[object]) -> None:
        """Compute what :meth:`removed` needs for ``units`` ahead (nothing here: shares are read lazily)."""

    def removed(self, unit: object, option: object) -> float:
        """Importance removed by ``option`` (a :class:`~costplan.planning.units.Option`) of ``unit``."""
        if option.pattern is None:   # type: ignore[attr-defined]
            return 0.0
        if option.structured:   # type: ignore[attr-defined]
            return self.removed_structured(unit.group, option.kept)   # type: ignore[attr-defined]
        return sum(self.removed_elementwise(self.graph.layer(n).weight_param, option.pattern, option.sparsity)  # type: ignore[attr-defined]
                   for n in unit.layers)   # type: ignore[attr-defined]

    def removed_elementwise(self, weight: str, pattern: Pattern, sparsity: float) -> float:
        """Importance removed from the weight ``weight`` (a parameter name) by ``pattern`` at ``sparsity``."""
        if sparsity <= 0:
            return 0.0
        scores = self.scores.get(weight)
        if pattern.kind == "unstructured":
            if scores is None:
                return gaussian_unstructured(sparsity)
            return self._lowest(weight, 1, 1, math.floor(sparsity * scores.numel()))
        if pattern.kind == "nm":
            if scores is None:
                return gaussian_nm(pattern.n, pattern.m)
            full = 1.0 - pattern.n / pattern.m    # N:M scored at its own sparsity, as the masks keep it
            return float((scores * ~elementwise_mask(scores, pattern, full)).sum())
        if pattern.kind == "block":
            r, c = pattern.n, pattern.m
            if scores is None:
                return gaussian_unstructured(sparsity, r * c)
            return self._lowest(weight, r, c, math.floor(sparsity * self._blocks(weight, r, c)))
        raise ValueError(f"not an element-wise pattern: {pattern}")
