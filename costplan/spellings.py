"""Spellings of precisions and shapes, turned into what the code uses (``fp16`` -> ``float16``,
``1x3x224x224`` -> ``((1, 3, 224, 224),)``): one place, so a flag means the same everywhere, and
low enough that the model builders and hardware profiles read it without the API layer above them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from typing import TYPE_CHECKING

from costplan.errors import CostplanError, close_names

if TYPE_CHECKING:
    import torch

Shape = tuple[int, ...]

# every spelling of a precision -> its canonical name (the keys of DTYPE_BYTES)
DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32", "f32": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16", "f16": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "int8": "int8",
    "float8": "float8", "fp8": "float8", "float8_e4m3": "float8", "float8_e4m3fn": "float8", "e4m3": "float8",
}
# bytes per element of each precision; float8 is E4M3 (the inference format of H100/Ada tensor cores)
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "float8": 1}
QUANTISED = ("int8", "float8")  # precisions a model is not traced in: bytes are rescaled from float32
# a precision the device lacks runs as the first of these it has, before its default precision
# (an A100 serves an FP8 checkpoint by upcasting it to 16-bit)
FALLBACK = {"float8": ("bfloat16", "float16"), "bfloat16": ("float16",)}

# weight-only quantisation (--weights-dtype): bytes per weight, the group scales included. int4 is
# AWQ/GPTQ's default, groups of 128 with a 16-bit scale and a 16-bit zero point (4.25 bits a weight);
# int4-gN names another group size (gpt-fast's int4 is int4-g32: 5 bits). int8 and float8 have one
# scale per output channel (negligible).
WEIGHT_BYTES = {"int8": 1.0, "float8": 1.0, "int4": 4.25 / 8}
WEIGHT_DTYPES = {"int8": "int8", "int4": "int4", "w4": "int4", "float8": "float8", "fp8": "float8", "e4m3": "float8",
                 "w8": "int8"}


def weight_bytes(fmt: str) -> float:
    """Bytes per weight of a weight-only format ('int4', 'int4-g32', 'int8', 'float8')."""
    if fmt.startswith("int4-g"):
        return (4 + 32 / int(fmt[6:])) / 8
    return WEIGHT_BYTES[fmt]


def canonical_dtype(name: str) -> str:
    """'fp16' -> 'float16'; raises CostplanError naming every accepted spelling."""
    key = str(name).strip().lower()
    if key not in DTYPES:
        raise CostplanError(f"unknown dtype '{name}'; use float32, float16, bfloat16, int8 or float8 (also fp32, "
                            f"fp16, half, bf16, fp8).{close_names(key, DTYPES)}")
    return DTYPES[key]


def weights_dtype(name: str | None) -> str | None:
    """The weight-only format ``--weights-dtype`` names ('int4', 'int8', 'float8'), or None."""
    if name is None:
        return None
    key = str(name).strip().lower()
    group = re.fullmatch(r"int4-g(\d+)", key)
    if group and int(group[1]) in (32, 64, 128, 256):
        return "int4" if group[1] == "128" else key
    if key not in WEIGHT_DTYPES:
        raise CostplanError(f"unknown --weights-dtype '{name}': use int8, int4 (int4-g32/-g64/-g256 for other groups) "
                            f"or float8 (weights stored at that width "
                            f"and dequantised to the activations' 16-bit precision).{close_names(key, WEIGHT_DTYPES)}")
    return WEIGHT_DTYPES[key]


def byte_scales(traced: str, precision: str, weights: str | None = None) -> tuple[float, float, float]:
    """Factors from traced bytes to the run's: (activations, weights, KV cache). The math runs at
    ``precision``, the weights are stored at ``weights`` (a weight-only format) or the precision, and
    the cache at :func:`kv_dtype`."""
    element = DTYPE_BYTES.get(traced, 4)
    per_weight = weight_bytes(weights) if weights else DTYPE_BYTES[precision]
    return DTYPE_BYTES[precision] / element, per_weight / element, DTYPE_BYTES[kv_dtype(precision)] / element


def kv_dtype(precision: str) -> str:
    """The KV cache's precision when the math runs at ``precision``: the activations' own, except
    that 8-bit math keeps a 16-bit cache (vLLM's and TensorRT-LLM's default)."""
    return "float16" if precision in QUANTISED else precision


def traced_dtype(name: str) -> str:
    """The dtype a model is traced in for a precision: quantised ones trace in float32."""
    dtype = canonical_dtype(name)
    return "float32" if dtype in QUANTISED else dtype


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype a model is built in for a precision."""
    import torch   # here, not above: reading a profile's dtypes needs no torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[traced_dtype(name)]


def parse_shapes(text: str) -> tuple[Shape, ...]:
    """'1x3x224x224' -> ((1, 3, 224, 224),); several inputs are separated by commas."""
    shapes = []
    for part in text.split(","):
        dims = part.strip().lower().split("x")
        if not part.strip() or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise CostplanError(f"malformed input shape '{text}': give positive sizes joined by 'x', "
                                "like 1x3x224x224 (several inputs: 1x3x32x32,1x10)")
        shapes.append(tuple(int(d) for d in dims))
    return tuple(shapes)


def as_shapes(input: str | Sequence[int] | Sequence[Sequence[int]] | None) -> tuple[Shape, ...] | None:
    """Input shapes from '1x3x224x224', (1, 3, 224, 224) or [(1, 3, 224, 224), (1, 10)]."""
    if input is None:
        return None
    if isinstance(input, str):
        return parse_shapes(input)
    if all(isinstance(d, int) for d in input):
        return (tuple(input),)  # type: ignore[arg-type]
    return tuple(tuple(s) for s in input)  # type: ignore[union-attr]
