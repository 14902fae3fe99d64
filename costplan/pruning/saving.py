"""Store and restore a pruned model without pickled code.

The file holds plain data only: the state dict, and a JSON description (the spec that builds the
original architecture, and the shape edits compaction made). It loads with
``torch.load(weights_only=True)``; the architecture is rebuilt by building the spec and replaying
the edits, then the weights are loaded strictly.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from costplan.errors import CostplanError
from costplan.pruning.compact import apply_edits
from costplan.pruning.masks import folded_copy

FORMAT = "costplan-model/2"


def describe(model: nn.Module) -> dict[str, Any]:
    """What :func:`save` records to rebuild ``model``."""
    info = getattr(model, "_costplan", None)
    if not info or not info.get("source"):
        raise CostplanError("costplan.save needs a model costplan built, pruned or compacted from a spec "
                            "(resnet50, hf:bert-base, file.py:factory); give Pruner(source=...) for your own "
                            "modules, or save the state_dict with torch.save")
    return {"format": FORMAT, "source": info["source"], "edits": info.get("edits", {}), "input": info.get("input")}


def save(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write ``model``'s weights and architecture description to ``path`` (atomically)."""
    description = describe(model)
    state = model.state_dict()
    if any(".parametrizations." in k for k in state):   # still masked: store the masked weights
        state = folded_copy(model).state_dict()
    payload = {"costplan": FORMAT, "description": json.dumps(description),
               "state_dict": {k: v.detach().cpu() for k, v in state.items()}}
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".costplan-{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: str | os.PathLike[str], *, trust_code: bool = False) -> nn.Module:
    """Rebuild a model :func:`save` wrote. A model built by a user's ``file.py:factory`` runs that
    file: pass ``trust_code=True`` to allow it."""
    from costplan.models import instantiate, resolve

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CostplanError(f"no such file: {path}") from None
    except Exception as exc:  # noqa: BLE001  torch raises many types for a bad file
        raise CostplanError(f"{path} is not a model costplan saved: {type(exc).__name__}") from None
    if not isinstance(payload, dict) or payload.get("costplan") != FORMAT:
        raise CostplanError(f"{path} is not a model costplan saved (use torch.load for other files)")
    description = json.loads(payload["description"])
    spec = str(description["source"])
    if ".py:" in spec and not trust_code:
        raise CostplanError(f"{path} is rebuilt by running {spec.split(':')[0]}; pass trust_code=True "
                            "(--trust-code on the command line) if you trust that file")
    shapes = tuple(tuple(s) for s in description.get("input") or []) if ".py:" in spec else None
    model = instantiate(resolve(spec, input_shapes=shapes or None), "cpu").module
    apply_edits(model, description["edits"], payload["state_dict"])
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CostplanError(f"{path}: weights do not fit the rebuilt {spec}: {str(exc).splitlines()[0]}") from None
    model._costplan = {"source": spec, "edits": description["edits"], "input": description.get("input")}
    return model.eval()
