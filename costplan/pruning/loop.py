"""A plain training loop with the pruner's hooks: what ``costplan prune --train`` runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from rich.progress import Progress

from costplan.pruning.pruner import Pruner

LossFn = Callable[[torch.nn.Module, object], torch.Tensor]


def cross_entropy(model: torch.nn.Module, batch: object) -> torch.Tensor:
    """The default loss: cross entropy of ``model(inputs)`` against ``targets`` for (inputs, targets) batches."""
    x, y = batch  # type: ignore[misc]
    return torch.nn.functional.cross_entropy(model(x), y)


def train_while_pruning(pruner: Pruner, batches: Iterable[object], steps: int, *, lr: float = 0.01,
                        loss_fn: LossFn = cross_entropy, progress: bool = True) -> None:
    """``steps`` of SGD (momentum 0.9) over ``batches`` (cycled), calling the pruner's hooks."""
    model = pruner.model
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    pruner.on_train_begin()
    source = iter(batches)
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("pruning while training", total=steps)
        for step in range(steps):
            try:
                batch = next(source)
            except StopIteration:
                source = iter(batches)
                batch = next(source)
            pruner.on_step_begin(step)
            loss_fn(model, batch).backward()
            pruner.on_before_optimizer_step()
            optimizer.step()
            optimizer.zero_grad()
            pruner.on_after_optimizer_step()
            bar.advance(task)
    pruner.on_train_end()
    model.eval()
