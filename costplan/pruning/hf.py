"""The pruner's hooks as a Hugging Face ``TrainerCallback`` (needs transformers)."""

from __future__ import annotations

from typing import Any

from costplan.pruning.pruner import Pruner


def trainer_callback(pruner: Pruner) -> Any:
    """A ``transformers.TrainerCallback`` that drives ``pruner`` from ``Trainer``'s loop:
    ``Trainer(..., callbacks=[costplan.trainer_callback(pruner)])``."""
    from transformers import TrainerCallback

    class CostplanPruning(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            pruner.on_train_begin()

        def on_step_begin(self, args, state, control, **kwargs):
            pruner.on_step_begin(state.global_step)

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            pruner.on_before_optimizer_step()

        def on_optimizer_step(self, args, state, control, **kwargs):
            pruner.on_after_optimizer_step()

        def on_train_end(self, args, state, control, **kwargs):
            pruner.on_train_end()

    return CostplanPruning()
