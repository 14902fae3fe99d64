"""The ``costplan`` command. Imports nothing heavy until a subcommand runs."""

from __future__ import annotations

import argparse
import sys
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
    p.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16 (default float32)")
    p.add_argument("--trust-pickle", action="store_true",
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
    out = a.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="write the report as JSON")
    out.add_argument("--csv", action="store_true", help="write the per-layer rows as CSV")
    a.add_argument("-o", "--output", metavar="FILE", help="write JSON/CSV here instead of stdout")
    a.add_argument("--top", type=_positive_int, metavar="N", help="show only the N heaviest layers")
    a.add_argument("--depth", type=_positive_int, metavar="D", help="group layers by the first D parts of their names")

    sub.add_parser("models", help="list the model names costplan can build")
    return parser


def _write(text: str, path: str | None) -> None:
    if path:
        from costplan.planfile import write_atomic

        write_atomic(path, text)
    else:
        sys.stdout.write(text)


def cmd_analyze(args: argparse.Namespace) -> int:
    from costplan.api import analyze

    report = analyze(args.model, plan=args.plan, input=args.input, batch=args.batch,
                     seq_len=args.seq_len, dtype=args.dtype, trust_pickle=args.trust_pickle)
    if args.json:
        _write(report.to_json(), args.output)
        return 0
    if args.csv:
        _write(report.to_csv(), args.output)
        return 0
    from rich.console import Console

    from costplan.render import report_table, totals_text

    # piped output keeps whole layer names on one line rather than folding them at 80 columns
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(report_table(report, top=args.top, depth=args.depth))
    console.print(totals_text(report))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from costplan.models import hf, vision

    print("torchvision:", ", ".join(sorted(vision.names())))
    print("hf:", ", ".join(f"hf:{n}" for n in hf.names()))
    print("files: FILE.py:FUNCTION, TorchScript (.pt), torch.export (.pt2)")
    return 0


COMMANDS = {"analyze": cmd_analyze, "models": cmd_models}


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
