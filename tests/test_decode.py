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
from virtual_server.device import encode as simulator_encode

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


@given(st.sampled_from(list(DataType)), st.sampled_from(list(ByteOrder)), st.data())
def test_decodes_what_the_simulator_encodes_independently(data_type, order, data):
    # virtual_server.device.encode is pymodbus's conversion plus a byte swap, pinned to the
    # vendors' documents in tests/test_devices.py: a second implementation, not encode_raw.
    if data_type.words == 1 and order in (C, D):
        return
    if data_type.is_float:
        value = data.draw(st.floats(allow_nan=False, width=32 if data_type is DataType.FLOAT32 else 64))
    else:
        value = data.draw(st.integers(*data_type.raw_range))
    r = reg(data_type, order)
    assert decode_raw(r, simulator_encode(r, value)) == value


def test_a_value_running_past_the_reply_is_a_decode_error():
    # a float32 at the last word of a three-word reply: a DecodeError the cycle counts, not a struct.error
    with pytest.raises(DecodeError, match=r"^x: needs 2 registers, got 1$"):
        decode_raw(reg(DataType.FLOAT32), [0x4366, 0x199A, 0x4366], start=2)


def test_a_not_available_sentinel_is_caught_without_scaling_too():
    # SunSpec: 0xFFFF in an unscaled uint16 means "not implemented"
    r = reg(DataType.UINT16, not_available=65535)
    with pytest.raises(DecodeError, match="not available"):
        apply_scaling(r, 65535)
    assert apply_scaling(r, 65534) == 65534.0


@pytest.mark.parametrize(("register", "raw", "scale_factor", "value"), [
    (reg(DataType.INT16, scale=2), 5, None, 10.0),  # 2 W per count
    (reg(DataType.UINT16, scale=10), 123, None, 1230.0),  # 10 W per count
    (reg(DataType.INT16, offset=-40.0), 75, None, 35.0),  # degC above -40, unscaled
    (reg(DataType.UINT16, offset=1.0), 0, None, 1.0),  # a tariff counted from 0, shown from 1
    (reg(DataType.INT16, scale=0.1, offset=-40.0), 750, None, 35.0),  # the offset comes after the scale
    (reg(DataType.FLOAT32, scale=1000), 2.5, None, 2500.0),  # kW sent, W stored
    (reg(DataType.FLOAT32, scale=0.001), 2500.0, None, 2.5),
    (reg(DataType.UINT32, scale=1e-5), 3, None, 3e-05),  # a decimal, not 3.0000000000000004e-05
    (reg(DataType.INT16, scale=0.1), 3, 1, 3.0),  # 0.3 * 10, not 2.9999999999999996
    (reg(DataType.INT16), 3, -1, 0.3),  # 3 / 10, not 0.30000000000000004
    (reg(DataType.INT16, scale=-1), 5, None, -5.0),  # a meter counting the other way
])
def test_engineering_values(register, raw, scale_factor, value):
    assert apply_scaling(register, raw, scale_factor) == value


def test_a_scale_that_is_no_decimal_is_multiplied():
    # an analog input: 0..65535 over 0..100 %; 1/scale = 655.35 is no whole number to divide by
    r = reg(DataType.UINT16, scale=100 / 65535)
    assert apply_scaling(r, 65535) == pytest.approx(100.0, rel=1e-12)
    assert apply_scaling(r, 32768) == pytest.approx(50.00076295109483, rel=1e-12)


def test_a_scaled_value_too_large_to_store_is_refused():
    with pytest.raises(DecodeError, match=r"^x: scaled value inf cannot be stored$"):
        apply_scaling(reg(DataType.FLOAT64, scale=10.0), 1e308)


def test_a_scale_factor_reported_not_available_says_so():
    sf = reg(DataType.INT16, name="W_SF", not_available=-32768)
    with pytest.raises(DecodeError, match=r"^scale factor W_SF not available \(raw -32768\)$"):
        check_scale_factor(sf, -32768)


def test_blocks_of_every_order_decode_at_their_own_addresses():
    # Two requests as the planner makes them: fc3 100..108 and fc4 0..1; every value's words
    # written out (230.1 V = 0x4366199A, 0x12345678, 100.0 = 0x4059000000000000, -2).
    temperature = reg(DataType.INT16, A, 100, "temperature", scale=0.1, offset=-40.0)
    voltage = reg(DataType.FLOAT32, C, 101, "voltage")
    counter = reg(DataType.UINT32, B, 103, "counter")
    energy = reg(DataType.FLOAT64, D, 105, "energy")  # ends on the reply's last word
    power = Register(9, "t", 0, "power", None, DataType.INT32, FunctionCode.READ_INPUT_REGISTERS)
    holding = ReadBlock(FunctionCode.READ_HOLDING_REGISTERS, 100, 9, (temperature, voltage, counter, energy))
    inputs = ReadBlock(FunctionCode.READ_INPUT_REGISTERS, 0, 2, (power,))
    values, invalid = decode_block_values([
        (holding, [0x02EE, 0x199A, 0x4366, 0x3412, 0x7856, 0x0000, 0x0000, 0x0000, 0x5940]),
        (inputs, [0xFFFF, 0xFFFE]),
    ])
    assert invalid == []
    assert [(i, r.measurement, v) for i, r, v in values] == [
        (0, "temperature", 35.0), (0, "voltage", 230.10000610351562), (0, "counter", 305419896.0),
        (0, "energy", 100.0), (1, "power", -2.0)]


def test_every_value_missing_from_a_short_reply_is_reported():
    a = reg(DataType.UINT16, address=0, name="a")
    b = reg(DataType.FLOAT32, address=1, name="b")
    c = reg(DataType.UINT16, address=3, name="c")
    block = ReadBlock(FunctionCode.READ_HOLDING_REGISTERS, 0, 4, (a, b, c))
    values, invalid = decode_block_values([(block, [7, 0x4366])])
    assert [(r.measurement, v) for _, r, v in values] == [("a", 7.0)]
    assert invalid == ["b: no data", "c: no data"]


def test_a_scale_factor_outside_the_blocks_read_is_named():
    w = reg(DataType.INT16, address=0, name="W", scale_factor="W_SF")
    block = ReadBlock(FunctionCode.READ_HOLDING_REGISTERS, 0, 1, (w,))
    values, invalid = decode_block_values([(block, [1234])])
    assert values == [] and invalid == ["W: scale factor W_SF was not read"]
