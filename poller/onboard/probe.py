"""`emm probe`: read one device type's map from a live device once, and show every value.

Nothing is written anywhere. The registers are planned as the poller plans them
(plan_device: the type's max_block, max_gap and single_value_reads) and read block by
block through one Reader (one request at a time on the bus), with the type's timeout,
request pause and connect pause. A block the device refuses with exception 2 or 3
(a register in it does not exist) is read again register by register, so a single
wrong address shows the device's exception on its own row and the others their values:

    MEASUREMENT  ADDRESS  FC  TYPE     RAW            VALUE     UNIT  NOTE
    voltage_l1   0        4   float32  0x4366 0x1999  230.1     V
    frequency    10       4   float32  -              -         Hz    exception 2 (illegal data address)

Values are decoded with the poller's own functions (decode_raw, scale_factor_of,
apply_scaling), so a value shown is the value the poller would store. A "not available"
sentinel and NaN are shown as such: the register read, the device has no value for it.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..cycle import BUSY_RETRIES
from ..decode import DecodeError, apply_scaling, decode_raw, scale_factor_of
from ..logsafe import escape_controls
from ..modbus import BUSY_CODES, EXCEPTION_NAMES, SPLIT_CODES, ConnectError, ExceptionReply, ModbusError
from ..model import DeviceType, ReadBlock, Register
from ..plan import plan_device, plan_reads
from .wire import Reader

__all__ = ["ProbeResult", "Row", "format_json", "format_table", "probe"]

OK, NOT_AVAILABLE, NAN, FAILED = "ok", "not available", "nan", "failed"


@dataclass
class Row:
    """One register of the map, as probed."""

    register: Register
    words: list[int] | None = None  # the register's own words, when its block was read
    value: float | None = None  # the value the poller would store
    status: str = FAILED  # ok | not available | nan | failed
    reason: str = ""  # why it failed, or what was applied (scale, scale factor, offset)

    @property
    def failed(self) -> bool:
        return self.status == FAILED


@dataclass
class ProbeResult:
    bus: str
    unit: int
    device_type: str
    rows: list[Row]
    requests: int = 0  # requests sent
    blocks: int = 0  # blocks in the type's plan
    aborted: str | None = None  # the bus could not be used at all (cannot connect)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.failed]


def exception_text(exc: ModbusError) -> str:
    """A failed read in a few words: the device's exception code and name, or the error's message."""
    if isinstance(exc, ExceptionReply):
        return f"exception {exc.code} ({EXCEPTION_NAMES.get(exc.code, 'unknown exception')})"
    return str(exc)


async def read_block(reader: Reader, block: ReadBlock, unit: int, dtype: DeviceType, connect_pause: float
                     ) -> list[int]:
    """One block, retried after "busy" replies as the poller retries them (cycle.BUSY_RETRIES)."""
    for backoff in (*BUSY_RETRIES, None):
        try:
            return await reader.read(int(block.function_code), block.address, block.count, unit,
                                     pause=dtype.request_pause_s, connect_pause=connect_pause)
        except ExceptionReply as exc:
            if exc.code not in BUSY_CODES or backoff is None:
                raise
            await asyncio.sleep(backoff)
    raise AssertionError("unreachable")


async def probe(reader: Reader, dtype: DeviceType, unit: int) -> ProbeResult:
    """Read every register of `dtype` from `unit` once; the rows in the map's order (by address)."""
    rows = {reg: Row(reg) for reg in sorted(dtype.registers, key=lambda r: (r.function_code, r.address))}
    blocks = plan_device(dtype)
    result = ProbeResult(str(reader.address), unit, dtype.name, list(rows.values()), blocks=len(blocks))
    raws: dict[str, int | float] = {}  # raw numbers by measurement, for the scale factors
    sent_before = reader.requests
    try:
        for block in blocks:
            await _read_into(reader, block, unit, dtype, rows, raws, result)
    except ConnectError as exc:
        result.aborted = str(exc)
        for row in rows.values():
            if row.words is None and not row.reason:
                row.reason = "not read: cannot connect"
    result.requests = reader.requests - sent_before
    by_name = {r.measurement: r for r in dtype.registers}
    for row in rows.values():
        if row.words is not None:
            _decode(row, raws, by_name)
    return result


async def _read_into(reader: Reader, block: ReadBlock, unit: int, dtype: DeviceType, rows: dict[Register, Row],
                     raws: dict[str, int | float], result: ProbeResult) -> None:
    try:
        words = await read_block(reader, block, unit, dtype, dtype.connect_pause_s)
    except ExceptionReply as exc:
        if exc.code in SPLIT_CODES and len(block.registers) > 1:
            # some register in the block does not exist: each on its own, so the one that is wrong says so
            result.notes.append(f"{block} refused ({exception_text(exc)}): read register by register")
            for single in plan_reads(block.registers, one_per_value=True):
                await _read_into(reader, single, unit, dtype, rows, raws, result)
            return
        _fail(block, rows, exception_text(exc))
        return
    except ConnectError:
        raise
    except ModbusError as exc:
        _fail(block, rows, exception_text(exc))
        return
    for reg in block.registers:
        start = reg.address - block.address
        row = rows[reg]
        row.words = list(words[start:start + reg.words])
        if len(row.words) < reg.words:
            row.words, row.reason = None, f"the reply is short: {len(words)} of {block.count} registers"
            continue
        try:
            raws[reg.measurement] = decode_raw(reg, row.words)
        except DecodeError as exc:  # pragma: no cover - decode_raw only fails on a short reply
            row.reason = str(exc)


def _fail(block: ReadBlock, rows: dict[Register, Row], reason: str) -> None:
    for reg in block.registers:
        rows[reg].words, rows[reg].status, rows[reg].reason = None, FAILED, reason


def _decode(row: Row, raws: dict[str, int | float], by_name: dict[str, Register]) -> None:
    """The value the poller would store for a row whose words were read (decode.py's own steps)."""
    reg = row.register
    raw = raws.get(reg.measurement)
    if raw is None:
        row.status = FAILED
        return
    if reg.not_available is not None and raw == reg.not_available:
        row.status, row.reason = NOT_AVAILABLE, f"raw {raw} means not available; not stored"
        return
    if isinstance(raw, float) and math.isnan(raw):
        row.status, row.reason = NAN, "the device sent NaN (no value); not stored"
        return
    notes = []
    try:
        sf = scale_factor_of(reg, raws, by_name)
        if sf is not None:
            notes.append(f"{reg.scale_factor} = {sf}")
        row.value = apply_scaling(reg, raw, sf)
    except DecodeError as exc:
        row.status, row.reason = FAILED, str(exc)
        return
    if reg.scale != 1.0:
        notes.insert(0, f"x {reg.scale:g}")
    if reg.offset:
        notes.append(f"{'+' if reg.offset > 0 else '-'} {abs(reg.offset):g}")
    row.status, row.reason = OK, ", ".join(notes)


def _hex(words: Sequence[int] | None) -> str:
    return " ".join(f"0x{w:04X}" for w in words) if words is not None else "-"


def _value_text(row: Row) -> str:
    if row.status == OK and row.value is not None:
        return f"{row.value:.10g}"
    if row.status in (NOT_AVAILABLE, NAN):
        return "not available" if row.status == NOT_AVAILABLE else "NaN"
    return "-"


def table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """Plain text columns, each as wide as its widest cell; the last column is not padded."""
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = []
    for line in (header, *lines):
        cells = [cell.ljust(widths[i]) if i < len(line) - 1 else cell for i, cell in enumerate(line)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def format_table(result: ProbeResult) -> str:
    """The probe as an aligned plain-text table with a header and a summary line."""
    header = ("MEASUREMENT", "ADDRESS", "FC", "TYPE", "RAW", "VALUE", "UNIT", "NOTE")
    lines = [(r.register.measurement, str(r.register.address), str(int(r.register.function_code)),
              r.register.data_type.name.lower(), _hex(r.words), _value_text(r), escape_controls(r.register.unit or ""),
              escape_controls(r.reason)) for r in result.rows]
    failed = len(result.failed)
    top = (f"probe {result.bus} unit {result.unit}, type {result.device_type}: {len(result.rows)} registers "
           f"in {result.blocks} planned request(s), {result.requests} sent")
    bottom = (f"{len(result.rows) - failed} of {len(result.rows)} registers read"
              + (f", {failed} failed" if failed else ""))
    parts = [top, "", table(header, lines), ""]
    parts += [f"note: {escape_controls(n)}" for n in result.notes]
    if result.aborted:
        parts.append(f"stopped: {escape_controls(result.aborted)}")
    parts.append(bottom)
    return "\n".join(parts)


def format_json(result: ProbeResult) -> str:
    """The probe as one JSON object (NaN and "not available" as a null value with their status)."""
    def row(r: Row) -> dict[str, Any]:
        return {"measurement": r.register.measurement, "address": r.register.address,
                "function_code": int(r.register.function_code), "data_type": r.register.data_type.name.lower(),
                "byte_order": r.register.byte_order.value, "raw": None if r.words is None else list(r.words),
                "raw_hex": None if r.words is None else [f"0x{w:04X}" for w in r.words],
                "value": r.value, "unit": r.register.unit, "status": r.status, "reason": r.reason or None}
    return json.dumps({"bus": result.bus, "unit": result.unit, "type": result.device_type,
                       "blocks": result.blocks, "requests": result.requests, "aborted": result.aborted,
                       "failed": len(result.failed), "notes": result.notes,
                       "rows": [row(r) for r in result.rows]}, indent=2)
