"""Store a pruned model without pickled code (the format and reading it back:
:mod:`costplan.models.saved`)."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from costplan.atomic import atomic_path
from costplan.errors import CostplanError
from costplan.models import load_saved as load  # noqa: F401  (the API's pair of save)
from costplan.models.saved import FORMAT, provenance
from costplan.pruning.masks import folded_copy


def describe(model: nn.Module) -> dict[str, Any]:
    """What :func:`save` records to rebuild ``model``."""
    info = provenance(model)
    if info is None or not info.source:
        raise CostplanError("costplan.save needs a model costplan built, pruned or compacted from a spec "
                            "(resnet50, hf:bert-base, file.py:factory); give Pruner(source=...) for your own "
                            "modules, or save the state_dict with torch.save")
    return {"format": FORMAT, "source": info.source, "edits": {k: dict(v) for k, v in info.edits.items()},
            "input": [list(s) for s in info.input], "plan": info.plan, "compacted": info.compacted}


def save(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write ``model``'s weights and architecture description to ``path`` (atomically)."""
    description = describe(model)
    state = model.state_dict()
    if any(".parametrizations." in k for k in state):   # still masked: store the masked weights
        state = folded_copy(model).state_dict()
    payload = {"costplan": FORMAT, "description": json.dumps(description),
               "state_dict": {k: v.detach().cpu() for k, v in state.items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


