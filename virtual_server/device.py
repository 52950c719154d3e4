"""A simulated device: plausible values for a register map, encoded as a real device sends them.

Values are chosen from the register's unit and name (voltage near 230 V, mains
frequency near 50 Hz, energy counters that only grow ...), then quantised to
what the register can carry (its type, scale, offset and scale factor), so the
engineering value the simulator reports is exactly what a correct poller stores.

The words are encoded here, independently of the poller's decoder (`encode`:
pymodbus's conversion plus a byte swap), so a test that reads the simulator
checks `poller.decode` against a second implementation, not against itself.

A device may also carry its family's signature rows (device_signatures, what
`emm scan` reads to recognise the family): each row's register is served with a
value inside the row's range (the value itself when min == max, else the
midpoint), so a scan of the simulator finds the family even with --strict. A row
on a register the map serves already is not served twice: the map's value must
fall in the row's range (a mains voltage in 100..300 V does); a unitless gauge of
the same type that does not (a model id the map reads, simulated as 42) is held
at the row's value; anything else refuses the device (ValueError) when made.
"""

from __future__ import annotations

import math
import random
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pymodbus.client.mixin import ModbusClientMixin

from poller.model import ByteOrder, DataType, Register
from poller.onboard.signatures import Signature

# (nominal, relative noise) by lower-case unit; counters are handled apart.
_NOMINAL = {
    "v": (230.0, 0.01), "kv": (0.23, 0.01), "a": (8.0, 0.3), "ma": (8000.0, 0.3),
    "w": (2500.0, 0.3), "kw": (2.5, 0.3), "var": (300.0, 0.3), "kvar": (0.3, 0.3),
    "va": (2600.0, 0.3), "kva": (2.6, 0.3), "hz": (50.0, 0.001), "°c": (35.0, 0.1),
    "c": (35.0, 0.1), "%": (96.0, 0.02), "s": (3600.0, 0.0), "ohm": (1000.0, 0.05),
    "kohm": (1000.0, 0.05), "h": (1000.0, 0.0),
}
_COUNTER_UNITS = {"wh": 1.0, "kwh": 1e-3, "mwh": 1e-6, "varh": 1.0, "kvarh": 1e-3, "vah": 1.0, "kvah": 1e-3}
_COUNTER_START_WH = 1_234_567.0  # 1234.567 kWh already on the meter
_COUNTER_RATE_W = 2500.0  # the power behind the counter's growth


@dataclass
class _Cell:
    register: Register
    nominal: float
    noise: float
    counter_scale: float | None  # unit per Wh, for energy counters
    raw: int | float = 0


class VirtualDevice:
    """Register values of one simulated device type, changing over time unless frozen."""

    def __init__(self, registers: Iterable[Register], seed: int | None = None,
                 signatures: Iterable[Signature] = ()) -> None:
        self.rng = random.Random(seed)
        self.registers = tuple(registers)
        self.signatures = tuple(signatures)
        names = {r.measurement for r in self.registers}
        sf_names = {r.scale_factor for r in self.registers if r.scale_factor in names}
        # Scale-factor registers carry a fixed power of ten: -1 for most values,
        # 0 for power and energy, as SunSpec devices commonly report.
        self.scale_factors: dict[str, int] = {}
        for reg in self.registers:
            if reg.scale_factor in sf_names:
                unit = (reg.unit or "").lower()
                sf = 0 if unit in ("w", "kw", "var", "va") or unit in _COUNTER_UNITS else -1
                self.scale_factors.setdefault(reg.scale_factor, sf)
        self.cells = {}
        for reg in self.registers:
            if reg.measurement in sf_names:
                continue
            unit = (reg.unit or "").lower()
            if unit in _COUNTER_UNITS:
                cell = _Cell(reg, _COUNTER_START_WH * _COUNTER_UNITS[unit], 0.0, _COUNTER_UNITS[unit])
            else:
                nominal, noise = _nominal_for(reg)
                cell = _Cell(reg, nominal, noise, None)
            self.cells[reg.measurement] = cell
        self.energy_wh = _COUNTER_START_WH
        self.step(0.0)
        self.signature_words = self._signature_words()

    def _signature_words(self) -> dict[tuple[int, int], int]:
        """The words of the signature rows the map does not serve; ValueError when a row
        falls on the map's registers and the map's value is outside its range, or when two
        rows disagree."""
        served = self._map_words()
        extra: dict[tuple[int, int], int] = {}
        for sig in self.signatures:
            keys = [(int(sig.function_code), sig.address + i) for i in range(sig.data_type.words)]
            on_map = [k in served for k in keys]
            if all(on_map):
                words = [served[k] for k in keys]
                if not sig.holds(words) and self._pin(sig):  # an identification code the map also reads
                    served = self._map_words()
                    words = [served[k] for k in keys]
                if not sig.holds(words):
                    raise ValueError(f"{sig.type}: signature at fc{int(sig.function_code)} {sig.address} "
                                     f"({sig.description}) reads {sig.value(words)!r} from the map's own "
                                     f"register, outside {sig.min_value:g}..{sig.max_value:g}")
                continue
            if any(on_map):
                raise ValueError(f"{sig.type}: signature at fc{int(sig.function_code)} {sig.address} "
                                 f"({sig.description}) straddles a register of the map")
            words = signature_words(sig)
            for key, word in zip(keys, words, strict=True):
                if extra.setdefault(key, word) != word:
                    raise ValueError(f"{sig.type}: two signature rows give fc{key[0]} {key[1]} different words")
        return extra

    def _sf(self, reg: Register) -> int:
        return self.scale_factors.get(reg.scale_factor, 0) if reg.scale_factor else 0

    def step(self, seconds: float) -> None:
        """Advance time: noisy values move, counters grow with the energy delivered."""
        self.energy_wh += _COUNTER_RATE_W * seconds / 3600.0
        for cell in self.cells.values():
            if cell.counter_scale is not None:
                target = self.energy_wh * cell.counter_scale
            else:
                target = cell.nominal * (1 + self.rng.uniform(-cell.noise, cell.noise))
            # rounding is monotonic, so a counter's raw value never steps back
            cell.raw = _quantise(cell.register, target, self._sf(cell.register))

    def value(self, measurement: str) -> float:
        """The engineering value a correct poller stores for this register now."""
        if measurement in self.scale_factors:
            return float(self.scale_factors[measurement])
        cell = self.cells[measurement]
        reg = cell.register
        value = cell.raw * reg.scale
        sf = self._sf(reg)
        if reg.scale_factor:
            value *= 10.0 ** sf
        return float(value + reg.offset)

    def values(self) -> dict[str, float]:
        return {r.measurement: self.value(r.measurement) for r in self.registers}

    def _pin(self, sig: Signature) -> bool:
        """Hold the map's register under `sig` (same place and type, a gauge without a unit) at the
        row's value for good: a model code or model id the map reads. False when there is none."""
        for reg in self.registers:
            cell = self.cells.get(reg.measurement)
            if (cell is None or cell.counter_scale is not None or reg.unit or reg.scale_factor
                    or reg.address != sig.address
                    or reg.function_code != sig.function_code or reg.data_type != sig.data_type
                    or reg.byte_order != sig.byte_order):
                continue
            target = sig.min_value if sig.min_value == sig.max_value else (sig.min_value + sig.max_value) / 2
            cell.nominal, cell.noise = target / sig.scale * reg.scale + reg.offset, 0.0
            cell.raw = _quantise(reg, cell.nominal, 0)
            return True
        return False

    def words(self) -> dict[tuple[int, int], int]:
        """{(function code, address): 16-bit word} for every register and signature row, as served now."""
        return {**self.signature_words, **self._map_words()}

    def _map_words(self) -> dict[tuple[int, int], int]:
        banks: dict[tuple[int, int], int] = {}
        for reg in self.registers:
            if reg.measurement in self.scale_factors:
                raw: int | float = self.scale_factors[reg.measurement]
            else:
                raw = self.cells[reg.measurement].raw
            for i, word in enumerate(encode(reg, raw)):
                banks[(int(reg.function_code), reg.address + i)] = word
        return banks


_PYMODBUS_TYPE = {
    DataType.INT16: ModbusClientMixin.DATATYPE.INT16, DataType.UINT16: ModbusClientMixin.DATATYPE.UINT16,
    DataType.INT32: ModbusClientMixin.DATATYPE.INT32, DataType.UINT32: ModbusClientMixin.DATATYPE.UINT32,
    DataType.FLOAT32: ModbusClientMixin.DATATYPE.FLOAT32, DataType.INT64: ModbusClientMixin.DATATYPE.INT64,
    DataType.UINT64: ModbusClientMixin.DATATYPE.UINT64, DataType.FLOAT64: ModbusClientMixin.DATATYPE.FLOAT64,
}


def encode(reg: Register, raw: int | float) -> list[int]:
    """The 16-bit words a device in `reg.byte_order` sends for `raw`.

    pymodbus builds the registers high word first ("big") or low word first
    ("little"); a byte-swapping device then swaps the two bytes of every word.
    0x12345678 as ABCD is [0x1234, 0x5678], CDAB [0x5678, 0x1234],
    BADC [0x3412, 0x7856], DCBA [0x7856, 0x3412].
    """
    low_word_first = reg.byte_order in (ByteOrder.CDAB, ByteOrder.DCBA)
    words = ModbusClientMixin.convert_to_registers(raw, _PYMODBUS_TYPE[reg.data_type],
                                                   word_order="little" if low_word_first else "big")
    if reg.byte_order in (ByteOrder.BADC, ByteOrder.DCBA):
        words = [(w & 0xFF) << 8 | w >> 8 for w in words]
    return words


def _nominal_for(reg: Register) -> tuple[float, float]:
    unit = (reg.unit or "").lower()
    name = reg.measurement.lower()
    if unit in _NOMINAL:
        nominal, noise = _NOMINAL[unit]
    elif "factor" in name or name.startswith(("pf", "cos")) or name.endswith("_pf"):
        nominal, noise = 0.95, 0.03
    else:
        nominal, noise = 42.0, 0.1
    if unit in ("v", "kv") and ("dc" in name or "pv" in name or "string" in name):
        nominal *= 2.0
    return nominal, noise


def _quantise(reg: Register, target: float, sf: int) -> int | float:
    """The raw register value closest to `target` that the register can carry."""
    step = reg.scale * (10.0 ** sf if reg.scale_factor else 1.0)
    raw = (target - reg.offset) / step
    if reg.data_type is DataType.FLOAT32:
        return struct.unpack(">f", struct.pack(">f", raw))[0]
    if reg.data_type is DataType.FLOAT64:
        return raw
    lo, hi = reg.data_type.raw_range  # type: ignore[misc]
    value = int(round(raw)) if math.isfinite(raw) else 0
    value = min(max(value, lo), hi)
    if reg.not_available is not None and value == reg.not_available:
        value = value - 1 if value > lo else value + 1
    return value


def signature_words(sig: Signature) -> list[int]:
    """The words of a value inside the row's range: the value itself when min == max, else the
    midpoint; quantised to what the register carries (an integer type rounds towards the range).

    >>> from poller.model import FunctionCode
    >>> code = Signature("t", 0xFC02, FunctionCode(3), DataType.UINT16, ByteOrder.ABCD, 1, 112, 121, "meter code")
    >>> signature_words(code)  # 116.5 rounds to 116 (0x0074), inside 112..121
    [116]
    """
    reg = sig.register()
    target = sig.min_value if sig.min_value == sig.max_value else (sig.min_value + sig.max_value) / 2
    raw = _quantise(reg, target, 0)
    words = encode(reg, raw)
    if not sig.holds(words):
        raise ValueError(f"{sig.type}: no {sig.data_type.name} value with scale {sig.scale:g} lies in "
                         f"{sig.min_value:g}..{sig.max_value:g} ({sig.description})")
    return words


def make_device(type_name: str, registers: Iterable[Register], seed: int | None,
                signatures: Sequence[Signature] = ()) -> VirtualDevice:
    """The device the server runs for a type; with a seed, the same values in every process."""
    if seed is None:
        return VirtualDevice(registers, signatures=signatures)
    return VirtualDevice(registers, seed=zlib.crc32(f"{seed}:{type_name}".encode()), signatures=signatures)
