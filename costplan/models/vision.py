"""torchvision models by name, with random weights."""

from __future__ import annotations

import functools

import torch

Shape = tuple[int, ...]

# Inputs the architectures were designed for, where 224x224 RGB is not it.
_INPUTS: dict[str, Shape] = {
    "inception_v3": (1, 3, 299, 299),
    "raft_small": (1, 3, 224, 224), "raft_large": (1, 3, 224, 224),
}
_VIDEO: Shape = (1, 3, 16, 112, 112)


@functools.cache
def names() -> frozenset[str]:
    """Every model name torchvision knows."""
    import torchvision

    return frozenset(torchvision.models.list_models())


def default_input(name: str) -> Shape:
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models.video):
        return _VIDEO
    return _INPUTS.get(name, (1, 3, 224, 224))


def source(name: str, shapes: tuple[Shape, ...]):  # noqa: ANN201  (ModelSource; avoids a cycle)
    from costplan.models import Instance, ModelSource

    def build(device: str) -> Instance:
        import torchvision

        kwargs = {"aux_logits": False, "init_weights": False} if name in ("inception_v3", "googlenet") else {}
        module = torchvision.models.get_model(name, weights=None, **kwargs)
        return Instance(module.eval(), tuple(torch.zeros(s, device=device) for s in shapes))

    return ModelSource(name, "torchvision", build)
