"""Pictures of a model on a device: the roofline with its layers as points, and where the time goes.

Each function draws on a matplotlib ``Axes`` from the public API's results (a layer graph and an
:class:`~costplan.hardware.roofline.Estimate`), so a notebook and ``costplan analyze --plot`` draw the
same thing. Needs matplotlib (``pip install 'costplan[plot]'``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from costplan.errors import CostplanError
from costplan.hardware.roofline import Estimate
from costplan.trace.graph import LayerGraph

BOUND_COLOURS = {"compute": "#d62728", "memory": "#1f77b4", "overhead": "#7f7f7f", "fused": "#bcbd22"}


def pyplot() -> Any:
    """matplotlib.pyplot with a file backend, or a clear error."""
    try:
        import matplotlib

        if not os.environ.get("MPLBACKEND") and "ipykernel" not in sys.modules:   # a file, not a window
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CostplanError("plotting needs matplotlib: pip install 'costplan[plot]'") from None
    return plt


def layer_points(graph: LayerGraph, estimate: Estimate) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """For each layer with MACs: intensity (MACs per DRAM byte), attained MAC/s, name and bound."""
    xs, ys, names, bounds = [], [], [], []
    for layer in graph.layers:
        cost = estimate.layers[layer.name]
        if layer.macs <= 0 or cost.latency_s <= 0:
            continue
        xs.append(cost.exec_macs / max(cost.dram_bytes, 1.0))
        ys.append(cost.exec_macs / cost.latency_s)
        names.append(layer.name)
        bounds.append(cost.bound)
    return np.array(xs), np.array(ys), names, bounds


def roofline(ax: Any, graph: LayerGraph, estimates: Sequence[Estimate], *, labels: Sequence[str] | None = None) -> None:
    """Log-log roofline of each estimate's device (peak MAC/s, DRAM bandwidth) with the model's
    layers as points at their intensity and attained MAC rate."""
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    all_x = np.concatenate([layer_points(graph, e)[0] for e in estimates] + [np.array([0.1, 1e4])])
    x = np.logspace(np.log10(max(all_x.min() / 3, 1e-2)), np.log10(all_x.max() * 3), 200)
    for i, est in enumerate(estimates):
        p, colour = est.profile, colours[i % len(colours)]
        peak = p.peak_macs[est.precision]
        label = labels[i] if labels else f"{p.name} ({est.precision})"
        ax.plot(x, np.minimum(peak, x * p.bandwidth), color=colour, lw=1.5, label=f"{label} roof")
        ax.axvline(p.ridge(est.precision), color=colour, lw=0.6, ls=":")
        px, py, _, _ = layer_points(graph, est)
        ax.scatter(px, py, s=14, color=colour, alpha=0.7, label=f"{label} layers")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (MACs per DRAM byte)")
    ax.set_ylabel("attained MACs per second")
    ax.set_title(f"{graph.model}: roofline (dotted: ridge points)")
    ax.legend(fontsize=7, loc="lower right")


def latency_bars(ax: Any, graph: LayerGraph, estimate: Estimate, *, top: int = 25) -> None:
    """The ``top`` slowest layers as horizontal bars coloured by what bounds them."""
    rows = sorted(((estimate.layers[l.name].latency_s, l.name, estimate.layers[l.name].bound)
                   for l in graph.layers), reverse=True)[:top][::-1]
    ax.barh([r[1] for r in rows], [r[0] * 1e3 for r in rows], color=[BOUND_COLOURS.get(r[2], "k") for r in rows])
    ax.set_xlabel("predicted latency (ms)")
    ax.set_title(f"{graph.model} on {estimate.profile.name}: {estimate.latency_s * 1e3:.3f} ms, top {len(rows)} layers")
    ax.tick_params(axis="y", labelsize=6)
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=b) for b, c in BOUND_COLOURS.items() if b in {r[2] for r in rows}]
    ax.legend(handles=handles, fontsize=7, loc="lower right", title="bound", title_fontsize=7)


def analysis_figure(graph: LayerGraph, estimates: Sequence[Estimate], path: str | os.PathLike[str] | None = None,
                    *, top: int = 25) -> Any:
    """The roofline and the first device's per-layer breakdown side by side; saved to ``path``
    (PNG, SVG, PDF by extension) when given. Returns the figure."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6.5))
    roofline(left, graph, estimates)
    latency_bars(right, graph, estimates[0], top=top)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig
