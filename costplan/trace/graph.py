"""The layer graph: records of layers, and the networkx DiGraph that joins them by data flow."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import networkx as nx

from costplan.phases import PHASES, Generation  # noqa: F401  (re-exported: a graph records its phase)
from costplan.trace.grids import ChannelLog

Shape = tuple[int, ...]


GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@dataclass(frozen=True)
class Recurrent:
    """An LSTM/GRU/RNN call as it runs: per layer and direction, one GEMM projects the whole input
    sequence (``steps`` x ``batch`` rows) onto the gates, then every step multiplies the hidden state
    (``batch`` rows) by the hidden-to-gates weight and applies the gates."""

    mode: str                      # LSTM | GRU | RNN_TANH | RNN_RELU
    input_size: int
    hidden_size: int
    num_layers: int
    directions: int
    proj_size: int                 # LSTM projection width (0: none)
    steps: int
    batch: int

    @property
    def gates(self) -> int:
        return GATES.get(self.mode, 1)

    @property
    def cell(self) -> str:
        """The op class a step of it is priced as: 'lstm', 'gru' or 'rnn'."""
        return {"LSTM": "lstm", "GRU": "gru"}.get(self.mode, "rnn")

    @property
    def state_size(self) -> int:
        """Width of the hidden state a step multiplies (the projection's, where an LSTM has one)."""
        return self.proj_size or self.hidden_size

    def layer_input(self, layer: int) -> int:
        """Input width of stacked layer ``layer``: the input's, then the previous layer's output."""
        return self.input_size if layer == 0 else self.state_size * self.directions


@dataclass(frozen=True)
class Layer:
    """One node of the layer graph: a leaf module's call, or a functional op between modules.

    Counts are for the whole traced batch. Bytes are bytes of the traced dtype.
    """

    name: str                      # unique node name: module qualname, 'qualname:1' for a 2nd call
    op: str                        # 'conv2d', 'linear', 'batchnorm2d', 'add', 'matmul', ...
    module: str | None             # qualified module name a plan keys on; None for glue ops
    kind: str                      # 'module' (a leaf module's call) or 'function'
    in_shapes: tuple[Shape, ...]   # activations read (parameters excluded)
    out_shapes: tuple[Shape, ...]
    macs: int
    params: int                    # parameters first read here (each parameter belongs to one layer)
    weights_read: int              # parameters this call reads, shared or tied ones included
    weight_bytes: int              # bytes of the parameters this call reads
    act_in_bytes: int
    act_out_bytes: int
    aten_ops: tuple[str, ...] = ()  # the aten ops this layer ran, in order of first use
    kernels: int = 1               # aten op calls (kernels) it ran: GPT-2's GELU is seven
    attrs: Mapping[str, object] = field(default_factory=dict)  # geometry (costplan.modules); read it
                                                                # through the typed properties below
    param_names: tuple[str, ...] = ()   # qualified names of the parameters first read here
    reads: tuple[str, ...] = ()         # every parameter this call reads
    # bytes of persistent state (a KV cache) this call reads, or writes in place: it lives in DRAM
    # between forward passes, so it never stays on chip as an activation may
    state_bytes: int = 0

    @property
    def bytes_moved(self) -> int:
        """Weights read, activations and state read and written: the DRAM traffic of an unfused layer."""
        return self.weight_bytes + self.act_in_bytes + self.act_out_bytes + self.state_bytes

    @property
    def reuse(self) -> float:
        """MACs per weight read: how often each weight is used. 0 for layers without weights."""
        return self.macs / self.weights_read if self.weights_read else 0.0

    @property
    def intensity(self) -> float:
        """Arithmetic intensity in MACs per byte moved."""
        return self.macs / self.bytes_moved if self.bytes_moved else 0.0

    @property
    def has_weights(self) -> bool:
        return self.weights_read > 0 and self.macs > 0

    @property
    def depthwise(self) -> bool:
        """A convolution with one group per input channel: its outputs are its inputs' channels."""
        return self.groups > 1 and self.groups == self.attrs.get("in_channels")

    @property
    def width(self) -> int | None:
        """Output channels (conv) or features (linear); None for other layers."""
        width = self.attrs.get("out_channels", self.attrs.get("out_features"))
        return int(width) if width else None

    # ---- typed views of the geometry the tracer recorded (costplan.modules) ----------------------

    @property
    def weight_param(self) -> str | None:
        """The qualified name of the conv/linear weight this layer multiplies by, if any."""
        name = self.attrs.get("weight")
        return name if isinstance(name, str) and self.has_weights else None

    @property
    def transposed_weight(self) -> bool:
        """Whether the weight is stored as (inputs, outputs) (GPT-2's ``Conv1D``)."""
        return bool(self.attrs.get("transposed_weight"))

    @property
    def conv_channels(self) -> tuple[int, int] | None:
        """(in_channels, out_channels) of a convolution; None for other layers."""
        a = self.attrs
        return (int(a["in_channels"]), int(a["out_channels"])) if "in_channels" in a and "out_channels" in a else None

    @property
    def linear_features(self) -> tuple[int, int] | None:
        """(in_features, out_features) of a linear layer; None for other layers."""
        a = self.attrs
        return (int(a["in_features"]), int(a["out_features"])) if "in_features" in a and "out_features" in a else None

    @property
    def groups(self) -> int:
        return int(self.attrs.get("groups", 1))  # type: ignore[arg-type]

    @property
    def kernel_size(self) -> tuple[int, ...]:
        """A convolution's window; () for other layers."""
        return tuple(int(k) for k in self.attrs.get("kernel_size", ()))  # type: ignore[union-attr]

    @property
    def stride(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.attrs.get("stride", ()))  # type: ignore[union-attr]

    @property
    def dilation(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.attrs.get("dilation", ()))  # type: ignore[union-attr]

    @property
    def conv_transposed(self) -> bool:
        """A transposed convolution (a deconvolution)."""
        return bool(self.attrs.get("transposed"))

    @property
    def recurrent(self) -> Recurrent | None:
        """What an LSTM/GRU/RNN layer runs, step by step; None for other layers."""
        a = self.attrs
        if "mode" not in a or not self.out_shapes:
            return None
        directions = 2 if a.get("bidirectional") else 1
        out = self.out_shapes[0]
        if len(out) == 3:
            steps, batch = (out[1], out[0]) if a.get("batch_first") else (out[0], out[1])
        else:      # unbatched (steps, features), or a packed sequence's (tokens, features): batch 1
            steps, batch = out[0] if out else 1, 1
        return Recurrent(str(a["mode"]), int(a["input_size"]), int(a["hidden_size"]), int(a["num_layers"]),  # type: ignore[arg-type]
                         directions, int(a.get("proj_size", 0)), int(steps), int(batch))  # type: ignore[arg-type]

    @property
    def tied(self) -> bool:
        """Whether this layer's weight is shared with another layer (an output head tied to embeddings)."""
        return bool(self.attrs.get("tied"))


@dataclass(frozen=True)
class InputSpec:
    """What the model was traced with."""

    shapes: tuple[Shape, ...]
    dtype: str
    device: str                    # 'meta' when only shapes were used, 'cpu' for real tensors


@dataclass
class LayerGraph:
    """A traced model: a DAG of :class:`Layer` records in execution order.

    ``graph`` is a ``networkx.DiGraph`` whose nodes are layer names with the record under the
    ``layer`` attribute; an edge u -> v means v reads an activation u wrote.
    """

    model: str
    graph: nx.DiGraph
    inputs: InputSpec
    total_params: int              # unique parameters of the model
    total_weight_bytes: int
    unsupported: Mapping[str, int]  # aten op -> calls, for ops with no formula
    module_names: frozenset[str]   # every named_modules() name, leaves and containers
    heads: Mapping[str, int] = field(default_factory=dict)  # attention module -> head count
    channels: ChannelLog | None = field(default=None, repr=False)  # how channels flow (trace.channels)
    # a model pruned by costplan: {"plan": plan JSON, "compacted": bool, "source": spec}, read from its file
    applied: Mapping[str, object] | None = None
    generation: Generation | None = None   # the generation phase traced, for a causal LM with a cache
    notes: tuple[str, ...] = ()            # how the trace counted what it could not see (MoE routing)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    @property
    def layers(self) -> list[Layer]:
        """Layers in the order they ran."""
        return [data["layer"] for _, data in self.graph.nodes(data=True)]

    def layer(self, name: str) -> Layer:
        return self.graph.nodes[name]["layer"]

    def predecessors(self, name: str) -> list[str]:
        return list(self.graph.predecessors(name))

    def successors(self, name: str) -> list[str]:
        return list(self.graph.successors(name))

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def layers_of_module(self, module: str) -> list[Layer]:
        """The calls of ``module`` itself, or of everything inside it for a container."""
        prefix = module + "."
        return [
            layer for layer in self.layers
            if layer.module is not None and (layer.module == module or layer.module.startswith(prefix))
        ]
