"""Time costplan's analysis against fvcore, FlopCounterMode, ptflops and thop, in one run.

    python benchmarks/bench_analyze.py            # ResNet-50 (1x3x224x224) and BERT-base (seq 384)
    python benchmarks/bench_analyze.py --cli      # also: CLI end to end vs `import torch, torchvision`

Peers need a model with real weights and run its forward pass; costplan builds on the meta device
and runs nothing. Both ways of using costplan are timed: from a name (build on meta + trace) and on
the same real-weight instance the peers get. Times are medians of --repeat runs; ratios are peer
time / costplan time (above 1: costplan is faster) and peer MACs / costplan MACs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import torch

warnings.filterwarnings("ignore")


def timed(fn: Callable[[], float], repeat: int) -> tuple[float, float]:
    """(median seconds, MACs the tool reported)."""
    times, macs = [], 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        macs = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), macs


def resnet50() -> tuple[torch.nn.Module, tuple, dict]:
    import torchvision

    return torchvision.models.resnet50().eval(), (torch.randn(1, 3, 224, 224),), {}


def bert_base() -> tuple[torch.nn.Module, tuple, dict]:
    import transformers

    transformers.logging.set_verbosity_error()
    model = transformers.BertModel(transformers.BertConfig(), add_pooling_layer=True).eval()
    return model, (), {"input_ids": torch.zeros(1, 384, dtype=torch.long)}


def peers(spec: str, model: torch.nn.Module, args: tuple, kwargs: dict) -> dict[str, Callable[[], float]]:
    from costplan.api import load_graph
    from costplan.trace import trace

    def costplan_spec() -> float:
        return load_graph(spec, seq_len=384 if spec.startswith("hf:") else None).total_macs

    def costplan_real() -> float:
        return trace(model, args, kwargs).total_macs

    def fvcore() -> float:
        from fvcore.nn import FlopCountAnalysis

        inputs = args if args else tuple(kwargs.values())
        analysis = FlopCountAnalysis(model, inputs).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return analysis.total()  # fvcore's "flops" are MACs

    def flop_counter_mode() -> float:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(*args, **kwargs)
        return counter.get_total_flops() / 2

    def ptflops() -> float:
        from ptflops import get_model_complexity_info

        if args:
            shape = tuple(args[0].shape[1:])
            macs, _ = get_model_complexity_info(model, shape, as_strings=False, print_per_layer_stat=False,
                                                verbose=False, backend="aten")
        else:
            macs, _ = get_model_complexity_info(model, (1,), as_strings=False, print_per_layer_stat=False,
                                                verbose=False, backend="aten",
                                                input_constructor=lambda _: dict(kwargs))
        return float(macs)

    def thop() -> float:
        import copy

        from thop import profile

        # thop adds buffers to the modules it profiles, so it gets a copy
        macs, _ = profile(copy.deepcopy(model), inputs=args or tuple(kwargs.values()), verbose=False)
        return float(macs)

    return {"costplan (name, meta)": costplan_spec, "costplan (real model)": costplan_real,
            "fvcore": fvcore, "FlopCounterMode": flop_counter_mode, "ptflops (aten)": ptflops, "thop": thop}


def bench_counting(repeat: int) -> None:
    for label, spec, build in (("ResNet-50 1x3x224x224", "resnet50", resnet50),
                               ("BERT-base seq 384", "hf:bert-base", bert_base)):
        model, args, kwargs = build()
        tools = peers(spec, model, args, kwargs)
        results = {}
        for name, fn in tools.items():
            try:
                fn()  # warm: imports and first-call caches are not what is compared
                results[name] = timed(fn, repeat)
            except Exception as exc:  # noqa: BLE001  a peer that cannot count this model
                results[name] = (float("nan"), float("nan"))
                print(f"  {name} failed on {label}: {type(exc).__name__}: {str(exc)[:100]}")
        base_t, base_m = results["costplan (name, meta)"]
        print(f"\n{label}")
        print(f"  {'tool':24s} {'seconds':>9s} {'MACs':>16s} {'time / costplan':>16s} {'MACs / costplan':>16s}")
        for name, (t, m) in results.items():
            print(f"  {name:24s} {t:9.3f} {m:16,.0f} {t / base_t:16.2f} {m / base_m:16.4f}")


def run_seconds(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_cli(repeat: int) -> None:
    exe = [sys.executable, "-m", "costplan.cli"]
    imports = run_seconds([sys.executable, "-c", "import torch, torchvision"], repeat)
    analyze = run_seconds([*exe, "analyze", "resnet50"], repeat)
    helptime = run_seconds([*exe, "--help"], repeat)
    print("\nCLI end to end (median of %d)" % repeat)
    print(f"  python -c 'import torch, torchvision'   {imports:6.2f} s")
    print(f"  costplan analyze resnet50              {analyze:6.2f} s   ratio {analyze / imports:.2f} (goal <= 1.5)")
    print(f"  costplan --help                        {helptime:6.2f} s   (goal < 0.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cli", action="store_true", help="also time the CLI end to end")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_counting(args.repeat)
    if args.cli:
        bench_cli(args.repeat)


if __name__ == "__main__":
    main()
