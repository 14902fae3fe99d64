"""Sensitivity importance: the loss increase measured when one group (or one layer) alone is pruned.

The scan of NetAdapt (Yang et al., ECCV 2018), AMC (He et al., ECCV 2018) and Distiller: for every
choice the planner can make for a unit (a ratio level of a prunable group, or an element-wise pattern at
a sparsity), prune that unit alone, as the pruner would, re-estimate the BatchNorm statistics on a few
calibration batches (EagleEye, Li et al., ECCV 2020: fine-tuning restores them, and a cut scored on the
dense statistics is scored for a shift fine-tuning undoes) and measure the loss on those batches. The
planner then minimises the sum of these increases under the latency budget: the additive
approximation every sensitivity method makes.

It is made cheap where it can be: the batches are capped and stacked into one forward pass per choice
(two where the model has BatchNorm: the statistics, then the loss); a choice is a mask
multiplied into the weights in place and undone, never a copy of the model. Which units and which
weights a choice removes comes from the same functions the pruner calls (:func:`best` over
:func:`unit_scores`; :func:`elementwise_mask`), so the scan measures what pruning will remove.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from costplan.errors import CostplanError
from costplan.modules import out_in
from costplan.patterns import best, elementwise_mask
from costplan.planning.importance import Importance
from costplan.progress import progress
from costplan.trace.graph import LayerGraph
from costplan.trace.groups import kept_positions, positions_mask, structure_of, unit_scores

LossFn = Callable[[torch.nn.Module, object], torch.Tensor]


class Sensitivity(Importance):
    """Removed importance = measured loss increase (nats per sample for cross entropy).

    ``module`` is the model the graph was traced from (real weights); ``batches`` calibration batches,
    at most ``max_batches`` of them used; ``loss_fn(module, batch)`` a scalar mean loss; ``scores``
    rank units and weights within a choice (magnitude w^2 when not given)."""

    def __init__(self, graph: LayerGraph, module: torch.nn.Module, batches: Iterable[object], loss_fn: LossFn,
                 scores: Mapping[str, torch.Tensor], *, max_batches: int = 4, origin: str | None = None,
                 progress: bool = True) -> None:
        super().__init__(graph, scores, origin=origin)
        self.kind = "sensitivity"
        self.module = module
        self.batches = list(itertools.islice(iter(batches), max_batches))
        if not self.batches:
            raise CostplanError("sensitivity importance needs at least one calibration batch")
        self._stacked = _stack(self.batches)
        self.loss_fn = loss_fn
        self.progress = progress
        self.structure = structure_of(graph)
        self.params = dict(module.named_parameters())
        self.norms = [m for m in module.modules()
                      if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        self.evaluations = 0
        self._curves: dict[str, np.ndarray] = {}
        self._index: dict[str, dict[object, int]] = {}
        self.base = self._loss({})
        samples = sum(_batch_size(b) for b in self.batches)
        self.origin = (f"sensitivity: loss increase on {len(self.batches)} calibration batch(es)"
                       f"{f' ({samples} samples)' if samples else ''}; {origin or 'units ranked by the scores given'}")

    # ---- measuring -----------------------------------------------------------------------------

    def _loss(self, keeps: Mapping[str, torch.Tensor]) -> float:
        """Mean loss over the calibration batches with ``keeps`` (parameter -> keep-mask) applied, its
        BatchNorm statistics first re-estimated on those batches (:meth:`_adapt_norms`); the module's
        weights and buffers are as they were afterwards."""
        saved = {p: self.params[p].detach().clone() for p in keeps}
        norms = {m: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
                 for m in self.norms}
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                for p, keep in keeps.items():
                    self.params[p].mul_(keep.to(self.params[p].dtype))
                self._adapt_norms()
                if self._stacked is not None:   # one pass: a mean loss over the stack is the batches' mean
                    total = float(self.loss_fn(self.module, self._stacked)) * len(self.batches)
                else:
                    total = sum(float(self.loss_fn(self.module, b)) for b in self.batches)
        finally:
            with torch.no_grad():
                for p, value in saved.items():
                    self.params[p].copy_(value)
                for m, (mean, var, count, momentum) in norms.items():
                    m.running_mean.copy_(mean)
                    m.running_var.copy_(var)
                    m.num_batches_tracked.copy_(count)
                    m.momentum = momentum
            self.module.train(was_training)
        self.evaluations += 1
        return total / len(self.batches)

    def _adapt_norms(self) -> None:
        """Re-estimate every BatchNorm's running statistics on the calibration batches (a cumulative
        mean over them, the rest of the model in eval mode), as EagleEye (Li et al., ECCV 2020) does
        before it scores a pruned candidate: pruning shifts what each BatchNorm sees, and scored on the
        dense statistics every deep cut looked alike (near chance), so the planner cut a 1-D ResNet's
        last stage to 16 of 128 channels at 2.1x and lost 11-13 points after fine-tuning where magnitude
        importance lost none."""
        if not self.norms:
            return
        for m in self.norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        try:
            for batch in [self._stacked] if self._stacked is not None else self.batches:
                self.loss_fn(self.module, batch)
        finally:
            for m in self.norms:
                m.eval()

    def _structured_keeps(self, group_name: str, kept: int) -> dict[str, torch.Tensor]:
        group = self.structure.groups[group_name]
        ranked = unit_scores(group, self.raw)
        if ranked is None:
            raise CostplanError(f"sensitivity: no scores for the members of {group_name}")
        positions = kept_positions(self.structure, {group_name: best(ranked, kept)})
        return {p: positions_mask(self.params[p].shape, dims) for p, dims in positions.items() if p in self.params}

    def _elementwise_keeps(self, weights: Sequence[str], pattern, sparsity: float) -> dict[str, torch.Tensor]:
        out = {}
        for w in weights:
            if w not in self.params or w not in self.scores:
                continue
            keep = elementwise_mask(self.scores[w].float(), pattern, sparsity)
            out[w] = out_in(keep, w in self.transposed)   # back to the weight's stored layout
        return out

    def _measure(self, unit, option) -> float:   # Unit, Option (planning.units)
        if option.pattern is None:
            return 0.0
        if option.structured:
            keeps = self._structured_keeps(unit.group.name, option.kept)
        else:
            weights = [self.graph.layer(n).weight_param for n in unit.layers]
            keeps = self._elementwise_keeps([w for w in weights if w], option.pattern, option.sparsity)
        return max(0.0, self._loss(keeps) - self.base)

    def prepare(self, units: Sequence) -> None:
        """Measure every option of every unit not measured yet (one forward pass each), with a progress
        bar; each pattern's curve is then made convex in the share removed (see :func:`_convex`)."""
        todo = [u for u in units if u.name not in self._curves]
        with progress("sensitivity scan (forward passes)", sum(len(u.options) for u in todo), self.progress) as advance:
            for unit in todo:
                values = np.zeros(len(unit.options))
                for i, option in enumerate(unit.options):
                    values[i] = self._measure(unit, option)
                    advance()
                by_pattern: dict[str, list[int]] = {}
                for i, option in enumerate(unit.options):
                    if option.pattern is not None:
                        by_pattern.setdefault(str(option.pattern), []).append(i)
                for idx in by_pattern.values():
                    order = sorted(idx, key=lambda i: unit.options[i].sparsity)
                    values[order] = _convex([unit.options[i].sparsity for i in order], values[order])
                self._curves[unit.name] = values
                self._index[unit.name] = {o: i for i, o in enumerate(unit.options)}

    def removed(self, unit, option) -> float:
        if unit.name not in self._curves:
            self.prepare([unit])
        return float(self._curves[unit.name][self._index[unit.name][option]])


def _convex(sparsity: Sequence[float], loss: np.ndarray) -> np.ndarray:
    """The loss increases at rising ``sparsity`` with every step's slope raised to the steepest slope
    before it: convex, non-decreasing and never below the measurement. A loss measured on one group
    alone saturates once the group is broken (near chance, pruning more changes little), and summed
    over groups that would make a broken group free to prune further; nor can the scan's noise make
    a larger cut look cheaper than a smaller one."""
    dx = np.diff(np.concatenate([[0.0], np.asarray(sparsity, dtype=float)]))
    dy = np.diff(np.concatenate([[0.0], np.maximum(loss, 0.0)]))
    slopes = np.divide(dy, dx, out=np.zeros_like(dy), where=dx > 0)
    return np.cumsum(np.maximum.accumulate(np.maximum(slopes, 0.0)) * dx)


def _batch_size(batch: object) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 0


def _stack(batches: Sequence[object]) -> object | None:
    """The batches as one (tuples of tensors concatenated along dim 0), when they are alike in
    structure and size; None otherwise (then they are run one by one)."""
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    if not isinstance(first, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in first):
        return None
    if any(not isinstance(b, type(first)) or len(b) != len(first) or
           any(not isinstance(t, torch.Tensor) or t.shape != f.shape for t, f in zip(b, first)) for b in batches):
        return None
    return type(first)(torch.cat(parts) for parts in zip(*batches))
