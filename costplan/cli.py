"""The ``costplan`` command. Imports nothing heavy until a subcommand runs."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from costplan.arguments import build_parser
from costplan.progress import status

def _write(text: str, path: str | None) -> None:
    if path:
        from costplan.api import write_atomic

        write_atomic(path, text)
    else:
        sys.stdout.write(text)


def cmd_analyze(args: argparse.Namespace) -> int:
    from costplan.api import analyze, load_graph, traced_dtype, writable
    from costplan.errors import CostplanError

    writable(args.output)
    writable(args.plot, "plot")
    profiles = [h.strip() for h in args.hw.split(",") if h.strip()] if args.hw else [None]
    if args.plot and not args.hw:
        raise CostplanError("--plot draws the model on a device's roofline: give --hw (e.g. --hw rtx3090)")
    if args.plot:
        from costplan.plots import pyplot

        pyplot()   # fail on a missing matplotlib before tracing
    if args.prompt or args.generate:
        return _generation(args, profiles)
    graph = load_graph(args.model, input=args.input, batch=args.batch, seq_len=args.seq_len,
                       dtype=traced_dtype(args.dtype), trust_pickle=args.trust_pickle, weights=args.weights,
                       progress=True, phase=args.phase, context=args.context)
    reports = [analyze(graph, hw=hw, plan=args.plan, dtype=args.dtype, runtime=args.runtime if hw else None,
                       **_precisions(args)) for hw in profiles]
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


def _precisions(args: argparse.Namespace) -> dict[str, object]:
    """The precision flags (arguments._generation_args) as analyze, plan and generation take them."""
    return {"weights_dtype": args.weights_dtype, "tf32": args.tf32, "autocast": args.autocast,
            "fp16_accumulate": args.fp16_accumulate}


def _generation(args: argparse.Namespace, profiles: list) -> int:
    """`analyze --prompt P --generate G`: a whole generation on each device."""
    from costplan.api import generation
    from costplan.errors import CostplanError

    if not (args.prompt and args.generate):
        raise CostplanError("a whole generation needs both --prompt P and --generate G")
    if args.phase or args.context or args.plot or args.csv:
        raise CostplanError("--prompt/--generate price both phases themselves: leave out --phase, --context, --plot "
                            "and --csv")
    if profiles == [None]:
        raise CostplanError("--prompt/--generate give latencies: name the device with --hw")
    results = [generation(args.model, hw=hw, prompt=args.prompt, generate=args.generate, batch=args.batch,
                          dtype=args.dtype, plan=args.plan, runtime=args.runtime, progress=True,
                          **_precisions(args)) for hw in profiles]
    if args.json:
        import json

        rows = [r.to_dict() for r in results]
        _write(json.dumps(rows[0] if len(rows) == 1 else {"generations": rows}, indent=2) + "\n", args.output)
        return 0
    from costplan.render import generation_table

    console = _console()
    console.print(generation_table([r.to_dict() for r in results]))
    for warning in dict.fromkeys(w for r in results for w in r.to_dict()["warnings"]):
        console.print(f"[bold yellow]warning:[/] {warning}")
    return 0


def _console():  # noqa: ANN202
    from rich.console import Console

    # piped output keeps whole layer names on one line rather than folding them at 80 columns
    return Console() if sys.stdout.isatty() else Console(width=200)


def cmd_profiles(args: argparse.Namespace) -> int:
    import costplan     # the lazy public API: reading profiles imports no torch (well under a second)
    from costplan.render import profile_table

    if args.action == "show":
        if not args.name:
            raise costplan.CostplanError("name the profile: costplan profiles show rtx3090")
        from costplan.render import profile_detail

        profile = costplan.load_profile(args.name)
        console = _console()
        console.print(profile_table([profile]))
        console.print(profile_detail(profile, costplan.profile_fields(args.name)))
        return 0
    _console().print(profile_table([costplan.load_profile(n) for n in costplan.list_profiles()]))
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
    for warning in result.warnings():
        console.print(f"[bold yellow]{warning}[/]")
    return 0


def _restart_with_kept_memory() -> None:
    """Run this command again in a process that keeps freed memory from its start (glibc reads these
    variables once, at startup), unless it already does or the allocator is not glibc's."""
    import os
    import platform

    from costplan.measure import ALLOCATOR_ENV, allocator

    if platform.libc_ver()[0] != "glibc" or not allocator(False).startswith("glibc's defaults"):
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "costplan", *sys.argv[1:]], {**os.environ, **ALLOCATOR_ENV})


def cmd_measure(args: argparse.Namespace) -> int:
    from costplan.api import measure, measure_pair, writable

    writable(args.output)
    if args.allocator == "kept" and args.restartable:
        _restart_with_kept_memory()
    common = dict(hw=args.hw, plan=args.plan, input=args.input, batch=args.batch, seq_len=args.seq_len,
                  dtype=args.dtype, trust_pickle=args.trust_pickle, weights=args.weights, repeat=args.repeat,
                  warmup=args.warmup, keep_memory=args.allocator == "kept")
    what = args.model if args.against is None else f"{args.model} and {args.against} alternately"
    with status(f"timing {what} ({args.warmup} warm-up and {args.repeat} timed runs)"):
        if args.against is None:
            comparison = measure(args.model, **common)
        else:
            comparison = measure_pair(args.model, args.against, **common)
    if args.json:
        _write(comparison.to_json(), args.output)
        return 0
    from costplan.render import measure_pair_text, measure_table

    console = _console()
    if args.against is None:
        table, summary = measure_table(comparison, top=args.top)
        console.print(table)
        console.print(summary)
    else:
        console.print(measure_pair_text(comparison))
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
                   runtime=args.runtime, **_precisions(args))
    graph = load_graph(args.model, input=args.input, batch=args.batch, seq_len=args.seq_len,
                       dtype=traced_dtype(args.dtype), trust_pickle=args.trust_pickle, weights=args.weights,
                       progress=True, phase=args.phase, context=args.context)
    load = dict(input=args.input, batch=args.batch, seq_len=args.seq_len, trust_pickle=args.trust_pickle,
                weights=args.weights)
    with status(f"scoring {args.model}'s weights ({args.importance})"):
        options["importance"] = importance_for(graph, args.model, options["importance"], None, None, load)
    if args.sweep:
        from costplan.api import SWEEP_FORMAT
        from costplan.render import sweep_rows, sweep_table

        fractions = _fractions(args.sweep)
        with status(f"planning {len(fractions)} budgets"):
            front = sweep(graph, fractions=fractions, **options)
        text = json.dumps({"costplan": SWEEP_FORMAT, "model": graph.model, "hardware": args.hw,
                           "points": sweep_rows(front)}, indent=2) + "\n"
        if args.output:
            _write(text, args.output)
        if args.json:
            sys.stdout.write(text)
            return 0
        _console().print(sweep_table(front, graph.model, args.hw))
        if args.output:
            print(f"wrote {args.output}: every point's plan; prune one with "
                  f"costplan prune {args.model} --plan {args.output} --point K", file=sys.stderr)
        return 0
    with status(f"planning {args.model} for {args.hw}"):
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
    from costplan.api import load_graph, load_plan, prune_with_result, save, training_data, writable

    writable(args.output, "pruned model")
    plan = load_plan(args.plan, args.point)
    graph = load_graph(args.model, input=args.input, batch=args.batch, seq_len=args.seq_len,
                       trust_pickle=args.trust_pickle, weights=args.weights, progress=True)
    data, loss_fn = training_data(args.train) if args.train else (None, None)
    eval_data = training_data(args.eval)[0] if args.eval else None
    console = _console()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # the plan's notes come back in the result, printed below
        done = prune_with_result(
            args.model, plan, criterion=args.criterion, scope=args.scope, compact=not args.no_compact,
            input=args.input, batch=args.batch, seq_len=args.seq_len, trust=args.trust_pickle, weights=args.weights,
            data=data, loss_fn=loss_fn, steps=args.steps if args.train else 0, lr=args.lr, frequency=args.frequency,
            decay=args.decay, progress=True, eval_data=eval_data, report_every=args.report_every,
            log=lambda line: console.print(line, highlight=False))
    small = done.model
    save(small, args.output)
    for note in done.warnings:
        print(f"costplan: warning: {note}", file=sys.stderr)
    for line in _prune_summary(graph, done, args):
        console.print(line, highlight=False)
    return 0


def _prune_summary(graph, done, args: argparse.Namespace) -> list[str]:  # noqa: ANN001  (LayerGraph, PruneResult)
    """What a prune did, in counts that say what they count, and what to do next."""
    small = done.model
    after = sum(p.numel() for p in small.parameters())
    zeros = sum(int((p == 0).sum()) for p in small.parameters())
    how = f"over {done.steps} training steps" if done.steps else "in one shot, without training"
    lines = [f"pruned {graph.model} {how}: {len(done.groups)} channel/head group(s) cut out, "
             f"{len(done.weights)} weight tensor(s) pruned element-wise",
             f"parameters {graph.total_params:,} -> {after:,} ({zeros:,} of them zero); wrote {args.output}"]
    if done.before is not None:
        lines.append(f"before: {done.before}")
        lines.append(f"after:  {done.after}")
    if not done.steps:
        lines.append("One-shot pruning removes weights the model was trained with: its accuracy usually drops "
                     "(more the deeper the cut) until it is fine-tuned. In benchmarks/planning_quality.py "
                     "(MNIST-1D, 1.4-1.75x faster) 3 epochs of fine-tuning brought every pruned model back to "
                     "within 1.3 points of the dense model's accuracy. To fine-tune: "
                     f"costplan prune {args.model} --plan {args.plan} -o {args.output} --train FILE.py:FUNCTION "
                     "--steps N (add --eval FILE.py:FUNCTION to watch the accuracy), which prunes gradually over "
                     "the first three quarters of the steps and fine-tunes in the last quarter.")
    return lines


def cmd_models(args: argparse.Namespace) -> int:
    from costplan.api import model_names

    names = model_names()
    print("torchvision:", ", ".join(names["torchvision"]))
    print("hf:", ", ".join(names["hf"]))
    print("files: FILE.py:FUNCTION, TorchScript (.pt), torch.export (.pt2)")
    return 0


COMMANDS = {"analyze": cmd_analyze, "plan": cmd_plan, "models": cmd_models, "profiles": cmd_profiles,
            "calibrate": cmd_calibrate, "measure": cmd_measure, "prune": cmd_prune}


def _values_like_options(argv: Sequence[str]) -> list[str]:
    """``--budget -1ms`` as ``--budget=-1ms``: argparse takes a value starting with '-' for an option
    and gives a usage error; bound to its flag, the budget's own check says what is wrong with it."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--budget", "--speedup") and arg.startswith("-") and arg[1:2].isdigit():
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_values_like_options(sys.argv[1:] if argv is None else argv))
    args.restartable = argv is None     # the command line is this process's own: it may re-exec itself
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
