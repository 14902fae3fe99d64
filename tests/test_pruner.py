"""The pruner's checkpoints (costplan/pruning/pruner.py): a run saved halfway and resumed in a new
process ends with the masks an uninterrupted run ends with."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from torch import nn

from costplan.planfile import LayerPlan, Plan
from costplan.patterns import parse_pattern
from costplan.pruning.pruner import Pruner
from costplan.pruning.schedule import Schedule

STEPS = 8


def _setup() -> tuple[nn.Module, Pruner, torch.optim.Optimizer, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    plan = Plan({"0": LayerPlan(0.5, parse_pattern("channel")), "2": LayerPlan(0.6, parse_pattern("unstructured"))})
    # taylor accumulates gradients between pruning steps: its state must survive the checkpoint too
    pruner = Pruner(model, plan, criterion="taylor", input="4x12",
                    schedule=Schedule(start_step=1, end_step=STEPS - 1, frequency=2, decay="linear"))
    pruner.on_train_begin()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 12, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(STEPS)]
    return model, pruner, optimizer, data


def _train(model: nn.Module, pruner: Pruner, optimizer: torch.optim.Optimizer, data: list, steps: range) -> None:
    for step in steps:
        pruner.on_step_begin(step)
        x, y = data[step]
        nn.functional.cross_entropy(model(x), y).backward()
        pruner.on_before_optimizer_step()
        optimizer.step()
        optimizer.zero_grad()
        pruner.on_after_optimizer_step()


def resume(checkpoint: str, out: str) -> None:
    """Run in a fresh process: rebuild, load the checkpoint, train the second half, save the masks."""
    model, pruner, optimizer, data = _setup()
    saved = torch.load(checkpoint, weights_only=True)
    pruner.load_state_dict(saved["pruner"])
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    _train(model, pruner, optimizer, data, range(STEPS // 2, STEPS))
    torch.save(pruner.masks(), out)


def test_a_run_saved_halfway_and_resumed_in_a_new_process_ends_with_the_same_masks(tmp_path) -> None:
    model, pruner, optimizer, data = _setup()
    _train(model, pruner, optimizer, data, range(STEPS))
    uninterrupted = pruner.masks()

    model, pruner, optimizer, data = _setup()
    _train(model, pruner, optimizer, data, range(STEPS // 2))
    assert pruner.criterion.state and pruner.kept        # halfway: pruned once, scores accumulating
    checkpoint, out = tmp_path / "halfway.pt", tmp_path / "masks.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "pruner": pruner.state_dict()},
               checkpoint)
    here = os.path.dirname(os.path.abspath(__file__))
    code = f"import sys; sys.path.insert(0, {here!r}); import test_pruner; test_pruner.resume({str(checkpoint)!r}, {str(out)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    resumed = torch.load(out, weights_only=True)

    assert set(resumed) == set(uninterrupted)
    assert any(not m.all() for m in uninterrupted.values())
    for name, mask in uninterrupted.items():
        assert torch.equal(resumed[name], mask), name


def test_a_state_from_another_criterion_is_refused() -> None:
    _, pruner, _, _ = _setup()
    state = pruner.state_dict()
    state["criterion"]["name"] = "movement"
    try:
        pruner.load_state_dict(state)
    except Exception as exc:   # noqa: BLE001
        assert "movement" in str(exc)
    else:
        raise AssertionError("a state saved with another criterion was accepted")
