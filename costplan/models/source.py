"""The records every model source hands on: a built model with its inputs, and how to build one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Instance:
    """A built model with the inputs to call it with."""

    module: torch.nn.Module
    args: tuple[object, ...]
    kwargs: dict[str, object] = field(default_factory=dict)


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
