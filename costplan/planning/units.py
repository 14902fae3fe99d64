"""What the planner can choose: units (prunable groups and single layers) and their options.

A prunable group (:mod:`costplan.trace.groups`) takes a structured ratio (channels kept in whole
multiples of the device's channel multiple, or whole heads) or one element-wise option for all its
members; any other conv or linear layer takes element-wise options alone. Only patterns the device
turns into time are offered under ``--pattern auto``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from costplan.errors import CostplanError
from costplan.modules import out_in_shape
from costplan.hardware import HardwareProfile
from costplan.patterns import Pattern, parse_pattern
from costplan.planfile import LayerPlan, Plan
from costplan.sparsity import kept_count
from costplan.trace.graph import Layer, LayerGraph
from costplan.trace.groups import PrunableGroup, Structure, structure_of

STRUCTURED = ("channel", "head")
ELEMENTWISE = ("2:4", "unstructured", "4x1")

#: The most of a channel group (or of a layer's heads) a plan removes unless told otherwise: AMC's
#: bound on the share kept (0.2; He et al., ECCV 2018, ``--lbound``). Near the fastest plan every
#: group sits at its cap whatever its importance, and at 0.9 the 1-D ResNet of
#: ``benchmarks/planning_quality.py`` kept 16 of 128 channels in its last stage there and lost 12-18
#: points after fine-tuning, where a cap of 0.8 (32 kept) lost 1.
MAX_STRUCTURED_RATIO = 0.8
#: The most of a layer's weights an element-wise pattern removes unless told otherwise: 90%
#: unstructured sparsity is routine (Han et al., 2015), and only the weights it leaves are read.
MAX_ELEMENTWISE_RATIO = 0.9


def max_ratios(max_ratio: float | None) -> tuple[float, float]:
    """The caps on a structured and an element-wise ratio: ``max_ratio`` for both where given."""
    if max_ratio is None:
        return MAX_STRUCTURED_RATIO, MAX_ELEMENTWISE_RATIO
    return max_ratio, max_ratio


@dataclass(frozen=True)
class Option:
    """One choice for a unit: keep it dense, or prune with a pattern at a ratio."""

    pattern: Pattern | None          # None: dense
    sparsity: float = 0.0
    kept: int | None = None          # structured options: units kept

    def layer_plan(self) -> LayerPlan | None:
        return None if self.pattern is None else LayerPlan(self.sparsity, self.pattern)

    @property
    def structured(self) -> bool:
        return self.pattern is not None and self.pattern.kind in STRUCTURED


@dataclass(frozen=True)
class Unit:
    name: str
    group: PrunableGroup | None      # None: a single layer pruned element-wise
    layers: tuple[str, ...]          # graph nodes whose weights its element-wise options prune
    options: tuple[Option, ...]

    @property
    def structured(self) -> bool:
        return any(o.structured for o in self.options)


def candidate_patterns(spec: str, profile: HardwareProfile, precision: str, structure: Structure) -> list[Pattern]:
    """The patterns to plan with: 'auto' is every pattern the device turns into time."""
    has = {kind: any(g.kind == kind for g in structure.prunable()) for kind in STRUCTURED}
    usable = [t for t in ELEMENTWISE if (s := profile.support(t, precision)) is not None and s.useful]
    if spec.strip().lower() == "auto":
        return [Pattern(kind) for kind in STRUCTURED if has[kind]] + [parse_pattern(t) for t in usable]
    patterns = [parse_pattern(p) for p in spec.split(",") if p.strip()]
    if not patterns:
        raise CostplanError("--pattern names no pattern")
    for p in patterns:
        if p.kind in STRUCTURED:
            if not has[p.kind]:
                what = "attention heads it can prune" if p.kind == "head" else "channels it can prune"
                raise CostplanError(f"the model has no {what} (its groups are tied to the input or output)")
            continue
        support = profile.support(str(p), precision)
        if support is None or not support.useful:
            why = "its dense kernels multiply the zeros" if support is not None else "it has no kernels for it"
            raise CostplanError(
                f"{p} sparsity does not speed up {profile.name} at {precision} ({why}); patterns it can use: "
                f"channel, head{', ' + ', '.join(usable) if usable else ''}")
    return patterns


def levels_of(max_ratio: float, levels: int) -> list[float]:
    return [float(r) for r in np.linspace(0.0, max_ratio, levels)[1:]]


def aligned_ratios(width: int, ratios: Sequence[float], multiple: int, half_tile: bool = False) -> list[float]:
    """``ratios`` moved to the nearest ones that keep a multiple of ``multiple`` channels (at least
    one multiple), where ``width`` itself is a multiple: the widths a device's kernels tile without
    padding. A width built between multiples keeps ``ratios`` and gains those multiples: it may feed
    convolutions, which run padded to the multiple above, or GEMMs, which do not
    (:func:`costplan.hardware.roofline.gemm_dims` prices each), so its unaligned levels stay options, and
    a depthwise convolution off its tile runs slower than one on it (:func:`costplan.hardware.roofline.off_tile`),
    so a multiple below may be worth more than its share of channels. A width of one multiple or less has
    nothing to remove in whole tiles. With ``half_tile``, half a tile is a level too where the largest
    ratio reaches it: where kernels read fewer input channels than one tile unpadded
    (:func:`costplan.hardware.roofline.onednn_tiling`), a group kept at half a tile makes the
    layers reading it cheaper although its own outputs stay padded."""
    if multiple <= 1:
        return list(ratios)
    least = width * (1.0 - max(ratios, default=0.0)) - 1e-9  # never past the largest ratio asked for
    kept = {max(multiple, round(width * (1.0 - r) / multiple) * multiple) for r in ratios}
    kept = {k if k >= least else k + multiple for k in kept}
    if half_tile and multiple // 2 >= max(least, 1):
        kept.add(multiple // 2)
    aligned = [1.0 - k / width for k in sorted(kept, reverse=True) if k < width]
    return sorted({*ratios, *aligned}) if width % multiple else aligned


def structured_options(group: PrunableGroup, ratios: Sequence[float], max_ratio: float, multiple: int = 1,
                       half_tile: bool = False) -> list[Option]:
    """Channel ratio levels (kept counts aligned to ``multiple``, and half of one with ``half_tile``:
    :func:`aligned_ratios`), or for heads every whole number of heads up to ``max_ratio``."""
    if group.kind == "head":
        ratios = [(group.width - h) / group.width for h in range(group.width - 1, 0, -1)]
        ratios = [r for r in ratios if r <= max_ratio + 1e-9]
    else:
        ratios = aligned_ratios(group.width, ratios, multiple, half_tile)
    seen, options = set(), []
    for r in ratios:
        kept = kept_count(group.width, r)
        if kept < group.width and kept not in seen:
            seen.add(kept)
            options.append(Option(Pattern(group.kind), r, kept))
    return options


def _fits(layer: Layer, pattern: Pattern, structure: Structure) -> bool:
    param = layer.weight_param
    shape = structure.shapes.get(param) if param else None
    if shape is None:
        return False
    return pattern.fits(out_in_shape(shape, layer.transposed_weight)) is None


def elementwise_options(layers: Sequence[Layer], patterns: Sequence[Pattern], ratios: Sequence[float],
                        structure: Structure) -> list[Option]:
    options = []
    for p in patterns:
        if not all(_fits(l, p, structure) for l in layers):
            continue
        if p.kind == "nm":
            options.append(Option(p, 1.0 - p.n / p.m))
        elif p.elementwise:
            options += [Option(p, r) for r in ratios]
    return options


def _bounded(options: Iterable[Option], layers: Sequence[Layer], bounds: Mapping[str, tuple[float, float]]) -> list[Option]:
    limits = [bounds[k] for l in layers for k in (l.name, l.module) if k in bounds]
    low = max((lo for lo, _ in limits), default=0.0)
    high = min((hi for _, hi in limits), default=1.0)
    return [o for o in options if low - 1e-9 <= o.sparsity <= high + 1e-9]


def default_fixed(graph: LayerGraph) -> list[str]:
    """The first conv and the classifier: dense by default, as pruning practice keeps them."""
    producers = [l for l in graph.layers if l.weight_param and l.width is not None and not l.depthwise]
    if not producers:
        return []
    first = [producers[0].module or producers[0].name] if producers[0].conv_channels else []
    return first + [producers[-1].module or producers[-1].name]


def build_units(graph: LayerGraph, structure: Structure, patterns: Sequence[Pattern], *, levels: int,
                max_ratio: float | None, excluded: Iterable[str], bounds: Mapping[str, tuple[float, float]],
                channel_multiple: int = 1, half_tile: bool = False) -> list[Unit]:
    """Units and their options (the first always dense). A group any of whose members is ``excluded``
    stays dense. Channel levels keep whole tiles of ``channel_multiple``, or half of one with
    ``half_tile`` (:func:`aligned_ratios`). ``max_ratio`` caps every ratio; None: the default caps
    (:func:`max_ratios`)."""
    most_structured, most_elementwise = max_ratios(max_ratio)
    structured, ratios = levels_of(most_structured, levels), levels_of(most_elementwise, levels)
    kinds = {p.kind for p in patterns}
    elementwise = [p for p in patterns if p.elementwise]
    excluded = set(excluded)
    units, covered = [], set()
    for group in structure.prunable():
        if excluded & set(group.members):
            continue
        members = [graph.layer(n) for n in group.nodes]
        options = (structured_options(group, structured, most_structured, channel_multiple, half_tile)
                   if group.kind in kinds else [])
        if elementwise and all(m.weight_param for m in members):
            options += elementwise_options(members, elementwise, ratios, structure)
        options = _bounded([Option(None), *options], members, bounds)
        if len(options) > 1:
            units.append(Unit(group.name, group, group.nodes, tuple(options)))
            covered |= set(group.nodes)
    if elementwise:
        for layer in graph.layers:
            if (layer.name in covered or layer.name in excluded or layer.module in excluded
                    or layer.weight_param is None or layer.kind != "module"):
                continue
            options = _bounded([Option(None), *elementwise_options([layer], elementwise, ratios, structure)],
                               [layer], bounds)
            if len(options) > 1:
                units.append(Unit(layer.module or layer.name, None, (layer.name,), tuple(options)))
    return units


def uniform_plan(graph: LayerGraph, pattern: str | Pattern, sparsity: float, *, keep_ends_dense: bool = True,
                 exclude: Iterable[str] = ()) -> Plan:
    """One ``sparsity`` for everything ``pattern`` can prune: every prunable group of its kind (all
    members named) for 'channel' and 'head', every conv and linear weight it fits for element-wise
    patterns. With ``keep_ends_dense`` the first conv and the classifier stay dense, as the planner
    keeps them."""
    p = parse_pattern(pattern) if isinstance(pattern, str) else pattern
    structure = structure_of(graph)
    excluded = {*exclude, *(default_fixed(graph) if keep_ends_dense else [])}
    entry = LayerPlan(sparsity, p)
    layers: dict[str, LayerPlan] = {}
    if p.kind in STRUCTURED:
        for group in structure.prunable():
            if group.kind == p.kind and not excluded & set(group.members):
                layers.update({m: entry for m in ([group.name] if p.kind == "head" else group.members)})
    else:
        for layer in graph.layers:
            if layer.weight_param and layer.module and layer.module not in excluded and _fits(layer, p, structure):
                layers[layer.module] = entry
    return Plan(layers=layers)


def plan_from_choice(graph: LayerGraph, units: Sequence[Unit], choice: Sequence[int], **meta: object) -> Plan:
    """The plan file for one option per unit (dense units are left out): a head group under its
    attention module, every other choice under each member module."""
    layers: dict[str, LayerPlan] = {}
    for unit, k in zip(units, choice):
        option = unit.options[k]
        if option.pattern is None:
            continue
        if option.pattern.kind == "head":
            layers[unit.group.name] = option.layer_plan()
        else:
            for node in unit.layers:
                layers[graph.layer(node).module or node] = option.layer_plan()
    return Plan(layers=layers, **meta)  # type: ignore[arg-type]
