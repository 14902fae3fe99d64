"""Masks as parametrizations (as ``torch.ao.pruning`` does); which entries a pattern keeps is
:mod:`costplan.patterns`."""

from __future__ import annotations

import copy

import torch
from torch.nn.utils import parametrize

from costplan.patterns import (  # noqa: F401  (re-exported: the pruner's mask functions)
    best,
    block_mask,
    drop_lowest,
    elementwise_mask,
    nm_mask,
    unstructured_mask,
)


class Mask(torch.nn.Module):
    """A parametrization that multiplies a tensor by a fixed mask (a buffer, saved and moved with
    the module). Masked entries get zero gradient through it."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


def attach(module: torch.nn.Module, name: str) -> Mask:
    """Mask ``module.<name>`` (all ones to start); the existing mask if it has one."""
    if parametrize.is_parametrized(module, name):
        for p in module.parametrizations[name]:
            if isinstance(p, Mask):
                return p
    tensor = getattr(module, name)
    mask = Mask(torch.ones_like(tensor, dtype=tensor.dtype))
    parametrize.register_parametrization(module, name, mask)
    return mask


def original(module: torch.nn.Module, name: str) -> torch.Tensor:
    """The unmasked tensor behind a masked parameter (or the parameter itself)."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name)


def detach_all(model: torch.nn.Module) -> None:
    """Fold every mask into its tensor (zeros stay) and remove the parametrizations."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)


def folded_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with its masks folded in; ``model`` keeps them."""
    out = copy.deepcopy(model)
    detach_all(out)
    return out
