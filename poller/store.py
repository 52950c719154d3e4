"""PostgreSQL rows -> validated, immutable Meter objects.

Every column is checked here, where it enters; a bad row is skipped with a message
that names the row and says what to change, and never stops the others. Each row is
parsed inside its own guard, so even an error nobody foresaw costs that row only
(reported with its id), never the whole configuration: nothing a row can hold
raises out of a load.

Limits beyond the schema's, so that decoding (poller/decode.py) can only give a
finite number or a DecodeError, for any raw value of any type:

    1e-9 <= |scale| <= 1e9        raw (at most 1.8e19, or a float32) * scale * 10^sf (sf -10..10)
    |value_offset| <= 1e15        stays finite; beyond 1e15 an offset swamps a float64's digits
    not_available                 a finite value of the register's own type, compared as decoded
                                  (a float32 sentinel is rounded to float32 first)

Reloads cost what changed (`Loader`): PostgreSQL fingerprints each device type
(its device_types row and all its register rows) in the same snapshot as the
load, and only the register rows of types whose fingerprint moved are fetched and
parsed again. A type whose rows are unchanged gives back the very same DeviceType
object, and a meter whose row and type are unchanged the very same Meter object,
so plans, learned block splits and series keys cached per meter survive unrelated
changes.
"""

from __future__ import annotations

import encodings.idna
import ipaddress
import math
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .model import (
    MAX_REGISTERS_PER_READ,
    PARITIES,
    ByteOrder,
    DataType,
    DeviceType,
    FunctionCode,
    Meter,
    Register,
    SerialLine,
    Transport,
    Wire,
)
from .schedule import CronError, validate_cron

SCALE_MIN, SCALE_MAX = 1e-9, 1e9
OFFSET_MAX = 1e15
MAX_HOST_LENGTH = 253  # a DNS name; each label 1..63 once IDNA-encoded
MEASUREMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")  # as db/init.sql's CHECK

TYPE_COLUMNS = ("name", "max_block", "max_gap", "timeout_s", "request_pause_ms",
                "connect_pause_ms", "close_after_poll", "single_value_reads")
REGISTER_COLUMNS = ("id", "type", "register_address", "measurement_name", "data_unit", "data_type",
                    "function_code", "byte_order", "scale", "value_offset", "scale_factor", "not_available",
                    "kind", "counter_max_rate")
METER_COLUMNS = ("id", "host", "port", "slave_address", "type", "description", "poll_cron", "enabled",
                 "transport", "baudrate", "parity", "stopbits", "bytesize")
# Columns added after the first release (db/upgrade.sql adds them to an older database), and
# what a database without them means: read as this SQL literal, and said once as a problem.
LATER_COLUMNS = {
    "device_types": {"connect_pause_ms": "0", "close_after_poll": "false", "single_value_reads": "false"},
    "energy_meters": {"transport": "'tcp'", "baudrate": "9600", "parity": "'N'", "stopbits": "1", "bytesize": "8"},
    "registers": {"kind": "'gauge'", "counter_max_rate": "NULL"},
}
# The columns of the very tables the SELECTs read: the names resolved through search_path,
# as the SELECTs resolve them (current_schema() could name another schema that lacks them).
COLUMNS_SQL = """
    SELECT c.relname AS table_name, a.attname AS column_name
    FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
    WHERE a.attrelid IN ('device_types'::regclass, 'energy_meters'::regclass, 'registers'::regclass)
      AND a.attnum > 0 AND NOT a.attisdropped"""


def _select(columns: Sequence[str], table: str, missing: frozenset[str] = frozenset()) -> str:
    """The column list of a SELECT from `table`, a missing later column read as its default."""
    return ", ".join(f"{LATER_COLUMNS[table][c]} AS {c}" if c in missing else c for c in columns)


def _sql(missing: frozenset[str] = frozenset()) -> tuple[str, str, str, str, str]:
    """The SELECTs of a load: device types, registers, meters, and the same for some types."""
    types = _select(TYPE_COLUMNS, "device_types", missing)
    registers = _select(REGISTER_COLUMNS, "registers", missing)
    return (f"SELECT {types} FROM device_types ORDER BY name",
            f"SELECT {registers} FROM registers ORDER BY type, register_address, id",
            f"SELECT {_select(METER_COLUMNS, 'energy_meters', missing)} FROM energy_meters ORDER BY id",
            f"SELECT {types} FROM device_types WHERE name = ANY(%s) ORDER BY name",
            f"SELECT {registers} FROM registers WHERE type = ANY(%s) ORDER BY type, register_address, id")


DEVICE_TYPES_SQL, REGISTERS_SQL, METERS_SQL, DEVICE_TYPES_OF_SQL, REGISTERS_OF_SQL = _sql()
# One row per device type (and per type named by registers without a device_types row):
# a digest of its device_types row and one of all its register rows, whole rows as text,
# so any change to any column moves it. ~0.35 s for 250,000 registers, all in PostgreSQL.
TYPE_FINGERPRINTS_SQL = """
    SELECT coalesce(t.name, r.type), md5(t::text), r.fingerprint, coalesce(r.rows, 0)
    FROM device_types t FULL JOIN (
        SELECT type, md5(string_agg(registers::text, E'\\n' ORDER BY id)) AS fingerprint, count(*) AS rows
        FROM registers GROUP BY type) r ON r.type = t.name
    ORDER BY 1"""
VERSION_SQL = "SELECT version FROM config_version"

_KNOWN_TYPES = ", ".join(f"{t.value} {t.name.lower()}" for t in DataType)
_FLOAT32 = struct.Struct(">f")
# Lookups by the column's value (a dict is much cheaper than calling the enum for 250,000 rows).
_DATA_TYPES: dict[Any, DataType] = {int(t): t for t in DataType}
_FUNCTION_CODES: dict[Any, FunctionCode] = {int(f): f for f in FunctionCode}
_BYTE_ORDERS: dict[Any, ByteOrder] = {str(o): o for o in ByteOrder}

# What one SELECT returns; `query(sql, params)` runs one (a plain cursor or config.py's session).
Row = tuple[Any, ...]
Query = Callable[[str, Sequence[Any]], list[Row]]


@dataclass(frozen=True)
class Configuration:
    """What one load of the configuration tables produced."""

    meters: tuple[Meter, ...]
    device_types: Mapping[str, DeviceType]
    problems: tuple[str, ...]  # one line per skipped row, with the reason


# --- single values -------------------------------------------------------------------------

# `what` names the column in a message: text, or a function making it (only called on an error).
What = str | Callable[[], str]


def _whole(value: Any, what: What) -> int:
    """An integer column's value; ValueError when it is anything else (a bool, 1.5, text)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    finite = value.is_finite() if isinstance(value, Decimal) else isinstance(value, float) and math.isfinite(value)
    if finite and value == int(value):
        return int(value)
    raise ValueError(f"{what() if callable(what) else what} {_short(repr(value))} is not a whole number")


def _number(value: Any, what: What) -> float:
    """A numeric column's value as a float (possibly infinite or NaN; the caller checks the range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ValueError(f"{what() if callable(what) else what} {_short(repr(value))} is not a number")
    if isinstance(value, Decimal) and value.is_snan():
        return math.nan  # float() raises on a signalling NaN; the caller's range check reports it as NaN
    return float(value)


def _short(text: object, limit: int = 80) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


def host_problem(host: str) -> str | None:
    """Why `host` cannot be connected to, or None when it can be tried.

    Accepted: an IPv4 or IPv6 literal, or a host name whose labels are 1..63
    characters once IDNA-encoded (as the socket module encodes it), 253 in all,
    holding letters, digits, '-' and '_' (other scripts through IDNA). '192.168..10',
    '.meter' and a 64-character label are refused here instead of failing every cycle.
    """
    if not host:
        return "is empty"
    if len(host) > 4 * MAX_HOST_LENGTH:
        return f"is {len(host)} characters long (a host name has at most {MAX_HOST_LENGTH})"
    for char in host:
        if char.isspace() or not char.isprintable():
            return f"contains a space or control character ({char!r})"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    labels = re.split("[.\u3002\uff0e\uff61]", host)  # the dots Python's IDNA codec splits on
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()  # one trailing dot: the root, allowed
    encoded: list[bytes] = []
    for label in labels:
        if not label:
            return "has an empty label (two dots in a row, or a dot at the start)"
        odd = next((c for c in label if c.isascii() and not (c.isalnum() or c in "-_")), None)
        if odd is not None:
            return (f"contains {odd!r}: a host name holds letters, digits, '-', '_' and '.' only "
                    "(an IPv6 address as it is, without brackets; the port goes in energy_meters.port)")
        try:
            encoded.append(label.encode("ascii") if label.isascii() else encodings.idna.ToASCII(label))
        except UnicodeError as exc:
            if "too long" in str(exc):
                return f"has a label longer than 63 characters once encoded (IDNA): {_short(label, 70)!r}"
            return f"has a label that cannot be encoded as a host name (IDNA): {_short(label, 70)!r}"
        if len(encoded[-1]) > 63:
            return f"has a label of {len(encoded[-1])} characters (at most 63): {_short(label, 70)!r}"
    if sum(len(e) + 1 for e in encoded) - 1 > MAX_HOST_LENGTH:
        return f"is longer than {MAX_HOST_LENGTH} characters once encoded"
    try:
        host.encode("idna")  # exactly what the socket module does with it
    except UnicodeError as exc:  # pragma: no cover - the checks above catch what the codec refuses
        return f"cannot be encoded as a host name (IDNA): {exc}"
    return None


def _not_available(value: Any, data_type: DataType, where: str) -> int | float | None:
    """The register's "no value" sentinel, as decode compares it: an int in the type's range,
    or a finite float rounded to the type's precision."""
    if value is None:
        return None
    name = data_type.name.lower()
    try:
        if isinstance(value, bool):
            raise ValueError
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except (ArithmeticError, ValueError, TypeError):
        raise ValueError(f"{where}: not_available {_short(repr(value))} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"{where}: not_available {number} is not a raw value a device can send; "
                         f"give a finite {name} value or NULL")
    if data_type.is_float:
        as_float = float(number)
        if data_type is DataType.FLOAT32 and math.isfinite(as_float):
            try:
                as_float = _FLOAT32.unpack(_FLOAT32.pack(as_float))[0]
            except OverflowError:
                as_float = math.inf
        if not math.isfinite(as_float) or (as_float == 0 and number != 0):
            raise ValueError(f"{where}: not_available {number} is not a {name} value "
                             f"(finite, |x| <= {3.4028234e38 if data_type is DataType.FLOAT32 else 1.7976931e308:g},"
                             " and not so small it rounds to 0)")
        return as_float
    low, high = data_type.raw_range or (0, 0)
    if number != number.to_integral_value() or not low <= number <= high:
        raise ValueError(f"{where}: not_available {number} is not a {name} value ({low}..{high})")
    return int(number)


# --- rows ----------------------------------------------------------------------------------

def register_from_row(row: Mapping[str, Any]) -> Register:
    """Build a Register from a `registers` row; ValueError says what is wrong."""
    def where() -> str:  # only built for a message: a full load parses 250,000 rows
        return f"registers.id {row.get('id')} ({_short(row.get('type'), 40)}.{_short(row.get('measurement_name'), 60)})"

    rid = _whole(row["id"], lambda: f"{where()}: id")
    type_name = row["type"]
    if not isinstance(type_name, str):
        raise ValueError(f"{where()}: type {type_name!r} is not text")
    measurement = row["measurement_name"]
    if not isinstance(measurement, str) or not MEASUREMENT_NAME.fullmatch(measurement):
        raise ValueError(f"{where()}: measurement_name {_short(repr(measurement))} must start with a letter or "
                         "'_' and hold only letters, digits, '_', '.' and '-'")
    data_type = _DATA_TYPES.get(row["data_type"])
    if data_type is None:
        raise ValueError(f"{where()}: data_type {_short(row['data_type'])} is unknown (known: {_KNOWN_TYPES})")
    function_code = _FUNCTION_CODES.get(row["function_code"])
    if function_code is None:
        raise ValueError(f"{where()}: function_code {_short(row['function_code'])} is not a read "
                         "(3 read holding registers, 4 read input registers)")
    raw_order = row.get("byte_order") or "ABCD"
    order = _BYTE_ORDERS.get(raw_order.upper() if isinstance(raw_order, str) else raw_order)
    if order is None:
        raise ValueError(f"{where()}: byte_order {_short(repr(raw_order))} is unknown (ABCD, CDAB, BADC, DCBA)")
    if data_type.words == 1 and order not in (ByteOrder.ABCD, ByteOrder.BADC):
        raise ValueError(f"{where()}: a 16-bit value has no words to swap; byte_order {order.value} "
                         "is not possible (use ABCD or BADC)")
    address = _whole(row["register_address"], lambda: f"{where()}: register_address")
    if not 0 <= address <= 65535 or address + data_type.words > 65536:
        raise ValueError(f"{where()}: register_address {address} outside 0..65535 for a "
                         f"{data_type.words}-register value")
    scale = 1.0 if row.get("scale") is None else _number(row["scale"], lambda: f"{where()}: scale")
    if not (math.isfinite(scale) and SCALE_MIN <= abs(scale) <= SCALE_MAX):
        raise ValueError(f"{where()}: scale {scale!r} must be a finite, non-zero number with "
                         f"{SCALE_MIN:g} <= |scale| <= {SCALE_MAX:g} (a scale_factor register or "
                         "value_offset can take the rest)")
    raw_offset = row.get("value_offset")
    offset = 0.0 if raw_offset is None else _number(raw_offset, lambda: f"{where()}: value_offset")
    if not (math.isfinite(offset) and abs(offset) <= OFFSET_MAX):
        raise ValueError(f"{where()}: value_offset {offset!r} must be finite, with |value_offset| <= "
                         f"{OFFSET_MAX:g}")
    unit = row.get("data_unit")
    if unit is not None and not isinstance(unit, str):
        raise ValueError(f"{where()}: data_unit {_short(repr(unit))} is not text")
    scale_factor = row.get("scale_factor") or None
    if scale_factor is not None and not isinstance(scale_factor, str):
        raise ValueError(f"{where()}: scale_factor {_short(repr(scale_factor))} is not a measurement_name")
    na = row.get("not_available")
    kind = row.get("kind") or "gauge"
    if kind not in ("gauge", "counter"):
        raise ValueError(f"{where()}: kind {_short(repr(kind))} is unknown (gauge, counter)")
    raw_rate = row.get("counter_max_rate")
    rate = None if raw_rate is None else _number(raw_rate, lambda: f"{where()}: counter_max_rate")
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"{where()}: counter_max_rate {rate!r} must be a finite number above 0 "
                         "(the largest plausible rise per second, in data_unit), or NULL for no limit")
    return Register(
        id=rid,
        device_type=type_name,
        address=address,
        measurement=measurement,
        unit=unit or None,
        data_type=data_type,
        function_code=function_code,
        byte_order=order,
        scale=scale,
        offset=offset,
        scale_factor=scale_factor,
        not_available=None if na is None else _not_available(na, data_type, where()),
        counter=kind == "counter",
        counter_max_rate=rate if kind == "counter" else None,  # a gauge has no rate to check
    )


def _limit(name: str, row: Mapping[str, Any], column: str, default: float, low: float, high: float,
           whole: bool, problems: list[str], low_open: bool = False) -> float:
    """A device_types planning limit or quirk; out of range (or NaN): the default, with a problem."""
    value = row.get(column)
    if value is None:
        return default
    try:
        number = _whole(value, column) if whole else _number(value, column)
    except ValueError:
        number = math.nan
    if math.isnan(number) or not ((low < number) if low_open else (low <= number)) or not number <= high:
        shown = f"({low:g}, {high:g}]" if low_open else f"{low:g}..{high:g}"
        problems.append(f"device_types {name}: {column} {_short(repr(value))} outside {shown}; using {default:g}")
        return default
    return number


def _device_type(name: str, row: Mapping[str, Any], registers: list[Register], problems: list[str]) -> DeviceType:
    """A device type from its device_types row and its parsed registers (bad ones already out)."""
    max_block = int(_limit(name, row, "max_block", MAX_REGISTERS_PER_READ, 1, MAX_REGISTERS_PER_READ, True,
                           problems))
    max_gap = int(_limit(name, row, "max_gap", 16, 0, MAX_REGISTERS_PER_READ - 1, True, problems))
    timeout_s = _limit(name, row, "timeout_s", 3.0, 0, 60, False, problems, low_open=True)
    pause_ms = _limit(name, row, "request_pause_ms", 0, 0, 10000, True, problems)
    connect_pause_ms = _limit(name, row, "connect_pause_ms", 0, 0, 60000, True, problems)
    close_after_poll = _flag(name, row, "close_after_poll", problems)
    single_value_reads = _flag(name, row, "single_value_reads", problems)
    regs = _check_scale_factors(name, _unique(name, registers, problems), problems)
    kept = []
    for reg in regs:
        if reg.words > max_block:
            problems.append(f"registers.id {reg.id} ({name}.{reg.measurement}): needs {reg.words} "
                            f"registers, more than the type's max_block {max_block}; skipped")
        else:
            kept.append(reg)
    return DeviceType(name=name, registers=tuple(kept), max_block=max_block, max_gap=max_gap,
                      timeout_s=float(timeout_s), request_pause_s=float(pause_ms) / 1000.0,
                      connect_pause_s=float(connect_pause_ms) / 1000.0, close_after_poll=close_after_poll,
                      single_value_reads=single_value_reads)


def _flag(name: str, row: Mapping[str, Any], column: str, problems: list[str]) -> bool:
    """A device_types quirk that is on or off; anything but a boolean: off, with a problem."""
    value = row.get(column)
    if value is None or isinstance(value, bool):
        return bool(value)
    problems.append(f"device_types {name}: {column} {_short(repr(value))} is not true or false; using false")
    return False


def _unique(type_name: str, regs: list[Register], problems: list[str]) -> list[Register]:
    """One register per measurement_name (the schema says so; an older one may not)."""
    seen: dict[str, Register] = {}
    for reg in regs:
        if reg.measurement in seen:
            problems.append(f"registers.id {reg.id} ({type_name}.{reg.measurement}): measurement_name already "
                            f"used by registers.id {seen[reg.measurement].id} of this type; skipped")
        else:
            seen[reg.measurement] = reg
    return list(seen.values())


def _check_scale_factors(type_name: str, regs: list[Register], problems: list[str]) -> list[Register]:
    """Drop registers whose scale-factor register is missing or itself scaled."""
    by_name = {r.measurement: r for r in regs}
    kept = []
    for reg in regs:
        if reg.scale_factor is not None:
            sf = by_name.get(reg.scale_factor)
            if sf is None:
                problems.append(f"registers.id {reg.id} ({type_name}.{reg.measurement}): scale_factor "
                                f"{_short(repr(reg.scale_factor))} is not a register of this type; skipped")
                continue
            if sf.scale_factor is not None or sf.data_type.is_float:
                problems.append(f"registers.id {reg.id} ({type_name}.{reg.measurement}): scale_factor "
                                f"register {sf.measurement!r} must be an integer without its own scale "
                                "factor; skipped")
                continue
        kept.append(reg)
    return kept


def build_device_type(name: Any, type_row: Mapping[str, Any] | None, register_rows: Iterable[Mapping[str, Any]],
                      rows: int | None = None) -> tuple[DeviceType | None, tuple[str, ...]]:
    """One device type from its device_types row (None: there is none) and its register rows.

    Returns the type (None when it cannot be used at all) and the problems found,
    one line per skipped row. Never raises: a row that cannot be parsed for any
    reason is skipped and reported with its id.
    """
    problems: list[str] = []
    if type_row is None:
        count = rows if rows is not None else sum(1 for _ in register_rows)
        return None, (f"registers of type {_short(repr(name))} ({count} rows): no such device_types row; skipped",)
    if not isinstance(name, str):
        return None, (f"device_types {_short(repr(name))}: the name is not text; skipped with its meters",)
    registers: list[Register] = []
    for row in register_rows:
        try:
            registers.append(register_from_row(row))
        except ValueError as exc:
            problems.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - containment: this row only
            problems.append(_unexpected("registers.id", row, exc))
    try:
        return _device_type(name, type_row, registers, problems), tuple(problems)
    except Exception as exc:  # noqa: BLE001 - containment: this type only
        return None, (*problems, f"device_types {_short(name)}: cannot be read ({type(exc).__name__}: "
                                 f"{_short(exc, 200)}); skipped with its meters")


def _unexpected(table: str, row: Mapping[str, Any], exc: Exception) -> str:
    try:
        rid = row.get("id")
    except Exception:  # noqa: BLE001 - not even a mapping
        rid = "?"
    return f"{table} {_short(rid)}: cannot be read ({type(exc).__name__}: {_short(exc, 200)}); skipped"


def meter_from_row(row: Mapping[str, Any], dtype: DeviceType | None, type_known: bool = False) -> Meter:
    """Build a Meter from an `energy_meters` row and its (already built) type; ValueError says what is wrong.

    `type_known`: the type has a device_types row that could not be used (its own problem says why).
    """
    where = (f"energy_meters.id {row.get('id')} ({_short(row.get('host'), 60)}:{row.get('port')} "
             f"unit {row.get('slave_address')})")
    mid = _whole(row["id"], f"{where}: id")
    transport = _TRANSPORTS.get(_key(row.get("transport", "tcp")))
    if transport is None:
        raise ValueError(f"{where}: transport {_short(repr(row.get('transport')))} is unknown "
                         f"(known: {', '.join(t.value for t in Transport)}); skipped")
    if transport is Transport.SERIAL:
        where = (f"energy_meters.id {row.get('id')} (serial {_short(row.get('host'), 60)} "
                 f"unit {row.get('slave_address')})")
    if dtype is None:
        why = "could not be loaded (see its device_types problem)" if type_known else "has no device_types row"
        raise ValueError(f"{where}: type {_short(repr(row.get('type')))} {why}; skipped")
    if not dtype.registers:
        raise ValueError(f"{where}: type {dtype.name!r} has no usable registers; nothing to read")
    raw_host = row["host"]
    if not isinstance(raw_host, str):
        raise ValueError(f"{where}: host {_short(repr(raw_host))} is not text; skipped")
    host = raw_host.strip()
    problem = device_path_problem(host) if transport is Transport.SERIAL else host_problem(host)
    if problem is not None:
        raise ValueError(f"{where}: host {_short(repr(host))} {problem}; skipped")
    port = _whole(row["port"], f"{where}: port")
    if not 1 <= port <= 65535:
        raise ValueError(f"{where}: port {port} outside 1..65535; skipped")
    unit = _whole(row["slave_address"], f"{where}: slave_address")
    if not 0 <= unit <= 255:
        raise ValueError(f"{where}: slave_address {unit} outside 0..255; skipped")
    if unit == 0 and transport in (Transport.SERIAL, Transport.RTU_OVER_TCP):
        raise ValueError(f"{where}: slave_address 0 is the RTU broadcast address, which no device answers; "
                         "use the device's own unit id; skipped")
    line = serial_line(row, where) if transport is Transport.SERIAL else None
    cron = row.get("poll_cron")
    if cron is not None and not isinstance(cron, str):
        raise ValueError(f"{where}: poll_cron {_short(repr(cron))} is not text; skipped")
    cron = (cron or "").strip() or None
    if cron is not None:
        try:
            cron = validate_cron(cron, "poll_cron")
        except CronError as exc:
            raise ValueError(f"{where}: {_short(exc, 300)}; skipped") from None
    description = row.get("description")
    if description is not None and not isinstance(description, str):
        raise ValueError(f"{where}: description {_short(repr(description))} is not text; skipped")
    return Meter(
        id=mid,
        host=host,
        port=port,
        slave_address=unit,
        device_type=dtype,
        description=description or None,
        poll_cron=cron,
        enabled=bool(row.get("enabled", True)),
        transport=transport,
        line=line,
    )


_TRANSPORTS: dict[Any, Transport] = {t.value: t for t in Transport}
BAUDRATES = (50, 4_000_000)  # as db/init.sql's CHECK


def serial_line(row: Mapping[str, Any], where: str) -> SerialLine:
    """A serial meter's line settings; ValueError says which is wrong."""
    baudrate = _whole(row.get("baudrate", 9600), f"{where}: baudrate")
    if not BAUDRATES[0] <= baudrate <= BAUDRATES[1]:
        raise ValueError(f"{where}: baudrate {baudrate} outside {BAUDRATES[0]}..{BAUDRATES[1]}; skipped")
    parity = row.get("parity", "N")
    if parity not in PARITIES:
        raise ValueError(f"{where}: parity {_short(repr(parity))} is not N, E or O; skipped")
    stopbits = _whole(row.get("stopbits", 1), f"{where}: stopbits")
    bytesize = _whole(row.get("bytesize", 8), f"{where}: bytesize")
    if stopbits not in (1, 2) or bytesize not in (7, 8):
        raise ValueError(f"{where}: {bytesize} data bits and {stopbits} stop bits: use 7 or 8, and 1 or 2; skipped")
    return SerialLine(baudrate, parity, stopbits, bytesize)


def device_path_problem(path: str) -> str | None:
    """Why `path` cannot be a serial device, or None: an absolute path of at most 4096 characters
    without control characters."""
    if not path.startswith("/"):
        return "is not a device path (for transport serial, e.g. /dev/ttyUSB0)"
    if len(path) > 4096:
        return f"is {len(path)} characters long (a device path has at most 4096)"
    if any(not ch.isprintable() for ch in path):
        return "holds characters no device path has"
    return None


def one_bus_per_wire(meters: list[Meter], problems: list[str]) -> list[Meter]:
    """The meters without those whose rows describe one wire two ways (Modbus TCP and RTU over
    TCP on one host:port, one serial device at two baud rates): every such enabled meter is
    skipped, with a problem naming the others; neither description silently wins."""
    by_wire: dict[Wire, set[Any]] = {}
    for m in meters:
        if m.enabled:
            by_wire.setdefault(m.bus.wire, set()).add(m.bus)
    torn = {wire for wire, buses in by_wire.items() if len(buses) > 1}
    if not torn:
        return meters
    kept = []
    for m in meters:
        if m.enabled and m.bus.wire in torn:
            others = ", ".join(f"id {o.id} ({o.bus})" for o in meters
                               if o.enabled and o.bus.wire == m.bus.wire and o.bus != m.bus)
            problems.append(f"energy_meters.id {m.id} ({m.bus}): this bus is described differently by "
                            f"{others}; skipped: give every meter on one host:port the same transport, "
                            "and on one serial device the same line settings")
        else:
            kept.append(m)
    return kept


def _meter_or_problem(row: Mapping[str, Any], dtype: DeviceType | None, type_known: bool) -> Meter | str:
    try:
        return meter_from_row(row, dtype, type_known)
    except ValueError as exc:
        message = str(exc)
        return message if message.endswith(("; skipped", "; nothing to read")) else message + "; skipped"
    except Exception as exc:  # noqa: BLE001 - containment: this row only
        return _unexpected("energy_meters.id", row, exc)


# --- a whole configuration -----------------------------------------------------------------

def build_configuration(
    type_rows: Iterable[Mapping[str, Any]],
    register_rows: Iterable[Mapping[str, Any]],
    meter_rows: Iterable[Mapping[str, Any]],
    previous: Configuration | None = None,
) -> Configuration:
    """Validate rows into objects. Pure: the database is read elsewhere.

    With `previous`, every DeviceType and Meter equal to one of it is that very
    object, and an unchanged configuration is `previous` itself.
    """
    by_type: dict[Any, list[Mapping[str, Any]]] = {}
    for row in register_rows:
        by_type.setdefault(_key(_get(row, "type")), []).append(row)
    problems: list[str] = []
    types: dict[str, DeviceType] = {}
    known: set[Any] = set()
    old_types = previous.device_types if previous is not None else {}
    for row in type_rows:
        name = _key(_get(row, "name"))
        known.add(name)
        dtype, found = build_device_type(name, row, by_type.pop(name, []))
        problems.extend(found)
        if dtype is not None:
            types[dtype.name] = _same(old_types.get(dtype.name), dtype)
    for name, rows in by_type.items():
        problems.extend(build_device_type(name, None, rows)[1])
    old_meters = {m.id: m for m in previous.meters} if previous is not None else {}
    meters: list[Meter] = []
    for row in meter_rows:
        type_name = _key(_get(row, "type"))
        dtype = types.get(type_name) if isinstance(type_name, str) else None
        outcome = _meter_or_problem(row, dtype, type_name in known)
        if isinstance(outcome, str):
            problems.append(outcome)
        else:
            meters.append(_same(old_meters.get(outcome.id), outcome))
    return _result(previous, one_bus_per_wire(meters, problems), types, problems)


def _get(row: Mapping[str, Any], key: str) -> Any:
    try:
        return row.get(key)
    except Exception:  # noqa: BLE001 - a row that is not a mapping: its parse reports it
        return None


def _key(value: Any) -> Any:
    """`value` as a dict key: itself when hashable, else its repr (a type name that is a list, say)."""
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _same(old: Any, new: Any) -> Any:
    """`old` when it equals `new`: the object callers cache things by."""
    return old if old is not None and old == new else new


def _result(previous: Configuration | None, meters: list[Meter], types: dict[str, DeviceType],
            problems: list[str]) -> Configuration:
    if (previous is not None and len(meters) == len(previous.meters)
            and all(a is b for a, b in zip(meters, previous.meters, strict=True))
            and types.keys() == previous.device_types.keys()
            and all(types[n] is previous.device_types[n] for n in types)
            and tuple(problems) == previous.problems):
        return previous  # nothing changed: the very same configuration
    return Configuration(tuple(meters), types, tuple(problems))


def _missing_columns(query: Query) -> tuple[frozenset[str], list[str]]:
    """The later columns this database lacks (it predates db/upgrade.sql), and a problem saying so."""
    present: dict[str, set[str]] = {}
    for table, column in query(COLUMNS_SQL, ()):
        present.setdefault(table, set()).add(column)
    missing = {(t, c) for t, cols in LATER_COLUMNS.items() for c in cols if c not in present.get(t, set())}
    if not missing:
        return frozenset(), []
    names = ", ".join(f"{t}.{c}" for t, c in sorted(missing))
    return frozenset(c for _, c in missing), [
        f"the database predates db/upgrade.sql (no {names}): read as their defaults (Modbus TCP, "
        "9600 8N1, no device quirks, no counter guard); run db/upgrade.sql (docker compose runs it at every `up`)"]


@dataclass(frozen=True)
class _TypeEntry:
    fingerprint: tuple[Any, ...]
    device_type: DeviceType | None
    problems: tuple[str, ...]
    has_row: bool


@dataclass(frozen=True)
class _MeterEntry:
    row: Row
    device_type: DeviceType | None
    outcome: Meter | str


class Loader:
    """Loads the configuration through `query`, parsing again only what changed since its last load.

    `load` must run inside one REPEATABLE READ transaction (the caller opens and
    ends it), so the fingerprints and the rows fetched agree. A first load reads
    every row; later ones read the fingerprints (~0.35 s of PostgreSQL for 250,000
    registers), the rows of the types that changed, and the meter rows (compared
    as tuples; an unchanged row of an unchanged type is not parsed again).
    """

    def __init__(self) -> None:
        self._types: dict[Any, _TypeEntry] = {}
        self._meters: dict[Any, _MeterEntry] = {}
        self.last: Configuration | None = None
        self._sql = _sql()

    def load(self, query: Query) -> Configuration:
        missing, schema_problems = _missing_columns(query)
        self._sql = _sql(missing)
        fingerprints = [(row[0], tuple(row[1:3]), int(row[3])) for row in query(TYPE_FINGERPRINTS_SQL, ())]
        changed = [name for name, fp, _ in fingerprints
                   if name not in self._types or self._types[name].fingerprint != fp]
        type_rows, register_rows = self._fetch_types(query, changed, len(fingerprints))
        types: dict[Any, _TypeEntry] = {}
        for name, fp, count in fingerprints:
            entry = self._types.get(name)
            if entry is None or entry.fingerprint != fp:
                trow = type_rows.get(name)
                dtype, found = build_device_type(name, trow, register_rows.get(name, []), count)
                if entry is not None:
                    dtype = _same(entry.device_type, dtype)
                entry = _TypeEntry(fp, dtype, found, trow is not None)
            types[name] = entry

        meters: list[Meter] = []
        meter_entries: dict[Any, _MeterEntry] = {}
        meter_problems: list[str] = []
        for row in query(self._sql[2], ()):
            type_entry = types.get(row[4])
            dtype = type_entry.device_type if type_entry is not None else None
            mentry = self._meters.get(row[0])
            if mentry is None or mentry.row != row or mentry.device_type is not dtype:
                outcome = _meter_or_problem(dict(zip(METER_COLUMNS, row, strict=True)), dtype,
                                            type_entry is not None and type_entry.has_row)
                if mentry is not None and not isinstance(outcome, str):
                    outcome = _same(mentry.outcome, outcome)
                mentry = _MeterEntry(row, dtype, outcome)
            meter_entries[row[0]] = mentry
            if isinstance(mentry.outcome, str):
                meter_problems.append(mentry.outcome)
            else:
                meters.append(mentry.outcome)

        problems = schema_problems + [p for entry in types.values() for p in entry.problems] + meter_problems
        device_types = {e.device_type.name: e.device_type for e in types.values() if e.device_type is not None}
        config = _result(self.last, one_bus_per_wire(meters, problems), device_types, problems)
        self._types, self._meters, self.last = types, meter_entries, config
        return config

    def _fetch_types(self, query: Query, changed: list[Any], total: int
                     ) -> tuple[dict[Any, dict[str, Any]], dict[Any, list[dict[str, Any]]]]:
        """The device_types rows and register rows (as dicts) of the changed types."""
        if not changed:
            return {}, {}
        wanted = set(changed)
        types_sql, registers_sql, _, types_of_sql, registers_of_sql = self._sql
        if 2 * len(changed) > total:  # most of it: one plain read is cheaper than a long list
            trows, rrows = query(types_sql, ()), query(registers_sql, ())
        else:
            names = [n for n in changed if isinstance(n, str)]
            trows, rrows = query(types_of_sql, (names,)), query(registers_of_sql, (names,))
        type_rows = {row[0]: dict(zip(TYPE_COLUMNS, row, strict=True)) for row in trows if row[0] in wanted}
        register_rows: dict[Any, list[dict[str, Any]]] = {}
        for row in rrows:
            if row[1] in wanted:
                register_rows.setdefault(row[1], []).append(dict(zip(REGISTER_COLUMNS, row, strict=True)))
        return type_rows, register_rows


# --- a plain psycopg2 connection (tests, the benchmark) ------------------------------------

def cursor_query(connection: Any) -> Query:
    """`query` over a psycopg2 connection, plain tuples."""
    def query(sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with connection.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description is not None else []
    return query


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


def load_configuration(connection: Any, loader: Loader | None = None) -> Configuration:
    """Read and validate the configuration tables in one read-only snapshot."""
    query = cursor_query(connection)
    try:
        query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", ())
        return (loader or Loader()).load(query)
    finally:
        connection.rollback()  # end the read-only snapshot
