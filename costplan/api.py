"""The public API the CLI and notebooks call: one call per question."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from costplan.errors import CostplanError
from costplan.models import Instance, ModelSource, instantiate, parse_shapes, resolve
from costplan.planfile import Plan, load_plan
from costplan.report import Report, build_report
from costplan.trace import LayerGraph, trace

Shape = tuple[int, ...]
ModelLike = str | torch.nn.Module


def _shapes(input: str | Sequence[int] | Sequence[Sequence[int]] | None) -> tuple[Shape, ...] | None:
    if input is None:
        return None
    if isinstance(input, str):
        return parse_shapes(input)
    if all(isinstance(d, int) for d in input):
        return (tuple(input),)  # type: ignore[arg-type]
    return tuple(tuple(s) for s in input)  # type: ignore[union-attr]


def _describe(instance: Instance) -> str:
    shapes = [tuple(t.shape) for t in [*instance.args, *instance.kwargs.values()] if isinstance(t, torch.Tensor)]
    return ", ".join("x".join(map(str, s)) for s in shapes) or "no tensors"


def _trace_source(source: ModelSource) -> LayerGraph:
    if source.meta:
        try:
            inst = instantiate(source, "meta")
            return trace(inst.module, inst.args, inst.kwargs, name=source.name)
        except CostplanError:
            raise
        except Exception:  # noqa: BLE001  constructors or forwards that need real data: retry below
            pass
    inst = instantiate(source, "cpu")
    try:
        return trace(inst.module, inst.args, inst.kwargs, name=source.name)
    except Exception as exc:  # noqa: BLE001  the user's model failed: say how, with the input used
        raise CostplanError(f"{source.name}: forward failed on input {_describe(inst)}: "
                            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                            ) from exc


def load_graph(model: ModelLike, *, input: str | Sequence | None = None, batch: int | None = None,
               seq_len: int | None = None, dtype: str = "float32", trust_pickle: bool = False,
               example_inputs: Sequence[object] | None = None) -> LayerGraph:
    """Trace ``model`` into a :class:`LayerGraph`.

    ``model`` is a spec string (``resnet50``, ``hf:bert-base``, ``file.py:factory``, a saved file) or
    an ``nn.Module``, which is called with ``example_inputs`` or zeros of ``input``'s shape and is
    not modified. Spec models are built on the meta device when possible (no weights allocated).
    """
    if isinstance(model, torch.nn.Module):
        if example_inputs is None:
            shapes = _shapes(input)
            if shapes is None:
                raise CostplanError("give example_inputs or input= (a shape) to trace a module")
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            example_inputs = tuple(torch.zeros(s, device=device) for s in shapes)
        return trace(model, tuple(example_inputs), name=type(model).__name__)
    source = resolve(model, input_shapes=_shapes(input), batch=batch, seq_len=seq_len, dtype=dtype,
                     trust=trust_pickle)
    return _trace_source(source)


def _plan(plan: Plan | str | os.PathLike[str] | None) -> Plan | None:
    return load_plan(plan) if isinstance(plan, (str, os.PathLike)) else plan


def analyze(model: ModelLike | LayerGraph, *, plan: Plan | str | None = None, **kwargs: object) -> Report:
    """Per-layer MACs, parameters, bytes and reuse of ``model``, under ``plan`` if given.

    ``kwargs`` go to :func:`load_graph` (input, batch, seq_len, dtype, trust_pickle, example_inputs).
    """
    graph = model if isinstance(model, LayerGraph) else load_graph(model, **kwargs)  # type: ignore[arg-type]
    return build_report(graph, _plan(plan))
