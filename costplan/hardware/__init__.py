"""HardwareProfile (data in hwprofiles/*.toml) + roofline -> latency. Knows nothing of planning.

Names are imported on first use: reading a profile does not import torch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"HardwareProfile": "profile", "SparsitySupport": "profile", "list_profiles": "profile",
            "load_profile": "profile", "Estimate": "roofline", "LayerLatency": "roofline", "estimate": "roofline",
            "layer_latency": "roofline"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"costplan.hardware.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'costplan.hardware' has no attribute '{name}'")
