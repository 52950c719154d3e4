"""Rows -> objects: good rows load, each bad row is reported with its reason and skipped."""

from __future__ import annotations

import pytest

from poller.model import ByteOrder, DataType
from poller.store import build_configuration, load_configuration

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
