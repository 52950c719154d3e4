"""Device quirks (README, "Device quirks"): each against a simulated device that misbehaves
the way real ones do, polled by the real cycle over a real socket. Without the quirk the
meter fails; with it, every value arrives."""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import replace

import pytest

from poller.cycle import Poller
from poller.modbus import ModbusError
from poller.model import BusAddress, DataType, DeviceType, FunctionCode, Meter, ReadBlock, Register, Transport
from poller.transport import open_bus
from tests.servers import ModbusServerThread
from virtual_server.server import SILENT, SimulatedServer

VALUES = (230.5, 231.5, 232.5, 50.0)
REGISTERS = tuple(Register(i + 1, "q", 2 * i, f"v{i}", "V", DataType.FLOAT32, FunctionCode.READ_INPUT_REGISTERS)
                  for i in range(len(VALUES)))
BANK = {(4, 2 * i + k): w for i, v in enumerate(VALUES)
        for k, w in enumerate(struct.unpack(">2H", struct.pack(">f", v)))}
PLAIN = DeviceType("q", REGISTERS, timeout_s=0.3)


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def put(self, lines):
        self.lines.extend(lines)


def values(lines: list[str]) -> dict[str, float]:
    return {ln.split(",")[0]: float(ln.split(" value=")[1].split()[0]) for ln in lines}


def run_cycles(server: SimulatedServer, dtype: DeviceType, n: int, between=None):
    """n cycles of the real Poller against `server`; `between(port)` runs after each cycle."""
    thread = ModbusServerThread(server)
    meter = Meter(1, "127.0.0.1", thread.port, 1, dtype)
    out = Lines()
    poller = Poller(out, status_points=False)

    async def go():
        reports, others = [], []
        for _ in range(n):
            reports.append(await poller.run_cycle([meter]))
            if between is not None:
                others.append(await between(thread.port))
        poller.close()
        return reports, others

    try:
        reports, others = asyncio.run(go())
    finally:
        thread.close()
    return reports, others, out.lines


@pytest.mark.parametrize("quirk", [False, True])
def test_connect_pause_for_a_device_deaf_right_after_connecting(quirk):
    server = SimulatedServer(units={1: lambda: BANK}, deaf_after_connect_s=0.5)
    dtype = replace(PLAIN, connect_pause_s=0.6 if quirk else 0.0)
    reports, _, lines = run_cycles(server, dtype, 3)
    if quirk:
        assert [r.meters_ok for r in reports] == [1, 1, 1]
        assert server.stats.connections == 1  # the pause is paid once per connection, not per request
        assert values(lines) == {f"v{i}": v for i, v in enumerate(VALUES)}
    else:
        assert [r.meters_ok for r in reports] == [0, 0, 0] and not lines


def test_meters_sharing_a_bus_all_wait_the_longest_connect_pause_among_them():
    """A plain meter polled first on a Huawei dongle's connection: the bus keeps the pause its
    other meter needs, or the first requests after connecting go unanswered."""
    server = SimulatedServer(units={1: lambda: BANK, 2: lambda: BANK}, deaf_after_connect_s=0.5)
    thread = ModbusServerThread(server)
    plain = Meter(1, "127.0.0.1", thread.port, 1, PLAIN)
    dongle = Meter(2, "127.0.0.1", thread.port, 2, replace(PLAIN, name="dongle", connect_pause_s=0.6))
    poller = Poller(Lines(), status_points=False)

    async def go():
        try:
            return await poller.run_cycle([plain, dongle])
        finally:
            poller.close()

    try:
        report = asyncio.run(go())
    finally:
        thread.close()
    assert (report.meters_ok, report.meters_failed) == (2, 0), report.summary()
    assert server.stats.connections == 1


@pytest.mark.parametrize("quirk", [False, True])
def test_close_after_poll_lets_a_second_client_in_between_polls(quirk):
    server = SimulatedServer(units={1: lambda: BANK}, one_client=True)
    dtype = replace(PLAIN, close_after_poll=quirk)
    block = ReadBlock(FunctionCode.READ_INPUT_REGISTERS, 0, 2, ())

    async def other_client(port):  # another tool reading the same device between two polls
        bus = open_bus(BusAddress(Transport.TCP, "127.0.0.1", port))
        try:
            return await bus.read(block, 1, timeout=0.5)
        except ModbusError:
            return None
        finally:
            bus.close()

    reports, others, _ = run_cycles(server, dtype, 4, between=other_client)
    assert [r.meters_ok for r in reports] == [1, 1, 1, 1]  # the poller itself is fine either way
    if quirk:
        assert all(o is not None for o in others)
    else:
        assert others == [None] * 4  # the poller's open connection keeps everyone else out


@pytest.mark.parametrize("quirk", [False, True])
def test_single_value_reads_for_a_device_silent_on_multi_value_reads(quirk):
    server = SimulatedServer(units={1: lambda: BANK}, on_request=lambda unit, fc, address, count:
                             SILENT if count > 2 else None)
    dtype = replace(PLAIN, single_value_reads=quirk)
    reports, _, lines = run_cycles(server, dtype, 2)
    if quirk:
        assert [r.meters_ok for r in reports] == [1, 1] and reports[0].requests == 4
        assert values(lines) == {f"v{i}": v for i, v in enumerate(VALUES)}
        assert set(server.stats.by_request) == {(1, 4, 2 * i, 2) for i in range(4)}
    else:
        assert [r.meters_ok for r in reports] == [0, 0] and not lines


@pytest.mark.parametrize("quirk", [False, True])
def test_request_pause_for_a_device_that_needs_a_breath_between_requests(quirk):
    last = [0.0]

    def breathless(unit, fc, address, count):
        now, previous = time.monotonic(), last[0]
        last[0] = now
        return SILENT if now - previous < 0.1 else None

    server = SimulatedServer(units={1: lambda: BANK}, on_request=breathless)
    dtype = replace(PLAIN, single_value_reads=True, request_pause_s=0.15 if quirk else 0.0)
    reports, _, lines = run_cycles(server, dtype, 1)
    if quirk:
        assert reports[0].meters_ok == 1 and values(lines) == {f"v{i}": v for i, v in enumerate(VALUES)}
    else:
        assert reports[0].meters_failed == 1 and len(lines) == 1  # the first value only
