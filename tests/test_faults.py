"""Bad devices and a missing InfluxDB: reported per meter, the cycle goes on, nothing crashes."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from dataclasses import replace

import pytest

from poller.cycle import Poller
from poller.modbus import BadReply, ModbusError
from poller.model import BusAddress, FunctionCode, ReadBlock, Transport
from poller.transport import open_bus
from tests.servers import ModbusServerThread, free_port
from tests.test_end_to_end import run_poller
from virtual_server.device import make_device
from virtual_server.server import DROP, SimulatedServer


def seed_registers(postgres, database):
    config = postgres.configuration(database)
    return config.device_types["virtual_meter"].registers



def test_failing_devices_are_reported_and_the_rest_of_the_cycle_goes_on(postgres, database, victoria, hung_port):
    registers = seed_registers(postgres, database)
    device = make_device("virtual_meter", registers, 1)
    words = device.words()
    nan_words = dict(words)
    nan_words[(4, 0)], nan_words[(4, 1)] = 0x7FC0, 0x0000  # voltage_l1 = NaN
    gateway = ModbusServerThread(SimulatedServer(units={1: lambda: words, 2: lambda: nan_words}, default=None))
    refused = free_port()
    postgres.psql(database, "-c", f"""
        UPDATE device_types SET timeout_s = 0.5 WHERE name = 'virtual_meter';
        DELETE FROM energy_meters;
        INSERT INTO energy_meters (id, host, port, slave_address, type) VALUES
            (1, '127.0.0.1', {gateway.port}, 1, 'virtual_meter'),
            (2, '127.0.0.1', {gateway.port}, 9, 'virtual_meter'),
            (3, '127.0.0.1', {refused}, 1, 'virtual_meter'),
            (4, 'no-such-host.invalid', 502, 1, 'virtual_meter'),
            (5, '127.0.0.1', {hung_port}, 1, 'virtual_meter'),
            (6, '127.0.0.1', {gateway.port}, 2, 'virtual_meter');""")
    try:
        done = run_poller(["--once"], {**postgres.env(database), **victoria.env()})
    finally:
        gateway.close()
    log = done.stderr
    assert done.returncode == 0, log
    assert "cycle: meters ok=2 failed=4 backed_off=0 readings=23 invalid=1 " in log
    assert re.search(r"meter 2 .*unit 9.* failed: .*exception 11 \(gateway target device failed to respond\)", log)
    assert re.search(rf"meter 3 .* failed: cannot connect to 127.0.0.1:{refused}", log)
    assert re.search(r"meter 4 .* failed: cannot connect to no-such-host.invalid:502", log)
    assert re.search(rf"meter 5 .* failed: no reply from 127.0.0.1:{hung_port} unit 1 .* within 0.5 s", log)
    assert "Traceback" not in log

    series = victoria.export(min_samples=23 + 6 * 5)
    by_meter, up = {}, {}
    for s in series:
        if s["metric"]["__name__"] == "poller_status_up":
            up[s["metric"]["meter"]] = s["values"]
        elif not s["metric"]["__name__"].startswith("poller_status"):
            by_meter.setdefault(s["metric"]["meter"], set()).add(s["metric"]["__name__"])
    assert up == {"1": [1.0], "2": [0.0], "3": [0.0], "4": [0.0], "5": [0.0], "6": [1.0]}
    assert sorted(by_meter) == ["1", "6"]
    assert len(by_meter["1"]) == 12
    assert "voltage_l1_value" not in by_meter["6"] and len(by_meter["6"]) == 11  # NaN is not written


class ListSink:
    """The cycle's outbox, in memory."""

    def __init__(self):
        self.lines = []

    def put(self, lines):
        self.lines.extend(lines)


def test_a_block_with_a_refused_register_is_split_and_the_split_remembered(postgres, database):
    config = postgres.configuration(database)
    (meter,) = config.meters
    words = make_device("virtual_meter", meter.device_type.registers, 1).words()
    # temperature (holding register 101) does not exist on this device
    server = SimulatedServer(units={}, default=lambda: words, refuse=frozenset({(3, 101)}))
    thread = ModbusServerThread(server)
    try:
        meter = replace(meter, host="127.0.0.1", port=thread.port)
        sink = ListSink()
        poller = Poller(sink, status_points=False)

        async def two_cycles():
            first = await poller.run_cycle([meter])
            asked = server.stats.requests
            second = await poller.run_cycle([meter])
            poller.close()
            return first, asked, second

        first, asked_first, second = asyncio.run(two_cycles())
    finally:
        thread.close()
    assert first.meters_ok == 1 and first.readings == 11 and first.invalid == 1
    assert second.meters_ok == 1 and second.readings == 11
    measurements = {line.split(",")[0] for line in sink.lines}
    assert "temperature" not in measurements and len(measurements) == 11
    # first cycle: fc4 block, fc3 block refused, then halves until temperature stands alone
    assert asked_first > 2
    # second cycle: the remembered plan, one request per block, the refused register alone
    assert second.requests == server.stats.requests - asked_first
    assert second.requests < asked_first
    holding = [k for k in server.stats.by_request if k[1] == int(FunctionCode.READ_HOLDING_REGISTERS)]
    assert (0, 3, 101, 1) in holding or (1, 3, 101, 1) in holding


@pytest.mark.parametrize("how", ["reset", "close"])
def test_a_device_dropping_the_connection_mid_request_fails_at_once_and_the_next_read_reconnects(how):
    """The device reads the request, then resets (RST) or closes (FIN) the connection
    instead of answering: the read fails with that reason, not after its timeout as
    "no reply", and the next read opens a fresh connection that works."""
    connections = []

    async def device(reader, writer):
        connections.append(writer)
        request = await reader.readexactly(12)
        if len(connections) == 1:
            if how == "reset":
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                           struct.pack("ii", 1, 0))
            writer.close()
            return
        tid, _, _, unit, fc, _address, count = struct.unpack(">HHHBBHH", request)
        writer.write(struct.pack(">HHHBBB", tid, 0, 3 + 2 * count, unit, fc, 2 * count)
                     + struct.pack(f">{count}H", *range(100, 100 + count)))
        await writer.drain()

    block = ReadBlock(FunctionCode.READ_HOLDING_REGISTERS, 0, 2, ())

    async def two_reads():
        server = await asyncio.start_server(device, "127.0.0.1", 0)
        endpoint = open_bus(BusAddress(Transport.TCP, "127.0.0.1", server.sockets[0].getsockname()[1]))
        try:
            with pytest.raises(ModbusError) as dropped:
                await endpoint.read(block, 1, timeout=30)
            return dropped.value, await endpoint.read(block, 1, timeout=30)
        finally:
            endpoint.close()
            server.close()

    error, words = asyncio.run(asyncio.wait_for(two_reads(), 20))
    assert isinstance(error, BadReply), repr(error)
    assert "connection closed by the device" in str(error)
    assert words == [100, 101] and len(connections) == 2


def test_influxdb_unreachable_is_named(postgres, database):
    port = free_port()
    words = make_device("virtual_meter", seed_registers(postgres, database), 1).words()
    thread = ModbusServerThread(SimulatedServer(units={}, default=lambda: words))
    postgres.psql(database, "-c", f"UPDATE energy_meters SET host = '127.0.0.1', port = {thread.port}")
    try:
        done = run_poller(["--once"], {**postgres.env(database), "INFLUXDB_URL": f"http://127.0.0.1:{port}",
                                       "INFLUXDB_TOKEN": "t", "INFLUXDB_ORG": "o", "INFLUXDB_BUCKET": "b"})
    finally:
        thread.close()
    assert done.returncode == 1
    assert f"InfluxDB at http://127.0.0.1:{port} is unreachable" in done.stderr
    assert "13 points not written" in done.stderr
    assert "NOT WRITTEN=13" in done.stderr


def test_postgres_unreachable_is_named():
    port = free_port()
    done = run_poller(["--once", "--dry-run"], {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(port),
                                                "POSTGRES_USER": "u", "POSTGRES_DB": "d"})
    assert done.returncode == 2
    assert f"cannot read the configuration from PostgreSQL u@127.0.0.1:{port}/d" in done.stderr


def drops_input_registers(unit, fc, address, count):
    """A fault hook: answers the holding registers, drops the connection at the input-register request."""
    return DROP if fc == int(FunctionCode.READ_INPUT_REGISTERS) else None


def test_readings_taken_before_a_meter_fails_mid_way_are_stored(postgres, database, victoria):
    """README: 'Readings already taken from a meter before it failed are still written.'
    The seed map is read holding registers first (100..105: four values), then input registers."""
    words = make_device("virtual_meter", seed_registers(postgres, database), 1).words()
    gateway = ModbusServerThread(SimulatedServer(units={}, default=lambda: words, on_request=drops_input_registers))
    postgres.psql(database, "-c", f"UPDATE energy_meters SET host = '127.0.0.1', port = {gateway.port}")
    try:
        done = run_poller(["--once"], {**postgres.env(database), **victoria.env()})
    finally:
        gateway.close()
    assert done.returncode == 0, done.stderr
    assert "cycle: meters ok=0 failed=1 backed_off=0 readings=4 " in done.stderr, done.stderr
    series = victoria.export(min_samples=4 + 5)
    stored = {s["metric"]["__name__"] for s in series if not s["metric"]["__name__"].startswith("poller_")}
    assert stored == {"power_factor_value", "temperature_value", "reactive_power_value", "energy_import_value"}
    status = {s["metric"]["__name__"]: s["values"] for s in series if s["metric"]["__name__"].startswith("poller_")}
    assert status["poller_status_up"] == [0.0] and status["poller_status_readings"] == [4.0]
