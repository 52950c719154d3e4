"""Raw 16-bit registers -> numbers, and back (for the simulator). Pure functions.

A register's bytes are put into big-endian order (ABCD) first, then unpacked
with `struct`; the host's endianness never plays a part.

    decode_raw(<float32 ABCD register>, [0x4366, 0x1999]) -> 230.10000610351562

A whole block's reply is unpacked at once by its BlockLayout (the structs of
each byte order, with explicit endianness, built once when the block is planned),
which gives the same numbers as decode_raw value by value.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from itertools import repeat

from .model import ByteOrder, DataType, ReadBlock, Register

__all__ = ["BlockLayout", "DecodeError", "apply_scaling", "check_scale_factor", "decode_block_values",
           "plain_block_values",
           "decode_raw", "encode_raw", "layout_of", "scale_factor_of", "to_big_endian"]

# SunSpec limits scale factors to -10..10; anything else is a broken reply.
SCALE_FACTOR_RANGE = range(-10, 11)


class DecodeError(ValueError):
    """A register's words do not give a value that can be stored."""


def to_big_endian(words: bytes, order: ByteOrder) -> bytes:
    """Reorder the bytes of one value, as received, into ABCD (big-endian) order.

    Two registers 0x0102, 0x0304 arrive as bytes 01 02 03 04:
        ABCD -> 01 02 03 04, CDAB -> 03 04 01 02,
        BADC -> 02 01 04 03, DCBA -> 04 03 02 01.
    """
    if order is ByteOrder.ABCD:
        return words
    if order is ByteOrder.DCBA:
        return words[::-1]
    if order is ByteOrder.CDAB:  # reverse the word order, keep bytes in each word
        return b"".join(words[i:i + 2] for i in range(len(words) - 2, -1, -2))
    # BADC: swap the bytes inside each word, keep the word order
    swapped = bytearray(words)
    swapped[0::2], swapped[1::2] = words[1::2], words[0::2]
    return bytes(swapped)


def from_big_endian(data: bytes, order: ByteOrder) -> bytes:
    """Inverse of `to_big_endian` (each reordering is its own inverse)."""
    return to_big_endian(data, order)


def decode_raw(register: Register, words: Sequence[int], start: int = 0) -> int | float:
    """The raw number in `words[start:start + register.words]`, before scaling."""
    n = register.data_type.words
    if len(words) < start + n:
        raise DecodeError(f"{register.measurement}: needs {n} registers, got {len(words) - start}")
    data = struct.pack(f">{n}H", *words[start:start + n])
    return struct.unpack(">" + register.data_type.struct_code, to_big_endian(data, register.byte_order))[0]


def apply_scaling(register: Register, raw: int | float, scale_factor: int | None = None) -> float:
    """Engineering value: raw * scale * 10^scale_factor + offset.

    Raises DecodeError for "not available" sentinels and values InfluxDB cannot
    store (NaN, infinity), so the caller can count them and write nothing.
    """
    if (scale_factor is None and register.not_available is None and register.scale == 1.0
            and register.offset == 0.0):
        value = float(raw)
        if math.isfinite(value):  # the common case: nothing to scale
            return value
    if register.not_available is not None and raw == register.not_available:
        raise DecodeError(f"{register.measurement}: not available (raw {raw})")
    if isinstance(raw, float) and not math.isfinite(raw):
        raise DecodeError(f"{register.measurement}: {raw} cannot be stored")
    try:  # store.py keeps scales in 1e-9..1e9; this holds for any finite Register all the same
        value = _scaled(raw, register.scale)
        if scale_factor:
            value = value * 10 ** scale_factor if scale_factor > 0 else value / 10 ** -scale_factor
        value += register.offset
    except ArithmeticError as exc:  # OverflowError, ZeroDivisionError: not a value to store
        raise DecodeError(f"{register.measurement}: raw {raw} cannot be scaled ({exc})") from None
    if not math.isfinite(value):
        raise DecodeError(f"{register.measurement}: scaled value {value} cannot be stored")
    return float(value)


def _scaled(raw: int | float, scale: float) -> float:
    """raw * scale, dividing by 10, 100 ... where the scale is 0.1, 0.01 ...

    319 * 0.1 is 31.900000000000002, while 319 / 10 is 31.9: the division gives
    the decimal a meter displays.
    """
    if scale == 1:
        return float(raw)
    if -1 < scale < 1 and scale != 0:
        inverse = 1 / scale
        if math.isfinite(inverse):  # a scale of 1e-320 has no finite inverse: multiply instead
            rounded = round(inverse)
            if rounded and abs(inverse - rounded) < 1e-9 * abs(inverse):
                return raw / rounded
    return raw * scale


def check_scale_factor(register: Register, raw: int | float) -> int:
    """A scale-factor register's raw value as a power of ten, validated."""
    if register.not_available is not None and raw == register.not_available:
        raise DecodeError(f"scale factor {register.measurement} not available (raw {raw})")
    if isinstance(raw, float) or raw not in SCALE_FACTOR_RANGE:
        raise DecodeError(f"scale factor {register.measurement}={raw} outside -10..10")
    return int(raw)


def scale_factor_of(register: Register, raws: Mapping[str, int | float], by_name: Mapping[str, Register]) -> int | None:
    """The power of ten `register`'s scale factor gives, from the raw numbers read (by measurement
    name; `by_name`: the scale-factor registers); None when it has none."""
    if register.scale_factor is None:
        return None
    if register.scale_factor not in raws:
        raise DecodeError(f"{register.measurement}: scale factor {register.scale_factor} was not read")
    return check_scale_factor(by_name[register.scale_factor], raws[register.scale_factor])


def encode_raw(register: Register, raw: int | float) -> list[int]:
    """The registers a device sends for `raw` (the simulator's side of `decode_raw`)."""
    n = register.data_type.words
    data = struct.pack(">" + register.data_type.struct_code, raw)
    return list(struct.unpack(f">{n}H", from_big_endian(data, register.byte_order)))


# One precompiled big-endian unpacker per data type, chosen once (not a format string per value).
_UNPACK_FROM = {dt: struct.Struct(">" + dt.struct_code).unpack_from for dt in DataType}

# How each byte order is read by a struct over the whole block: (pack the words little-endian,
# unpack the values little-endian). DCBA is the ABCD bytes read backwards; BADC swaps the bytes
# of each word, which packing the words little-endian does; CDAB does both (its reversed words,
# each packed little-endian, are the value's bytes backwards). A one-word value reads CDAB as
# ABCD and DCBA as BADC, as to_big_endian does.
_STRUCT_ORDER = {
    ByteOrder.ABCD: (False, False), ByteOrder.DCBA: (False, True),
    ByteOrder.BADC: (True, False), ByteOrder.CDAB: (True, True),
}


class BlockLayout:
    """How a block's reply becomes its registers' raw numbers, worked out once per block.

    The registers are unpacked by one precompiled `struct.Struct` per pass, with pad bytes over
    the gaps: 30 contiguous float32 ABCD values are `Struct(">30f")` over the reply's bytes. A
    pass holds values of one byte order, each after the one before; a second order or an
    overlapping value opens another. plan.PlannedBlock builds its layout when it is planned.
    """

    __slots__ = ("words", "passes", "order", "plain", "ints", "linked", "names", "__weakref__")

    def __init__(self, block: ReadBlock) -> None:
        regs = block.registers
        self.words = max((r.end for r in regs), default=block.address) - block.address  # the reply needed
        lanes: list[_Lane] = []
        for i, r in enumerate(regs):
            orders = _STRUCT_ORDER[r.byte_order]
            lane = next((ln for ln in lanes if ln.orders == orders and ln.end <= r.address), None)
            if lane is None:
                lane = _Lane(orders, block.address)
                lanes.append(lane)
            lane.add(i, r)
        # (packer of the reply's words, unpacker of the values) per pass; None: a register starts
        # before the block, which only the value-by-value reading reads (as it always has)
        self.passes: tuple[tuple[struct.Struct, struct.Struct], ...] | None = None
        if all(r.address >= block.address for r in regs):
            self.passes = tuple((struct.Struct(f"{'<' if ln.orders[0] else '>'}{self.words}H"),
                                 struct.Struct(("<" if ln.orders[1] else ">") + "".join(ln.codes)))
                                for ln in lanes)
        position = [i for ln in lanes for i in ln.registers]  # the register of each unpacked value
        # where each register's value is among the unpacked ones; None: in the registers' order
        self.order = (tuple(sorted(range(len(regs)), key=position.__getitem__))
                      if position != sorted(position) else None)
        # every value stored as it arrives: float(raw), when finite (apply_scaling's first case)
        self.plain = all(r.scale_factor is None and r.not_available is None and r.scale == 1.0
                         and r.offset == 0.0 for r in regs)
        self.ints = any(not r.data_type.is_float for r in regs)  # raw numbers to make floats of
        self.names = frozenset(r.measurement for r in regs)
        # values that need another's raw number (a scale factor), or a name twice: read the blocks
        # together, by measurement name, as decode_block_values always has
        self.linked = len(self.names) < len(regs) or any(r.scale_factor is not None for r in regs)

    def raws(self, words: Sequence[int]) -> Sequence[int | float] | None:
        """The registers' raw numbers, in the block's order; None when the reply is too short."""
        if self.passes is None or len(words) < self.words:
            return None
        flat: tuple[int | float, ...] = ()
        for pack, unpack in self.passes:
            if len(words) == self.words:
                flat += unpack.unpack_from(pack.pack(*words))
            else:  # a longer reply than the registers need: all of it packed, as before
                flat += unpack.unpack_from(struct.pack(f"{pack.format[0]}{len(words)}H", *words))
        if self.order is None:
            return flat
        return [flat[p] for p in self.order]


class _Lane:
    """One pass of BlockLayout being built: values of one byte order, each after the one before."""

    __slots__ = ("orders", "end", "codes", "registers")

    def __init__(self, orders: tuple[bool, bool], address: int) -> None:
        self.orders, self.end = orders, address
        self.codes: list[str] = []
        self.registers: list[int] = []

    def add(self, index: int, register: Register) -> None:
        self.codes.append("x" * (2 * (register.address - self.end)) + register.data_type.struct_code)
        self.end = register.end
        self.registers.append(index)


def layout_of(block: ReadBlock) -> BlockLayout:
    """The block's layout: a planned block's own (plan.PlannedBlock), or one made now."""
    layout = getattr(block, "layout", None)
    return BlockLayout(block) if not isinstance(layout, BlockLayout) else layout


def _raws_one_by_one(block: ReadBlock, words: Sequence[int]) -> list[int | float | None]:
    """Each register's raw number read on its own; None for one past the end of a short reply."""
    data = struct.pack(f">{len(words)}H", *words)  # the block's bytes, once
    raws: list[int | float | None] = []
    for reg in block.registers:
        start = reg.address - block.address
        if start + reg.data_type.words > len(words):
            raws.append(None)  # a short reply: reported as "no data"
        elif reg.byte_order is ByteOrder.ABCD:  # as on the wire: unpack in place
            raws.append(_UNPACK_FROM[reg.data_type](data, 2 * start)[0])
        else:
            raws.append(decode_raw(reg, words, start))
    return raws


def decode_block_values(
    block_words: Sequence[tuple[ReadBlock, Sequence[int]]],
) -> tuple[list[tuple[int, Register, float]], list[str]]:
    """Decode every register of a meter's blocks read in one cycle.

    Returns (index of the block, register, engineering value) for each value
    that can be stored, and one message per value that cannot (NaN, "not
    available" sentinel, broken or missing scale factor). Scale factors are
    looked up among all the blocks given, so a dependant only ever uses a
    scale factor read in the same cycle.

    A block of plain values (no scale, offset, sentinel or scale factor: most
    meters' registers) is unpacked whole and its values taken as they are,
    when all are finite; anything else goes through apply_scaling value by value.
    """
    values: list[tuple[int, Register, float]] = []
    invalid: list[str] = []
    earlier: list[frozenset[str]] = []  # the measurement names of the blocks before
    for index, (block, words) in enumerate(block_words):
        layout = layout_of(block)
        if layout.linked or not all(map(layout.names.isdisjoint, earlier)):  # a scale factor, or a name twice
            return _decode_linked(block_words)
        earlier.append(layout.names)
        raws = layout.raws(words)
        if raws is not None and layout.plain:
            plain = list(map(float, raws)) if layout.ints else raws
            if math.isfinite(sum(plain)):  # no NaN or infinity among them
                values.extend(zip(repeat(index), block.registers, plain))
                continue
        each: Sequence[int | float | None] = _raws_one_by_one(block, words) if raws is None else raws
        for i, reg in enumerate(block.registers):
            raw = each[i]
            if raw is None:
                invalid.append(f"{reg.measurement}: no data")
                continue
            try:
                values.append((index, reg, apply_scaling(reg, raw)))
            except DecodeError as exc:
                invalid.append(str(exc))
    return values, invalid


def plain_block_values(block_words: Sequence[tuple[ReadBlock, Sequence[int]]]) -> list[Sequence[float]] | None:
    """Each block's values, in its registers' order, when every block is plain and all its values
    are finite (decode_block_values's fast case, for all of a meter's blocks); else None, and
    decode_block_values decodes them. The values are those decode_block_values gives, without a
    tuple a value: most meters' every read takes this way."""
    out: list[Sequence[float]] = []
    earlier: list[frozenset[str]] = []
    for block, words in block_words:
        layout = layout_of(block)
        if layout.linked or not layout.plain or not all(map(layout.names.isdisjoint, earlier)):
            return None
        earlier.append(layout.names)
        raws = layout.raws(words)
        if raws is None:
            return None
        plain = list(map(float, raws)) if layout.ints else raws
        if not math.isfinite(sum(plain)):  # a NaN or infinity among them
            return None
        out.append(plain)  # type: ignore[arg-type]  # floats: a plain layout of float types unpacks floats
    return out


def _decode_linked(
    block_words: Sequence[tuple[ReadBlock, Sequence[int]]],
) -> tuple[list[tuple[int, Register, float]], list[str]]:
    """decode_block_values for blocks whose values need each other: raw numbers by measurement."""
    raws: dict[str, int | float] = {}
    for block, words in block_words:
        got = layout_of(block).raws(words)
        each: Sequence[int | float | None] = _raws_one_by_one(block, words) if got is None else got
        for i, reg in enumerate(block.registers):
            raw = each[i]
            if raw is not None:
                raws[reg.measurement] = raw
    sf_registers = {r.scale_factor for b, _ in block_words for r in b.registers if r.scale_factor}
    by_name = {r.measurement: r for b, _ in block_words for r in b.registers if r.measurement in sf_registers}
    values: list[tuple[int, Register, float]] = []
    invalid: list[str] = []
    for index, (block, _) in enumerate(block_words):
        for reg in block.registers:
            raw = raws.get(reg.measurement)
            if raw is None:
                invalid.append(f"{reg.measurement}: no data")
                continue
            try:
                values.append((index, reg, apply_scaling(reg, raw, scale_factor_of(reg, raws, by_name))))
            except DecodeError as exc:
                invalid.append(str(exc))
    return values, invalid
