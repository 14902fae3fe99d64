"""The small ResNet the end-to-end benchmarks train: a stem, stages of two basic residual blocks, a
classifier on the mean over positions; 1-D (MNIST-1D signals) or 2-D (digits images). With the
shuffled batches and the accuracy both benchmarks use."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LAYERS = {1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d)}


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dims: int = 2) -> None:
        super().__init__()
        conv, norm = _LAYERS[dims]
        self.conv1 = conv(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = conv(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.shortcut = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            conv(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """``dims``-D convolutions; one stage of two blocks per width (the first stride 1, then 2); a
    stem of ``stem_kernel`` from one input channel."""

    def __init__(self, dims: int, widths: tuple[int, ...], stem_kernel: int) -> None:
        super().__init__()
        conv, norm = _LAYERS[dims]
        self.stem = nn.Sequential(conv(1, widths[0], stem_kernel, 1, stem_kernel // 2, bias=False),
                                  norm(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            layers += [Block(cin, w, 1 if i == 0 else 2, dims), Block(w, w, 1, dims)]
            cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, 10)
        self.positions = tuple(range(2, 2 + dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean(self.positions))


def batches(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, size: int):
    """``epochs`` passes over (x, y) in batches of ``size``, shuffled by ``seed``; a last short batch is dropped."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y) - size + 1, size):
            j = order[i:i + size]
            yield x[j], y[j]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in eval mode, 500 samples a pass."""
    model.eval()
    with torch.no_grad():
        return float(torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(y), 500)]).eq(y).float().mean())
