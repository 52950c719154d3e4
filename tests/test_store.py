"""Rows -> objects: good rows load, each bad row is reported with its reason and skipped."""

from __future__ import annotations

import math
import socket
import struct
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from croniter import croniter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.decode import DecodeError, apply_scaling, decode_block_values, encode_raw
from poller.model import ByteOrder, DataType, FunctionCode, ReadBlock, Register
from poller.plan import plan_reads
from poller.store import build_configuration, host_problem, load_configuration

TYPE = {"name": "m", "max_block": 125, "max_gap": 16, "timeout_s": 3.0, "request_pause_ms": 0}


def regrow(rid, address, name, data_type=3, fc=4, **kw):
    row = {"id": rid, "type": "m", "register_address": address, "measurement_name": name, "data_unit": "V",
           "data_type": data_type, "function_code": fc, "byte_order": "ABCD", "scale": 1.0, "value_offset": 0.0,
           "scale_factor": None, "not_available": None}
    row.update(kw)
    return row


def meterrow(mid, type_="m", **kw):
    row = {"id": mid, "host": "10.0.0.1", "port": 502, "slave_address": 1, "type": type_,
           "description": None, "poll_cron": None, "enabled": True}
    row.update(kw)
    return row


def test_good_rows_become_typed_objects():
    config = build_configuration([TYPE], [regrow(1, 0, "v", byte_order="cdab"), regrow(2, 2, "e", 5, 3)],
                                 [meterrow(1)])
    assert config.problems == ()
    (m,) = config.meters
    assert [r.data_type for r in m.device_type.registers] == [DataType.FLOAT32, DataType.UINT32]
    assert m.device_type.registers[0].byte_order is ByteOrder.CDAB


@pytest.mark.parametrize(("row", "reason"), [
    (regrow(2, 2, "bad", data_type=9), "data_type 9 is unknown (known: 1 int16, 2 int32, 3 float32"),
    (regrow(2, 2, "bad", fc=6), "function_code 6 is not a read"),
    (regrow(2, 2, "bad", data_type=1, byte_order="CDAB"), "16-bit value has no words to swap"),
    (regrow(2, 2, "bad", byte_order="XYZW"), "byte_order 'XYZW' is unknown"),
    (regrow(2, 65535, "bad"), "register_address 65535 outside 0..65535 for a 2-register value"),
    (regrow(2, 2, "bad", scale=0.0), "scale 0.0 must be a finite, non-zero number"),
    (regrow(2, 2, "bad", scale_factor="nope"), "scale_factor 'nope' is not a register of this type"),
    (regrow(2, 2, "bad", data_type=1, not_available=70000), "not_available 70000 is not a int16 value"),
])
def test_a_bad_register_row_is_reported_and_skipped(row, reason):
    config = build_configuration([TYPE], [regrow(1, 0, "v"), row], [meterrow(1)])
    (problem,) = config.problems
    assert problem.startswith("registers.id 2 (m.bad): ") and reason in problem
    (m,) = config.meters
    assert [r.measurement for r in m.device_type.registers] == ["v"]


@pytest.mark.parametrize(("row", "reason"), [
    (meterrow(2, type_="nope"), "type 'nope' has no device_types row"),
    (meterrow(2, poll_cron="every minute"), "poll_cron 'every minute' is not a crontab expression"),
    (meterrow(2, port=0), "port 0 outside 1..65535"),
    (meterrow(2, slave_address=256), "slave_address 256 outside 0..255"),
])
def test_a_bad_meter_row_is_reported_and_the_others_still_load(row, reason):
    config = build_configuration([TYPE], [regrow(1, 0, "v")], [meterrow(1), row])
    (problem,) = config.problems
    assert problem.startswith("energy_meters.id 2 ") and reason in problem
    assert [m.id for m in config.meters] == [1]


DB_REJECTS = [
    ("INSERT INTO energy_meters (host, port, slave_address, type) VALUES ('h', 70000, 1, 'virtual_meter')",
     "energy_meters_port_check"),
    ("INSERT INTO energy_meters (host, port, slave_address, type) VALUES ('h', 502, 256, 'virtual_meter')",
     "energy_meters_slave_address_check"),
    ("INSERT INTO energy_meters (host, port, slave_address, type) VALUES ('h', 502, 1, 'no_such_type')",
     "energy_meters_type_fkey"),
    ("INSERT INTO registers (type, register_address, measurement_name, data_type, function_code) "
     "VALUES ('virtual_meter', 70000, 'x', 1, 3)", "violates check constraint \"registers_"),
    ("INSERT INTO registers (type, register_address, measurement_name, data_type, function_code) "
     "VALUES ('virtual_meter', 65535, 'x', 3, 3)", "registers_address_fits"),
    ("INSERT INTO registers (type, register_address, measurement_name, data_type, function_code) "
     "VALUES ('virtual_meter', 1, 'x', 1, 6)", "registers_function_code"),
    ("INSERT INTO registers (type, register_address, measurement_name, data_type, function_code) "
     "VALUES ('virtual_meter', 1, 'voltage_l1', 1, 3)", "registers_type_measurement_name_key"),
    ("INSERT INTO registers (type, register_address, measurement_name, data_type, function_code) "
     "VALUES ('virtual_meter', 1, 'x', 9, 3)", "registers_data_type_fkey"),
    ("INSERT INTO registers (type, register_address, measurement_name, data_type, byte_order) "
     "VALUES ('virtual_meter', 1, 'x', 1, 'CDAB')", "registers_16bit_byte_order"),
]


@pytest.mark.parametrize(("sql", "constraint"), DB_REJECTS)
def test_the_database_rejects_what_can_never_work(postgres, database, sql, constraint):
    out = postgres.psql(database, "-c", sql, check=False)
    assert out.returncode != 0
    assert constraint in out.stderr


def test_seed_loads_without_problems(postgres, database):
    config = postgres.configuration(database)
    assert config.problems == ()
    (m,) = config.meters
    assert (m.host, m.port, m.slave_address, m.device_type.name) == ("virtual_modbustcp_server", 502, 1,
                                                                      "virtual_meter")
    types = {r.data_type for r in m.device_type.registers}
    fcs = {r.function_code for r in m.device_type.registers}
    assert {DataType.INT16, DataType.INT32, DataType.FLOAT32} <= types and len(fcs) == 2


def test_every_change_bumps_the_config_version(postgres, database):
    from poller.store import config_version

    conn = postgres.connect(database)
    try:
        before = config_version(conn)
        postgres.psql(database, "-c", "UPDATE energy_meters SET description = 'x'")
        after_meter = config_version(conn)
        postgres.psql(database, "-c", "UPDATE registers SET scale = 1 WHERE false")  # a statement, no rows
        after_noop = config_version(conn)
        postgres.psql(database, "-c", "DELETE FROM registers WHERE measurement_name = 'temperature'")
        after_register = config_version(conn)
        postgres.psql(database, "-c", "DROP TABLE config_version CASCADE")
        assert config_version(conn) is None  # an older database: the poller reloads every cycle
        assert load_configuration(conn).problems == ()
    finally:
        conn.close()
    assert before is not None and before < after_meter <= after_noop < after_register


# --- every column checked where it enters ----------------------------------------------------

@pytest.mark.parametrize(("row", "reason"), [
    (regrow(2, 2, "bad", data_type=1, not_available=Decimal("Infinity")), "not_available Infinity is not a raw value"),
    (regrow(2, 2, "bad", data_type=2, not_available=Decimal("-Infinity")), "give a finite int32 value or NULL"),
    (regrow(2, 2, "bad", data_type=1, not_available=Decimal("NaN")), "not_available NaN is not a raw value"),
    (regrow(2, 2, "bad", not_available=Decimal("Infinity")), "not_available Infinity is not a raw value"),
    (regrow(2, 2, "bad", data_type=1, not_available=Decimal("1.5")), "not_available 1.5 is not a int16 value"),
    (regrow(2, 2, "bad", data_type=5, not_available=Decimal("-1")), "is not a uint32 value (0..4294967295)"),
    (regrow(2, 2, "bad", not_available=Decimal("1e39")), "not_available 1E+39 is not a float32 value"),
    (regrow(2, 2, "bad", data_type=8, not_available=Decimal("1e309")), "is not a float64 value"),
    (regrow(2, 2, "bad", not_available=Decimal("1e-50")), "not so small it rounds to 0"),
    (regrow(2, 2, "bad", not_available="n/a"), "not_available 'n/a' is not a number"),
    (regrow(2, 2, "bad", scale=1e-320), "scale 1e-320 must be a finite, non-zero number with 1e-09 <= |scale|"),
    (regrow(2, 2, "bad", scale=-2e9), "scale -2000000000.0 must be a finite, non-zero number"),
    (regrow(2, 2, "bad", scale=float("nan")), "scale nan must be"),
    (regrow(2, 2, "bad", value_offset=1e16), "value_offset 1e+16 must be finite, with |value_offset| <= 1e+15"),
    (regrow(2, 2, "bad", value_offset=float("-inf")), "value_offset -inf must be finite"),
    (regrow(2, 2, "bad", register_address="12"), "register_address '12' is not a whole number"),
    (regrow(2, 2, "bad", register_address=None), "register_address None is not a whole number"),
    (regrow(2, 2, "bad", scale="2"), "scale '2' is not a number"),
    (regrow(2, 2, "bad", data_unit=5), "data_unit 5 is not text"),
    (regrow(2, 2, "bad", scale_factor=7), "scale_factor 7 is not a measurement_name"),
    (regrow(2, 2, "bad", data_type=None), "data_type None is unknown"),
    (regrow(2, 2, "bad", function_code=None), "function_code None is not a read"),
    (regrow(2, 2, "bad", byte_order=3), "byte_order 3 is unknown"),
])
def test_a_register_value_that_could_fail_later_is_refused_at_load(row, reason):
    config = build_configuration([TYPE], [regrow(1, 0, "v"), row], [meterrow(1)])
    (problem,) = config.problems
    assert problem.startswith("registers.id 2 (m.bad): ") and reason in problem, problem
    (m,) = config.meters
    assert [r.measurement for r in m.device_type.registers] == ["v"]


def test_a_bad_measurement_name_is_refused():
    config = build_configuration([TYPE], [regrow(1, 0, "v"), regrow(2, 2, "a b\nc")], [meterrow(1)])
    (problem,) = config.problems
    assert problem.startswith("registers.id 2 (m.a b\nc): measurement_name 'a b\\nc' must start with a letter")


@pytest.mark.parametrize(("data_type", "sentinel", "kept"), [
    (1, Decimal("-32768"), -32768), (4, Decimal("65535"), 65535), (5, Decimal("4294967295"), 4294967295),
    (7, Decimal("18446744073709551615"), 18446744073709551615), (1, Decimal("-32768.000"), -32768),
    (3, Decimal("-1.1"), struct.unpack(">f", struct.pack(">f", -1.1))[0]),  # as a float32 decodes
    (3, Decimal("3.4028234663852886e38"), 3.4028234663852886e38), (8, Decimal("-1.1"), -1.1),
])
def test_not_available_is_kept_as_decode_compares_it(data_type, sentinel, kept):
    config = build_configuration([TYPE], [regrow(1, 0, "v", data_type=data_type, not_available=sentinel)],
                                 [meterrow(1)])
    assert config.problems == ()
    (reg,) = config.meters[0].device_type.registers
    assert reg.not_available == kept and type(reg.not_available) is type(kept)
    block = ReadBlock(reg.function_code, 0, reg.words, (reg,))
    words = encode_raw(reg, kept)
    values, invalid = decode_block_values([(block, words)])
    assert values == [] and invalid == [f"v: not available (raw {kept})"]


def test_scale_and_offset_at_the_documented_limits_load():
    rows = [regrow(1, 0, "a", scale=1e-9), regrow(2, 2, "b", scale=-1e9), regrow(3, 4, "c", value_offset=-1e15),
            regrow(4, 6, "d", data_type=7, scale=1e9, value_offset=1e15)]
    config = build_configuration([TYPE], rows, [meterrow(1)])
    assert config.problems == ()
    assert [r.scale for r in config.device_types["m"].registers] == [1e-9, -1e9, 1.0, 1e9]


@pytest.mark.parametrize(("column", "value", "reason", "used"), [
    ("timeout_s", float("nan"), "timeout_s nan outside (0, 60]; using 3", 3.0),
    ("timeout_s", 0.0, "timeout_s 0.0 outside (0, 60]; using 3", 3.0),
    ("timeout_s", 61, "timeout_s 61 outside (0, 60]; using 3", 3.0),
    ("timeout_s", "3", "timeout_s '3' outside (0, 60]; using 3", 3.0),
    ("max_block", 0, "max_block 0 outside 1..125; using 125", 125),
    ("max_block", 126, "max_block 126 outside 1..125; using 125", 125),
    ("max_block", 2.5, "max_block 2.5 outside 1..125; using 125", 125),
    ("max_gap", -1, "max_gap -1 outside 0..124; using 16", 16),
    ("max_gap", 125, "max_gap 125 outside 0..124; using 16", 16),
    ("request_pause_ms", -1, "request_pause_ms -1 outside 0..10000; using 0", 0.0),
    ("request_pause_ms", 10001, "request_pause_ms 10001 outside 0..10000; using 0", 0.0),
])
def test_device_type_limits_out_of_range_fall_back_to_the_default_with_a_problem(column, value, reason, used):
    config = build_configuration([{**TYPE, column: value}], [regrow(1, 0, "v")], [meterrow(1)])
    assert config.problems == (f"device_types m: {reason}",)
    dtype = config.device_types["m"]
    attr = {"request_pause_ms": "request_pause_s"}.get(column, column)
    assert getattr(dtype, attr) == used and [m.id for m in config.meters] == [1]


def test_device_type_limits_at_the_edges_are_kept():
    row = {"name": "m", "max_block": 1, "max_gap": 124, "timeout_s": 60.0, "request_pause_ms": 10000}
    config = build_configuration([row], [regrow(1, 0, "v", data_type=1)], [meterrow(1)])
    assert config.problems == ()
    d = config.device_types["m"]
    assert (d.max_block, d.max_gap, d.timeout_s, d.request_pause_s) == (1, 124, 60.0, 10.0)
    nulls = build_configuration([{"name": "m"}], [regrow(1, 0, "v")], [meterrow(1)]).device_types["m"]
    assert (nulls.max_block, nulls.max_gap, nulls.timeout_s, nulls.request_pause_s) == (125, 16, 3.0, 0.0)


@pytest.mark.parametrize(("row", "reason"), [
    (meterrow(2, poll_cron="0 0 30 2 *"), "poll_cron '0 0 30 2 *' never fires"),
    (meterrow(2, poll_cron="0 0 31 4 *"), "poll_cron '0 0 31 4 *' never fires"),
    (meterrow(2, poll_cron="* * * * * * *"), "it has 7 fields"),
    (meterrow(2, host="192.168..10"), "host '192.168..10' has an empty label"),
    (meterrow(2, host=".meter"), "host '.meter' has an empty label"),
    (meterrow(2, host="a" * 64), "has a label of 64 characters (at most 63)"),
    (meterrow(2, host="   "), "host '' is empty"),
    (meterrow(2, host="meter 1"), "host 'meter 1' contains a space or control character (' ')"),
    (meterrow(2, host="meter\n1"), "contains a space or control character ('\\n')"),
    (meterrow(2, host="10.0.0.1:502"), "contains ':': a host name holds letters"),
    (meterrow(2, host=5), "host 5 is not text"),
    (meterrow(2, port="502"), "port '502' is not a whole number"),
    (meterrow(2, port=None), "port None is not a whole number"),
    (meterrow(2, slave_address=1.5), "slave_address 1.5 is not a whole number"),
    (meterrow(2, description=3), "description 3 is not text"),
    (meterrow(2, poll_cron=5), "poll_cron 5 is not text"),
])
def test_a_meter_value_that_could_fail_later_is_refused_at_load(row, reason):
    config = build_configuration([TYPE], [regrow(1, 0, "v")], [meterrow(1), row])
    (problem,) = config.problems
    assert problem.startswith("energy_meters.id 2 ") and reason in problem and problem.endswith("; skipped")
    assert [m.id for m in config.meters] == [1]


def test_a_type_that_cannot_be_loaded_costs_its_meters_with_a_message():
    config = build_configuration([TYPE, {"name": 7}], [regrow(1, 0, "v")], [meterrow(1), meterrow(2, type_=7)])
    assert [m.id for m in config.meters] == [1]
    assert config.problems[0] == "device_types 7: the name is not text; skipped with its meters"
    assert config.problems[1].startswith("energy_meters.id 2 ") and "could not be loaded" in config.problems[1]


# --- hosts: what the socket module can connect to ---------------------------------------------

@pytest.mark.parametrize("host", ["10.0.0.1", "::1", "fe80::1%eth0", "2001:db8::5", "virtual_modbustcp_server",
                                  "meter-1.example.com", "meter-1.example.com.", "zähler.local", "a" * 63,
                                  ".".join(["a" * 63] * 3 + ["b" * 61])])
def test_hosts_that_can_be_connected_to_are_accepted(host):
    assert host_problem(host) is None


@pytest.mark.parametrize(("host", "reason"), [
    ("192.168..10", "empty label"), (".meter", "empty label"), ("meter..", "empty label"),
    ("a" * 64, "label of 64 characters"), (".".join(["a" * 63] * 4), "longer than 253"),
    ("x" * 2000, "2000 characters long"), ("tcp://h", "contains ':'"), ("h/1", "contains '/'"),
    ("[::1]", "contains '['"), ("a\tb", "control character"), ("a\x00b", "control character"),
    ("a\u2028b", "control character"), ("a\u200bb", "control character"), ("", "is empty"),
    ("m.\u2ff0", "cannot be encoded"), ("\u00e4" * 60, "longer than 63 characters once encoded"),
])
def test_hosts_that_cannot_be_connected_to_are_refused(host, reason):
    problem = host_problem(host)
    assert problem is not None and reason in problem, problem


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=80),
                 st.lists(st.text(st.characters(codec="utf-8"), max_size=70), min_size=1, max_size=6).map(".".join),
                 st.ip_addresses().map(str)))
def test_an_accepted_host_never_makes_the_socket_module_raise_anything_but_a_lookup_error(host):
    if host_problem(host) is not None:
        return
    try:
        socket.getaddrinfo(host, 502, flags=socket.AI_NUMERICHOST)  # encodes as a connect does, no DNS
    except socket.gaierror:
        pass  # a name: resolving it is the device's business (a failed read), not the load's
    labels = host.encode("idna").rstrip(b".").split(b".")
    assert all(1 <= len(label) <= 63 for label in labels) and len(b".".join(labels)) <= 253


# --- containment by construction: nothing a row holds raises out of the load ------------------

ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                      st.decimals(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                      st.lists(st.integers(), max_size=2), st.just(object()))


def mutate(row, data):
    """`row` with a few of its values replaced by anything at all."""
    row = dict(row)
    for key in data.draw(st.lists(st.sampled_from(sorted(row)), max_size=3, unique=True)):
        row[key] = data.draw(ANY_VALUE)
    if data.draw(st.booleans()) and len(row) > 1 and data.draw(st.integers(0, 9)) == 0:
        row.pop(data.draw(st.sampled_from(sorted(row))))  # an older schema without that column
    return row


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_no_value_in_any_column_raises_out_of_the_load(data):
    types = [mutate(TYPE, data), {"name": "ok"}]
    registers = [mutate(regrow(i, 2 * i, f"r{i}", data_type=1 + i % 8), data) for i in range(1, 5)]
    registers.append(regrow(9, 100, "good", type="ok"))
    meters = [mutate(meterrow(i), data) for i in range(1, 4)] + [meterrow(9, type_="ok")]
    config = build_configuration(types, registers, meters)  # must not raise
    assert 9 in [m.id for m in config.meters]  # the healthy meter beside them always loads
    loaded_regs = [r.id for d in config.device_types.values() for r in d.registers]
    for row in registers:
        rid = row.get("id")
        if not any(same_id(rid, loaded) for loaded in loaded_regs):
            assert any(p.startswith(f"registers.id {str(rid)[:80]}") or ("registers of type " in p)
                       or p.startswith("device_types ") for p in config.problems), (row, config.problems)
    loaded = [m.id for m in config.meters]
    for row in meters:
        if not any(same_id(row.get("id"), mid) for mid in loaded):
            assert any(p.startswith(f"energy_meters.id {str(row.get('id'))[:80]}") for p in config.problems)
    assert_usable(config)


def same_id(value, loaded: int) -> bool:
    """`value` (from a row) is the id `loaded` (an id of Decimal('sNaN') cannot even be compared)."""
    try:
        return not isinstance(value, bool) and value == loaded
    except ArithmeticError:
        return False


def assert_usable(config, raw=None):
    """Every meter can be planned, every register decodes any words into a finite value or a DecodeError."""
    for m in config.meters:
        m.host.encode("idna")  # what a connect does with it
        if m.poll_cron is not None:  # 5 or 6 fields, and it fires
            assert len(m.poll_cron.split()) in (5, 6)
            croniter(m.poll_cron, datetime.now(UTC)).get_next(datetime)
        d = m.device_type
        blocks = plan_reads(d.registers, d.max_block, d.max_gap)
        assert sorted(r.id for b in blocks for r in b.registers) == sorted(r.id for r in d.registers)
        assert 0 < d.timeout_s <= 60 and 0 <= d.request_pause_s <= 10
        for words_of in RAW_WORDS if raw is None else raw:
            values, invalid = decode_block_values([(b, words_of(b.count)) for b in blocks])
            assert all(math.isfinite(v) for _, _, v in values)
            assert len(values) + len(invalid) == sum(len(b.registers) for b in blocks)


RAW_WORDS = [lambda n: [0] * n, lambda n: [0xFFFF] * n, lambda n: [0x7FFF] + [0xFFFF] * (n - 1),
             lambda n: [0x8000] + [0] * (n - 1), lambda n: [0x7F80, 0] * (n // 2) + [0] * (n % 2),
             lambda n: [0x0001] * n, lambda n: [0x7FEF] + [0xFFFF] * (n - 1), lambda n: [0x0000, 0x0001] * n]


@settings(max_examples=300, deadline=None)
@given(scale=st.floats(allow_nan=False, allow_infinity=False).filter(bool),
       offset=st.floats(allow_nan=False, allow_infinity=False),
       data_type=st.sampled_from(list(DataType)), order=st.sampled_from(list(ByteOrder)),
       sf=st.one_of(st.none(), st.integers(-32768, 32767)),
       words=st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4))
def test_decoding_raises_nothing_but_decode_error_for_any_finite_register(scale, offset, data_type, order, sf, words):
    """Even a Register built around the store (scale 1e-320, offset 1e308) decodes or says DecodeError."""
    if data_type.words == 1 and order not in (ByteOrder.ABCD, ByteOrder.BADC):
        order = ByteOrder.ABCD
    regs = [Register(1, "t", 0, "v", None, data_type, FunctionCode.READ_HOLDING_REGISTERS, order, scale, offset,
                     "sf" if sf is not None else None),
            Register(2, "t", 4, "sf", None, DataType.INT16, FunctionCode.READ_HOLDING_REGISTERS)]
    block = ReadBlock(FunctionCode.READ_HOLDING_REGISTERS, 0, 5, tuple(regs))
    values, invalid = decode_block_values([(block, [*words, (sf or 0) & 0xFFFF])])
    assert all(math.isfinite(v) for _, _, v in values)
    for raw in (words[0], -words[0], 1.7e308, 2**64 - 1):
        try:
            assert math.isfinite(apply_scaling(regs[0], raw, sf if sf in range(-10, 11) else None))
        except DecodeError:
            pass


# --- object reuse: unchanged rows give the very same objects ---------------------------------

def test_unchanged_rows_give_back_the_very_same_objects():
    types = [TYPE, {**TYPE, "name": "n"}]
    regs = [regrow(1, 0, "v"), regrow(2, 0, "w", type="n")]
    meters = [meterrow(1), meterrow(2, type_="n")]
    first = build_configuration(types, regs, meters)
    assert build_configuration(types, regs, meters, previous=first) is first
    # a new meter: every other object is the same
    more = build_configuration(types, regs, [*meters, meterrow(3)], previous=first)
    assert more is not first and more.meters[:2] == first.meters
    assert all(a is b for a, b in zip(more.meters, first.meters, strict=False))
    assert more.device_types["m"] is first.device_types["m"] and more.meters[2].device_type is first.device_types["m"]
    # one register of type n changed: only n and its meter are new
    changed = build_configuration(types, [regs[0], regrow(2, 0, "w", type="n", scale=2.0)], meters, previous=first)
    assert changed.device_types["m"] is first.device_types["m"] and changed.meters[0] is first.meters[0]
    assert changed.device_types["n"] is not first.device_types["n"] and changed.meters[1] is not first.meters[1]
