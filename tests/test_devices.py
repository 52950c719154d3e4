"""Real device families over TCP: the library's maps served by the simulator, read by the
poller, checked against the served values and against an independent Modbus master (mbpoll)."""

from __future__ import annotations

import re
import subprocess

import pytest

from poller.model import ByteOrder, DataType, FunctionCode, Register
from poller.onboard.signatures import read_signatures
from tests.servers import ROOT, ModbusServerThread, free_port, start_module, stop_process, wait_for_port
from tests.test_end_to_end import run_poller
from virtual_server.device import encode, make_device
from virtual_server.server import DROP, SERVER_DEVICE_BUSY, SimulatedServer

SEED = 11
MAPS = ["eastron_sdm630", "huawei_sun2000", "sunspec_inverter"]

# What a device in each byte order sends, from the vendors' documents rather than from any
# code here: the simulator's encoder must give exactly these words, so that a test reading
# the simulator checks poller.decode against the documents, not against itself.
#  - Siemens SITRANS FST030 operating instructions (A5E37367739-AC), A.6 "Float byte order":
#    bytes 3-2-1-0 (MSB first, ABCD), 2-3-0-1 (BADC), 1-0-3-2 (CDAB), 0-1-2-3 (DCBA), the
#    first byte named is sent first.
#  - Schneider Conext ComBox owner's guide (975-0679-01-01 D), "Modbus Byte Order": 0x12345678
#    goes out as 1234 5678 most significant word first, 5678 1234 least significant first.
#  - 236.76 V as IEEE-754 float32 is 43 6C C2 8F (the byte-order example of modbus.app's
#    "wrong values" page); 100.0 as float64 is 40 59 00 .. 00; -2 as int16 is FF FE.
#  - MasterOPC Universal Modbus (mps-soft) byte order help: int16 100 is 00 64 high byte
#    first, 64 00 low byte first.
# 64-bit values follow db/init.sql's byte_orders: CDAB = low word first, BADC = bytes swapped
# in each word, DCBA = both.
A, B, C, D = ByteOrder.ABCD, ByteOrder.BADC, ByteOrder.CDAB, ByteOrder.DCBA
SIMULATOR_GOLDEN = [
    (DataType.UINT16, A, 100, [0x0064]),
    (DataType.UINT16, B, 100, [0x6400]),
    (DataType.INT16, A, -2, [0xFFFE]),
    (DataType.INT16, B, -2, [0xFEFF]),
    (DataType.UINT32, A, 0x12345678, [0x1234, 0x5678]),
    (DataType.UINT32, C, 0x12345678, [0x5678, 0x1234]),
    (DataType.UINT32, B, 0x12345678, [0x3412, 0x7856]),
    (DataType.UINT32, D, 0x12345678, [0x7856, 0x3412]),
    (DataType.INT32, A, -2, [0xFFFF, 0xFFFE]),
    (DataType.INT32, C, -2, [0xFFFE, 0xFFFF]),
    (DataType.INT32, B, -2, [0xFFFF, 0xFEFF]),
    (DataType.INT32, D, -2, [0xFEFF, 0xFFFF]),
    (DataType.FLOAT32, A, 236.76, [0x436C, 0xC28F]),
    (DataType.FLOAT32, C, 236.76, [0xC28F, 0x436C]),
    (DataType.FLOAT32, B, 236.76, [0x6C43, 0x8FC2]),
    (DataType.FLOAT32, D, 236.76, [0x8FC2, 0x6C43]),
    (DataType.UINT64, A, 0x0102030405060708, [0x0102, 0x0304, 0x0506, 0x0708]),
    (DataType.UINT64, C, 0x0102030405060708, [0x0708, 0x0506, 0x0304, 0x0102]),
    (DataType.UINT64, B, 0x0102030405060708, [0x0201, 0x0403, 0x0605, 0x0807]),
    (DataType.UINT64, D, 0x0102030405060708, [0x0807, 0x0605, 0x0403, 0x0201]),
    (DataType.INT64, D, -2, [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF]),
    (DataType.FLOAT64, A, 100.0, [0x4059, 0, 0, 0]),
    (DataType.FLOAT64, C, 100.0, [0, 0, 0, 0x4059]),
    (DataType.FLOAT64, B, 100.0, [0x5940, 0, 0, 0]),
    (DataType.FLOAT64, D, 100.0, [0, 0, 0, 0x5940]),
]


@pytest.mark.parametrize(("data_type", "order", "raw", "words"), SIMULATOR_GOLDEN,
                         ids=[f"{dt.name}-{o}-{w}" for dt, o, _, w in SIMULATOR_GOLDEN])
def test_simulator_sends_the_documented_words(data_type, order, raw, words):
    register = Register(1, "t", 0, "x", None, data_type, FunctionCode.READ_HOLDING_REGISTERS, order)
    assert encode(register, raw) == words
    device = make_device("t", [register], seed=1)
    device.cells["x"].raw = raw
    assert device.words() == {(3, i): w for i, w in enumerate(words)}

# A word-swapped float32 meter (low word first), as several meter families send.
CDAB_METER = """
INSERT INTO device_types (name, description) VALUES ('cdab_meter', 'float32, low word first');
INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code, byte_order)
VALUES ('cdab_meter', 0, 'voltage_l1', 'V', 3, 3, 'CDAB'),
       ('cdab_meter', 2, 'current_l1', 'A', 3, 3, 'CDAB'),
       ('cdab_meter', 4, 'active_power', 'W', 3, 3, 'CDAB'),
       ('cdab_meter', 6, 'frequency', 'Hz', 3, 3, 'CDAB');
"""
# Every byte order at every width, and values with an offset after their scale (a
# temperature sent as tenths above -40 degC, another as hundredths of a kelvin), as
# devices outside the library's maps send them.
QUIRKS_METER = """
INSERT INTO device_types (name, description, max_gap) VALUES ('quirks_meter', 'orders, widths, offsets', 0);
INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code, byte_order,
                       scale, value_offset)
VALUES ('quirks_meter', 0, 'temperature', '°C', 1, 3, 'BADC', 0.1, -40),
       ('quirks_meter', 1, 'frequency', 'Hz', 4, 3, 'ABCD', 0.01, 0),
       ('quirks_meter', 2, 'voltage_l1', 'V', 3, 3, 'BADC', 1, 0),
       ('quirks_meter', 4, 'current_l1', 'A', 3, 3, 'DCBA', 1, 0),
       ('quirks_meter', 6, 'active_power', 'W', 2, 3, 'CDAB', 0.1, 0),
       ('quirks_meter', 8, 'energy_import', 'kWh', 5, 3, 'DCBA', 0.01, 0),
       ('quirks_meter', 10, 'temperature_coolant', '°C', 2, 3, 'CDAB', 0.01, -273.15),
       ('quirks_meter', 0, 'energy_export', 'Wh', 7, 4, 'BADC', 1, 0),
       ('quirks_meter', 4, 'energy_total', 'Wh', 8, 4, 'CDAB', 1, 0),
       ('quirks_meter', 8, 'energy_reactive_import', 'varh', 6, 4, 'DCBA', 1, 0);
"""
UNITS = {1: "eastron_sdm630", 2: "huawei_sun2000", 3: "cdab_meter", 4: "sunspec_inverter", 5: "quirks_meter"}
# The requests each unit must get, worked out by hand from the maps (not by plan_reads):
# (function code, first address, count).
EXPECTED_REQUESTS = {
    1: [(4, 0, 80), (4, 200, 52), (4, 342, 22)],  # db/maps/eastron_sdm630.sql's comment
    2: [(3, 32016, 8), (3, 32064, 52)],  # db/maps/huawei_sun2000.sql's comment
    3: [(3, 0, 8)],  # four float32 side by side
    4: [(3, 40069, 40)],  # model 101..103: 40069..40108, the one-register hole at 40070 bridged
    5: [(3, 0, 12), (4, 0, 12)],  # max_gap 0, but no gaps: one block per function code
}


@pytest.fixture
def fleet(postgres, database, tmp_path):
    for name in MAPS:
        postgres.psql(database, "-f", str(ROOT / "db" / "maps" / f"{name}.sql"))
    postgres.psql(database, "-c", CDAB_METER)
    postgres.psql(database, "-c", QUIRKS_METER)
    port = free_port()
    rows = ", ".join(f"({u}, '127.0.0.1', {port}, {u}, '{t}')" for u, t in UNITS.items())
    postgres.psql(database, "-c", "DELETE FROM energy_meters; INSERT INTO energy_meters "
                                  f"(id, host, port, slave_address, type) VALUES {rows}")
    config = postgres.configuration(database)
    assert config.problems == ()
    log = tmp_path / "simulator.log"
    args = ["--host", "127.0.0.1", "--port", str(port), "--seed", str(SEED), "--frozen", "--log-requests"]
    for unit, name in UNITS.items():
        args += ["--unit", f"{unit}={name}"]
    proc = start_module("virtual_server", args, postgres.env(database), log)
    try:
        wait_for_port(port, proc=proc)
        yield port, log, config
    finally:
        stop_process(proc)


def test_device_families_decode_to_the_values_served(postgres, database, victoria, fleet):
    port, sim_log, config = fleet
    done = run_poller(["--once"], {**postgres.env(database), **victoria.env()})
    assert done.returncode == 0, done.stderr
    assert "meters ok=5 failed=0" in done.stderr, done.stderr
    total = sum(len(m.device_type.registers) for m in config.meters)
    series = victoria.export('{__name__!~"poller_status.*"}', min_samples=total)
    stored = {(s["metric"]["meter"], s["metric"]["__name__"]): s["values"] for s in series}
    with postgres.connect(database) as conn, conn.cursor() as cur:  # the simulator serves them too
        signatures = read_signatures(cur)
    for meter in config.meters:
        served = make_device(meter.device_type.name, meter.device_type.registers, SEED,
                             signatures.get(meter.device_type.name, ())).values()
        for reg in meter.device_type.registers:
            values = stored.get((str(meter.id), f"{reg.measurement}_value"))
            assert values is not None, f"{meter.device_type.name}.{reg.measurement} not stored"
            assert len(values) == 1
            assert values[0] == pytest.approx(served[reg.measurement], rel=1e-9, abs=1e-9), \
                f"{meter.device_type.name}.{reg.measurement}"
    assert len(stored) == total

    requests: dict[int, list[tuple[int, int, int]]] = {}
    for unit, fc, address, count in re.findall(r"request unit=(\d+) fc=(\d+) address=(\d+) count=(\d+)",
                                               sim_log.read_text()):
        requests.setdefault(int(unit), []).append((int(fc), int(address), int(count)))
    assert {u: sorted(r) for u, r in requests.items()} == EXPECTED_REQUESTS
    sdm = next(m for m in config.meters if m.id == 1)
    assert len(sdm.device_type.registers) >= 30

    # the quirks meter's offsets came through as a device means them: raw * scale + offset
    quirks = {m.id: m for m in config.meters}[5].device_type.registers
    assert {r.measurement: r.offset for r in quirks if r.offset} == {"temperature": -40.0,
                                                                      "temperature_coolant": -273.15}
    for name in ("temperature", "temperature_coolant"):
        assert 20.0 < stored[("5", f"{name}_value")][0] < 50.0, name  # near the simulator's 35 degC


def mbpoll(port, unit, table, kind, start, count, word_order_big=True):
    args = ["mbpoll", "-m", "tcp", "-p", str(port), "-a", str(unit), "-0", "-r", str(start), "-c", str(count),
            "-t", f"{table}:{kind}", "-1", "-o", "2"]
    if word_order_big:
        args.append("-B")
    out = subprocess.run([*args, "127.0.0.1"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    return {int(a): v for a, v in re.findall(r"^\[(\d+)\]:\s+(\S+)", out.stdout, re.M)}


def test_mbpoll_agrees_with_what_the_poller_stored(postgres, database, victoria, fleet):
    port, _, config = fleet
    done = run_poller(["--once"], {**postgres.env(database), **victoria.env()})
    assert done.returncode == 0, done.stderr
    stored = {(s["metric"]["meter"], s["metric"]["__name__"]): s["values"][0]
              for s in victoria.export('{__name__!~"poller_status.*"}', min_samples=50)}

    # SDM630: big-endian float32 input registers
    sdm = next(m for m in config.meters if m.id == 1)
    first = [r for r in sdm.device_type.registers if r.address < 12]
    read = mbpoll(port, 1, 3, "float", 0, 6)
    assert len(read) == 6
    for reg in first:
        assert float(read[reg.address]) == pytest.approx(stored[("1", f"{reg.measurement}_value")], rel=1e-5)

    # the word-swapped meter: mbpoll's default word order for 32-bit values is low word first
    cdab = next(m for m in config.meters if m.id == 3)
    read = mbpoll(port, 3, 4, "float", 0, 4, word_order_big=False)
    for reg in cdab.device_type.registers:
        assert float(read[reg.address]) == pytest.approx(stored[("3", f"{reg.measurement}_value")], rel=1e-5)
    # ... and read big-endian it is something else: the order really is swapped on the wire
    wrong = mbpoll(port, 3, 4, "float", 0, 1)
    assert float(wrong[0]) != pytest.approx(stored[("3", "voltage_l1_value")], rel=1e-3)

    # Huawei: scaled uint32 energy (gain 100) read raw by mbpoll as a 32-bit integer
    huawei = next(m for m in config.meters if m.id == 2)
    energy = next(r for r in huawei.device_type.registers if r.measurement == "energy_yield")
    read = mbpoll(port, 2, 4, "int", energy.address, 1)
    assert int(read[energy.address]) / 100 == pytest.approx(stored[("2", "energy_yield_value")], rel=1e-12)


def test_a_gateway_with_ten_units_never_sees_two_requests_at_once(postgres, database):
    registers = postgres.configuration(database).device_types["virtual_meter"].registers
    banks = {u: make_device("virtual_meter", registers, u).words() for u in range(1, 11)}
    server = SimulatedServer(units={u: (lambda b=b: b) for u, b in banks.items()}, default=None, latency_s=0.02)
    gateway = ModbusServerThread(server)
    rows = ", ".join(f"('127.0.0.1', {gateway.port}, {u}, 'virtual_meter')" for u in range(1, 11))
    postgres.psql(database, "-c", "DELETE FROM energy_meters; INSERT INTO energy_meters "
                                  f"(host, port, slave_address, type) VALUES {rows}")
    try:
        done = run_poller(["--once", "--dry-run"], postgres.env(database))
    finally:
        gateway.close()
    assert done.returncode == 0, done.stderr
    assert "meters ok=10 failed=0" in done.stderr
    assert len(done.stdout.splitlines()) == 10 * len(registers)
    assert server.stats.requests == 20  # two blocks per unit
    assert {k[0] for k in server.stats.by_request} == set(range(1, 11))
    assert server.stats.max_in_flight == 1
    assert server.stats.connections == 1


class BusyThenDropping:
    """A fault hook (SimulatedServer's on_request): answers 'server device busy' to the first
    two requests, then serves; every `drop_every`-th request closes the connection instead of
    being answered (a gateway that resets idle links)."""

    def __init__(self, drop_every=0):
        self.calls = 0
        self.drop_every = drop_every

    def __call__(self, unit, fc, address, count):
        self.calls += 1
        if self.calls <= 2:
            return SERVER_DEVICE_BUSY
        if self.drop_every and self.calls % self.drop_every == 0:
            return DROP  # the reply is lost with the connection
        return None


def test_busy_devices_are_retried_and_broken_connections_reopened(postgres, database):
    import asyncio
    from dataclasses import replace

    from poller.cycle import Poller

    (meter,) = postgres.configuration(database).meters
    words = make_device("virtual_meter", meter.device_type.registers, 1).words()
    server = SimulatedServer(units={}, default=lambda: words, on_request=BusyThenDropping(drop_every=5))
    thread = ModbusServerThread(server)
    meter = replace(meter, host="127.0.0.1", port=thread.port)

    class Lines:
        lines: list[str] = []

        def put(self, batch):
            self.lines.extend(batch)

    async def cycles():
        poller = Poller(Lines(), status_points=False)
        reports = [await poller.run_cycle([meter]) for _ in range(4)]
        poller.close()
        return reports

    try:
        reports = asyncio.run(cycles())
    finally:
        thread.close()
    first = reports[0]
    assert first.meters_ok == 1 and first.readings == 12
    assert first.results[0].errors == 2 and first.requests == 4  # two busy replies retried, then two blocks
    # the 5th request's connection was dropped: that meter failed once, the next cycles reconnected
    assert [r.meters_ok for r in reports[1:]].count(1) >= 2
    assert server.stats.connections >= 2
