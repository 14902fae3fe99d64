"""Sparsity patterns: what each is (:class:`Pattern`), whether it fits a weight, how many weights it
keeps, and which entries it keeps from scores (pure functions, scores in, a boolean keep-mask or kept
indices out). The analysis under a plan, the planner's importance and sensitivity scan and the
pruner's masks all read them here, so what the planner counted is what the pruner removes.

Weights are viewed as 2-D (outputs x inputs·kernel) for blocks; N:M groups run along the input
channels, as sparse tensor cores read them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from costplan.errors import CostplanError

ELEMENTWISE_KINDS = ("unstructured", "nm", "block")


@dataclass(frozen=True)
class Pattern:
    """A sparsity pattern: 'unstructured', 'N:M', 'RxC' blocks, 'channel' or 'head'."""

    kind: str                      # unstructured | nm | block | channel | head
    n: int = 0                     # N:M -> (n, m); RxC -> (rows, cols)
    m: int = 0

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"{self.n}x{self.m}"
        return self.kind

    @property
    def elementwise(self) -> bool:
        """True where zeros stay inside a dense shape (the layer keeps its size)."""
        return self.kind in ELEMENTWISE_KINDS

    def fits(self, shape: Sequence[int]) -> str | None:
        """Why this element-wise pattern cannot apply to a weight of ``shape`` (outputs, inputs, ...),
        or None. N:M groups run along the inputs, as sparse tensor cores read them."""
        if self.kind == "nm" and (len(shape) < 2 or shape[1] % self.m):
            width = shape[1] if len(shape) > 1 else shape[0]
            return f"{self} needs an input width that is a multiple of {self.m}, not {width}"
        if self.kind == "block":
            rows, cols = shape[0], math.prod(shape[1:])
            if rows < self.n or cols < self.m:
                return f"{self} blocks do not fit a {rows}x{cols} weight"
        return None

    def kept(self, shape: Sequence[int], sparsity: float) -> int:
        """Weights of a ``shape`` weight this element-wise pattern keeps at ``sparsity``: the count its
        masks below leave, so analysis and pruning agree exactly."""
        numel = math.prod(shape)
        if sparsity <= 0 or numel == 0:
            return numel
        if self.kind == "unstructured":
            return numel - math.floor(sparsity * numel)
        if self.kind == "nm":
            groups = numel // self.m
            chosen = round(min(1.0, sparsity / (1.0 - self.n / self.m)) * groups)
            return numel - chosen * (self.m - self.n)
        if self.kind == "block":
            rows, cols = shape[0], numel // shape[0]
            blocks = (rows // self.n) * (cols // self.m)
            return numel - math.floor(sparsity * blocks) * self.n * self.m
        raise ValueError(f"not an element-wise pattern: {self}")


def parse_pattern(text: str) -> Pattern:
    """'2:4' -> Pattern('nm', 2, 4); '4x1' -> Pattern('block', 4, 1)."""
    t = text.strip().lower()
    if t in ("unstructured", "channel", "head"):
        return Pattern(t)
    if m := re.fullmatch(r"(\d+):(\d+)", t):
        n, mm = int(m[1]), int(m[2])
        if 0 < n < mm:
            return Pattern("nm", n, mm)
    if m := re.fullmatch(r"(\d+)x(\d+)", t):
        r, c = int(m[1]), int(m[2])
        if r > 0 and c > 0:
            return Pattern("block", r, c)
    raise CostplanError(f"unknown sparsity pattern '{text}': use unstructured, N:M (2:4), "
                        "RxC blocks (4x1), channel or head")




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


def block_sums(scores: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Sums of the whole RxC blocks of the 2-D (outputs, inputs·kernel) view, (rows', cols') shaped;
    rows or columns left over at the edges belong to no block."""
    matrix = scores.flatten(1)
    r, c = matrix.shape[0] - matrix.shape[0] % rows, matrix.shape[1] - matrix.shape[1] % cols
    return matrix[:r, :c].reshape(r // rows, rows, c // cols, cols).sum((1, 3))


def block_mask(scores: torch.Tensor, rows: int, cols: int, sparsity: float) -> torch.Tensor:
    """RxC blocks of the 2-D (outputs, inputs·kernel) view: drop the lowest-sum blocks; rows or
    columns left over at the edges stay dense."""
    matrix = scores.flatten(1)
    sums = block_sums(scores, rows, cols)
    r, c = sums.shape[0] * rows, sums.shape[1] * cols
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
