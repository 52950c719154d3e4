"""A simulated SunSpec device: the "SunS" marker, a chain of models, the end marker.

    device = SunSpecDevice(parse_models("1,103,120,160x2,203"), base=40000)
    SimulatedServer(units={1: device.bank})

Each model's registers are encoded by pysunspec2 itself (`sunspec2.device.Model` from a
dict of point values, `get_mb()`): the layout of points and repeating groups and the "not
implemented" patterns come from the SunSpec library, not from the poller's `emm sunspec`,
so a test reading this device through a generated map checks the generator against a
second implementation.

Values are plausible for the point's unit (230 V, 50 Hz, 2.5 kW, an energy total near
1.2 MWh), a little different for every point so that a map one register off shows;
scale factors are fixed per scale-factor point (-3..3, chosen so the raw number carries
four digits); about one point in six is "not implemented" (its type's sentinel: 0x8000,
0xFFFF, acc 0, NaN). `points` lists every point with its raw value and the engineering
value a correct poller stores (None: nothing is stored).

`--sunspec 1=1,103,120,160x2,203@40000` on the command line (virtual_server/__main__.py):
`160x2` gives model 160 two MPPT modules; `705x2x4` gives model 705 two curves of four
points (the counts of its groups, in the order the definition names them).

A broken chain, for tests (`broken`):
    "long_model"  the last model's length says 40 registers more than it holds: the next
                  header is read past the end of what is served
    "no_end"      no end marker after the last model
    "past_65535"  the last model's length runs past register 65535
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["BREAKS", "ModelSpec", "SimPoint", "SunSpecDevice", "parse_models", "parse_unit_spec", "sunspec_units"]

MARKER = (0x5375, 0x6E53)  # "SunS"
END_ID = 0xFFFF
BASES = (0, 40000, 50000)
Broken = Literal["long_model", "no_end", "past_65535"]
BREAKS: tuple[Broken, ...] = ("long_model", "no_end", "past_65535")


@dataclass(frozen=True)
class ModelSpec:
    """A model to serve: its id and the repeat counts of its groups (160x2: two modules)."""

    id: int
    repeats: tuple[int, ...] = ()

    def __str__(self) -> str:
        return "x".join(str(n) for n in (self.id, *self.repeats))


def parse_models(text: str) -> list[ModelSpec]:
    """"1,103,160x2,705x2x4" -> the model specs; ValueError says what is wrong."""
    specs = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if not all(p.isdigit() for p in parts) or not parts[0]:
            raise ValueError(f"{item.strip()!r} is not a model (e.g. 103, or 160x2 for two modules)")
        model_id, *repeats = (int(p) for p in parts)
        if not 1 <= model_id < END_ID:
            raise ValueError(f"model id {model_id} is outside 1..65534")
        if any(not 0 <= n <= 100 for n in repeats):
            raise ValueError(f"{item.strip()!r}: repeat counts are 0..100")
        specs.append(ModelSpec(model_id, tuple(repeats)))
    return specs


def parse_unit_spec(text: str) -> tuple[int, list[ModelSpec], int]:
    """"UNIT=1,103,160x2[@BASE]" (--sunspec) -> (unit, models, base)."""
    unit_text, sep, rest = text.partition("=")
    if not sep or not unit_text.strip().isdigit() or not 0 <= int(unit_text) <= 255:
        raise ValueError(f"{text!r}: expected UNIT=MODELS[@BASE], e.g. 1=1,103,160x2,203@40000, UNIT 0..255")
    models_text, at, base_text = rest.partition("@")
    base = 40000
    if at:
        if not base_text.strip().isdigit() or int(base_text) not in BASES:
            raise ValueError(f"{text!r}: BASE is 0, 40000 or 50000")
        base = int(base_text)
    return int(unit_text), parse_models(models_text), base


@dataclass(frozen=True)
class SimPoint:
    """One point as served."""

    model: int
    instance: int  # 1 for the first model of this id in the chain, 2 for the second ...
    groups: tuple[tuple[str, int | None], ...]  # (group name, repeat number or None) from the model down
    name: str
    type: str
    raw: int | float | str | None  # None: not implemented (its sentinel is served)
    sf: int | None  # the power of ten applied (a scale-factor point's value or a constant)
    value: float | None  # what a poller stores: None for sentinels, text and codes


# nominal value by (SunSpec) unit
_NOMINAL = {"V": 230.0, "A": 8.0, "W": 2500.0, "VA": 2600.0, "var": 300.0, "Var": 300.0, "Hz": 50.0,
            "C": 35.0, "Pct": 96.0, "%": 96.0, "Wh": 1_234_567.0, "VAh": 1_300_000.0, "varh": 150_000.0,
            "Varh": 150_000.0, "Secs": 3600.0, "AH": 120.0, "Ah": 120.0, "cos()": 0.95, "VNomPct": 100.0}
_ENERGY = frozenset({"Wh", "VAh", "varh", "Varh"})
_INT_RANGE = {"int16": (-0x8000, 0x7FFF), "uint16": (0, 0xFFFF), "acc16": (0, 0xFFFF), "count": (0, 0xFFFF),
              "int32": (-0x8000_0000, 0x7FFF_FFFF), "uint32": (0, 0xFFFF_FFFF), "acc32": (0, 0xFFFF_FFFF),
              "int64": (-(1 << 63), (1 << 63) - 1), "uint64": (0, (1 << 64) - 1), "acc64": (0, (1 << 64) - 1)}
_NUMBERS = frozenset(_INT_RANGE) | {"float32", "float64"}


def _hash(*parts: object) -> int:
    return zlib.crc32(":".join(map(str, parts)).encode())


def _target(point: Mapping[str, Any], key: str) -> float:
    """A plausible engineering value for the point, a little different for every point."""
    units = point.get("units")
    name = point["name"]
    nominal = _NOMINAL.get(units, 42.0) if isinstance(units, str) else 42.0
    if units == "V" and name.upper().startswith("DC"):
        nominal = 400.0
    return nominal * (1 + ((_hash(key) % 1000) - 500) / 10000)  # +-5 %


def _sf_for(target: float) -> int:
    """The power of ten that gives the raw number four digits: 230 V -> -1, 8 A -> -3, 1.2 MWh -> 3."""
    return max(-3, min(3, math.floor(math.log10(abs(target))) - 3)) if target else 0


class SunSpecDevice:
    """The registers of a SunSpec device with the given models, from `base` on."""

    def __init__(self, models: Sequence[ModelSpec], base: int = 40000, *, manufacturer: str = "EMM",
                 model_name: str = "SimInverter 10K", serial: str = "SIM-0001", unit: int = 1,
                 broken: Broken | None = None) -> None:
        from sunspec2.device import Model as SunSpecModel

        if base not in BASES:
            raise ValueError(f"base {base}: 0, 40000 or 50000")
        self.base = base
        self.points: list[SimPoint] = []
        self.models: list[tuple[int, int, int]] = []  # (id, address of its id, length)
        words: list[int] = [*MARKER]
        seen: dict[int, int] = {}
        for spec in models:
            from sunspec2.device import get_model_def

            seen[spec.id] = seen.get(spec.id, 0) + 1
            model_def = get_model_def(spec.id)
            data = _Values(spec, seen[spec.id], model_def, self.points,
                           {"Mn": manufacturer, "Md": model_name, "SN": serial, "Vr": "1.0.0", "Opt": "sim",
                            "DA": unit}).data
            model = SunSpecModel(spec.id, model_def=model_def, data=data)
            if model.error_info:
                raise ValueError(f"model {spec}: {model.error_info.strip()}")
            encoded = model.get_mb()
            model_words = list(struct.unpack(f">{len(encoded) // 2}H", encoded))
            self.models.append((spec.id, base + len(words), model_words[1]))
            words += model_words
        if broken != "no_end":
            words += [END_ID, 0]
        if broken in ("long_model", "past_65535") and self.models:
            model_id, at, length = self.models[-1]
            new_length = length + 40 if broken == "long_model" else 0xFFF0
            words[at - base + 1] = new_length
            self.models[-1] = (model_id, at, new_length)
        if base + len(words) > 0x10000:
            raise ValueError(f"{len(words)} registers from {base} run past 65535")
        self.words = {(3, base + i): w for i, w in enumerate(words)}

    def bank(self) -> Mapping[tuple[int, int], int]:
        """The server's view ({(function code, address): word}); SimulatedServer serves fc 4 from it too."""
        return self.words


class _Values:
    """The dict of point values pysunspec2 encodes a model from, and the SimPoints that say what it holds."""

    def __init__(self, spec: ModelSpec, instance: int, model_def: Mapping[str, Any], out: list[SimPoint],
                 given: Mapping[str, Any]) -> None:
        self.spec, self.instance, self.out = spec, instance, out
        self.given = given if spec.id == 1 else {}
        group = model_def["group"]
        self.counts = self._counts(group)  # count point or group name -> repeats
        self.top_sf: dict[str, int] = {}
        self.data = self._group(group, (), top=True, top_points=group.get("points", []))

    def _counts(self, group: Mapping[str, Any]) -> dict[str, int]:
        """Repeats of each counted group, in the order the definition names the counts."""
        keys: list[str] = []

        def walk(g: Mapping[str, Any]) -> None:
            for sub in g.get("groups", ()):
                count = sub.get("count")
                if count is not None and str(count) == "0":
                    key = sub["name"]
                elif isinstance(count, str):
                    key = count
                else:
                    key = ""
                if key and key not in keys:
                    keys.append(key)
                walk(sub)

        walk(group)
        repeats = list(self.spec.repeats)
        return {key: (repeats[i] if i < len(repeats) else 2) for i, key in enumerate(keys)}

    def _group(self, group: Mapping[str, Any], path: tuple[tuple[str, int | None], ...], top: bool = False,
               top_points: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
        data: dict[str, Any] = {}
        points = group.get("points", [])
        key = f"{self.spec.id}:{self.instance}:{path}"
        # scale factors first: the points before them in the model use them
        sf_values: dict[str, int] = {}
        for point in points:
            if point["type"] == "sunssf":
                users = [p for p in [*points, *top_points] if p.get("sf") == point["name"]]
                if not users and not top:
                    users = [p for p in top_points if p.get("sf") == point["name"]]
                target = _target(users[0], f"{key}:{users[0]['name']}") if users else 1000.0
                sf_values[point["name"]] = _sf_for(target)
        if top:
            self.top_sf = sf_values
        for point in points:
            name, ptype = point["name"], point["type"]
            if top and name in ("ID", "L"):
                continue  # pysunspec2 fills the header
            raw, sf, value = self._point(point, key, path, sf_values)
            if raw is not None:
                data[name] = raw
            self.out.append(SimPoint(self.spec.id, self.instance, path, name, ptype, raw, sf, value))
        for sub in group.get("groups", ()):
            count = sub.get("count")
            if count is None:
                data[sub["name"]] = self._group(sub, (*path, (sub["name"], None)))
                continue
            n = self.counts.get(sub["name"] if str(count) == "0" else str(count), 0)
            data[sub["name"]] = [self._group(sub, (*path, (sub["name"], i))) for i in range(1, n + 1)]
        return data

    def _point(self, point: Mapping[str, Any], key: str, path: tuple[tuple[str, int | None], ...],
               sf_values: Mapping[str, int]) -> tuple[int | float | str | None, int | None, float | None]:
        name, ptype = point["name"], point["type"]
        if name in self.given:
            raw = self.given[name]
            return raw, None, (float(raw) if isinstance(raw, int) else None)
        if ptype == "count":  # a count point says how many groups follow
            n = self.counts.get(name, self.counts.get(next(iter(self.counts), ""), 0))
            return n, None, float(n)
        if name in self.counts:  # NCrv, NPt ... typed uint16
            return self.counts[name], None, float(self.counts[name])
        if ptype == "sunssf":
            return sf_values[name], None, float(sf_values[name])
        if ptype == "string":
            return f"{name.lower()}-{self.instance}", None, None
        if ptype in ("enum16", "enum32"):
            return 1, None, None
        if ptype in ("bitfield16", "bitfield32"):
            return _hash(key, name) & 0x7FFF, None, None
        if ptype not in _NUMBERS:
            return None, None, None  # pad, addresses: their "not implemented" pattern
        if _hash(key, name, "na") % 6 == 0:
            return None, None, None  # not implemented
        sf_name = point.get("sf")
        power: int | None = None
        if isinstance(sf_name, int) or (isinstance(sf_name, str) and sf_name.lstrip("-").isdigit()):
            power = int(sf_name)
        elif isinstance(sf_name, str):
            power = sf_values[sf_name] if sf_name in sf_values else self.top_sf.get(sf_name)
        sf: int | None = power
        target = _target(point, f"{key}:{name}")
        if ptype in ("float32", "float64"):
            raw_f = target if ptype == "float64" else struct.unpack(">f", struct.pack(">f", target))[0]
            return raw_f, sf, raw_f * 10.0 ** (sf or 0)
        low, high = _INT_RANGE[ptype]
        raw = int(round(target / 10.0 ** (sf or 0)))
        raw = min(max(raw, low + 1, 1 if ptype.startswith("acc") else low + 1), high - 1)
        value = raw / 10 ** -sf if sf is not None and sf < 0 else float(raw * 10 ** (sf or 0))
        return raw, sf, value


def sunspec_units(specs: Sequence[str]) -> dict[int, SunSpecDevice]:
    """--sunspec UNIT=MODELS[@BASE] (repeatable) -> the device of each unit; SystemExit says what is wrong."""
    devices = {}
    for text in specs:
        try:
            unit, models, base = parse_unit_spec(text)
            devices[unit] = SunSpecDevice(models, base, unit=unit)
        except Exception as exc:  # noqa: BLE001 - a bad spec (or a model pysunspec2 lacks): one line, exit
            raise SystemExit(f"--sunspec {text!r}: {exc}") from None
    return devices
