"""The plan contract (shared/DESIGN.md): per-layer sparsity and pattern, read and written as JSON.

Only ``layers`` is required; a hand-written plan is a valid plan.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from costplan.atomic import write_atomic
from costplan.errors import CostplanError
from costplan.patterns import Pattern, parse_pattern

PLAN_FORMAT = "plan/1"
SWEEP_FORMAT = "sweep/1"   # a sweep's points, each with its plan (or why none met that budget)
@dataclass(frozen=True)
class LayerPlan:
    sparsity: float                # fraction removed: of weights, of output channels, or of heads
    pattern: Pattern

    def to_dict(self) -> dict[str, Any]:
        return {"sparsity": round(self.sparsity, 6), "pattern": str(self.pattern)}


@dataclass(frozen=True)
class PlanInput:
    """The input a plan was made for: its tensors' shapes and dtype."""

    shapes: tuple[tuple[int, ...], ...]
    dtype: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"shapes": [list(s) for s in self.shapes]}
        if self.dtype is not None:
            out["dtype"] = self.dtype
        return out

    @classmethod
    def from_dict(cls, data: Any) -> PlanInput | None:
        """The input a plan file states, or None where it states none it can be read as."""
        shapes = data.get("shapes") if isinstance(data, dict) else None
        if not isinstance(shapes, list) or not all(isinstance(s, list) and all(isinstance(d, int) for d in s)
                                                   for s in shapes):
            return None
        return cls(tuple(tuple(s) for s in shapes), data.get("dtype"))


@dataclass(frozen=True)
class Plan:
    """Per-layer sparsity keyed by qualified module name, plus optional provenance."""

    layers: Mapping[str, LayerPlan]
    model: str | None = None
    hardware: str | None = None
    budget: Mapping[str, Any] | None = None
    predicted: Mapping[str, Any] | None = None
    input: PlanInput | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"costplan": PLAN_FORMAT}
        for key in ("model", "hardware", "budget"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["layers"] = {name: lp.to_dict() for name, lp in self.layers.items()}
        if self.predicted is not None:
            out["predicted"] = dict(self.predicted)
        if self.input is not None:
            out["input"] = self.input.to_dict()
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "plan") -> Plan:
        if not isinstance(data, dict) or not isinstance(data.get("layers"), dict):
            raise CostplanError(f"{source}: a plan is a JSON object with a 'layers' object")
        layers = {}
        for name, entry in data["layers"].items():
            if not isinstance(entry, dict) or "sparsity" not in entry:
                raise CostplanError(f"{source}: layer '{name}' needs {{\"sparsity\": ..., \"pattern\": ...}}")
            s = entry["sparsity"]
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
                raise CostplanError(f"{source}: layer '{name}' has sparsity {s!r}; it must be in [0, 1)")
            layers[name] = LayerPlan(float(s), parse_pattern(str(entry.get("pattern", "unstructured"))))
        given = PlanInput.from_dict(data.get("input"))
        known = {"costplan", "model", "hardware", "budget", "layers", "predicted", *(["input"] if given else [])}
        return cls(layers=layers, model=data.get("model"), hardware=data.get("hardware"),
                   budget=data.get("budget"), predicted=data.get("predicted"), input=given,
                   extra={k: v for k, v in data.items() if k not in known})


def load_plan(path: str | os.PathLike[str], point: int | None = None) -> Plan:
    """Read a plan JSON file, or point ``point`` (1-based, as the sweep table numbers them) of a sweep
    file ``costplan plan --sweep -o`` wrote."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CostplanError(f"no such plan file: {path}") from None
    except json.JSONDecodeError as exc:
        raise CostplanError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and data.get("costplan") == SWEEP_FORMAT:
        return _sweep_point(data, point, str(path))
    if point is not None:
        raise CostplanError(f"{path} is one plan, not a sweep: drop --point")
    return Plan.from_dict(data, source=str(path))


def _sweep_point(data: dict, point: int | None, source: str) -> Plan:
    points = data.get("points") or []
    numbers = [p.get("point") for p in points if isinstance(p, dict) and p.get("plan")]
    if point is None or point not in numbers:
        listed = ", ".join(f"{p['point']} ({p['budget_fraction']:g}x dense)" for p in points
                           if isinstance(p, dict) and p.get("plan"))
        why = "holds several plans: pick one with --point K" if point is None else f"has no plan at point {point}"
        raise CostplanError(f"{source} is a sweep and {why} (points with a plan: {listed or 'none'})")
    entry = next(p for p in points if p.get("point") == point)
    return Plan.from_dict(entry["plan"], source=f"{source}, point {point}")


def save_plan(plan: Plan, path: str | os.PathLike[str]) -> None:
    write_atomic(path, json.dumps(plan.to_dict(), indent=2) + "\n")
