"""`emm sunspec`: a device type and its register map from the SunSpec models a device reports.

A SunSpec device lists its models after a "SunS" marker (0x5375 0x6E53) at 40000, 0 or
50000, each as its id, its length L (the registers after id and L) and its points, and
ends the list with id 0xFFFF:

    40000 "SunS" | 40002 1, 66 | 40004 common ... | 40070 103, 50 | 40072 ... | 40122 0xFFFF, 0

The map is made for exactly those models, from the model definitions pysunspec2 ships
(sunspec2/models/json): every point with its address (model address + offset), type,
units, scale-factor point and "not implemented" sentinel (sunspec2.mb.unimpl_value).
Repeating groups are sized for this device: a group counted by the model length (model
160's MPPT modules: L = fixed part + N * module) from L; a group counted by a point
(7xx curves: NCrv, NPt) from the point's value read from the device, checked against L.

Names, unique per type: `m103_w`, `m160_module2_dcw` (repeats numbered from 1),
`m705_crv1_pt2_v`; scale-factor points `sf_m103_w` (the `_SF` dropped), referenced through
registers.scale_factor; a model listed twice: `m203_2_...` for the second.
Points the poller cannot store as numbers (strings, enums, bit fields, addresses, pads) are
listed as skipped with the reason: as comments in the SQL, and on stderr.

The SQL has the form of db/maps/*.sql (one transaction; loading it twice changes nothing);
`--apply` runs the same statements in one transaction: nothing is applied when any fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ..modbus import ConnectError, ModbusError, ResponseTimeout
from ..model import DataType
from .sqltext import sql_literal
from .wire import BusSpecError, Reader, add_bus_arguments, bus_from_args

__all__ = ["Chain", "ChainError", "DeviceMap", "MapRow", "Model", "Read", "Skipped", "Survey", "add_parser",
           "check_rows", "definition", "generate", "read_chain", "read_device", "run", "statements", "to_sql"]

# read(function_code, address, count, unit) -> words; raises poller.modbus.ModbusError
Read = Callable[[int, int, int, int], Awaitable[list[int]]]

MARKER = (0x5375, 0x6E53)  # "SunS"
BASES = (40000, 0, 50000)  # the order they are tried in (40000 is by far the most common)
END_ID = 0xFFFF
MAX_MODELS = 200  # a chain longer than this is garbage, not a device
READ_MAX = 125  # registers per request (Modbus)
TYPE_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # device_types.name's CHECK
TYPE_NAME_MAX = 63


@dataclass(frozen=True)
class Model:
    """One model of the chain as the device reports it."""

    id: int
    address: int  # the model's first register after its id and length
    length: int  # the model's length field (registers after id and length)

    @property
    def end(self) -> int:
        """First address after the model."""
        return self.address + self.length


@dataclass(frozen=True)
class Chain:
    """The models of a SunSpec device, in the order the device lists them."""

    base: int  # where "SunS" is: 0, 40000 or 50000
    models: tuple[Model, ...]


class ChainError(Exception):
    """The model chain is broken; the message says where and why."""


# --- reading the chain ----------------------------------------------------------------------

async def read_chain(read: Read, unit: int) -> Chain | None:
    """The device's model chain, or None when no "SunS" marker is at 40000, 0 or 50000.

    Raises ChainError for a broken chain. A marker read that fails (an exception reply, a
    timeout) counts as no marker there; a ConnectError (nothing listens on the bus) is
    raised as it is.
    """
    for base in BASES:
        try:
            words = await read(3, base, 2, unit)
        except ConnectError:
            raise
        except ModbusError:
            continue
        if tuple(words) == MARKER:
            return await _walk(read, unit, base)
    return None


async def _walk(read: Read, unit: int, base: int) -> Chain:
    models: list[Model] = []
    address = base + 2
    while True:
        last = (f"model {models[-1].id} (at {models[-1].address - 2}, length {models[-1].length})"
                if models else f'the "SunS" marker at {base}')
        if len(models) >= MAX_MODELS:
            raise ChainError(f"unit {unit}: more than {MAX_MODELS} models after the marker at {base} "
                             "and no end marker (0xFFFF): not a model chain")
        if address + 2 > 0x10000:
            raise ChainError(f"unit {unit}: the chain reaches register 65535 after {last} "
                             "without an end marker (0xFFFF)")
        try:
            model_id, length = await read(3, address, 2, unit)
        except ModbusError as exc:
            raise ChainError(f"unit {unit}: no model header at {address} after {last} ({exc}): the end marker "
                             "(0xFFFF) is missing, or that model's length runs past the device's registers"
                             ) from exc
        if model_id == END_ID:
            return Chain(base, tuple(models))
        if model_id == 0:
            raise ChainError(f"unit {unit}: model id 0 at {address} after {last} is no model: the end marker "
                             "(0xFFFF) is missing, or that model's length is wrong")
        if address + 2 + length > 0x10000:
            raise ChainError(f"unit {unit}: model {model_id} at {address} has length {length}, which runs "
                             "past register 65535")
        models.append(Model(model_id, address + 2, length))
        address += 2 + length


# --- the model definitions (pysunspec2) -----------------------------------------------------

def definitions_dir() -> Path:
    import sunspec2

    return Path(sunspec2.__file__).resolve().parent / "models" / "json"


def pysunspec2_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pysunspec2")
    except PackageNotFoundError:  # pragma: no cover - installed with the project
        return "unknown"


@cache
def definition(model_id: int) -> Mapping[str, Any] | None:
    """pysunspec2's definition of a model, or None when it ships none."""
    from sunspec2 import mdef

    path = definitions_dir() / mdef.to_json_filename(model_id)
    if not path.is_file():
        return None
    loaded: Mapping[str, Any] = mdef.from_json_file(str(path))
    return loaded


def _point_len(point: Mapping[str, Any]) -> int:
    from sunspec2 import mdef

    size = mdef.point_type_info[point["type"]]["len"]
    return int(size if size is not None else point["size"])


def _count_points(group: Mapping[str, Any]) -> set[str]:
    """Names of the points that count a repeating group, anywhere in the model (`NCrv`, `NPt`)."""
    names: set[str] = set()
    for sub in group.get("groups", ()):
        count = sub.get("count")
        if isinstance(count, str) and not count.lstrip("-").isdigit():
            names.add(count)
        names |= _count_points(sub)
    return names


def _top_offsets(model_def: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Top-level points by name: (offset from the model id, registers)."""
    offsets: dict[str, tuple[int, int]] = {}
    offset = 0
    for point in model_def["group"].get("points", ()):
        size = _point_len(point)
        offsets[point["name"]] = (offset, size)
        offset += size
    return offsets


# --- what is read from the device -----------------------------------------------------------

@dataclass(frozen=True)
class Survey:
    """What `emm sunspec` read: the chain and the few registers the map depends on (the
    common model's manufacturer and model strings, the points that count repeating groups)."""

    unit: int
    chain: Chain
    words: Mapping[int, int]  # address -> word


def _wanted(model: Model, model_def: Mapping[str, Any]) -> list[tuple[int, int]]:
    """(address, count) of the registers of a model the map depends on."""
    offsets = _top_offsets(model_def)
    names = set(_count_points(model_def["group"]))
    if model.id == 1:
        names |= {"Mn", "Md"}
    spans = []
    for name in sorted(names):
        if name in offsets:
            offset, size = offsets[name]
            address = model.address - 2 + offset
            if address + size <= model.end:
                spans.append((address, size))
    return spans


async def read_device(read: Read, unit: int) -> Survey | None:
    """The chain and the registers the map depends on; None when the unit is no SunSpec device.

    Raises ChainError (a broken chain) or ConnectError (nothing listens), as read_chain does.
    A register that cannot be read is left out (the name falls back, a group is skipped).
    """
    chain = await read_chain(read, unit)
    if chain is None:
        return None
    words: dict[int, int] = {}
    for model in chain.models:
        model_def = definition(model.id)
        if model_def is None:
            continue
        for address, count in _wanted(model, model_def):
            try:
                got = await read(3, address, count, unit)
            except ModbusError:
                continue
            words.update(zip(range(address, address + count), got, strict=False))
    return Survey(unit, chain, words)


# --- the map --------------------------------------------------------------------------------

# SunSpec point type -> registers.data_type; the others are skipped with the reason below
DATA_TYPES = {
    "int16": DataType.INT16, "uint16": DataType.UINT16, "acc16": DataType.UINT16, "count": DataType.UINT16,
    "sunssf": DataType.INT16,
    "int32": DataType.INT32, "uint32": DataType.UINT32, "acc32": DataType.UINT32,
    "int64": DataType.INT64, "uint64": DataType.UINT64, "acc64": DataType.UINT64,
    "float32": DataType.FLOAT32, "float64": DataType.FLOAT64,
}
SKIP_REASONS = {
    "string": "text, not a number",
    "enum16": "an enumeration (a state code, not a quantity); enums are not stored yet",
    "enum32": "an enumeration (a state code, not a quantity); enums are not stored yet",
    "bitfield16": "a bit field (flags, not a quantity); bit fields are not stored yet",
    "bitfield32": "a bit field (flags, not a quantity); bit fields are not stored yet",
    "ipaddr": "a network address, not a quantity",
    "ipv6addr": "a network address, not a quantity",
    "eui48": "a hardware (MAC) address, not a quantity",
    "pad": "padding, holds no value",
}
# SunSpec's unit spellings -> the ones the hand-written maps use
UNITS = {"C": "°C", "Pct": "%", "Secs": "s", "Sec": "s", "mSecs": "ms", "Var": "var", "VAr": "var",
         "Varh": "varh", "VArh": "varh", "WH": "Wh", "ohms": "Ohm"}
ENERGY_UNITS = frozenset({"wh", "kwh", "vah", "kvah", "varh", "kvarh"})  # acc* totals in these: counters


@dataclass(frozen=True)
class MapRow:
    """One row of `registers` for the device type."""

    address: int
    measurement: str
    unit: str | None
    data_type: DataType
    scale: float
    scale_factor: str | None
    not_available: int | None
    counter: bool
    source: str  # the SunSpec point: "model 103 W (int16, W_SF)"


@dataclass(frozen=True)
class Skipped:
    """A point (or a model, or a group) with no row, and why."""

    model: int
    address: int | None
    what: str  # "m103 St (enum16)", "model 64999"
    reason: str

    def __str__(self) -> str:
        where = f" at {self.address}" if self.address is not None else ""
        return f"{self.what}{where}: {self.reason}"


@dataclass(frozen=True)
class DeviceMap:
    """A device type generated from a device's models."""

    name: str
    description: str
    rows: tuple[MapRow, ...]
    skipped: tuple[Skipped, ...]
    notes: tuple[str, ...]
    header: tuple[str, ...]  # comment lines for the SQL


@dataclass
class _Instance:
    """One instance of a group in the layout: its name prefix and its points by name."""

    prefix: str  # "m160_module2"
    points: dict[str, _Placed] = field(default_factory=dict)


@dataclass(frozen=True)
class _Placed:
    point: Mapping[str, Any]
    address: int
    size: int
    instance: _Instance
    top: _Instance
    model: Model

    @property
    def label(self) -> str:
        return f"{self.instance.prefix} {self.point['name']} ({self.point['type']})"


class _Layout:
    """Every point of one model at its address, repeating groups sized for the device."""

    def __init__(self, model: Model, model_def: Mapping[str, Any], prefix: str, counts: Mapping[str, int]) -> None:
        self.model = model
        self.counts = counts
        self.placed: list[_Placed] = []
        self.skipped: list[Skipped] = []
        self.notes: list[str] = []
        group = model_def["group"]
        self.top = _Instance(prefix)
        start = model.address - 2  # the model's id: offset 0 of the definition
        legacy = self._legacy_counts(group)
        end = self._group(group, start, self.top, legacy, top=True)
        named = _count_points(group)
        if named and end != model.end:
            values = ", ".join(f"{n}={counts[n]}" for n in sorted(named) if n in counts)
            self.notes.append(f"model {model.id} at {start}: {values} give {end - model.address} registers after "
                              f"the header; the device says L={model.length}")

    def _legacy_counts(self, group: Mapping[str, Any]) -> dict[str, int]:
        """Repeats of the groups counted by the model length ("count": 0): L = fixed part + N * group."""
        legacy = [g for g in group.get("groups", ()) if _is_legacy(g)]
        if not legacy:
            return {}
        fixed = sum(_point_len(p) for p in group.get("points", ()))
        for sub in group.get("groups", ()):
            if not _is_legacy(sub):
                fixed += self._len(sub, {}) * max(self._repeats(sub, {}, 1)[0], 0)
        room = self.model.length + 2 - fixed
        if len(legacy) > 1:
            for sub in legacy:
                self.skipped.append(Skipped(self.model.id, None, f"m{self.model.id} group {sub['name']}",
                                            "several groups sized by the model length: their repeats are ambiguous"))
            return {sub["name"]: 0 for sub in legacy}
        sub = legacy[0]
        size = self._len(sub, {})
        if room <= 0 or size <= 0:
            return {sub["name"]: 0}
        if room % size:
            self.skipped.append(Skipped(
                self.model.id, None, f"m{self.model.id} group {sub['name']}",
                f"length {self.model.length} leaves {room} registers after the fixed part, not a whole number of "
                f"{size}-register {sub['name']} groups"))
            return {sub["name"]: 0}
        return {sub["name"]: room // size}

    def _repeats(self, group: Mapping[str, Any], legacy: Mapping[str, int], default: int) -> tuple[int, bool]:
        """(how many instances, numbered or not) of a sub-group."""
        count = group.get("count")
        if count is None:
            return 1, False
        if isinstance(count, int) or str(count).lstrip("-").isdigit():
            value = int(count)
            if value == 0:
                return legacy.get(group["name"], default), True
            return max(value, 0), True
        if count in self.counts:
            return self.counts[count], True
        return -1, True  # the count point could not be read

    def _len(self, group: Mapping[str, Any], legacy: Mapping[str, int]) -> int:
        """Registers of one instance of the group."""
        total = sum(_point_len(p) for p in group.get("points", ()))
        for sub in group.get("groups", ()):
            repeats, _ = self._repeats(sub, legacy, 0)
            total += self._len(sub, legacy) * max(repeats, 0)
        return total

    def _group(self, group: Mapping[str, Any], address: int, instance: _Instance, legacy: Mapping[str, int],
               top: bool = False) -> int:
        for point in group.get("points", ()):
            size = _point_len(point)
            if top and point["name"] in ("ID", "L") and address < self.model.address:
                address += size  # the model header: the chain, not a measurement
                continue
            placed = _Placed(point, address, size, instance, self.top, self.model)
            instance.points[point["name"]] = placed
            self.placed.append(placed)
            address += size
        for sub in group.get("groups", ()):
            repeats, numbered = self._repeats(sub, legacy, 0)
            name = _slug(sub["name"])
            if repeats < 0:
                self.skipped.append(Skipped(self.model.id, address, f"{instance.prefix} group {sub['name']}",
                                            f"its count point {sub['count']} could not be read"))
                break  # whatever follows has no known address
            for i in range(1, repeats + 1):
                if address >= self.model.end:
                    self.skipped.append(Skipped(
                        self.model.id, address, f"{instance.prefix} group {sub['name']} {i}..{repeats}",
                        f"past the model's length {self.model.length}"))
                    return address
                inner = _Instance(f"{instance.prefix}_{name}{i}" if numbered else f"{instance.prefix}_{name}")
                address = self._group(sub, address, inner, legacy)
        return address


def _is_legacy(group: Mapping[str, Any]) -> bool:
    count = group.get("count")
    return count is not None and str(count) == "0"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "x"


def _sf_slug(point_name: str) -> str:
    base = point_name[:-3] if point_name.upper().endswith("_SF") and len(point_name) > 3 else point_name
    return _slug(base)


def _text(words: Sequence[int]) -> str:
    data = b"".join(w.to_bytes(2, "big") for w in words)
    text = data.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _string_point(survey: Survey, model: Model, name: str) -> str:
    model_def = definition(model.id)
    offsets = _top_offsets(model_def) if model_def else {}
    if name not in offsets:
        return ""
    offset, size = offsets[name]
    start = model.address - 2 + offset
    words = [survey.words.get(a) for a in range(start, start + size)]
    return "" if None in words else _text([w for w in words if w is not None])


def _counts(survey: Survey, model: Model, model_def: Mapping[str, Any]) -> dict[str, int]:
    """The device's values of the points that count the model's repeating groups."""
    offsets = _top_offsets(model_def)
    counts = {}
    for name in _count_points(model_def["group"]):
        if name in offsets:
            offset, _ = offsets[name]
            word = survey.words.get(model.address - 2 + offset)
            if word is not None and word != 0xFFFF:  # 0xFFFF: not implemented
                counts[name] = word
    return counts


def default_name(manufacturer: str, model_name: str, unit: int) -> str:
    """A device type name from the common model's strings: `fronius_symo_8.2-3-m`."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{manufacturer}_{model_name}".lower()).strip("_.-")
    name = re.sub(r"_+", "_", name)[:TYPE_NAME_MAX].rstrip("_.-")
    return name or f"sunspec_unit{unit}"


def generate(survey: Survey, name: str | None = None, bus: str | None = None) -> DeviceMap:
    """The device type for the surveyed device (pure: no I/O)."""
    from sunspec2 import mb

    chain = survey.chain
    manufacturer = model_name = ""
    for model in chain.models:
        if model.id == 1:
            manufacturer = _string_point(survey, model, "Mn")
            model_name = _string_point(survey, model, "Md")
            break
    type_name = name or default_name(manufacturer, model_name, survey.unit)
    rows: list[MapRow] = []
    skipped: list[Skipped] = []
    notes: list[str] = []
    seen: dict[int, int] = {}
    used: set[str] = set()
    for model in chain.models:
        seen[model.id] = seen.get(model.id, 0) + 1
        model_def = definition(model.id)
        if model_def is None:
            skipped.append(Skipped(model.id, model.address - 2, f"model {model.id}",
                                   f"no definition in pysunspec2 {pysunspec2_version()} (a vendor or newer "
                                   f"model); its {model.length} registers are not mapped"))
            continue
        prefix = f"m{model.id}" if seen[model.id] == 1 else f"m{model.id}_{seen[model.id]}"
        layout = _Layout(model, model_def, prefix, _counts(survey, model, model_def))
        skipped.extend(layout.skipped)
        notes.extend(layout.notes)
        for placed in layout.placed:
            row = _row(placed, mb.unimpl_value, used)
            if isinstance(row, Skipped):
                skipped.append(row)
            else:
                rows.append(row)
                used.add(row.measurement)
    # a point whose scale factor got no row cannot be stored either
    names = {r.measurement for r in rows}
    kept = []
    for row in rows:
        if row.scale_factor is not None and row.scale_factor not in names:
            skipped.append(Skipped(0, row.address, row.source, f"its scale factor {row.scale_factor} has no row"))
        else:
            kept.append(row)
    rows = sorted(kept, key=lambda r: (r.address, r.measurement))
    where = f" on {bus}" if bus else ""
    who = " ".join(s for s in (manufacturer, model_name) if s) or "SunSpec device"
    ids = ", ".join(str(m.id) for m in chain.models)
    description = f"{who}: SunSpec models {ids} at {chain.base} (generated by emm sunspec)"
    header = (
        f"SunSpec device {who}, unit {survey.unit}{where}: generated by `emm sunspec` from the model",
        f"definitions of pysunspec2 {pysunspec2_version()} (sunspec2/models/json) for the models it reports.",
        f'Chain: "SunS" at {chain.base}; models (id at address, L): '
        + ", ".join(f"{m.id} at {m.address - 2} L {m.length}" for m in chain.models) + "; end marker.",
        "Function code 3, big-endian (ABCD). Scale factors: sunssf registers sf_*, referenced through",
        "registers.scale_factor. not_available: SunSpec's \"not implemented\" value of each type",
        "(int16 -32768, uint16 65535, acc 0, int32 -2147483648, uint32 4294967295 ...; floats: NaN,",
        "which the poller never stores). acc* energy totals are counters.",
    )
    return DeviceMap(_text_safe(type_name), _text_safe(description), tuple(rows), tuple(skipped), tuple(notes),
                     header)


def _text_safe(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)


def _row(placed: _Placed, unimpl: Mapping[str, Any], used: set[str]) -> MapRow | Skipped:
    point, model = placed.point, placed.model
    ptype = point["type"]
    label = placed.label
    if placed.address + placed.size > model.end:
        return Skipped(model.id, placed.address, label, f"past the model's length {model.length} (an older, "
                       "shorter version of the model)")
    if ptype in SKIP_REASONS:
        return Skipped(model.id, placed.address, label, SKIP_REASONS[ptype])
    data_type = DATA_TYPES.get(ptype)
    if data_type is None:
        return Skipped(model.id, placed.address, label, f"point type {ptype!r} is unknown here")
    if ptype == "sunssf":
        measurement = f"sf_{placed.instance.prefix}_{_sf_slug(point['name'])}"
    else:
        measurement = f"{placed.instance.prefix}_{_slug(point['name'])}"
    base, n = measurement, 2
    while measurement in used:  # two names equal once lower-cased
        measurement, n = f"{base}_{n}", n + 1
    scale = 1.0
    scale_factor = None
    sf = point.get("sf")
    if sf is not None and ptype != "sunssf":
        if isinstance(sf, int) or str(sf).lstrip("-").isdigit():
            scale = 10.0 ** int(sf)
            if not 1e-9 <= scale <= 1e9:
                return Skipped(model.id, placed.address, label, f"a constant scale factor {sf} outside -9..9")
        else:
            target = placed.instance.points.get(sf) or placed.top.points.get(sf)
            if target is None or target.point["type"] != "sunssf":
                return Skipped(model.id, placed.address, label, f"its scale factor {sf} is not in the model")
            scale_factor = f"sf_{target.instance.prefix}_{_sf_slug(sf)}"
    na: int | None = None
    if not data_type.is_float:
        sentinel = unimpl.get(ptype)
        na = int(sentinel) if isinstance(sentinel, int) else None
        if na is not None and data_type.raw_range is not None and data_type.raw_range[0] < 0 and na > 0:
            na -= 1 << (16 * data_type.words)  # unsigned bit pattern of a signed type
    units = point.get("units")
    unit = UNITS.get(units, units) if isinstance(units, str) and units.strip() else None
    counter = ptype.startswith("acc") and (unit or "").lower() in ENERGY_UNITS
    source = f"model {model.id} {placed.instance.prefix[len(placed.top.prefix):].lstrip('_')} {point['name']}".replace(
        "  ", " ")
    source = f"{source} ({ptype}{', ' + str(sf) if sf is not None else ''})"
    return MapRow(placed.address, measurement, unit, data_type, scale, scale_factor, na, counter, source)


# --- SQL ------------------------------------------------------------------------------------

REGISTER_SQL_COLUMNS = ("type", "register_address", "measurement_name", "data_unit", "data_type", "function_code",
                        "byte_order", "scale", "scale_factor", "not_available", "kind")


def statements(device_map: DeviceMap) -> list[str]:
    """The SQL statements, in order, without the transaction around them."""
    name = sql_literal(device_map.name)
    out = [
        "INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)\n"
        f"VALUES ({name},\n        {sql_literal(device_map.description)},\n        125, 16, 3, 0)\n"
        "ON CONFLICT (name) DO UPDATE SET\n"
        "    description      = EXCLUDED.description,\n"
        "    max_block        = EXCLUDED.max_block,\n"
        "    max_gap          = EXCLUDED.max_gap,\n"
        "    timeout_s        = EXCLUDED.timeout_s,\n"
        "    request_pause_ms = EXCLUDED.request_pause_ms",
        f"DELETE FROM registers WHERE type = {name}",
    ]
    if device_map.rows:
        values = []
        for i, row in enumerate(device_map.rows):
            cells = (device_map.name, row.address, row.measurement, row.unit, int(row.data_type), 3, "ABCD",
                     row.scale, row.scale_factor, row.not_available, "counter" if row.counter else "gauge")
            comma = "," if i < len(device_map.rows) - 1 else ""
            values.append(f"    ({', '.join(sql_literal(c) for c in cells)}){comma}  -- {_comment(row.source)}")
        out.append(f"INSERT INTO registers ({', '.join(REGISTER_SQL_COLUMNS)}) VALUES\n" + "\n".join(values))
    return out


def _comment(text: str) -> str:
    return " ".join(_text_safe(text).split())


def to_sql(device_map: DeviceMap) -> str:
    """The map as a file in the form of db/maps/*.sql: one idempotent transaction."""
    lines = [f"-- {_comment(h)}" for h in device_map.header]
    lines.append("-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f FILE   (or run emm sunspec ... --apply)")
    if device_map.notes:
        lines.append("-- Notes:")
        lines += [f"--   {_comment(n)}" for n in device_map.notes]
    if device_map.skipped:
        lines.append(f"-- Skipped ({len(device_map.skipped)}, no row: the poller stores numbers only):")
        lines += [f"--   {_comment(str(s))}" for s in device_map.skipped]
    lines += ["", "BEGIN;", ""]
    body = statements(device_map)
    lines += [body[0] + ";", "", body[1] + ";", ""]
    if len(body) > 2:
        lines.append("-- One statement, so each scale_factor reference finds its register.")
        insert = body[2]
        # the last row ends the statement: its ';' goes before the row's comment
        head, _, last = insert.rpartition("\n")
        row, sep, comment = last.partition("  -- ")
        lines += [f"{head}\n{row};{sep}{comment}", ""]
    lines += ["COMMIT;", ""]
    return "\n".join(lines)


def check_rows(device_map: DeviceMap) -> list[str]:
    """What the poller's loader would say of the rows (nothing, for a good map)."""
    from ..store import build_device_type

    type_row = {"name": device_map.name, "max_block": 125, "max_gap": 16, "timeout_s": 3.0, "request_pause_ms": 0,
                "connect_pause_ms": 0, "close_after_poll": False, "single_value_reads": False}
    rows = [{"id": i, "type": device_map.name, "register_address": r.address, "measurement_name": r.measurement,
             "data_unit": r.unit, "data_type": int(r.data_type), "function_code": 3, "byte_order": "ABCD",
             "scale": r.scale, "value_offset": 0.0, "scale_factor": r.scale_factor, "not_available": r.not_available,
             "kind": "counter" if r.counter else "gauge", "counter_max_rate": None}
            for i, r in enumerate(device_map.rows, 1)]
    device_type, problems = build_device_type(device_map.name, type_row, rows)
    out = list(problems)
    if device_type is not None and len(device_type.registers) != len(rows):
        out.append(f"{len(rows) - len(device_type.registers)} rows would be dropped by the loader")
    return out


# --- the command ----------------------------------------------------------------------------

def add_parser(subparsers: Any) -> None:
    """Register the `sunspec` subcommand (argparse sub-parsers of `emm`)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sunspec", help="generate a device type and its register map from a SunSpec device's models",
        description="Walk the SunSpec model chain of one unit and generate a device type with a register "
                    "row for every point of exactly the models it reports (definitions of pysunspec2). "
                    "Prints the SQL (the form of db/maps/*.sql), writes it to --output, or --apply's it "
                    "in one transaction. Points that are no numbers (strings, enums, bit fields) are "
                    "listed on stderr as skipped. Exit 0: done; 1: not a SunSpec device, a broken chain, "
                    "unreachable, or the database refused; 2: bad arguments or settings.")
    add_bus_arguments(parser)
    parser.add_argument("--unit", type=_unit, default=1, metavar="N", help="Modbus unit id (default 1)")
    parser.add_argument("--name", type=_type_name, metavar="TYPE",
                        help="device type name (default: from the common model's manufacturer and model)")
    parser.add_argument("--apply", action="store_true",
                        help="load the map into PostgreSQL (POSTGRES_* settings, an admin login; .dev.env "
                             "is read) in one transaction")
    parser.add_argument("--output", "-o", metavar="FILE", help="write the SQL to FILE instead of stdout")
    # SUPPRESS: `emm --env-file X sunspec ...` keeps X (emm's own option); run() falls back to .dev.env
    parser.add_argument("--env-file", default=argparse.SUPPRESS,
                        help="settings file loaded when present (default .dev.env)")
    parser.set_defaults(run=run)


def _unit(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 255:
        raise argparse.ArgumentTypeError(f"{text!r} is not a unit id (0..255)")
    return int(text)


def _type_name(text: str) -> str:
    if not TYPE_NAME.fullmatch(text) or len(text) > TYPE_NAME_MAX:
        raise argparse.ArgumentTypeError(f"{text!r}: a device type name has 1..{TYPE_NAME_MAX} letters, digits, "
                                         "'_', '.' or '-'")
    return text


def _err(message: str) -> None:
    print(f"emm sunspec: {message}", file=sys.stderr)


class Unreachable(Exception):
    """The unit answered none of the marker reads: every one timed out."""


async def _survey(args: argparse.Namespace) -> Survey | None:
    async with Reader(bus_from_args(args), timeout_s=args.timeout) as reader:
        outcomes: list[BaseException | None] = []

        async def read(fc: int, address: int, count: int, unit: int) -> list[int]:
            try:
                words = await reader.read(fc, address, count, unit)
            except ModbusError as exc:
                outcomes.append(exc)
                raise
            outcomes.append(None)
            return words

        survey = await read_device(read, args.unit)
        if survey is None and outcomes and all(isinstance(o, ResponseTimeout) for o in outcomes):
            raise Unreachable(f"no reply to {len(outcomes)} requests ({outcomes[-1]})")
        return survey


def run(args: argparse.Namespace) -> int:
    """`emm sunspec`: 0 done, 1 no SunSpec device / broken chain / unreachable / refused, 2 bad arguments."""
    try:
        bus_from_args(args)
    except BusSpecError as exc:
        _err(str(exc))
        return 2
    try:
        survey = asyncio.run(_survey(args))
    except ChainError as exc:
        _err(f"{args.bus}: broken SunSpec model chain: {exc}")
        return 1
    except (ModbusError, Unreachable) as exc:
        _err(f"{args.bus} unit {args.unit} is unreachable: {exc}")
        return 1
    if survey is None:
        _err(f'{args.bus} unit {args.unit} is no SunSpec device: no "SunS" marker at 40000, 0 or 50000')
        return 1
    device_map = generate(survey, args.name, args.bus)
    problems = check_rows(device_map)
    if problems:  # a bug here, not the device's fault: say so rather than write a map that loads badly
        _err("the generated rows do not pass the poller's checks:\n  " + "\n  ".join(problems))
        return 1
    for note in device_map.notes:
        _err(f"note: {note}")
    for skip in device_map.skipped:
        _err(f"skipped {skip}")
    sql = to_sql(device_map)
    summary = (f"device type {device_map.name}: {len(device_map.rows)} registers from models "
               f"{', '.join(str(m.id) for m in survey.chain.models)}, {len(device_map.skipped)} skipped")
    if args.output:
        try:
            Path(args.output).write_text(sql, encoding="utf-8")
        except OSError as exc:
            _err(f"cannot write {args.output}: {exc.strerror or exc}")
            return 1
    if args.apply:
        code = apply(device_map, getattr(args, "env_file", ".dev.env"))
        if code:
            return code
        _err(f"applied: {summary}")
        return 0
    if not args.output:
        sys.stdout.write(sql)
    _err(summary)
    return 0


def apply(device_map: DeviceMap, env_file: str | os.PathLike[str] = ".dev.env") -> int:
    """Run the map's statements in one transaction (0), or nothing at all (1; 2: bad settings)."""
    import psycopg2

    from ..config import session_dsn
    from ..settings import SettingsError, from_env, load_env_file

    load_env_file(env_file)
    try:
        settings = from_env()
    except SettingsError as exc:
        _err(f"setting: {exc}")
        return 2
    dsn = session_dsn(settings, connect_timeout_s=10, statement_timeout_s=60, lock_timeout_s=10,
                      answer_timeout_s=60, read_only=False)
    dsn["application_name"] = "emm-sunspec"
    try:
        conn = psycopg2.connect(**dsn)
    except psycopg2.Error as exc:
        _err(f"cannot connect to PostgreSQL {settings.postgres_host}:{settings.postgres_port}: "
             f"{str(exc).strip()}")
        return 1
    try:
        with conn, conn.cursor() as cur:  # commits when the block ends, rolls back on any error
            for statement in statements(device_map):
                cur.execute(statement)
    except psycopg2.Error as exc:
        _err(f"PostgreSQL refused the map, nothing applied: {str(exc).strip()}")
        return 1
    finally:
        conn.close()
    return 0

