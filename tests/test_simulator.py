"""The simulator (virtual_server.server) on every wire pymodbus frames for it: Modbus TCP, RTU over
TCP, UDP and serial RTU (on a socat pty pair), read by pymodbus's clients, by mbpoll and by
frames built here by hand; and what tests rely on it for: strict mode, refused addresses,
missing units, latency, counting, the fault hook, and only functions 3 and 4."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, AsyncModbusUdpClient
from pymodbus.framer import FramerType

from tests.servers import pty_pair
from virtual_server.server import DROP, SILENT, SimulatedServer

# Two banks with words above 0x7FFF too, so a sign slip shows.
INPUT = {(4, a): (a * 4099 + 7) & 0xFFFF for a in range(60)}
HOLDING = {(3, a): (a * 7919 + 0x8001) & 0xFFFF for a in range(10)}
UNIT1 = {**INPUT, **HOLDING}
UNIT7 = {(k[0], k[1]): (w ^ 0x5A5A) for k, w in UNIT1.items()}


def words(bank: dict[tuple[int, int], int], fc: int, address: int, count: int) -> list[int]:
    return [bank[(fc, a)] for a in range(address, address + count)]


class Background:
    """An event loop in a thread, so a server serves while blocking clients (mbpoll) run."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors: list[dict[str, Any]] = []  # what the loop would only have logged
        self.loop.set_exception_handler(lambda loop, context: self.errors.append(context))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def leftovers() -> list[asyncio.Task[Any]]:
            return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

        left = self.run(leftovers())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        assert left == [], f"tasks left behind: {left}"
        assert self.errors == [], self.errors


@pytest.fixture
def bg() -> Iterator[Background]:
    b = Background()
    yield b
    b.close()


def crc16(frame: bytes) -> bytes:
    """Modbus RTU's CRC (polynomial 0xA001 reflected, start 0xFFFF), low byte first; written here
    from the specification, not taken from pymodbus, so the frames below check pymodbus's framing."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return struct.pack("<H", crc)


def test_the_hand_written_crc_matches_the_specifications_example() -> None:
    # Modbus over Serial Line V1.02, 6.2.2: read 10 holding registers of unit 1 from 0 is 01 03 00 00 00 0A C5 CD
    assert crc16(bytes.fromhex("01030000000A")) == bytes.fromhex("C5CD")


def rtu_request(unit: int, fc: int, address: int, count: int) -> bytes:
    body = struct.pack(">BBHH", unit, fc, address, count)
    return body + crc16(body)


def parse_rtu_reply(frame: bytes) -> tuple[int, int, list[int] | int]:
    """(unit, function code, words or exception code) of a complete RTU reply, its CRC checked."""
    assert crc16(frame[:-2]) == frame[-2:], frame.hex()
    unit, fc = frame[0], frame[1]
    if fc & 0x80:
        return unit, fc, frame[2]
    n = frame[2] // 2
    return unit, fc, list(struct.unpack(f">{n}H", frame[3:3 + 2 * n]))


def mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def read_pdu(fc: int, address: int, count: int) -> bytes:
    return struct.pack(">BHH", fc, address, count)


def parse_mbap_reply(frame: bytes) -> tuple[int, int, int, list[int] | int]:
    """(transaction id, unit, function code, words or exception code) of one Modbus TCP reply."""
    tid, pid, length, unit, fc = struct.unpack(">HHHBB", frame[:8])
    assert pid == 0 and length == len(frame) - 6, frame.hex()
    if fc & 0x80:
        return tid, unit, fc, frame[8]
    n = frame[8] // 2
    assert frame[8] == len(frame) - 9, frame.hex()
    return tid, unit, fc, list(struct.unpack(f">{n}H", frame[9:]))


def recv_mbap(sock: socket.socket) -> bytes:
    head = recv_exactly(sock, 6)
    return head + recv_exactly(sock, struct.unpack(">H", head[4:6])[0])


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {data.hex()}")
        data += chunk
    return data


def tcp_read(port: int, unit: int, fc: int, address: int, count: int, tid: int = 1) -> list[int] | int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(mbap(tid, unit, read_pdu(fc, address, count)))
        got_tid, got_unit, got_fc, result = parse_mbap_reply(recv_mbap(sock))
    assert (got_tid, got_unit, got_fc & 0x7F) == (tid, unit, fc)
    return result


def two_unit_server(**kw: Any) -> SimulatedServer:
    return SimulatedServer(units={1: lambda: UNIT1, 7: lambda: UNIT7}, **kw)


# --- every wire, read by pymodbus --------------------------------------------------------


async def pymodbus_reads(make_client: Any) -> list[Any]:
    client = make_client()  # pymodbus's async clients are made in their event loop
    await client.connect()
    assert client.connected
    try:
        out = []
        for unit in (1, 7):
            ir = await client.read_input_registers(0, count=60, device_id=unit)
            hr = await client.read_holding_registers(3, count=7, device_id=unit)
            out.append((ir.registers, hr.registers))
        return out
    finally:
        client.close()


@pytest.mark.parametrize("wire", ["tcp", "rtu-over-tcp", "udp", "serial"])
def test_pymodbus_reads_exactly_the_words_served_on_every_wire(bg: Background, tmp_path: Path, wire: str) -> None:
    server = two_unit_server()
    with pty_pair(tmp_path) as (server_end, client_end):
        client: Any
        if wire == "serial":
            bg.run(server.start_serial(server_end, baudrate=9600))
            client = lambda: AsyncModbusSerialClient(client_end, framer=FramerType.RTU, baudrate=9600,  # noqa: E731
                                                     timeout=2, retries=0)
        elif wire == "udp":
            port = bg.run(server.start_udp("127.0.0.1", 0))
            client = lambda: AsyncModbusUdpClient("127.0.0.1", port=port, timeout=2, retries=0)  # noqa: E731
        else:
            framer = "rtu" if wire == "rtu-over-tcp" else "socket"
            port = bg.run(server.start_tcp("127.0.0.1", 0, framer=framer))
            client = lambda: AsyncModbusTcpClient("127.0.0.1", port=port, framer=FramerType(framer),  # noqa: E731
                                                  timeout=2, retries=0)
        try:
            got = asyncio.run(pymodbus_reads(client))
        finally:
            bg.run(server.stop())
    assert got == [(words(bank, 4, 0, 60), words(bank, 3, 3, 7)) for bank in (UNIT1, UNIT7)]
    assert server.stats.by_request == {(1, 4, 0, 60): 1, (1, 3, 3, 7): 1, (7, 4, 0, 60): 1, (7, 3, 3, 7): 1}
    assert server.stats.requests == 4 and server.stats.max_in_flight == 1
    assert server.stats.connections == (1 if wire in ("tcp", "rtu-over-tcp") else 0)


# --- the same wires, read by peers that share no code with pymodbus ----------------------


def mbpoll(target: list[str], unit: int, table: int, start: int, count: int) -> dict[int, int]:
    out = subprocess.run(["mbpoll", *target[:-1], "-a", str(unit), "-0", "-r", str(start), "-c", str(count),
                          "-t", f"{table}:hex", "-1", "-o", "2", target[-1]], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    return {int(a): int(v, 16) for a, v in re.findall(r"^\[(\d+)\]:\s+(0x[0-9A-Fa-f]+)", out.stdout, re.M)}


@pytest.mark.parametrize("wire", ["tcp", "serial"])
def test_mbpoll_reads_exactly_the_words_served(bg: Background, tmp_path: Path, wire: str) -> None:
    server = two_unit_server()
    with pty_pair(tmp_path) as (server_end, client_end):
        if wire == "serial":
            bg.run(server.start_serial(server_end, baudrate=9600))
            target = ["-m", "rtu", "-b", "9600", "-P", "none", client_end]
        else:
            port = bg.run(server.start_tcp("127.0.0.1", 0))
            target = ["-m", "tcp", "-p", str(port), "127.0.0.1"]
        try:
            got_input = mbpoll(target, 7, 3, 0, 60)  # mbpoll's table 3: input registers (fc 4)
            got_holding = mbpoll(target, 1, 4, 0, 10)  # table 4: holding registers (fc 3)
        finally:
            bg.run(server.stop())
    assert got_input == dict(enumerate(words(UNIT7, 4, 0, 60)))
    assert got_holding == dict(enumerate(words(UNIT1, 3, 0, 10)))
    assert server.stats.by_request == {(7, 4, 0, 60): 1, (1, 3, 0, 10): 1}


def test_hand_built_rtu_frames_over_tcp_and_over_a_pty(bg: Background, tmp_path: Path) -> None:
    """mbpoll has no RTU over TCP: frames built here check pymodbus's RTU framing, also a frame
    arriving in pieces, as a slow serial line delivers it, and one with a bad CRC."""
    server = two_unit_server()
    with pty_pair(tmp_path) as (server_end, client_end):
        port = bg.run(server.start_tcp("127.0.0.1", 0, framer="rtu"))
        bg.run(server.start_serial(server_end, baudrate=9600))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(rtu_request(7, 4, 10, 20))
                assert parse_rtu_reply(recv_exactly(sock, 5 + 40)) == (7, 4, words(UNIT7, 4, 10, 20))
                request = rtu_request(1, 3, 0, 10)
                for piece in (request[:3], request[3:7], request[7:]):
                    sock.sendall(piece)
                    time.sleep(0.05)
                assert parse_rtu_reply(recv_exactly(sock, 5 + 20)) == (1, 3, words(UNIT1, 3, 0, 10))
            fd = os.open(client_end, os.O_RDWR | os.O_NOCTTY)
            try:
                os.write(fd, rtu_request(1, 4, 50, 10))
                assert parse_rtu_reply(read_fd(fd, 5 + 20)) == (1, 4, words(UNIT1, 4, 50, 10))
                bad = bytearray(rtu_request(7, 3, 9, 1))
                bad[-1] ^= 0xFF
                os.write(fd, bytes(bad))  # a frame garbled on the line is not answered ...
                assert silent_fd(fd, 0.3)
                os.write(fd, rtu_request(7, 3, 9, 1))  # ... and the next one is
                assert parse_rtu_reply(read_fd(fd, 5 + 2)) == (7, 3, words(UNIT7, 3, 9, 1))
            finally:
                os.close(fd)
        finally:
            bg.run(server.stop())


def read_fd(fd: int, n: int, timeout: float = 5) -> bytes:
    import select

    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < n:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError(f"{len(data)} of {n} bytes: {data.hex()}")
        data += os.read(fd, n - len(data))
    return data


def silent_fd(fd: int, seconds: float) -> bool:
    import select

    return select.select([fd], [], [], seconds)[0] == []


def test_hand_built_udp_datagrams(bg: Background) -> None:
    server = two_unit_server()
    port = bg.run(server.start_udp("127.0.0.1", 0))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(mbap(0x1234, 7, read_pdu(4, 0, 60)), ("127.0.0.1", port))
            reply, _ = sock.recvfrom(512)
            assert parse_mbap_reply(reply) == (0x1234, 7, 4, words(UNIT7, 4, 0, 60))
            sock.sendto(mbap(0x1235, 1, read_pdu(3, 2, 2)), ("127.0.0.1", port))
            reply, _ = sock.recvfrom(512)
            assert parse_mbap_reply(reply) == (0x1235, 1, 3, words(UNIT1, 3, 2, 2))
    finally:
        bg.run(server.stop())


# --- what a device answers -----------------------------------------------------------------


def test_strict_mode_and_the_lenient_default(bg: Background) -> None:
    lenient = SimulatedServer(units={}, default=lambda: {(3, 10): 5, (4, 11): 6})
    strict = SimulatedServer(units={}, default=lambda: {(3, 10): 5, (4, 11): 6}, strict=True)
    ports = [bg.run(s.start()) for s in (lenient, strict)]
    try:
        # an address no register covers reads 0 (an Eastron meter), or is refused (most devices)
        assert tcp_read(ports[0], 1, 3, 9, 4) == [0, 5, 6, 0]
        assert tcp_read(ports[1], 1, 3, 9, 4) == 2
        # a word mapped only on the other table is served on both
        assert tcp_read(ports[1], 1, 3, 10, 2) == [5, 6]
        assert tcp_read(ports[1], 1, 4, 10, 2) == [5, 6]
    finally:
        for s in (lenient, strict):
            bg.run(s.stop())


def test_refused_addresses_answer_illegal_data_address(bg: Background) -> None:
    server = SimulatedServer(units={}, default=lambda: UNIT1, refuse=frozenset({(3, 5)}))
    port = bg.run(server.start())
    try:
        assert tcp_read(port, 1, 3, 0, 10) == 2
        assert tcp_read(port, 1, 3, 5, 1) == 2
        assert tcp_read(port, 1, 3, 0, 5) == words(UNIT1, 3, 0, 5)
        assert tcp_read(port, 1, 3, 6, 4) == words(UNIT1, 3, 6, 4)
        assert tcp_read(port, 1, 4, 5, 1) == words(UNIT1, 4, 5, 1)  # the other table is not refused
    finally:
        bg.run(server.stop())


def test_a_count_or_an_end_out_of_range_is_refused_as_a_device_does(bg: Background) -> None:
    server = SimulatedServer(units={}, default=lambda: UNIT1)
    port = bg.run(server.start())
    try:
        assert tcp_read(port, 1, 3, 0, 0) == 3  # illegal data value
        assert tcp_read(port, 1, 3, 0, 126) == 3
        assert tcp_read(port, 1, 4, 65500, 40) == 2  # illegal data address: past 65535
        assert tcp_read(port, 1, 4, 65496, 40) == [0] * 40  # up to the last address is fine
    finally:
        bg.run(server.stop())


def test_a_unit_without_a_bank_is_a_gateway_error_over_tcp_and_silence_on_a_wire(bg: Background,
                                                                                   tmp_path: Path) -> None:
    server = two_unit_server()
    with pty_pair(tmp_path) as (server_end, client_end):
        tcp = bg.run(server.start_tcp())
        udp = bg.run(server.start_udp())
        rtu = bg.run(server.start_tcp(framer="rtu"))
        bg.run(server.start_serial(server_end))
        try:
            assert tcp_read(tcp, 3, 4, 0, 2) == 11  # gateway target device failed to respond
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(5)
                sock.sendto(mbap(9, 3, read_pdu(4, 0, 2)), ("127.0.0.1", udp))
                assert parse_mbap_reply(sock.recvfrom(512)[0]) == (9, 3, 0x84, 11)
            # RTU: nothing answers for a unit that is not on the wire; the next request is served
            with socket.create_connection(("127.0.0.1", rtu), timeout=0.5) as sock:
                sock.sendall(rtu_request(3, 4, 0, 2))
                with pytest.raises(TimeoutError):
                    sock.recv(100)
                sock.settimeout(5)
                sock.sendall(rtu_request(1, 4, 0, 2))
                assert parse_rtu_reply(recv_exactly(sock, 9)) == (1, 4, words(UNIT1, 4, 0, 2))
            fd = os.open(client_end, os.O_RDWR | os.O_NOCTTY)
            try:
                os.write(fd, rtu_request(3, 4, 0, 2))
                assert silent_fd(fd, 0.5)
                os.write(fd, rtu_request(7, 4, 0, 2))
                assert parse_rtu_reply(read_fd(fd, 9)) == (7, 4, words(UNIT7, 4, 0, 2))
            finally:
                os.close(fd)
        finally:
            bg.run(server.stop())
    # ... while a default bank answers for every unit
    anyone = SimulatedServer(units={1: lambda: UNIT1}, default=lambda: UNIT7)
    port = bg.run(anyone.start())
    try:
        assert tcp_read(port, 200, 4, 0, 3) == words(UNIT7, 4, 0, 3)
        assert tcp_read(port, 1, 4, 0, 3) == words(UNIT1, 4, 0, 3)
    finally:
        bg.run(anyone.stop())


def test_only_functions_3_and_4_are_served(bg: Background, tmp_path: Path) -> None:
    server = two_unit_server()
    port = bg.run(server.start())
    with pty_pair(tmp_path) as (server_end, client_end):
        bg.run(server.start_serial(server_end))

        async def others(make_client: Any) -> list[tuple[int, int]]:
            client = make_client()
            await client.connect()
            try:
                replies = [await client.write_register(1, 5, device_id=1),
                           await client.write_registers(1, [5, 6], device_id=1),
                           await client.read_coils(0, count=8, device_id=1),
                           await client.read_discrete_inputs(0, count=8, device_id=1),
                           await client.readwrite_registers(read_address=0, read_count=2, write_address=0,
                                                            values=[1], device_id=1)]
            finally:
                client.close()
            return [(r.function_code, r.exception_code) for r in replies]

        expected = [(0x86, 1), (0x90, 1), (0x81, 1), (0x82, 1), (0x97, 1)]
        try:
            assert asyncio.run(others(lambda: AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2,
                                                                   retries=0))) == expected
            assert asyncio.run(others(lambda: AsyncModbusSerialClient(client_end, baudrate=9600, timeout=2,
                                                                      retries=0))) == expected
            # a function code pymodbus does not know either: refused under its own code
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(mbap(5, 1, bytes([0x41, 1, 2, 3])))
                assert parse_mbap_reply(recv_mbap(sock)) == (5, 1, 0xC1, 1)
        finally:
            bg.run(server.stop())
    assert UNIT1 == {**INPUT, **HOLDING}  # nothing was written
    assert server.stats.requests == 0


# --- timing and counting -----------------------------------------------------------------


def test_latency_delays_every_reply_and_in_flight_counts_concurrent_requests(bg: Background) -> None:
    server = two_unit_server(latency_s=0.2)
    port = bg.run(server.start())
    try:
        started = time.monotonic()
        assert tcp_read(port, 1, 4, 0, 2) == words(UNIT1, 4, 0, 2)
        assert time.monotonic() - started >= 0.2
        assert server.stats.max_in_flight == 1

        # two connections at once: both in flight, answered side by side
        results: list[Any] = []
        threads = [threading.Thread(target=lambda u=u: results.append(tcp_read(port, u, 3, 0, 3)))
                   for u in (1, 7)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert time.monotonic() - started < 0.35
        assert sorted(results) == sorted([words(UNIT1, 3, 0, 3), words(UNIT7, 3, 0, 3)])
        assert server.stats.max_in_flight == 2
        assert server.stats.connections == 3
        assert server.stats.in_flight == 0
    finally:
        bg.run(server.stop())


@pytest.mark.parametrize("together", [False, True], ids=["apart", "in-one-segment"])
def test_a_second_request_before_the_first_reply_counts_and_waits_its_turn(bg: Background, together: bool) -> None:
    """A client that does not wait for the reply is seen (two in flight), whether its requests
    arrive apart or in one segment; the connection still answers one request after the other,
    each under its own transaction id."""
    server = two_unit_server(latency_s=0.2)
    port = bg.run(server.start())
    first_request, second_request = mbap(1, 1, read_pdu(4, 0, 3)), mbap(2, 7, read_pdu(4, 0, 3))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            started = time.monotonic()
            if together:
                sock.sendall(first_request + second_request)
            else:
                sock.sendall(first_request)
                time.sleep(0.05)
                sock.sendall(second_request)
            first = parse_mbap_reply(recv_mbap(sock))
            second = parse_mbap_reply(recv_mbap(sock))
            took = time.monotonic() - started
    finally:
        bg.run(server.stop())
    assert first == (1, 1, 4, words(UNIT1, 4, 0, 3))
    assert second == (2, 7, 4, words(UNIT7, 4, 0, 3))
    assert took >= 0.4  # the second waited for the first: 0.2 + 0.2
    assert server.stats.max_in_flight == 2


def test_requests_in_one_segment_are_all_answered_at_once_without_latency(bg: Background) -> None:
    server = two_unit_server()
    port = bg.run(server.start())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            requests = [mbap(tid, 1, read_pdu(4, tid, 2)) for tid in range(1, 6)]
            last = requests.pop()
            sock.sendall(b"".join(requests) + last[:5])  # four requests and the start of a fifth
            replies = [parse_mbap_reply(recv_mbap(sock)) for _ in range(4)]
            time.sleep(0.05)
            sock.sendall(last[5:])
            replies.append(parse_mbap_reply(recv_mbap(sock)))
    finally:
        bg.run(server.stop())
    assert replies == [(tid, 1, 4, words(UNIT1, 4, tid, 2)) for tid in range(1, 6)]


def test_stop_closes_connections_and_abandons_requests_being_answered(bg: Background) -> None:
    server = two_unit_server(latency_s=5)
    port = bg.run(server.start())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(mbap(1, 1, read_pdu(4, 0, 3)))
        time.sleep(0.1)
        assert server.stats.in_flight == 1
        started = time.monotonic()
        bg.run(server.stop())
        assert sock.recv(100) == b""  # closed, no reply
        assert time.monotonic() - started < 2
    assert server.stats.in_flight == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # bg's teardown checks that no task was left behind


def test_a_request_whose_client_hangs_up_during_the_latency_is_abandoned(bg: Background) -> None:
    seen: list[Any] = []
    server = two_unit_server(latency_s=0.3, on_request=lambda *request: seen.append(request))
    port = bg.run(server.start())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(mbap(1, 1, read_pdu(4, 0, 3)))
            time.sleep(0.1)
            assert server.stats.in_flight == 1
        time.sleep(0.5)
        assert server.stats.in_flight == 0
        assert seen == []  # never answered: not even asked of the fault hook
        assert tcp_read(port, 1, 4, 0, 3) == words(UNIT1, 4, 0, 3)  # and the server goes on
    finally:
        bg.run(server.stop())
    assert server.stats.requests == 2 and len(seen) == 1


# --- the fault hook -----------------------------------------------------------------------


def test_the_fault_hook_answers_busy_drops_the_connection_or_stays_silent(bg: Background) -> None:
    script = iter([6, None, DROP, SILENT, None])
    seen: list[tuple[int, int, int, int]] = []

    def on_request(unit: int, fc: int, address: int, count: int) -> Any:
        seen.append((unit, fc, address, count))
        return next(script)

    server = two_unit_server(on_request=on_request)
    port = bg.run(server.start())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(mbap(1, 1, read_pdu(4, 0, 2)))
            assert parse_mbap_reply(recv_mbap(sock)) == (1, 1, 0x84, 6)  # server device busy
            sock.sendall(mbap(2, 1, read_pdu(4, 0, 2)))
            assert parse_mbap_reply(recv_mbap(sock)) == (2, 1, 4, words(UNIT1, 4, 0, 2))
            sock.sendall(mbap(3, 7, read_pdu(3, 1, 2)))
            assert sock.recv(100) == b""  # dropped: closed without a reply
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(mbap(4, 1, read_pdu(4, 5, 1)))
            with pytest.raises(TimeoutError):
                sock.recv(100)  # silent, and the connection stays open
            sock.settimeout(5)
            sock.sendall(mbap(5, 1, read_pdu(4, 5, 1)))
            assert parse_mbap_reply(recv_mbap(sock)) == (5, 1, 4, words(UNIT1, 4, 5, 1))
    finally:
        bg.run(server.stop())
    assert seen == [(1, 4, 0, 2), (1, 4, 0, 2), (7, 3, 1, 2), (1, 4, 5, 1), (1, 4, 5, 1)]
    assert server.stats.requests == 5 and server.stats.connections == 2


def test_on_udp_a_dropped_request_is_one_without_a_reply(bg: Background) -> None:
    server = two_unit_server(on_request=lambda unit, *_: DROP if unit == 7 else None)
    port = bg.run(server.start_udp())
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.5)
            sock.sendto(mbap(1, 7, read_pdu(4, 0, 2)), ("127.0.0.1", port))
            with pytest.raises(TimeoutError):
                sock.recvfrom(512)
            sock.sendto(mbap(2, 1, read_pdu(4, 0, 2)), ("127.0.0.1", port))  # the socket still serves
            assert parse_mbap_reply(sock.recvfrom(512)[0]) == (2, 1, 4, words(UNIT1, 4, 0, 2))
    finally:
        bg.run(server.stop())


def test_a_failing_bank_answers_server_device_failure_and_the_server_goes_on(bg: Background) -> None:
    calls = []

    def bank() -> dict[tuple[int, int], int]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("bank broke")
        return UNIT1

    server = SimulatedServer(units={1: bank})
    port = bg.run(server.start())
    try:
        assert tcp_read(port, 1, 4, 0, 2) == 4
        assert tcp_read(port, 1, 4, 0, 2) == words(UNIT1, 4, 0, 2)
    finally:
        bg.run(server.stop())


def test_a_busy_port_and_a_missing_serial_device_raise_with_their_errno(bg: Background, tmp_path: Path) -> None:
    import errno

    server = two_unit_server()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError) as tcp:
            bg.run(server.start_tcp("127.0.0.1", busy.getsockname()[1]))
    assert tcp.value.errno == errno.EADDRINUSE
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        with pytest.raises(OSError) as udp:
            bg.run(server.start_udp("127.0.0.1", busy.getsockname()[1]))
    assert udp.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as serial:
        bg.run(server.start_serial(str(tmp_path / "no-such-tty")))
    assert serial.value.errno == errno.ENOENT
    bg.run(server.stop())
