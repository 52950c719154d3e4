"""Real device families over TCP: the library's maps served by the simulator, read by the
poller, checked against the served values and against an independent Modbus master (mbpoll)."""

from __future__ import annotations

import re
import subprocess
from collections import Counter

import pytest

from tests.servers import ROOT, ModbusServerThread, free_port, start_module, stop_process, wait_for_port
from tests.test_end_to_end import run_poller
from virtual_server.device import make_device
from virtual_server.server import ModbusTcpServer

SEED = 11
MAPS = ["eastron_sdm630", "huawei_sun2000", "sunspec_inverter"]

# A word-swapped float32 meter (low word first), as several meter families send.
CDAB_METER = """
INSERT INTO device_types (name, description) VALUES ('cdab_meter', 'float32, low word first');
INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code, byte_order)
VALUES ('cdab_meter', 0, 'voltage_l1', 'V', 3, 3, 'CDAB'),
       ('cdab_meter', 2, 'current_l1', 'A', 3, 3, 'CDAB'),
       ('cdab_meter', 4, 'active_power', 'W', 3, 3, 'CDAB'),
       ('cdab_meter', 6, 'frequency', 'Hz', 3, 3, 'CDAB');
"""
UNITS = {1: "eastron_sdm630", 2: "huawei_sun2000", 3: "cdab_meter", 4: "sunspec_inverter"}


@pytest.fixture
def fleet(postgres, database, tmp_path):
    for name in MAPS:
        postgres.psql(database, "-f", str(ROOT / "db" / "maps" / f"{name}.sql"))
    postgres.psql(database, "-c", CDAB_METER)
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
    assert "meters ok=4 failed=0" in done.stderr, done.stderr
    total = sum(len(m.device_type.registers) for m in config.meters)
    series = victoria.export('{__name__!~"poller_status.*"}', min_samples=total)
    stored = {(s["metric"]["meter"], s["metric"]["__name__"]): s["values"] for s in series}
    for meter in config.meters:
        served = make_device(meter.device_type.name, meter.device_type.registers, SEED).values()
        for reg in meter.device_type.registers:
            values = stored.get((str(meter.id), f"{reg.measurement}_value"))
            assert values is not None, f"{meter.device_type.name}.{reg.measurement} not stored"
            assert len(values) == 1
            assert values[0] == pytest.approx(served[reg.measurement], rel=1e-9, abs=1e-9), \
                f"{meter.device_type.name}.{reg.measurement}"
    assert len(stored) == total

    requests = Counter(int(u) for u in re.findall(r"request unit=(\d+) ", sim_log.read_text()))
    assert requests[1] <= 3, f"SDM630 read in {requests[1]} requests"
    sdm = next(m for m in config.meters if m.id == 1)
    assert len(sdm.device_type.registers) >= 30


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
    server = ModbusTcpServer(units={u: (lambda b=b: b) for u, b in banks.items()}, default=None, latency_s=0.02)
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


class BusyThenDropping(ModbusTcpServer):
    """Answers 'server device busy' to the first two requests, then serves; `drop_every`
    closes the connection after that many replies (a gateway that resets idle links)."""

    def __init__(self, *args, drop_every=0, **kw):
        super().__init__(*args, **kw)
        self.calls = 0
        self.drop_every = drop_every

    def _reply(self, unit, pdu):
        self.calls += 1
        if self.calls <= 2:
            return bytes([pdu[0] | 0x80, 6])
        return super()._reply(unit, pdu)

    async def _answer(self, unit, pdu):
        reply = await super()._answer(unit, pdu)
        if self.drop_every and self.calls % self.drop_every == 0:
            for writer in list(self._writers):
                writer.transport.abort()  # the reply is lost with the connection
        return reply


def test_busy_devices_are_retried_and_broken_connections_reopened(postgres, database):
    import asyncio
    from dataclasses import replace

    from poller.cycle import Poller

    (meter,) = postgres.configuration(database).meters
    words = make_device("virtual_meter", meter.device_type.registers, 1).words()
    server = BusyThenDropping(units={}, default=lambda: words, drop_every=5)
    thread = ModbusServerThread(server)
    meter = replace(meter, host="127.0.0.1", port=thread.port)

    class Lines:
        url, lines = "memory", []

        def write(self, batch):
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
