"""Which entries each pattern keeps, from scores: pure functions, scores in, a boolean keep-mask (or
kept indices) out. The pruner's masks and the planner's sensitivity scan both call them, so what the
planner measured is what the pruner removes.

Weights are viewed as 2-D (outputs x inputs·kernel) for blocks; N:M groups run along the input
channels, as sparse tensor cores read them.
"""

from __future__ import annotations

import math

import torch

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
