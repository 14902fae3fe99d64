"""torch model -> LayerGraph. Knows nothing of hardware."""

from costplan.trace.graph import PHASES, Generation, InputSpec, Layer, LayerGraph
from costplan.trace.tracer import trace

__all__ = ["PHASES", "Generation", "InputSpec", "Layer", "LayerGraph", "trace"]
