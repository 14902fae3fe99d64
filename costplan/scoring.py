"""Which weights matter: per-weight importance scores (higher = keep), one definition per name.

The planner's importance (:mod:`costplan.planning.importance`) and the pruner's masks
(:mod:`costplan.pruning.pruner`) both score weights here, so a criterion means the same in ``plan``
and ``prune``: ``magnitude`` is the squared weight (a channel's sum is its squared L2 norm, the
ranking of Torch-Pruning's ``MagnitudeImportance``), ``l1`` the absolute weight.

Weight-only criteria read the weights when masks are computed. Gradient criteria accumulate from
each step's gradients (:meth:`Criterion.accumulate`, called after backward and before the optimiser
step) and need at least one such step before they can rank; :func:`collect_scores` runs those steps
on calibration batches for the planner.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Iterable
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
    """Squared magnitude, w^2: what ``magnitude`` means everywhere in costplan."""

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


CRITERIA = {"magnitude": L2, "l1": L1, "l2": L2, "random": Random, "gradient": Gradient, "taylor": Taylor,
            "movement": Movement, "snip_momentum": SnipMomentum, "snip-momentum": SnipMomentum}


def make_criterion(criterion: str | Criterion) -> Criterion:
    """A criterion from its name (magnitude = l2) or as given."""
    if isinstance(criterion, Criterion):
        return criterion
    key = str(criterion).lower()
    if key not in CRITERIA:
        raise CostplanError(f"unknown criterion '{criterion}': use {', '.join(CRITERIA)}."
                            f"{close_names(key, list(CRITERIA))}")
    return CRITERIA[key]()


def collect_scores(module: torch.nn.Module, params: Iterable[str], criterion: str | Criterion = "magnitude",
                   batches: Iterable[object] | None = None,
                   loss_fn: Callable[[torch.nn.Module, object], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per-element scores of the named parameters of ``module`` by ``criterion``, keyed by parameter
    name in the parameter's own layout; parameters on the meta device are left out.

    A gradient criterion takes one step per batch of ``batches`` (``loss_fn(module, batch)`` returns a
    scalar loss) through :meth:`Criterion.accumulate`, exactly as the pruner feeds it during training;
    the module's own ``.grad`` fields and training mode are restored. The criterion is used fresh."""
    crit = dataclasses.replace(make_criterion(criterion), state={})
    wanted = {}
    for name in params:
        try:
            p = module.get_parameter(name)
        except AttributeError:
            continue
        if not p.is_meta:
            wanted[name] = p
    if crit.needs_grad:
        if batches is None or loss_fn is None:
            raise CostplanError(f"criterion '{crit.name}' needs gradients: give calibration batches and a loss")
        _accumulate(module, wanted, crit, batches, loss_fn)
    out = {}
    for name, p in wanted.items():
        s = crit.scores(name, p.detach(), 0)
        if s is not None:
            out[name] = s.float()
    return out


def _accumulate(module: torch.nn.Module, wanted: dict[str, torch.Tensor], crit: Criterion,
                batches: Iterable[object], loss_fn: Callable[[torch.nn.Module, object], torch.Tensor]) -> None:
    everything = list(module.parameters())
    saved = [p.grad.clone() if p.grad is not None else None for p in everything]
    was_training = module.training
    module.eval()
    try:
        for batch in batches:
            for p in everything:
                p.grad = None
            loss_fn(module, batch).backward()
            for name, p in wanted.items():
                if p.grad is not None:
                    crit.accumulate(name, p.detach().float(), p.grad.float())
    finally:
        for p, grad in zip(everything, saved):
            p.grad = grad
        module.train(was_training)
