"""Decoding: golden tables for every type and order, boundaries, NaN, scaling."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client.mixin import ModbusClientMixin

from poller.decode import DecodeError, apply_scaling, check_scale_factor, decode_block_values, decode_raw, encode_raw
from poller.model import ByteOrder, DataType, FunctionCode, ReadBlock, Register

A, C, B, D = ByteOrder.ABCD, ByteOrder.CDAB, ByteOrder.BADC, ByteOrder.DCBA


def reg(data_type: DataType, order: ByteOrder = A, address: int = 0, name: str = "x", **kw) -> Register:
    return Register(1, "t", address, name, None, data_type, FunctionCode.READ_HOLDING_REGISTERS, order, **kw)


# The wire carries bytes 01 02 03 04 (05 06 07 08); what each order makes of them.
GOLDEN_32 = {A: 0x01020304, C: 0x03040102, B: 0x02010403, D: 0x04030201}
GOLDEN_64 = {A: 0x0102030405060708, C: 0x0708050603040102, B: 0x0201040306050807, D: 0x0807060504030201}


@pytest.mark.parametrize("order", [A, B])
def test_golden_16_bit(order):
    expected = {A: 0x0102, B: 0x0201}[order]
    assert decode_raw(reg(DataType.UINT16, order), [0x0102]) == expected
    assert decode_raw(reg(DataType.INT16, order), [0x0102]) == expected


@pytest.mark.parametrize("order", [A, C, B, D])
def test_golden_32_bit(order):
    words = [0x0102, 0x0304]
    bits = GOLDEN_32[order]
    assert decode_raw(reg(DataType.UINT32, order), words) == bits
    assert decode_raw(reg(DataType.INT32, order), words) == bits  # all below 2^31
    assert decode_raw(reg(DataType.FLOAT32, order), words) == struct.unpack(">f", bits.to_bytes(4, "big"))[0]


@pytest.mark.parametrize("order", [A, C, B, D])
def test_golden_64_bit(order):
    words = [0x0102, 0x0304, 0x0506, 0x0708]
    bits = GOLDEN_64[order]
    assert decode_raw(reg(DataType.UINT64, order), words) == bits
    assert decode_raw(reg(DataType.INT64, order), words) == bits
    assert decode_raw(reg(DataType.FLOAT64, order), words) == struct.unpack(">d", bits.to_bytes(8, "big"))[0]


@pytest.mark.parametrize(("data_type", "words", "value"), [
    (DataType.INT16, [0x7FFF], 32767),
    (DataType.INT16, [0x8000], -32768),
    (DataType.INT16, [0xFFFF], -1),
    (DataType.UINT16, [0x8000], 32768),
    (DataType.UINT16, [0xFFFF], 65535),
    (DataType.INT32, [0x7FFF, 0xFFFF], 2147483647),
    (DataType.INT32, [0x8000, 0x0000], -2147483648),
    (DataType.INT32, [0xFFFF, 0xFFFE], -2),
    (DataType.UINT32, [0xFFFF, 0xFFFF], 4294967295),
    (DataType.INT64, [0xFFFF] * 4, -1),
    (DataType.UINT64, [0xFFFF] * 4, 2**64 - 1),
    (DataType.FLOAT32, [0x4366, 0x199A], 230.10000610351562),
    (DataType.FLOAT32, [0xC49A, 0x5000], -1234.5),
    (DataType.FLOAT64, [0x4059, 0x0000, 0x0000, 0x0000], 100.0),
])
def test_boundaries_and_negatives(data_type, words, value):
    assert decode_raw(reg(data_type), words) == value


def test_word_swapped_float_as_sent_by_a_cdab_meter():
    # 230.1 V as float32 is 0x4366199A; a CDAB device sends the low word first.
    assert decode_raw(reg(DataType.FLOAT32, C), [0x199A, 0x4366]) == pytest.approx(230.1, rel=1e-7)


@pytest.mark.parametrize("words", [[0x7FC0, 0x0000], [0xFFC0, 0x0000], [0x7F80, 0x0000], [0xFF80, 0x0000]])
def test_nan_and_infinity_are_not_stored(words):
    r = reg(DataType.FLOAT32)
    raw = decode_raw(r, words)
    assert math.isnan(raw) or math.isinf(raw)
    with pytest.raises(DecodeError, match="cannot be stored"):
        apply_scaling(r, raw)


def test_scaling_offset_and_sentinel():
    r = reg(DataType.INT16, scale=0.1, offset=-40.0, not_available=-32768)
    assert apply_scaling(r, 319) == pytest.approx(-8.1)
    assert apply_scaling(reg(DataType.INT16, scale=0.1), 319) == 31.9  # a decimal, not 31.900000000000002
    assert apply_scaling(reg(DataType.UINT32, scale=0.01), 123456) == 1234.56
    with pytest.raises(DecodeError, match="not available"):
        apply_scaling(r, -32768)
    assert apply_scaling(reg(DataType.INT16), 5, scale_factor=-2) == 0.05
    assert apply_scaling(reg(DataType.INT16), 5, scale_factor=3) == 5000.0


def test_scale_factor_range():
    sf = reg(DataType.INT16, name="W_SF", not_available=-32768)
    assert check_scale_factor(sf, -2) == -2
    for bad in (-11, 11, -32768):
        with pytest.raises(DecodeError):
            check_scale_factor(sf, bad)


def test_block_decoding_resolves_scale_factors_and_reports_broken_ones():
    w = reg(DataType.INT16, address=0, name="W", scale_factor="W_SF")
    hz = reg(DataType.UINT16, address=1, name="Hz", scale_factor="Hz_SF")
    w_sf = reg(DataType.INT16, address=2, name="W_SF")
    hz_sf = reg(DataType.INT16, address=3, name="Hz_SF")
    block = ReadBlock(FunctionCode.READ_HOLDING_REGISTERS, 0, 4, (w, hz, w_sf, hz_sf))
    values, invalid = decode_block_values([(block, [1234, 5002, 1, 0x8000])])
    got = {r.measurement: v for _, r, v in values}
    assert got["W"] == 12340.0
    assert "Hz" not in got  # its scale factor -32768 is outside -10..10
    assert any("Hz_SF" in m for m in invalid)


def test_short_block_reports_no_data():
    r = reg(DataType.FLOAT32, address=0)
    block = ReadBlock(FunctionCode.READ_HOLDING_REGISTERS, 0, 2, (r,))
    values, invalid = decode_block_values([(block, [0x4366])])
    assert values == [] and invalid == ["x: no data"]


# Independent cross-check: pymodbus's own conversion agrees for big and little word order.
PYMODBUS_TYPES = {
    DataType.INT16: ModbusClientMixin.DATATYPE.INT16, DataType.UINT16: ModbusClientMixin.DATATYPE.UINT16,
    DataType.INT32: ModbusClientMixin.DATATYPE.INT32, DataType.UINT32: ModbusClientMixin.DATATYPE.UINT32,
    DataType.FLOAT32: ModbusClientMixin.DATATYPE.FLOAT32, DataType.INT64: ModbusClientMixin.DATATYPE.INT64,
    DataType.UINT64: ModbusClientMixin.DATATYPE.UINT64, DataType.FLOAT64: ModbusClientMixin.DATATYPE.FLOAT64,
}


@given(st.sampled_from(list(DataType)), st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4))
def test_agrees_with_pymodbus(data_type, words):
    words = words[:data_type.words]
    for order, word_order in ((A, "big"), (C, "little")):
        if data_type.words == 1 and order is C:
            continue
        ours = decode_raw(reg(data_type, order), words)
        theirs = ModbusClientMixin.convert_from_registers(words, PYMODBUS_TYPES[data_type], word_order=word_order)
        if isinstance(ours, float) and math.isnan(ours):
            assert math.isnan(theirs)
        else:
            assert ours == theirs


@given(st.sampled_from(list(DataType)), st.sampled_from(list(ByteOrder)), st.data())
def test_encode_then_decode_gives_the_value_back(data_type, order, data):
    if data_type.words == 1 and order in (C, D):
        return
    if data_type.is_float:
        width = 32 if data_type is DataType.FLOAT32 else 64
        value = data.draw(st.floats(allow_nan=False, width=width))
    else:
        lo, hi = data_type.raw_range
        value = data.draw(st.integers(lo, hi))
    r = reg(data_type, order)
    words = encode_raw(r, value)
    assert len(words) == data_type.words and all(0 <= w <= 0xFFFF for w in words)
    assert decode_raw(r, words) == value
