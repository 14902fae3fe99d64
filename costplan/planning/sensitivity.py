"""Sensitivity importance: the loss increase measured when one group (or one layer) alone is pruned.

The scan of NetAdapt (Yang et al., ECCV 2018), AMC (He et al., ECCV 2018) and Distiller: for every
choice the planner can make for a unit (a ratio level of a prunable group, or an element-wise pattern at
a sparsity), prune that unit alone, as the pruner would, re-estimate the BatchNorm statistics on a few
calibration batches (EagleEye, Li et al., ECCV 2020: fine-tuning restores them, and a cut scored on the
dense statistics is scored for a shift fine-tuning undoes) and measure the loss on those batches. The
planner then minimises the sum of these increases under the latency budget: the additive
approximation every sensitivity method makes.

It is made cheap where it can be: the batches are capped (:func:`enough`: 1,024 samples or 16 batches)
and stacked into passes of at most 256 samples, one round of them per choice (two where the model has
BatchNorm: the statistics, then the loss); a choice is a mask
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

# A loss increase measured on 256 samples chose the plan by which 256: on a 1-D ResNet for MNIST-1D at
# 1.67x, two sets of 4 batches of 64 gave two plans, 94.45% and 94.58% after fine-tuning (3 seeds, 48,000
# test signals; uniform 94.47%), where 16 and 48 batches gave one plan, the better (at 1.45x two sets of
# 16 still gave two, 94.59% and 94.64%, both above uniform's 94.54%). Each choice costs a forward pass
# over every sample taken, so the count is capped in batches as well.
SAMPLES, MAX_BATCHES = 1024, 16
STACK = 256    # samples per forward pass


class Sensitivity(Importance):
    """Removed importance = measured loss increase (nats per sample for cross entropy).

    ``module`` is the model the graph was traced from (real weights); ``batches`` calibration batches,
    taken in order until they hold ``samples`` samples or number ``max_batches`` (:func:`enough`);
    ``loss_fn(module, batch)`` a scalar mean loss; ``scores`` rank units and weights within a choice
    (magnitude w^2 when not given)."""

    def __init__(self, graph: LayerGraph, module: torch.nn.Module, batches: Iterable[object], loss_fn: LossFn,
                 scores: Mapping[str, torch.Tensor], *, samples: int = SAMPLES, max_batches: int = MAX_BATCHES,
                 origin: str | None = None, progress: bool = True) -> None:
        super().__init__(graph, scores, origin=origin)
        self.kind = "sensitivity"
        self.module = module
        self.batches = enough(batches, samples, max_batches)
        if not self.batches:
            raise CostplanError("sensitivity importance needs at least one calibration batch")
        self._stacks = _stacks(self.batches)
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
        seen = sum(_batch_size(b) for b in self.batches)
        self.origin = (f"sensitivity: loss increase on {len(self.batches)} calibration batch(es)"
                       f"{f' ({seen} samples)' if seen else ''}; {origin or 'units ranked by the scores given'}")

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
                # a mean loss over a stack of n alike batches is their mean: n times it is their sum
                total = sum(float(self.loss_fn(self.module, stack)) * n for stack, n in self._stacks)
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
        # each pass's statistics weighted by its samples (momentum = its share of those seen so far): the
        # overall mean, and the variance less the spread between passes' means (small for batches drawn alike)
        for m in self.norms:
            m.reset_running_stats()
            m.train()
        seen = 0
        try:
            for stack, n in self._stacks:
                size = _batch_size(stack) or n
                seen += size
                for m in self.norms:
                    m.momentum = size / seen
                self.loss_fn(self.module, stack)
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


def enough(batches: Iterable[object], samples: int = SAMPLES, max_batches: int = MAX_BATCHES) -> list[object]:
    """The first of ``batches`` up to the one that brings the count to ``samples`` samples, and at most
    ``max_batches`` of them (batches whose size cannot be read count as one sample each)."""
    taken, count = [], 0
    for batch in itertools.islice(iter(batches), max_batches):
        taken.append(batch)
        count += _batch_size(batch) or 1
        if count >= samples:
            break
    return taken


def _batch_size(batch: object) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 0


def _stacks(batches: Sequence[object], most: int = STACK) -> list[tuple[object, int]]:
    """The batches as (input, how many batches it holds): where all are alike (tuples of tensors of one
    structure and size), runs of them concatenated along dim 0 into passes of at most ``most`` samples,
    so that a scan of 1,024 images never holds their activations at once; otherwise one pass each."""
    first = batches[0]
    alike = isinstance(first, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in first) and all(
        isinstance(b, type(first)) and len(b) == len(first) and
        all(isinstance(t, torch.Tensor) and t.shape == f.shape for t, f in zip(b, first)) for b in batches)
    if not alike or len(batches) == 1:
        return [(b, 1) for b in batches]
    per = max(1, most // max(1, _batch_size(first)))
    runs = [batches[i:i + per] for i in range(0, len(batches), per)]
    return [(type(first)(torch.cat(parts) for parts in zip(*run)), len(run)) for run in runs]
