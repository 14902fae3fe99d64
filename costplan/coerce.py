"""What users write, turned into what the code uses: shapes, dtypes, plans and profiles.

One place for every spelling (``1x3x224x224``, ``fp16``, ``plan.json``, ``rtx3090``), so a flag means the
same thing in ``analyze``, ``plan``, ``prune`` and ``measure``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from costplan.errors import CostplanError, close_names
from costplan.planfile import Plan, load_plan

if TYPE_CHECKING:
    from costplan.hardware import HardwareProfile

Shape = tuple[int, ...]

# every spelling of a precision -> its canonical name (the keys of hardware.profile.DTYPE_BYTES)
DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32", "f32": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16", "f16": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "int8": "int8",
}
QUANTISED = ("int8",)  # precisions a model is not traced in: bytes are rescaled from float32
_TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def canonical_dtype(name: str) -> str:
    """'fp16' -> 'float16'; raises CostplanError naming every accepted spelling."""
    key = str(name).strip().lower()
    if key not in DTYPES:
        raise CostplanError(f"unknown dtype '{name}'; use float32, float16, bfloat16 or int8 (also fp32, fp16, "
                            f"half, bf16).{close_names(key, DTYPES)}")
    return DTYPES[key]


def traced_dtype(name: str) -> str:
    """The dtype a model is traced in for a precision: quantised ones trace in float32."""
    dtype = canonical_dtype(name)
    return "float32" if dtype in QUANTISED else dtype


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype a model is built in for a precision."""
    return _TORCH[traced_dtype(name)]


def parse_shapes(text: str) -> tuple[Shape, ...]:
    """'1x3x224x224' -> ((1, 3, 224, 224),); several inputs are separated by commas."""
    shapes = []
    for part in text.split(","):
        dims = part.strip().lower().split("x")
        if not part.strip() or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise CostplanError(f"malformed input shape '{text}': give positive sizes joined by 'x', "
                                "like 1x3x224x224 (several inputs: 1x3x32x32,1x10)")
        shapes.append(tuple(int(d) for d in dims))
    return tuple(shapes)


def as_shapes(input: str | Sequence[int] | Sequence[Sequence[int]] | None) -> tuple[Shape, ...] | None:
    """Input shapes from '1x3x224x224', (1, 3, 224, 224) or [(1, 3, 224, 224), (1, 10)]."""
    if input is None:
        return None
    if isinstance(input, str):
        return parse_shapes(input)
    if all(isinstance(d, int) for d in input):
        return (tuple(input),)  # type: ignore[arg-type]
    return tuple(tuple(s) for s in input)  # type: ignore[union-attr]


def writable(path: str | os.PathLike[str] | None, what: str = "output") -> None:
    """Fail now, not after the work, if ``path`` cannot be written: its folder must exist and take
    files, and it must not be a folder itself."""
    if path is None:
        return
    target = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(target)
    if os.path.isdir(target):
        raise CostplanError(f"cannot write the {what} to {path}: it is a directory; give a file name")
    if not os.path.isdir(folder):
        raise CostplanError(f"cannot write the {what} to {path}: the directory {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise CostplanError(f"cannot write the {what} to {path}: the directory {folder} is not writable")


def as_plan(plan: Plan | str | os.PathLike[str] | None) -> Plan | None:
    """A plan from a Plan or a plan file's path."""
    return load_plan(plan) if isinstance(plan, (str, os.PathLike)) else plan


def as_profile(hw: HardwareProfile | str | os.PathLike[str], runtime: str | None = None) -> HardwareProfile:
    """A hardware profile from a profile, a shipped profile's name or a .toml path, under ``runtime``
    ('eager', 'fused', 'graph': the execution whose overheads it models; default: the profile's)."""
    from costplan.hardware import HardwareProfile, load_profile

    profile = hw if isinstance(hw, HardwareProfile) else load_profile(hw)
    return profile.with_runtime(runtime)
