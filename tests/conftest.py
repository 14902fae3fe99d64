from __future__ import annotations

import functools

import pytest
import torch

from costplan.api import load_graph


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
