"""SQL text the operator tools print (`emm scan`'s INSERTs, `emm sunspec`'s map): literals."""

from __future__ import annotations

import math

__all__ = ["sql_literal"]


def sql_literal(value: object) -> str:
    """A value as an SQL literal (standard_conforming_strings: a quote is doubled, nothing else);
    a float exactly as Python reads it back, a whole one below 1e15 without a fraction."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no SQL literal here")
        return repr(value) if value != int(value) or abs(value) >= 1e15 else str(int(value))
    return "'" + str(value).replace("'", "''") + "'"
