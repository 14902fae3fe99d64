"""How well do costplan's latency predictions match measurement? Run on this machine's CPU.

    python benchmarks/fidelity.py                  # calibrates first (about a minute)
    python benchmarks/fidelity.py --hw local.toml  # or use a profile from `costplan calibrate`

1. A zoo of CNNs and transformers at batch 1 and 8: predicted vs measured total latency; the median
   absolute error and the share within 20%. Goals: median error <= 10%, all within 20%. Without
   --hw the zoo is timed inside the calibration's interleaved rounds (its held-out set).
2. Channel-pruned variants of ResNet-50 (inner bottleneck widths cut by 0..75%): predictions made
   from the dense graph and a channel plan, measurements on physically narrower models; Kendall's tau
   between the two. Goal: tau >= 0.9.
3. GPU sanity without a GPU: BERT-base (seq 384) with heads and FFN widths pruned to 41% of its
   linear-layer parameters, predicted speedup on rtx3090, against the 1.84x measured on an RTX 3090
   for block movement pruning (shared/seeds/000).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch
from scipy.stats import kendalltau

from costplan.api import load_graph
from costplan.hardware import estimate, load_profile
from costplan.hardware.calibrate import calibrate
from costplan.measure import time_round_robin
from costplan.models import Instance, instantiate, resolve
from costplan.planfile import Plan
from costplan.sparsity import apply_plan

warnings.filterwarnings("ignore")

ZOO = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "densenet121",
       "shufflenet_v2_x1_0", "regnet_y_400mf", "convnext_tiny", "vit_b_16", "hf:bert-base", "hf:distilbert",
       "hf:gpt2"]


def zoo_instances(batches: list[int]) -> dict[str, Instance]:
    return {f"{spec} b{batch}": instantiate(resolve(spec, batch=batch), "cpu") for batch in batches for spec in ZOO}


def zoo_table(profile, rows: dict[str, tuple[float, float]]) -> None:
    """``rows``: 'spec bN' -> (predicted, measured) seconds."""
    print(f"\n1. zoo on {profile.name}: predicted vs measured total latency (ms)")
    print(f"  {'model':20s} {'batch':>5s} {'predicted':>10s} {'measured':>10s} {'error':>8s}")
    errors = []
    for key, (predicted, measured) in rows.items():
        spec, batch = key.rsplit(" b", 1)
        error = predicted / measured - 1
        errors.append(abs(error))
        print(f"  {spec:20s} {int(batch):5d} {predicted * 1e3:10.2f} {measured * 1e3:10.2f} {error:+8.1%}", flush=True)
    within = sum(e <= 0.2 for e in errors) / len(errors)
    print(f"  median |error| {statistics.median(errors):.1%} (goal <= 10%); within 20%: {within:.0%} "
          f"of {len(errors)}; mean |error| {statistics.mean(errors):.1%}")


def zoo_timed(profile, batches: list[int], repeat: int) -> dict[str, tuple[float, float]]:
    """With a given profile: the zoo timed round-robin now, predicted from its traced graphs."""
    instances = zoo_instances(batches)
    runs = time_round_robin(instances, rounds=repeat)
    rows = {}
    for key in instances:
        spec, batch = key.rsplit(" b", 1)
        graph = load_graph(spec, batch=int(batch))
        rows[key] = (estimate(graph, profile, apply_plan(graph, None)).latency_s, min(runs[key]))
    return rows


def pruned_resnet50(keep: float) -> torch.nn.Module:
    """ResNet-50 whose bottleneck inner widths (conv1/conv2 outputs) are cut to ``keep``."""
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [3, 4, 6, 3], width_per_group=round(64 * keep)).eval()


def ranking(profile, repeat: int) -> None:
    print(f"\n2. channel-pruned ResNet-50 variants on {profile.name} (batch 1)")
    dense = load_graph("resnet50")
    inner = [l.module for l in dense.layers if l.module and l.module.endswith(("conv1", "conv2"))
             and l.module.startswith("layer")]
    keeps = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25)
    predicted = []
    for keep in keeps:
        plan = Plan.from_dict({"layers": {m: {"sparsity": 1 - keep, "pattern": "channel"} for m in inner}})
        predicted.append(estimate(dense, profile, apply_plan(dense, plan)).latency_s * 1e3)
    # round-robin over the variants, so that the machine's drift weighs on all of them alike
    instances = [Instance(pruned_resnet50(keep), (torch.randn(1, 3, 224, 224),)) for keep in keeps]
    runs = time_round_robin(dict(enumerate(instances)), rounds=repeat)
    measured = [statistics.median(runs[i]) * 1e3 for i in range(len(keeps))]
    print(f"  {'inner width kept':>16s} {'predicted':>10s} {'measured':>10s} {'error':>8s}")
    for keep, p, m in zip(keeps, predicted, measured):
        print(f"  {keep:16.3f} {p:10.2f} {m:10.2f} {p / m - 1:+8.1%}", flush=True)
    tau = kendalltau(predicted, measured).statistic
    print(f"  Kendall tau {tau:.3f} (goal >= 0.9); predicted speedup at 25% width "
          f"{predicted[0] / predicted[-1]:.2f}x, measured {measured[0] / measured[-1]:.2f}x")


def bert_gpu_sanity() -> None:
    print("\n3. GPU sanity: BERT-base seq 384, heads and FFN pruned to 41% of linear-layer params, rtx3090")
    graph = load_graph("hf:bert-base", seq_len=384)
    # per layer: attention 4 x 768^2 (q, k, v, o), FFN 2 x 768 x 3072. Half the heads go; the FFN keeps
    # what brings the linear parameters to 41%: 0.5 x 4 x 768^2 + f x 2 x 768 x 3072 = 0.41 x total.
    attention, ffn = 4 * 768 * 768, 2 * 768 * 3072
    keep_ffn = (0.41 * (attention + ffn) - 0.5 * attention) / ffn
    layers = {}
    for i in range(12):
        layers[f"encoder.layer.{i}.attention.self"] = {"sparsity": 0.5, "pattern": "head"}
        layers[f"encoder.layer.{i}.intermediate.dense"] = {"sparsity": 1 - keep_ffn, "pattern": "channel"}
    plan = Plan.from_dict({"layers": layers})
    effective = apply_plan(graph, plan)
    linear = [l for l in graph.layers if l.op == "linear" and l.module.startswith("encoder")]
    kept = sum(effective[l.name].params for l in linear) / sum(l.params for l in linear)
    profile = load_profile("rtx3090")
    for dtype in ("float32", "float16"):
        dense = estimate(graph, profile, apply_plan(graph, None), dtype).latency_s
        pruned = estimate(graph, profile, effective, dtype).latency_s
        print(f"  {dtype}: dense {dense * 1e3:.2f} ms, pruned {pruned * 1e3:.2f} ms: predicted speedup "
              f"{dense / pruned:.2f}x (measured in the seed: 1.84x); encoder linear params kept {kept:.1%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hw", help="a calibrated profile (default: calibrate now)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--save", metavar="FILE", help="pickle the calibration (its samples and the zoo's "
                        "timings) to FILE, to refit other cost models against the same timings")
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    batches = [int(b) for b in args.batches.split(",")]
    if args.hw:
        profile = load_profile(args.hw)
        rows = zoo_timed(profile, batches, args.repeat)
    else:
        # the zoo is the calibration's held-out set: timed in the same interleaved rounds as the
        # probes, so the VM's drift between fitting and measuring cannot pass for model error
        result = calibrate(check=zoo_instances(batches))
        print(f"calibrated: {result.summary()}")
        for line in result.quality.warnings() + result.quality.lines():
            if not line.startswith(("self-check", "WARNING: this profile is off")):   # the zoo table says it
                print(line)
        profile = result.profile()
        rows = result.quality.check
        if args.save:
            import pickle

            with open(args.save, "wb") as f:
                pickle.dump(result, f)
    zoo_table(profile, rows)
    ranking(profile, max(args.repeat, 7))
    bert_gpu_sanity()
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
