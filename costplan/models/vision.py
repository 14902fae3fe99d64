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


def two_stage_heads(module: torch.nn.Module) -> tuple[object, object] | None:
    """(rpn, roi_heads) of a torchvision-style two-stage detector, whose heads run on as many boxes as
    its RPN's NMS and its score threshold let through; None for any other model."""
    rpn, heads = getattr(module, "rpn", None), getattr(module, "roi_heads", None)
    if rpn is None or heads is None or not hasattr(rpn, "nms_thresh") or not hasattr(heads, "score_thresh"):
        return None
    return rpn, heads


def heads_as_given(name: str, module: torch.nn.Module) -> tuple[str, ...]:
    """The note for a two-stage detector costplan did not build (a user's file, left as given): its
    heads' MACs are this trace's, and how to price them at their caps. Other models: none."""
    if two_stage_heads(module) is None:
        return ()
    return (f"{name} is a two-stage detector: its box head ran on the proposals its RPN kept, and any mask or "
            "keypoint head on the detections over its score threshold, for these weights and this input, and "
            "their MACs move with both (torchvision's Mask R-CNN with random weights: 54 to 86 GMACs over six "
            "builds). To price the heads at their caps, build it with rpn.nms_thresh = 1 and "
            "roi_heads.score_thresh = 0, as costplan builds the R-CNNs it lists",)


def _heads_at_capacity(name: str, module: torch.nn.Module) -> tuple[str, ...]:
    """A two-stage detector (torchvision's R-CNNs) runs its box head on the proposals its RPN keeps
    after NMS, and its mask or keypoint head on the detections over a score threshold: with random
    weights both change from build to build (Mask R-CNN at 320 px: 54 to 86 GMACs over six builds, its
    RPN keeping 669 or 1000 proposals). Set to keep every proposal and detection up to their caps, the
    most those heads run and what a trained model runs on a busy image, every build counts the same;
    the note says so. Other models: nothing to do."""
    found = two_stage_heads(module)
    if found is None:
        return ()
    rpn, heads = found
    rpn.nms_thresh, heads.score_thresh = 1.0, 0.0
    with torch.no_grad():   # random box regressors push boxes off the image, where they are dropped as empty
        for regressor in (getattr(rpn.head, "bbox_pred", None), getattr(heads.box_predictor, "bbox_pred", None)):
            if regressor is not None:
                for t in regressor.parameters():
                    t.zero_()
    second = [w for w, has in (("mask", heads.has_mask()), ("keypoint", heads.has_keypoint())) if has]
    on = f" and its {second[0]} head on {heads.detections_per_img} detections" if second else ""
    return (f"{name}'s heads run on as many boxes as the image and weights yield: priced at their caps, its box "
            f"head on {rpn.post_nms_top_n()} proposals per image{on} (NMS and the score threshold were set to "
            "keep them all), the most they run; an image with few objects runs fewer",)


def source(name: str, shapes: tuple[Shape, ...]):
    def build(device: str) -> Instance:
        import torchvision

        module = torchvision.models.get_model(name, weights=None, **_offline_kwargs(name)).eval()
        notes = _heads_at_capacity(name, module)
        return Instance(module, tuple(example_input(s, device) for s in shapes), notes=notes)

    return ModelSource(name, "torchvision", build, meta=not _data_dependent(name))
