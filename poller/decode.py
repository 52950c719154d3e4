"""Raw 16-bit registers -> numbers, and back (for the simulator). Pure functions.

A register's bytes are put into big-endian order (ABCD) first, then unpacked
with `struct`; the host's endianness never plays a part.

    decode_raw(<float32 ABCD register>, [0x4366, 0x1999]) -> 230.10000610351562
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from .model import ByteOrder, DataType, ReadBlock, Register

__all__ = ["DecodeError", "apply_scaling", "check_scale_factor", "decode_block_values", "decode_raw",
           "encode_raw", "to_big_endian"]

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


def encode_raw(register: Register, raw: int | float) -> list[int]:
    """The registers a device sends for `raw` (the simulator's side of `decode_raw`)."""
    n = register.data_type.words
    data = struct.pack(">" + register.data_type.struct_code, raw)
    return list(struct.unpack(f">{n}H", from_big_endian(data, register.byte_order)))


# One precompiled big-endian unpacker per data type, chosen once (not a format string per value).
_UNPACK_FROM = {dt: struct.Struct(">" + dt.struct_code).unpack_from for dt in DataType}


def decode_block_values(
    block_words: Sequence[tuple[ReadBlock, Sequence[int]]],
) -> tuple[list[tuple[int, Register, float]], list[str]]:
    """Decode every register of a meter's blocks read in one cycle.

    Returns (index of the block, register, engineering value) for each value
    that can be stored, and one message per value that cannot (NaN, "not
    available" sentinel, broken or missing scale factor). Scale factors are
    looked up among all the blocks given, so a dependant only ever uses a
    scale factor read in the same cycle.
    """
    raws: dict[str, int | float] = {}
    for block, words in block_words:
        data = struct.pack(f">{len(words)}H", *words)  # the block's bytes, once
        for reg in block.registers:
            start = reg.address - block.address
            if start + reg.data_type.words > len(words):
                continue  # a short reply: reported below as "no data"
            if reg.byte_order is ByteOrder.ABCD:  # as on the wire: unpack in place
                raws[reg.measurement] = _UNPACK_FROM[reg.data_type](data, 2 * start)[0]
            else:
                raws[reg.measurement] = decode_raw(reg, words, start)
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
                sf = None
                if reg.scale_factor is not None:
                    if reg.scale_factor not in raws:
                        raise DecodeError(f"{reg.measurement}: scale factor {reg.scale_factor} was not read")
                    sf = check_scale_factor(by_name[reg.scale_factor], raws[reg.scale_factor])
                values.append((index, reg, apply_scaling(reg, raw, sf)))
            except DecodeError as exc:
                invalid.append(str(exc))
    return values, invalid
