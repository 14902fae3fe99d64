"""Every torchvision classification model (and the hf: zoo) against FlopCounterMode / 2.

    python benchmarks/zoo_check.py [NAME ...]

Prints MACs, FlopCounterMode's count, whether every parameter is attributed to a layer, and ops
without a formula. Exit status 1 if any model disagrees by more than 0.1%.
"""

from __future__ import annotations

import sys
import time
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from costplan.api import load_graph
from costplan.models import hf, instantiate, resolve

warnings.filterwarnings("ignore")


def main(names: list[str]) -> int:
    import torchvision

    names = names or sorted(torchvision.models.list_models(module=torchvision.models)) + \
        [f"hf:{n}" for n in hf.names()]
    bad = []
    for name in names:
        t = time.perf_counter()
        graph = load_graph(name)
        seconds = time.perf_counter() - t
        inst = instantiate(resolve(name), graph.inputs.device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            inst.module(*inst.args, **inst.kwargs)
        reference = counter.get_total_flops() / 2
        attributed = sum(layer.params for layer in graph.layers) == graph.total_params
        ok = abs(graph.total_macs - reference) <= 1e-3 * reference and attributed and not graph.unsupported
        bad += [] if ok else [name]
        print(f"{name:22s} {graph.inputs.device:4s} {graph.total_macs:>17,} {reference:>17,.0f} "
              f"params {graph.total_params:>13,} {'all attributed' if attributed else 'UNATTRIBUTED'} "
              f"{dict(graph.unsupported) or ''} {seconds:5.2f}s {'ok' if ok else 'MISMATCH'}", flush=True)
    print(f"{len(names) - len(bad)} of {len(names)} agree" + (f"; mismatched: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
