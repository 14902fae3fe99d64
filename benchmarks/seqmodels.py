"""Sequence models for the fidelity benchmark, as `costplan measure benchmarks/seqmodels.py:NAME` builds
them (each factory returns the model and an example input): recurrent layers, 1-D convolutions,
1-D pooling and embedding lookups, the layer kinds a zoo of CNNs and transformers never exercises.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvGRUTransformer(nn.Module):
    """Speech-style: a 1-D convolution front end over 40 features, a bidirectional GRU, a transformer
    encoder layer and a classifier (the issue's seqmodel, input 8 x 40 x 100)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(40, 128, 5, padding=2)
        self.gru = nn.GRU(128, 128, batch_first=True, bidirectional=True)
        self.encoder = nn.TransformerEncoderLayer(256, 4, 512, batch_first=True)
        self.head = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).transpose(1, 2)
        h, _ = self.gru(h)
        return self.head(self.encoder(h).mean(1))


class StackedLSTM(nn.Module):
    """A two-layer LSTM tagger over 50 steps of 64 features, batch 16."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(64, 256, num_layers=2, batch_first=True)
        self.head = nn.Linear(256, 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x)
        return self.head(h)


class TextCNN(nn.Module):
    """Kim's text CNN: a 30,000-word embedding table, 1-D convolutions of widths 3/4/5, 1-D max-pool,
    max over time, a classifier; 32 sentences of 200 tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(30000, 128)
        self.convs = nn.ModuleList(nn.Conv1d(128, 100, k) for k in (3, 4, 5))
        self.pool = nn.MaxPool1d(2)
        self.head = nn.Linear(300, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids).transpose(1, 2)
        feats = [self.pool(torch.relu(conv(x))).amax(-1) for conv in self.convs]
        return self.head(torch.cat(feats, 1))


class EmbeddingBagClassifier(nn.Module):
    """An embedding-heavy text model: a 100,000-row table, mean of a sentence's rows, two linear layers;
    64 sentences of 128 tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(100000, 256)
        self.hidden = nn.Linear(256, 256)
        self.head = nn.Linear(256, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.embedding(ids).mean(1))))


def conv_gru_transformer() -> tuple[nn.Module, torch.Tensor]:
    return ConvGRUTransformer(), torch.randn(8, 40, 100)


def stacked_lstm() -> tuple[nn.Module, torch.Tensor]:
    return StackedLSTM(), torch.randn(16, 50, 64)


def text_cnn() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return TextCNN(), torch.randint(0, 30000, (32, 200))


def embedding_bag() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return EmbeddingBagClassifier(), torch.randint(0, 100000, (64, 128))


MODELS = {"conv_gru_transformer": conv_gru_transformer, "stacked_lstm": stacked_lstm, "text_cnn": text_cnn,
          "embedding_bag": embedding_bag}
