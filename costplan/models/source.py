"""The records every model source hands on: a built model with its inputs, and how to build one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def example_input(shape: tuple[int, ...], device: str | torch.device, *, below: int | None = None) -> torch.Tensor:
    """An input of ``shape`` that looks like data (seeded, the same every build): standard normal
    floats, or token ids uniform in ``[0, below)``. Not zeros: kernels branch on values, and a network
    fed zeros carries constant maps (a max-pool over one ran 2x as fast here as over ReLU'd data), so
    timing it measures a path real inputs never take. On the meta device, only the shape."""
    dtype = torch.float32 if below is None else torch.long
    if torch.device(device).type == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(shape, generator=generator) if below is None else torch.randint(0, below, shape, generator=generator)
    return data.to(device)


@dataclass(frozen=True)
class Instance:
    """A built model with the inputs to call it with."""

    module: torch.nn.Module
    args: tuple[object, ...]
    kwargs: dict[str, object] = field(default_factory=dict)
    state: tuple[torch.Tensor, ...] = ()   # tensors that persist between calls (a KV cache)
    generation: object = None              # trace.Generation: the generation pass these inputs run
    notes: tuple[str, ...] = ()            # how the build made the model countable (MoE routing)


@dataclass(frozen=True)
class ModelSource:
    """A model that can be built on a device, with its example input.

    ``build(device)`` returns a fresh :class:`Instance`; ``meta`` says whether building on the meta
    device is worth trying (saved files hold real weights).
    """

    name: str
    family: str
    build: Callable[[str], Instance]
    meta: bool = True
    weights: str | None = None     # the state dict file its builds load (None: initial weights)
    pruned: object = None          # a file costplan.save wrote: its models.saved.Provenance
    cpu_fallback: bool = True      # whether a model the meta device cannot run may be built on the CPU
