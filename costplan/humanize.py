"""Readable numbers and lists: 4089184256 -> '4.09 G'; names -> "'a', 'b', 'c' and 2 more"."""

from __future__ import annotations

from collections.abc import Sequence

_SI = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def si(value: float, digits: int = 3) -> str:
    """A count with an SI prefix and ``digits`` significant digits: 25557032 -> '25.6 M'."""
    for scale, prefix in _SI:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g} {prefix}"
    return f"{value:.{digits}g}"


def bytes_(value: float) -> str:
    """Bytes in binary-free SI units, as memory bandwidth is quoted: 102228128 -> '102 MB'."""
    return si(value) + "B" if value >= 1e3 else f"{value:.0f} B"


def listed(names: Sequence[str], shown: int = 3) -> str:
    """The first ``shown`` names quoted, and how many more: "'a', 'b', 'c' and 2 more"."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(f"'{n}'" for n in names[:shown]) + more
