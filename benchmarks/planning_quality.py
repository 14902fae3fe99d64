"""Are costplan's plans better models than a uniform ratio or Torch-Pruning at the same measured latency?

    pip install -e '.[bench]'        # torch-pruning, mnist1d
    python benchmarks/planning_quality.py --json planning_quality.json     # about 15 minutes on 2 cores

MNIST-1D (``mnist1d.data.make_dataset``: 60,000 one-dimensional digit signals generated locally, with
more noise than the default; 12,000 to train, 48,000 to test, so that a test accuracy's sampling error
is about 0.1 point, not the 0.4 of 3,000, which exceeded every gap between methods), a 1-D ResNet (stem and 3 stages of 2
residual blocks, 32/64/128 channels) trained from scratch to about 94%, deployed at batch 64 on this
CPU (calibrated first, with the dense model timed among the calibration's probes, so that its
prediction error is read apart from the machine's drift). At budgets of 60% and 40% of the dense
model's measured latency:

- costplan: the planner's channel plan for the calibrated CPU, importance by the sensitivity scan
  (loss increase per group and level on 16 calibration batches of 64), planned at the speedup
  1/budget, measured, and re-planned with the cost model's miss divided out (at most twice); a budget
  past the planner's floor is asked again at the floor its refusal names
  (``BudgetOutOfReach.floor_s``); where the budget stays out of reach, the plan that measured
  fastest, then up to two plans asking 8% less kept while they measure within 3% as fast (near its
  floor the planner prunes every group as far as allowed, whatever its importance); and where a
  baseline cannot come down to that plan's measured latency (at its largest ratio, timed against
  dense), costplan is re-planned
  down to the slowest of those floors, so that every method is compared at one measured latency;
- costplan-magnitude, costplan-taylor: the same planner at the same predicted speedup with
  weight-magnitude and Taylor importance;
- uniform: one channel ratio for every prunable group;
- tp-magnitude, tp-taylor: Torch-Pruning's global pruning (MetaPruner, global_pruning=True) with group
  L2 magnitude and group Taylor importance.

uniform, tp-magnitude and tp-taylor are matched to costplan's *measured* latency: the ratio whose
model runs closest to costplan's, on a grid of ratios 0.05 apart and then 0.01 apart around the
closest, each grid timed round-robin with costplan's model in 15 rounds (per-round ratios). Every
model is pruned in one shot from the same dense weights, then fine-tuned identically for each of 3
seeds (SGD, same epochs, cosine learning rate, distillation from the dense model). The table times
every model in 31 rounds, each turn a block of 10 calls, and gives each method's latency over
costplan's as the median of per-round ratios, beside what a copy of costplan's model reads against it
(on this VM 0.93-1.07x: no closer than that is a latency "equal"). uniform is also pruned at the ratios
its matching read nearest costplan's latency beyond 3% either side (slower and faster) and fine-tuned
the same way, and the verdict reads costplan against uniform's
accuracy at costplan's measured latency: the least-squares line, in log latency, through the three
models' accuracies at their latencies in the table's rounds (a match made before fine-tuning read
0.89-0.93x costplan's latency in the table of one drifting run). Then:

- the cross-device table: a plan made for a GPU profile at the same speedup (at the smallest batch
  where the GPU can reach it), fine-tuned the same way, measured on this CPU beside the CPU's plan;
- the pattern table: plans for the CPU with each pattern set, their predicted and measured latency;
  a pattern the planner refuses is masked at 50% and timed anyway.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from small_resnet import SmallResNet, accuracy, batches
from torch import nn

import costplan
from costplan.coerce import writable
from costplan.hardware import load_profile
from costplan.hardware.calibrate import calibrate
from costplan.measure import time_round_robin
from costplan.models import Instance

warnings.filterwarnings("ignore")
BATCH = 64
LENGTH = 40
INPUT = f"{BATCH}x1x{LENGTH}"
CORR_NOISE, IID_NOISE = 0.4, 0.035
WIDTHS = (32, 64, 128)
CALIBRATION = 16         # calibration batches of 64 for the sensitivity scan and Taylor scores
# the largest ratios the baselines are matched over (costplan keeps its default cap, 0.8 of a group):
# past costplan's floor every method is compared at the slowest method's floor. Costplan allowed 0.9 fell
# to 86.8% at the 40% budget (one run, as did Torch-Pruning's Taylor importance, 86.1%); Torch-Pruning
# capped at 0.8 stopped at 1.84x, so that the 40% budget was compared at 1.5x
UNIFORM_MOST, TP_MOST = 0.95, 0.9
METHODS = ("costplan", "costplan-magnitude", "costplan-taylor", "uniform", "tp-magnitude", "tp-taylor")
MARGIN = 0.03   # how far from costplan's latency a reading must be to count as a side of it (:func:`neighbours`)


# ---- data and model ------------------------------------------------------------------------------

def data(train: int, test: int) -> tuple[torch.Tensor, ...]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split = train + test, train / (train + test)
    # noisier than the default (0.25, 0.02), where a small 1-D ResNet reaches 99.5% and every pruned
    # model recovers: here the dense model reaches about 95% and capacity matters
    args.corr_noise_scale, args.iid_noise_scale = CORR_NOISE, IID_NOISE
    d = make_dataset(args)
    x, xt = (torch.tensor(np.asarray(v), dtype=torch.float32).unsqueeze(1) for v in (d["x"], d["x_test"]))
    mean, std = x.mean(), x.std()
    return (x - mean) / std, torch.tensor(d["y"]).long(), (xt - mean) / std, torch.tensor(d["y_test"]).long()


class Net1d(SmallResNet):
    """A 1-D ResNet for MNIST-1D's 40-sample signals."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__(1, widths, 5)


def train_dense(x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    model = Net1d()
    steps = epochs * (len(y) // 128)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.2, total_steps=steps)
    model.train()
    for xb, yb in batches(x, y, epochs, 0, 128):
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    return model.eval()


def fine_tune(student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int,
              seed: int) -> nn.Module:
    """SGD with cosine learning rate and distillation (T=4, half KL, half cross-entropy); the same for all."""
    torch.manual_seed(seed)
    steps = epochs * (len(y) // 128)
    opt = torch.optim.SGD(student.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    student.train()
    for xb, yb in batches(x, y, epochs, 100 + seed, 128):
        logits = student(xb)
        with torch.no_grad():
            soft = F.softmax(teacher(xb) / 4.0, 1)
        loss = 0.5 * F.cross_entropy(logits, yb) + 0.5 * 16.0 * F.kl_div(F.log_softmax(logits / 4.0, 1), soft,
                                                                          reduction="batchmean")
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    return student.eval()


# ---- timing --------------------------------------------------------------------------------------

def rounds_of(models: dict[str, nn.Module], rounds: int = 9, block: int = 10) -> dict[str, list[float]]:
    """Seconds per batch-64 forward in each round, the models interleaved round by round (the VM's speed
    drifts), each turn the mean of a block of ``block`` calls after an untimed one, as `costplan measure A B`
    times them."""
    x = torch.randn(BATCH, 1, LENGTH)
    with torch.inference_mode():
        return time_round_robin({k: Instance(m, (x,)) for k, m in models.items()}, rounds, warmup=5,
                                blocks=dict.fromkeys(models, block))


def timed(models: dict[str, nn.Module], rounds: int = 9) -> dict[str, float]:
    """Median ms per batch-64 forward over :func:`rounds_of`."""
    return {k: statistics.median(v) * 1e3 for k, v in rounds_of(models, rounds).items()}


def paired(runs: dict[str, list[float]], a: str, b: str) -> float:
    """The median over rounds of a's time over b's in the same round: a ratio the drift cancels from
    (two medians taken apart read one plan at 2.29x, 2.06x and 2.23x its dense model within 10 s)."""
    return statistics.median(x / y for x, y in zip(runs[a], runs[b]))


def ratio_to(candidate: nn.Module, reference: nn.Module) -> float:
    """candidate's latency over reference's (:func:`paired`)."""
    return paired(rounds_of({"c": candidate, "r": reference}, rounds=15), "c", "r")


def at_latency(points: list[tuple[float, float]]) -> tuple[float, bool]:
    """The accuracy at costplan's latency, from (latency over costplan's, accuracy) points: the least-squares
    line in log latency read at 1, and whether the points lie either side of 1 (else it is extrapolated)."""
    x = np.log([ratio for ratio, _ in points])
    slope, intercept = np.polyfit(x, [acc for _, acc in points], 1)
    return float(intercept), bool(x.min() <= 0.0 <= x.max())


def match_latency(build, reference: nn.Module, hi: float, coarse: float = 0.05,
                  fine: float = 0.01) -> tuple[float, nn.Module, dict[float, float]]:
    """The ratio in [0, hi] whose model ``build(r)`` runs closest to ``reference``: a grid of ratios
    timed together with the reference in one round-robin, then a finer grid around the closest. A
    bisection on one noisy reading per step kept the least-pruned model that happened to read no
    slower: uniform's read 1.076x costplan's in the table of one run, where a copy of costplan's read 0.990x.
    Also every ratio timed -> its model's latency over the reference's."""
    readings: dict[float, float] = {}

    def closest(ratios: np.ndarray) -> tuple[float, nn.Module]:
        models = {round(float(r), 4): build(float(r)) for r in ratios}
        runs = rounds_of({"reference": reference, **{str(r): m for r, m in models.items()}}, rounds=15)
        readings.update({r: paired(runs, str(r), "reference") for r in models})
        best = min(models, key=lambda r: abs(math.log(readings[r])))
        return best, models[best]

    r, _ = closest(np.arange(0.0, hi + 1e-9, coarse))
    return (*closest(np.arange(max(0.0, r - coarse + fine), min(hi, r + coarse - fine) + 1e-9, fine)), readings)


def neighbours(readings: dict[float, float], margin: float = MARGIN) -> list[float]:
    """The ratios whose readings (latency over costplan's) lie nearest 1 beyond ``margin`` on either side:
    the slower and the faster model the line :func:`at_latency` reads is drawn through, beside the match,
    so that it brackets costplan's latency (0.05 either side of the match left all three faster in one run).
    A side no ratio reaches is left out."""
    slower = [r for r, v in readings.items() if v >= 1 + margin]
    faster = [r for r, v in readings.items() if v <= 1 - margin]
    return ([min(slower, key=readings.get)] if slower else []) + ([max(faster, key=readings.get)] if faster else [])


# ---- pruning -------------------------------------------------------------------------------------

def prune_plan(dense: nn.Module, plan, graph) -> nn.Module:
    """One shot to ``plan`` (units ranked by w^2, as magnitude and sensitivity importance rank them), compacted."""
    student = copy.deepcopy(dense)
    pruner = costplan.Pruner(student, plan, criterion="l2", graph=graph)
    pruner.prune()
    return pruner.compact().eval()


def tp_prune(dense: nn.Module, ratio: float, kind: str, calib) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(dense)
    importance = tp.importance.GroupMagnitudeImportance(p=2) if kind == "magnitude" else \
        tp.importance.GroupTaylorImportance()
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 1, LENGTH), importance=importance, pruning_ratio=ratio,
                                  global_pruning=True, ignored_layers=[model.fc, model.stem[0]])
    if kind == "taylor":
        model.eval()
        model.zero_grad()
        for xb, yb in calib:
            F.cross_entropy(model(xb), yb).backward()
    pruner.step()
    model.zero_grad()
    return model.eval()


def summary(values: list[float]) -> str:
    mean = statistics.mean(values)
    spread = (max(values) - min(values)) / 2
    return f"{mean:7.2%} +- {spread:5.2%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=12000, help="MNIST-1D training signals")
    parser.add_argument("--test", type=int, default=48000, help="MNIST-1D test signals")
    parser.add_argument("--epochs", type=int, default=15, help="dense training epochs")
    parser.add_argument("--ft-epochs", type=int, default=3, help="fine-tuning epochs after pruning")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budgets", default="0.6,0.4", help="fractions of the dense measured latency")
    parser.add_argument("--gpu", default="rtx3090", help="the GPU profile of the cross-device table")
    parser.add_argument("--hw", help="a calibrated profile; default: calibrate now")
    parser.add_argument("--json", metavar="FILE", help="write one row per run here")
    args = parser.parse_args()
    if args.json:
        writable(args.json)
    start = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)

    def clock() -> str:
        return f"({time.perf_counter() - start:.0f} s)"

    xtr, ytr, xte, yte = data(args.train, args.test)
    dense = train_dense(xtr, ytr, args.epochs)
    dense_acc = accuracy(dense, xte, yte)
    print(f"MNIST-1D: {len(ytr)} train, {len(yte)} test; dense Net1d test accuracy {dense_acc:.2%} {clock()}", flush=True)
    # the dense model is timed among the calibration's probes as well (a held-out check): its error
    # there is the model's, free of the drift between calibrating and timing it afterwards
    in_rounds = None
    if args.hw:
        profile = load_profile(args.hw)
    else:
        calibration = calibrate(progress=False, check={"dense": Instance(dense, (torch.randn(BATCH, 1, LENGTH),))})
        profile, in_rounds = calibration.profile(), calibration.quality.check["dense"]
    graph = costplan.load_graph(dense, input=INPUT)
    calib = [(xtr[i:i + BATCH], ytr[i:i + BATCH]) for i in range(0, CALIBRATION * BATCH, BATCH)]
    dense_ms = timed({"dense": dense})["dense"]
    predicted_dense = costplan.estimate_latency(graph, profile).latency_s * 1e3
    print(f"dense at batch {BATCH}: predicted {predicted_dense:.2f} ms on {profile.name}; measured {dense_ms:.2f} ms "
          f"now ({predicted_dense / dense_ms - 1:+.1%})"
          + (f", {in_rounds[1] * 1e3:.2f} ms in the calibration's rounds ({in_rounds[0] / in_rounds[1] - 1:+.1%})"
             if in_rounds else "") + f"; {graph.total_macs / 1e6:.1f} MMACs {clock()}\n", flush=True)

    runs, table, planning_s = [], [], {}
    budgets = [float(b) for b in args.budgets.split(",")]
    structures: dict[float, dict[str, nn.Module]] = {}
    resolution: dict[float, float] = {}
    asked_for: dict[float, float] = {}
    for fraction in budgets:
        # the budget is measured: plan at the speedup, measure the pruned model, and re-plan with the
        # cost model's miss divided out (at most twice), as a user checking with `costplan measure` would
        target, tries = 1 / fraction, []
        asked = target

        def attempt(asked: float) -> dict:
            """Plan at ``asked`` (predicted speedup), prune and measure; past the planner's floor, the
            floor the refusal names ({"floor": predicted speedup})."""
            t0 = time.perf_counter()
            try:
                result = costplan.plan(dense, input=INPUT, budget=f"{asked:.4f}x", hw=profile, patterns="channel",
                                       data=calib)
            except costplan.BudgetOutOfReach as exc:
                print(f"  asked {asked:.2f}x: {str(exc).split(';')[0]}")
                return {"floor": exc.dense_s / exc.floor_s}
            seconds = time.perf_counter() - t0
            model = prune_plan(dense, result.plan, graph)
            got = 1 / ratio_to(model, dense)
            near = any("lowest latency" in w for w in result.warnings)
            print(f"  budget {fraction:.0%}: planned {asked:.2f}x (predicted), measured {got:.2f}x"
                  f"{' (near the planner floor)' if near else ''} {clock()}", flush=True)
            return {"asked": asked, "got": got, "model": model, "predicted": result.latency_s * 1e3, "seconds": seconds}

        while len(tries) < 3:
            tried = attempt(asked)
            if "floor" in tried:             # past what channel pruning reaches: ask for the floor the
                if asked == tried["floor"] * 0.9999:   # refusal names, as a user reading it would
                    break
                asked = tried["floor"] * 0.9999
                continue
            tries.append(tried)
            if tried["got"] >= 0.97 * target:
                break
            asked *= target / tried["got"]
        reached = tries[-1]["got"] >= 0.97 * target
        kept = tries[-1] if reached else max(tries, key=lambda t: t["got"])
        # short of the budget, the fastest plan measured may sit at the planner's floor, where importance
        # no longer chooses; a user would try less pruning for the same measured speed, as here (twice)
        if not reached:
            for _ in range(2):
                tried = attempt(kept["asked"] * 0.92)
                if "floor" in tried or tried["got"] < 0.97 * kept["got"]:
                    break
                kept = tried
        # out of reach, "equal measured latency" needs a latency every method reaches: a baseline that
        # cannot come down to costplan's floor was compared slower (by 6-8% in both of 3027e0f's runs,
        # uniform bisected to its largest ratio), so costplan is re-planned down to the slowest floor
        if not reached:
            floors = {"uniform": prune_plan(dense, costplan.uniform_plan(graph, "channel", UNIFORM_MOST), graph),
                      **{f"tp-{k}": tp_prune(dense, TP_MOST, k, calib) for k in ("magnitude", "taylor")}}
            reach = {m: 1 / ratio_to(model, dense) for m, model in floors.items()}
            common = min(reach.values())
            print(f"  budget {fraction:.0%}: out of reach; fastest measured: costplan {kept['got']:.2f}x, "
                  + ", ".join(f"{m} {s:.2f}x" for m, s in reach.items()) + f" {clock()}", flush=True)
            if kept["got"] > common:
                below = None
                for _ in range(3):
                    tried = attempt(kept["asked"] * common / kept["got"] if below is None else
                                    below["asked"] * common / below["got"])
                    if "floor" in tried:
                        break
                    if tried["got"] <= common:
                        kept = tried
                        break
                    below = tried
        asked, asked_for[fraction] = kept["asked"], kept["asked"]
        pruned, predicted = {"costplan": kept["model"]}, {"costplan": kept["predicted"]}
        planning_s[(fraction, "costplan")] = kept["seconds"]
        for method, importance in (("costplan-magnitude", "magnitude"), ("costplan-taylor", "taylor")):
            t0 = time.perf_counter()
            result = costplan.plan(dense, input=INPUT, budget=f"{asked:.4f}x", hw=profile, patterns="channel",
                                   importance=importance, data=calib)
            planning_s[(fraction, method)] = time.perf_counter() - t0
            pruned[method] = prune_plan(dense, result.plan, graph)
            predicted[method] = result.latency_s * 1e3
        reference = pruned["costplan"]
        r_uni, pruned["uniform"], readings = match_latency(
            lambda r: prune_plan(dense, costplan.uniform_plan(graph, "channel", r), graph), reference, UNIFORM_MOST)
        for kind in ("magnitude", "taylor"):
            _, pruned[f"tp-{kind}"], _ = match_latency(lambda r, k=kind: tp_prune(dense, r, k, calib), reference,
                                                    TP_MOST)
        for r in [r for r in neighbours(readings) if r != r_uni]:
            pruned[f"uniform {r:.2f}"] = prune_plan(dense, costplan.uniform_plan(graph, "channel", r), graph)
        for method in [m for m in pruned if m.startswith(("uniform", "tp-"))]:
            predicted[method] = costplan.estimate_latency(costplan.load_graph(pruned[method], input=INPUT),
                                                          profile).latency_s * 1e3
        structures[fraction] = pruned
        print(f"budget {fraction:.0%}: planned at {asked:.2f}x; plans and baselines pruned (uniform ratio {r_uni:.3f}); planning "
              + ", ".join(f"{m} {planning_s[(fraction, m)]:.1f} s" for m in METHODS[:3]) + f" {clock()}", flush=True)
        accs: dict[str, list[float]] = {m: [] for m in pruned}
        for seed in range(args.seeds):
            for method in pruned:
                tuned = fine_tune(copy.deepcopy(pruned[method]), dense, xtr, ytr, args.ft_epochs, seed)
                accs[method].append(accuracy(tuned, xte, yte))
            print(f"  seed {seed} fine-tuned {clock()}", flush=True)
        # copies of one model read 0.96-1.02x one another in 9 rounds on a quiet machine, 0.87-1.0x in a
        # drifting spell, so the table takes 31 rounds (cheap: 8 models of a few ms) and times a copy of
        # costplan's model as a control: what it reads against the original is the table's resolution
        runs_by = rounds_of({"dense": dense, **pruned, "copy": copy.deepcopy(pruned["costplan"])}, rounds=31)
        measured = {k: statistics.median(v) * 1e3 for k, v in runs_by.items()}
        resolution[fraction] = paired(runs_by, "copy", "costplan")
        for method in pruned:
            g = costplan.load_graph(pruned[method], input=INPUT)
            vs = paired(runs_by, method, "costplan")
            table.append({"budget": fraction, "method": method, "measured_ms": measured[method], "vs_costplan": vs,
                          "speedup": paired(runs_by, "dense", method), "predicted_ms": predicted[method],
                          "macs": g.total_macs, "params": g.total_params, "accuracy": accs[method]})
            runs += [{"budget": fraction, "method": method, "seed": s, "accuracy": a,
                      "measured_ms": measured[method], "vs_costplan": vs, "predicted_ms": predicted[method],
                      "macs": g.total_macs, "params": g.total_params} for s, a in enumerate(accs[method])]

    print(f"\n1. equal measured latency, {args.seeds} seeds of fine-tuning ({args.ft_epochs} epochs); "
          f"dense {dense_acc:.2%}")
    print(f"{'budget':>6s} {'method':>19s} {'measured ms':>11s} {'speedup':>7s} {'/costplan':>9s} "
          f"{'accuracy (mean +- half range)':>30s} {'MMACs':>7s} {'params':>8s} {'predicted ms':>12s}")
    for r in table:
        print(f"{r['budget']:>6.0%} {r['method']:>19s} {r['measured_ms']:11.2f} {r['speedup']:6.2f}x "
              f"{r['vs_costplan']:8.3f}x {summary(r['accuracy']):>30s} {r['macs'] / 1e6:7.1f} {r['params'] / 1e3:7.1f}k "
              f"{r['predicted_ms']:12.2f}")
    print("  /costplan: the method's measured latency over costplan's, the median of per-round ratios; a copy of "
          "costplan's model read " + ", ".join(f"{resolution[f]:.3f}x at {f:.0%}" for f in budgets)
          + " (the timing's resolution: identical models, identical weights)")
    for fraction in budgets:
        rows = {r["method"]: r for r in table if r["budget"] == fraction}
        acc = {m: statistics.mean(r["accuracy"]) for m, r in rows.items()}
        best = max(("uniform", "tp-magnitude", "tp-taylor"), key=acc.get)
        best_importance = max(METHODS[:3], key=acc.get)
        print(f"  {fraction:.0%}: costplan {acc['costplan'] - acc[best]:+.2%} against the best baseline ({best}, "
              f"{rows[best]['vs_costplan']:.3f}x costplan's latency); against uniform "
              f"{acc['costplan'] - acc['uniform']:+.2%} ({rows['uniform']['vs_costplan']:.3f}x); "
              f"best importance: {best_importance}")
        line = sorted((r["vs_costplan"], acc[m]) for m, r in rows.items() if m.startswith("uniform"))
        level, inside = at_latency(line)
        print(f"  {fraction:.0%}: against uniform at costplan's measured latency, "
              f"{'interpolated' if inside else 'extrapolated'} over "
              + ", ".join(f"{a:.2%} at {v:.3f}x" for v, a in line)
              + f": {level:.2%}, costplan {acc['costplan'] - level:+.2%}")

    # ---- the cross-device table: a plan for the GPU, measured on this CPU beside the CPU's plan ----
    fraction = max(budgets)   # the looser budget: the tighter one may be at the floor of what channels reach
    speedup = f"{asked_for[fraction]:.4f}x"
    print(f"\n2. hardware-awareness: plans at {asked_for[fraction]:.2f}x (predicted; the {fraction:.0%} budget) for "
          f"{profile.name} and for {args.gpu}, both measured on this CPU at batch {BATCH} (seed 0)")
    cross = {profile.name: structures[fraction]["costplan"]}
    for gpu_batch in (BATCH, 256, 1024, 4096, 16384):   # a GPU gains from channels only once the batch fills it
        try:
            gpu_plan = costplan.plan(dense, input=f"{gpu_batch}x1x{LENGTH}", budget=speedup, hw=args.gpu,
                                     patterns="channel", data=calib)
        except costplan.CostplanError as exc:
            print(f"  {args.gpu} at batch {gpu_batch}: {str(exc).split(';')[0]}")
            continue
        cross[f"{args.gpu} b{gpu_batch}"] = prune_plan(dense, gpu_plan.plan, graph)
        break
    measured = timed({"dense": dense, **cross})
    print(f"{'plan made for':>16s} {'CPU predicted ms':>16s} {'CPU measured ms':>15s} {'speedup':>7s} {'accuracy':>8s} "
          f"{'MMACs':>7s}  kept channels per group")
    for name, model in cross.items():
        g = costplan.load_graph(model, input=INPUT)
        acc = accuracy(fine_tune(copy.deepcopy(model), dense, xtr, ytr, args.ft_epochs, 0), xte, yte)
        widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv1d)]
        print(f"{name:>16s} {costplan.estimate_latency(g, profile).latency_s * 1e3:16.2f} {measured[name]:15.2f} "
              f"{measured['dense'] / measured[name]:6.2f}x {acc:8.2%} {g.total_macs / 1e6:7.1f}  {widths}")

    # ---- the pattern table: which patterns this CPU turns into time ----
    fraction = max(budgets)
    print(f"\n3. patterns on {profile.name} at {1 / fraction:.2f}x (masked or compacted, not fine-tuned)")
    models = {}
    for patterns in ("channel", "unstructured", "2:4", "4x1", "channel,unstructured", "auto"):
        try:
            result = costplan.plan(dense, input=INPUT, budget=f"{1 / fraction:.4f}x", hw=profile, patterns=patterns,
                                   importance="magnitude")
            models[patterns] = (prune_plan(dense, result.plan, graph), result.latency_s * 1e3)
        except costplan.CostplanError as exc:
            print(f"  {patterns:>22s}: {str(exc).split(';')[0]}")
            # the planner's refusal, checked: half the weights masked to the pattern, timed all the same
            pattern = patterns.split(",")[-1]
            masked = copy.deepcopy(dense)
            pruner = costplan.Pruner(masked, costplan.uniform_plan(graph, pattern, 0.5), criterion="l2", graph=graph)
            pruner.prune()
            models[f"{pattern} 50% masked"] = (pruner.remove().eval(), None)
    measured = timed({"dense": dense, **{k: v[0] for k, v in models.items()}})
    for patterns, (_, pred) in models.items():
        said = f"predicted {pred:6.2f} ms" if pred is not None else "(refused)        "
        print(f"  {patterns:>22s}: {said}, measured {measured[patterns]:6.2f} ms "
              f"({measured['dense'] / measured[patterns]:.2f}x of dense {measured['dense']:.2f} ms)")

    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(runs, f, indent=1)
        print(f"\nwrote {args.json} ({len(runs)} runs)")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
