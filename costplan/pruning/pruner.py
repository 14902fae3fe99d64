"""The embedded pruner: a plan's ratios taken into a training loop, gradually, then compacted.

Hooks follow a training step (the names Hugging Face's ``TrainerCallback`` and Intel Neural
Compressor use)::

    pruner.on_train_begin()
    for step, batch in enumerate(loader):
        pruner.on_step_begin(step)          # recompute masks at the schedule's steps
        loss(model, batch).backward()
        pruner.on_before_optimizer_step()   # gradient criteria take this step's gradients
        optimizer.step(); optimizer.zero_grad()
        pruner.on_after_optimizer_step()    # masked weights back to exactly zero
    small = pruner.compact()

Masks are parametrizations (``module.parametrizations.weight``), so the masked weight is what the
forward pass and the gradients see. Under ``torch.distributed`` every mask is broadcast from rank 0
after it is computed, so all ranks prune the same weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from costplan.errors import CostplanError
from costplan.planfile import Plan, load_plan
from costplan.pruning.compact import rows_of, shrink
from costplan.pruning.criteria import Criterion, make_criterion
from costplan.pruning.masks import (
    Mask,
    attach,
    channel_keep,
    detach_all,
    drop_lowest,
    elementwise_mask,
    folded_copy,
    original,
)
from costplan.pruning.schedule import Schedule
from costplan.pruning.targets import ElementTarget, GroupTarget, targets_of
from costplan.sparsity import kept_count
from costplan.trace.graph import LayerGraph

SCOPES = ("local", "global")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


class Pruner:
    """Prune ``model`` to ``plan`` in a training loop.

    ``criterion``: magnitude (L1), l2, random, gradient, taylor, movement, snip_momentum, or a
    :class:`~costplan.pruning.criteria.Criterion`. ``schedule``: when (default one shot at step 0).
    ``scope``: 'local' prunes each layer to its plan ratio; 'global' ranks unstructured weights (and
    channels, by layer-normalised score) across layers, removing the same total.
    ``graph`` or ``input``/``example_inputs`` say how to trace the model; ``source`` is the spec
    (``resnet50``, ``hf:bert-base``, ``file.py:factory``) that :func:`costplan.save` records to
    rebuild the architecture.
    """

    def __init__(self, model: nn.Module | str, plan: Plan | str | os.PathLike[str], *,
                 criterion: str | Criterion = "magnitude", schedule: Schedule | None = None, scope: str = "local",
                 graph: LayerGraph | None = None, input: str | Sequence | None = None,
                 example_inputs: Sequence[object] | None = None, source: str | None = None) -> None:
        from costplan.api import load_graph
        from costplan.models import instantiate, resolve

        if isinstance(model, str):   # a spec: built with its initial weights on the CPU
            source = source or model
            graph = graph or load_graph(model)
            model = instantiate(resolve(model), "cpu").module
        self.model = model
        self.plan = load_plan(plan) if isinstance(plan, (str, os.PathLike)) else plan
        if scope not in SCOPES:
            raise CostplanError(f"unknown scope '{scope}': use local or global")
        self.scope = scope
        self.criterion = make_criterion(criterion)
        self.schedule = schedule or Schedule.one_shot()
        self.source = source
        inner = _unwrap(model)
        self.graph = graph or load_graph(inner, input=input, example_inputs=example_inputs)
        self.elements, self.groups = targets_of(self.graph, inner, self.plan)
        self.step = -1
        self.kept: dict[GroupTarget, torch.Tensor] = {}
        self._masks: dict[tuple[str, str], Mask] = {}
        self._begun = False

    # ---- the hooks ---------------------------------------------------------------------------

    def on_train_begin(self) -> None:
        """Attach masks (all ones) to every tensor the plan prunes."""
        inner = _unwrap(self.model)
        for module, tensor in self._tensors():
            self._masks[(module, tensor)] = attach(inner.get_submodule(module), tensor)
        self._begun = True

    def on_step_begin(self, step: int) -> None:
        """At the schedule's steps, recompute the masks for the sparsity in force at ``step``."""
        self.step = step
        if self.schedule.is_pruning_step(step):
            self.prune(self.schedule.progress(step))

    def on_before_optimizer_step(self) -> None:
        """Let gradient criteria take this step's gradients (after backward, before the step)."""
        if not self.criterion.needs_grad:
            return
        inner = _unwrap(self.model)
        for key in self._scored():
            weight = original(inner.get_submodule(key), "weight")
            if weight.grad is not None:
                self.criterion.accumulate(key, weight, weight.grad)

    def on_after_optimizer_step(self) -> None:
        """Zero the masked entries of the tensors themselves, so momentum or weight decay cannot
        bring them back when the masks are removed."""
        inner = _unwrap(self.model)
        with torch.no_grad():
            for (module, tensor), mask in self._masks.items():
                original(inner.get_submodule(module), tensor).mul_(mask.mask)

    def on_train_end(self) -> None:
        """Nothing to do: masks stay until :meth:`remove` or :meth:`compact`."""

    # ---- masks -------------------------------------------------------------------------------

    def prune(self, progress: float = 1.0) -> None:
        """Recompute every mask for ``progress`` (0-1) of the plan's sparsity now."""
        if not self._begun:
            self.on_train_begin()
        inner = _unwrap(self.model)
        step = max(self.step, 0)
        scores = {key: self.criterion.scores(key, original(inner.get_submodule(key), "weight"), step)
                  for key in self._scored()}
        missing = [k for k, v in scores.items() if v is None]
        if missing:
            if progress >= 1.0:
                raise CostplanError(f"criterion '{self.criterion.name}' needs gradients: call "
                                    "on_before_optimizer_step() after backward on at least one step "
                                    "before the schedule ends")
            return  # no gradients seen yet: prune at the next step of the schedule
        with torch.no_grad():
            self._prune_elements(scores, progress)
            self._prune_groups(inner, scores, progress)
            self.on_after_optimizer_step()

    def _prune_elements(self, scores: dict[str, torch.Tensor], progress: float) -> None:
        shared = [e for e in self.elements if e.pattern.kind == "unstructured"] if self.scope == "global" else []
        if shared:
            flat = torch.cat([scores[e.module].flatten().float() for e in shared])
            total = sum(int(e.sparsity * progress * scores[e.module].numel()) for e in shared)
            threshold_mask = drop_lowest(flat, total)
            offset = 0
            for e in shared:
                n = scores[e.module].numel()
                self._set((e.module, "weight"), threshold_mask[offset:offset + n].view(scores[e.module].shape))
                offset += n
        for e in self.elements:
            if e not in shared:
                self._set((e.module, "weight"), elementwise_mask(scores[e.module], e.pattern, e.sparsity * progress))

    def _group_scores(self, target: GroupTarget, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per channel (or head): each member's row sums, normalised by the member's total, summed."""
        total = torch.zeros(target.width, dtype=torch.float64)
        for name in target.members:
            rows = scores[name].flatten(1).sum(1).double().cpu()
            rows = rows.view(target.width, -1).sum(1) if target.kind == "head" else rows
            norm = rows.abs().sum()
            total += rows / norm if norm > 0 else rows
        return total

    def _prune_groups(self, inner: nn.Module, scores: dict[str, torch.Tensor], progress: float) -> None:
        per_group = {t: self._group_scores(t, scores) for t in self.groups}
        if self.scope == "global" and self.groups:
            ranked = torch.cat(list(per_group.values()))
            removed = sum(t.width - kept_count(t.width, t.sparsity * progress) for t in self.groups)
            cut = torch.sort(ranked).values[removed - 1] if removed > 0 else -float("inf")
            keep = {t: torch.nonzero(s > cut).flatten() for t, s in per_group.items()}
            keep = {t: k if len(k) else torch.argmax(per_group[t]).view(1) for t, k in keep.items()}
        else:
            keep = {t: channel_keep(s, t.sparsity * progress) for t, s in per_group.items()}
        for target, kept in keep.items():
            self.kept[target] = kept
            for name in (*target.members, *target.followers):
                module = inner.get_submodule(name)
                rows = rows_of(target, kept, module) if name in target.members else kept
                for tensor in ("weight", "bias"):
                    if (name, tensor) in self._masks:
                        mask = torch.zeros_like(self._masks[(name, tensor)].mask)
                        mask[rows.to(mask.device)] = 1
                        self._set((name, tensor), mask)

    def _set(self, key: tuple[str, str], keep: torch.Tensor) -> None:
        mask = self._masks[key].mask
        value = keep.to(mask.dtype).to(mask.device)
        if _distributed():
            torch.distributed.broadcast(value, src=0)
        mask.copy_(value)

    def _scored(self) -> list[str]:
        """Modules whose weights are scored: element targets and group members."""
        names = [e.module for e in self.elements] + [m for t in self.groups for m in t.members]
        return list(dict.fromkeys(names))

    def _tensors(self) -> list[tuple[str, str]]:
        inner = _unwrap(self.model)
        out = [(e.module, "weight") for e in self.elements]
        for t in self.groups:
            for name in (*t.members, *t.followers):
                module = inner.get_submodule(name)
                out += [(name, p) for p in ("weight", "bias") if getattr(module, p, None) is not None]
        return list(dict.fromkeys(out))

    # ---- inspecting and finishing ------------------------------------------------------------

    def masks(self) -> dict[str, torch.Tensor]:
        """Every mask, keyed 'module.tensor' (1 = kept)."""
        return {f"{m}.{t}": mask.mask.detach().clone() for (m, t), mask in self._masks.items()}

    def sparsity(self) -> dict[str, float]:
        """Share of zeros in each masked tensor."""
        return {k: 1.0 - float(v.float().mean()) for k, v in self.masks().items()}

    def remove(self) -> nn.Module:
        """Fold the masks into the weights (zeros stay) and drop the parametrizations; the model,
        described for :func:`costplan.save` (its shapes unchanged)."""
        inner = _unwrap(self.model)
        detach_all(inner)
        self._masks.clear()
        self._begun = False
        self._describe(inner, {})
        return self.model

    def compact(self) -> nn.Module:
        """A new, physically smaller model: the kept channels and heads of every group, element-wise
        zeros left in place. The pruner's model is not changed."""
        if self.groups and not self.kept:
            raise CostplanError("nothing to compact yet: the schedule has not pruned (call prune() or step on)")
        small = folded_copy(_unwrap(self.model))
        self._describe(small, shrink(small, self.kept))
        return small

    def _describe(self, model: nn.Module, edits: dict) -> None:
        """What costplan.save records to rebuild ``model``: the spec, the shape edits, the input."""
        model._costplan = {"source": self.source, "edits": edits,
                           "input": [list(shape) for shape in self.graph.inputs.shapes]}


__all__ = ["ElementTarget", "GroupTarget", "Pruner", "Schedule"]
