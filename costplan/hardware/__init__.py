"""HardwareProfile (data in hwprofiles/*.toml) + roofline -> latency. Knows nothing of planning."""

from costplan.hardware.profile import HardwareProfile, SparsitySupport, list_profiles, load_profile
from costplan.hardware.roofline import Estimate, LayerLatency, estimate, layer_latency

__all__ = ["Estimate", "HardwareProfile", "LayerLatency", "SparsitySupport", "estimate", "layer_latency",
           "list_profiles", "load_profile"]
