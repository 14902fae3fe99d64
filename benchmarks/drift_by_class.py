"""How far each kind of work lies over its quickest time on this machine, and whether the machine's
two references (calibrate's reference workload and its DRAM copy) move with it.

A calibrated profile prices each probe at its quickest block; `costplan measure` reads a model's
median round. Where a kind of work scatters further over its quickest than another, its layers read
slower against their price as a user times them, and where its time does not move with either
reference, scaling a prediction by them cannot explain the difference. This times, in one process,
round-robin for ROUNDS rounds, a block of each of:

- ref:  the reference workload (`costplan.hardware.probes.reference_workload`), 4 calls a block
- copy: the DRAM copy (`bandwidth_workload`), 2 calls a block
- gemm: a linear layer, 256 x 1024 -> 1024 (compute-bound)
- pw1:  a 1x1 convolution 16 -> 96 over 1 x 16 x 112 x 112 (maps in cache)
- pw8:  the same 1x1 at batch 8 (its output 38.5 MB: through DRAM)
- dw8:  a 3x3 depthwise convolution, stride 2, over 8 x 96 x 112 x 112 (MobileNet-V2's features.2)

and prints each one's median and slowest block over its quickest, the correlation of the blocks'
log times across rounds, and how much dividing by each reference narrows a layer's scatter.

    python benchmarks/drift_by_class.py --rounds 120     # about 3 minutes on 2 cores

Run under the allocator settings a calibrated profile assumes (`MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=2147483647`), as `costplan measure` runs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from rich.progress import track

from costplan.hardware.probes import bandwidth_workload, reference_workload


def _block(fn: Callable[[], object], calls: int) -> float:
    """Mean seconds of ``calls`` calls after an untimed one, as calibrate times a block."""
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def workloads() -> dict[str, tuple[Callable[[], object], int]]:
    """name -> (one call, calls a block)."""
    torch.manual_seed(0)
    ref, copy = reference_workload(), bandwidth_workload()
    dw = torch.nn.Conv2d(96, 96, 3, 2, 1, groups=96).eval()
    pw = torch.nn.Conv2d(16, 96, 1).eval()
    gemm = torch.nn.Linear(1024, 1024).eval()
    xd, xp8, xp1, xg = (torch.randn(8, 96, 112, 112), torch.randn(8, 16, 112, 112), torch.randn(1, 16, 112, 112),
                        torch.randn(256, 1024))
    return {"ref": (ref.call, 4), "copy": (copy.call, 2), "gemm": (lambda: gemm(xg), 4),
            "pw1": (lambda: pw(xp1), 8), "pw8": (lambda: pw(xp8), 1), "dw8": (lambda: dw(xd), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=120)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    items = workloads()
    blocks: dict[str, list[float]] = {k: [] for k in items}
    with torch.inference_mode():
        for _ in track(range(args.rounds), description="rounds"):
            for name, (fn, calls) in items.items():
                blocks[name].append(_block(fn, calls))
    over = {k: np.array(v) / min(v) for k, v in blocks.items()}
    print(f"torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds")
    print(f"{'':6s}{'quickest ms':>12s}{'median/quickest':>17s}{'slowest/quickest':>18s}")
    for k, a in over.items():
        print(f"{k:6s}{min(blocks[k]) * 1e3:12.3f}{np.median(a):17.2f}{a.max():18.2f}")
    names = list(over)
    corr = np.corrcoef(np.log(np.array([over[k] for k in names])))
    print("\ncorrelation of log block time across rounds")
    print("      " + "".join(f"{k:>7s}" for k in names))
    for i, k in enumerate(names):
        print(f"{k:6s}" + "".join(f"{corr[i, j]:7.2f}" for j in range(len(names))))

    def scatter(x: np.ndarray) -> float:    # median |log deviation from the median|
        return float(np.median(np.abs(np.log(x) - np.median(np.log(x)))))
    print("\na layer's scatter (median |log deviation|) raw, and divided by each reference's block")
    for layer in ("gemm", "pw1", "pw8", "dw8"):
        print(f"  {layer:5s} raw {scatter(over[layer]):.3f}" +
              "".join(f"  / {r} {scatter(over[layer] / over[r]):.3f}" for r in ("ref", "copy")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
