"""Typed reading of a profile's TOML tables: every error names the file and the field, and a key
nothing read (a typo) is an error rather than a silent default."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from costplan.errors import CostplanError, close_names
from costplan.spellings import DTYPE_BYTES


class Fields:
    """Typed access to a TOML table that names the file and field in every error, and remembers
    which keys were read, so a key nothing reads (a typo) is an error rather than a silent default."""

    def __init__(self, data: Mapping[str, Any], where: str, prefix: str = "",
                 tables: list[Fields] | None = None) -> None:
        self.data, self.where, self.prefix = data, where, prefix
        self.seen: set[str] = set()
        self.tables = tables if tables is not None else []   # every table of the file, shared
        self.tables.append(self)

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return self.data.get(key, default)

    def unread(self) -> None:
        """Raise on the first key of any table that nothing read, naming the closest known key."""
        for t in self.tables:
            for key in t.data:
                if key not in t.seen:
                    known = sorted(t.seen) or ["(this table takes no fields)"]
                    raise t.fail(key, f"is not a profile field.{close_names(key, t.seen)} Fields here: "
                                      f"{', '.join(known)}")

    def fail(self, key: str, problem: str) -> CostplanError:
        return CostplanError(f"{self.where}: field '{self.prefix}{key}' {problem}")

    def number(self, key: str, default: float | None = None, *, low: float = 0.0, high: float | None = None,
               positive: bool = False) -> float:
        self.seen.add(key)
        if key not in self.data:
            if default is None:
                raise self.fail(key, "is missing")
            return default
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"must be a number, not {value!r}")
        if value < low or (positive and value <= 0) or (high is not None and value > high):
            bound = f"in ({low}, {high}]" if high is not None else ("positive" if positive else f">= {low}")
            raise self.fail(key, f"must be {bound}, got {value}")
        return float(value)

    def optional(self, key: str, scale: float = 1.0, *, positive: bool = True) -> float | None:
        """A positive (or, unless ``positive``, non-negative) number times ``scale`` (units: GB/s ->
        bytes/s), or None when the key is absent."""
        self.seen.add(key)
        return self.number(key, positive=positive) * scale if key in self.data else None

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {value!r}")
        return value

    def text(self, key: str, default: str | None = None) -> str:
        value = self.get(key, default)
        if not isinstance(value, str):
            raise self.fail(key, "is missing" if value is None else f"must be a string, not {value!r}")
        return value

    def table(self, key: str, required: bool = True) -> Fields:
        value = self.get(key)
        if value is None and not required:
            return Fields({}, self.where, f"{self.prefix}{key}.", self.tables)
        if not isinstance(value, dict):
            raise self.fail(key, "is missing" if value is None else "must be a table")
        return Fields(value, self.where, f"{self.prefix}{key}.", self.tables)

    def dtype_numbers(self, key: str, required: bool = True, extra: tuple[str, ...] = ()) -> dict[str, float]:
        table = self.table(key, required)
        for dtype in table.data:
            if dtype not in DTYPE_BYTES and dtype not in extra:
                raise table.fail(dtype, f"is not a dtype; use {', '.join(DTYPE_BYTES)}")
        return {dtype: table.number(dtype, positive=True) for dtype in table.data}
