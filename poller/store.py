"""PostgreSQL rows -> validated, immutable Meter objects.

Every row is checked here once per load; a bad row is skipped with a message
that names the row and says what to change, and never stops the others.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from croniter import croniter

from .model import (
    MAX_REGISTERS_PER_READ,
    ByteOrder,
    DataType,
    DeviceType,
    FunctionCode,
    Meter,
    Register,
)

DEVICE_TYPES_SQL = """
    SELECT name, max_block, max_gap, timeout_s, request_pause_ms
    FROM device_types ORDER BY name"""
REGISTERS_SQL = """
    SELECT id, type, register_address, measurement_name, data_unit, data_type,
           function_code, byte_order, scale, value_offset, scale_factor, not_available
    FROM registers ORDER BY type, register_address, id"""
METERS_SQL = """
    SELECT id, host, port, slave_address, type, description, poll_cron, enabled
    FROM energy_meters ORDER BY id"""

_KNOWN_TYPES = ", ".join(f"{t.value} {t.name.lower()}" for t in DataType)


@dataclass(frozen=True)
class Configuration:
    """What one load of the configuration tables produced."""

    meters: tuple[Meter, ...]
    device_types: Mapping[str, DeviceType]
    problems: tuple[str, ...]  # one line per skipped row, with the reason


def register_from_row(row: Mapping[str, Any]) -> Register:
    """Build a Register from a `registers` row; ValueError says what is wrong."""
    where = f"registers.id {row['id']} ({row['type']}.{row['measurement_name']})"
    try:
        data_type = DataType(row["data_type"])
    except ValueError:
        raise ValueError(f"{where}: data_type {row['data_type']} is unknown (known: {_KNOWN_TYPES})") from None
    try:
        function_code = FunctionCode(row["function_code"])
    except ValueError:
        raise ValueError(f"{where}: function_code {row['function_code']} is not a read "
                         "(3 read holding registers, 4 read input registers)") from None
    try:
        order = ByteOrder((row.get("byte_order") or "ABCD").upper())
    except ValueError:
        raise ValueError(f"{where}: byte_order {row['byte_order']!r} is unknown (ABCD, CDAB, BADC, DCBA)") from None
    if data_type.words == 1 and order not in (ByteOrder.ABCD, ByteOrder.BADC):
        raise ValueError(f"{where}: a 16-bit value has no words to swap; byte_order {order.value} "
                         "is not possible (use ABCD or BADC)")
    address = row["register_address"]
    if not 0 <= address <= 65535 or address + data_type.words > 65536:
        raise ValueError(f"{where}: register_address {address} outside 0..65535 for a "
                         f"{data_type.words}-register value")
    scale = float(row.get("scale", 1) if row.get("scale") is not None else 1)
    offset = float(row.get("value_offset", 0) if row.get("value_offset") is not None else 0)
    if not math.isfinite(scale) or scale == 0:
        raise ValueError(f"{where}: scale {scale} must be a finite, non-zero number")
    if not math.isfinite(offset):
        raise ValueError(f"{where}: value_offset {offset} must be finite")
    na = row.get("not_available")
    not_available: int | float | None = None
    if na is not None:
        na = Decimal(na)
        not_available = float(na) if data_type.is_float else int(na)
        rng = data_type.raw_range
        if rng is not None and (na != int(na) or not rng[0] <= int(na) <= rng[1]):
            raise ValueError(f"{where}: not_available {na} is not a {data_type.name.lower()} value "
                             f"({rng[0]}..{rng[1]})")
    return Register(
        id=row["id"],
        device_type=row["type"],
        address=address,
        measurement=row["measurement_name"],
        unit=row.get("data_unit") or None,
        data_type=data_type,
        function_code=function_code,
        byte_order=order,
        scale=scale,
        offset=offset,
        scale_factor=row.get("scale_factor") or None,
        not_available=not_available,
    )


def build_configuration(
    type_rows: Iterable[Mapping[str, Any]],
    register_rows: Iterable[Mapping[str, Any]],
    meter_rows: Iterable[Mapping[str, Any]],
) -> Configuration:
    """Validate rows into objects. Pure: the database is read elsewhere."""
    problems: list[str] = []
    by_type: dict[str, list[Register]] = {}
    for row in register_rows:
        try:
            reg = register_from_row(row)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        by_type.setdefault(reg.device_type, []).append(reg)

    types: dict[str, DeviceType] = {}
    for row in type_rows:
        name = row["name"]
        regs = _check_scale_factors(name, by_type.pop(name, []), problems)
        max_block = int(row.get("max_block") or MAX_REGISTERS_PER_READ)
        if not 1 <= max_block <= MAX_REGISTERS_PER_READ:
            problems.append(f"device_types {name}: max_block {max_block} outside 1..125; using 125")
            max_block = MAX_REGISTERS_PER_READ
        for reg in regs:
            if reg.words > max_block:
                problems.append(f"registers.id {reg.id} ({name}.{reg.measurement}): needs {reg.words} "
                                f"registers, more than the type's max_block {max_block}; skipped")
        regs = [r for r in regs if r.words <= max_block]
        types[name] = DeviceType(
            name=name,
            registers=tuple(regs),
            max_block=max_block,
            max_gap=max(0, int(row["max_gap"] if row.get("max_gap") is not None else 16)),
            timeout_s=float(row.get("timeout_s") or 3.0),
            request_pause_s=float(row.get("request_pause_ms") or 0) / 1000.0,
        )
    for name, regs in by_type.items():
        problems.append(f"registers of type {name!r} ({len(regs)} rows): no such device_types row; skipped")

    meters: list[Meter] = []
    for row in meter_rows:
        where = f"energy_meters.id {row['id']} ({row['host']}:{row['port']} unit {row['slave_address']})"
        dtype = types.get(row["type"])
        if dtype is None:
            problems.append(f"{where}: type {row['type']!r} has no device_types row; skipped")
            continue
        if not dtype.registers:
            problems.append(f"{where}: type {row['type']!r} has no usable registers; nothing to read")
            continue
        if not str(row["host"] or "").strip():
            problems.append(f"{where}: host is empty; skipped")
            continue
        if not 1 <= int(row["port"]) <= 65535:
            problems.append(f"{where}: port {row['port']} outside 1..65535; skipped")
            continue
        if not 0 <= int(row["slave_address"]) <= 255:
            problems.append(f"{where}: slave_address {row['slave_address']} outside 0..255; skipped")
            continue
        cron = (row.get("poll_cron") or "").strip() or None
        if cron is not None and not croniter.is_valid(cron):
            problems.append(f"{where}: poll_cron {cron!r} is not a crontab expression "
                            "(5 fields, or 6 with seconds last); skipped")
            continue
        meters.append(Meter(
            id=row["id"],
            host=row["host"].strip(),
            port=int(row["port"]),
            slave_address=int(row["slave_address"]),
            device_type=dtype,
            description=row.get("description") or None,
            poll_cron=cron,
            enabled=bool(row.get("enabled", True)),
        ))
    return Configuration(tuple(meters), types, tuple(problems))


def _check_scale_factors(type_name: str, regs: list[Register], problems: list[str]) -> list[Register]:
    """Drop registers whose scale-factor register is missing or itself scaled."""
    by_name = {r.measurement: r for r in regs}
    kept = []
    for reg in regs:
        if reg.scale_factor is not None:
            sf = by_name.get(reg.scale_factor)
            if sf is None:
                problems.append(f"registers.id {reg.id} ({type_name}.{reg.measurement}): scale_factor "
                                f"{reg.scale_factor!r} is not a register of this type; skipped")
                continue
            if sf.scale_factor is not None or sf.data_type.is_float:
                problems.append(f"registers.id {reg.id} ({type_name}.{reg.measurement}): scale_factor "
                                f"register {sf.measurement!r} must be an integer without its own scale "
                                "factor; skipped")
                continue
        kept.append(reg)
    return kept


VERSION_SQL = "SELECT version FROM config_version"


def config_version(connection: Any) -> int | None:
    """The change counter db/init.sql keeps; None when the database has none (reload every cycle)."""
    import psycopg2

    try:
        with connection.cursor() as cur:
            cur.execute(VERSION_SQL)
            row = cur.fetchone()
        connection.rollback()
    except (psycopg2.errors.UndefinedTable, psycopg2.errors.InsufficientPrivilege):
        connection.rollback()  # an older database: fall back to reading the tables each cycle
        return None
    return int(row[0]) if row else None


def load_rows(connection: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The three configuration tables, read in one consistent snapshot."""
    import psycopg2.extras

    with connection.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute(DEVICE_TYPES_SQL)
        type_rows = [dict(r) for r in cur.fetchall()]
        cur.execute(REGISTERS_SQL)
        register_rows = [dict(r) for r in cur.fetchall()]
        cur.execute(METERS_SQL)
        meter_rows = [dict(r) for r in cur.fetchall()]
    connection.rollback()  # end the read-only snapshot
    return type_rows, register_rows, meter_rows


def load_configuration(connection: Any) -> Configuration:
    """Read and validate the configuration tables."""
    return build_configuration(*load_rows(connection))
