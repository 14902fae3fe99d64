"""torchvision models by name, with random weights."""

from __future__ import annotations

import functools

import torch

from costplan.models.source import Instance, ModelSource, example_input

Shape = tuple[int, ...]

# Inputs the architectures were designed for, where one 224x224 RGB image is not it.
_INPUTS: dict[str, tuple[Shape, ...]] = {
    "inception_v3": ((1, 3, 299, 299),),
    "raft_small": ((1, 3, 224, 224), (1, 3, 224, 224)),    # optical flow between two frames
    "raft_large": ((1, 3, 224, 224), (1, 3, 224, 224)),
    "s3d": ((1, 3, 16, 224, 224),), "mvit_v1_b": ((1, 3, 16, 224, 224),), "mvit_v2_s": ((1, 3, 16, 224, 224),),
}
_VIDEO: Shape = (1, 3, 16, 112, 112)


@functools.cache
def names() -> frozenset[str]:
    """Every model name torchvision knows."""
    import torchvision

    return frozenset(torchvision.models.list_models())


def default_inputs(name: str) -> tuple[Shape, ...]:
    """The input shapes ``name`` is built for."""
    import torchvision

    if name in _INPUTS:
        return _INPUTS[name]
    if name in torchvision.models.list_models(module=torchvision.models.video):
        return (_VIDEO,)
    return ((1, 3, 224, 224),)


def _offline_kwargs(name: str) -> dict[str, object]:
    """Constructor arguments that keep a builder from downloading anything: detection and
    segmentation models fetch ImageNet backbone weights unless told not to."""
    import inspect

    import torchvision

    params = inspect.signature(torchvision.models.get_model_builder(name)).parameters
    kwargs: dict[str, object] = {"weights_backbone": None} if "weights_backbone" in params else {}
    if name in ("inception_v3", "googlenet"):
        kwargs.update(aux_logits=False, init_weights=False)
    return kwargs


def _data_dependent(name: str) -> bool:
    """Whether ``name`` computes shapes from its data, which the meta device cannot: detection models
    keep the boxes that pass a score threshold (``torch.nonzero``) and NMS. A meta trace of RetinaNet
    ran 7 s through its backbone before it failed there, every time, before the CPU trace (13 s)."""
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models.detection)


def source(name: str, shapes: tuple[Shape, ...]):
    def build(device: str) -> Instance:
        import torchvision

        module = torchvision.models.get_model(name, weights=None, **_offline_kwargs(name))
        return Instance(module.eval(), tuple(example_input(s, device) for s in shapes))

    return ModelSource(name, "torchvision", build, meta=not _data_dependent(name))
