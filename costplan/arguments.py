"""The command line's flags: one parser per command. What each command does with them is
:mod:`costplan.cli`'s."""

from __future__ import annotations

import argparse

MODEL_HELP = (
    "a torchvision name (resnet50), hf:NAME (hf:bert-base, hf:llama-7b), FILE.py:FUNCTION "
    "(imports FILE.py and runs FUNCTION: this executes that file's code), or a saved model "
    "(TorchScript or torch.export file; pickles only with --trust-pickle)"
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--input", metavar="SHAPE", help="input shape(s), e.g. 1x3x224x224 (comma-separated for several)")
    p.add_argument("--batch", type=_positive_int, help="batch size (replaces the first dimension)")
    p.add_argument("--seq-len", type=_positive_int, help="sequence length for hf: text models (default 128)")
    p.add_argument("--dtype", default="float32",
                   help="float32, float16, bfloat16, or int8/float8 (traced in float32, bytes at 1 per element)")
    p.add_argument("--weights", metavar="FILE",
                   help="a state dict for the model (torch.load(weights_only=True)): your trained weights")
    p.add_argument("--trust-pickle", "--trust-code", action="store_true", dest="trust_pickle",
                   help="allow loading a pickled model with torch.load(weights_only=False): runs code in the file")


# the weight-only criteria of costplan.scoring (tests/test_scoring.py checks) and Gaussian weights; named
# here so that --help needs no torch
IMPORTANCE_CHOICES = ("magnitude", "l1", "l2", "random", "gaussian")


def _generation_args(p: argparse.ArgumentParser) -> None:
    """Flags of a causal LM's generation and of the precision of its weights."""
    g = p.add_argument_group("generation (hf: causal language models)")
    g.add_argument("--phase", choices=("prefill", "decode"),
                   help="trace one generation pass with a KV cache: prefill (the prompt, --seq-len tokens) or "
                        "decode (one new token per sequence against --context cached tokens)")
    g.add_argument("--context", type=int, default=0, metavar="N", help="tokens already in the KV cache (decode)")
    p.add_argument("--weights-dtype", metavar="FORMAT",
                   help="weight-only quantisation: int8, int4 (groups of 128; int4-g32 etc. for others) or float8; "
                        "the math runs at --dtype (float16/bfloat16) and dequantises")
    p.add_argument("--tf32", action="store_true",
                   help="float32 matmuls on TF32 tensor cores (torch.backends.cuda.matmul.allow_tf32 = True); "
                        "convolutions use TF32 already by PyTorch's default")
    p.add_argument("--fp16-accumulate", action="store_true",
                   help="float16 matmuls accumulating in FP16 (CUBLAS_COMPUTE_16F): twice the rate on GeForce "
                        "parts whose profile states it")
    p.add_argument("--autocast", action="store_true",
                   help="with --dtype float16/bfloat16: a float32 model under PyTorch AMP (torch.autocast), which "
                        "casts each weight at every call: a kernel more per conv/linear")


def _runtime_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=("eager", "fused", "graph"),
                   help="the execution to model: eager PyTorch, fused (TensorRT-like) or graph (TF1); "
                        "default: the profile's")


def _analyze_parser(sub: argparse._SubParsersAction) -> None:
    """`costplan analyze`'s flags."""
    a = sub.add_parser("analyze", help="per-layer MACs, parameters, bytes and weight reuse",
                       description="Trace MODEL into a layer graph and report where its work and weights are.")
    _model_args(a)
    _generation_args(a)
    a.add_argument("--prompt", type=_positive_int, metavar="P",
                   help="with --generate: a whole generation, prefill of P prompt tokens then G decode steps")
    a.add_argument("--generate", type=_positive_int, metavar="G", help="tokens to generate after --prompt")
    a.add_argument("--plan", metavar="FILE", help="plan JSON: report effective MACs and non-zero params under it")
    a.add_argument("--hw", metavar="PROFILE[,PROFILE...]",
                   help="estimate latency on these hardware profiles (names from `costplan profiles`, or .toml paths)")
    out = a.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="write the report as JSON")
    out.add_argument("--csv", action="store_true", help="write the per-layer rows as CSV")
    _runtime_arg(a)
    a.add_argument("-o", "--output", metavar="FILE", help="write JSON/CSV here instead of stdout")
    a.add_argument("--top", type=_positive_int, metavar="N", help="show only the N heaviest layers")
    a.add_argument("--depth", type=_positive_int, metavar="D", help="group layers by the first D parts of their names")
    a.add_argument("--plot", metavar="FILE.png",
                   help="also draw the roofline (layers as points) and the per-layer latency breakdown (needs --hw)")


def _plan_parser(sub: argparse._SubParsersAction) -> None:
    """`costplan plan`'s flags."""
    pl = sub.add_parser("plan", help="per-layer sparsity that meets a latency budget on a device",
                        description="Solve for per-layer sparsity ratios and patterns the device can exploit that "
                                    "meet the budget while removing the least important weights.")
    _model_args(pl)
    _generation_args(pl)
    target = pl.add_mutually_exclusive_group()
    target.add_argument("--budget", help="latency budget: 2ms, 500us, or a speedup such as 2x")
    target.add_argument("--speedup", help="speedup over the dense model, e.g. 2x")
    pl.add_argument("--hw", required=True, metavar="PROFILE", help="hardware profile name or .toml path")
    _runtime_arg(pl)
    pl.add_argument("--pattern", default="auto",
                    help="auto (every pattern the device exploits), or a comma list of channel, head, "
                         "unstructured, N:M (2:4), RxC (4x1)")
    pl.add_argument("--levels", type=_positive_int, default=20, help="ratio levels per group (default 20)")
    pl.add_argument("--max-ratio", type=float, default=None,
                    help="most of any group or layer to remove (default: 0.8 of a channel group or a "
                         "layer's heads, 0.9 of a layer's weights element-wise)")
    pl.add_argument("--exclude", default="", metavar="NAMES", help="comma-separated layers to keep dense")
    pl.add_argument("--ratio", action="append", default=[], metavar="LAYER=MIN:MAX",
                    help="bound one layer's ratio, e.g. layer4.0.conv1=0:0.5 (repeatable)")
    pl.add_argument("--prune-ends", action="store_true", help="also prune the first conv and the classifier")
    pl.add_argument("--importance", default="magnitude", choices=IMPORTANCE_CHOICES,
                    help="magnitude (= l2): normalised w^2 of the model's weights, as prune --criterion "
                         "ranks them; l1: |w|; gaussian: no weights needed")
    pl.add_argument("--time-limit", type=float, default=10.0, help="solver time limit in seconds (default 10)")
    pl.add_argument("-o", "--output", metavar="FILE", help="write the plan JSON here")
    pl.add_argument("--json", action="store_true", help="print the plan JSON (or the sweep) instead of a table")
    pl.add_argument("--export", choices=["torch-pruning", "nni", "inc"],
                    help="print the plan as that pruner's configuration")
    pl.add_argument("--sweep", metavar="LOW:HIGH:N",
                    help="plan at N budgets from LOW to HIGH times the dense latency: the latency/importance front")


def _calibrate_parser(sub: argparse._SubParsersAction) -> None:
    """`costplan calibrate`'s flags."""
    c = sub.add_parser("calibrate", help="fit a hardware profile of this machine's CPU by microbenchmarks",
                       description="Time GEMMs, convolutions, memory copies and tiny ops on this CPU and write a "
                                   "profile that --hw accepts. Takes about a minute on a 2-core machine.")
    c.add_argument("-o", "--output", metavar="FILE", default="local.toml", help="profile to write (default local.toml)")
    c.add_argument("--name", default="local", help="the profile's name (default local)")
    c.add_argument("--quick", action="store_true", help="fewer shapes and rounds (about 30 s on 2 cores); graded by the same self-check")
    c.add_argument("--threads", type=_positive_int, help="threads to calibrate with (default: torch's); predictions hold "
                                                          "for models run with the same number")


def _measure_parser(sub: argparse._SubParsersAction) -> None:
    """`costplan measure`'s flags."""
    m = sub.add_parser("measure", help="time the real model on this CPU, per layer and total, beside the prediction",
                       description="Run MODEL with random weights on this machine's CPU (warm-up, repeats, "
                                   "median) and print measured against predicted latency per layer and in total.")
    _model_args(m)
    m.add_argument("against", nargs="?", metavar="MODEL_B",
                   help="a second model (a pruned file costplan saved, say): both are timed alternately in one run "
                        "and their measured ratio is set beside the predicted one")
    m.add_argument("--hw", required=True, metavar="PROFILE",
                   help="profile to predict with, e.g. local.toml from calibrate; a GPU profile needs a CUDA GPU here")
    m.add_argument("--plan", metavar="FILE", help="a plan: predict under it (the model is measured as given)")
    m.add_argument("--allocator", choices=("kept", "as-is"), default="kept",
                   help="kept (default): time with glibc keeping freed memory, as calibrate does (measure restarts "
                        "itself with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647); as-is: this process's "
                        "allocator settings")
    m.add_argument("--repeat", type=_positive_int, default=10, help="timed runs (default 10)")
    m.add_argument("--warmup", type=_positive_int, default=3, help="untimed runs first (default 3)")
    m.add_argument("--top", type=_positive_int, metavar="N", help="show only the N slowest layers")
    m.add_argument("--json", action="store_true", help="write the comparison as JSON")
    m.add_argument("-o", "--output", metavar="FILE", help="write JSON here instead of stdout")


def _prune_parser(sub: argparse._SubParsersAction) -> None:
    """`costplan prune`'s flags."""
    pn = sub.add_parser("prune", help="prune a model to a plan (one shot, or in a training loop) and save it",
                        description="Prune MODEL to the plan's ratios and write the compacted model (weights plus "
                                    "an architecture description; load it with costplan.load). Without --train: "
                                    "one shot, weight magnitude. With --train FILE.py:FUNCTION: FUNCTION() returns "
                                    "a loader of (inputs, targets) batches, or (loader, loss_fn(model, batch)); "
                                    "the pruner prunes gradually while training with SGD.")
    _model_args(pn)
    pn.add_argument("--plan", required=True, metavar="FILE", help="plan JSON (from `costplan plan -o`), or a sweep file")
    pn.add_argument("--point", type=_positive_int, metavar="K", help="with a sweep file: prune to its point K")
    pn.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the pruned model (.pt)")
    pn.add_argument("--criterion", default="magnitude",
                    help="magnitude (= l2, w^2), l1, random; with --train also gradient, taylor, movement, snip_momentum")
    pn.add_argument("--scope", default="local", choices=("local", "global"), help="per-layer ratios or one ranking")
    pn.add_argument("--train", metavar="FILE.py:FUNCTION", help="training data (runs that file: your own code)")
    pn.add_argument("--steps", type=_positive_int, default=1000, help="training steps with --train (default 1000)")
    pn.add_argument("--eval", metavar="FILE.py:FUNCTION",
                    help="evaluation batches of (inputs, targets): loss and accuracy before, during and after (runs that file)")
    pn.add_argument("--report-every", type=_positive_int, metavar="N",
                    help="with --train, a progress line every N steps (default: ten lines)")
    pn.add_argument("--lr", type=float, default=0.01, help="SGD learning rate with --train (default 0.01)")
    pn.add_argument("--frequency", type=_positive_int, help="prune every N steps (default steps/20)")
    pn.add_argument("--decay", default="cube", choices=("cube", "exp", "cos", "linear"),
                    help="how sparsity rises (default cube, as AGP)")
    pn.add_argument("--no-compact", action="store_true", help="keep the dense shapes (zeros stay in place)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="costplan",
        description="Hardware-aware cost model and pruning planner for PyTorch models.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _analyze_parser(sub)
    sub.add_parser("models", help="list the model names costplan can build")
    _plan_parser(sub)
    pr = sub.add_parser("profiles", help="list hardware profiles, or show one")
    pr.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    pr.add_argument("name", nargs="?", help="profile name or .toml path (with show)")
    _calibrate_parser(sub)
    _measure_parser(sub)
    _prune_parser(sub)
    return parser
