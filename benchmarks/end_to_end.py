"""The whole promise on real data: plan for this CPU, prune while fine-tuning, compact, measure.

    python benchmarks/end_to_end.py            # about 5 minutes on 2 cores

scikit-learn's digits (1,797 8x8 images, shipped with the package) upsampled to 16x16; a small
residual CNN (3 stages of 2 basic blocks, 32/64/128 channels) trained from scratch. The local CPU is
calibrated; budgets are 70%, 50% and 35% of the dense model's *measured* latency at batch 32, planned
as speedups (1/0.7x, 2x, 1/0.35x) so the profile's absolute error on this model does not move them;
a budget is met when the compacted model's measured latency is within it. Three
ways to reach each budget, each fine-tuned for the same steps with distillation from the dense model:

- costplan: the planner's per-layer channel ratios, pruned gradually (Taylor criterion, AGP cube schedule);
- uniform: one channel ratio for every prunable group, the smallest whose predicted latency matches
  costplan's plan, pruned the same way;
- Torch-Pruning: global L2-magnitude pruning (MetaPruner, global_pruning=True) at the MACs of
  costplan's compacted model (its ratio found by bisection), pruned in one shot before the same
  fine-tuning: pruning in steps between fine-tuning re-ranks globally and lands at other MACs.

For each: test accuracy, measured latency (round-robin medians), and whether the budget was met.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from small_resnet import SmallResNet, accuracy, batches
from torch import nn

import costplan
from costplan.hardware import load_profile
from costplan.hardware.calibrate import calibrate
from costplan.measure import time_round_robin
from costplan.models import Instance
from costplan.planfile import Plan

warnings.filterwarnings("ignore")
BATCH = 32
INPUT = f"{BATCH}x1x16x16"


class DigitsNet(SmallResNet):
    """A small ResNet for 16x16 digits."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__(2, widths, 3)


def data() -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    y = torch.tensor(digits.target)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.25, random_state=0, stratify=y)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def train_dense(x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    model = DigitsNet()
    steps = epochs * (len(y) // BATCH)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=steps)
    model.train()
    for xb, yb in batches(x, y, epochs, 0, BATCH):
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    return model.eval()


def fine_tune(student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int,
              on_step=None, pruner=None) -> None:
    """SGD with distillation (T=4, half KL, half cross-entropy); the pruner's hooks if given."""
    opt = torch.optim.SGD(student.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    student.train()
    if pruner is not None:
        pruner.on_train_begin()
    for step, (xb, yb) in enumerate(batches(x, y, epochs, 1, BATCH)):
        if pruner is not None:
            pruner.on_step_begin(step)
        if on_step is not None:
            on_step(step)
        logits = student(xb)
        with torch.no_grad():
            soft = F.softmax(teacher(xb) / 4.0, 1)
        loss = 0.5 * F.cross_entropy(logits, yb) + 0.5 * 16.0 * F.kl_div(F.log_softmax(logits / 4.0, 1), soft,
                                                                          reduction="batchmean")
        loss.backward()
        if pruner is not None:
            pruner.on_before_optimizer_step()
        opt.step()
        opt.zero_grad()
        if pruner is not None:
            pruner.on_after_optimizer_step()
    student.eval()


def measure(models: dict[str, nn.Module], rounds: int = 7, repeat: int = 5) -> dict[str, float]:
    """Median ms per batch-32 forward, models interleaved round by round (the VM's speed drifts)."""
    x = torch.randn(BATCH, 1, 16, 16)
    runs = time_round_robin({k: Instance(m, (x,)) for k, m in models.items()}, rounds, repeat, warmup=5)
    return {k: statistics.median(v) * 1e3 for k, v in runs.items()}


def uniform_plan(graph, ratio: float) -> Plan:
    return costplan.uniform_plan(graph, "channel", ratio)


def bisect(fits, lo: float = 0.0, hi: float = 0.9, steps: int = 14) -> float:
    """The largest x in [lo, hi] for which fits(x) is False ... the smallest with fits(x) True."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="dense training epochs")
    parser.add_argument("--ft-epochs", type=int, default=8, help="fine-tuning epochs while pruning")
    parser.add_argument("--hw", help="a calibrated profile; default: calibrate now")
    args = parser.parse_args()
    start = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    import torch_pruning as tp

    xtr, ytr, xte, yte = data()
    dense = train_dense(xtr, ytr, args.epochs)
    print(f"dense DigitsNet: test accuracy {accuracy(dense, xte, yte):.2%} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    profile = load_profile(args.hw) if args.hw else calibrate(progress=False).profile()
    graph = costplan.load_graph(dense, input=INPUT)
    dense_ms = measure({"dense": dense})["dense"]
    predicted_dense = costplan.estimate_latency(graph, profile).latency_s * 1e3
    print(f"dense latency at batch {BATCH}: measured {dense_ms:.2f} ms, predicted {predicted_dense:.2f} ms "
          f"({time.perf_counter() - start:.0f} s)\n", flush=True)
    steps = args.ft_epochs * (len(ytr) // BATCH)
    end = int(steps * 0.6)
    schedule = costplan.Schedule(0, end, max(1, end // 10), "cube")
    rows = []
    for fraction in (0.7, 0.5, 0.35):
        budget = dense_ms * fraction
        results = {}
        try:
            # as a speedup: the profile's absolute error on this model (seen above) does not move the target
            result = costplan.plan(dense, input=INPUT, budget=f"{1 / fraction}x", hw=profile, patterns="channel")
        except costplan.CostplanError as exc:
            print(f"budget {fraction:.0%} ({budget:.2f} ms): {exc}")
            continue
        # costplan's plan, then one uniform ratio at the same predicted latency
        target_s = result.latency_s
        ratio = bisect(lambda r, t=target_s: costplan.estimate_latency(graph, profile, uniform_plan(graph, r)).latency_s <= t)
        for name, plan in (("costplan", result.plan), ("uniform", uniform_plan(graph, ratio))):
            student = copy.deepcopy(dense)
            pruner = costplan.Pruner(student, plan, criterion="taylor", schedule=schedule, graph=graph)
            fine_tune(student, dense, xtr, ytr, args.ft_epochs, pruner=pruner)
            results[name] = (pruner.compact().eval(), costplan.estimate_latency(graph, profile, plan).latency_s * 1e3)
        # Torch-Pruning: global magnitude at costplan's MACs
        macs = costplan.load_graph(results["costplan"][0], input=INPUT).total_macs
        example = torch.randn(1, 1, 16, 16)

        def tp_pruner(model: nn.Module, r: float, example: torch.Tensor = example):
            return tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                        pruning_ratio=r, global_pruning=True,
                                        ignored_layers=[model.fc, model.stem[0]])

        def tp_macs(r: float) -> int:
            m = copy.deepcopy(dense)
            tp_pruner(m, r).step()
            return costplan.load_graph(m, input=INPUT).total_macs

        r_tp = bisect(lambda r, target=macs: tp_macs(r) <= target)
        # one shot before fine-tuning, on the dense weights the ratio was matched on: the same MACs
        # (pruning in steps between fine-tuning re-ranks globally and lands elsewhere)
        student = copy.deepcopy(dense)
        tp_pruner(student, r_tp).step()
        fine_tune(student, dense, xtr, ytr, args.ft_epochs)
        tp_graph = costplan.load_graph(student, input=INPUT)
        results["torch-pruning"] = (student.eval(), costplan.estimate_latency(tp_graph, profile).latency_s * 1e3)
        measured = measure({"dense": dense, **{k: v[0] for k, v in results.items()}})
        for name, (model, predicted) in results.items():
            rows.append((fraction, budget, name, accuracy(model, xte, yte), measured[name], predicted,
                         costplan.load_graph(model, input=INPUT).total_macs, measured[name] <= budget,
                         measured["dense"]))
        print(f"budget {fraction:.0%} done ({time.perf_counter() - start:.0f} s)", flush=True)

    print(f"\n{'budget':>6s} {'ms':>6s} {'method':>14s} {'accuracy':>9s} {'measured ms':>11s} {'predicted ms':>12s} "
          f"{'MMACs':>7s} {'speedup':>8s} {'met':>4s}")
    for fraction, budget, name, acc, ms, pred, macs, met, dense_now in rows:
        print(f"{fraction:>6.0%} {budget:6.2f} {name:>14s} {acc:9.2%} {ms:11.2f} {pred:12.2f} {macs / 1e6:7.1f} "
              f"{dense_now / ms:7.2f}x {'yes' if met else 'no':>4s}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
