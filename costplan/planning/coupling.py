"""Which output channels are tied together, found from the layer graph alone.

Channels flow from a weight layer (conv, linear) through layers that keep their width (norms,
activations, pooling, depthwise convolutions, attention matmuls) to the next weight layer. Where
tensors from two weight layers meet in one op (a residual add, a concatenation, an attention matmul,
a squeeze-excite product), their channels must be pruned together: one group, one ratio. This is the
dependency-graph idea of Torch-Pruning, done with networkx's union-find over our graph.

A group whose channels reach the model's output, meet a parameter (a position embedding, a class
token) or the model's input cannot change width: it is fixed. A group made of the q/k/v projections
of one attention module prunes whole heads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from networkx.utils import UnionFind

from costplan.trace.graph import Layer, LayerGraph

INPUT = "<input>"    # channels that come from the model's input or a lookup table
FIXED = "<fixed>"    # channels tied to something whose width cannot change


@dataclass(frozen=True)
class Group:
    """Weight layers whose output channels are pruned together."""

    name: str                       # plan key: the attention module for heads, else the first member
    kind: str                       # 'channel' or 'head'
    members: tuple[str, ...]        # layer names, in execution order
    width: int                      # channels (or heads) each member has
    fixed: bool                     # its width cannot change
    reason: str = ""                # why it is fixed


@dataclass(frozen=True)
class Coupling:
    """The groups of a graph, and for every layer the group its input and output channels follow."""

    groups: Mapping[str, Group]
    input_group: Mapping[str, str | None]   # layer -> group setting its input width (None: never changes)
    output_group: Mapping[str, str | None]  # layer -> group setting its output width

    def prunable(self) -> list[Group]:
        return [g for g in self.groups.values() if not g.fixed]


def is_producer(layer: Layer) -> bool:
    """A layer that sets the width of its output: a conv or linear that is not depthwise."""
    return layer.has_weights and layer.width is not None and not layer.depthwise


def find_groups(graph: LayerGraph, fixed_layers: Iterable[str] = ()) -> Coupling:
    """Group the producers of ``graph``; ``fixed_layers`` (layer or module names) stay dense."""
    union = UnionFind()
    union.union(INPUT, FIXED)
    sources: dict[str, frozenset[str]] = {}  # layer -> producers whose channels its output carries
    input_sources: dict[str, frozenset[str]] = {}
    for layer in graph.layers:
        preds = graph.predecessors(layer.name)
        incoming = frozenset().union(*(sources[p] for p in preds))
        if layer.attrs.get("reads_input"):
            incoming = incoming | {INPUT}
        input_sources[layer.name] = incoming
        if is_producer(layer):
            sources[layer.name] = frozenset({layer.name})
            union[layer.name]  # noqa: B018  registers the producer
            continue
        if layer.kind == "function" and layer.params:
            incoming = incoming | {FIXED}  # an operand of fixed width: a position embedding, a token
        if len(incoming) > 1:
            union.union(*incoming)
        sources[layer.name] = incoming
    for layer in graph.layers:
        if not graph.successors(layer.name):  # the model's outputs keep their width
            union.union(FIXED, *sources[layer.name])

    fixed = set(fixed_layers)
    producers = [l for l in graph.layers if is_producer(l)]
    groups: dict[str, Group] = {}
    root_to_group: dict[str, str] = {}
    for root_members in _components(union, [l.name for l in producers]):
        members = [graph.layer(n) for n in root_members]
        frozen_by = next((m.name for m in members if m.name in fixed or m.module in fixed), None)
        tied = union[FIXED] == union[members[0].name]
        attention = _attention_module(graph, members)
        kind = "head" if attention and not tied else "channel"
        name = attention if kind == "head" else members[0].module or members[0].name
        width = graph.heads[attention] if kind == "head" else members[0].width
        reason = ("its channels reach the model output, input or a fixed-width parameter" if tied
                  else f"{frozen_by} is excluded" if frozen_by else "")
        groups[name] = Group(name, kind, tuple(m.name for m in members), width, bool(tied or frozen_by), reason)
        root_to_group[union[members[0].name]] = name

    def group_of(sources_: frozenset[str]) -> str | None:
        producers_ = [s for s in sources_ if s not in (INPUT, FIXED)]
        if not producers_:
            return None
        group = root_to_group.get(union[producers_[0]])
        return None if group is None or groups[group].fixed else group

    output_group = {l.name: group_of(sources[l.name]) for l in graph.layers}
    input_group = {l.name: group_of(input_sources[l.name]) for l in graph.layers}
    return Coupling(groups, input_group, output_group)


def _components(union: UnionFind, names: list[str]) -> list[list[str]]:
    by_root: dict[str, list[str]] = {}
    for name in names:
        by_root.setdefault(union[name], []).append(name)
    return list(by_root.values())


def _attention_module(graph: LayerGraph, members: list[Layer]) -> str | None:
    """The attention module whose heads these members are (all of them inside it), if any."""
    for module in graph.heads:
        prefix = module + "."
        if all(m.module == module or (m.module or "").startswith(prefix) for m in members):
            return module
    return None


def default_fixed(graph: LayerGraph) -> list[str]:
    """The first conv and the classifier: dense by default, as pruning practice keeps them."""
    producers = [l for l in graph.layers if is_producer(l)]
    if not producers:
        return []
    first = [producers[0].name] if "out_channels" in producers[0].attrs else []
    return first + [producers[-1].name]
