"""Spellings of precisions and shapes, turned into what the code uses (``fp16`` -> ``float16``,
``1x3x224x224`` -> ``((1, 3, 224, 224),)``): one place, so a flag means the same everywhere, and
low enough that the model builders and hardware profiles read it without the API layer above them.
"""

from __future__ import annotations

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
}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
QUANTISED = ("int8",)  # precisions a model is not traced in: bytes are rescaled from float32


def canonical_dtype(name: str) -> str:
    """'fp16' -> 'float16'; raises CostplanError naming every accepted spelling."""
    key = str(name).strip().lower()
    if key not in DTYPES:
        raise CostplanError(f"unknown dtype '{name}'; use float32, float16, bfloat16 or int8 (also fp32, fp16, "
                            f"half, bf16).{close_names(key, DTYPES)}")
    return DTYPES[key]


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
