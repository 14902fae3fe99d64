"""Rich tables for reports. Pure presentation: takes a Report, prints nothing itself."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from typing import TYPE_CHECKING

from costplan.humanize import bytes_, si

if TYPE_CHECKING:   # the report module imports torch; profile tables need none of it
    from costplan.report import LayerCost, Report


def select_rows(report: Report, top: int | None = None, depth: int | None = None) -> list[LayerCost]:
    """The rows to show: grouped to ``depth`` dotted parts, the ``top`` heaviest, in model order."""
    from costplan.report import group_rows

    rows = group_rows(report.layers, depth) if depth else list(report.layers)
    if top:
        key = (lambda r: r.latency_ms or 0.0) if report.hardware else (lambda r: r.macs)
        keep = {id(r) for r in sorted(rows, key=key, reverse=True)[:top]}
        rows = [r for r in rows if id(r) in keep]
    return rows


# columns a narrow terminal drops first (latency and bound stay): below this many columns, these go
NARROW = ((150, ("act. out", "reuse", "intensity")), (110, ("x ridge", "% peak")))


def _report_cells(report: Report, r: LayerCost, sparse: bool) -> dict[str, str]:
    """One row of :func:`report_table`, by column."""
    cells = {"layer": r.name, "op": r.op, "MACs": si(r.macs) if r.macs else "-"}
    if sparse:
        cells["eff. MACs"] = si(r.effective_macs) if r.macs else "-"
    cells["params"] = si(r.params) if r.params else "-"
    if sparse:
        cells["non-zero"] = si(r.nonzero_params) if r.params else "-"
    cells["reuse"] = f"{r.reuse:,.0f}" if r.params and r.macs else "-"
    cells["intensity"] = f"{r.intensity:.1f}" if r.macs else "-"
    cells["act. out"] = bytes_(r.act_out_bytes)
    if report.hardware:
        ridge = report.totals.get("ridge_macs_per_byte") or 0.0
        attained = r.extra.get("attained")
        cells["x ridge"] = f"{r.intensity / ridge:.2f}" if r.macs and ridge else "-"
        cells["% peak"] = f"{attained:.0%}" if attained else "-"
        cells["latency ms"] = f"{r.latency_ms:.4f}" if r.latency_ms is not None else "-"
        cells["bound"] = r.bound or "-"
    return cells


_HEADERS = {"reuse": "reuse\nMAC/weight", "intensity": "intensity\nMAC/byte"}


def report_table(report: Report, top: int | None = None, depth: int | None = None, width: int | None = None) -> Table:
    """Per layer: MACs, params, reuse, intensity, bytes and (with hardware) latency and bound. On a
    terminal ``width`` narrower than the full table, the least important columns are left out, and
    the caption says so."""
    sparse = report.totals["effective_macs"] != report.totals["macs"] or \
        report.totals["nonzero_params"] != report.totals["params"]
    shape = ", ".join("x".join(map(str, s)) for s in report.input_shapes)
    title = f"{report.model}  input {shape} {report.dtype}" + (f"  on {report.hardware}" if report.hardware else "")
    table = Table(title=title, title_justify="left", show_lines=False, header_style="bold")
    hidden = [c for limit, cols in NARROW if width is not None and report.hardware and width < limit for c in cols]
    if hidden:
        table.caption = (f"{', '.join(hidden)} left out to fit {width} columns (a wider terminal, --json or --csv "
                         "shows them)")
    rows = [_report_cells(report, r, sparse) for r in select_rows(report, top, depth)]
    columns = [c for c in (rows[0] if rows else _report_cells(report, report.layers[0], sparse)) if c not in hidden]
    for c in columns:
        if c == "layer":
            table.add_column(c, overflow="fold", min_width=12)
        else:
            table.add_column(_HEADERS.get(c, c), justify="left" if c in ("op", "bound") else "right")
    for cells in rows:
        table.add_row(*[cells[c] for c in columns])
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
        bounds: dict[str, float] = {}
        for r in report.layers:
            bounds[r.bound or "-"] = bounds.get(r.bound or "-", 0.0) + (r.latency_ms or 0.0)
        split = ", ".join(f"{b} {ms / t['latency_ms']:.0%}" for b, ms in sorted(bounds.items(), key=lambda kv: -kv[1]) if ms)
        text.append(f"\nlatency {t['latency_ms']:.3f} ms on {report.hardware} at {t['precision']}, "
                    f"{t.get('runtime', '')} runtime ({split} of it); "
                    f"ridge point {t['ridge_macs_per_byte']:.1f} MAC/byte")
        if t.get("energy_mj") is not None:
            text.append(f"\nenergy {t['energy_mj']:.2f} mJ per inference (estimate)")
    if t.get("phase"):
        text.append(generation_line(t))
    if report.traced_on != "meta":
        text.append(f"\ntraced with real tensors on {report.traced_on} (a saved model, or one that needs data to "
                    "build or run)",
                    style="dim")
    if report.unsupported:
        ops = ", ".join(f"{op} x{n}" for op, n in report.unsupported.items())
        text.append(f"\nops without a MAC formula (counted as 0 MACs): {ops}", style="yellow")
    for warning in report.warnings:
        text.append(f"\nwarning: {warning}", style="bold yellow")
    return text


def generation_line(t: dict) -> str:
    """A generation pass's totals in one line: its phase, speed and memory."""
    what = (f"\n{t['phase']}: batch {t['batch']}, {t['new_tokens']} new token(s) per sequence, {t['context']} in the "
            "KV cache before")
    if t.get("tokens_per_s"):
        what += (f"; time to first token {t['time_to_first_token_ms']:.3f} ms" if t["phase"] == "prefill"
                 else f"; {t['per_token_ms']:.3f} ms per token") + f", {t['tokens_per_s']:,.1f} tokens/s"
    weights = f"weights {t.get('weights_dtype', '')} " if t.get("weights_dtype") else ""
    what += (f"\nmemory {bytes_(t['memory_bytes'])} ({weights}+ KV cache {bytes_(t['kv_cache_bytes'])}"
             f"{' at ' + t['kv_cache_dtype'] if t.get('kv_cache_dtype') else ''} + activations)")
    if t.get("memory_capacity_bytes"):
        what += f" of {bytes_(t['memory_capacity_bytes'])}: " + ("fits" if t["fits"] else "DOES NOT FIT")
    return what


def generation_table(rows: list[dict]) -> Table:
    """A whole generation per device (``GenerationEstimate.to_dict`` rows)."""
    first = rows[0]
    table = Table(title=f"{first['model']}: prompt {first['prompt']} tokens, {first['generate']} generated, batch "
                        f"{first['batch']}", title_justify="left", header_style="bold",
                  caption="per token: the first and last decode step (the KV cache grows between them); "
                          "memory: weights + KV cache + activations at the end")
    for col in ("device", "precision", "first token ms", "per token ms", "decode tok/s", "total ms", "KV cache",
                "memory", "fits"):
        table.add_column(col, justify="left" if col in ("device", "precision") else "right")
    for r in rows:
        per = r["per_token_ms"]
        table.add_row(r["hardware"], r["precision"] + (f", weights {r['weights_dtype']}"
                                                        if r["weights_dtype"] not in (None, r["precision"]) else ""),
                      f"{r['time_to_first_token_ms']:.2f}",
                      f"{per['first']:.3f} .. {per['last']:.3f}" if per["mean"] is not None else "-",
                      f"{r['decode_tokens_per_s']:,.0f}" if r["decode_tokens_per_s"] else "-",
                      f"{r['total_ms']:.1f}", bytes_(r["kv_cache_bytes"]), bytes_(r["memory_bytes"]),
                      "-" if r["fits"] is None else ("yes" if r["fits"] else "NO"))
    return table


def compare_table(reports: list[Report], top: int | None = None, depth: int | None = None) -> Table:
    """One model on several devices: latency and bound per layer, side by side."""
    first = reports[0]
    table = Table(title=f"{first.model}: latency by device (ms, and what bounds the layer)", title_justify="left",
                  header_style="bold", caption="bound: compute, memory (bandwidth), overhead (per-op launch and "
                                               "dispatch), fused (folded into the layer before it)")
    table.add_column("layer", overflow="fold", min_width=12)
    table.add_column("op")
    table.add_column("MACs", justify="right")
    for r in reports:
        table.add_column(f"{r.hardware}\n{r.totals['precision']}, {r.totals.get('runtime', '')}", justify="right")
    by_device = [{row.name: row for row in select_rows(r, None, depth)} for r in reports]
    rows = select_rows(first, None, depth)
    if top:
        worst = sorted(rows, key=lambda row: max((d[row.name].latency_ms or 0.0) / (r.totals["latency_ms"] or 1.0)
                                               for d, r in zip(by_device, reports)), reverse=True)[:top]
        keep = {row.name for row in worst}
        rows = [row for row in rows if row.name in keep]
    for row in rows:
        cells = [row.name, row.op, si(row.macs) if row.macs else "-"]
        for d in by_device:
            cell = d[row.name]
            cells.append(f"{cell.latency_ms:.4f} {cell.bound or '-'}")
        table.add_row(*cells)
    table.add_section()
    table.add_row("total", "", si(first.totals["macs"]), *[f"{r.totals['latency_ms']:.3f}" for r in reports])
    if all(r.totals.get("energy_mj") is not None for r in reports):
        table.add_row("energy mJ", "", "", *[f"{r.totals['energy_mj']:.2f}" for r in reports])
    return table


def profile_table(profiles: list) -> Table:  # list[HardwareProfile]
    """Hardware profiles: peak per dtype, bandwidth, ridge point, what sparsity they exploit."""
    table = Table(title="hardware profiles", title_justify="left", header_style="bold")
    for col in ("name", "kind", "peak TMAC/s", "GB/s", "on-chip MB", "ridge MAC/B", "exploits"):
        table.add_column(col, justify="left" if col in ("name", "kind", "exploits") else "right")
    for p in profiles:
        peaks = ", ".join(f"{d} {v / 1e12:.3g}" for d, v in p.peak_macs.items())
        exploits = ", ".join(
            f"{pat} ({'compute x' + format(s.compute_speedup, 'g') if s.compute_speedup > 1 else ''}"
            f"{'+' if s.compute_speedup > 1 and s.compressed_weights else ''}"
            f"{'compressed weights' if s.compressed_weights else ''})"
            for pat, s in p.sparsity.items() if s.useful) or "none (channel/head only)"
        table.add_row(p.name, p.kind, peaks, f"{p.bandwidth / 1e9:g}", f"{p.onchip_bytes / 1e6:g}",
                      f"{p.ridge(p.default_dtype):.1f}", exploits)
    return table


def profile_detail(profile, fields: list[tuple[str, str, str]]) -> Table:  # HardwareProfile
    """Every field of one profile file with its value and the public source its comment cites."""
    table = Table(title=f"{profile.name}: {profile.description}", caption=f"from {profile.source}",
                  title_justify="left", header_style="bold")
    table.add_column("field", no_wrap=True)
    table.add_column("value", justify="right", overflow="fold", max_width=40)
    table.add_column("source", overflow="fold")
    for field, value, note in fields:
        table.add_row(field, value, note or "-")
    return table


def measure_table(comparison, top: int | None = None) -> tuple[Table, Text]:  # Comparison
    """Per-layer predicted against measured latency, and a summary line."""
    c = comparison
    shape = ", ".join("x".join(map(str, s)) for s in c.input_shapes)
    table = Table(title=f"{c.model}  input {shape}: predicted ({c.hardware}) vs measured on this machine",
                  title_justify="left", header_style="bold")
    for col in ("layer", "op", "bound", "predicted ms", "measured ms", "range ms", "error"):
        table.add_column(col, justify="right" if col.endswith(("ms", "error")) else "left")

    def spread(r) -> str:  # LayerTiming | BlockTiming
        return "-" if r.quickest_ms is None else f"{r.quickest_ms:.4f}-{r.slowest_ms:.4f}"
    rows = list(c.layers)
    if top:
        keep = {id(r) for r in sorted(rows, key=lambda r: r.measured_ms, reverse=True)[:top]}
        rows = [r for r in rows if id(r) in keep]
    for r in rows:
        error = f"{r.predicted_ms / r.measured_ms - 1:+.0%}" if r.measured_ms > 0 else "-"
        table.add_row(r.name, r.op, r.bound, f"{r.predicted_ms:.4f}", f"{r.measured_ms:.4f}", spread(r), error)
    for b in c.blocks:
        table.add_row(f"{b.name or '(whole model)'} ({len(b.layers)} layers, fused)", "block", "-",
                      f"{b.predicted_ms:.4f}", f"{b.measured_ms:.4f}", spread(b), f"{b.error:+.0%}", style="cyan")
    text = Text()
    text.append("total  ", style="bold")
    text.append(f"predicted {c.predicted_ms:.3f} ms, measured {c.measured_ms:.3f} ms ({c.runs_said}), "
                f"error {c.error:+.1%}; " + (
                    f"{c.unattributed_ms:.3f} ms of the measurement is framework time between layers"
                    if c.unattributed_ms >= 0 else
                    f"the per-layer timings add up to {-c.unattributed_ms:.3f} ms more than the whole runs, so "
                    "framework time is not known: layers between modules are taken under the tracer, whose "
                    "bookkeeping between kernels leaves short kernels to start cold (read their measured times "
                    "as high), and the machine's speed may have changed between them"))
    rounds = len(c.measured_runs_ms)
    if any(l.quickest_ms is not None for l in c.layers):
        text.append(f"\nper layer: a module called once a pass is read in a pass of its own in each of the {rounds} "
                    "rounds (measured: the median; range: the quickest and slowest reading); other layers by the "
                    "tracer's clock, outside the rounds")
    if c.blocks:
        text.append(f"\nfused: {', '.join(b.name or 'the whole model' for b in c.blocks)} ran by a fused path, "
                    "timed whole around its call; the measured times of the layers inside are the tracer's, "
                    "of the unfused path the forward pass does not run")
    if c.allocator:
        text.append(f"\nmemory: {c.allocator}")
    if c.reference_ratio is not None:
        dram = (f" and its DRAM copy {c.bandwidth_ratio:.2f}x" if c.bandwidth_ratio is not None else "")
        text.append(f"\nmachine speed: the calibration's reference workload ran {c.reference_ratio:.2f}x as long as "
                    f"when {c.hardware} was calibrated{dram}; with the prediction scaled by that (memory-bound "
                    f"layers by the copy), error {c.adjusted_error:+.1%}")
    for warning in c.warnings:
        text.append(f"\nwarning: {warning}", style="yellow")
    return table, text


def measure_pair_text(pair) -> Text:  # PairComparison
    """Two models timed alternately: each one's prediction against its measurement, and the ratio."""
    text = Text()
    for c in (pair.first, pair.second):
        text.append(f"{c.model}", style="bold")
        text.append(f"  predicted {c.predicted_ms:.3f} ms ({c.hardware}), measured {c.measured_ms:.3f} ms "
                    f"({c.runs_said}), error {c.error:+.1%}\n")
    low, high = min(pair.round_ratios), max(pair.round_ratios)
    text.append("ratio  ", style="bold")
    text.append(f"{pair.first.model} / {pair.second.model}: predicted {pair.predicted_ratio:.3f}x, measured "
                f"{pair.measured_ratio:.3f}x (median of {len(pair.round_ratios)} back-to-back rounds, "
                f"{low:.2f}x to {high:.2f}x), error {pair.ratio_error:+.1%}")
    if pair.first.reference_ratio is not None:
        text.append(f"\nmachine speed: the calibration's reference workload ran {pair.first.reference_ratio:.2f}x as "
                    f"long as when {pair.first.hardware} was calibrated (the ratio needs no such correction)")
    for warning in pair.warnings:
        text.append(f"\nwarning: {warning}", style="yellow")
    return text


def plan_table(result) -> Table:  # PlanResult
    """Every layer whose time the plan changes: what it removes there, latency before and after, bound."""
    table = Table(title=f"{result.graph.model} on {result.profile.name} at {result.precision}, "
                        f"{result.profile.runtime} runtime: budget {result.plan.budget['latency_ms']:.3f} ms",
                  caption="removed: the share of the layer's weights (channel: output channels; head: heads) its "
                          "plan entry takes out; '-': no entry of its own, it shrinks with or reads pruned channels",
                  title_justify="left", header_style="bold")
    for col in ("layer", "pattern", "removed", "before ms", "after ms", "bound after"):
        table.add_column(col, justify="right" if col in ("removed", "before ms", "after ms") else "left")
    for row in result.rows:
        table.add_row(row.layer, row.pattern, "-" if row.sparsity is None else f"{row.sparsity:.0%}",
                      f"{row.before_ms:.4f}", f"{row.after_ms:.4f}", row.bound)
    if not result.rows:
        table.add_row("(no layer needs pruning: the dense model meets the budget)", "", "", "", "", "")
    return table


def plan_text(result, path: str | None = None) -> Text:  # PlanResult
    p = result.plan.predicted
    solver = result.solver
    text = Text()
    text.append("predicted  ", style="bold")
    text.append(f"{p['dense_latency_ms']:.3f} ms -> {p['latency_ms']:.3f} ms ({p['speedup']:.2f}x); MACs "
                f"{si(p['dense_macs'])} -> {si(p['macs'])}; params {si(p['dense_params'])} -> {si(p['params'])}; "
                + (f"importance kept {p['importance_kept']:.1%}" if p.get("importance_kept") is not None else
                   f"predicted loss increase {p['importance_removed']:.4f} (each group pruned alone, curves made convex, summed)"))
    text.append("\nimportance  ", style="bold")
    text.append(result.importance_from or result.importance)
    gap = "" if solver.gap is None else f" (gap {solver.gap:.2%})"
    text.append(f"\nsolver  {solver.status.value}{gap} in {solver.seconds:.2f} s over {solver.units} groups, "
                f"{solver.options} options; patterns {', '.join(result.patterns)}")
    for warning in result.warnings:
        text.append("\nwarning  ", style="bold yellow")
        text.append(warning)
    if path:
        text.append(f"\nwrote {path}")
    return text


def sweep_rows(points: list) -> list[dict]:
    """A sweep's points (SweepPoint) as JSON rows, numbered from 1, each with its plan."""
    rows = []
    for k, pt in enumerate(points, 1):
        if pt.result is None:
            rows.append({"point": k, "budget_fraction": round(pt.fraction, 4), "unreachable": pt.unreachable})
            continue
        p = pt.result.plan.predicted
        rows.append({"point": k, "budget_fraction": round(pt.fraction, 4), "latency_ms": pt.result.latency_s * 1e3,
                     "speedup": p["speedup"], "importance_kept": p["importance_kept"], "macs": p["macs"],
                     "params": p["params"], "status": pt.result.solver.status.value, "gap": pt.result.solver.gap,
                     "plan": pt.result.plan.to_dict()})
    return rows


def sweep_table(points: list, model: str, hw: str) -> Table:
    """The latency/importance front: one row per budget."""
    table = Table(title=f"{model} on {hw}: importance kept against latency", title_justify="left", header_style="bold")
    for col in ("point", "budget x dense", "latency ms", "speedup", "importance kept", "MACs", "params"):
        table.add_column(col, justify="right")
    for r in sweep_rows(points):
        if "unreachable" in r:
            table.add_row(str(r["point"]), f"{r['budget_fraction']:.3f}", "unreachable", "", "", "", "")
            continue
        table.add_row(str(r["point"]), f"{r['budget_fraction']:.3f}", f"{r['latency_ms']:.4f}", f"{r['speedup']:.2f}x",
                      "-" if r["importance_kept"] is None else f"{r['importance_kept']:.1%}", si(r["macs"]), si(r["params"]))
    return table
