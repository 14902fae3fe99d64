"""Masks for each pattern, from scores, and masks as parametrizations (as ``torch.ao.pruning`` does).

All functions are pure: scores in, a boolean keep-mask (or kept indices) out. Weights are viewed as
2-D (outputs x inputs·kernel) for blocks; N:M groups run along the input channels, as sparse tensor
cores read them.
"""

from __future__ import annotations

import copy
import math

import torch
from torch.nn.utils import parametrize

from costplan.planfile import Pattern


def _lowest(values: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the ``count`` lowest entries of a 1-D tensor (ties broken by position)."""
    drop = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    if count > 0:
        drop[torch.argsort(values.flatten(), stable=True)[:count]] = True
    return drop


def unstructured_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep all but the floor(sparsity x numel) lowest-scoring weights."""
    return drop_lowest(scores, math.floor(sparsity * scores.numel()))


def drop_lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Keep all but the ``count`` lowest-scoring entries."""
    return ~_lowest(scores, count).view(scores.shape)


def _nm_rows(scores: torch.Tensor) -> torch.Tensor:
    """(outputs x kernel positions, input channels): N:M groups run along the input channels."""
    return scores.movedim(1, -1).reshape(-1, scores.shape[1]) if scores.dim() > 2 else scores


def nm_mask(scores: torch.Tensor, n: int, m: int, sparsity: float) -> torch.Tensor:
    """N:M: in each group of ``m`` consecutive input weights keep the ``n`` best. Below the full
    N:M sparsity (1 - n/m), only the groups where N:M loses least score are pruned."""
    rows = _nm_rows(scores)
    groups = rows.reshape(rows.shape[0], -1, m)                       # (rows, groups, m)
    order = torch.argsort(groups, dim=-1, stable=True)
    drop = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order[..., : m - n], True)
    loss = (groups * drop).sum(-1).flatten()                          # score lost by each group
    share = min(1.0, sparsity / (1.0 - n / m))
    chosen = _lowest(loss, round(share * loss.numel())).view(groups.shape[:2])
    keep = ~(drop & chosen[..., None])
    keep = keep.reshape(rows.shape)
    if scores.dim() > 2:
        moved = scores.movedim(1, -1).shape
        keep = keep.reshape(moved).movedim(-1, 1)
    return keep.contiguous()


def block_mask(scores: torch.Tensor, rows: int, cols: int, sparsity: float) -> torch.Tensor:
    """RxC blocks of the 2-D (outputs, inputs·kernel) view: drop the lowest-sum blocks; rows or
    columns left over at the edges stay dense."""
    matrix = scores.flatten(1)
    r, c = matrix.shape[0] - matrix.shape[0] % rows, matrix.shape[1] - matrix.shape[1] % cols
    sums = matrix[:r, :c].reshape(r // rows, rows, c // cols, cols).sum((1, 3))
    drop = _lowest(sums, math.floor(sparsity * sums.numel())).view(sums.shape)
    keep = torch.ones_like(matrix, dtype=torch.bool)
    keep[:r, :c] = ~drop.repeat_interleave(rows, 0).repeat_interleave(cols, 1)
    return keep.view(scores.shape)


def elementwise_mask(scores: torch.Tensor, pattern: Pattern, sparsity: float) -> torch.Tensor:
    """The keep-mask of one weight under an element-wise ``pattern`` at ``sparsity``."""
    if pattern.kind == "unstructured":
        return unstructured_mask(scores, sparsity)
    if pattern.kind == "nm":
        return nm_mask(scores, pattern.n, pattern.m, sparsity)
    if pattern.kind == "block":
        return block_mask(scores, pattern.n, pattern.m, sparsity)
    raise ValueError(f"not an element-wise pattern: {pattern}")


def best(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Sorted indices of the ``count`` highest ``scores`` (ties broken by position)."""
    return torch.sort(torch.argsort(scores, descending=True, stable=True)[:count]).values


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
