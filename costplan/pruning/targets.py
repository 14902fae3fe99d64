"""What a plan asks of a model's tensors: element-wise masks per layer, and coupled channel or head
groups with every tensor that holds their channels. All checks happen here, before any weight is
touched."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from costplan.errors import CostplanError
from costplan.planfile import Pattern, Plan
from costplan.planning.coupling import Coupling, Group, find_groups, is_producer
from costplan.pruning.masks import fits
from costplan.sparsity import check_plan
from costplan.trace.graph import LayerGraph


@dataclass(frozen=True)
class ElementTarget:
    """One layer's weight under an element-wise pattern."""

    module: str
    pattern: Pattern
    sparsity: float


@dataclass(frozen=True)
class GroupTarget:
    """Coupled channels (or heads): the producers whose output rows they are, the per-channel
    tensors after them (norms, depthwise convs) and the layers that read them."""

    name: str
    kind: str                      # channel | head
    sparsity: float
    width: int                     # channels or heads
    members: tuple[str, ...]       # modules whose output rows are the channels
    followers: tuple[str, ...]     # modules with one parameter entry per channel
    consumers: tuple[str, ...]     # modules whose input columns are the channels
    attention: str | None = None   # the attention module, for head groups


def _modules(graph: LayerGraph, names) -> tuple[str, ...]:
    out: list[str] = []
    for name in names:
        module = graph.layer(name).module
        if module is not None and module not in out:
            out.append(module)
    return tuple(out)


def group_target(graph: LayerGraph, coupling: Coupling, group: Group, sparsity: float) -> GroupTarget:
    members = set(group.members)
    followers = [l.name for l in graph.layers if coupling.output_group.get(l.name) == group.name
                 and l.name not in members and l.weights_read and l.kind == "module" and not is_producer(l)]
    # a member can read the group's channels too (a residual branch's last conv: x + conv(dw(x)))
    consumers = [l.name for l in graph.layers if coupling.input_group.get(l.name) == group.name and is_producer(l)]
    for name in [*group.members, *followers, *consumers]:
        layer = graph.layer(name)
        if layer.kind != "module":
            raise CostplanError(f"'{group.name}': channels pass through '{layer.name}' ({layer.op}), a functional op "
                                "with its own parameters; costplan can only prune channels held by modules")
    return GroupTarget(group.name, group.kind, sparsity, group.width, _modules(graph, group.members),
                       _modules(graph, followers), _modules(graph, consumers),
                       group.name if group.kind == "head" else None)


def targets_of(graph: LayerGraph, model: torch.nn.Module, plan: Plan) -> tuple[list[ElementTarget], list[GroupTarget]]:
    """The targets of ``plan`` on ``model`` (traced as ``graph``). Raises CostplanError, naming
    layers and reasons, on anything the model cannot take."""
    for name, lp in plan.layers.items():
        if not 0.0 <= lp.sparsity < 1.0:
            raise CostplanError(f"layer '{name}' has sparsity {lp.sparsity}; it must be in [0, 1)")
    check_plan(graph, plan)
    coupling = find_groups(graph)
    member_of = {m: g for g in coupling.groups.values() for m in g.members}
    elements: list[ElementTarget] = []
    ratios: dict[str, tuple[float, str]] = {}
    problems: list[str] = []
    for key, lp in plan.layers.items():
        if lp.sparsity == 0:
            continue
        if lp.pattern.elementwise:
            for layer in graph.layers_of_module(key):
                if layer.kind != "module" or not layer.has_weights or layer.module is None:
                    continue
                weight = model.get_submodule(layer.module).weight
                why = fits(lp.pattern, weight.shape)
                if why:
                    problems.append(f"'{layer.module}' cannot take {lp.pattern}: {why}")
                elif all(e.module != layer.module for e in elements):
                    elements.append(ElementTarget(layer.module, lp.pattern, lp.sparsity))
            continue
        if lp.pattern.kind == "head":
            groups = [g for g in coupling.groups.values() if g.kind == "head" and (g.name == key or
                      g.name.startswith(key + "."))]
            if not groups:
                problems.append(f"'{key}' has no prunable attention heads")
        else:
            groups = [member_of[l.name] for l in graph.layers_of_module(key) if l.name in member_of]
            if not groups:
                problems.append(f"'{key}' has no output channels to prune (not a conv or linear layer)")
        for group in groups:
            if group.fixed:
                problems.append(f"channels of '{key}' cannot be removed: {group.reason}")
                continue
            if group.kind == "head" and lp.pattern.kind != "head":
                problems.append(f"'{key}' projects attention heads: prune it with the 'head' pattern")
                continue
            old = ratios.get(group.name)
            if old is not None and abs(old[0] - lp.sparsity) > 1e-9:
                problems.append(f"'{key}' ({lp.sparsity:g}) and '{old[1]}' ({old[0]:g}) share channels "
                                f"(group {group.name}: {', '.join(group.members[:4])}) and need one ratio")
            ratios[group.name] = (lp.sparsity, key)
    if problems:
        raise CostplanError("the plan does not fit the model:\n  " + "\n  ".join(problems))
    groups = [group_target(graph, coupling, coupling.groups[name], s) for name, (s, _) in ratios.items()]
    return elements, groups
