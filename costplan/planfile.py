"""The plan contract (shared/DESIGN.md): per-layer sparsity and pattern, read and written as JSON.

Only ``layers`` is required; a hand-written plan is a valid plan.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from costplan.errors import CostplanError

PLAN_FORMAT = "plan/1"
ELEMENTWISE_KINDS = ("unstructured", "nm", "block")


@dataclass(frozen=True)
class Pattern:
    """A sparsity pattern: 'unstructured', 'N:M', 'RxC' blocks, 'channel' or 'head'."""

    kind: str                      # unstructured | nm | block | channel | head
    n: int = 0                     # N:M -> (n, m); RxC -> (rows, cols)
    m: int = 0

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"{self.n}x{self.m}"
        return self.kind

    @property
    def elementwise(self) -> bool:
        """True where zeros stay inside a dense shape (the layer keeps its size)."""
        return self.kind in ELEMENTWISE_KINDS

    def fits(self, shape: Sequence[int]) -> str | None:
        """Why this element-wise pattern cannot apply to a weight of ``shape`` (outputs, inputs, ...),
        or None. N:M groups run along the inputs, as sparse tensor cores read them."""
        if self.kind == "nm" and (len(shape) < 2 or shape[1] % self.m):
            width = shape[1] if len(shape) > 1 else shape[0]
            return f"{self} needs an input width that is a multiple of {self.m}, not {width}"
        if self.kind == "block":
            rows, cols = shape[0], math.prod(shape[1:])
            if rows < self.n or cols < self.m:
                return f"{self} blocks do not fit a {rows}x{cols} weight"
        return None

    def kept(self, shape: Sequence[int], sparsity: float) -> int:
        """Weights of a ``shape`` weight this element-wise pattern keeps at ``sparsity``: the count its
        masks (costplan.pruning.masks) leave, so analysis and pruning agree exactly."""
        numel = math.prod(shape)
        if sparsity <= 0 or numel == 0:
            return numel
        if self.kind == "unstructured":
            return numel - math.floor(sparsity * numel)
        if self.kind == "nm":
            groups = numel // self.m
            chosen = round(min(1.0, sparsity / (1.0 - self.n / self.m)) * groups)
            return numel - chosen * (self.m - self.n)
        if self.kind == "block":
            rows, cols = shape[0], numel // shape[0]
            blocks = (rows // self.n) * (cols // self.m)
            return numel - math.floor(sparsity * blocks) * self.n * self.m
        raise ValueError(f"not an element-wise pattern: {self}")


def parse_pattern(text: str) -> Pattern:
    """'2:4' -> Pattern('nm', 2, 4); '4x1' -> Pattern('block', 4, 1)."""
    t = text.strip().lower()
    if t in ("unstructured", "channel", "head"):
        return Pattern(t)
    if m := re.fullmatch(r"(\d+):(\d+)", t):
        n, mm = int(m[1]), int(m[2])
        if 0 < n < mm:
            return Pattern("nm", n, mm)
    if m := re.fullmatch(r"(\d+)x(\d+)", t):
        r, c = int(m[1]), int(m[2])
        if r > 0 and c > 0:
            return Pattern("block", r, c)
    raise CostplanError(f"unknown sparsity pattern '{text}': use unstructured, N:M (2:4), "
                        "RxC blocks (4x1), channel or head")


@dataclass(frozen=True)
class LayerPlan:
    sparsity: float                # fraction removed: of weights, of output channels, or of heads
    pattern: Pattern

    def to_dict(self) -> dict[str, Any]:
        return {"sparsity": round(self.sparsity, 6), "pattern": str(self.pattern)}


@dataclass(frozen=True)
class Plan:
    """Per-layer sparsity keyed by qualified module name, plus optional provenance."""

    layers: Mapping[str, LayerPlan]
    model: str | None = None
    hardware: str | None = None
    budget: Mapping[str, Any] | None = None
    predicted: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"costplan": PLAN_FORMAT}
        for key in ("model", "hardware", "budget"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["layers"] = {name: lp.to_dict() for name, lp in self.layers.items()}
        if self.predicted is not None:
            out["predicted"] = dict(self.predicted)
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
        known = {"costplan", "model", "hardware", "budget", "layers", "predicted"}
        return cls(layers=layers, model=data.get("model"), hardware=data.get("hardware"),
                   budget=data.get("budget"), predicted=data.get("predicted"),
                   extra={k: v for k, v in data.items() if k not in known})


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Read a plan JSON file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CostplanError(f"no such plan file: {path}") from None
    except json.JSONDecodeError as exc:
        raise CostplanError(f"{path} is not valid JSON: {exc}") from None
    return Plan.from_dict(data, source=str(path))


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".costplan-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_plan(plan: Plan, path: str | os.PathLike[str]) -> None:
    write_atomic(path, json.dumps(plan.to_dict(), indent=2) + "\n")
