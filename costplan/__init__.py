"""costplan: hardware-aware cost modelling and pruning planning for PyTorch.

The public API is imported lazily, so ``costplan --help`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "analyze": "costplan.api",
    "load_graph": "costplan.api",
    "generation": "costplan.api",
    "plan": "costplan.api",
    "sweep": "costplan.api",
    "estimate_latency": "costplan.api",
    "prune": "costplan.api",
    "uniform_plan": "costplan.api",
    "Pruner": "costplan.pruning.pruner",
    "Schedule": "costplan.pruning.schedule",
    "save": "costplan.pruning.saving",
    "load": "costplan.pruning.saving",
    "trainer_callback": "costplan.pruning.hf",
    "load_profile": "costplan.hardware.profile",
    "list_profiles": "costplan.hardware.profile",
    "profile_fields": "costplan.hardware.profile",
    "HardwareProfile": "costplan.hardware.profile",
    "Importance": "costplan.planning.importance",
    "trace": "costplan.trace",
    "LayerGraph": "costplan.trace",
    "Layer": "costplan.trace",
    "Report": "costplan.report",
    "Plan": "costplan.planfile",
    "LayerPlan": "costplan.planfile",
    "load_plan": "costplan.planfile",
    "save_plan": "costplan.planfile",
    "parse_pattern": "costplan.planfile",
    "CostplanError": "costplan.errors",
    "BudgetOutOfReach": "costplan.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'costplan' has no attribute '{name}'")


def __dir__() -> list[str]:
    return __all__
