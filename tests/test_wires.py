"""Issue 10 end to end: the poller reads meters over serial RTU, RTU over TCP and Modbus UDP
from energy_meters rows, stores exactly what the device served, and keeps one request at a
time per bus while the buses run side by side."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from poller.cycle import Poller
from poller.model import DeviceType, Meter, SerialLine, Transport
from tests.servers import ROOT, ModbusServerThread, free_port, pty_pairs, start_module, stop_process
from tests.test_end_to_end import run_poller
from tests.test_simulator_cli import wait_for_log
from virtual_server.device import make_device
from virtual_server.server import SimulatedServer

SEED = 5
# db/maps/eastron_sdm630.sql's comment: the requests its map plans to, worked out by hand
SDM630_REQUESTS = [(4, 0, 80), (4, 200, 52), (4, 342, 22)]


def test_the_sdm630_map_over_serial_rtu_over_tcp_and_udp_stores_what_was_served(postgres, database, victoria,
                                                                                  tmp_path):
    """One simulator per wire (framing from pymodbus's servers), one meter row per wire, one
    `python -m poller --once`: every SDM630 value stored equals the value served, read with
    the map's planned requests."""
    postgres.psql(database, "-f", str(ROOT / "db" / "maps" / "eastron_sdm630.sql"))
    tcp_port, udp_port = free_port(), free_port()
    with pty_pairs(tmp_path) as (line,):
        wires = {
            1: ("serial", ["--serial", line.device, "--baudrate", "38400", "--parity", "N", "--stopbits", "2"],
                f"'{line.poller}', 502, 7, 'eastron_sdm630', 'serial', 38400, 'N', 2"),
            2: ("rtuovertcp", ["--port", str(tcp_port), "--framer", "rtu"],
                f"'127.0.0.1', {tcp_port}, 7, 'eastron_sdm630', 'rtuovertcp', DEFAULT, DEFAULT, DEFAULT"),
            3: ("udp", ["--port", str(udp_port), "--udp"],
                f"'127.0.0.1', {udp_port}, 7, 'eastron_sdm630', 'udp', DEFAULT, DEFAULT, DEFAULT"),
        }
        rows = ", ".join(f"({mid}, {row})" for mid, (_, _, row) in wires.items())
        postgres.psql(database, "-c", "DELETE FROM energy_meters; INSERT INTO energy_meters (id, host, port, "
                                      f"slave_address, type, transport, baudrate, parity, stopbits) VALUES {rows}")
        config = postgres.configuration(database)
        assert config.problems == ()
        assert {m.id: str(m.bus) for m in config.meters} == {
            1: f"serial {line.poller} 38400 8N2", 2: f"rtuovertcp 127.0.0.1:{tcp_port}",
            3: f"udp 127.0.0.1:{udp_port}"}
        sims = {}
        try:
            for mid, (wire, args, _) in wires.items():
                log = tmp_path / f"{wire}.log"
                proc = start_module("virtual_server", [*args, "--unit", "7=eastron_sdm630", "--seed", str(SEED),
                                                       "--frozen", "--log-requests"], postgres.env(database), log)
                sims[mid] = (proc, log)
                wait_for_log(log, "serving eastron_sdm630", proc)
            done = run_poller(["--once"], {**postgres.env(database), **victoria.env()})
        finally:
            for proc, _ in sims.values():
                stop_process(proc)
    assert done.returncode == 0, done.stderr
    assert "meters ok=3 failed=0" in done.stderr, done.stderr

    registers = config.device_types["eastron_sdm630"].registers
    served = make_device("eastron_sdm630", registers, SEED).values()
    series = victoria.export('{__name__!~"poller_status.*"}', min_samples=3 * len(registers))
    stored: dict[str, dict[str, list[float]]] = {}
    for s in series:
        stored.setdefault(s["metric"]["meter"], {})[s["metric"]["__name__"].removesuffix("_value")] = s["values"]
    assert set(stored) == {"1", "2", "3"}
    for mid, (wire, _, _) in wires.items():
        got = stored[str(mid)]
        assert set(got) == {r.measurement for r in registers}, wire
        for name, value in served.items():
            assert got[name] == [pytest.approx(value, rel=1e-9, abs=1e-9)], (wire, name)
        log = sims[mid][1].read_text()
        requests = [(int(fc), int(a), int(n)) for unit, fc, a, n in
                    re.findall(r"request unit=(\d+) fc=(\d+) address=(\d+) count=(\d+)", log) if unit == "7"]
        assert sorted(requests) == SDM630_REQUESTS, wire


def test_buses_run_side_by_side_one_request_at_a_time_and_a_dead_unit_delays_only_its_bus(postgres, database,
                                                                                          tmp_path):
    """Three meters on one serial line (the first a unit nothing answers) and ten on one RTU over
    TCP gateway, polled by the real cycle: neither device ever sees two requests in flight; the
    gateway is read at the tick as if the dead unit did not exist; the live meters on the serial
    line wait exactly the dead unit's timeout, once per cycle it is asked, and are read."""
    registers = postgres.configuration(database).device_types["virtual_meter"].registers
    timeout = 0.6
    dtype = DeviceType("virtual_meter", registers, timeout_s=timeout)
    bank = {u: make_device("virtual_meter", registers, u).words() for u in range(1, 11)}
    serial_sim = SimulatedServer(units={1: lambda: bank[1], 2: lambda: bank[2]}, latency_s=0.005)
    gateway_sim = SimulatedServer(units={u: (lambda u=u: bank[u]) for u in range(1, 11)}, latency_s=0.01)
    with pty_pairs(tmp_path) as (line,):
        serial = ModbusServerThread(serial_sim, lambda s: s.start_serial(line.device, baudrate=19200))
        gateway = ModbusServerThread(gateway_sim, lambda s: s.start_tcp("127.0.0.1", 0, framer="rtu"))
        rs485 = SerialLine(baudrate=19200)
        meters = [Meter(1, line.poller, 0, 9, dtype, transport=Transport.SERIAL, line=rs485),  # nothing answers
                  Meter(2, line.poller, 0, 1, dtype, transport=Transport.SERIAL, line=rs485),
                  Meter(3, line.poller, 0, 2, dtype, transport=Transport.SERIAL, line=rs485)]
        meters += [Meter(10 + u, "127.0.0.1", gateway.port, u, dtype, transport=Transport.RTU_OVER_TCP)
                   for u in range(1, 11)]
        starts: dict[int, list[float]] = {}

        class Stamps:
            def put(self, lines):
                for ln in lines:
                    if ln.startswith("poller_status,"):
                        mid = int(re.search(r",meter=(\d+)", ln).group(1))
                        up = " up=1.0," in ln
                        starts.setdefault(mid, []).append((up, int(ln.rsplit(" ", 1)[1]) / 1000))

        async def cycles():
            poller = Poller(Stamps())
            reports, ticks = [], []
            try:
                for _ in range(2):
                    ticks.append(time.time())
                    reports.append(await poller.run_cycle(meters))
            finally:
                poller.close()
            return reports, ticks

        try:
            reports, ticks = asyncio.run(cycles())
        finally:
            serial.close()
            gateway.close()
    for report in reports:
        assert (report.meters_ok, report.meters_failed) == (12, 1), report.summary()
        assert report.readings == 12 * len(registers)
        assert timeout <= report.duration_s < timeout + 0.5, report.summary()
    assert serial_sim.stats.max_in_flight == 1 and gateway_sim.stats.max_in_flight == 1
    assert gateway_sim.stats.connections == 1
    assert {u for u, *_ in gateway_sim.stats.by_request} == set(range(1, 11))
    heard = serial_sim.stats.by_request
    assert {u for u, *_ in heard} == {1, 2, 9}  # every device on a line hears every request ...
    assert sum(n for (u, *_), n in heard.items() if u == 9) == 2  # ... the dead unit's first: one per cycle
    for cycle, tick in enumerate(ticks):
        dead_up, dead_at = starts[1][cycle]
        assert not dead_up and dead_at - tick < 0.1
        for mid in (2, 3):  # behind the dead unit: its timeout later, then read
            up, at = starts[mid][cycle]
            assert up and timeout <= at - tick < timeout + 0.3, (mid, at - tick)
        for mid in range(11, 21):  # the gateway: 10 units x 2 requests x 10 ms, from the tick
            up, at = starts[mid][cycle]
            assert up and at - tick < 0.4, (mid, at - tick)


def test_check_shows_each_meters_bus_its_quirks_and_the_rows_that_describe_one_wire_two_ways(postgres, database):
    postgres.psql(database, "-c", """
        INSERT INTO device_types (name, connect_pause_ms, close_after_poll, single_value_reads, request_pause_ms)
        VALUES ('dongle', 1000, true, true, 50);
        INSERT INTO registers (type, register_address, measurement_name, data_type, function_code)
        VALUES ('dongle', 0, 'v', 3, 4), ('dongle', 2, 'i', 3, 4);
        DELETE FROM energy_meters;
        INSERT INTO energy_meters (id, host, port, slave_address, type, transport, baudrate, parity) VALUES
            (1, '/dev/ttyUSB0', 502, 3, 'virtual_meter', 'serial', 19200, 'E'),
            (2, '192.0.2.20', 4196, 2, 'dongle', 'rtuovertcp', DEFAULT, DEFAULT),
            (3, '192.0.2.21', 502, 1, 'dongle', 'udp', DEFAULT, DEFAULT),
            (4, '/dev/ttyUSB1', 502, 1, 'virtual_meter', 'serial', 9600, 'N'),
            (5, '/dev/ttyUSB1', 502, 2, 'virtual_meter', 'serial', 19200, 'N');
    """)
    done = run_poller(["--check"], postgres.env(database))
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        "meter 1 (serial /dev/ttyUSB0 19200 8E1 unit 3, virtual_meter): 12 registers in 2 requests "
        "(fc3 100..105, fc4 0..15), schedule '* * * * * */10'",
        "meter 2 (rtuovertcp 192.0.2.20:4196 unit 2, dongle): 2 registers in 2 requests (fc4 0..1, fc4 2..3), "
        "schedule '* * * * * */10', quirks: connect_pause_ms=1000, request_pause_ms=50, close_after_poll, "
        "single_value_reads",
        "meter 3 (udp 192.0.2.21:502 unit 1, dongle): 2 registers in 2 requests (fc4 0..1, fc4 2..3), "
        "schedule '* * * * * */10', quirks: connect_pause_ms=1000, request_pause_ms=50, close_after_poll, "
        "single_value_reads",
        "SKIPPED energy_meters.id 4 (serial /dev/ttyUSB1 9600 8N1): this bus is described differently by "
        "id 5 (serial /dev/ttyUSB1 19200 8N1); skipped: give every meter on one host:port the same transport, "
        "and on one serial device the same line settings",
        "SKIPPED energy_meters.id 5 (serial /dev/ttyUSB1 19200 8N1): this bus is described differently by "
        "id 4 (serial /dev/ttyUSB1 9600 8N1); skipped: give every meter on one host:port the same transport, "
        "and on one serial device the same line settings",
        "3 meters, 2 rows skipped",
    ]
