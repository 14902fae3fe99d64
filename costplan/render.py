"""Rich tables for reports. Pure presentation: takes a Report, prints nothing itself."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from costplan.humanize import bytes_, si
from costplan.report import LayerCost, Report, group_rows


def select_rows(report: Report, top: int | None = None, depth: int | None = None) -> list[LayerCost]:
    """The rows to show: grouped to ``depth`` dotted parts, the ``top`` heaviest, in model order."""
    rows = group_rows(report.layers, depth) if depth else list(report.layers)
    if top:
        key = (lambda r: r.latency_ms or 0.0) if report.hardware else (lambda r: r.macs)
        keep = {id(r) for r in sorted(rows, key=key, reverse=True)[:top]}
        rows = [r for r in rows if id(r) in keep]
    return rows


def report_table(report: Report, top: int | None = None, depth: int | None = None) -> Table:
    sparse = report.totals["effective_macs"] != report.totals["macs"] or \
        report.totals["nonzero_params"] != report.totals["params"]
    shape = ", ".join("x".join(map(str, s)) for s in report.input_shapes)
    title = f"{report.model}  input {shape} {report.dtype}" + (f"  on {report.hardware}" if report.hardware else "")
    table = Table(title=title, title_justify="left", show_lines=False, header_style="bold")
    table.add_column("layer", overflow="fold", min_width=12)
    table.add_column("op")
    table.add_column("MACs", justify="right")
    if sparse:
        table.add_column("eff. MACs", justify="right")
    table.add_column("params", justify="right")
    if sparse:
        table.add_column("non-zero", justify="right")
    table.add_column("reuse\nMAC/weight", justify="right")
    table.add_column("intensity\nMAC/byte", justify="right")
    table.add_column("act. out", justify="right")
    if report.hardware:
        table.add_column("latency ms", justify="right")
        table.add_column("bound")
    for r in select_rows(report, top, depth):
        cells = [r.name, r.op, si(r.macs) if r.macs else "-"]
        if sparse:
            cells.append(si(r.effective_macs) if r.macs else "-")
        cells.append(si(r.params) if r.params else "-")
        if sparse:
            cells.append(si(r.nonzero_params) if r.params else "-")
        cells += [f"{r.reuse:,.0f}" if r.params and r.macs else "-",
                  f"{r.intensity:.1f}" if r.macs else "-", bytes_(r.act_out_bytes)]
        if report.hardware:
            cells += [f"{r.latency_ms:.4f}" if r.latency_ms is not None else "-", r.bound or "-"]
        table.add_row(*cells)
    return table


def totals_text(report: Report) -> Text:
    t = report.totals
    text = Text()
    text.append("total  ", style="bold")
    text.append(f"MACs {si(t['macs'])}  params {si(t['params'])}  weights {bytes_(t['weight_bytes'])}  "
                f"activations {bytes_(t['activation_bytes'])}")
    if t["effective_macs"] != t["macs"] or t["nonzero_params"] != t["params"]:
        text.append(f"\nunder plan  MACs {si(t['effective_macs'])} ({t['effective_macs'] / t['macs']:.1%})  "
                    f"non-zero params {si(t['nonzero_params'])} ({t['nonzero_params'] / t['params']:.1%})")
    if t.get("latency_ms") is not None:
        text.append(f"\nlatency {t['latency_ms']:.3f} ms on {report.hardware}")
    if report.traced_on != "meta":
        text.append(f"\ntraced with real tensors on {report.traced_on} (the model needs data to build or run)",
                    style="dim")
    if report.unsupported:
        ops = ", ".join(f"{op} x{n}" for op, n in report.unsupported.items())
        text.append(f"\nops without a MAC formula (counted as 0 MACs): {ops}", style="yellow")
    return text
