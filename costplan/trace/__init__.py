"""torch model -> LayerGraph. Knows nothing of hardware."""

from costplan.trace.graph import InputSpec, Layer, LayerGraph
from costplan.trace.tracer import trace

__all__ = ["InputSpec", "Layer", "LayerGraph", "trace"]
