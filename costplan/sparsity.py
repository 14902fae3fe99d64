"""What a plan leaves of each layer: effective MACs and non-zero parameters.

Element-wise patterns (unstructured, N:M, blocks) keep a layer's shape and scale its MACs and
weights by the density. Channel and head patterns shrink shapes: a layer's kept outputs shrink its
own work, and the width flows along the graph to its consumers, whose inputs shrink too. Width passes
through layers without weights (norms, activations, pooling, attention matmuls); where branches meet
(a residual add) the wider branch sets the width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from costplan.errors import CostplanError, close_names
from costplan.planfile import LayerPlan, Plan
from costplan.trace.graph import Layer, LayerGraph


@dataclass(frozen=True)
class Effective:
    """One layer under a plan. ``in_keep``/``out_keep`` are the kept fractions of its channels."""

    macs: float
    params: float
    in_keep: float = 1.0
    out_keep: float = 1.0
    density: float = 1.0           # kept fraction of weights inside the (possibly smaller) shape
    plan: LayerPlan | None = None
    shape_scale: float = 1.0       # kept fraction of the dense shape's MACs and weights


def kept_count(total: int, sparsity: float) -> int:
    """Units kept of ``total`` after removing ``sparsity`` of them (at least one stays)."""
    return max(1, round(total * (1.0 - sparsity)))


def kept_fraction(total: int | None, sparsity: float) -> float:
    """Kept share of ``total`` units after removing ``sparsity`` of them (at least one stays)."""
    if not total:
        return 1.0 - sparsity
    return kept_count(total, sparsity) / total


def _weight_numel(layer: Layer) -> int:
    a = layer.attrs
    if "out_channels" in a:
        return int(a["out_channels"]) * int(a["in_channels"]) // int(a.get("groups", 1)) * \
            math.prod(a.get("kernel_size", (1,)))
    if "out_features" in a:
        return int(a["out_features"]) * int(a["in_features"])
    return layer.params


def check_plan(graph: LayerGraph, plan: Plan) -> None:
    """Fail, naming them, on plan layers the model lacks or patterns a layer cannot take."""
    missing = sorted(name for name in plan.layers if name not in graph.module_names)
    if missing:
        hint = close_names(missing[0], graph.module_names)
        raise CostplanError(f"the plan names {len(missing)} layer(s) that {graph.model} lacks: "
                            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}.{hint}")
    for name, lp in plan.layers.items():
        if lp.pattern.kind == "head" and heads_of(graph, name) is None:
            raise CostplanError(f"the plan prunes heads of '{name}', which is not an attention module "
                                f"with a known head count; attention modules: "
                                f"{', '.join(list(graph.heads)[:5]) or 'none'}")
        if lp.pattern.kind != "head" and not any(l.weights_read for l in graph.layers_of_module(name)):
            raise CostplanError(f"the plan prunes '{name}', which has no weights to prune")


def heads_of(graph: LayerGraph, module: str) -> int | None:
    if module in graph.heads:
        return graph.heads[module]
    return next((h for m, h in graph.heads.items() if m.startswith(module + ".")), None)


def _entries(graph: LayerGraph, plan: Plan) -> dict[str, tuple[str, LayerPlan]]:
    """Layer name -> (plan key, entry) for each layer a plan entry covers (innermost key wins)."""
    covered: dict[str, tuple[str, LayerPlan]] = {}
    for key in sorted(plan.layers, key=len):
        for layer in graph.layers_of_module(key):
            covered[layer.name] = (key, plan.layers[key])
    return covered


def layer_effective(layer: Layer, in_keep: float, lp: LayerPlan | None, heads: int | None = None) -> Effective:
    """One layer under its plan entry ``lp``, given the kept fraction of its input channels.

    ``heads`` is the head count of the attention module a 'head' entry names.
    """
    if not layer.has_weights:
        return Effective(layer.macs * in_keep, layer.params * in_keep, in_keep, in_keep, shape_scale=in_keep)
    own, density = 1.0, 1.0
    if lp is not None and lp.pattern.elementwise:
        density = 1.0 - lp.sparsity
    elif lp is not None and lp.pattern.kind == "channel":
        own = kept_fraction(layer.width, lp.sparsity)
    elif lp is not None and lp.pattern.kind == "head" and in_keep == 1.0:
        # q/k/v projections lose whole heads; the output projection (its input already
        # narrowed) keeps its outputs and only reads fewer
        own = kept_fraction(heads, lp.sparsity)
    scale, out_keep = (in_keep, in_keep) if layer.depthwise else (in_keep * own, own)
    weight = min(_weight_numel(layer), layer.params)
    bias = layer.params - weight
    params = weight * scale * density + bias * out_keep
    return Effective(layer.macs * scale * density, params, in_keep, out_keep, density, lp, scale)


def apply_plan(graph: LayerGraph, plan: Plan | None) -> dict[str, Effective]:
    """Effective MACs and parameters of every layer under ``plan`` (dense when None)."""
    if plan is None:
        return {l.name: Effective(l.macs, l.params) for l in graph.layers}
    check_plan(graph, plan)
    entries = _entries(graph, plan)
    out: dict[str, Effective] = {}
    for layer in graph.layers:
        in_keep = max((out[p].out_keep for p in graph.predecessors(layer.name)), default=1.0)
        key, lp = entries.get(layer.name, (None, None))
        heads = heads_of(graph, key) if lp is not None and lp.pattern.kind == "head" else None
        out[layer.name] = layer_effective(layer, in_keep, lp, heads)
    return out


def effective_totals(graph: LayerGraph, effective: Mapping[str, Effective]) -> tuple[int, int]:
    """(effective MACs, non-zero parameters) of the whole model."""
    macs = sum(e.macs for e in effective.values())
    attributed = sum(l.params for l in graph.layers)
    params = graph.total_params - attributed + sum(e.params for e in effective.values())
    return round(macs), round(params)
