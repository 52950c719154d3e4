"""How `emm scan` recognises a device family: the rows of `device_signatures`.

A family's signature is a set of registers whose values must fall in a range (an
SDM630's L1 voltage at 0x0000 between 100 and 300 V, a model code equal to 120).
A device matches a family when every one of the family's rows reads and its value,
decoded as the row says (data_type, byte_order, times scale), lies in
[min_value, max_value]. A register the device refuses, or a timeout, is no match.

When several families match, the one with the most rows wins (the most specific);
families tied at the top are all named ("ambiguous"). Only what can still decide it is read
(`identify`). Pure except for `identify`'s
reads, which go through whatever `read` the caller gives (wire.Reader.read).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..decode import DecodeError, decode_raw
from ..modbus import ModbusError
from ..model import ByteOrder, DataType, FunctionCode, Register

__all__ = ["SIGNATURE_COLUMNS", "Identification", "Signature", "identify", "read_signatures", "signature_from_row",
           "signatures_by_type"]

SIGNATURE_COLUMNS = ("type", "register_address", "function_code", "data_type", "byte_order", "scale",
                     "min_value", "max_value", "description")

# read(function_code, address, count, unit) -> words; raises ModbusError when the device does not answer
Read = Callable[[int, int, int, int], Awaitable[list[int]]]


@dataclass(frozen=True)
class Signature:
    """One row of device_signatures."""

    type: str
    address: int
    function_code: FunctionCode
    data_type: DataType
    byte_order: ByteOrder
    scale: float
    min_value: float
    max_value: float
    description: str

    @property
    def key(self) -> tuple[int, int, int]:
        """What is read: (function code, address, register count)."""
        return (int(self.function_code), self.address, self.data_type.words)

    def register(self) -> Register:
        """The row as a register, for the poller's own decoder."""
        return Register(0, self.type, self.address, "signature", None, self.data_type, self.function_code,
                        self.byte_order, self.scale)

    def value(self, words: Sequence[int]) -> float | None:
        """The row's value from its words, or None when they give no finite number."""
        try:
            raw = decode_raw(self.register(), words)
        except DecodeError:
            return None
        value = float(raw) * self.scale
        return value if math.isfinite(value) else None

    def holds(self, words: Sequence[int]) -> bool:
        value = self.value(words)
        return value is not None and self.min_value <= value <= self.max_value


def signature_from_row(row: Mapping[str, Any]) -> Signature:
    """A Signature from a device_signatures row (the schema's CHECKs hold already)."""
    return Signature(str(row["type"]), int(row["register_address"]), FunctionCode(row["function_code"]),
                     DataType(row["data_type"]), ByteOrder(row["byte_order"]), float(row["scale"]),
                     float(row["min_value"]), float(row["max_value"]), str(row["description"]))


def read_signatures(cursor: Any, types: Iterable[str] | None = None) -> dict[str, tuple[Signature, ...]]:
    """The device_signatures rows (of `types`, default all) by family, through a DB-API cursor."""
    sql = f"SELECT {', '.join(SIGNATURE_COLUMNS)} FROM device_signatures"
    if types is None:
        cursor.execute(sql + " ORDER BY type, id")
    else:
        cursor.execute(sql + " WHERE type = ANY(%s) ORDER BY type, id", (sorted(types),))
    return signatures_by_type(dict(zip(SIGNATURE_COLUMNS, row, strict=True)) for row in cursor.fetchall())


def signatures_by_type(rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[Signature, ...]]:
    """Rows grouped by family, in the order given."""
    families: dict[str, list[Signature]] = {}
    for row in rows:
        sig = signature_from_row(row)
        families.setdefault(sig.type, []).append(sig)
    return {name: tuple(sigs) for name, sigs in families.items()}


@dataclass
class Identification:
    """What the signatures say of one unit id."""

    families: list[str] = field(default_factory=list)  # the best matches: one, several (ambiguous) or none
    answered: dict[tuple[int, int, int], list[int]] = field(default_factory=dict)  # what read, by key
    refused: dict[tuple[int, int, int], str] = field(default_factory=dict)  # what did not, and why

    @property
    def family(self) -> str | None:
        return self.families[0] if len(self.families) == 1 else None


async def identify(families: Mapping[str, Sequence[Signature]], read: Read, unit: int) -> Identification:
    """Name the best match, reading only what can still decide it: the register the most remaining
    candidate families need first, each register once; a family drops out at its first row that is
    refused or out of range, and a register no remaining family needs is not read. The families
    left have had every row read and hold (the same answer as reading everything, in far fewer
    reads: on a 9600-baud line each read costs tens of milliseconds, and a device that stays silent
    on an address it lacks costs a whole timeout). A device no family claims has the rest of the
    signature registers read as well: what they give is where a map for it starts."""
    result = Identification()
    candidates = {name: tuple(sigs) for name, sigs in families.items() if sigs}
    while True:
        needed = Counter(sig.key for sigs in candidates.values() for sig in sigs
                         if sig.key not in result.answered and sig.key not in result.refused)
        if not needed:
            break
        key = min(needed, key=lambda k: (-needed[k], k))  # the most needed; then in address order
        fc, address, count = key
        try:
            result.answered[key] = await read(fc, address, count, unit)
        except ModbusError as exc:
            result.refused[key] = str(exc)
        candidates = {name: sigs for name, sigs in candidates.items()
                      if all(sig.key != key or (key in result.answered and sig.holds(result.answered[key]))
                             for sig in sigs)}
    if candidates:
        best = max(len(sigs) for sigs in candidates.values())
        result.families = sorted(name for name, sigs in candidates.items() if len(sigs) == best)
        return result
    # no family: what every signature register gives is what the operator starts a map from
    for key in sorted({sig.key for sigs in families.values() for sig in sigs} - set(result.answered)
                      - set(result.refused)):
        fc, address, count = key
        try:
            result.answered[key] = await read(fc, address, count, unit)
        except ModbusError as exc:
            result.refused[key] = str(exc)
    return result
