"""The buses of poller/transport.py on real wires: TCP and UDP sockets on loopback, and serial
lines made of socat pty pairs. pymodbus' own servers (each kind with its own framer) serve the
values on the main path; scripted devices misbehave on purpose; times are taken at the device's
end of the wire. The RTU and MBAP framings themselves are tested in tests/test_modbus.py."""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import os
import random
import socket
import struct
import tempfile
import termios
import time
import tty
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import serial
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer, ModbusUdpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from poller import loop as event_loop
from poller.modbus import (
    BadReply,
    BadRequest,
    ConnectError,
    ExceptionReply,
    ModbusError,
    NotOwner,
    ResponseTimeout,
)
from poller.model import BusAddress, FunctionCode, ReadBlock, SerialLine, Transport
from poller.transport import SerialBus, TcpBus, UdpBus, _port_problem, open_bus
from tests.servers import PtyPair, pty_pairs
from tests.test_modbus import AsyncioTrouble, reply_bytes, rtu_frame, rtu_reply

HOLDING, INPUT = FunctionCode.READ_HOLDING_REGISTERS, FunctionCode.READ_INPUT_REGISTERS
KINDS = ("tcp", "rtuovertcp", "udp", "serial")
LOOPS = ("asyncio", "uvloop")  # poller/loop.py: the tests in this file run on asyncio's unless they say

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # pymodbus logs every exception reply it sends


def word(unit: int, fc: int, address: int) -> int:
    """What the well-behaved devices here serve: a different word for every unit, table and address."""
    return (unit * 7919 + fc * 4099 + address * 31 + (address >> 8)) & 0xFFFF


def words_of(unit: int, fc: int, address: int, count: int) -> list[int]:
    return [word(unit, fc, a) for a in range(address, address + count)]


# ---------------------------------------------------------------------------------------------
# Serial lines: socat pty pairs


Respond = Callable[["Device", int, int, int, int], Awaitable[None]]


class Device:
    """The device's end of a wire, for scripted devices: requests in, timed; `write` out."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, bytes]] = []  # when each request's first byte arrived, and the request
        self.answered: list[float] = []  # when the device was done with each request
        self.writes: list[float] = []  # when each write was made
        self.in_flight = self.max_in_flight = 0

    def arrived(self, at: float, frame: bytes) -> None:
        self.requests.append((at, frame))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def done(self) -> None:
        self.in_flight -= 1
        self.answered.append(time.monotonic())

    async def write(self, data: bytes) -> None:
        raise NotImplementedError


class PtyDevice(Device):
    """A scripted RTU device on the device end of a pty pair; `respond` answers each request
    (8 bytes; a request with a bad CRC is recorded and not answered)."""

    def __init__(self, path: str, respond: Respond) -> None:
        super().__init__()
        self.path = path
        self.respond = respond
        self.bad: list[bytes] = []
        self.fd = -1
        self._buffer = bytearray()
        self._first = 0.0
        self._queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> PtyDevice:
        self.fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        termios.tcflush(self.fd, termios.TCIOFLUSH)
        asyncio.get_running_loop().add_reader(self.fd, self._readable)
        self._task = asyncio.create_task(self._serve())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.fd >= 0:
            asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view):]
            except BlockingIOError:
                await asyncio.sleep(0.001)
        self.writes.append(time.monotonic())

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            asyncio.get_running_loop().remove_reader(self.fd)
            return
        now = time.monotonic()
        if not self._buffer:
            self._first = now
        self._buffer += data
        while len(self._buffer) >= 8:  # the poller only ever sends 8-byte read requests
            frame = bytes(self._buffer[:8])
            del self._buffer[:8]
            self.arrived(self._first, frame)
            self._queue.put_nowait((self._first, frame))
            self._first = now

    async def _serve(self) -> None:
        while True:
            _, frame = await self._queue.get()
            try:
                if rtu_frame(frame[:6]) != frame:
                    self.bad.append(frame)
                else:
                    unit, fc, address, count = struct.unpack(">BBHH", frame[:6])
                    await self.respond(self, unit, fc, address, count)
            finally:
                self.done()


_CONNECTION: contextvars.ContextVar[asyncio.StreamWriter] = contextvars.ContextVar("connection")


class RtuTcpDevice(Device):
    """A scripted device behind a transparent serial server: RTU frames over TCP."""

    def __init__(self, respond: Respond) -> None:
        super().__init__()
        self.respond = respond
        self.connections: list[float] = []  # when each connection was accepted
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()  # the handlers end on the closed stream (cancelling them makes asyncio complain)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self._server.wait_closed()

    @property
    def writer(self) -> asyncio.StreamWriter:
        """The connection of the request being answered (each connection has its own handler task)."""
        return _CONNECTION.get()

    async def write(self, data: bytes) -> None:
        if self.writer.is_closing():
            return  # the poller hung up meanwhile
        self.writer.write(data)
        try:
            await self.writer.drain()
        except ConnectionError:
            return
        self.writes.append(time.monotonic())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections.append(time.monotonic())
        _CONNECTION.set(writer)
        self._writers.add(writer)
        try:
            while True:
                first = await reader.readexactly(1)
                at = time.monotonic()
                frame = first + await reader.readexactly(7)
                self.arrived(at, frame)
                try:
                    assert rtu_frame(frame[:6]) == frame, frame.hex()
                    unit, fc, address, count = struct.unpack(">BBHH", frame[:6])
                    await self.respond(self, unit, fc, address, count)
                finally:
                    self.done()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()


def serving(units: tuple[int, ...] = (1,), latency: float = 0.0) -> Respond:
    """A well-behaved RTU device for `units` (any other unit stays silent: a dead or absent unit)."""

    async def respond(device: Device, unit: int, fc: int, address: int, count: int) -> None:
        if unit not in units:
            return
        if latency:
            await asyncio.sleep(latency)
        await device.write(rtu_reply(unit, fc, words_of(unit, fc, address, count)))

    return respond


def serial_bus(path: str, baudrate: int = 9600) -> SerialBus:
    bus = open_bus(BusAddress(Transport.SERIAL, path, 0, SerialLine(baudrate)))
    assert isinstance(bus, SerialBus)
    return bus


# ---------------------------------------------------------------------------------------------
# The seam


def test_open_bus_makes_the_client_of_each_kind_and_connects_nothing_yet():
    line = SerialLine(19200, "E", 1, 8)
    cases = [
        (BusAddress(Transport.TCP, "192.0.2.10", 502), TcpBus, "192.0.2.10:502"),
        (BusAddress(Transport.RTU_OVER_TCP, "192.0.2.20", 4196), TcpBus, "rtuovertcp 192.0.2.20:4196"),
        (BusAddress(Transport.UDP, "192.0.2.30", 502), UdpBus, "udp 192.0.2.30:502"),
        (BusAddress(Transport.SERIAL, "/dev/ttyUSB0", 0, line), SerialBus, "serial /dev/ttyUSB0 19200 8E1"),
    ]
    for address, kind, name in cases:
        bus = open_bus(address)
        assert type(bus) is kind and str(bus) == name
        assert bus._connection is None  # type: ignore[attr-defined]
        bus.close()
        bus.close()  # idempotent, connected or not
    assert open_bus(cases[0][0]).framing.name == "Modbus TCP"  # type: ignore[attr-defined]
    assert open_bus(cases[1][0]).framing.name == "Modbus RTU"  # type: ignore[attr-defined]
    assert open_bus(cases[3][0]).framing.name == "Modbus RTU"  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Main path: every kind against pymodbus' own server for it


def pymodbus_devices(units: tuple[int, ...], size: int = 2000,
                     action: Callable[..., Awaitable[None]] | None = None) -> list[SimDevice]:
    """pymodbus devices serving word(unit, fc, address) at addresses 0..size-1 of both tables."""
    devices = []
    for unit in units:
        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        holding = [SimData(0, values=words_of(unit, 3, 0, size), datatype=DataType.REGISTERS)]
        inputs = [SimData(0, values=words_of(unit, 4, 0, size), datatype=DataType.REGISTERS)]
        devices.append(SimDevice(id=unit, simdata=(bits, bits, holding, inputs), action=action))
    return devices


@contextmanager
def nothing() -> Iterator[None]:
    yield


async def start_pymodbus(kind: str, devices: list[SimDevice], pty: PtyPair | None = None,
                         baudrate: int = 9600) -> tuple[object, BusAddress]:
    """pymodbus' server of `kind` (its own framer: socket, RTU, or RTU on a serial port) and the
    address a bus reaches it at."""
    if kind == "serial":
        assert pty is not None
        server: object = ModbusSerialServer(devices, framer=FramerType.RTU, port=pty.device, baudrate=baudrate)
        await server.serve_forever(background=True)  # type: ignore[attr-defined]
        return server, BusAddress(Transport.SERIAL, pty.poller, 0, SerialLine(baudrate))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if kind == "udp":
        server = ModbusUdpServer(devices, framer=FramerType.SOCKET, address=("127.0.0.1", port))
    else:
        framer = FramerType.RTU if kind == "rtuovertcp" else FramerType.SOCKET
        server = ModbusTcpServer(devices, framer=framer, address=("127.0.0.1", port))
    await server.serve_forever(background=True)  # type: ignore[attr-defined]
    transport = {"tcp": Transport.TCP, "rtuovertcp": Transport.RTU_OVER_TCP, "udp": Transport.UDP}[kind]
    return server, BusAddress(transport, "127.0.0.1", port)


def edge_and_random_blocks(seed: int, size: int) -> list[tuple[int, ReadBlock]]:
    rng = random.Random(seed)
    blocks = [(1, ReadBlock(HOLDING, 0, 1, ())), (17, ReadBlock(INPUT, 0, 125, ())),
              (1, ReadBlock(HOLDING, size - 125, 125, ())), (17, ReadBlock(INPUT, size - 1, 1, ()))]
    for _ in range(36):
        count = rng.choice([1, 2, 4, rng.randint(1, 125)])
        blocks.append((rng.choice([1, 17]), ReadBlock(rng.choice([HOLDING, INPUT]), rng.randint(0, size - count),
                                                      count, ())))
    return blocks


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_reads_exactly_the_words_pymodbus_serves(kind, tmp_path):
    size = 2000
    blocks = edge_and_random_blocks(seed=KINDS.index(kind), size=size)

    async def run():
        with AsyncioTrouble() as trouble, (pty_pairs(tmp_path) if kind == "serial" else nothing()) as pairs:
            server, address = await start_pymodbus(kind, pymodbus_devices((1, 17), size),
                                                   pairs[0] if pairs else None, baudrate=115200)
            bus = open_bus(address)
            try:
                got = [await bus.read(block, unit, timeout=5) for unit, block in blocks]
                # a register the device does not have: its exception, and the bus goes on
                with pytest.raises(ExceptionReply) as refused:
                    await bus.read(ReadBlock(HOLDING, size - 1, 2, ()), 1, timeout=5)
                after = await bus.read(ReadBlock(INPUT, 7, 3, ()), 17, timeout=5)
                bus.close()
                bus.close()  # idempotent
                again = await bus.read(ReadBlock(HOLDING, 7, 3, ()), 1, timeout=5)  # connects anew
            finally:
                bus.close()
                await server.shutdown()  # type: ignore[attr-defined]
        trouble.check()
        return got, refused.value, after, again

    got, refused, after, again = asyncio.run(run())
    assert got == [words_of(unit, int(b.function_code), b.address, b.count) for unit, b in blocks]
    assert refused.code == 2
    assert after == words_of(17, 4, 7, 3) and again == words_of(1, 3, 7, 3)


# ---------------------------------------------------------------------------------------------
# One request at a time, the pause and the connect pause, on every kind


class UdpDevice(asyncio.DatagramProtocol):
    """A scripted Modbus UDP device: `respond(device, addr, tid, unit, fc, address, count)` answers."""

    def __init__(self, respond: Callable[..., Awaitable[None]]) -> None:
        self.respond = respond
        self.record = Device()
        self.sent: list[tuple[float, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.record.arrived(time.monotonic(), data)
        tid, pid, length, unit, fc, address, count = struct.unpack(">HHHBBHH", data)
        assert (pid, length) == (0, 6) and fc in (3, 4), data.hex()
        task = asyncio.ensure_future(self._answer(addr, tid, unit, fc, address, count))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, addr: tuple[str, int], *request: int) -> None:
        try:
            await self.respond(self, addr, *request)
        finally:
            self.record.done()

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)
        self.record.writes.append(time.monotonic())
        self.sent.append((time.monotonic(), data))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.transport is not None:
            self.transport.close()


def udp_serving(latency: float = 0.0) -> Callable[..., Awaitable[None]]:
    async def respond(device: UdpDevice, addr: tuple[str, int], tid: int, unit: int, fc: int, address: int,
                      count: int) -> None:
        if latency:
            await asyncio.sleep(latency)
        device.send(reply_bytes(tid, unit, fc, words_of(unit, fc, address, count)), addr)

    return respond


class TcpMbapDevice(Device):
    """A scripted Modbus TCP device that answers after `latency` and times what it sees."""

    def __init__(self, latency: float = 0.0) -> None:
        super().__init__()
        self.latency = latency
        self.connections: list[float] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(time.monotonic())
        try:
            while True:
                first = await reader.readexactly(1)
                at = time.monotonic()
                frame = first + await reader.readexactly(11)
                self.arrived(at, frame)
                tid, _, _, unit, fc, address, count = struct.unpack(">HHHBBHH", frame)
                if self.latency:
                    await asyncio.sleep(self.latency)
                writer.write(reply_bytes(tid, unit, fc, words_of(unit, fc, address, count)))
                await writer.drain()
                self.done()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextmanager
def scripted(kind: str, tmp_path: Path, latency: float = 0.0) -> Iterator[Callable[[], Awaitable[tuple]]]:
    """A scripted well-behaved device of `kind`; yields an async starter giving (device record,
    bus address, stop coroutine function, connections list or None)."""
    with (pty_pairs(tmp_path) if kind == "serial" else nothing()) as pairs:

        async def start() -> tuple:
            if kind == "serial":
                device = await PtyDevice(pairs[0].device, serving((1,), latency)).start()
                return device, BusAddress(Transport.SERIAL, pairs[0].poller, 0, SerialLine(115200)), device.stop, None
            if kind == "rtuovertcp":
                rtu = RtuTcpDevice(serving((1,), latency))
                port = await rtu.start()
                return rtu, BusAddress(Transport.RTU_OVER_TCP, "127.0.0.1", port), rtu.stop, rtu.connections
            if kind == "tcp":
                mbap = TcpMbapDevice(latency)
                port = await mbap.start()
                return mbap, BusAddress(Transport.TCP, "127.0.0.1", port), mbap.stop, mbap.connections
            udp = UdpDevice(udp_serving(latency))
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: udp, local_addr=("127.0.0.1", 0))
            port = transport.get_extra_info("sockname")[1]
            return udp.record, BusAddress(Transport.UDP, "127.0.0.1", port), udp.stop, None

        yield start


@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_readers_on_one_bus_never_overlap(kind, tmp_path):
    """30 reads started at once on one bus reach the device one after the other (the lock),
    each with its own words, however slowly the device answers."""
    blocks = [ReadBlock(INPUT if i % 2 else HOLDING, 10 * i, 1 + i % 7, ()) for i in range(30)]

    async def run():
        with AsyncioTrouble() as trouble, scripted(kind, tmp_path, latency=0.003) as start:
            device, address, stop, connections = await start()
            bus = open_bus(address)
            try:
                results = await asyncio.gather(*(bus.read(b, 1, timeout=5) for b in blocks))
            finally:
                bus.close()
                await stop()
        trouble.check()
        return results, device, connections

    results, device, connections = asyncio.run(run())
    assert results == [words_of(1, int(b.function_code), b.address, b.count) for b in blocks]
    assert len(device.requests) == 30
    assert device.max_in_flight == 1
    if connections is not None:
        assert len(connections) == 1


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("kind", KINDS)
def test_the_pause_separates_requests_on_every_kind(kind, loop, tmp_path):
    """At least the pause, on both event loops (uvloop's timers may fire a millisecond early)."""
    async def run():
        with AsyncioTrouble() as trouble, scripted(kind, tmp_path) as start:
            device, address, stop, _ = await start()
            bus = open_bus(address)
            try:
                for _ in range(4):
                    await bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=5, pause=0.1)
            finally:
                bus.close()
                await stop()
        trouble.check()
        return device

    device = event_loop.run(run(), loop)
    gaps = [nxt[0] - done for nxt, done in zip(device.requests[1:], device.answered, strict=False)]
    assert len(gaps) == 3 and min(gaps) >= 0.1, gaps
    assert max(gaps) < 0.3, gaps


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("kind", KINDS)
def test_connect_pause_is_kept_after_every_connect_and_only_then(kind, loop, tmp_path):
    """The first request on a connection (a port just opened, for serial) waits connect_pause;
    the next ones on it do not; after close() the next read connects and waits again."""
    pause = 0.25

    async def run():
        with AsyncioTrouble() as trouble, scripted(kind, tmp_path) as start:
            device, address, stop, connections = await start()
            bus = open_bus(address)
            starts = []
            try:
                for i in range(5):
                    if i == 3:
                        bus.close()  # "close after each poll": the next read reconnects
                    starts.append(time.monotonic())
                    got = await bus.read(ReadBlock(HOLDING, i, 2, ()), 1, timeout=5, connect_pause=pause)
                    assert got == words_of(1, 3, i, 2)
            finally:
                bus.close()
                await stop()
        trouble.check()
        return starts, device, connections

    starts, device, connections = event_loop.run(run(), loop)
    arrivals = [at for at, _ in device.requests]
    waited = [at - s for at, s in zip(arrivals, starts, strict=True)]
    assert waited[0] >= pause and waited[3] >= pause, waited  # after connecting
    assert max(waited[1], waited[2], waited[4]) < pause / 2, waited  # on a connection already there
    if connections is not None:  # measured from the connection the device accepted
        assert len(connections) == 2
        assert arrivals[0] - connections[0] >= pause and arrivals[3] - connections[1] >= pause


# ---------------------------------------------------------------------------------------------
# Serial timing: the silence between frames, noise, dead units


def test_requests_on_a_serial_line_are_separated_by_the_silence(tmp_path):
    """At 1200 baud 8N1 a character is 8.3 ms and the silence 29 ms: measured at the device,
    from the end of its reply to the start of the next request, never less."""
    line = SerialLine(1200)

    async def run():
        with AsyncioTrouble() as trouble, pty_pairs(tmp_path) as (pair,):
            device = await PtyDevice(pair.device, serving((1, 2))).start()
            bus = serial_bus(pair.poller, 1200)
            try:
                for i in range(8):
                    assert await bus.read(ReadBlock(HOLDING, i, 2, ()), 1 + i % 2, timeout=5) == \
                        words_of(1 + i % 2, 3, i, 2)
            finally:
                bus.close()
                await device.stop()
        trouble.check()
        return device

    device = asyncio.run(run())
    gaps = [nxt[0] - wrote for nxt, wrote in zip(device.requests[1:], device.writes, strict=False)]
    assert len(gaps) == 7
    assert min(gaps) >= line.silence_s, (line.silence_s, gaps)
    assert max(gaps) < line.silence_s + 0.1, gaps  # and not much more


def test_noise_between_frames_is_waited_out_and_never_taken_as_a_reply(tmp_path):
    """After its reply the device keeps sending, for 150 ms, bursts 10 ms apart (less than the
    29 ms silence at 1200 baud) that are each a correct-looking reply, CRC and all, to the next
    request, with other words. The bus must wait until the line has been quiet, and then read
    the real reply."""
    line = SerialLine(1200)
    forged = [0xDEAD, 0xBEEF]

    async def respond(device: Device, unit: int, fc: int, address: int, count: int) -> None:
        await device.write(rtu_reply(unit, fc, words_of(unit, fc, address, count)))
        if address == 0:
            for _ in range(15):
                await asyncio.sleep(0.01)
                await device.write(rtu_reply(unit, fc, forged))

    async def run():
        with AsyncioTrouble() as trouble, pty_pairs(tmp_path) as (pair,):
            device = await PtyDevice(pair.device, respond).start()
            bus = serial_bus(pair.poller, 1200)
            try:
                first = await bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=5)
                second = await bus.read(ReadBlock(HOLDING, 100, 2, ()), 1, timeout=5)
                noise = bus.noise
            finally:
                bus.close()
                await device.stop()
        trouble.check()
        return first, second, noise, device

    first, second, noise, device = asyncio.run(run())
    assert first == words_of(1, 3, 0, 2)
    assert second == words_of(1, 3, 100, 2) != forged
    assert noise == 15 * 9  # every forged reply was read, and thrown away
    last_noise = device.writes[15]
    assert device.requests[1][0] - last_noise >= line.silence_s


def test_a_line_that_never_falls_quiet_costs_one_timeout_and_is_never_talked_over(tmp_path):
    async def babble(device: PtyDevice, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await device.write(b"\x55\xaa")
            await asyncio.sleep(0.005)  # 5 ms: far less than the 29 ms silence at 1200 baud

    async def run():
        with AsyncioTrouble() as trouble, pty_pairs(tmp_path) as (pair,):
            device = await PtyDevice(pair.device, serving((1,))).start()
            stop = asyncio.Event()
            noise = asyncio.create_task(babble(device, stop))
            bus = serial_bus(pair.poller, 1200)
            try:
                started = time.monotonic()
                with pytest.raises(ResponseTimeout) as failed:
                    await bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=0.4)
                took = time.monotonic() - started
                stop.set()
                await noise
                quiet = await bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=5)
            finally:
                stop.set()
                bus.close()
                await device.stop()
        trouble.check()
        return failed.value, took, quiet, device

    error, took, quiet, device = asyncio.run(run())
    assert "never fell quiet for 29.1667 ms within 0.4 s to ask unit 1 for fc3 0..1" in str(error)
    assert 0.4 <= took < 0.8, took
    assert len(device.requests) == 1 and quiet == words_of(1, 3, 0, 2)  # nothing was sent into the noise


def test_a_dead_unit_costs_its_serial_bus_one_timeout_while_another_bus_stays_on_time(tmp_path):
    """Bus A: unit 1 answers, unit 2 is dead. Bus B, another line in the same event loop, is read
    all along: its reads never wait for A's timeouts; and on A only the dead unit's read is slow."""
    timeout = 0.5

    async def run():
        with AsyncioTrouble() as trouble, pty_pairs(tmp_path, 2) as (line_a, line_b):
            device_a = await PtyDevice(line_a.device, serving((1,))).start()
            device_b = await PtyDevice(line_b.device, serving((1,))).start()
            bus_a, bus_b = serial_bus(line_a.poller), serial_bus(line_b.poller)
            done = asyncio.Event()
            b_reads: list[float] = []

            async def poll_b():
                while not done.is_set():
                    started = time.monotonic()
                    assert await bus_b.read(ReadBlock(INPUT, 0, 10, ()), 1, timeout=5) == words_of(1, 4, 0, 10)
                    b_reads.append(time.monotonic() - started)
                    await asyncio.sleep(0.01)

            async def poll_a():
                took = []
                try:
                    for unit in (1, 2, 1, 2, 1):
                        started = time.monotonic()
                        try:
                            assert await bus_a.read(ReadBlock(HOLDING, 0, 4, ()), unit, timeout) == \
                                words_of(unit, 3, 0, 4)
                            took.append(("ok", time.monotonic() - started))
                        except ResponseTimeout:
                            took.append(("timeout", time.monotonic() - started))
                    return took
                finally:
                    done.set()

            try:
                took, _ = await asyncio.gather(poll_a(), poll_b())
            finally:
                bus_a.close()
                bus_b.close()
                await device_a.stop()
                await device_b.stop()
        trouble.check()
        return took, b_reads

    took, b_reads = asyncio.run(run())
    assert [kind for kind, _ in took] == ["ok", "timeout", "ok", "timeout", "ok"]
    for kind, seconds in took:
        if kind == "timeout":
            assert timeout <= seconds < timeout + 0.15, took  # the timeout (and the frames' wire time)
        else:
            assert seconds < 0.15, took  # right after a dead unit too
    assert len(b_reads) >= 10 and max(b_reads) < 0.2, b_reads  # never one of A's timeouts


def test_a_reply_slower_on_the_wire_than_the_timeout_is_still_read(tmp_path):
    """At 1200 baud a 40-register reply is 85 characters, 0.71 s on the wire: more than the
    0.3 s timeout, which counts the device's silence, not the frames' own time on the line."""
    line = SerialLine(1200)

    async def respond(device: Device, unit: int, fc: int, address: int, count: int) -> None:
        reply = rtu_reply(unit, fc, words_of(unit, fc, address, count))
        for i in range(len(reply)):  # as fast as the line goes, and no faster
            await device.write(reply[i:i + 1])
            await asyncio.sleep(line.char_time_s)

    async def run():
        with AsyncioTrouble() as trouble, pty_pairs(tmp_path) as (pair,):
            device = await PtyDevice(pair.device, respond).start()
            bus = serial_bus(pair.poller, 1200)
            try:
                started = time.monotonic()
                words = await bus.read(ReadBlock(INPUT, 0, 40, ()), 1, timeout=0.3)
                took = time.monotonic() - started
            finally:
                bus.close()
                await device.stop()
        trouble.check()
        return words, took

    words, took = asyncio.run(run())
    assert words == words_of(1, 4, 0, 40)
    assert took > 85 * line.char_time_s > 0.3


def test_a_cancelled_serial_read_leaves_no_reply_behind_for_the_next_one(tmp_path):
    """The cycle is cancelled while a request is in flight: the device still answers it. RTU has
    no transaction id, and the next read asks the same unit for as many registers, so that reply
    would fit it: the bus must not send the next request until the cancelled one's time is over."""

    async def respond(device: Device, unit: int, fc: int, address: int, count: int) -> None:
        if address == 1:
            await asyncio.sleep(0.15)  # slow: the read is cancelled meanwhile
        await device.write(rtu_reply(unit, fc, [address] * count))

    async def run():
        with AsyncioTrouble() as trouble, pty_pairs(tmp_path) as (pair,):
            device = await PtyDevice(pair.device, respond).start()
            bus = serial_bus(pair.poller, 115200)
            try:
                slow = asyncio.create_task(bus.read(ReadBlock(HOLDING, 1, 2, ()), 1, timeout=0.5))
                while not device.requests:
                    await asyncio.sleep(0.005)
                slow.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await slow
                words = await bus.read(ReadBlock(HOLDING, 2, 2, ()), 1, timeout=0.5)
            finally:
                bus.close()
                await device.stop()
        trouble.check()
        return words, device

    words, device = asyncio.run(run())
    assert words == [2, 2]
    assert device.requests[1][0] > device.writes[0]  # the next request went out after the late reply


# ---------------------------------------------------------------------------------------------
# Serial ports that cannot be used


def test_a_serial_port_that_cannot_be_opened_is_a_connect_error_naming_the_path_and_the_cause(tmp_path):
    plain = tmp_path / "not-a-tty"
    plain.write_bytes(b"")

    async def fails(path: str) -> str:
        bus = serial_bus(path)
        try:
            with pytest.raises(ConnectError) as failed:
                await bus.read(ReadBlock(HOLDING, 0, 1, ()), 1, timeout=1)
            assert bus._connection is None and bus._port is None
        finally:
            bus.close()
        return str(failed.value)

    async def run():
        with AsyncioTrouble() as trouble, pty_pairs(tmp_path) as (pair,):
            missing = await fails("/dev/ttyUSB-emm-missing")
            not_tty = await fails(str(plain))
            directory = await fails(str(tmp_path))
            holder = serial_bus(pair.poller)
            device = await PtyDevice(pair.device, serving((1,))).start()
            try:
                assert await holder.read(ReadBlock(HOLDING, 0, 1, ()), 1, timeout=5) == words_of(1, 3, 0, 1)
                in_use = await fails(pair.poller)  # a second bus, or another program, on the same port
                assert await holder.read(ReadBlock(HOLDING, 1, 1, ()), 1, timeout=5) == words_of(1, 3, 1, 1)
            finally:
                holder.close()
                await device.stop()
        trouble.check()
        return missing, not_tty, directory, in_use, pair.poller

    missing, not_tty, directory, in_use, poller_path = asyncio.run(run())
    assert missing == ("cannot connect to serial /dev/ttyUSB-emm-missing 9600 8N1: /dev/ttyUSB-emm-missing: "
                       "no such device (is the adapter plugged in, the path right, and the device passed into "
                       "the container?)")
    assert not_tty == f"cannot connect to serial {plain} 9600 8N1: {plain}: not a serial device"
    assert directory.startswith(f"cannot connect to serial {tmp_path} 9600 8N1: {tmp_path}: ")
    assert "Is a directory" in directory
    assert in_use == (f"cannot connect to serial {poller_path} 9600 8N1: {poller_path}: in use: another program "
                      "holds it with an exclusive lock")


@pytest.mark.parametrize("code, says", [
    (errno.EACCES, "permission denied (the poller's user needs the device's group, usually dialout)"),
    (errno.EPERM, "permission denied"),
    (errno.EBUSY, "device busy"),
    (errno.ENODEV, "no such device (the adapter is gone)"),
    (errno.EIO, "could not open port"),
])
def test_why_a_port_could_not_be_opened_as_pyserial_reports_it(code, says):
    """What pyserial raises when open() fails (serialposix: SerialException(errno, "could not open
    port ...")): the errors a test running as root cannot cause for real."""
    try:
        try:
            raise OSError(code, os.strerror(code))
        except OSError as exc:
            raise serial.SerialException(exc.errno, f"could not open port /dev/ttyX: {exc}") from None
    except serial.SerialException as exc:
        problem = _port_problem("/dev/ttyX", exc)
    assert problem.startswith("/dev/ttyX: ") and says in problem, problem


def test_a_serial_device_that_goes_away_fails_the_read_and_comes_back_when_it_returns(tmp_path):
    """The adapter is unplugged (the pty's other end goes away): the read in flight fails at once,
    the next one cannot open the port (a ConnectError naming it); plugged in again, reads work."""

    async def run():
        pair = PtyPair(tmp_path, "usb")
        with AsyncioTrouble() as trouble:
            pair.start()
            device = await PtyDevice(pair.device, serving((1,), latency=10)).start()  # never answers in time
            bus = serial_bus(pair.poller)
            try:
                read = asyncio.create_task(bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=30))
                while not device.requests:
                    await asyncio.sleep(0.005)
                started = time.monotonic()
                await device.stop()
                pair.stop()  # socat ends: both ptys are gone, and their links
                with pytest.raises(BadReply) as gone:
                    await read
                took = time.monotonic() - started
                with pytest.raises(ConnectError) as absent:
                    await bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=1)
                pair.start()
                device = await PtyDevice(pair.device, serving((1,))).start()
                back = await bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=5)
            finally:
                bus.close()
                await device.stop()
                pair.stop()
        trouble.check()
        return gone.value, took, absent.value, back

    gone, took, absent, back = asyncio.run(run())
    assert took < 5, took  # not the 30 s timeout
    assert "the serial device" in str(gone), gone
    assert "no such device" in str(absent) and "usb-poller" in str(absent), absent
    assert back == words_of(1, 3, 0, 2)


def test_rtu_buses_never_send_to_unit_0(tmp_path):
    async def run():
        with AsyncioTrouble() as trouble, pty_pairs(tmp_path) as (pair,):
            device = await PtyDevice(pair.device, serving((1,))).start()
            rtu = RtuTcpDevice(serving((1,)))
            port = await rtu.start()
            buses = [serial_bus(pair.poller), open_bus(BusAddress(Transport.RTU_OVER_TCP, "127.0.0.1", port))]
            try:
                for bus in buses:
                    with pytest.raises(BadRequest, match="unit id 0 is the broadcast address") as refused:
                        await bus.read(ReadBlock(HOLDING, 0, 1, ()), 0, timeout=1)
                    assert not refused.value.breaks_connection
                    assert bus._connection is None  # type: ignore[attr-defined]
                    assert await bus.read(ReadBlock(HOLDING, 0, 1, ()), 1, timeout=5) == words_of(1, 3, 0, 1)
            finally:
                for bus in buses:
                    bus.close()
                await device.stop()
                await rtu.stop()
        trouble.check()
        return device, rtu

    device, rtu = asyncio.run(run())
    assert len(device.requests) == 1 and len(rtu.requests) == 1


# ---------------------------------------------------------------------------------------------
# Garbled RTU, on a serial line and over TCP


RTU_MUST_SUCCEED = ("ok", "split", "trickle")
RTU_FAIL_AT_ONCE = ("bad_crc", "flipped", "other_unit", "fc_swapped", "fc23", "wrong_count", "exception_long",
                    "garbage_before")
RTU_SILENT = ("silence", "truncated")
RTU_EITHER = ("garbage_after", "duplicate")  # a good reply, then bytes no reply is made of
RTU_MODES = (*RTU_MUST_SUCCEED, "exception", *RTU_FAIL_AT_ONCE, *RTU_SILENT, *RTU_EITHER)
STREAM_ONLY = ("reset", "close")  # RTU over TCP: the gateway drops the connection mid-reply


def rtu_misbehaviour(mode: str, rng: random.Random, unit: int, fc: int, words: list[int]) -> list[tuple[float, bytes]]:
    """What a device sends for `mode`: (seconds to wait, bytes) in order; b"" stands for the
    connection being reset (mode reset) or closed (mode close)."""
    good = rtu_reply(unit, fc, words)
    body = good[2:-2]  # byte count and words
    match mode:
        case "ok":
            return [(0, good)]
        case "split":
            cut = rng.randint(1, len(good) - 1)
            return [(0, good[:cut]), (0.005, good[cut:])]
        case "trickle":
            return [(0.001 if i else 0, good[i:i + 1]) for i in range(len(good))]
        case "exception":
            return [(0, rtu_frame(bytes([unit, fc | 0x80, rng.choice([1, 2, 3, 4, 5, 6, 10, 11])])))]
        case "bad_crc":
            at = rng.choice([-2, -1])
            bad = bytearray(good)
            bad[at] ^= rng.randint(1, 255)
            return [(0, bytes(bad))]
        case "flipped":  # one byte anywhere changed: the CRC no longer fits
            bad = bytearray(good)
            bad[rng.randrange(len(good) - 2)] ^= rng.randint(1, 255)
            return [(0, bytes(bad))]
        case "other_unit":  # a whole, correct reply from another unit
            other = rng.choice([u for u in range(1, 248) if u != unit])
            return [(0, rtu_frame(bytes([other, fc]) + body))]
        case "fc_swapped":
            return [(0, rtu_frame(bytes([unit, 7 - fc]) + body))]
        case "fc23":
            return [(0, rtu_frame(bytes([unit, 23]) + body))]
        case "wrong_count":
            count = rng.choice([b for b in range(256) if b != 2 * len(words)])
            data = (body[1:] + rng.randbytes(256))[:count]
            return [(0, rtu_frame(bytes([unit, fc, count]) + data))]
        case "exception_long":  # an exception reply with a byte too many: its first 5 bytes fail the CRC
            head = bytes([unit, fc | 0x80, 2])
            crc = rtu_frame(head)[3:]
            return [(0, head + bytes([crc[0] ^ 0xFF, crc[1], rng.randint(0, 255)]))]
        case "garbage_before":
            garbage = bytearray(rng.randbytes(rng.randint(1, 20)))
            if garbage[0] == unit:
                garbage[0] ^= 0x80
            return [(0, bytes(garbage) + good)]
        case "silence":
            return []
        case "truncated":
            stop = rng.randint(1, len(good) - 1)
            return [(0.001 if i else 0, good[i:i + 1]) for i in range(stop)]
        case "garbage_after" | "duplicate":
            extra = good if mode == "duplicate" else rng.randbytes(rng.randint(1, 20))
            return [(0, good), (rng.choice([0, 0.002]), extra)]
        case "reset" | "close":
            stop = rng.randint(0, len(good) - 1)
            return [(0, good[:stop]), (0.002, b"")]
    raise AssertionError(mode)


class RtuAdversary:
    """Answers each request in the next mode of a script; `modes_seen[address]` records which."""

    def __init__(self, modes: list[str], served: dict[int, list[int]], seed: int) -> None:
        self.modes = list(modes)
        self.served = served
        self.rng = random.Random(seed)
        self.modes_seen: dict[int, str] = {}

    async def respond(self, device: Device, unit: int, fc: int, address: int, count: int) -> None:
        mode = self.modes.pop(0) if self.modes else "ok"
        self.modes_seen[address] = mode
        for delay, data in rtu_misbehaviour(mode, self.rng, unit, fc, self.served[address]):
            if delay:
                await asyncio.sleep(delay)
            if data:
                await device.write(data)
            elif isinstance(device, RtuTcpDevice) and not device.writer.is_closing():
                if mode == "reset":
                    device.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                                      struct.pack("ii", 1, 0))
                device.writer.close()


TIMEOUT = 0.3


def check_outcomes(script, outcomes, modes_seen, took, window):
    previous = "ok"
    for i, ((_, _, words), outcome) in enumerate(zip(script, outcomes, strict=True)):
        mode = modes_seen.get(1000 + 128 * i, "never received")
        # the property: the words of the correct reply to this very request, or a ModbusError
        assert outcome == list(words) or isinstance(outcome, ModbusError), (mode, outcome)
        if previous in RTU_EITHER:  # bytes after the previous reply may have failed this read
            pass
        elif mode in RTU_MUST_SUCCEED:
            assert outcome == list(words), (mode, outcome)
        elif mode == "exception":
            assert isinstance(outcome, ExceptionReply), (mode, outcome)
        elif mode in RTU_FAIL_AT_ONCE or mode in STREAM_ONLY:
            assert isinstance(outcome, BadReply), (mode, outcome)
        elif mode in RTU_SILENT:
            assert isinstance(outcome, ResponseTimeout), (mode, outcome)
        previous = mode
    # a read costs at most its own window (the timeout and the frames' time on the wire), plus
    # what is left of the previous failed one's
    assert max(took) < 2 * window + 0.15, (window, took)


@st.composite
def rtu_scripts(draw, modes):
    return (draw(st.sampled_from(modes)), draw(st.sampled_from([HOLDING, INPUT])),
            tuple(draw(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=16))))


async def poll_script(bus, script, unit):
    outcomes, took = [], []
    for i, (_, fc, words) in enumerate(script):
        block = ReadBlock(fc, 1000 + 128 * i, len(words), ())
        started = time.monotonic()
        try:
            outcomes.append(await bus.read(block, unit, TIMEOUT))
        except ModbusError as exc:
            outcomes.append(exc)
        took.append(time.monotonic() - started)
    return outcomes, took


async def poll_neighbour(bus, done: asyncio.Event) -> list[float]:
    reads = []
    while not done.is_set():
        started = time.monotonic()
        assert await bus.read(ReadBlock(HOLDING, 0, 10, ()), 1, timeout=5) == words_of(1, 3, 0, 10)
        reads.append(time.monotonic() - started)
        await asyncio.sleep(0.002)
    return reads


async def script_beside_neighbour(bus, script, unit, neighbour):
    """poll_script on `bus` while another bus, `neighbour`, is read all along: (its outcomes,
    its times), and the neighbour's read times."""
    done = asyncio.Event()

    async def adversary_side():
        try:
            return await poll_script(bus, script, unit)
        finally:
            done.set()

    return await asyncio.gather(adversary_side(), poll_neighbour(neighbour, done))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(script=st.lists(rtu_scripts(RTU_MODES), min_size=1, max_size=8), seed=st.integers(0, 2**32 - 1),
       unit=st.integers(1, 247))
def test_garbled_rtu_on_a_serial_line_never_gives_a_value_nor_stalls_the_line(tmp_path, script, seed, unit):
    served = {1000 + 128 * i: list(words) for i, (_, _, words) in enumerate(script)}
    adversary = RtuAdversary([mode for mode, _, _ in script], served, seed)

    async def run():
        directory = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example: hypothesis reuses tmp_path
        with AsyncioTrouble(collect=False) as trouble, pty_pairs(directory, 2) as (line, other):
            device = await PtyDevice(line.device, adversary.respond).start()
            neighbour_device = await PtyDevice(other.device, serving((1,))).start()
            bus, neighbour = serial_bus(line.poller, 9600), serial_bus(other.poller, 19200)
            try:
                (outcomes, took), neighbour_reads = await script_beside_neighbour(bus, script, unit, neighbour)
            finally:
                bus.close()
                neighbour.close()
                await device.stop()
                await neighbour_device.stop()
        trouble.check()
        return outcomes, took, neighbour_reads, device

    outcomes, took, neighbour_reads, device = asyncio.run(run())
    check_outcomes(script, outcomes, adversary.modes_seen, took, TIMEOUT + (8 + 5 + 32) * SerialLine(9600).char_time_s)
    assert not device.bad  # every request the device saw was whole, CRC and all
    assert neighbour_reads and max(neighbour_reads) < TIMEOUT / 2, max(neighbour_reads)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(rtu_scripts((*RTU_MODES, *STREAM_ONLY)), min_size=1, max_size=8),
       seed=st.integers(0, 2**32 - 1), unit=st.integers(1, 247))
def test_garbled_rtu_over_tcp_never_gives_a_value_nor_stalls_the_bus(script, seed, unit):
    served = {1000 + 128 * i: list(words) for i, (_, _, words) in enumerate(script)}
    adversary = RtuAdversary([mode for mode, _, _ in script], served, seed)

    async def run():
        with AsyncioTrouble(collect=False) as trouble:
            device, good = RtuTcpDevice(adversary.respond), RtuTcpDevice(serving((1,)))
            port, good_port = await device.start(), await good.start()
            bus = open_bus(BusAddress(Transport.RTU_OVER_TCP, "127.0.0.1", port))
            neighbour = open_bus(BusAddress(Transport.RTU_OVER_TCP, "127.0.0.1", good_port))
            try:
                (outcomes, took), neighbour_reads = await script_beside_neighbour(bus, script, unit, neighbour)
            finally:
                bus.close()
                neighbour.close()
                await device.stop()
                await good.stop()
        trouble.check()
        return outcomes, took, neighbour_reads

    outcomes, took, neighbour_reads = asyncio.run(run())
    check_outcomes(script, outcomes, adversary.modes_seen, took, TIMEOUT)
    assert neighbour_reads and max(neighbour_reads) < TIMEOUT / 2, max(neighbour_reads)


def test_rtu_over_tcp_drops_the_connection_on_stray_bytes_and_reads_on_over_a_new_one():
    """Bytes after a correct reply, before the next request: a transparent gateway passing on
    whatever the line carries. The poller hangs up on them; the next read connects anew."""

    async def respond(device: Device, unit: int, fc: int, address: int, count: int) -> None:
        await device.write(rtu_reply(unit, fc, words_of(unit, fc, address, count)))
        if address == 0:
            await asyncio.sleep(0.01)
            await device.write(rtu_reply(unit, fc, [0x6666] * count))  # would fit the next request

    async def run():
        with AsyncioTrouble() as trouble:
            device = RtuTcpDevice(respond)
            bus = open_bus(BusAddress(Transport.RTU_OVER_TCP, "127.0.0.1", await device.start()))
            try:
                first = await bus.read(ReadBlock(HOLDING, 0, 3, ()), 1, timeout=5)
                while len(device.writes) < 2:
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0.05)
                second = await bus.read(ReadBlock(HOLDING, 3, 3, ()), 1, timeout=5)
            finally:
                bus.close()
                await device.stop()
        trouble.check()
        return first, second, device

    first, second, device = asyncio.run(run())
    assert first == words_of(1, 3, 0, 3) and second == words_of(1, 3, 3, 3)
    assert len(device.connections) == 2


def test_rtu_over_tcp_waits_out_a_failed_request_before_asking_again():
    """A transparent gateway passes on what the line carries to whichever connection is open.
    Noise comes before the device's reply: the read fails at its first byte, the poller hangs
    up. The device's real reply follows 50 ms later, and fits any read of 2 registers from
    unit 1: the next request must not be out by then, on a new connection or any other."""
    latest: list[asyncio.StreamWriter] = []
    arrivals: list[float] = []

    async def gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        latest.append(writer)
        try:
            while True:
                frame = await reader.readexactly(8)
                arrivals.append(time.monotonic())
                unit, fc, address, count = struct.unpack(">BBHH", frame[:6])
                if address == 1:
                    writer.write(b"\x00")  # noise on the line, then the device answers
                    await asyncio.sleep(0.05)
                    latest[-1].write(rtu_reply(unit, fc, [address] * count))  # to whoever is connected now
                else:
                    writer.write(rtu_reply(unit, fc, [address] * count))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def run():
        with AsyncioTrouble() as trouble:
            server = await asyncio.start_server(gateway, "127.0.0.1", 0)
            bus = open_bus(BusAddress(Transport.RTU_OVER_TCP, "127.0.0.1", server.sockets[0].getsockname()[1]))
            try:
                started = time.monotonic()
                with pytest.raises(BadReply, match="reply from unit 0, not from the unit asked"):
                    await bus.read(ReadBlock(HOLDING, 1, 2, ()), 1, timeout=0.3)
                failed_after = time.monotonic() - started
                words = await bus.read(ReadBlock(HOLDING, 2, 2, ()), 1, timeout=0.3)
            finally:
                bus.close()
                server.close()
                await server.wait_closed()
        trouble.check()
        return failed_after, words, started

    failed_after, words, started = asyncio.run(run())
    assert failed_after < 0.1  # the failure itself is known at once
    assert words == [2, 2]
    assert arrivals[1] - started >= 0.3  # the second request waited out the first one's timeout
    assert len(latest) == 2


# ---------------------------------------------------------------------------------------------
# UDP: datagrams that are not the reply are ignored; a wrong reply is refused


UDP_MUST_SUCCEED = ("ok", "stray_first", "previous_first", "tiny_first", "duplicate")
UDP_BAD = ("pid", "unit", "fc_swapped", "count_lie", "length_lie", "trailing", "short")
UDP_SILENT = ("silence", "late", "stray_only")
UDP_MODES = (*UDP_MUST_SUCCEED, "exception", *UDP_BAD, *UDP_SILENT)


class UdpAdversary:
    def __init__(self, modes: list[str], served: dict[int, list[int]], seed: int) -> None:
        self.modes = list(modes)
        self.served = served
        self.rng = random.Random(seed)
        self.modes_seen: dict[int, str] = {}
        self.previous: bytes | None = None
        self.strays = 0  # datagrams sent that are no reply to the request they came during

    async def respond(self, device: UdpDevice, addr, tid, unit, fc, address, count) -> None:
        mode = self.modes.pop(0) if self.modes else "ok"
        self.modes_seen[address] = mode
        rng = self.rng
        words = self.served[address]
        good = reply_bytes(tid, unit, fc, words)
        other_tid = (tid + rng.randint(1, 0xFFFE)) % 0x10000
        pdu = good[7:]

        def frame(tid=tid, pid=0, unit=unit, pdu=pdu, length=None):
            return struct.pack(">HHHB", tid, pid, len(pdu) + 1 if length is None else length, unit) + pdu

        match mode:
            case "ok":
                device.send(good, addr)
            case "stray_first" | "stray_only":
                device.send(reply_bytes(other_tid, unit, fc, [w ^ 0xFFFF for w in words]), addr)
                self.strays += 1
                if mode == "stray_first":
                    await asyncio.sleep(0.002)
                    device.send(good, addr)
            case "previous_first":  # the reply to the previous request again, then this one's
                device.send(self.previous or frame(tid=other_tid), addr)
                self.strays += 1
                device.send(good, addr)
            case "tiny_first":
                device.send(b"\x00", addr)
                self.strays += 1
                device.send(good, addr)
            case "duplicate":
                device.send(good, addr)
                await asyncio.sleep(rng.choice([0, 0.002]))
                device.send(good, addr)
                self.strays += 1
            case "exception":
                device.send(frame(pdu=bytes([fc | 0x80, rng.choice([1, 2, 3, 4, 5, 6, 10, 11])])), addr)
            case "pid":
                device.send(frame(pid=rng.randint(1, 0xFFFF)), addr)
            case "unit":
                device.send(frame(unit=(unit + rng.randint(1, 255)) % 256), addr)
            case "fc_swapped":
                device.send(frame(pdu=bytes([7 - fc]) + pdu[1:]), addr)
            case "count_lie":
                device.send(frame(pdu=bytes([fc, rng.choice([b for b in range(256) if b != 2 * count])]) + pdu[2:]),
                            addr)
            case "length_lie":
                device.send(frame(length=rng.choice([n for n in range(3, 255) if n != 3 + 2 * count])), addr)
            case "trailing":
                device.send(good + rng.randbytes(rng.randint(1, 10)), addr)
            case "short":
                device.send(good[:rng.randint(2, len(good) - 1)], addr)
            case "silence":
                pass
            case "late":  # the reply comes after the request has timed out, during the next one
                await asyncio.sleep(TIMEOUT + 0.02)
                device.send(good, addr)
                self.strays += 1
            case _:
                raise AssertionError(mode)
        self.previous = good


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(rtu_scripts(UDP_MODES), min_size=1, max_size=8), seed=st.integers(0, 2**32 - 1),
       unit=st.integers(0, 255))
def test_udp_ignores_datagrams_that_are_not_the_reply_and_refuses_a_wrong_reply(script, seed, unit):
    """A datagram stands alone: however the ones before went, every read whose device answers
    right gets its words (late, repeated and stray replies ignored); a datagram carrying the
    request's transaction id with anything wrong in it is a BadReply; nothing else is."""
    served = {1000 + 128 * i: list(words) for i, (_, _, words) in enumerate(script)}
    adversary = UdpAdversary([mode for mode, _, _ in script], served, seed)

    async def run():
        with AsyncioTrouble(collect=False) as trouble:
            device = UdpDevice(adversary.respond)
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: device, local_addr=("127.0.0.1", 0))
            bus = open_bus(BusAddress(Transport.UDP, "127.0.0.1", transport.get_extra_info("sockname")[1]))
            assert isinstance(bus, UdpBus)
            try:
                outcomes, took = await poll_script(bus, script, unit)
                ignored = bus.ignored
            finally:
                bus.close()
                await device.stop()
        trouble.check()
        return outcomes, took, ignored

    outcomes, took, ignored = asyncio.run(run())
    for i, ((_, _, words), outcome) in enumerate(zip(script, outcomes, strict=True)):
        mode = adversary.modes_seen.get(1000 + 128 * i, "never received")
        assert outcome == list(words) or isinstance(outcome, ModbusError), (mode, outcome)
        if mode in UDP_MUST_SUCCEED:
            assert outcome == list(words), (mode, outcome)
        elif mode == "exception":
            assert isinstance(outcome, ExceptionReply), (mode, outcome)
        elif mode in UDP_BAD:
            assert isinstance(outcome, BadReply), (mode, outcome)
        elif mode == "late" and outcome == list(words):
            # its own reply, 20 ms after the timeout: taken only when the event loop was held up past
            # both (the suite's load), so the reply window's end gave the socket its one look
            # (transport.EXPIRY_GRACE_S); never before the timeout was over
            assert took[i] >= TIMEOUT, (mode, took[i])
        else:
            assert isinstance(outcome, ResponseTimeout), (mode, outcome)
    assert max(took) < TIMEOUT + 0.1, took  # a read costs its own timeout at most, whatever came before
    assert ignored <= adversary.strays
    if any(mode in ("stray_first", "previous_first", "tiny_first") for mode, _, _ in script):
        assert ignored >= 1  # sent before the reply, during the request: always seen, and ignored


def test_udp_port_unreachable_is_a_connect_error_and_the_bus_reads_once_a_device_listens():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free again, and nothing listens: ICMP port unreachable

    async def run():
        with AsyncioTrouble() as trouble:
            bus = open_bus(BusAddress(Transport.UDP, "127.0.0.1", port))
            try:
                started = time.monotonic()
                with pytest.raises(ConnectError) as unreachable:
                    await bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=5)
                took = time.monotonic() - started
                device = UdpDevice(udp_serving())
                await asyncio.get_running_loop().create_datagram_endpoint(lambda: device,
                                                                          local_addr=("127.0.0.1", port))
                try:
                    words = await bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=5)
                finally:
                    await device.stop()
            finally:
                bus.close()
        trouble.check()
        return unreachable.value, took, words

    error, took, words = asyncio.run(run())
    assert str(error) == (f"cannot connect to udp 127.0.0.1:{port}: port unreachable (ICMP): nothing listens on "
                          "that UDP port")
    assert took < 1, took  # at once, not after the 5 s timeout
    assert words == words_of(1, 3, 0, 2)


def test_a_udp_reply_later_than_its_timeout_is_never_taken_for_the_next_one():
    """Same unit, same count, same function: only the transaction id tells the late reply apart."""

    async def respond(device: UdpDevice, addr, tid, unit, fc, address, count) -> None:
        if address == 1:
            await asyncio.sleep(0.3)  # past the 0.2 s timeout: it comes during the third read
        if address == 3:
            await asyncio.sleep(0.2)
        device.send(reply_bytes(tid, unit, fc, [address] * count), addr)

    async def run():
        with AsyncioTrouble() as trouble:
            device = UdpDevice(respond)
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: device, local_addr=("127.0.0.1", 0))
            bus = open_bus(BusAddress(Transport.UDP, "127.0.0.1", transport.get_extra_info("sockname")[1]))
            assert isinstance(bus, UdpBus)
            try:
                with pytest.raises(ResponseTimeout):
                    await bus.read(ReadBlock(HOLDING, 1, 2, ()), 1, timeout=0.2)
                words = await bus.read(ReadBlock(HOLDING, 2, 2, ()), 1, timeout=1)
                third = await bus.read(ReadBlock(HOLDING, 3, 2, ()), 1, timeout=1)
                ignored = bus.ignored
            finally:
                bus.close()
                await device.stop()
        trouble.check()
        return words, third, ignored, device

    words, third, ignored, device = asyncio.run(run())
    assert (words, third) == ([2, 2], [3, 3])
    assert ignored == 1  # the late reply, which arrived during the third read
    late = next(at for at, data in device.sent if data.endswith(b"\x00\x01\x00\x01"))
    third_sent = next(at for at, data in device.sent if data.endswith(b"\x00\x03\x00\x03"))
    assert device.record.requests[2][0] < late < third_sent  # it did arrive while the third was in flight


@pytest.mark.parametrize("kind", KINDS)
def test_a_request_written_after_the_lease_ended_gives_no_reading_and_nothing_more_goes_out(kind, tmp_path):
    """Fencing (lease.py) checks the lease just before the write; a process paused in the
    microseconds between the two (SIGSTOP, a VM freeze) writes its request late, after its lease
    ended. Nothing can call the request back, but its reply must not become a reading, and the
    next request is not sent. The fence reads valid at the check and expired right after it."""
    async def run():
        with AsyncioTrouble() as trouble, scripted(kind, tmp_path, latency=0.003) as start:
            device, address, stop, _ = await start()
            bus = open_bus(address)
            checks = []

            def fence() -> float:  # first read: the check before the write; then the lease is over
                checks.append(time.monotonic())
                return time.monotonic() + 60 if len(checks) == 1 else 0.0

            try:
                with pytest.raises(NotOwner, match="went out after this instance's lease ended") as late:
                    await bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=5, fence=fence)
                assert late.value.sent  # the cycle counts it as a request made
                with pytest.raises(NotOwner, match="not sent") as held:
                    await bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=5, fence=fence)
                assert not held.value.sent
                await asyncio.sleep(0.05)  # the late request's reply, if it comes, goes nowhere
            finally:
                bus.close()
                await stop()
        trouble.check()
        return device

    device = asyncio.run(run())
    assert len(device.requests) == 1  # the late one only


@pytest.mark.parametrize("loop", LOOPS)
def test_a_reply_that_came_in_time_while_the_event_loop_was_held_up_is_taken_not_timed_out(loop):
    """The event loop held up (a long callback, the process descheduled on a busy host) past a
    request's timeout, while its reply arrived in time: when the loop runs again the reply is
    in the socket. asyncio's loop looks at the sockets before the timers; uvloop (libuv) runs
    due timers first, and the request timed out with its reply unread. A reply window that
    ends while the loop was held up is given one look at the sockets before it fails."""
    from tests.servers import ModbusServerThread
    from virtual_server.server import SimulatedServer

    server = ModbusServerThread(SimulatedServer(units={}, default=lambda: {(3, a): a for a in range(10)}))

    async def run() -> list[int]:
        bus = open_bus(BusAddress(Transport.TCP, "127.0.0.1", server.port))
        try:
            await bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=2)  # connected
            # another socket's reader holds the loop up (uvloop runs it in its I/O phase, right
            # before the timers of the next turn) once the request is out
            loop = asyncio.get_running_loop()
            mine, theirs = socket.socketpair()
            loop.add_reader(mine.fileno(), lambda: (mine.recv(1), time.sleep(0.5)))
            loop.call_soon(theirs.send, b"x")
            try:
                return await bus.read(ReadBlock(HOLDING, 2, 2, ()), 1, timeout=0.2)
            finally:
                loop.remove_reader(mine.fileno())
                mine.close()
                theirs.close()
        finally:
            bus.close()

    try:
        assert event_loop.run(run(), loop) == [2, 3]
    finally:
        server.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_timeout_is_never_shorter_than_asked_on_either_loop(loop):
    """A device that never answers: each read fails with ResponseTimeout no sooner than its
    timeout after its request went out (uvloop's timers may fire a millisecond early; the reply
    window waits out the rest). Measured from the call, microseconds before the write: the
    device's own clock of the arrival is no reference, its server runs in the same loop and, on
    a loaded machine, reads the request milliseconds late."""
    timeout = 0.0405  # not a whole number of milliseconds

    async def run() -> list[float]:
        arrived: list[float] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.read(260):
                arrived.append(time.monotonic())
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        bus = open_bus(BusAddress(Transport.TCP, "127.0.0.1", port))
        waited = []
        try:
            for _ in range(20):
                called = time.monotonic()
                with pytest.raises(ResponseTimeout):
                    await bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=timeout)
                waited.append(time.monotonic() - called)
        finally:
            bus.close()
            server.close()
        return waited

    waited = event_loop.run(run(), loop)
    assert min(waited) >= timeout, waited
