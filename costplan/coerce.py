"""What users give the API, turned into what the code uses: plans and profiles from names or files,
output paths checked before any work (shapes and precisions: :mod:`costplan.spellings`).
"""

from __future__ import annotations

import os

from costplan.errors import CostplanError
from costplan.hardware import HardwareProfile, load_profile
from costplan.planfile import Plan, load_plan
from costplan.spellings import (  # noqa: F401  (re-exported: every spelling the surface accepts)
    QUANTISED,
    as_shapes,
    canonical_dtype,
    parse_shapes,
    torch_dtype,
    traced_dtype,
)


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
    profile = hw if isinstance(hw, HardwareProfile) else load_profile(hw)
    return profile.with_runtime(runtime)
