"""A plain training loop with the pruner's hooks: what ``costplan prune --train`` runs, saying as it goes
the loss, the sparsity reached and (given evaluation batches) the accuracy."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from costplan.progress import progress as bar
from costplan.pruning.pruner import Pruner

LossFn = Callable[[torch.nn.Module, object], torch.Tensor]
Log = Callable[[str], None]


def cross_entropy(model: torch.nn.Module, batch: object) -> torch.Tensor:
    """The default loss: cross entropy of ``model(inputs)`` against ``targets`` for (inputs, targets) batches."""
    x, y = batch  # type: ignore[misc]
    return torch.nn.functional.cross_entropy(model(x), y)


@dataclass(frozen=True)
class Evaluation:
    """Mean loss and top-1 accuracy (None when the targets are not class indices) over some batches."""

    loss: float
    accuracy: float | None
    samples: int

    def __str__(self) -> str:
        acc = f", accuracy {self.accuracy:.2%}" if self.accuracy is not None else ""
        return f"eval loss {self.loss:.4f}{acc} ({self.samples} samples)"


def evaluate(model: torch.nn.Module, batches: Iterable[object], loss_fn: LossFn = cross_entropy) -> Evaluation:
    """Loss and accuracy of ``model`` in eval mode over (inputs, targets) ``batches``; the mode is restored.
    One forward pass per batch: the accuracy is read off the outputs the loss's own call produced."""
    was_training = model.training
    model.eval()
    total, correct, samples, counted = 0.0, 0, 0, True
    outputs: list[object] = []
    handle = model.register_forward_hook(lambda module, args, out: outputs.append(out))
    try:
        with torch.no_grad():
            for batch in batches:
                _, y = batch  # type: ignore[misc]
                outputs.clear()
                n = len(y)
                total += float(loss_fn(model, batch)) * n
                samples += n
                out = outputs[-1] if outputs else None
                if (counted and isinstance(y, torch.Tensor) and y.dtype in (torch.int64, torch.int32) and y.dim() == 1
                        and isinstance(out, torch.Tensor) and out.dim() == 2 and len(out) == n):
                    correct += int((out.argmax(-1) == y).sum())
                else:
                    counted = False
    finally:
        handle.remove()
        model.train(was_training)
    return Evaluation(total / max(samples, 1), correct / samples if counted and samples else None, samples)


@dataclass(frozen=True)
class Checkpoint:
    """One progress report of a training run: the step reached, the mean training loss since the last
    report, the share of the plan's sparsity the schedule has applied, the share of zeros now in the
    masked tensors, and the evaluation, if batches were given."""

    step: int
    steps: int
    loss: float
    scheduled: float
    zeros: float
    evaluation: Evaluation | None = None

    def __str__(self) -> str:
        line = (f"step {self.step}/{self.steps}: train loss {self.loss:.4f}; schedule at {self.scheduled:.0%} of "
                f"the plan's sparsity, {self.zeros:.1%} of the masked tensors' entries zero")
        return line + (f"; {self.evaluation}" if self.evaluation else "")


def masked_zeros(pruner: Pruner) -> float:
    """Share of zeros over every tensor the pruner masks (by element count)."""
    masks = pruner.masks()
    total = sum(m.numel() for m in masks.values())
    return sum(int((m == 0).sum()) for m in masks.values()) / total if total else 0.0


def train_while_pruning(pruner: Pruner, batches: Iterable[object], steps: int, *, lr: float = 0.01,
                        loss_fn: LossFn = cross_entropy, progress: bool = True, eval_data: Iterable[object] | None = None,
                        report_every: int | None = None, log: Log | None = None) -> list[Checkpoint]:
    """``steps`` of SGD (momentum 0.9) over ``batches`` (cycled), calling the pruner's hooks. Every
    ``report_every`` steps (default: ten reports) and at the end, a :class:`Checkpoint` is made and
    handed to ``log`` as a line (with ``eval_data``, after an evaluation on it)."""
    model = pruner.model
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    every = report_every or max(1, steps // 10)
    model.train()
    pruner.on_train_begin()
    source, losses, reports = iter(batches), [], []
    # in a terminal, the bar and the reports; elsewhere the reports are the progress lines
    terminal = progress and sys.stderr.isatty()
    with bar("pruning while training (steps)", steps, terminal) as advance:
        for step in range(steps):
            try:
                batch = next(source)
            except StopIteration:
                source = iter(batches)
                batch = next(source)
            pruner.on_step_begin(step)
            loss = loss_fn(model, batch)
            loss.backward()
            losses.append(float(loss))
            pruner.on_before_optimizer_step()
            optimizer.step()
            optimizer.zero_grad()
            pruner.on_after_optimizer_step()
            advance()
            if (step + 1) % every == 0 or step + 1 == steps:
                point = Checkpoint(step + 1, steps, sum(losses) / len(losses), pruner.schedule.progress(step),
                                   masked_zeros(pruner), evaluate(model, eval_data, loss_fn) if eval_data else None)
                reports.append(point)
                losses = []
                if log is not None:
                    log(str(point))
    pruner.on_train_end()
    model.eval()
    return reports
