"""The ``costplan`` command. Imports nothing heavy until a subcommand runs."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

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
                   help="float32, float16, bfloat16, or int8 (traced in float32, bytes at 1 per element)")
    p.add_argument("--weights", metavar="FILE",
                   help="a state dict for the model (torch.load(weights_only=True)): your trained weights")
    p.add_argument("--trust-pickle", "--trust-code", action="store_true", dest="trust_pickle",
                   help="allow loading a pickled model with torch.load(weights_only=False): runs code in the file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="costplan",
        description="Hardware-aware cost model and pruning planner for PyTorch models.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    a = sub.add_parser("analyze", help="per-layer MACs, parameters, bytes and weight reuse",
                       description="Trace MODEL into a layer graph and report where its work and weights are.")
    _model_args(a)
    a.add_argument("--plan", metavar="FILE", help="plan JSON: report effective MACs and non-zero params under it")
    a.add_argument("--hw", metavar="PROFILE[,PROFILE...]",
                   help="estimate latency on these hardware profiles (names from `costplan profiles`, or .toml paths)")
    out = a.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="write the report as JSON")
    out.add_argument("--csv", action="store_true", help="write the per-layer rows as CSV")
    a.add_argument("--runtime", choices=("eager", "fused", "graph"),
                   help="the execution to model: eager PyTorch, fused (TensorRT-like) or graph (TF1); default: the profile's")
    a.add_argument("-o", "--output", metavar="FILE", help="write JSON/CSV here instead of stdout")
    a.add_argument("--top", type=_positive_int, metavar="N", help="show only the N heaviest layers")
    a.add_argument("--depth", type=_positive_int, metavar="D", help="group layers by the first D parts of their names")
    a.add_argument("--plot", metavar="FILE.png",
                   help="also draw the roofline (layers as points) and the per-layer latency breakdown (needs --hw)")

    sub.add_parser("models", help="list the model names costplan can build")

    pl = sub.add_parser("plan", help="per-layer sparsity that meets a latency budget on a device",
                        description="Solve for per-layer sparsity ratios and patterns the device can exploit that "
                                    "meet the budget while removing the least important weights.")
    _model_args(pl)
    target = pl.add_mutually_exclusive_group()
    target.add_argument("--budget", help="latency budget: 2ms, 500us, or a speedup such as 2x")
    target.add_argument("--speedup", help="speedup over the dense model, e.g. 2x")
    pl.add_argument("--hw", required=True, metavar="PROFILE", help="hardware profile name or .toml path")
    pl.add_argument("--runtime", choices=("eager", "fused", "graph"),
                    help="the execution to plan for: eager PyTorch, fused (TensorRT-like) or graph; default: the profile's")
    pl.add_argument("--pattern", default="auto",
                    help="auto (every pattern the device exploits), or a comma list of channel, head, "
                         "unstructured, N:M (2:4), RxC (4x1)")
    pl.add_argument("--levels", type=_positive_int, default=20, help="ratio levels per group (default 20)")
    pl.add_argument("--max-ratio", type=float, default=0.9, help="most of any layer to remove (default 0.9)")
    pl.add_argument("--exclude", default="", metavar="NAMES", help="comma-separated layers to keep dense")
    pl.add_argument("--ratio", action="append", default=[], metavar="LAYER=MIN:MAX",
                    help="bound one layer's ratio, e.g. layer4.0.conv1=0:0.5 (repeatable)")
    pl.add_argument("--prune-ends", action="store_true", help="also prune the first conv and the classifier")
    pl.add_argument("--importance", default="magnitude", choices=["magnitude", "gaussian"],
                    help="magnitude: normalised w^2 of the model's weights; gaussian: no weights needed")
    pl.add_argument("--time-limit", type=float, default=10.0, help="solver time limit in seconds (default 10)")
    pl.add_argument("-o", "--output", metavar="FILE", help="write the plan JSON here")
    pl.add_argument("--json", action="store_true", help="print the plan JSON (or the sweep) instead of a table")
    pl.add_argument("--export", choices=["torch-pruning", "nni", "inc"],
                    help="print the plan as that pruner's configuration")
    pl.add_argument("--sweep", metavar="LOW:HIGH:N",
                    help="plan at N budgets from LOW to HIGH times the dense latency: the latency/importance front")

    pr = sub.add_parser("profiles", help="list hardware profiles, or show one")
    pr.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    pr.add_argument("name", nargs="?", help="profile name or .toml path (with show)")

    c = sub.add_parser("calibrate", help="fit a hardware profile of this machine's CPU by microbenchmarks",
                       description="Time GEMMs, convolutions, memory copies and tiny ops on this CPU and write a "
                                   "profile that --hw accepts. Takes about a minute.")
    c.add_argument("-o", "--output", metavar="FILE", default="local.toml", help="profile to write (default local.toml)")
    c.add_argument("--name", default="local", help="the profile's name (default local)")
    c.add_argument("--quick", action="store_true", help="fewer shapes and rounds (about 8 s); graded by the same self-check")
    c.add_argument("--threads", type=_positive_int, help="threads to calibrate with (default: torch's); predictions hold "
                                                          "for models run with the same number")

    m = sub.add_parser("measure", help="time the real model on this CPU, per layer and total, beside the prediction",
                       description="Run MODEL with random weights on this machine's CPU (warm-up, repeats, "
                                   "median) and print measured against predicted latency per layer and in total.")
    _model_args(m)
    m.add_argument("--hw", required=True, metavar="PROFILE", help="profile to predict with, e.g. local.toml from calibrate")
    m.add_argument("--plan", metavar="FILE", help="a plan: predict under it (the model is measured as given)")
    m.add_argument("--repeat", type=_positive_int, default=10, help="timed runs (default 10)")
    m.add_argument("--warmup", type=_positive_int, default=3, help="untimed runs first (default 3)")
    m.add_argument("--top", type=_positive_int, metavar="N", help="show only the N slowest layers")
    m.add_argument("--json", action="store_true", help="write the comparison as JSON")
    m.add_argument("-o", "--output", metavar="FILE", help="write JSON here instead of stdout")
    pn = sub.add_parser("prune", help="prune a model to a plan (one shot, or in a training loop) and save it",
                        description="Prune MODEL to the plan's ratios and write the compacted model (weights plus "
                                    "an architecture description; load it with costplan.load). Without --train: "
                                    "one shot, weight magnitude. With --train FILE.py:FUNCTION: FUNCTION() returns "
                                    "a loader of (inputs, targets) batches, or (loader, loss_fn(model, batch)); "
                                    "the pruner prunes gradually while training with SGD.")
    _model_args(pn)
    pn.add_argument("--plan", required=True, metavar="FILE", help="plan JSON (from `costplan plan -o`)")
    pn.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the pruned model (.pt)")
    pn.add_argument("--criterion", default="magnitude",
                    help="magnitude (L1), l2, random; with --train also gradient, taylor, movement, snip_momentum")
    pn.add_argument("--scope", default="local", choices=("local", "global"), help="per-layer ratios or one ranking")
    pn.add_argument("--train", metavar="FILE.py:FUNCTION", help="training data (runs that file: your own code)")
    pn.add_argument("--steps", type=_positive_int, default=1000, help="training steps with --train (default 1000)")
    pn.add_argument("--lr", type=float, default=0.01, help="SGD learning rate with --train (default 0.01)")
    pn.add_argument("--frequency", type=_positive_int, help="prune every N steps (default steps/20)")
    pn.add_argument("--decay", default="cube", choices=("cube", "exp", "cos", "linear"),
                    help="how sparsity rises (default cube, as AGP)")
    pn.add_argument("--no-compact", action="store_true", help="keep the dense shapes (zeros stay in place)")
    return parser


def _write(text: str, path: str | None) -> None:
    if path:
        from costplan.api import write_atomic

        write_atomic(path, text)
    else:
        sys.stdout.write(text)


def cmd_analyze(args: argparse.Namespace) -> int:
    from costplan.api import analyze, load_graph, traced_dtype

    from costplan.errors import CostplanError

    from costplan.api import writable

    writable(args.output)
    writable(args.plot, "plot")
    profiles = [h.strip() for h in args.hw.split(",") if h.strip()] if args.hw else [None]
    if args.plot and not args.hw:
        raise CostplanError("--plot draws the model on a device's roofline: give --hw (e.g. --hw rtx3090)")
    if args.plot:
        from costplan.plots import pyplot

        pyplot()   # fail on a missing matplotlib before tracing
    graph = load_graph(args.model, input=args.input, batch=args.batch, seq_len=args.seq_len,
                       dtype=traced_dtype(args.dtype), trust_pickle=args.trust_pickle,
                       weights=args.weights)
    reports = [analyze(graph, hw=hw, plan=args.plan, dtype=args.dtype, runtime=args.runtime if hw else None)
               for hw in profiles]
    if args.plot:
        from costplan.api import estimate_latency
        from costplan.plots import analysis_figure

        analysis_figure(graph, [estimate_latency(graph, hw, args.plan, args.dtype, args.runtime) for hw in profiles],
                        args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.json:
        import json

        text = reports[0].to_json() if len(reports) == 1 else \
            json.dumps({"reports": [r.to_dict() for r in reports]}, indent=2) + "\n"
        _write(text, args.output)
        return 0
    if args.csv:
        from costplan.api import reports_csv

        _write(reports_csv(reports), args.output)
        return 0
    from costplan.render import compare_table, report_table, totals_text

    console = _console()
    if len(reports) == 1:
        console.print(report_table(reports[0], top=args.top, depth=args.depth, width=console.width))
        console.print(totals_text(reports[0]))
    else:
        console.print(compare_table(reports, top=args.top, depth=args.depth))
        for warning in dict.fromkeys(w for r in reports for w in r.warnings):
            console.print(f"[bold yellow]warning:[/] {warning}")
    return 0


def _console():  # noqa: ANN202
    from rich.console import Console

    # piped output keeps whole layer names on one line rather than folding them at 80 columns
    return Console() if sys.stdout.isatty() else Console(width=200)


def cmd_profiles(args: argparse.Namespace) -> int:
    from costplan.api import list_profiles, load_profile
    from costplan.render import profile_table

    if args.action == "show":
        if not args.name:
            from costplan.errors import CostplanError

            raise CostplanError("name the profile: costplan profiles show rtx3090")
        from costplan.api import profile_fields
        from costplan.render import profile_detail

        profile = load_profile(args.name)
        console = _console()
        console.print(profile_table([profile]))
        console.print(profile_detail(profile, profile_fields(args.name)))
        return 0
    _console().print(profile_table([load_profile(n) for n in list_profiles()]))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from costplan.api import calibrate, writable, write_profile

    writable(args.output, "profile")
    result = calibrate(name=args.name, quick=args.quick, threads=args.threads)
    write_profile(result, args.output)
    console = _console()
    console.print(f"wrote {args.output}: {result.summary()}")
    for line in result.quality.lines():
        console.print(line)
    for warning in result.quality.warnings():
        console.print(f"[bold yellow]{warning}[/]")
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from costplan.api import measure, writable

    writable(args.output)

    comparison = measure(args.model, hw=args.hw, plan=args.plan, input=args.input, batch=args.batch,
                         seq_len=args.seq_len, dtype=args.dtype, trust_pickle=args.trust_pickle, weights=args.weights,
                         repeat=args.repeat, warmup=args.warmup)
    if args.json:
        _write(comparison.to_json(), args.output)
        return 0
    from costplan.render import measure_table

    table, summary = measure_table(comparison, top=args.top)
    console = _console()
    console.print(table)
    console.print(summary)
    return 0


def _bounds(specs: list[str]) -> dict[str, tuple[float, float]]:
    from costplan.errors import CostplanError

    out = {}
    for spec in specs:
        name, _, rng = spec.partition("=")
        lo, _, hi = rng.partition(":")
        try:
            low, high = float(lo), float(hi)
        except ValueError:
            raise CostplanError(f"--ratio '{spec}': expected LAYER=MIN:MAX, e.g. layer4.0.conv1=0:0.5") from None
        if not 0 <= low <= high < 1:
            raise CostplanError(f"--ratio '{spec}': need 0 <= MIN <= MAX < 1")
        out[name] = (low, high)
    return out


def _fractions(text: str) -> list[float]:
    from costplan.errors import CostplanError

    try:
        low, high, n = text.split(":")
        low_f, high_f, count = float(low), float(high), int(n)
    except ValueError:
        raise CostplanError(f"--sweep '{text}': expected LOW:HIGH:N, e.g. 0.3:1.0:15") from None
    if not (0 < low_f <= high_f and count >= 1):
        raise CostplanError(f"--sweep '{text}': need 0 < LOW <= HIGH and N >= 1")
    return [low_f + (high_f - low_f) * i / max(1, count - 1) for i in range(count)]


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from costplan.api import importance_for, load_graph, parse_budget, plan, save_plan, sweep, traced_dtype, writable
    from costplan.errors import CostplanError

    writable(args.output, "plan")

    if not args.sweep and not (args.budget or args.speedup):
        raise CostplanError("give --budget (2ms, 500us, 2x) or --speedup (2x), or --sweep LOW:HIGH:N")
    budget = parse_budget(args.budget or (args.speedup if args.speedup.lower().endswith("x") else args.speedup + "x")) \
        if (args.budget or args.speedup) else None
    options = dict(hw=args.hw, patterns=args.pattern, dtype=args.dtype, levels=args.levels, max_ratio=args.max_ratio,
                   exclude=[e for e in args.exclude.split(",") if e], keep_ends_dense=not args.prune_ends,
                   bounds=_bounds(args.ratio), importance=args.importance, time_limit=args.time_limit,
                   runtime=args.runtime)
    graph = load_graph(args.model, input=args.input, batch=args.batch, seq_len=args.seq_len,
                       dtype=traced_dtype(args.dtype), trust_pickle=args.trust_pickle, weights=args.weights)
    load = dict(input=args.input, batch=args.batch, seq_len=args.seq_len, trust_pickle=args.trust_pickle,
                weights=args.weights)
    options["importance"] = importance_for(graph, args.model, options["importance"], None, None, load)
    if args.sweep:
        from costplan.render import sweep_rows, sweep_table

        front = sweep(graph, fractions=_fractions(args.sweep), **options)
        text = json.dumps(sweep_rows(front), indent=2) + "\n"
        if args.output:
            _write(text, args.output)
        if args.json:
            sys.stdout.write(text)
            return 0
        _console().print(sweep_table(front, graph.model, args.hw))
        if args.output:
            print(f"wrote {args.output}", file=sys.stderr)
        return 0
    result = plan(graph, budget=budget, **options)
    if args.output:
        save_plan(result.plan, args.output)
    if args.export:
        from costplan.api import export_plan

        sys.stdout.write(json.dumps(export_plan(result.plan, args.export), indent=2) + "\n")
        return 0
    if args.json:
        sys.stdout.write(json.dumps(result.plan.to_dict(), indent=2) + "\n")
        return 0
    from costplan.render import plan_table, plan_text

    console = _console()
    console.print(plan_table(result))
    console.print(plan_text(result, args.output))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from costplan.api import load_graph, load_plan, prune, save, training_data, writable

    writable(args.output, "pruned model")
    plan = load_plan(args.plan)
    graph = load_graph(args.model, input=args.input, batch=args.batch, seq_len=args.seq_len,
                       trust_pickle=args.trust_pickle, weights=args.weights)
    data, loss_fn = training_data(args.train) if args.train else (None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # the plan's notes come back in the result, printed below
        small = prune(args.model, plan, criterion=args.criterion, scope=args.scope, compact=not args.no_compact,
                      input=args.input, batch=args.batch, seq_len=args.seq_len, trust=args.trust_pickle,
                      weights=args.weights, data=data, loss_fn=loss_fn, steps=args.steps if args.train else 0, lr=args.lr,
                      frequency=args.frequency, decay=args.decay, progress=True)
    save(small, args.output)
    done = small._costplan["pruned"]
    for note in done["warnings"]:
        print(f"costplan: warning: {note}", file=sys.stderr)
    after = sum(p.numel() for p in small.parameters())
    zeros = sum(int((p == 0).sum()) for p in small.parameters())
    console = _console()
    console.print(f"pruned {len(done['weights'])} weight(s) element-wise and {len(done['groups'])} channel/head "
                  f"group(s) of {graph.model}" + (f" over {done['steps']} training steps" if done["steps"] else " (one shot)"))
    console.print(f"parameters {graph.total_params:,} -> {after:,} ({zeros:,} zeros); wrote {args.output}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from costplan.api import model_names

    names = model_names()
    print("torchvision:", ", ".join(names["torchvision"]))
    print("hf:", ", ".join(names["hf"]))
    print("files: FILE.py:FUNCTION, TorchScript (.pt), torch.export (.pt2)")
    return 0


COMMANDS = {"analyze": cmd_analyze, "plan": cmd_plan, "models": cmd_models, "profiles": cmd_profiles,
            "calibrate": cmd_calibrate, "measure": cmd_measure, "prune": cmd_prune}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from costplan import __version__

        print(f"costplan {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("costplan: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001
        from costplan.errors import CostplanError

        if args.debug:
            raise
        if isinstance(exc, CostplanError):
            print(f"costplan: error: {exc}", file=sys.stderr)
            return 2
        print(f"costplan: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the "
              "traceback, and please report it)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
