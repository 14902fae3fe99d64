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

What a plan removes comes from the model's prunable groups (:mod:`costplan.trace.groups`), the
structure ``costplan analyze --plan`` counts: a removed unit is masked in every tensor that holds it (the
members' rows, the norms after them, the columns of the layers that read it), so the masked model
computes what the compacted one does. Masks are parametrizations (``module.parametrizations.weight``).
Under ``torch.distributed`` every decision is broadcast from rank 0, so all ranks prune the same units.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from costplan.spellings import as_shapes
from costplan.errors import CostplanError
from costplan.planfile import LayerPlan, Plan, load_plan
from costplan.models.saved import Provenance
from costplan.modules import out_in
from costplan.pruning.compact import shrink
from costplan.pruning.masks import (
    Mask,
    attach,
    best,
    detach_all,
    drop_lowest,
    elementwise_mask,
    folded_copy,
    original,
)
from costplan.pruning.schedule import Schedule
from costplan.scoring import Criterion, make_criterion
from costplan.sparsity import kept_count, resolve
from costplan.trace import LayerGraph, trace
from costplan.trace.groups import PrunableGroup, kept_positions, positions_mask, structure_of, unit_scores

SCOPES = ("local", "global")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def _split(param: str) -> tuple[str, str]:
    module, _, tensor = param.rpartition(".")
    return module, tensor


class Pruner:
    """Prune ``model`` (an ``nn.Module``) to ``plan`` in a training loop.

    ``criterion``: magnitude (= l2, w^2), l1, random, gradient, taylor, movement, snip_momentum, or a
    :class:`~costplan.scoring.Criterion`: the same definitions the planner's importance scores by.
    ``schedule``: when (default one shot at step 0).
    ``scope``: 'local' prunes each group and layer to its plan ratio; 'global' ranks unstructured
    weights (and units, by layer-normalised score) across layers, removing the same total.
    The model is traced once, with ``example_inputs`` (a tuple of tensors) or zeros of the shapes in
    ``input`` (``'1x3x224x224'`` or ``[(1, 3, 224, 224)]``), unless ``graph`` gives its trace. ``source`` is the spec
    (``resnet50``, ``hf:bert-base``, ``file.py:factory``) :func:`costplan.save` records to rebuild it.
    The plan is checked before any weight is touched.
    """

    def __init__(self, model: nn.Module, plan: Plan | str | os.PathLike[str], *,
                 criterion: str | Criterion = "magnitude", schedule: Schedule | None = None, scope: str = "local",
                 graph: LayerGraph | None = None, input: str | Sequence | None = None,
                 example_inputs: Sequence[object] | None = None, source: str | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise CostplanError("Pruner takes an nn.Module; build a named model with costplan.prune or the CLI")
        if scope not in SCOPES:
            raise CostplanError(f"unknown scope '{scope}': use local or global")
        self.model = model
        self.plan = load_plan(plan) if isinstance(plan, (str, os.PathLike)) else plan
        self.scope = scope
        self.criterion = make_criterion(criterion)
        self.schedule = schedule or Schedule.one_shot()
        self.source = source
        inner = _unwrap(model)
        self.graph = graph or _trace(inner, as_shapes(input), example_inputs, source)
        self.structure = structure_of(self.graph)
        self.resolved = resolve(self.graph, self.plan)
        self.groups: list[PrunableGroup] = [self.structure.groups[g] for g in self.resolved.keep]
        self.elements: dict[str, LayerPlan] = dict(self.resolved.elementwise)   # weight -> entry
        self._transposed = {l.weight_param: l.transposed_weight for l in self.graph.layers if l.weight_param}
        self._parameters = set(dict(inner.named_parameters()))   # names before masks rename them
        self.step = -1
        self.kept: dict[str, torch.Tensor] = {}          # group -> kept unit indices
        self._masks: dict[str, Mask] = {}                # parameter -> its mask
        self._begun = False

    # ---- the hooks ---------------------------------------------------------------------------

    def on_train_begin(self) -> None:
        """Attach masks (all ones) to every parameter the plan prunes."""
        inner = _unwrap(self.model)
        for param in self._tensors():
            if param in self._parameters:
                module, tensor = _split(param)
                self._masks[param] = attach(inner.get_submodule(module), tensor)
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
        for param in self._scored():
            weight = self._original(inner, param)
            if weight.grad is not None:
                self.criterion.accumulate(param, weight, weight.grad)

    def on_after_optimizer_step(self) -> None:
        """Zero the masked entries of the tensors themselves, so momentum or weight decay cannot
        bring them back when the masks are removed."""
        inner = _unwrap(self.model)
        with torch.no_grad():
            for param, mask in self._masks.items():
                self._original(inner, param).mul_(mask.mask)

    def on_train_end(self) -> None:
        """Nothing to do: masks stay until :meth:`remove` or :meth:`compact`."""

    # ---- masks -------------------------------------------------------------------------------

    @staticmethod
    def _original(inner: nn.Module, param: str) -> torch.Tensor:
        module, tensor = _split(param)
        return original(inner.get_submodule(module), tensor)

    def prune(self, progress: float = 1.0) -> None:
        """Recompute every mask for ``progress`` (0-1) of the plan's sparsity now."""
        if not self._begun:
            self.on_train_begin()
        inner = _unwrap(self.model)
        step = max(self.step, 0)
        scores = {p: self.criterion.scores(p, self._original(inner, p), step) for p in self._scored()}
        if any(v is None for v in scores.values()):
            if progress >= 1.0:
                raise CostplanError(f"criterion '{self.criterion.name}' needs gradients: call "
                                    "on_before_optimizer_step() after backward on at least one step "
                                    "before the schedule ends")
            return  # no gradients seen yet: prune at the next step of the schedule
        with torch.no_grad():
            self.kept = self._choose_units(scores, progress)
            positions = kept_positions(self.structure, self.kept)
            within = self._elementwise(positions, scores, progress)
            for param in self._masks:
                keep = self._structured(param, positions.get(param, {}))
                self._set(param, keep & within[param] if param in within else keep)
            self.on_after_optimizer_step()

    def _choose_units(self, scores: dict[str, torch.Tensor], progress: float) -> dict[str, torch.Tensor]:
        ranked = {g.name: unit_scores(g, scores) for g in self.groups}
        counts = {g.name: kept_count(g.width, self.resolved.ratios[g.name] * progress) for g in self.groups}
        if self.scope == "global" and self.groups:
            everything = torch.cat([ranked[g.name] for g in self.groups])
            removed = sum(g.width - counts[g.name] for g in self.groups)
            cut = torch.sort(everything).values[removed - 1] if removed > 0 else -float("inf")
            kept = {n: torch.nonzero(s > cut).flatten() for n, s in ranked.items()}
            kept = {n: k if len(k) else torch.argmax(ranked[n]).view(1) for n, k in kept.items()}
        else:
            kept = {n: best(s, counts[n]) for n, s in ranked.items()}
        if _distributed():       # every rank keeps rank 0's units
            for name, units in kept.items():
                flags = torch.zeros(self.structure.groups[name].width, dtype=torch.uint8)
                flags[units] = 1
                torch.distributed.broadcast(flags, src=0)
                kept[name] = torch.nonzero(flags).flatten()
        return kept

    def _structured(self, param: str, positions: dict[int, torch.Tensor]) -> torch.Tensor:
        """The positions of ``param`` its groups keep, as a mask of its shape."""
        return positions_mask(self._original(_unwrap(self.model), param).shape, positions)

    def _elementwise(self, positions: dict[str, dict[int, torch.Tensor]], scores: dict[str, torch.Tensor],
                     progress: float) -> dict[str, torch.Tensor]:
        """Element-wise masks, computed on the block of each weight its groups keep (the weight the
        compacted model holds) in (outputs, inputs, ...) layout, and put back in place."""
        blocks = {p: self._block(p, positions.get(p, {}), scores[p]) for p in self.elements}
        drops: dict[str, torch.Tensor] = {}
        shared = [p for p, e in self.elements.items() if e.pattern.kind == "unstructured"] if self.scope == "global" else []
        if shared:
            flat = torch.cat([blocks[p][0].flatten().float() for p in shared])
            total = sum(int(self.elements[p].sparsity * progress * blocks[p][0].numel()) for p in shared)
            keep_all = drop_lowest(flat, total)
            offset = 0
            for p in shared:
                n = blocks[p][0].numel()
                drops[p] = keep_all[offset:offset + n].view(blocks[p][0].shape)
                offset += n
        out = {}
        for p, entry in self.elements.items():
            block, index, flip = blocks[p]
            mask = drops.get(p)
            if mask is None:
                mask = elementwise_mask(block.float(), entry.pattern, entry.sparsity * progress)
            shape = self._original(_unwrap(self.model), p).shape
            full = torch.zeros(tuple(reversed(shape)) if flip else shape, dtype=torch.bool)
            full[torch.meshgrid(*index, indexing="ij")] = mask.cpu()
            out[p] = out_in(full, flip)
        return out

    def _block(self, param: str, positions: dict[int, torch.Tensor],
               scores: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], bool]:
        """(scores of the kept block as (outputs, inputs, ...), its index per dim, whether transposed)."""
        flip = self._transposed.get(param, False) and scores.dim() == 2
        s = out_in(scores, flip)
        dims = {(1 - d if flip else d): m for d, m in positions.items()}
        index = [torch.nonzero(dims[d]).flatten() if d in dims else torch.arange(s.shape[d]) for d in range(s.dim())]
        block = s
        for d, idx in enumerate(index):
            block = block.index_select(d, idx.to(block.device))
        return block, index, flip

    def _set(self, param: str, keep: torch.Tensor) -> None:
        mask = self._masks[param].mask
        value = keep.to(mask.dtype).to(mask.device)
        if _distributed():
            torch.distributed.broadcast(value, src=0)
        mask.copy_(value)

    def _scored(self) -> list[str]:
        """Parameters whose scores decide: element-wise weights and the rows the groups' members write."""
        names = list(self.elements) + [s.param for g in self.groups for s in g.slices if s.role == "out"]
        return [n for n in dict.fromkeys(names) if n in self._parameters]

    def _tensors(self) -> list[str]:
        return list(dict.fromkeys([*self.elements, *(s.param for g in self.groups for s in g.slices)]))

    # ---- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, object]:
        """What a training run must save to resume pruning where it stopped: the step, the kept units,
        every mask and the criterion's accumulated scores (tensors and plain values only, so
        ``torch.load(weights_only=True)`` reads it). The model's weights are the model's to save."""
        return {"format": "costplan-pruner/1", "step": self.step, "begun": self._begun,
                "kept": {g: k.clone() for g, k in self.kept.items()},
                "masks": {p: m.mask.detach().clone() for p, m in self._masks.items()},
                "criterion": {"name": self.criterion.name,
                              "state": {k: v.clone() for k, v in self.criterion.state.items()}}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Resume from :meth:`state_dict`: masks attached (if they are not yet) and set, the step,
        the kept units and the criterion's scores restored. The plan and criterion must be those the
        state was saved with."""
        if not isinstance(state, dict) or state.get("format") != "costplan-pruner/1":
            raise CostplanError("not a pruner state: give what Pruner.state_dict() returned")
        crit = state["criterion"]
        if crit["name"] != self.criterion.name:   # type: ignore[index]
            raise CostplanError(f"the state was saved with criterion '{crit['name']}', "   # type: ignore[index]
                                f"not '{self.criterion.name}'")
        masks: dict[str, torch.Tensor] = state["masks"]   # type: ignore[assignment]
        unknown = sorted(set(masks) - set(self._tensors()))
        if unknown:
            raise CostplanError(f"the state masks tensors this plan does not prune: {', '.join(unknown[:3])}")
        if state["begun"] and not self._begun:
            self.on_train_begin()
        for param, mask in masks.items():
            self._set(param, mask.bool())
        self.step = int(state["step"])   # type: ignore[arg-type]
        self.kept = {g: k.clone() for g, k in state["kept"].items()}   # type: ignore[union-attr]
        self.criterion.state = {k: v.clone() for k, v in crit["state"].items()}   # type: ignore[index]

    # ---- inspecting and finishing ------------------------------------------------------------

    def masks(self) -> dict[str, torch.Tensor]:
        """Every mask, keyed by parameter name (1 = kept)."""
        return {p: m.mask.detach().clone() for p, m in self._masks.items()}

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
        self._describe(inner, {}, compacted=False)
        return self.model

    def compact(self) -> nn.Module:
        """A new, physically smaller model: the kept units of every group, element-wise zeros left in
        place. The pruner's model is not changed."""
        if self.groups and not self.kept:
            raise CostplanError("nothing to compact yet: the schedule has not pruned (call prune() or step on)")
        small = folded_copy(_unwrap(self.model))
        self._describe(small, shrink(small, self.structure, self.kept), compacted=True)
        return small

    def _describe(self, model: nn.Module, edits: dict, compacted: bool) -> None:
        """What costplan.save records to rebuild ``model`` (the spec, the shape edits, the input) and
        what was done to it (the plan, and whether its units were cut out)."""
        Provenance(self.source, edits, tuple(tuple(s) for s in self.graph.inputs.shapes), self.plan.to_dict(),
                   compacted).attach(model)


def _trace(model: nn.Module, input: Sequence[Sequence[int]] | None, example_inputs: Sequence[object] | None,
           name: str | None) -> LayerGraph:
    if example_inputs is None:
        if input is None:
            raise CostplanError("give example_inputs= (a tuple of tensors) or input= (shapes) to trace the model")
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        example_inputs = tuple(torch.zeros(tuple(s), device=device) for s in input)
    return trace(model, tuple(example_inputs), name=name or type(model).__name__)


__all__ = ["Pruner", "Schedule"]
