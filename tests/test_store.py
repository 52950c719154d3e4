"""Rows -> objects: good rows load, each bad row is reported with its reason and skipped."""

from __future__ import annotations

import math
import os
import re
import socket
import struct
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from croniter import croniter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller import store
from poller.decode import DecodeError, apply_scaling, decode_block_values, encode_raw
from poller.model import BusAddress, ByteOrder, DataType, FunctionCode, ReadBlock, Register, SerialLine, Transport
from poller.plan import plan_reads
from poller.store import (
    Configuration,
    Loader,
    build_configuration,
    device_path_problem,
    host_problem,
    load_configuration,
)

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
    (regrow(2, 2, "bad", not_available=Decimal("1e39")), "not_available 1E+39 is not a float32 value (finite, "
     "|x| <= 3.40282e+38, and not so small it rounds to 0)"),
    (regrow(2, 2, "bad", data_type=8, not_available=Decimal("1e309")), "not_available 1E+309 is not a float64 value "
     "(finite, |x| <= 1.79769e+308, and not so small it rounds to 0)"),
    (regrow(2, 2, "bad", data_type=1, not_available=1.1), "not_available 1.1 is not a int16 value (-32768..32767)"),
    (regrow(2, 2, "bad", not_available=Decimal("1e-50")), "not so small it rounds to 0"),
    (regrow(2, 2, "bad", not_available="n/a"), "not_available 'n/a' is not a number"),
    (regrow(2, 2, "bad", scale=1e-320), "scale 1e-320 must be a finite, non-zero number with 1e-09 <= |scale|"),
    (regrow(2, 2, "bad", scale=-2e9), "scale -2000000000.0 must be a finite, non-zero number"),
    (regrow(2, 2, "bad", scale=float("nan")), "scale nan must be"),
    (regrow(2, 2, "bad", value_offset=1e16), "value_offset 1e+16 must be finite, with |value_offset| <= 1e+15"),
    (regrow(2, 2, "bad", value_offset=float("-inf")), "value_offset -inf must be finite"),
    (regrow(2, 2, "bad", value_offset="2"), "value_offset '2' is not a number"),
    (regrow(2, 2, "bad", scale=20.0e9), "scale 20000000000.0 must be a finite, non-zero number with 1e-09 <= |scale| "
     "<= 1e+09 (a scale_factor register or value_offset can take the rest)"),
    (regrow(2, 2, "bad", fc=16), "function_code 16 is not a read (3 read holding registers, 4 read input registers)"),
    (regrow(2, 2, "bad", data_type=4, byte_order="DCBA"), "a 16-bit value has no words to swap; byte_order DCBA is "
     "not possible (use ABCD or BADC)"),
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
    assert problem == ("registers.id 2 (m.a b\nc): measurement_name 'a b\\nc' must start with a letter or '_' and hold "
                       "only letters, digits, '_', '.' and '-'")


@pytest.mark.parametrize(("data_type", "sentinel", "kept"), [
    (1, Decimal("-32768"), -32768), (4, Decimal("65535"), 65535), (5, Decimal("4294967295"), 4294967295),
    (7, Decimal("18446744073709551615"), 18446744073709551615), (1, Decimal("-32768.000"), -32768),
    (3, Decimal("-1.1"), struct.unpack(">f", struct.pack(">f", -1.1))[0]),  # as a float32 decodes
    (3, Decimal("3.4028234663852886e38"), 3.4028234663852886e38), (8, Decimal("-1.1"), -1.1), (3, Decimal(0), 0.0),
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
    ("max_gap", 2.5, "max_gap 2.5 outside 0..124; using 16", 16),
    ("request_pause_ms", -1, "request_pause_ms -1 outside 0..10000; using 0", 0.0),
    ("request_pause_ms", 10001, "request_pause_ms 10001 outside 0..10000; using 0", 0.0),
    ("request_pause_ms", 2.5, "request_pause_ms 2.5 outside 0..10000; using 0", 0.0),
    ("connect_pause_ms", 60001, "connect_pause_ms 60001 outside 0..60000; using 0", 0.0),
    ("connect_pause_ms", 2.5, "connect_pause_ms 2.5 outside 0..60000; using 0", 0.0),
    ("close_after_poll", "yes", "close_after_poll 'yes' is not true or false; using false", False),
    ("single_value_reads", 1, "single_value_reads 1 is not true or false; using false", False),
])
def test_device_type_limits_out_of_range_fall_back_to_the_default_with_a_problem(column, value, reason, used):
    config = build_configuration([{**TYPE, column: value}], [regrow(1, 0, "v")], [meterrow(1)])
    assert config.problems == (f"device_types m: {reason}",)
    dtype = config.device_types["m"]
    attr = {"request_pause_ms": "request_pause_s", "connect_pause_ms": "connect_pause_s"}.get(column, column)
    assert getattr(dtype, attr) == used and type(getattr(dtype, attr)) is type(used)
    assert [m.id for m in config.meters] == [1]


def test_device_type_limits_at_the_edges_are_kept():
    row = {"name": "m", "max_block": 1, "max_gap": 124, "timeout_s": 60.0, "request_pause_ms": 10000,
           "connect_pause_ms": 60000, "close_after_poll": True, "single_value_reads": True}
    config = build_configuration([row], [regrow(1, 0, "v", data_type=1)], [meterrow(1)])
    assert config.problems == ()
    d = config.device_types["m"]
    assert (d.max_block, d.max_gap, d.timeout_s, d.request_pause_s, d.connect_pause_s, d.close_after_poll,
            d.single_value_reads) == (1, 124, 60.0, 10.0, 60.0, True, True)
    between = build_configuration([{**row, "timeout_s": 0.5, "connect_pause_ms": 1500}],
                                  [regrow(1, 0, "v", data_type=1)], [meterrow(1)])
    assert between.problems == () and (between.device_types["m"].timeout_s,
                                       between.device_types["m"].connect_pause_s) == (0.5, 1.5)
    nulls = build_configuration([{"name": "m", "close_after_poll": None}], [regrow(1, 0, "v")],
                                [meterrow(1)]).device_types["m"]
    assert (nulls.max_block, nulls.max_gap, nulls.timeout_s, nulls.request_pause_s, nulls.connect_pause_s,
            nulls.close_after_poll, nulls.single_value_reads) == (125, 16, 3.0, 0.0, 0.0, False, False)


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
    (meterrow(2, host="10.0.0.1:502"), "contains ':': a host name holds letters, digits, '-', '_' and '.' only (an "
     "IPv6 address as it is, without brackets; the port goes in energy_meters.port)"),
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
    assert config.problems[1] == ("energy_meters.id 2 (10.0.0.1:502 unit 1): type 7 could not be loaded (see its "
                                  "device_types problem); skipped")


def test_a_register_row_reaches_its_register_whole_and_null_columns_read_as_their_defaults():
    row = regrow(1, 4, "v", data_type=5, fc=3, byte_order="badc", scale=-0.5, value_offset=7.5, data_unit="kWh",
                 not_available=Decimal("4294967295"))
    nulls = regrow(2, 65535, "w", data_type=4, data_unit="", byte_order=None, scale=None, value_offset=None)
    config = build_configuration([TYPE], [row, nulls], [meterrow(1)])
    assert config.problems == ()
    assert config.device_types["m"].registers == (
        Register(1, "m", 4, "v", "kWh", DataType.UINT32, FunctionCode.READ_HOLDING_REGISTERS, ByteOrder.BADC, -0.5,
                 7.5, None, 4294967295),
        Register(2, "m", 65535, "w", None, DataType.UINT16, FunctionCode.READ_INPUT_REGISTERS, ByteOrder.ABCD, 1.0,
                 0.0, None, None))  # the last address holds a 16-bit value


def test_registers_a_type_cannot_use_are_skipped_one_by_one_each_with_its_reason():
    """A duplicate name, a value wider than max_block, a missing or unusable scale_factor register:
    each costs that register only, and the registers after it still load."""
    rows = [regrow(1, 0, "a", data_type=1, scale_factor="nope"),
            regrow(2, 1, "sf", data_type=1), regrow(3, 2, "f"),
            regrow(4, 4, "b", data_type=1, scale_factor="f"),  # a float32 scale factor
            regrow(5, 5, "c", data_type=1, scale_factor="b"),  # a scale factor with its own
            regrow(6, 6, "d", data_type=1, scale_factor="sf"),
            regrow(7, 7, "sf", data_type=1), regrow(8, 8, "e", data_type=1)]
    config = build_configuration([TYPE], rows, [meterrow(1)])
    assert config.problems == (
        "registers.id 7 (m.sf): measurement_name already used by registers.id 2 of this type; skipped",
        "registers.id 1 (m.a): scale_factor 'nope' is not a register of this type; skipped",
        "registers.id 4 (m.b): scale_factor register 'f' must be an integer without its own scale factor; skipped",
        "registers.id 5 (m.c): scale_factor register 'b' must be an integer without its own scale factor; skipped")
    kept = config.device_types["m"].registers
    assert [(r.measurement, r.scale_factor) for r in kept] == [("sf", None), ("f", None), ("d", "sf"), ("e", None)]
    narrow = build_configuration([{**TYPE, "max_block": 1}], [regrow(1, 0, "v"), regrow(2, 2, "w", data_type=1)],
                                 [meterrow(1)])
    assert narrow.problems == ("registers.id 1 (m.v): needs 2 registers, more than the type's max_block 1; skipped",)
    assert [r.measurement for r in narrow.device_types["m"].registers] == ["w"]


def test_a_meter_whose_type_has_no_usable_register_says_there_is_nothing_to_read():
    config = build_configuration([TYPE], [regrow(1, 0, "v", fc=6)], [meterrow(1)])
    assert config.problems[1:] == ("energy_meters.id 1 (10.0.0.1:502 unit 1): type 'm' has no usable registers; "
                                   "nothing to read",)
    assert config.meters == ()


def test_registers_of_a_type_that_is_not_text_are_reported_by_its_repr():
    config = build_configuration([TYPE], [*REG, regrow(2, 0, "v", type=["x"])], [meterrow(1)])
    assert config.problems == ("registers of type \"['x']\" (1 rows): no such device_types row; skipped",)
    (problem,) = store.build_device_type("m", TYPE, [regrow(2, 0, "v", type=5)])[1]
    assert problem == "registers.id 2 (5.v): type 5 is not text"


def test_the_meter_values_at_the_edges_load():
    cron = "*/5 * * * *"
    row = {k: v for k, v in meterrow(1, port=65535, slave_address=255, poll_cron=cron).items() if k != "enabled"}
    (m,) = meters_of(row).meters  # a row without an enabled column: polled
    assert (m.port, m.slave_address, m.poll_cron, m.enabled) == (65535, 255, cron, True)
    (problem,) = meters_of(meterrow(2, port=65536)).problems
    assert problem == "energy_meters.id 2 (10.0.0.1:65536 unit 1): port 65536 outside 1..65535; skipped"
    with pytest.raises(ValueError, match=r"^energy_meters.id 1 \(10.0.0.1:502 unit 1\): type 'm' has no "
                                         "device_types row; skipped$"):
        store.meter_from_row(meterrow(1), None)  # not told the type has a row: it has none


LONG_CRON = ",".join(str(m) for m in range(1, 60)) + " 0 30 2 *"


@pytest.mark.parametrize(("row", "problem"), [
    # a value's repr up to 80 characters is shown whole, a longer one cut there
    (meterrow(2, port="5" * 78),
     "energy_meters.id 2 (10.0.0.1:" + "5" * 78 + " unit 1): port '" + "5" * 78 + "' is not a whole number; skipped"),
    (meterrow(2, port="5" * 79),
     "energy_meters.id 2 (10.0.0.1:" + "5" * 79 + " unit 1): port '" + "5" * 79 + "... is not a whole number; skipped"),
    # the host in the row's name: 60 characters
    (meterrow(2, host="h" * 61, port=0), "energy_meters.id 2 (" + "h" * 60 + "...:0 unit 1): port 0 outside 1..65535; "
     "skipped"),
    (meterrow(2, transport="serial", host="/dev/" + "x" * 56, baudrate=49), "energy_meters.id 2 (serial /dev/"
     + "x" * 55 + "... unit 1): baudrate 49 outside 50..4000000; skipped"),
    # a poll_cron's reason: 300 characters
    (meterrow(2, poll_cron=LONG_CRON), "energy_meters.id 2 (10.0.0.1:502 unit 1): " + (
        f"poll_cron '{LONG_CRON}' never fires: no date matches it (such as 30 February or 31 April); choose a day "
        "that exists in the month(s) given")[:300] + "...; skipped"),
])
def test_long_values_are_cut_in_a_problem_line_at_a_fixed_length(row, problem):
    assert meters_of(meterrow(1), row).problems == (problem,)


def test_long_names_in_a_register_problem_are_cut_type_at_40_measurement_at_60():
    name = "t" * 41
    config = build_configuration([{**TYPE, "name": name}], [regrow(1, 0, "v", type=name),
                                                            regrow(2, 2, "w" * 61, type=name, fc=6)], [])
    assert config.problems == ("registers.id 2 (" + "t" * 40 + "...." + "w" * 60 + "...): function_code 6 is not a "
                               "read (3 read holding registers, 4 read input registers)",)


UNFORESEEN = "an error nobody foresaw: " + "x" * 176  # 201 characters: shown as its first 200


def test_an_error_nobody_foresaw_costs_its_row_or_type_only_and_is_named(monkeypatch):
    """Containment: whatever a parse raises, that row (or type, with its meters) is skipped with
    its id, the exception's class and its text (cut at 200 characters); the others load."""
    parse_register, parse_meter, parse_type = store.register_from_row, store.meter_from_row, store._device_type

    def fails_for(parse, bad):
        def parse_or_fail(*args):
            if bad(*args):
                raise RuntimeError(UNFORESEEN)
            return parse(*args)
        return parse_or_fail

    monkeypatch.setattr(store, "register_from_row", fails_for(parse_register, lambda row: row["id"] == 2))
    monkeypatch.setattr(store, "meter_from_row", fails_for(parse_meter, lambda row, *_: row["id"] == 2))
    monkeypatch.setattr(store, "_device_type", fails_for(parse_type, lambda name, *_: name == "n"))
    shown = f"(RuntimeError: {UNFORESEEN[:200]}...)"
    config = build_configuration([TYPE, {**TYPE, "name": "n"}],
                                 [regrow(1, 0, "v"), regrow(2, 2, "w"), regrow(3, 0, "v", type="n", data_type=9)],
                                 [meterrow(1), meterrow(2), meterrow(3, type_="n")])
    assert config.problems == (
        f"registers.id 2: cannot be read {shown}; skipped",
        "registers.id 3 (n.v): data_type 9 is unknown (known: 1 int16, 2 int32, 3 float32, 4 uint16, 5 uint32, "
        "6 int64, 7 uint64, 8 float64)",
        f"device_types n: cannot be read {shown}; skipped with its meters",
        f"energy_meters.id 2: cannot be read {shown}; skipped",
        "energy_meters.id 3 (10.0.0.1:502 unit 1): type 'n' could not be loaded (see its device_types problem); "
        "skipped")
    assert [m.id for m in config.meters] == [1] and list(config.device_types) == ["m"]
    tables = Tables([TYPE, {**TYPE, "name": "n"}], [regrow(1, 0, "v"), regrow(3, 0, "v", type="n")],
                    [meterrow(1), meterrow(3, type_="n")])
    assert tables.load(Loader()).problems == (
        f"device_types n: cannot be read {shown}; skipped with its meters",
        "energy_meters.id 3 (10.0.0.1:502 unit 1): type 'n' could not be loaded (see its device_types problem); "
        "skipped")


def test_a_row_that_is_not_even_a_mapping_is_reported_without_an_id():
    config = build_configuration([TYPE], REG, [meterrow(1), ["not", "a", "row"]])
    assert config.problems == ("energy_meters.id ?: cannot be read (AttributeError: 'list' object has no attribute "
                               "'get'); skipped",)
    assert store.build_device_type("m", TYPE, [*REG, ("a", "tuple")])[1] == (
        "registers.id ?: cannot be read (TypeError: tuple indices must be integers or slices, not str); skipped",)


# --- hosts: what the socket module can connect to ---------------------------------------------

@pytest.mark.parametrize("host", ["10.0.0.1", "::1", "fe80::1%eth0", "2001:db8::5", "virtual_modbustcp_server",
                                  "meter-1.example.com", "meter-1.example.com.", "meter.", "zähler.local", "a" * 63,
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


@pytest.mark.parametrize(("host", "problem"), [
    ("a" * 1012, "has a label of 1012 characters (at most 63): '" + "a" * 70 + "...'"),  # 4 x 253: not yet too long
    ("a" * 1013, "is 1013 characters long (a host name has at most 253)"),
    (".".join(["a" * 63] * 3 + ["b" * 62]), "is longer than 253 characters once encoded"),
    ("m." + "a" * 71, "has a label of 71 characters (at most 63): '" + "a" * 70 + "...'"),
    ("m." + "\u00e4" * 71, "has a label longer than 63 characters once encoded (IDNA): '" + "\u00e4" * 70 + "...'"),
    ("m.\u2ff0" + "a" * 70, "has a label that cannot be encoded as a host name (IDNA): '\u2ff0" + "a" * 69 + "...'"),
])
def test_a_refused_host_says_why_and_shows_at_most_70_characters_of_the_label(host, problem):
    assert host_problem(host) == problem


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


@pytest.mark.parametrize(("column", "reason"), [
    ("scale", "scale nan must be a finite, non-zero number"),
    ("value_offset", "value_offset nan must be finite"),
])
def test_a_signalling_nan_is_reported_with_its_row(column, reason):
    """Regression: float() raises on Decimal('sNaN'), and the problem line was Python's bare
    'cannot convert signaling NaN to float', naming no row (found by the property test above)."""
    config = build_configuration([TYPE], [regrow(1, 0, "v"), regrow(2, 2, "bad", **{column: Decimal("sNaN")})],
                                 [meterrow(1)])
    (problem,) = config.problems
    assert problem.startswith(f"registers.id 2 (m.bad): {reason}"), problem


# --- Loader: reloads cost what changed (server-free; test_config.py does the same against PostgreSQL) -----

# what the database's defaults put in the columns added after the first release
LATER_DEFAULTS = {"connect_pause_ms": 0, "close_after_poll": False, "single_value_reads": False,
                  "transport": "tcp", "baudrate": 9600, "parity": "N", "stopbits": 1, "bytesize": 8,
                  "kind": "gauge", "counter_max_rate": None}


class Tables:
    """The configuration tables in memory, answering Loader's SELECTs as PostgreSQL would.

    A fingerprint here is the type's rows themselves (PostgreSQL's is an md5 of them): any change
    to any column moves it, the device_types `description` too, which the poller does not read.
    `asked` keeps each SELECT and `register_rows` the register rows each load fetched.
    """

    def __init__(self, types: list[dict], registers: list[dict], meters: list[dict]) -> None:
        self.types, self.registers, self.meters = types, registers, meters
        self.asked: list[str] = []
        self.register_rows = 0

    def _type_names(self) -> list:
        names = {t["name"] for t in self.types} | {r["type"] for r in self.registers}
        return sorted(names, key=lambda n: (n is None, n))  # ORDER BY 1: NULL last

    def query(self, sql: str, params) -> list[tuple]:
        assert isinstance(params, tuple), params  # Query's contract: a sequence, () when there are none
        if sql == store.COLUMNS_SQL:  # today's schema: every column there (not counted in `asked`)
            return ([("device_types", c) for c in store.TYPE_COLUMNS]
                    + [("energy_meters", c) for c in store.METER_COLUMNS]
                    + [("registers", c) for c in store.REGISTER_COLUMNS])
        self.asked.append(sql)
        wanted = None if not params else set(params[0])
        types = [t for t in sorted(self.types, key=lambda t: t["name"]) if wanted is None or t["name"] in wanted]
        regs = [r for r in sorted(self.registers, key=lambda r: (r["type"], r["register_address"], r["id"]))
                if wanted is None or r["type"] in wanted]
        if sql == store.TYPE_FINGERPRINTS_SQL:
            out = []
            for name in self._type_names():
                row = next((t for t in self.types if t["name"] == name), None)
                mine = sorted((r for r in self.registers if r["type"] == name), key=lambda r: r["id"])
                out.append((name, None if row is None else repr(row), repr(mine) if mine else None, len(mine)))
            return out
        if sql in (store.DEVICE_TYPES_SQL, store.DEVICE_TYPES_OF_SQL):
            return [tuple(t.get(c, LATER_DEFAULTS.get(c)) for c in store.TYPE_COLUMNS) for t in types]
        if sql in (store.REGISTERS_SQL, store.REGISTERS_OF_SQL):
            self.register_rows += len(regs)
            return [tuple(r.get(c, LATER_DEFAULTS.get(c)) for c in store.REGISTER_COLUMNS) for r in regs]
        assert sql == store.METERS_SQL, sql
        return [tuple(m.get(c, LATER_DEFAULTS.get(c)) for c in store.METER_COLUMNS)
                for m in sorted(self.meters, key=lambda m: m["id"])]

    def load(self, loader: Loader) -> Configuration:
        self.asked, self.register_rows = [], 0
        return loader.load(self.query)

    def expected(self) -> Configuration:
        """What a load of these rows must give: the pure build_configuration of the same rows."""
        meters = sorted(self.meters, key=lambda m: m["id"])
        registers = sorted(self.registers, key=lambda r: (r["type"], r["register_address"], r["id"]))  # as SELECTed
        return build_configuration(sorted(self.types, key=lambda t: t["name"]), registers, meters)


def same_as_a_fresh_build(config: Configuration, tables: Tables) -> None:
    fresh = tables.expected()
    assert config.meters == fresh.meters
    assert dict(config.device_types) == dict(fresh.device_types)
    assert sorted(config.problems) == sorted(fresh.problems)


def three_types() -> Tables:
    types = [{**TYPE, "name": n, "description": ""} for n in ("a", "b", "c")]
    registers = [regrow(1, 0, "v", type="a"), regrow(2, 2, "w", type="a"), regrow(3, 0, "v", type="b"),
                 regrow(4, 0, "v", type="c"), regrow(5, 2, "bad", type="c", data_type=9)]
    meters = [meterrow(1, type_="a"), meterrow(2, type_="b"), meterrow(3, type_="c"), meterrow(4, type_="b")]
    return Tables(types, registers, meters)


def test_a_reload_reads_and_parses_only_the_types_that_changed():
    """README: only the register rows of types whose fingerprint moved are fetched and parsed again;
    unchanged rows give back the very same objects, so plans and learned splits survive."""
    tables, loader = three_types(), Loader()
    first = tables.load(loader)
    same_as_a_fresh_build(first, tables)
    assert tables.asked == [store.TYPE_FINGERPRINTS_SQL, store.DEVICE_TYPES_SQL, store.REGISTERS_SQL,
                            store.METERS_SQL]  # a first load: every row, one plain read per table
    assert first.problems == ("registers.id 5 (c.bad): data_type 9 is unknown (known: 1 int16, 2 int32, "
                              "3 float32, 4 uint16, 5 uint32, 6 int64, 7 uint64, 8 float64)",)

    assert tables.load(loader) is first  # nothing changed: the same configuration, no type read again
    assert tables.asked == [store.TYPE_FINGERPRINTS_SQL, store.METERS_SQL] and tables.register_rows == 0

    tables.registers[2] = regrow(3, 0, "v", type="b", scale=2.0)  # one register of b
    second = tables.load(loader)
    same_as_a_fresh_build(second, tables)
    assert tables.asked == [store.TYPE_FINGERPRINTS_SQL, store.DEVICE_TYPES_OF_SQL, store.REGISTERS_OF_SQL,
                            store.METERS_SQL] and tables.register_rows == 1  # b's rows only
    assert second.device_types["a"] is first.device_types["a"] and second.device_types["c"] is first.device_types["c"]
    assert second.device_types["b"] is not first.device_types["b"]
    assert second.meters[0] is first.meters[0] and second.meters[2] is first.meters[2]
    assert second.meters[1].device_type is second.meters[3].device_type is second.device_types["b"]
    assert second.problems == first.problems  # c's problem is still reported, though c was not read again

    tables.types[0] = {**tables.types[0], "description": "moved"}  # a column the poller does not read
    assert tables.load(loader) is second  # read again (its fingerprint moved), equal: the same objects
    assert tables.asked[1:3] == [store.DEVICE_TYPES_OF_SQL, store.REGISTERS_OF_SQL] and tables.register_rows == 2


def test_a_reload_where_most_types_changed_reads_the_tables_plainly_and_keeps_what_is_equal():
    tables, loader = three_types(), Loader()
    first = tables.load(loader)
    tables.types[:] = [{**t, "description": "new"} for t in tables.types[:2]] + tables.types[2:]
    tables.registers.append(regrow(6, 4, "x", type="b"))
    second = tables.load(loader)
    same_as_a_fresh_build(second, tables)
    assert tables.asked[1:3] == [store.DEVICE_TYPES_SQL, store.REGISTERS_SQL]
    assert second.device_types["a"] is first.device_types["a"]  # read again, parsed equal: the same object
    assert second.device_types["b"] is not first.device_types["b"]
    assert second.meters[0] is first.meters[0] and second.meters[2] is first.meters[2]
    assert second.meters[1] is not first.meters[1] and second.meters[1].device_type is second.device_types["b"]


def test_a_reload_where_exactly_half_of_the_types_changed_reads_them_by_name():
    tables = three_types()
    tables.types.append({**TYPE, "name": "d", "description": ""})
    loader = Loader()
    tables.load(loader)
    tables.types[0] = {**tables.types[0], "description": "moved"}
    tables.types[1] = {**tables.types[1], "description": "moved"}
    tables.load(loader)
    assert tables.asked[1:3] == [store.DEVICE_TYPES_OF_SQL, store.REGISTERS_OF_SQL] and tables.register_rows == 3


def test_an_unchanged_meter_row_of_an_unchanged_type_is_not_parsed_again(monkeypatch):
    parsed = []

    def meter_from_row(row, *args):
        parsed.append(row["id"])
        return parse(row, *args)

    parse = store.meter_from_row
    monkeypatch.setattr(store, "meter_from_row", meter_from_row)
    tables, loader = three_types(), Loader()
    tables.meters.append(meterrow(5, type_="c", port=0))
    first = tables.load(loader)
    assert parsed == [1, 2, 3, 4, 5]
    tables.meters[1] = meterrow(2, type_="b", description="east wing")
    assert tables.load(loader).problems == first.problems
    assert parsed == [1, 2, 3, 4, 5, 2]  # the changed row only; the bad one is not parsed again either


def test_meters_whose_row_changed_are_parsed_again_and_the_others_kept():
    tables, loader = three_types(), Loader()
    first = tables.load(loader)
    tables.meters[1] = meterrow(2, type_="b", description="east wing")
    tables.meters[3] = meterrow(4, type_="b", host=" 10.0.0.1 ")  # another row, the same meter once parsed
    tables.meters.append(meterrow(5, type_="c", port=0))
    second = tables.load(loader)
    same_as_a_fresh_build(second, tables)
    assert tables.register_rows == 0
    assert second.meters[1].description == "east wing" and second.meters[1] is not first.meters[1]
    assert second.meters[3] is first.meters[3]
    assert [m.id for m in second.meters] == [1, 2, 3, 4]
    assert second.problems[-1] == "energy_meters.id 5 (10.0.0.1:0 unit 1): port 0 outside 1..65535; skipped"
    tables.meters.pop()
    third = tables.load(loader)
    assert third.meters == second.meters and all(a is b for a, b in zip(third.meters, second.meters, strict=True))
    assert third.problems == first.problems


def test_types_without_a_row_and_meters_of_types_that_are_gone_are_reported():
    tables = three_types()
    tables.registers += [regrow(7, 0, "v", type="d"), regrow(8, 2, "w", type="d")]  # no device_types row d
    tables.meters += [meterrow(5, type_="d"), meterrow(6, type_="e")]
    loader = Loader()
    config = tables.load(loader)
    same_as_a_fresh_build(config, tables)
    assert config.problems[1:] == (
        "registers of type 'd' (2 rows): no such device_types row; skipped",
        "energy_meters.id 5 (10.0.0.1:502 unit 1): type 'd' has no device_types row; skipped",
        "energy_meters.id 6 (10.0.0.1:502 unit 1): type 'e' has no device_types row; skipped")
    tables.types.append({**TYPE, "name": "d", "description": ""})  # d gets its row: its meter loads
    del tables.types[1]  # and b loses its own: its meters are skipped
    tables.registers[:] = [r for r in tables.registers if r["type"] != "b"]
    again = tables.load(loader)
    same_as_a_fresh_build(again, tables)
    assert [m.id for m in again.meters] == [1, 3, 5]
    assert again.meters[0] is config.meters[0] and again.meters[1] is config.meters[2]
    assert "energy_meters.id 2 (10.0.0.1:502 unit 1): type 'b' has no device_types row; skipped" in again.problems


TYPE_ROWS = st.fixed_dictionaries({"name": st.sampled_from(["a", "b", "c"]), "max_block": st.sampled_from([125, 2, 0]),
                                   "description": st.sampled_from(["", "x"])})
REGISTER_ROWS = st.builds(
    lambda rid, type_, address, name, data_type, scale, sf: regrow(rid, address, name, data_type, type=type_,
                                                                   scale=scale, scale_factor=sf),
    st.integers(1, 12), st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 6), st.sampled_from(["v", "w", "sf"]),
    st.sampled_from([1, 3, 9]), st.sampled_from([1.0, 0.5, 0.0]), st.sampled_from([None, None, "sf"]))
METER_ROWS = st.builds(lambda mid, type_, host, port, description: meterrow(mid, type_=type_, host=host, port=port,
                                                                             description=description),
                       st.integers(1, 6), st.sampled_from(["a", "b", "c", "d", "e"]),
                       st.sampled_from(["10.0.0.1", " 10.0.0.1", "bad host"]), st.sampled_from([502, 0]),
                       st.sampled_from([None, "d"]))


def unique(rows: list[dict], key: str) -> list[dict]:
    return list({r[key]: r for r in rows}.values())


State = tuple[list[dict], list[dict], list[dict]]  # device_types, registers, energy_meters


def edited(state: State, data) -> State:
    """`state` with a few rows replaced, added or removed."""
    tables = [list(rows) for rows in state]
    for _ in range(data.draw(st.integers(0, 3))):
        index, (rows, key) = data.draw(st.sampled_from(list(enumerate([(TYPE_ROWS, "name"), (REGISTER_ROWS, "id"),
                                                                       (METER_ROWS, "id")]))))
        if tables[index] and data.draw(st.booleans()):
            tables[index].pop(data.draw(st.integers(0, len(tables[index]) - 1)))
        if data.draw(st.booleans()):
            tables[index] = unique([*tables[index], data.draw(rows)], key)
    return tables[0], tables[1], tables[2]


def fingerprints(state: State) -> dict:
    return {row[0]: row[1:] for row in Tables(*state).query(store.TYPE_FINGERPRINTS_SQL, ())}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_sequence_of_changes_loads_as_a_fresh_build_and_keeps_every_equal_object(data):
    """Whatever changes between loads, the Loader gives what build_configuration gives for the
    rows as they are now, every object equal to the last load's is that very object, and when at
    most half of the types changed only their register rows are read."""
    state: State = (unique(data.draw(st.lists(TYPE_ROWS, max_size=3)), "name"),
                    unique(data.draw(st.lists(REGISTER_ROWS, max_size=8)), "id"),
                    unique(data.draw(st.lists(METER_ROWS, max_size=4)), "id"))
    loader, last, last_state = Loader(), None, None
    for _ in range(data.draw(st.integers(1, 4))):
        tables = Tables(*state)
        config = tables.load(loader)
        same_as_a_fresh_build(config, tables)
        if last is not None and last_state is not None:
            if state == last_state:
                assert config is last
            for name, dtype in config.device_types.items():
                if dtype == last.device_types.get(name):
                    assert dtype is last.device_types[name]
            old = {m.id: m for m in last.meters}
            assert all(m is old[m.id] for m in config.meters if m == old.get(m.id))
            now, before = fingerprints(state), fingerprints(last_state)
            changed = {name for name, fp in now.items() if before.get(name) != fp}
            if 2 * len(changed) <= len(now):
                assert tables.register_rows == sum(1 for r in state[1] if r["type"] in changed)
        last, last_state = config, state
        state = edited(state, data)


# --- transports: every wire a meter sits on (README, "Transports") ---------------------------

SERIAL = {"transport": "serial", "host": "/dev/ttyUSB0"}
REG = [regrow(1, 0, "v")]
TORN = ("; skipped: give every meter on one host:port the same transport, and on one serial device "
        "the same line settings")


def meters_of(*rows) -> Configuration:
    return build_configuration([TYPE], REG, list(rows))


@pytest.mark.parametrize(("row", "transport", "line", "bus"), [
    (meterrow(1, transport="tcp"), Transport.TCP, None, "10.0.0.1:502"),
    (meterrow(1, transport="rtuovertcp", port=4196), Transport.RTU_OVER_TCP, None, "rtuovertcp 10.0.0.1:4196"),
    (meterrow(1, transport="udp"), Transport.UDP, None, "udp 10.0.0.1:502"),
    (meterrow(1, **SERIAL), Transport.SERIAL, SerialLine(), "serial /dev/ttyUSB0 9600 8N1"),
    (meterrow(1), Transport.TCP, None, "10.0.0.1:502"),  # a row without the later columns: Modbus TCP
    (meterrow(1, transport="serial", host=" /dev/serial/by-id/usb-FTDI_FT232R-if00-port0 "), Transport.SERIAL,
     SerialLine(9600, "N", 1, 8), "serial /dev/serial/by-id/usb-FTDI_FT232R-if00-port0 9600 8N1"),
])
def test_each_transport_is_read_from_its_row(row, transport, line, bus):
    config = meters_of(row)
    assert config.problems == ()
    (m,) = config.meters
    assert (m.transport, m.line, str(m.bus)) == (transport, line, bus)
    assert m.bus.transport is transport and m.bus.line == line
    assert m.bus.port == (0 if transport is Transport.SERIAL else row["port"])  # a serial bus has no port


@pytest.mark.parametrize("line", [SerialLine(19200, "E", 2, 7), SerialLine(50, "O", 1, 8),
                                  SerialLine(4_000_000, "N", 2, 8), SerialLine(115200, "E", 1, 8)])
def test_the_serial_line_settings_reach_the_meter_and_its_bus(line):
    row = meterrow(1, **SERIAL, baudrate=line.baudrate, parity=line.parity, stopbits=line.stopbits,
                   bytesize=line.bytesize)
    (m,) = meters_of(row).meters
    assert m.line == line and m.bus == BusAddress(Transport.SERIAL, "/dev/ttyUSB0", 0, line)
    assert str(m.bus) == f"serial /dev/ttyUSB0 {line.baudrate} {line.bytesize}{line.parity}{line.stopbits}"
    same = meterrow(1, **SERIAL, baudrate=Decimal(line.baudrate), parity=line.parity,  # as numeric columns come
                    stopbits=float(line.stopbits), bytesize=Decimal(line.bytesize))
    assert meters_of(same).meters == (m,)


@pytest.mark.parametrize("transport", ["tcp", "rtuovertcp", "udp"])
def test_the_line_settings_of_a_network_meter_are_not_read(transport):
    """The serial columns count for transport serial only: on any other row nothing in them is refused."""
    config = meters_of(meterrow(1, transport=transport, baudrate=None, parity="X", stopbits=3, bytesize="8"))
    assert config.problems == ()
    assert config.meters[0].line is None and config.meters[0].bus.line is None


SERIAL_WHERE = "energy_meters.id 2 (serial /dev/ttyUSB0 unit 1): "
TCP_WHERE = "energy_meters.id 2 (10.0.0.1:502 unit 1): "


@pytest.mark.parametrize(("row", "problem"), [
    (meterrow(2, transport="modbus"),
     TCP_WHERE + "transport 'modbus' is unknown (known: tcp, rtuovertcp, udp, serial); skipped"),
    (meterrow(2, transport="TCP"), TCP_WHERE + "transport 'TCP' is unknown"),
    (meterrow(2, transport=None), TCP_WHERE + "transport None is unknown"),
    (meterrow(2, transport=["tcp"]), TCP_WHERE + "transport ['tcp'] is unknown"),
    (meterrow(2, **SERIAL, baudrate=49), SERIAL_WHERE + "baudrate 49 outside 50..4000000; skipped"),
    (meterrow(2, **SERIAL, baudrate=4_000_001), SERIAL_WHERE + "baudrate 4000001 outside 50..4000000; skipped"),
    (meterrow(2, **SERIAL, baudrate=0), SERIAL_WHERE + "baudrate 0 outside 50..4000000"),
    (meterrow(2, **SERIAL, baudrate="9600"), SERIAL_WHERE + "baudrate '9600' is not a whole number; skipped"),
    (meterrow(2, **SERIAL, baudrate=None), SERIAL_WHERE + "baudrate None is not a whole number"),  # NOT NULL
    (meterrow(2, **SERIAL, baudrate=9600.5), SERIAL_WHERE + "baudrate 9600.5 is not a whole number"),
    (meterrow(2, **SERIAL, parity="X"), SERIAL_WHERE + "parity 'X' is not N, E or O; skipped"),
    (meterrow(2, **SERIAL, parity="e"), SERIAL_WHERE + "parity 'e' is not N, E or O"),
    (meterrow(2, **SERIAL, parity="none"), SERIAL_WHERE + "parity 'none' is not N, E or O"),
    (meterrow(2, **SERIAL, parity=None), SERIAL_WHERE + "parity None is not N, E or O"),
    (meterrow(2, **SERIAL, stopbits=3),
     SERIAL_WHERE + "8 data bits and 3 stop bits: use 7 or 8, and 1 or 2; skipped"),
    (meterrow(2, **SERIAL, stopbits=0), SERIAL_WHERE + "8 data bits and 0 stop bits"),
    (meterrow(2, **SERIAL, bytesize=9), SERIAL_WHERE + "9 data bits and 1 stop bits"),
    (meterrow(2, **SERIAL, bytesize=5), SERIAL_WHERE + "5 data bits and 1 stop bits"),
    (meterrow(2, **SERIAL, bytesize=True), SERIAL_WHERE + "bytesize True is not a whole number"),
    (meterrow(2, **SERIAL, stopbits=1.5), SERIAL_WHERE + "stopbits 1.5 is not a whole number"),
])
def test_a_bad_transport_or_line_setting_skips_that_meter_only(row, problem):
    config = meters_of(meterrow(1), row, meterrow(3, **SERIAL, slave_address=3))
    (line,) = config.problems
    assert line.startswith(problem) and line.endswith("; skipped"), line
    assert [m.id for m in config.meters] == [1, 3]


@pytest.mark.parametrize(("host", "reason"), [
    ("ttyUSB0", "host 'ttyUSB0' is not a device path (for transport serial, e.g. /dev/ttyUSB0); skipped"),
    ("COM3", "host 'COM3' is not a device path"),
    ("10.0.0.1", "host '10.0.0.1' is not a device path"),
    ("dev/ttyUSB0", "host 'dev/ttyUSB0' is not a device path"),
    ("", "host '' is not a device path"),
    ("   ", "host '' is not a device path"),
    ("/dev/tty\x00USB0", "host '/dev/tty\\x00USB0' holds characters no device path has; skipped"),
    ("/dev/tty\nUSB0", "holds characters no device path has"),
    ("/dev/tty\u200bUSB0", "holds characters no device path has"),
    ("/dev/" + "x" * 5000, "is 5005 characters long (a device path has at most 4096); skipped"),
    (5, "host 5 is not text; skipped"),
    (None, "host None is not text"),
])
def test_a_serial_meter_without_a_device_path_is_skipped(host, reason):
    config = meters_of(meterrow(1), meterrow(2, transport="serial", host=host))
    (problem,) = config.problems
    assert problem.startswith("energy_meters.id 2 (serial ") and reason in problem, problem
    assert [m.id for m in config.meters] == [1]


def test_device_path_problem_wants_an_absolute_printable_path():
    for path in ("/dev/ttyUSB0", "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0",
                 "/dev/ttyS0", "/tmp/pty 1", "/dev/ttyÜ", "/" + "x" * 4095):
        assert device_path_problem(path) is None, path
    for path in ("ttyUSB0", "", "./ttyUSB0", "~/tty", "/dev/tty\tS0", "/" + "x" * 4096):
        assert device_path_problem(path) is not None, path
    # and a device path is no host: a tcp row holding one is refused by host_problem
    (problem,) = meters_of(meterrow(2, host="/dev/ttyUSB0")).problems
    assert "host '/dev/ttyUSB0' contains '/'" in problem


@pytest.mark.parametrize(("transport", "host", "refused"), [
    ("serial", "/dev/ttyUSB0", True), ("rtuovertcp", "10.0.0.1", True),
    ("tcp", "10.0.0.1", False), ("udp", "10.0.0.1", False),
])
def test_unit_0_is_refused_on_rtu_and_kept_on_modbus_tcp_and_udp(transport, host, refused):
    config = meters_of(meterrow(1, transport=transport, host=host, slave_address=0))
    if refused:
        (problem,) = config.problems
        assert problem.startswith("energy_meters.id 1 (") and problem.endswith(
            "slave_address 0 is the RTU broadcast address, which no device answers; use the device's own "
            "unit id; skipped"), problem
        assert config.meters == ()
    else:
        assert config.problems == () and config.meters[0].slave_address == 0


@pytest.mark.parametrize("differs", [{"baudrate": 19200}, {"parity": "E"}, {"stopbits": 2}, {"bytesize": 7}])
def test_two_meters_on_one_serial_device_with_different_settings_are_both_skipped(differs):
    """README: rows that describe one wire two ways are a configuration error, every such row is
    skipped with a message naming the others, and neither silently wins. One line per row, each
    naming the device; the meters elsewhere load."""
    other = str(SerialLine(**{**{"baudrate": 9600, "parity": "N", "stopbits": 1, "bytesize": 8}, **differs}))
    config = meters_of(meterrow(1), meterrow(2, **SERIAL), meterrow(3, **SERIAL, slave_address=2, **differs),
                       meterrow(4, transport="serial", host="/dev/ttyUSB1", **differs))
    assert [m.id for m in config.meters] == [1, 4]
    assert config.problems == (
        f"energy_meters.id 2 (serial /dev/ttyUSB0 9600 8N1): this bus is described differently by "
        f"id 3 (serial /dev/ttyUSB0 {other})" + TORN,
        f"energy_meters.id 3 (serial /dev/ttyUSB0 {other}): this bus is described differently by "
        "id 2 (serial /dev/ttyUSB0 9600 8N1)" + TORN)


def test_a_third_meter_on_a_torn_serial_device_is_skipped_too_and_each_line_names_the_others():
    config = meters_of(meterrow(1, **SERIAL), meterrow(2, **SERIAL, slave_address=2),
                       meterrow(3, **SERIAL, slave_address=3, baudrate=19200))
    assert config.meters == ()
    assert [p.split(":")[0] for p in config.problems] == [
        "energy_meters.id 1 (serial /dev/ttyUSB0 9600 8N1)", "energy_meters.id 2 (serial /dev/ttyUSB0 9600 8N1)",
        "energy_meters.id 3 (serial /dev/ttyUSB0 19200 8N1)"]
    assert "by id 3 (serial /dev/ttyUSB0 19200 8N1);" in config.problems[0]
    assert "by id 1 (serial /dev/ttyUSB0 9600 8N1), id 2 (serial /dev/ttyUSB0 9600 8N1);" in config.problems[2]


def test_meters_on_one_serial_device_with_the_same_settings_share_one_bus():
    line = {"baudrate": 19200, "parity": "E", "stopbits": 1, "bytesize": 8}
    config = meters_of(meterrow(1, **SERIAL, **line), meterrow(2, **SERIAL, **line, slave_address=2, port=1),
                       meterrow(3, **line, slave_address=3, transport="serial", host=" /dev/ttyUSB0 "),
                       meterrow(4, **SERIAL, slave_address=4, baudrate=9600, enabled=False),  # disabled: no say
                       meterrow(5, transport="serial", host="/dev/ttyUSB1", slave_address=1))  # another device
    assert config.problems == ()
    m1, m2, m3, m4, m5 = config.meters
    assert m1.bus == m2.bus == m3.bus == BusAddress(Transport.SERIAL, "/dev/ttyUSB0", 0, SerialLine(19200, "E", 1, 8))
    assert hash(m1.bus) == hash(m2.bus) == hash(m3.bus) and len({m1.bus, m2.bus, m3.bus, m5.bus}) == 2
    assert m4.bus != m1.bus and m4.bus.wire == m1.bus.wire and not m4.enabled
    assert m5.bus.wire != m1.bus.wire


@pytest.mark.parametrize(("first", "second", "torn"), [
    ("tcp", "rtuovertcp", True),  # one TCP socket, two framings
    ("rtuovertcp", "tcp", True),
    ("tcp", "udp", False),  # a UDP port is another socket than the TCP port of the same number
    ("rtuovertcp", "udp", False),
    ("rtuovertcp", "rtuovertcp", False),
    ("udp", "udp", False),
    ("tcp", "tcp", False),
])
def test_two_framings_on_one_tcp_host_port_are_a_conflict(first, second, torn):
    rows = [meterrow(1, host="192.0.2.20", port=4196, transport=first),
            meterrow(2, host="192.0.2.20", port=4196, transport=second, slave_address=2),
            meterrow(3, host="192.0.2.20", port=4197, transport="tcp", slave_address=3)]  # another port
    config = meters_of(*rows)
    if torn:
        assert [m.id for m in config.meters] == [3]
        one, two = (str(BusAddress(Transport(t), "192.0.2.20", 4196)) for t in (first, second))
        assert config.problems == (
            f"energy_meters.id 1 ({one}): this bus is described differently by id 2 ({two})" + TORN,
            f"energy_meters.id 2 ({two}): this bus is described differently by id 1 ({one})" + TORN)
        assert "192.0.2.20:4196" in one and "192.0.2.20:4196" in two
    else:
        assert config.problems == () and [m.id for m in config.meters] == [1, 2, 3]
        assert (config.meters[0].bus == config.meters[1].bus) is (first == second)


def test_one_gateway_spelled_in_two_cases_is_one_bus():
    """Host names are case-insensitive: rows that differ only in the case of the gateway's name
    share its one connection (and one request at a time), and a second framing there is a
    conflict; each meter keeps its row's spelling for its tags."""
    config = meters_of(meterrow(1, host="Gateway.Example"), meterrow(2, host="gateway.example", slave_address=2))
    assert config.problems == ()
    one, two = config.meters
    assert one.bus == two.bus == BusAddress(Transport.TCP, "gateway.example", 502)
    assert (one.host, two.host) == ("Gateway.Example", "gateway.example")
    torn = meters_of(meterrow(1, host="GATEWAY.example"), meterrow(2, host="gateway.example", transport="rtuovertcp"))
    assert torn.meters == () and len(torn.problems) == 2


def test_a_disabled_meter_never_conflicts():
    """one_bus_per_wire weighs enabled meters only: a disabled row describing the wire otherwise
    costs nobody anything (and is itself kept, disabled); enabled, it tears the wire."""
    rows = [meterrow(1, **SERIAL), meterrow(2, **SERIAL, slave_address=2, baudrate=19200, enabled=False),
            meterrow(3, host="192.0.2.20"), meterrow(4, host="192.0.2.20", transport="rtuovertcp", enabled=False),
            meterrow(5, transport="serial", host="/dev/ttyS0", enabled=False),
            meterrow(6, transport="serial", host="/dev/ttyS0", parity="E", enabled=False)]  # both off
    config = meters_of(*rows)
    assert config.problems == ()
    assert [(m.id, m.enabled) for m in config.meters] == [(1, True), (2, False), (3, True), (4, False), (5, False),
                                                          (6, False)]
    rows[1]["enabled"] = True
    config = meters_of(*rows)
    assert [m.id for m in config.meters] == [3, 4, 5, 6]
    assert [p.split(":")[0] for p in config.problems] == ["energy_meters.id 1 (serial /dev/ttyUSB0 9600 8N1)",
                                                          "energy_meters.id 2 (serial /dev/ttyUSB0 19200 8N1)"]


def test_the_loader_skips_a_torn_wire_each_load_and_takes_both_back_once_it_is_mended():
    tables = Tables([TYPE], REG, [meterrow(1), meterrow(2, **SERIAL), meterrow(3, **SERIAL, slave_address=3,
                                                                               baudrate=19200)])
    loader = Loader()
    first = tables.load(loader)
    same_as_a_fresh_build(first, tables)
    assert [m.id for m in first.meters] == [1] and len(first.problems) == 2
    assert tables.load(loader) is first  # nothing changed: the same lines, not doubled
    tables.meters[2] = meterrow(3, **SERIAL, slave_address=3, baudrate=9600)
    mended = tables.load(loader)
    same_as_a_fresh_build(mended, tables)
    assert mended.problems == () and [m.id for m in mended.meters] == [1, 2, 3]
    assert mended.meters[0] is first.meters[0] and mended.meters[1].bus == mended.meters[2].bus


# --- a database that predates db/upgrade.sql --------------------------------------------------

def _literal(sql: str):
    """What PostgreSQL gives for one of LATER_COLUMNS' SQL literals."""
    if sql in ("true", "false"):
        return sql == "true"
    if sql == "NULL":
        return None
    if sql.startswith("'") and sql.endswith("'"):
        return sql[1:-1]
    return int(sql)


class OldTables(Tables):
    """Tables of a database without some of the later columns (`missing`): information_schema
    does not list them, a SELECT naming one fails (as PostgreSQL's "column does not exist"), and
    `literal AS column` gives that literal in every row."""

    def __init__(self, *args, missing: frozenset[str]) -> None:
        super().__init__(*args)
        self.missing = missing

    def query(self, sql: str, params) -> list[tuple]:
        if sql == store.COLUMNS_SQL:
            return [row for row in super().query(sql, params) if row[1] not in self.missing]
        if not sql.startswith("SELECT "):
            return super().query(sql, params)
        columns = sql[len("SELECT "):sql.index(" FROM ")].split(", ")
        names, literals = [], {}
        for i, column in enumerate(columns):
            value, _, name = column.rpartition(" AS ")
            assert name not in self.missing or value, f"column {name} does not exist: {sql}"
            if value:
                literals[i] = _literal(value)
            names.append(name)
        rows = super().query(f"SELECT {', '.join(names)}{sql[sql.index(' FROM '):]}", params)
        self.asked[-1] = sql  # what the Loader asked
        return [tuple(literals.get(i, v) for i, v in enumerate(row)) for row in rows]


ALL_LATER = frozenset(c for columns in store.LATER_COLUMNS.values() for c in columns)
BEFORE_UPGRADE = (
    "the database predates db/upgrade.sql (no device_types.close_after_poll, device_types.connect_pause_ms, "
    "device_types.single_value_reads, energy_meters.baudrate, energy_meters.bytesize, energy_meters.parity, "
    "energy_meters.stopbits, energy_meters.transport, registers.counter_max_rate, registers.kind): read as their "
    "defaults (Modbus TCP, 9600 8N1, no device quirks, no counter guard); run db/upgrade.sql (docker compose "
    "runs it at every `up`)")


def test_a_database_before_the_upgrade_reads_the_defaults_and_says_so_once():
    old = three_types()  # rows as the first release held them: no later column in any
    tables = OldTables(old.types, old.registers, old.meters, missing=ALL_LATER)
    loader = Loader()
    first = tables.load(loader)
    assert first.problems[0] == BEFORE_UPGRADE and sum("db/upgrade.sql" in p for p in first.problems) == 1
    assert first.problems[1:] == three_types().load(Loader()).problems
    assert [m.id for m in first.meters] == [1, 2, 3, 4]
    assert all(m.transport is Transport.TCP and m.line is None and m.bus == BusAddress(Transport.TCP, "10.0.0.1", 502)
               for m in first.meters)
    assert all((d.connect_pause_s, d.close_after_poll, d.single_value_reads) == (0.0, False, False)
               for d in first.device_types.values())
    meters_sql = next(sql for sql in tables.asked if "FROM energy_meters" in sql)
    assert "'tcp' AS transport" in meters_sql and "9600 AS baudrate" in meters_sql and "8 AS bytesize" in meters_sql

    assert tables.load(loader) is first  # read again, the same: the same configuration, the line once
    tables.registers[2] = regrow(3, 0, "v", type="b", scale=2.0)  # one type changed: read by name
    second = tables.load(loader)
    assert tables.asked[1:3] == [store._sql(ALL_LATER)[3], store._sql(ALL_LATER)[4]]
    assert second.problems == first.problems and second.device_types["b"].registers[0].scale == 2.0

    # db/upgrade.sql ran under a running poller: the next load reads the columns, and the line is gone
    tables.missing = frozenset()
    tables.meters[1] = meterrow(2, type_="b", **SERIAL, baudrate=19200)
    upgraded = tables.load(loader)
    assert tables.asked[-1] == store.METERS_SQL
    assert upgraded.problems == first.problems[1:]
    assert upgraded.meters[1].bus == BusAddress(Transport.SERIAL, "/dev/ttyUSB0", 0, SerialLine(19200))


def test_a_database_missing_some_later_columns_names_just_those():
    tables = OldTables([TYPE], REG, [meterrow(1, **SERIAL, baudrate=19200, parity="E")],
                       missing=frozenset({"bytesize", "single_value_reads"}))
    config = tables.load(Loader())
    (problem,) = config.problems
    assert problem.startswith("the database predates db/upgrade.sql (no device_types.single_value_reads, "
                              "energy_meters.bytesize): "), problem
    assert config.meters[0].line == SerialLine(19200, "E", 1, 8)
    assert config.device_types["m"].single_value_reads is False


def test_a_database_made_by_an_earlier_init_sql_loads_as_modbus_tcp_with_the_one_line(postgres):
    """The real Loader against a first-release database, not upgraded: the catalogue lacks the
    later columns, the SELECTs read their defaults, and the seed meter polls as before."""
    earliest = sorted((Path(__file__).parent / "schemas").glob("init-*.sql"))[0]
    name = f"emm_store_old_{os.getpid()}"
    postgres.create_database(name, init=False)
    try:
        postgres.psql(name, "-f", str(earliest))
        config = postgres.configuration(name)
    finally:
        postgres.drop_database(name)
    assert config.problems == (BEFORE_UPGRADE,)
    (m,) = config.meters
    assert (m.transport, m.line, str(m.bus)) == (Transport.TCP, None, "virtual_modbustcp_server:502")
    d = m.device_type
    assert (d.connect_pause_s, d.close_after_poll, d.single_value_reads) == (0.0, False, False)


def test_the_columns_are_looked_up_in_the_tables_the_selects_read(postgres, database):
    """An empty schema named after the login comes first in the default search_path
    ("$user", public), so current_schema() names it; the tables are still public's, and
    their columns are all there: no "predates db/upgrade.sql" line."""
    postgres.psql(database, "-c", f'CREATE SCHEMA "{postgres.user}"')
    postgres.psql(database, "-c", "UPDATE energy_meters SET transport = 'udp'")
    config = postgres.configuration(database)
    assert config.problems == ()
    assert [m.transport for m in config.meters] == [Transport.UDP]


# --- a property: no wire is ever described two ways -------------------------------------------

@st.composite
def wire_rows(draw, mid: int) -> dict:
    """A meter row, most often a good one, on one of a few wires (bad values now and then)."""
    transport = draw(st.sampled_from(["tcp", "rtuovertcp", "udp", "serial", "serial", "serial", "rs485"]))
    hosts = ["/dev/ttyUSB0", "/dev/ttyUSB0", " /dev/ttyUSB0", "/dev/ttyUSB1", "ttyS0"] if transport == "serial" else [
        "10.0.0.1", "10.0.0.1", "10.0.0.2", "/dev/ttyUSB0"]
    return meterrow(mid, transport=transport, host=draw(st.sampled_from(hosts)),
                    port=draw(st.sampled_from([502, 502, 4196])), slave_address=draw(st.sampled_from([1, 2, 3, 0])),
                    baudrate=draw(st.sampled_from([9600, 9600, 9600, 19200, 49])),
                    parity=draw(st.sampled_from(["N", "N", "N", "E", "X"])), stopbits=draw(st.sampled_from([1, 1, 2])),
                    bytesize=draw(st.sampled_from([8, 8, 8, 7])), enabled=draw(st.sampled_from([True, True, False])))


LATER_METER_COLUMNS = sorted(store.LATER_COLUMNS["energy_meters"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_every_kept_meter_agrees_with_every_other_on_its_wire(data):
    """For any rows: nothing raises; a meter is kept exactly when its row loads on its own and no
    other enabled meter describes its wire otherwise (or it is disabled); every row not kept has
    exactly one problem line; the Loader gives the same."""
    rows = [data.draw(wire_rows(mid)) for mid in range(1, data.draw(st.integers(0, 6)) + 1)]
    for row in rows:
        if data.draw(st.integers(0, 9)) == 0:  # now and then anything at all in one later column
            row[data.draw(st.sampled_from([*LATER_METER_COLUMNS, "host"]))] = data.draw(ANY_VALUE)
    config = build_configuration([TYPE], REG, rows)  # must not raise

    alone = {}
    for row in rows:
        (single,) = build_configuration([TYPE], REG, [row]).meters or (None,)
        if single is not None:
            alone[row["id"]] = single
    torn = {mid for mid, m in alone.items()
            if m.enabled and any(o.enabled and o.bus.wire == m.bus.wire and o.bus != m.bus for o in alone.values())}
    assert [m.id for m in config.meters] == sorted(set(alone) - torn)
    assert all(m == alone[m.id] for m in config.meters)
    on_wire: dict = {}
    for m in config.meters:
        if m.enabled:
            on_wire.setdefault(m.bus.wire, set()).add(m.bus)
    assert all(len(buses) == 1 for buses in on_wire.values()), on_wire
    said = [int(re.match(r"energy_meters\.id (\d+)[ :]", p).group(1)) for p in config.problems]
    assert sorted(said) == sorted(r["id"] for r in rows if r["id"] not in {m.id for m in config.meters})
    same_as_a_fresh_build(Tables([TYPE], REG, rows).load(Loader()), Tables([TYPE], REG, rows))


# --- a plain psycopg2 connection (server-free: a fake answering as psycopg2 does) -------------

class Connection:
    """A psycopg2 connection as the store uses it: cursors whose `execute` runs one statement
    through `answer(sql, params)` (rows for a SELECT, None for a statement without result, or an
    exception to raise) and `rollback`. `executed` keeps each statement, `rollbacks` counts."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.executed: list[tuple] = []
        self.rollbacks = 0

    def cursor(self) -> Connection.Cursor:
        return Connection.Cursor(self)

    def rollback(self) -> None:
        self.rollbacks += 1

    class Cursor:
        def __init__(self, connection) -> None:
            self.connection, self.rows, self.description = connection, None, None

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def execute(self, sql, params=None) -> None:
            self.connection.executed.append((sql, params))
            self.rows = self.connection.answer(sql, params)
            self.description = None if self.rows is None else ("a column",)

        def fetchall(self) -> list:
            if self.rows is None:
                raise RuntimeError("no results to fetch")  # psycopg2's ProgrammingError
            return list(self.rows)

        def fetchone(self):
            return self.fetchall()[0] if self.rows else None


SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"


def over(tables: Tables):
    return lambda sql, params: None if sql == SNAPSHOT else tables.query(sql, params)


def test_load_configuration_reads_one_read_only_snapshot_and_always_ends_it():
    tables, loader = three_types(), Loader()
    connection = Connection(over(tables))
    first = load_configuration(connection, loader)
    same_as_a_fresh_build(first, tables)
    assert connection.executed[0][0] == SNAPSHOT and connection.rollbacks == 1
    tables.registers[2] = regrow(3, 0, "v", type="b", scale=2.0)
    second = load_configuration(connection, loader)  # the same Loader: only b is read again
    assert second.meters[0] is first.meters[0] and connection.rollbacks == 2
    assert (store.REGISTERS_OF_SQL, (["b"],)) in connection.executed
    assert load_configuration(Connection(over(tables))).meters == second.meters  # a Loader of its own

    def broken(sql, params):
        if sql == store.TYPE_FINGERPRINTS_SQL:
            raise RuntimeError("server closed the connection unexpectedly")
        return over(tables)(sql, params)

    connection = Connection(broken)
    with pytest.raises(RuntimeError, match="server closed"):
        load_configuration(connection)
    assert connection.rollbacks == 1


def test_config_version_reads_the_counter_and_is_none_without_one():
    import psycopg2.errors

    def version(rows):
        def answer(sql, params):
            assert sql == store.VERSION_SQL
            if isinstance(rows, Exception):
                raise rows
            return rows
        return Connection(answer)

    connection = version([(Decimal(42),)])
    assert store.config_version(connection) == 42 and connection.rollbacks == 1  # no transaction left open
    assert store.config_version(version([])) is None
    for error in (psycopg2.errors.UndefinedTable("relation \"config_version\" does not exist"),
                  psycopg2.errors.InsufficientPrivilege("permission denied for table config_version")):
        connection = version(error)
        assert store.config_version(connection) is None and connection.rollbacks == 1
    with pytest.raises(RuntimeError):
        store.config_version(version(RuntimeError("server closed the connection unexpectedly")))
