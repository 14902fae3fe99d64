"""GPU profiles against published measurements (no GPU is needed): ResNet-50 v1.5 inference latency.

    python benchmarks/gpu_published.py

Each row is a published average latency per batch, with its source; costplan predicts the same model
(ResNet-50 at 224x224, the batch size, the precision) on the matching profile under the runtime the
source used: 'eager' (PyTorch) or 'graph' (TensorFlow 1 without XLA: no Python dispatch, but
norms and activations still run as their own kernels). Four rows are fits, marked 'fit': V100 FP32
batch 1 of each source fitted the runtimes' per-op overheads, and PyTorch batch 256 of V100 and T4
FP32 fitted those profiles' FP32 convolution efficiencies; the rest check them. The rows of a
(GPU, precision) with no fitted efficiency are also summarised apart: the same GPU and precision
at another batch size is a weak check of a fit.
Goal: median |error| within 20% at batch 64 and up, within 30% at batch 1.
"""

from __future__ import annotations

import statistics
import warnings

warnings.filterwarnings("ignore")

from costplan.api import estimate_latency, load_graph  # noqa: E402

PYTORCH = ("NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md, "
           "'Inference performance results' (pytorch-21.03 NGC container)")
TENSORFLOW = ("NVIDIA DeepLearningExamples, TensorFlow/Classification/ConvNets/resnet50v1.5/README.md, "
              "'Inference performance results' (TensorFlow 20.06-tf1-py3 NGC container, without XLA)")

# (source, profile, runtime, precision, batch, published average latency in ms)
PUBLISHED = [
    (PYTORCH, "v100", "eager", "float32", 1, 10.37), (PYTORCH, "v100", "eager", "float32", 8, 11.50),
    (PYTORCH, "v100", "eager", "float32", 64, 55.40), (PYTORCH, "v100", "eager", "float32", 128, 109.26),
    (PYTORCH, "v100", "eager", "float32", 256, 214.48),
    (PYTORCH, "v100", "eager", "float16", 1, 12.78), (PYTORCH, "v100", "eager", "float16", 8, 13.65),
    (PYTORCH, "v100", "eager", "float16", 64, 23.18), (PYTORCH, "v100", "eager", "float16", 128, 43.55),
    (PYTORCH, "v100", "eager", "float16", 256, 84.14),
    (PYTORCH, "t4", "eager", "float32", 1, 10.70), (PYTORCH, "t4", "eager", "float32", 8, 22.41),
    (PYTORCH, "t4", "eager", "float32", 64, 152.73), (PYTORCH, "t4", "eager", "float32", 128, 309.26),
    (PYTORCH, "t4", "eager", "float32", 256, 635.98),
    (PYTORCH, "t4", "eager", "float16", 1, 12.96), (PYTORCH, "t4", "eager", "float16", 8, 12.82),
    (PYTORCH, "t4", "eager", "float16", 64, 57.41), (PYTORCH, "t4", "eager", "float16", 128, 114.24),
    (PYTORCH, "t4", "eager", "float16", 256, 225.95),
    (TENSORFLOW, "a100", "graph", "float32", 1, 5.26), (TENSORFLOW, "a100", "graph", "float32", 8, 8.31),
    (TENSORFLOW, "a100", "graph", "float32", 64, 35.82), (TENSORFLOW, "a100", "graph", "float32", 128, 68.23),
    (TENSORFLOW, "a100", "graph", "float32", 256, 133.90),
    (TENSORFLOW, "a100", "graph", "float16", 1, 4.51), (TENSORFLOW, "a100", "graph", "float16", 8, 5.40),
    (TENSORFLOW, "a100", "graph", "float16", 64, 18.14), (TENSORFLOW, "a100", "graph", "float16", 128, 37.86),
    (TENSORFLOW, "a100", "graph", "float16", 256, 81.02),
    (TENSORFLOW, "v100", "graph", "float32", 1, 5.79), (TENSORFLOW, "v100", "graph", "float32", 8, 10.22),
    (TENSORFLOW, "v100", "graph", "float32", 64, 51.12), (TENSORFLOW, "v100", "graph", "float32", 128, 96.61),
    (TENSORFLOW, "v100", "graph", "float32", 256, 189.85),
    (TENSORFLOW, "v100", "graph", "float16", 1, 4.25), (TENSORFLOW, "v100", "graph", "float16", 8, 5.57),
    (TENSORFLOW, "v100", "graph", "float16", 64, 23.86), (TENSORFLOW, "v100", "graph", "float16", 128, 47.04),
    (TENSORFLOW, "v100", "graph", "float16", 256, 94.67),
    (TENSORFLOW, "t4", "graph", "float32", 1, 7.34), (TENSORFLOW, "t4", "graph", "float32", 8, 23.41),
    (TENSORFLOW, "t4", "graph", "float32", 64, 150.82), (TENSORFLOW, "t4", "graph", "float32", 128, 297.82),
    (TENSORFLOW, "t4", "graph", "float32", 256, 601.37),
    (TENSORFLOW, "t4", "graph", "float16", 1, 4.77), (TENSORFLOW, "t4", "graph", "float16", 8, 10.16),
    (TENSORFLOW, "t4", "graph", "float16", 64, 64.56), (TENSORFLOW, "t4", "graph", "float16", 128, 128.55),
    (TENSORFLOW, "t4", "graph", "float16", 256, 257.71),
]
# the runtimes' per-op overheads (batch 1) and the FP32 convolution efficiencies (batch 256) of v100/t4
FITTED = {(PYTORCH, "v100", "float32", 1), (TENSORFLOW, "v100", "float32", 1),
          (PYTORCH, "v100", "float32", 256), (PYTORCH, "t4", "float32", 256)}
FITTED_EFFICIENCY = {("v100", "float32"), ("t4", "float32")}


def main() -> None:
    graphs = {}
    rows = []
    print(f"{'source':10s} {'gpu':5s} {'runtime':7s} {'precision':9s} {'batch':>5s} {'published ms':>12s} "
          f"{'predicted ms':>12s} {'error':>8s}")
    for source, gpu, runtime, precision, batch, published in PUBLISHED:
        graph = graphs.setdefault(batch, load_graph("resnet50", batch=batch))
        # DeepLearningExamples' PyTorch rows at FP16 ran a float32 model under AMP (--amp): autocast
        predicted = estimate_latency(graph, gpu, dtype=precision, runtime=runtime,
                                     autocast=source is PYTORCH and precision == "float16").latency_s * 1e3
        error = predicted / published - 1
        fitted = (source, gpu, precision, batch) in FITTED
        rows.append((batch, error, fitted, (gpu, precision) in FITTED_EFFICIENCY))
        label = "PyTorch" if source is PYTORCH else "TensorFlow"
        print(f"{label:10s} {gpu:5s} {runtime:7s} {precision:9s} {batch:5d} {published:12.2f} {predicted:12.2f} "
              f"{error:+8.1%}{'  fit' if fitted else ''}", flush=True)
    checked = [(b, e) for b, e, fitted, _ in rows if not fitted]
    apart = [abs(e) for b, e, _, near_fit in rows if b >= 64 and not near_fit]
    large = [abs(e) for b, e in checked if b >= 64]
    single = [abs(e) for b, e in checked if b == 1]
    print(f"\nmedian |error| (rows not fitted): batch >= 64 {statistics.median(large):.1%} over {len(large)} "
          f"(goal 20%); batch 1 {statistics.median(single):.1%} over {len(single)} (goal 30%); all "
          f"{statistics.median(abs(e) for _, e in checked):.1%} over {len(checked)}")
    print(f"batch >= 64 on a (GPU, precision) with no fitted efficiency: median {statistics.median(apart):.1%} "
          f"over {len(apart)}")
    print("sources:\n  " + PYTORCH + "\n  " + TENSORFLOW)


if __name__ == "__main__":
    main()
