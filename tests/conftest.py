from __future__ import annotations

import functools
import os

import pytest
import torch

from costplan.api import load_graph

# xdist's workers share the cores: with torch's default of a thread per core each, two workers on two
# cores oversubscribe them and OpenMP's threads wait on one another (resnet18's hand plans took 6 s
# alone and 22-30 s beside another worker). Each worker gets its share; subprocesses keep the default.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


# the profiles costplan ships
SHIPPED = ["a100", "cpu-xeon", "edge-npu", "fpga-zcu102", "h100", "rtx3090", "t4", "v100"]

# a toy device whose figures make hand computation easy
TOY = {
    "name": "toy", "peak_tflops": {"float32": 2.0},       # 1e12 MAC/s
    "memory": {"bandwidth_gbs": 100.0, "onchip_mb": 0.0},  # 1e11 B/s, nothing stays on chip
    "efficiency": {"gemm": 0.5, "conv": 0.5},
    "overhead": {"per_op_us": 1.0},
}


@functools.cache
def calibrated_cpu():
    """The AVX2 calibration fixture as a profile that prices every kind it was calibrated on, with an
    im2col class of its own (rate and cost per call apart from the oneDNN classes')."""
    import tomllib
    from pathlib import Path

    from costplan.hardware.profile import COST_KINDS, parse_profile

    with open(Path(__file__).parent / "data" / "avx2-calibrated.toml", "rb") as f:
        data = tomllib.load(f)
    data["calibrated"] = list(COST_KINDS)
    data["efficiency"] = {**data["efficiency"], "im2col": 0.3}
    data["overhead"] = {**data["overhead"], "per_class_us": {**data["overhead"]["per_class_us"], "im2col": 3.0}}
    return parse_profile(data, "local")


@functools.cache
def graph_of(spec: str, **kwargs):
    """Trace a spec once per test session (graphs are read-only)."""
    return load_graph(spec, **kwargs)


@pytest.fixture(scope="session")
def resnet50_graph():
    return graph_of("resnet50")


@pytest.fixture(scope="session")
def bert_graph():
    return graph_of("hf:bert-base")


class TwoConvs(torch.nn.Module):
    """The two layers of the reuse table in issue 2: equal MACs, 4x different weights."""

    def __init__(self) -> None:
        super().__init__()
        self.layer0 = torch.nn.Conv2d(64, 256, 3, stride=2, padding=1, bias=False)
        self.layer1 = torch.nn.Conv2d(256, 256, 3, stride=2, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(self.layer0(x))


class SmallCNN(torch.nn.Module):
    """conv-bn-relu, a residual block, a depthwise conv and a classifier: the coupled cases."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(16)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(32)
        self.dw = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
        self.conv3 = torch.nn.Conv2d(32, 32, 1, bias=False)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.conv3(self.dw(x)) + x
        return self.fc(x.mean((2, 3)))


def whole_groups(graph, entries: dict[str, tuple[float, str]]) -> dict[str, dict]:
    """Plan layers from per-module choices, a structured choice given to every member of its group (the
    plan a user must write: coupled layers get one ratio). Structured choices on layers no prunable group
    holds are dropped."""
    from costplan.trace.groups import structure_of

    structure = structure_of(graph)
    layers: dict[str, dict] = {}
    for name, (sparsity, pattern) in sorted(entries.items(), key=lambda e: e[1][1] in ("channel", "head")):
        if pattern not in ("channel", "head"):
            layers[name] = {"sparsity": sparsity, "pattern": pattern}
            continue
        group = structure.groups.get(structure.member_of.get(name, ""))
        if group is None or not group.prunable or group.kind != pattern:
            continue
        for member in ([group.name] if pattern == "head" else group.members):
            layers[member] = {"sparsity": sparsity, "pattern": pattern}
    return layers


def applied(graph, layers):
    """``apply_plan`` for generated plans (a Plan, or its layers as dicts): a plan refused only because a
    pattern does not fit a layer's (pruned) shape is discarded (hypothesis.assume), any other refusal
    fails the test."""
    from hypothesis import assume

    from costplan.errors import CostplanError
    from costplan.planfile import Plan
    from costplan.sparsity import apply_plan

    try:
        return apply_plan(graph, layers if isinstance(layers, Plan) else Plan.from_dict({"layers": layers}))
    except CostplanError as exc:
        assume("cannot take" not in str(exc))
        raise
