"""The records every model source hands on: a built model with its inputs, and how to build one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# sets of token ids a model is called on in turn when timed (Instance.call): more rows than the
# last-level cache holds, so that a lookup reads its rows cold, as a served model's new tokens do
FRESH_INPUTS = 8


def is_token_ids(x: object) -> bool:
    """Whether an input is token ids: an integer tensor of at least (batch, tokens) whose ids reach
    past 1; masks (0/1), lengths and offsets (one dimension) are not."""
    return (isinstance(x, torch.Tensor) and not x.is_floating_point() and not x.is_complex() and x.dim() >= 2
            and x.dtype != torch.bool and x.device.type != "meta" and x.numel() > 0 and int(x.max()) > 1)


def fresh_inputs(args: tuple[object, ...], kwargs: dict[str, object], count: int = FRESH_INPUTS
                 ) -> tuple[tuple[tuple[object, ...], dict[str, object]], ...]:
    """``count`` copies of (args, kwargs) whose token ids (:func:`is_token_ids`) are drawn anew,
    uniform below the given ids' largest + 1, seeded; just the inputs given where none are token ids.
    A model called again on the same ids finds an embedding's rows in cache: an embedding-bag
    classifier (a 100,000 x 256 table, 64 x 128 ids) looked up in 0.26 ms on the same ids, 0.62 ms on
    new ones, 0.8-0.9 ms with a cache's worth read in between, as the rest of a forward pass reads."""
    if not any(map(is_token_ids, (*args, *kwargs.values()))):
        return ((args, kwargs),)
    generator = torch.Generator().manual_seed(0)

    def fresh(x: object) -> object:
        if not is_token_ids(x):
            return x
        return torch.randint(0, int(x.max()) + 1, x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return tuple((tuple(map(fresh, args)), {k: fresh(v) for k, v in kwargs.items()}) for _ in range(count))


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
    _inputs: tuple = field(init=False, repr=False, compare=False)
    _turn: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_inputs", fresh_inputs(self.args, self.kwargs))
        object.__setattr__(self, "_turn", [0])

    def call(self) -> object:
        """Call the model once as a served model runs, on the next of its :func:`fresh_inputs`: new
        token ids each call, the same tensors otherwise."""
        args, kwargs = self._inputs[self._turn[0] % len(self._inputs)]
        self._turn[0] += 1
        return self.module(*args, **kwargs)


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
