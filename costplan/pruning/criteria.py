"""Which weights matter: per-weight importance scores (higher = keep).

Weight-only criteria read the weights when masks are computed. Gradient criteria accumulate from
each step's gradients (:meth:`Criterion.accumulate`, called after backward and before the optimiser
step) and need at least one such step before they can rank.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch

from costplan.errors import CostplanError, close_names


@dataclass
class Criterion:
    """Base criterion: scores by weight alone (``needs_grad`` False) or by accumulated gradients."""

    name: str = "criterion"
    needs_grad: bool = False
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    def accumulate(self, key: str, weight: torch.Tensor, grad: torch.Tensor) -> None:
        """Take one step's gradient of the (masked) weight ``key``."""

    def scores(self, key: str, weight: torch.Tensor, step: int) -> torch.Tensor | None:
        """Per-weight importance of ``weight``; None when a gradient criterion has seen no step."""
        raise NotImplementedError

    def _update(self, key: str, value: torch.Tensor, decay: float = 1.0) -> None:
        old = self.state.get(key)
        self.state[key] = value if old is None else old * decay + value


@dataclass
class L1(Criterion):
    name: str = "l1"

    def scores(self, key: str, weight: torch.Tensor, step: int) -> torch.Tensor:
        return weight.detach().abs()


@dataclass
class L2(Criterion):
    name: str = "l2"

    def scores(self, key: str, weight: torch.Tensor, step: int) -> torch.Tensor:
        return weight.detach().pow(2)   # sums over a channel give its squared L2 norm: same ranking


@dataclass
class Random(Criterion):
    """Uniform random scores from a generator seeded by (seed, step): the same on every rank."""

    name: str = "random"
    seed: int = 0

    def scores(self, key: str, weight: torch.Tensor, step: int) -> torch.Tensor:
        # crc32, not hash(): Python salts str hashes per process, and ranks must agree
        g = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{step}:{key}".encode()))
        return torch.rand(weight.shape, generator=g).to(weight.device)


@dataclass
class _Accumulating(Criterion):
    needs_grad: bool = True

    def scores(self, key: str, weight: torch.Tensor, step: int) -> torch.Tensor | None:
        return self.state.get(key)


@dataclass
class Gradient(_Accumulating):
    """Accumulated |dL/dW|."""

    name: str = "gradient"

    def accumulate(self, key: str, weight: torch.Tensor, grad: torch.Tensor) -> None:
        self._update(key, grad.detach().abs())


@dataclass
class Taylor(_Accumulating):
    """First-order Taylor: accumulated |W * dL/dW| (Molchanov et al., 2019)."""

    name: str = "taylor"

    def accumulate(self, key: str, weight: torch.Tensor, grad: torch.Tensor) -> None:
        self._update(key, (weight.detach() * grad.detach()).abs())


@dataclass
class Movement(_Accumulating):
    """Movement pruning: accumulated -W * dL/dW; weights moving away from zero score high
    (Sanh et al., 2020)."""

    name: str = "movement"

    def accumulate(self, key: str, weight: torch.Tensor, grad: torch.Tensor) -> None:
        self._update(key, -(weight.detach() * grad.detach()))


@dataclass
class SnipMomentum(_Accumulating):
    """SNIP with momentum, as Intel Neural Compressor does it: score = alpha * score + beta * |W * G|."""

    name: str = "snip_momentum"
    alpha: float = 0.9
    beta: float = 1.0

    def accumulate(self, key: str, weight: torch.Tensor, grad: torch.Tensor) -> None:
        self._update(key, self.beta * (weight.detach() * grad.detach()).abs(), decay=self.alpha)


CRITERIA = {"magnitude": L1, "l1": L1, "l2": L2, "random": Random, "gradient": Gradient, "taylor": Taylor,
            "movement": Movement, "snip_momentum": SnipMomentum, "snip-momentum": SnipMomentum}


def make_criterion(criterion: str | Criterion) -> Criterion:
    """A criterion from its name (magnitude = L1) or as given."""
    if isinstance(criterion, Criterion):
        return criterion
    key = str(criterion).lower()
    if key not in CRITERIA:
        raise CostplanError(f"unknown criterion '{criterion}': use {', '.join(CRITERIA)}."
                            f"{close_names(key, list(CRITERIA))}")
    return CRITERIA[key]()
