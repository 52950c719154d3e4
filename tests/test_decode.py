"""Decoding: golden tables for every type and order, boundaries, NaN, scaling."""

from __future__ import annotations

import math
import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client.mixin import ModbusClientMixin

from poller.decode import (
    DecodeError,
    apply_scaling,
    check_scale_factor,
    decode_block_values,
    decode_raw,
    encode_raw,
    plain_block_values,
)
from poller.model import ByteOrder, DataType, FunctionCode, ReadBlock, Register
from tests.test_sink import same_lines
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


# --------------------------------------------------------------------------- the fast path against a reference
# decode_block_values unpacks a whole block with precompiled structs and skips apply_scaling for
# plain values; this is the straightforward form it replaced (one value at a time), kept here as
# the reference: both must give the same values (same float, same repr), in the same order, and
# the same messages, for any block, plan, reply and register map.

_REFERENCE_UNPACK = {dt: struct.Struct(">" + dt.struct_code).unpack_from for dt in DataType}


def reference_decode_block_values(block_words):
    raws = {}
    for block, words in block_words:
        data = struct.pack(f">{len(words)}H", *words)
        for r in block.registers:
            start = r.address - block.address
            if start + r.data_type.words > len(words):
                continue
            if r.byte_order is ByteOrder.ABCD:
                raws[r.measurement] = _REFERENCE_UNPACK[r.data_type](data, 2 * start)[0]
            else:
                raws[r.measurement] = decode_raw(r, words, start)
    sf_registers = {r.scale_factor for b, _ in block_words for r in b.registers if r.scale_factor}
    by_name = {r.measurement: r for b, _ in block_words for r in b.registers if r.measurement in sf_registers}
    values, invalid = [], []
    for index, (block, _) in enumerate(block_words):
        for r in block.registers:
            raw = raws.get(r.measurement)
            if raw is None:
                invalid.append(f"{r.measurement}: no data")
                continue
            try:
                sf = None
                if r.scale_factor is not None:
                    if r.scale_factor not in raws:
                        raise DecodeError(f"{r.measurement}: scale factor {r.scale_factor} was not read")
                    sf = check_scale_factor(by_name[r.scale_factor], raws[r.scale_factor])
                values.append((index, r, apply_scaling(r, raw, sf)))
            except DecodeError as exc:
                invalid.append(str(exc))
    return values, invalid


def outcome(decode, block_words):
    """What a decoder makes of the blocks: values as (block, register id, type, repr), or its error."""
    try:
        values, invalid = decode(block_words)
    except Exception as exc:  # the reference's own errors (a register before its block's start) count too
        return type(exc), str(exc)
    return [(i, id(r), type(v), repr(v)) for i, r, v in values], invalid


def check_plain(block_words):
    """The fast way (plain_block_values: every block plain, every value finite) gives, when it
    takes a meter's blocks at all, exactly the reference's values, none left out."""
    plain = plain_block_values(block_words)
    if plain is None:
        return
    values, invalid = reference_decode_block_values(block_words)
    assert invalid == []
    fast = [(i, id(r), type(v), repr(v)) for i, (b, _) in enumerate(block_words)
            for r, v in zip(b.registers, plain[i], strict=True)]
    assert fast == [(i, id(r), type(v), repr(v)) for i, r, v in values]


# Words that make the interesting values: NaN, infinities, zero, -0.0, sentinels, sign bits.
WORD = st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0x0000, 0xFFFF, 0x8000, 0x7FFF, 0x7FC0, 0x7F80, 0xFF80,
                                                          0xFFC0, 0x7FF0, 0xFFF0, 0x7FF8, 0x0001, 0x000A]))
NAMES = ["a", "b", "c", "d", "e", "f", "g", "a_SF", "b_SF", "W_SF"]


@st.composite
def registers(draw, rid):
    data_type = draw(st.sampled_from(list(DataType)))
    lo, hi = data_type.raw_range or (-1e6, 1e6)
    plain = draw(st.booleans())
    return Register(
        rid, "t", draw(st.integers(0, 24)), draw(st.sampled_from(NAMES) if not plain else st.just(f"r{rid}")), None,
        data_type, draw(st.sampled_from([FunctionCode.READ_HOLDING_REGISTERS, FunctionCode.READ_INPUT_REGISTERS])),
        draw(st.sampled_from(list(ByteOrder))),
        scale=1.0 if plain else draw(st.sampled_from([1.0, 1, 0.1, 0.01, 10.0, -1.0, 2.5, 1e-05, 100 / 65535])),
        offset=0.0 if plain else draw(st.sampled_from([0.0, -0.0, -40.0, 1.5])),
        scale_factor=None if plain else draw(st.none() | st.sampled_from(NAMES[7:] + ["missing"])),
        not_available=None if plain else draw(st.none() | st.sampled_from([0, 65535, -32768, -1, 0.0, lo, hi])),
    )


@st.composite
def replies(draw, blocks):
    """Each block's reply: usually complete, sometimes longer, or cut short at a register's start
    or end, or one word before or after it."""
    out = []
    for b in blocks:
        cuts = {r.address - b.address + d for r in b.registers for d in (0, r.words - 1, r.words, r.words + 1)}
        n = draw(st.sampled_from([b.count] * 4 + [b.count + 2] + sorted(c for c in cuts if 0 <= c < b.count)))
        out.append((b, draw(st.lists(WORD, min_size=n, max_size=n))))
    return out


@settings(max_examples=200)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=14, unique=True).flatmap(
           lambda ids: st.tuples(*(registers(rid) for rid in ids))),
       st.integers(1, 125), st.integers(0, 8), st.booleans(), st.data())
def test_planned_blocks_decode_as_the_reference_does(regs, max_block, max_gap, one_per_value, data):
    from poller.plan import PlanError, plan_reads

    try:
        blocks = plan_reads(regs, max_block, max_gap, one_per_value)
    except PlanError:
        return
    block_words = data.draw(replies(blocks))
    assert outcome(decode_block_values, block_words) == outcome(reference_decode_block_values, block_words)
    check_plain(block_words)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 30), st.lists(st.integers(0, 10**6), max_size=8, unique=True)),
                min_size=1, max_size=3), st.data())
def test_blocks_made_by_hand_decode_as_the_reference_does(specs, data):
    """Blocks not made by the planner: registers in any order, overlapping, outside the block."""
    blocks = []
    for address, ids in specs:
        regs = tuple(data.draw(registers(rid)) for rid in ids)
        count = data.draw(st.integers(0, 30))
        blocks.append(ReadBlock(FunctionCode.READ_HOLDING_REGISTERS, address, count, regs))
    block_words = data.draw(replies(blocks))
    assert outcome(decode_block_values, block_words) == outcome(reference_decode_block_values, block_words)
    check_plain(block_words)


@given(st.sampled_from(list(DataType)), st.sampled_from(list(ByteOrder)), st.integers(1, 30), st.data())
def test_a_block_of_one_type_and_order_decodes_as_the_reference_does(data_type, order, n, data):
    """The planner's block of n contiguous values (the meters' common case), every type and order."""
    from poller.plan import plan_reads

    regs = [reg(data_type, order, address=10 + i * data_type.words, name=f"v{i}") for i in range(n)]
    (block,) = plan_reads([replace(r, id=i) for i, r in enumerate(regs)])
    words = data.draw(st.lists(WORD, min_size=block.count, max_size=block.count))
    got = outcome(decode_block_values, [(block, words)])
    assert got == outcome(reference_decode_block_values, [(block, words)])
    assert len(got[0]) + len(got[1]) == n
    # and the lines written of them: `<key> value=<the float as repr writes it> <ms>`
    from poller.sink import reading_lines

    keys = {r.id: f"v{r.id},meter=1" for r in block.registers}
    lines = reading_lines({r: f"{k} value=" for r, k in keys.items()}, decode_block_values([(block, words)])[0],
                          [1_700_000_000_123])
    assert same_lines(lines, [f"{keys[r.id]} value={v!r} 1700000000123" for _, r, v in
                              reference_decode_block_values([(block, words)])[0]])
    check_plain([(block, words)])
    if (plain := plain_block_values([(block, words)])) is not None:  # the fast way writes the same lines
        from poller.sink import block_lines

        assert block_lines([f"{keys[r.id]} value=" for r in block.registers], plain[0], 1_700_000_000_123) == lines


def test_a_reply_cut_at_a_value_s_last_word_still_has_that_value():
    a, b, c = reg(DataType.UINT16, name="a"), reg(DataType.UINT16, address=1, name="b"), reg(
        DataType.FLOAT32, C, address=2, name="c")
    block = ReadBlock(FunctionCode.READ_HOLDING_REGISTERS, 0, 4, (a, b, c))
    for words, kept in (([1, 2, 0x199A], [1.0, 2.0]), ([1, 2], [1.0, 2.0]), ([1], [1.0])):
        values, invalid = decode_block_values([(block, words)])
        assert [v for _, _, v in values] == kept and invalid == ["b: no data", "c: no data"][len(kept) - 1:]


@pytest.mark.parametrize(("register", "value"), [
    (reg(DataType.INT16, scale=2.0), 14.0), (reg(DataType.INT16, offset=1.0), 8.0),
    (reg(DataType.INT16, offset=-0.5), 6.5), (reg(DataType.INT16, scale=0.1), 0.7),
    (reg(DataType.INT16, not_available=7), None), (reg(DataType.INT16, not_available=8), 7.0),
])
def test_a_block_of_one_scaled_value_is_scaled(register, value):
    """A value with a scale, an offset or a sentinel is never taken as it arrives."""
    values, invalid = decode_block_values([(ReadBlock(FunctionCode.READ_HOLDING_REGISTERS, 0, 1, (register,)), [7])])
    assert ([v for _, _, v in values], len(invalid)) == (([value], 0) if value is not None else ([], 1))


# The promises of the fast path, pinned (they change no value, so only this sees them): a planned
# block's reply is unpacked whole with the layout made when it was planned, and its plain values
# are taken as they arrive; scaled ones go through apply_scaling, but not value by value unpacking.

def never(*args, **kwargs):
    raise AssertionError("the value-by-value path")


def fast_only(monkeypatch, scaled_too=False):
    import poller.decode

    for name in ("_raws_one_by_one", "decode_raw", *(() if scaled_too else ("apply_scaling",))):
        monkeypatch.setattr(poller.decode, name, never)
    monkeypatch.setattr(poller.decode.BlockLayout, "__init__", never)


def planned(regs, max_gap=0):
    from poller.plan import plan_reads

    return plan_reads([replace(r, id=i) for i, r in enumerate(regs)], max_gap=max_gap)


def test_plain_values_of_every_type_and_order_are_unpacked_whole(monkeypatch):
    regs, words, expected = [], [], []
    for data_type in DataType:
        for order in ByteOrder:
            regs.append(reg(data_type, order, address=len(words), name=f"{data_type.name}_{order}"))
            value = -2.5 if data_type.is_float else (data_type.raw_range[1] - 5)
            words += encode_raw(regs[-1], value)
            expected.append(value)
    (block,) = planned(regs)
    assert len(block.layout.passes) == 4 and block.layout.order is not None  # one pass per byte order
    fast_only(monkeypatch)
    for reply in (words, words + [0xFFFF, 0xFFFF]):  # a longer reply is unpacked whole too
        values, invalid = decode_block_values([(block, reply)])
        assert invalid == [] and [(r.measurement, v) for _, r, v in values] == [
            (r.measurement, float(e)) for r, e in zip(regs, expected, strict=True)]
        assert all(type(v) is float for _, _, v in values)


def test_a_meter_s_blocks_of_plain_values_are_unpacked_whole(monkeypatch):
    """Two blocks, with gaps, as a meter's plan has them: one pass each, already in order."""
    regs = [reg(DataType.FLOAT32, address=a, name=f"f{a}") for a in (0, 2, 6, 100, 104)]
    blocks = planned(regs, max_gap=4)
    assert [(b.address, b.count, len(b.layout.passes), b.layout.order) for b in blocks] == [
        (0, 8, 1, None), (100, 6, 1, None)]
    words = [0x4366, 0x199A] * 4, [0xC49A, 0x5000, 0, 0, 0x4059, 0]
    fast_only(monkeypatch)
    values, invalid = decode_block_values(list(zip(blocks, words, strict=True)))
    assert invalid == [] and [(i, v) for i, _, v in values] == [
        (0, 230.10000610351562), (0, 230.10000610351562), (0, 230.10000610351562), (1, -1234.5), (1, 3.390625)]


def test_scaled_and_scale_factor_blocks_are_unpacked_whole_too(monkeypatch):
    w = reg(DataType.INT16, address=0, name="W", scale_factor="W_SF")
    w_sf = reg(DataType.INT16, address=1, name="W_SF")
    volts = reg(DataType.UINT16, address=10, name="V", scale=0.1)
    linked, scaled = planned([w, w_sf, volts])
    fast_only(monkeypatch, scaled_too=True)
    assert decode_block_values([(scaled, [2301])]) == ([(0, scaled.registers[0], 230.1)], [])
    values, invalid = decode_block_values([(linked, [1234, 0xFFFF]), (scaled, [2301])])
    assert invalid == [] and [v for _, _, v in values] == [123.4, -1.0, 230.1]


def test_a_block_made_by_hand_is_laid_out_by_address_whatever_the_order_of_its_registers():
    from poller.decode import BlockLayout

    regs = tuple(reg(DataType.FLOAT32, address=a, name=f"f{a}") for a in (4, 0, 2))
    block = ReadBlock(FunctionCode.READ_HOLDING_REGISTERS, 0, 6, regs)
    layout = BlockLayout(block)
    assert (len(layout.passes), layout.words) == (2, 6)  # 4, then 0 and 2: one pass would go back
    values, _ = decode_block_values([(block, [0x4366, 0x199A, 0xC49A, 0x5000, 0x4059, 0])])
    assert [(r.address, v) for _, r, v in values] == [(4, 3.390625), (0, 230.10000610351562), (2, -1234.5)]
