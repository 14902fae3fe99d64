"""Models ``costplan.save`` wrote: plain data only (the state dict, and a JSON description of the spec
that builds the original architecture and the shape edits compaction made), read with
``torch.load(weights_only=True)``; the architecture is rebuilt by building the spec and replaying the
edits, then the weights are loaded strictly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from costplan.errors import CostplanError
from costplan.models.source import Instance
from costplan.modules import apply_edits

FORMAT = "costplan-model/2"


@dataclass(frozen=True)
class Provenance:
    """What rebuilds a model costplan built, pruned or compacted: the spec it was built from
    (``resnet50``, ``hf:bert-base``, ``file.py:factory``), the attribute edits compaction made (module
    -> attribute -> value) and the input shapes it was traced with; for a pruned model, the plan it
    was pruned to (plan JSON) and whether its channels and heads were cut out (``compacted``) or are
    zeros in dense shapes."""

    source: str | None
    edits: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    input: Sequence[Sequence[int]] = ()
    plan: Mapping[str, object] | None = None
    compacted: bool = False

    def applied(self) -> dict[str, object] | None:
        """What a trace of this model records as done to it (``LayerGraph.applied``), or None
        when it was not pruned."""
        return {"plan": self.plan, "compacted": self.compacted, "source": self.source} if self.plan else None

    def attach(self, model: nn.Module) -> None:
        """Record this on ``model``, where :func:`provenance` and ``costplan.save`` read it."""
        model._costplan_provenance = self   # type: ignore[assignment]


def provenance(model: nn.Module) -> Provenance | None:
    """What :meth:`Provenance.attach` recorded on ``model``, if anything."""
    found = getattr(model, "_costplan_provenance", None)
    return found if isinstance(found, Provenance) else None


def load(path: str | os.PathLike[str], *, build: Callable[[str, Sequence[Sequence[int]] | None], Instance],
         trust_code: bool = False) -> Instance:
    """Rebuild a model ``costplan.save`` wrote and the input its source runs on, ``build(spec,
    input_shapes)`` building its original architecture and input (:func:`costplan.models.load_saved_instance`
    gives the resolver). A model built by a user's ``file.py:factory`` runs that file: pass
    ``trust_code=True`` to allow it."""
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
    built = build(spec, shapes or None)
    model = built.module
    apply_edits(model, description["edits"], payload["state_dict"])
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CostplanError(f"{path}: weights do not fit the rebuilt {spec}: {str(exc).splitlines()[0]}") from None
    Provenance(spec, description["edits"], tuple(tuple(s) for s in description.get("input") or ()),
               description.get("plan"), bool(description.get("compacted"))).attach(model)
    return replace(built, module=model.eval())
