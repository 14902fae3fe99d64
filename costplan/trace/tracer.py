"""Trace a torch model into a :class:`LayerGraph` by watching the aten ops of one forward pass.

A ``TorchDispatchMode`` sees every aten op (on meta tensors too, so shapes are enough), and global
module hooks say which module is running. Every op run inside a leaf module (one with no children)
is folded into that module's node; ops run between modules (residual adds, attention matmuls,
functional calls) become nodes of their own. Views are free and alias their input, so data-flow
edges pass straight through reshapes and transposes.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from costplan.trace.channels import Tracker
from costplan.trace.graph import Generation, InputSpec, Layer, LayerGraph
from costplan.humanize import listed
from costplan.modules import attention_heads, geometry
from costplan.trace.meta import FAST_META, fused_on_meta
from costplan.trace.ops import MacFormula, OpKind, classify, friendly_name, op_macs, op_name, with_overrides



@dataclass
class _NodeDraft:
    """A layer while the trace is still filling it in."""

    name: str
    op: str
    module: str | None
    kind: str
    in_shapes: list[tuple[int, ...]] = field(default_factory=list)
    out_shapes: list[tuple[int, ...]] = field(default_factory=list)
    macs: int = 0
    params: int = 0
    weights_read: int = 0
    weight_bytes: int = 0
    act_in_bytes: int = 0
    act_out_bytes: int = 0
    state_bytes: int = 0
    aten_ops: dict[str, None] = field(default_factory=dict)
    attrs: dict[str, object] = field(default_factory=dict)
    inputs_seen: set[int] = field(default_factory=set)
    params_seen: set[str] = field(default_factory=set)
    param_names: list[str] = field(default_factory=list)   # parameters first read here
    reads: list[str] = field(default_factory=list)         # every parameter read here
    seconds: float = 0.0           # wall time of this layer's kernels, when the trace runs for real
    kernels: int = 0               # aten op calls

    def freeze(self) -> Layer:
        return Layer(
            name=self.name, op=self.op, module=self.module, kind=self.kind,
            in_shapes=tuple(self.in_shapes), out_shapes=tuple(self.out_shapes), macs=self.macs,
            params=self.params, weights_read=self.weights_read, weight_bytes=self.weight_bytes, act_in_bytes=self.act_in_bytes,
            act_out_bytes=self.act_out_bytes, aten_ops=tuple(self.aten_ops), attrs=dict(self.attrs),
            param_names=tuple(self.param_names), reads=tuple(self.reads), kernels=max(1, self.kernels),
            state_bytes=self.state_bytes,
        )


@dataclass
class _Frame:
    module: torch.nn.Module
    name: str
    leaf: bool
    node: _NodeDraft | None = None


_COPIES = {"clone", "_to_copy", "contiguous", "copy"}
_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _tensors(tree: object) -> list[torch.Tensor]:
    """The plain tensors in ``tree``; a nested (ragged) tensor stands for its components."""
    out: list[torch.Tensor] = []
    for t in tree_leaves(tree):
        if isinstance(t, torch.Tensor):
            out += list(t.unbind()) if t.is_nested else [t]
    return out


def _weight_geometry(op: str, weight: torch.Tensor, groups: object) -> dict[str, object]:
    """Geometry of a conv or linear that ran as a bare function (TorchScript, F.conv2d)."""
    if op.startswith("conv") and weight.dim() >= 3:
        g = int(groups) if isinstance(groups, int) else 1
        return {"in_channels": int(weight.shape[1]) * g, "out_channels": int(weight.shape[0]),
                "groups": g, "kernel_size": tuple(int(k) for k in weight.shape[2:])}
    if op == "linear" and weight.dim() == 2:
        # addmm reads the transposed weight (in, out)
        return {"in_features": int(weight.shape[0]), "out_features": int(weight.shape[1])}
    return {}


def _param_owner(param_name: str) -> tuple[str, str]:
    """'layer1.conv.weight' -> ('layer1.conv', 'layer1.conv'); 'attn.in_proj_weight' -> ('attn', 'attn.in_proj')."""
    owner, _, leaf = param_name.rpartition(".")
    if leaf in ("weight", "bias") or not owner:
        base = owner or leaf
    else:
        base = f"{owner}.{leaf.removesuffix('_weight').removesuffix('_bias')}"
    return owner or leaf, base


_POOLS = ("max_pool", "avg_pool")    # windowed pools (adaptive ones are reductions)


def _window(kernel: object, dims: int) -> tuple[int, ...]:
    """A pool's kernel size as a tuple over its ``dims`` spatial dimensions (one int: a square window)."""
    sizes = tuple(int(k) for k in kernel) if isinstance(kernel, (list, tuple)) else (int(kernel),)  # type: ignore[arg-type]
    return sizes * dims if len(sizes) == 1 and dims > 1 else sizes


def _repeatable(func: torch._ops.OpOverload) -> bool:
    """Whether running ``func`` a second time leaves the model's result and state as once does."""
    return not func._schema.is_mutable and torch.Tag.nondeterministic_seeded not in func.tags


def _timed_again(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> float:
    """Seconds of a second call of ``func``, right after its first: in a forward pass an op starts
    with its threads spinning and its inputs just written by the op before it, while the tracer's
    Python between two ops lets the threads sleep (a 64x32x40 ReLU timed 16-26 us traced, 7 us in a
    row)."""
    start = time.perf_counter()
    func(*args, **kwargs)
    return time.perf_counter() - start


def _timed_composite(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> float:
    """Seconds of a composite op (aten.linear, aten.matmul) run whole, as the forward pass runs it:
    its decomposition, run op by op under the tracer, takes the paths composites keep for tensor
    subclasses (DistilBERT's feed-forward linears read 2x slow so: a batched matmul and a separate
    bias add instead of one addmm)."""
    func(*args, **kwargs)
    return _timed_again(func, args, kwargs)


class _Recorder(TorchDispatchMode):
    def __init__(self, model: torch.nn.Module, formulas: Mapping[object, MacFormula], warm: bool = False) -> None:
        self.formulas = formulas
        self.warm = warm
        self.untimed = 0                            # > 0 inside a composite timed whole
        self.last_node: _NodeDraft | None = None    # the node the latest counted op went to
        super().__init__()
        self.names = {id(m): n for n, m in model.named_modules()}
        self.graph = nx.DiGraph()
        self.drafts: list[_NodeDraft] = []
        self.stack: list[_Frame] = []
        self.calls: Counter[str] = Counter()
        self.used_names: set[str] = set()
        self.unsupported: Counter[str] = Counter()
        self.attributed: set[int] = set()  # ids of parameters already owned by a layer
        self.producer: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.constant: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> (name, is_param)
        self.model_inputs: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensors the caller passed in
        self.state: WeakIdKeyDictionary = WeakIdKeyDictionary()  # persistent state (KV cache) and its views
        self.param_by_name = dict(model.named_parameters())
        for name, p in self.param_by_name.items():
            self.constant[p] = (name, True)
        for name, b in model.named_buffers():
            self.constant[b] = (name, False)
        self.channels = Tracker({**dict(model.named_buffers()), **self.param_by_name}, formulas)

    # ---- module hooks -------------------------------------------------------------------------
    def pre_hook(self, module: torch.nn.Module, args: object) -> None:
        name = self.names.get(id(module), type(module).__name__)
        leaf = next(module.children(), None) is None
        self.stack.append(_Frame(module, name, leaf))
        if leaf and isinstance(module, torch.nn.RNNBase):
            self.channels.suspended += 1   # its own rule, at the end of its call

    def post_hook(self, module: torch.nn.Module, args: object, output: object) -> None:
        if not self.stack:
            return
        frame = self.stack.pop()
        if frame.leaf and isinstance(module, torch.nn.RNNBase):
            self.channels.suspended -= 1
            node = self._leaf_node(frame)
            self.channels.recurrent(module, frame.name, node.name, args, output, self.scope())
        if frame.node is not None:
            outs = _tensors(output)
            frame.node.out_shapes = [tuple(t.shape) for t in outs]
            frame.node.act_out_bytes = sum(_nbytes(t) for t in outs)
            self._out_grids(frame.node, outs)

    def scope(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.stack)

    def _out_grids(self, node: _NodeDraft, outs: Sequence[torch.Tensor]) -> None:
        ins = self.channels.node_tensors.setdefault(node.name, ([], []))[0]
        self.channels.node_tensors[node.name] = (ins, [self.channels.grid(t, node.name) for t in outs])

    # ---- nodes --------------------------------------------------------------------------------
    def _unique(self, base: str) -> str:
        name, k = base, 0
        while name in self.used_names:
            k += 1
            name = f"{base}_{k}"
        self.used_names.add(name)
        return name

    def _add(self, draft: _NodeDraft) -> _NodeDraft:
        self.drafts.append(draft)
        self.graph.add_node(draft.name)
        return draft

    def _leaf_node(self, frame: _Frame) -> _NodeDraft:
        if frame.node is None:
            calls = self.calls[frame.name]
            self.calls[frame.name] += 1
            name = frame.name if calls == 0 else f"{frame.name}:{calls}"
            self.used_names.add(name)
            draft = _NodeDraft(name=name, op=type(frame.module).__name__.lower(), module=frame.name,
                               kind="module", attrs=geometry(frame.module))
            weight = getattr(frame.module, "weight", None)
            if isinstance(weight, torch.nn.Parameter):
                own = f"{frame.name}.weight" if frame.name else "weight"
                draft.attrs["weight"] = self.constant.get(weight, (own,))[0]   # a tied weight's own name
                if draft.attrs["weight"] != own:
                    draft.attrs["tied"] = True
            for pname, p in frame.module.named_parameters(prefix=frame.name):
                self._read_param(draft, p, self.constant.get(p, (pname,))[0])   # a tied weight's own name
            frame.node = self._add(draft)
        return frame.node

    def _function_node(self, func: object, ins: Sequence[torch.Tensor], args: Sequence[object]) -> _NodeDraft:
        weights = [t for t in ins if self.constant.get(t, ("", False))[1]]
        weight = max(weights, key=lambda t: t.dim()) if weights else None  # the weight, not the bias
        op = friendly_name(func, tuple(weight.shape) if weight is not None else None)
        attrs: dict[str, object] = {}
        if weight is not None:
            module, base = _param_owner(self.constant[weight][0])
            groups = args[8] if op.startswith("conv") and len(args) > 8 else 1
            attrs = _weight_geometry(op, weight, groups)
            attrs["weight"] = self.constant[weight][0]
            if op == "linear":
                attrs["transposed_weight"] = False  # the parameter is (out, in); addmm read its transpose
        else:
            scope = self.stack[-1].name if self.stack else ""
            module, base = None, f"{scope}.{op}" if scope else op
        return self._add(_NodeDraft(name=self._unique(base), op=op, module=module, kind="function",
                                    attrs=attrs))

    # ---- dispatch -----------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if classify(func, self.formulas) is OpKind.UNKNOWN:
            # an op with no formula may be a composite (aten.linear under inference_mode, which skips
            # the autograd decomposition): run its decomposition, whose ops we count, as FlopCounterMode does
            # timed whole after its decomposition, which runs untimed (and a composite inside it too)
            whole = int(self.warm and not self.untimed and _repeatable(func))
            outer, self.last_node = self.last_node, None
            self.untimed += whole
            try:
                with self:
                    decomposed = func.decompose(*args, **kwargs)
            finally:
                self.untimed -= whole
            if decomposed is not NotImplemented and whole and self.last_node is not None:
                self.last_node.seconds += _timed_composite(func, args, kwargs)
            self.last_node = self.last_node or outer
            if decomposed is not NotImplemented:
                return decomposed
        fast = FAST_META.get(func)
        if fast is not None and not kwargs and args[0].is_meta:
            out = fast(*args)
            elapsed = 0.0
        else:
            start = time.perf_counter()
            out = func(*args, **kwargs)
            elapsed = time.perf_counter() - start
            if self.untimed:
                elapsed = 0.0
            elif self.warm and _repeatable(func):
                elapsed = _timed_again(func, args, kwargs)
        kind = classify(func, self.formulas)
        ins = _tensors((args, kwargs))
        outs = _tensors(out)
        if kind is OpKind.VIEW:
            if ins:
                self._alias(ins[0], outs)
                self.channels.alias(ins[0], outs)
            return out
        if kind is OpKind.SOURCE or not ins:
            return out
        if kind is OpKind.MEMORY and len(ins) == 1 and ins[0] in self.constant and op_name(func) in _COPIES:
            self._alias(ins[0], outs)          # a copy of a weight (einsum's contiguous operand) is the weight
            self.channels.alias(ins[0], outs)
            return out
        frame = next((f for f in reversed(self.stack) if f.leaf), None)
        node = self._leaf_node(frame) if frame is not None else self._function_node(func, ins, args)
        written = ins[0] if self.state.get(ins[0]) and op_name(func).endswith("_") else None
        if written is not None:
            # an in-place write into the cache (index_copy_ of the new tokens' keys) moves the bytes
            # written, not the whole cache; its result is the cache, still state
            ins = ins[1:]
            node.state_bytes += sum(_nbytes(t) for t in ins if t.is_floating_point())
            outs = []
        self._read(node, ins)
        node.seconds += elapsed
        self.last_node = node
        macs = op_macs(func, args, out, self.formulas)
        node.macs += macs
        node.aten_ops[str(func)] = None
        node.kernels += 1
        if op_name(func).startswith(_POOLS) and len(args) > 1 and "kernel_size" not in node.attrs:
            node.attrs["kernel_size"] = _window(args[1], outs[0].dim() - 2 if outs else 1)  # priced by its window
        if kind is OpKind.UNKNOWN:
            self.unsupported[str(func.overloadpacket)] += 1
        self.channels.op(func, args, kwargs, out, node.name, node.module, self.scope(), macs)
        if node.kind == "function":
            node.out_shapes = [tuple(t.shape) for t in outs]
            node.act_out_bytes = sum(_nbytes(t) for t in outs)
            self._out_grids(node, outs)
        for t in outs:
            self.producer[t] = node
        if written is not None:
            self.producer[written] = node
        return out

    def _alias(self, source: torch.Tensor, outs: Sequence[torch.Tensor]) -> None:
        producer = self.producer.get(source)
        constant = self.constant.get(source)
        is_input = self.model_inputs.get(source)
        is_state = self.state.get(source)
        for t in outs:
            if producer is not None:
                self.producer[t] = producer
            if constant is not None:
                self.constant[t] = constant
            if is_input:
                self.model_inputs[t] = True
            if is_state:
                self.state[t] = True

    def _read_param(self, node: _NodeDraft, p: torch.Tensor, name: str, read: torch.Tensor | None = None) -> None:
        """``p`` is read (``read``: the part of it read, one expert's slice of a stacked weight)."""
        read = p if read is None else read
        node.weights_read += read.numel()
        node.weight_bytes += _nbytes(read)
        node.reads.append(name)
        key = id(self._base(p))
        if key not in self.attributed:
            self.attributed.add(key)
            node.params += p.numel()
            node.param_names.append(name)

    def _base(self, t: torch.Tensor) -> torch.Tensor:
        """The parameter a view of a parameter came from (views of one parameter share its owner)."""
        name = self.constant.get(t, (None,))[0]
        return self.param_by_name.get(name, t)

    def _read(self, node: _NodeDraft, ins: Sequence[torch.Tensor]) -> None:
        for t in ins:
            constant = self.constant.get(t)
            if constant is not None:
                name, is_param = constant
                if is_param and node.kind == "function" and name not in node.params_seen:
                    node.params_seen.add(name)
                    base = self.param_by_name.get(name, t)
                    self._read_param(node, base, name, t if t.numel() < base.numel() else base)
                continue
            producer = self.producer.get(t)
            if producer is node or id(t) in node.inputs_seen:
                continue
            if self.model_inputs.get(t):
                node.attrs["reads_input"] = True
            node.inputs_seen.add(id(t))
            node.in_shapes.append(tuple(t.shape))
            if self.state.get(t):   # an expanded view (grouped-query heads repeated) reads the cache once
                node.state_bytes += min(_nbytes(t), t.untyped_storage().nbytes())
            else:
                node.act_in_bytes += _nbytes(t)
            self.channels.node_tensors.setdefault(node.name, ([], []))[0].append(self.channels.grid(t, node.name))
            if producer is not None:
                self.graph.add_edge(producer.name, node.name)


def _set_training(model: torch.nn.Module, training: bool) -> None:
    try:
        model.train(training)
    except NotImplementedError:  # torch.export modules have a fixed mode
        pass


def trace(model: torch.nn.Module, args: Sequence[object] = (), kwargs: Mapping[str, object] | None = None,
          name: str = "model", timings: dict[str, float] | None = None,
          mac_formulas: Mapping[object, MacFormula] | None = None, state: Sequence[torch.Tensor] = (),
          generation: Generation | None = None, notes: Sequence[str] = (), channels: bool = True) -> LayerGraph:
    """Run ``model(*args, **kwargs)`` once under the recorder and return its layer graph.

    The model runs in eval mode without gradients; on meta tensors nothing is computed or allocated.
    With real tensors, ``timings`` (if given) receives each layer's kernel wall time in seconds: the
    time inside its aten ops, without the Python between them, each op that can run twice timed on
    its second call in a row (:func:`_timed_again`). Exceptions from the model's forward
    propagate unchanged. ``mac_formulas`` (aten op -> formula) replaces or adds MAC formulas for this
    trace alone; the graph's analysis under a plan re-evaluates the same formulas. ``state`` are
    tensors that persist between calls (a KV cache): a layer's reads of them, and its in-place writes
    into them (only the bytes written), go to ``Layer.state_bytes``. ``generation`` and ``notes`` are
    recorded on the graph as given. ``channels`` False skips following channels through the ops (the
    graph then has no coupled channel groups): a trace run for its timings alone needs none, and can
    then run under ``torch.inference_mode`` (where attention reaches the tracer whole and following
    its channels through the decomposition took 95 s and 11 GB for one encoder layer).
    """
    kwargs = dict(kwargs or {})
    recorder = _Recorder(model, with_overrides(mac_formulas), warm=timings is not None)
    if not channels:
        recorder.channels.suspended += 1
    for t in _tensors((args, kwargs)):
        recorder.model_inputs[t] = True
    for t in state:
        recorder.state[t] = True
    handles = [
        torch.nn.modules.module.register_module_forward_pre_hook(recorder.pre_hook),
        torch.nn.modules.module.register_module_forward_hook(recorder.post_hook),
    ]
    was_training = model.training
    _set_training(model, False)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)   # the fused encoder kernel hides its layers
    sdpa = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = fused_on_meta(sdpa)   # read at call time by
    # grouped-query attention as one SDPA call that reads each KV head once, as serving kernels run it
    # (transformers' fallbacks copy the cache once per query head, or fold heads into the query axis)
    gqa = os.environ.get(_FORCE_GQA)
    os.environ[_FORCE_GQA] = "1"
    try:                                                                      # HF and nn.MultiheadAttention
        with torch.no_grad(), recorder:
            result = model(*args, **kwargs)
            recorder.channels.outputs(_tensors(result))
    finally:
        if gqa is None:
            os.environ.pop(_FORCE_GQA, None)
        else:
            os.environ[_FORCE_GQA] = gqa
        torch.nn.functional.scaled_dot_product_attention = sdpa
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for h in handles:
            h.remove()
        _set_training(model, was_training)

    if timings is not None:
        timings.update({draft.name: draft.seconds for draft in recorder.drafts})
    graph = nx.DiGraph()
    for draft in recorder.drafts:
        graph.add_node(draft.name, layer=draft.freeze())
    graph.add_edges_from(recorder.graph.edges)
    inputs = _tensors((args, kwargs))
    params = list(model.parameters())
    floating = [t for t in inputs if t.is_floating_point()] or params
    return LayerGraph(
        model=name,
        graph=graph,
        inputs=InputSpec(shapes=tuple(tuple(t.shape) for t in inputs),
                         dtype=str(floating[0].dtype).removeprefix("torch.") if floating else "float32",
                         device=inputs[0].device.type if inputs else "cpu"),
        total_params=sum(p.numel() for p in params),
        total_weight_bytes=sum(_nbytes(p) for p in params),
        unsupported=dict(recorder.unsupported),
        module_names=frozenset(n for n, _ in model.named_modules() if n),
        heads=attention_heads(model),
        channels=recorder.channels.log(),
        generation=generation,
        notes=tuple(notes) + fused_encoder_note(model),
    )


def fused_encoder_note(model: torch.nn.Module) -> tuple[str, ...]:
    """The note for a model with modules PyTorch may run fused at inference (``torch.backends.mha``'s
    fast path: an encoder layer as one op with attention of its own), which the trace turns off to see
    their layers; none for other models."""
    layers = [n for n, m in model.named_modules() if isinstance(m, torch.nn.TransformerEncoderLayer)]
    names = layers + [n for n, m in model.named_modules() if isinstance(m, torch.nn.MultiheadAttention)
                      and not any(n.startswith(f"{e}.") or not e for e in layers)]
    if not names:
        return ()
    shown = listed([n or type(model).__name__ for n in names])
    return (f"PyTorch may run this model's {len(names)} encoder layers or attention modules ({shown}) fused at "
            "inference (torch.backends.mha's fast path: one op per layer, with attention of its own); they "
            "are priced as their separate layers, as they run in training or with the fast path off "
            "(torch.backends.mha.set_fastpath_enabled(False)). Four encoder layers of width 512 ran fused in "
            "0.92-1.11x the separate layers' time on a 2-core EPYC",)
