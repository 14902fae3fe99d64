"""Models from the user's files: ``file.py:factory`` (runs their code) and saved models.

Saved files never run code by default: TorchScript and ``torch.export`` archives are loaded as such,
and anything else only with ``torch.load(weights_only=True)``; a pickle that needs more is refused
unless the user passes the trust flag.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys
import zipfile
from collections.abc import Callable, Sequence

import torch

from costplan.errors import CostplanError, close_names
from costplan.models.saved import provenance
from costplan.models.source import Instance, ModelSource, example_input
from costplan.models.vision import heads_as_given

Shape = tuple[int, ...]
LoadSaved = Callable[..., Instance]   # models.load_saved_instance: rebuilds a file costplan.save wrote
SAVED_SUFFIXES = (".pt", ".pth", ".pt2", ".ts", ".jit", ".bin", ".pkl")


def looks_like_file(spec: str) -> bool:
    path = spec.rpartition(":")[0] if ".py:" in spec else spec
    return path.endswith(".py") or path.endswith(SAVED_SUFFIXES) or os.path.exists(path)


def _inputs(shapes: Sequence[Shape], device: str) -> tuple[torch.Tensor, ...]:
    return tuple(example_input(tuple(s), device) for s in shapes)


def _split_example(result: object, spec: str) -> tuple[torch.nn.Module, object]:
    example = None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module):
        result, example = result
    if not isinstance(result, torch.nn.Module):
        raise CostplanError(f"{spec} returned {type(result).__name__}, not a torch.nn.Module "
                            "(or a (module, example_input) pair)")
    return result, example


def _as_call(example: object) -> tuple[tuple[object, ...], dict[str, object]]:
    if isinstance(example, dict):
        return (), dict(example)
    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, (tuple, list)):
        if len(example) == 2 and isinstance(example[1], dict) and isinstance(example[0], (tuple, list)):
            return tuple(example[0]), dict(example[1])
        return tuple(example), {}
    raise CostplanError(f"cannot call a model with an example input of type {type(example).__name__}")


def load_callable(path: str, name: str):  # noqa: ANN202
    if not os.path.isfile(path):
        raise CostplanError(f"no such file: {path}")
    module_name = f"_costplan_user_{abs(hash(os.path.abspath(path)))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise CostplanError(f"cannot import {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # as `python FILE.py` does, so that the file imports modules beside it (a benchmark its helpers)
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: report it, whatever it raised
        raise CostplanError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, name, None)
    if not callable(factory):
        callables = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise CostplanError(f"{path} has no callable '{name}'.{close_names(name, callables)}")
    return factory


def _load_saved(path: str, trust: bool, load_saved: LoadSaved) -> tuple[torch.nn.Module, object]:
    if not os.path.isfile(path):
        raise CostplanError(f"no such file: {path}")
    if zipfile.is_zipfile(path):
        entries = zipfile.ZipFile(path).namelist()
        if any(e.endswith("constants.pkl") for e in entries) and any("/code/" in e for e in entries):
            return torch.jit.load(path, map_location="cpu"), None
        if any("serialized_exported_program" in e or e.endswith("archive_format") for e in entries):
            program = torch.export.load(path)
            return program.module(), program.example_inputs
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trust:
            raise CostplanError(f"{path} is a pickle that torch.load(weights_only=True) refuses: loading it "
                                "would run code stored in the file. If you trust the file, pass "
                                "--trust-pickle; better, save it with torch.export or TorchScript") from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CostplanError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, torch.nn.Module):
        return obj, None
    if isinstance(obj, dict) and str(obj.get("costplan", "")).startswith("costplan-model/"):
        built = load_saved(path, trust_code=trust)    # a model costplan pruned: rebuilt, no pickle
        return built.module, (built.args, built.kwargs)
    if isinstance(obj, dict):
        raise CostplanError(f"{path} holds weights only (a state_dict), not an architecture; give the "
                            "architecture as file.py:factory")
    raise CostplanError(f"{path} holds a {type(obj).__name__}, not a model")


def source(spec: str, *, input_shapes: Sequence[Shape] | None, batch: int | None, trust: bool,
           load_saved: LoadSaved) -> ModelSource:
    is_factory, pruned = ".py:" in spec, None
    if is_factory:
        path, _, name = spec.rpartition(":")
        factory = load_callable(path, name)
    elif spec.endswith(".py"):
        raise CostplanError(f"name the function that builds the model: {spec}:FUNCTION")
    else:
        module, _ = _load_saved(spec, trust, load_saved)  # fail early, before any tracing
        pruned = provenance(module)

    def build(device: str) -> Instance:
        if is_factory:
            try:
                module, example = _split_example(factory(), spec)
            except CostplanError:
                raise
            except Exception as exc:
                if device == "meta":
                    raise  # the caller retries with real tensors
                raise CostplanError(f"{spec} raised {type(exc).__name__}: {exc}") from exc
        else:
            module, example = _load_saved(spec, trust, load_saved)
        notes = heads_as_given(spec, module)
        if input_shapes:
            return Instance(module, _inputs(input_shapes, device), notes=notes)
        if example is None:
            raise CostplanError(f"{spec}: give the input shape with --input, e.g. --input 1x3x224x224")
        args, kwargs = _as_call(example)
        if batch is not None:
            args = tuple(a.expand(batch, *a.shape[1:]).contiguous() if isinstance(a, torch.Tensor) else a
                         for a in args)
        return Instance(module, args, kwargs, notes=notes)

    return ModelSource(spec, "file", build, meta=is_factory, pruned=pruned)
