"""Measured is what counts: plans made for this CPU, pruned and compacted, then timed.

    python benchmarks/bench_prune.py                 # calibrates this CPU first (about 15 s)
    python benchmarks/bench_prune.py --hw local.toml # or a profile from `costplan calibrate`

1. ResNet-18 and ResNet-50 (batch 1, 224x224): channel plans for the calibrated local profile at
   budgets of 80%, 65% and 50% of the dense model's predicted latency; one-shot magnitude pruning
   and compaction with costplan; the plan's predicted latency against the measured latency of the
   compacted model (and the dense one), timed round-robin so the machine's drift hits all alike.
   Goal: within 15%.
2. Against Torch-Pruning: the same per-layer channel ratios on ResNet-50 (costplan's plan exported
   with `--export torch-pruning`), pruned by Torch-Pruning's MetaPruner with L2 magnitude; time to
   prune and compact, parameters and measured latency of the result, as ratios to costplan's.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings

import torch
import torchvision

import costplan
from costplan.hardware import estimate, load_profile
from costplan.hardware.calibrate import calibrate
from costplan.measure import time_round_robin
from costplan.models import Instance
from costplan.planning.export import torch_pruning
from costplan.sparsity import apply_plan

warnings.filterwarnings("ignore")


def timed_round_robin(models: dict[str, torch.nn.Module], x: torch.Tensor, rounds: int, repeat: int) -> dict[str, float]:
    """Median seconds per forward of each model, interleaving models round by round."""
    runs = time_round_robin({k: Instance(m, (x,)) for k, m in models.items()}, rounds, repeat, warmup=3)
    return {k: statistics.median(v) for k, v in runs.items()}


def machine_speed() -> float:
    """Median seconds of a fixed 3x3 convolution (64 channels, 56x56): timed right after calibrating
    and after each model's rounds, it shows how far the machine drifted from its calibration."""
    conv, x = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).eval(), torch.randn(1, 64, 56, 56)
    runs = time_round_robin({"ref": Instance(conv, (x,))}, rounds=25, warmup=3)["ref"]
    return statistics.median(runs)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hw", help="profile TOML; default: calibrate this CPU now")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    profile = load_profile(args.hw) if args.hw else calibrate(progress=False).profile()
    reference = machine_speed()
    x = torch.randn(1, 3, 224, 224)
    print(f"profile {profile.name}; batch 1, 224x224; one-shot L1 magnitude, compacted\n")
    print(f"{'model':10s} {'budget':>7s} {'params':>10s} {'predicted ms':>12s} {'measured ms':>11s} "
          f"{'error':>7s} {'pred. speedup':>13s} {'meas. speedup':>13s} {'speedup error':>13s}")
    errors, speedup_errors = [], []
    plans = {}
    for name in ("resnet18", "resnet50"):
        torch.manual_seed(0)
        dense = getattr(torchvision.models, name)().eval()
        graph = costplan.load_graph(name)
        dense_pred = estimate(graph, profile, apply_plan(graph, None)).latency_s
        variants, predicted = {"dense": dense}, {"dense": dense_pred}
        for fraction in (0.8, 0.65, 0.5):
            result = costplan.plan(graph, budget=f"{dense_pred * fraction * 1e3}ms", hw=profile, patterns="channel")
            plans[(name, fraction)] = result.plan
            variants[f"{fraction:.0%}"] = costplan.prune(dense, result.plan, graph=graph, source=name).eval()
            predicted[f"{fraction:.0%}"] = result.latency_s
        measured = timed_round_robin(variants, x, args.rounds, args.repeat)
        drift = machine_speed() / reference - 1
        for key, model in variants.items():
            err = predicted[key] / measured[key] - 1
            pred_speedup, meas_speedup = predicted["dense"] / predicted[key], measured["dense"] / measured[key]
            if key != "dense":
                errors.append(abs(err))
                speedup_errors.append(abs(pred_speedup / meas_speedup - 1))
            print(f"{name:10s} {key:>7s} {n_params(model):10,d} {predicted[key] * 1e3:12.2f} {measured[key] * 1e3:11.2f} "
                  f"{err:+7.1%} {pred_speedup:13.2f} {meas_speedup:13.2f} "
                  f"{'' if key == 'dense' else format(pred_speedup / meas_speedup - 1, '+.1%'):>13s}")
        print(f"{'':10s} (a reference convolution ran {drift:+.0%} slower than right after calibrating)")
    print(f"\npruned variants: median |error| {statistics.median(errors):.1%}, max {max(errors):.1%} (goal 15%); "
          f"speedup over dense (drift of the machine since calibrating cancels): median |error| "
          f"{statistics.median(speedup_errors):.1%}, max {max(speedup_errors):.1%}")

    try:
        import torch_pruning as tp
    except ImportError:
        print("\ntorch-pruning is not installed (pip install 'costplan[bench]'): comparison skipped")
        return
    print("\nagainst Torch-Pruning on resnet50 (same per-layer channel ratios; ratio = Torch-Pruning / costplan)")
    print(f"{'budget':>7s} {'costplan s':>10s} {'TP s':>7s} {'ratio':>6s} {'costplan params':>15s} {'TP params':>10s} "
          f"{'costplan ms':>11s} {'TP ms':>7s} {'ratio':>6s}")
    torch.manual_seed(0)
    dense = torchvision.models.resnet50().eval()
    graph = costplan.load_graph("resnet50")
    for fraction in (0.8, 0.65, 0.5):
        plan = plans[("resnet50", fraction)]
        start = time.perf_counter()
        ours = costplan.prune(dense, plan, graph=graph, source="resnet50").eval()
        ours_s = time.perf_counter() - start
        theirs = copy.deepcopy(dense)
        start = time.perf_counter()
        ratios = torch_pruning(plan)["pruning_ratio_dict"]
        pruner = tp.pruner.MetaPruner(theirs, x, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio_dict={theirs.get_submodule(k): v for k, v in ratios.items()},
                                      pruning_ratio=0.0, ignored_layers=[theirs.fc], global_pruning=False)
        pruner.step()
        tp_s = time.perf_counter() - start
        measured = timed_round_robin({"ours": ours, "tp": theirs.eval()}, x, args.rounds, args.repeat)
        print(f"{fraction:>7.0%} {ours_s:10.2f} {tp_s:7.2f} {tp_s / ours_s:6.2f} {n_params(ours):15,d} "
              f"{n_params(theirs):10,d} {measured['ours'] * 1e3:11.2f} {measured['tp'] * 1e3:7.2f} "
              f"{measured['tp'] / measured['ours']:6.2f}")


if __name__ == "__main__":
    main()
