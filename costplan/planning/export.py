"""A plan in the configuration formats of the pruners people already use.

- Torch-Pruning: ``pruning_ratio_dict`` (module -> ratio) and per-module head ratios, keyed here by
  qualified name; map them with ``{model.get_submodule(k): v for k, v in d.items()}``.
- NNI (v3): a ``config_list`` of ``{"op_names", "sparse_ratio", "granularity"}`` entries.
- Intel Neural Compressor: ``WeightPruningConfig(pruning_configs=[...])`` entries with ``op_names``,
  ``pattern`` and ``target_sparsity``.

Entries a format cannot express are listed under ``unsupported`` rather than dropped silently.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from costplan.errors import CostplanError
from costplan.planfile import Plan

FORMATS = ("torch-pruning", "nni", "inc")


def _grouped(plan: Plan, kinds: tuple[str, ...]) -> dict[tuple[str, float], list[str]]:
    groups: dict[tuple[str, float], list[str]] = defaultdict(list)
    for name, lp in plan.layers.items():
        if lp.pattern.kind in kinds:
            groups[(str(lp.pattern), round(lp.sparsity, 6))].append(name)
    return groups


def torch_pruning(plan: Plan) -> dict[str, Any]:
    ratios = {n: lp.sparsity for n, lp in plan.layers.items() if lp.pattern.kind == "channel"}
    heads = {n: lp.sparsity for n, lp in plan.layers.items() if lp.pattern.kind == "head"}
    return {
        "pruning_ratio_dict": ratios,
        "head_pruning_ratio_dict": heads,
        "usage": "tp.pruner.MetaPruner(model, example_inputs, importance=tp.importance.MagnitudeImportance(p=2), "
                 "pruning_ratio_dict={model.get_submodule(k): v for k, v in d['pruning_ratio_dict'].items()}, "
                 "global_pruning=False)",
        "unsupported": {n: str(lp.pattern) for n, lp in plan.layers.items() if lp.pattern.elementwise},
    }


def nni(plan: Plan) -> dict[str, Any]:
    config = []
    for (pattern, sparsity), names in _grouped(plan, ("unstructured", "channel", "block")).items():
        if pattern == "channel":
            granularity: object = "out_channel"
        elif "x" in pattern:
            granularity = [int(v) for v in pattern.split("x")]
        else:
            granularity = "default"
        config.append({"op_names": names, "sparse_ratio": sparsity, "granularity": granularity})
    return {"config_list": config,
            "unsupported": {n: str(lp.pattern) for n, lp in plan.layers.items() if lp.pattern.kind in ("nm", "head")}}


def inc(plan: Plan) -> dict[str, Any]:
    names = {"channel": "channelx1", "unstructured": "1x1"}
    configs = []
    for (pattern, sparsity), ops in _grouped(plan, ("unstructured", "channel", "block", "nm")).items():
        configs.append({"op_names": ops, "pattern": names.get(pattern, pattern), "target_sparsity": sparsity,
                        "pruning_type": "snip_momentum", "pruning_scope": "local"})
    return {"pruning_configs": configs,
            "unsupported": {n: str(lp.pattern) for n, lp in plan.layers.items() if lp.pattern.kind == "head"}}


def export(plan: Plan, fmt: str) -> dict[str, Any]:
    """``plan`` as ``fmt`` ('torch-pruning', 'nni' or 'inc')."""
    table = {"torch-pruning": torch_pruning, "nni": nni, "inc": inc}
    if fmt not in table:
        raise CostplanError(f"unknown export format '{fmt}': use {', '.join(FORMATS)}")
    return table[fmt](plan)
