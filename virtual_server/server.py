"""A Modbus server for simulated devices, on pymodbus's servers (functions 3 and 4 only).

pymodbus does the wire: the framing of Modbus TCP, RTU over TCP, UDP and serial RTU
(a serial line is served on one end of a pty pair, `socat pty,raw,echo=0 pty,raw,echo=0`).
This module decides the answers: which words a unit serves, how long it takes, what it
refuses, and what tests want counted (requests per unit, function and block, the most
requests in flight at once, TCP connections).

    server = SimulatedServer(units={1: bank}, latency_s=0.01)
    port = await server.start_tcp("127.0.0.1", 0)              # Modbus TCP
    port = await server.start_tcp("127.0.0.1", 0, framer="rtu")  # RTU over TCP
    port = await server.start_udp("127.0.0.1", 0)              # Modbus UDP
    await server.start_serial("/dev/pts/3", baudrate=9600)     # RTU on a serial line
    ...
    await server.stop()

One SimulatedServer may serve several wires at once; they share its banks and stats.
A connection (a TCP socket, the UDP socket, the serial line) answers its requests one
after the other, as a gateway or a bus does; `in_flight` counts a request from its
arrival to its reply, so a client sending a second request before the first is
answered shows as two in flight.

Faults are injected with `on_request(unit, fc, address, count)`, called for every read
(functions 3 and 4) after the latency and before the answer. It returns None to answer
normally, an exception code (e.g. 6, server device busy) to answer with it, DROP to close
the connection without a reply (on UDP and serial, where there is nothing to close, no
reply), or SILENT for no reply at all (a unit that does not answer). A request whose client
hangs up before its turn is abandoned without reaching the hook.

    busy_twice = iter([6, 6])
    SimulatedServer(units={}, default=bank, on_request=lambda *_: next(busy_twice, None))
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import termios
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

import serial
from pymodbus.framer import FramerRTU, FramerType
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
)
from pymodbus.server import ModbusSerialServer, ModbusTcpServer, ModbusUdpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import SimData, SimDevice
from pymodbus.transport import CommType

log = logging.getLogger("virtual_server")

ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE = 1, 2, 3
SERVER_DEVICE_FAILURE, SERVER_DEVICE_BUSY = 4, 6
GATEWAY_TARGET_FAILED = 11
READ_FUNCTIONS = (3, 4)

DROP: Final = "drop"  # on_request: close the connection without a reply
SILENT: Final = "silent"  # on_request: no reply, the connection stays open

# {(function code, address): word} of one unit, read at the time of the request
Bank = Callable[[], Mapping[tuple[int, int], int]]
Outcome = int | Literal["drop", "silent"] | None
OnRequest = Callable[[int, int, int, int], Outcome]  # (unit, fc, address, count)
Framer = Literal["socket", "rtu"]


@dataclass
class Stats:
    requests: int = 0  # reads (functions 3 and 4) received
    by_request: Counter[tuple[int, int, int, int]] = field(default_factory=Counter)  # (unit, fc, addr, count)
    in_flight: int = 0
    max_in_flight: int = 0
    connections: int = 0  # TCP connections accepted (Modbus TCP and RTU over TCP)


class SimulatedServer:
    """Serves `units` ({unit id: bank}); `default` answers any other unit id.

    A unit with no bank and no default: over Modbus TCP and UDP the gateway answers
    exception 11 (gateway target device failed to respond); with RTU framing (serial,
    RTU over TCP through a transparent serial server) nothing answers, as on a wire.
    strict: addresses no register covers answer "illegal data address", as many
    devices do; otherwise they read as 0, as an Eastron meter does. A word mapped only
    on the other table (fc 3 vs 4) is served on both.
    refuse: (fc, address) pairs that always answer "illegal data address".
    deaf_after_connect_s: requests arriving this soon after their TCP connection opened get no
    reply (Huawei's SDongle and SmartLogger behave so; the poller's connect_pause_ms quirk).
    one_client: a second TCP connection while one is open is closed at once (devices that
    allow one client; the poller's close_after_poll quirk lets another client in between polls).
    """

    def __init__(
        self,
        units: Mapping[int, Bank],
        default: Bank | None = None,
        latency_s: float = 0.0,
        strict: bool = False,
        refuse: frozenset[tuple[int, int]] = frozenset(),
        log_requests: bool = False,
        on_request: OnRequest | None = None,
        deaf_after_connect_s: float = 0.0,
        one_client: bool = False,
    ) -> None:
        self.units = dict(units)
        self.default = default
        self.latency_s = latency_s
        self.strict = strict
        self.refuse = refuse
        self.log_requests = log_requests
        self.on_request = on_request
        self.deaf_after_connect_s = deaf_after_connect_s
        self.one_client = one_client
        self._open_tcp: set[_Connection] = set()
        self.stats = Stats()
        self._servers: list[_TcpServer | _UdpServer | _SerialServer] = []

    # --- wires ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve Modbus TCP on host:port (0: any free port); the port listened on."""
        return await self.start_tcp(host, port)

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0, framer: Framer = "socket") -> int:
        """Serve Modbus TCP ("socket") or RTU over TCP ("rtu") on host:port; the port listened on."""
        server = _TcpServer(_unused_datastore(), framer=FramerType(framer), address=(host, port),
                            custom_pdu=_request_pdus(framer))
        await self._listen(server, lambda: _bind_error(socket.SOCK_STREAM, host, port))
        listener = server.transport
        assert isinstance(listener, asyncio.Server)
        return int(listener.sockets[0].getsockname()[1])

    async def start_udp(self, host: str = "127.0.0.1", port: int = 0, framer: Framer = "socket") -> int:
        """Serve Modbus UDP (MBAP in datagrams; "rtu": RTU frames) on host:port; the port listened on."""
        server = _UdpServer(_unused_datastore(), framer=FramerType(framer), address=(host, port),
                            custom_pdu=_request_pdus(framer))
        await self._listen(server, lambda: _bind_error(socket.SOCK_DGRAM, host, port))
        return int(server.transport.get_extra_info("sockname")[1])

    async def start_serial(self, device: str, baudrate: int = 9600, parity: str = "N", stopbits: int = 1,
                           bytesize: int = 8) -> None:
        """Serve RTU on a serial device (e.g. one end of a socat pty pair); parity N, E or O."""
        server = _SerialServer(_unused_datastore(), framer=FramerType.RTU, port=device, baudrate=baudrate,
                               parity=parity, stopbits=stopbits, bytesize=bytesize,
                               custom_pdu=_request_pdus("rtu"))
        try:
            await self._listen(server, lambda: _open_error(device, baudrate, parity, stopbits, bytesize))
        except (termios.error, ValueError) as exc:  # pyserial: settings the device (a pty: parity) refuses
            raise OSError(errno.EINVAL, f"the device refuses {baudrate} {bytesize}{parity}{stopbits} "
                                        f"({exc.args[-1] if exc.args else exc})") from exc

    async def _listen(self, server: _TcpServer | _UdpServer | _SerialServer, error: Callable[[], OSError]) -> None:
        server.simulator = self
        # pymodbus 3.16's listen() logs a failure and returns False: the OSError and its
        # errno (a busy port, a missing device) are found again by `error`
        if not await server.listen():
            raise error()
        self._servers.append(server)

    async def stop(self) -> None:
        """Close every listener and connection; requests still being answered are abandoned."""
        servers, self._servers = self._servers, []
        for server in servers:
            listener = server.transport
            await server.shutdown()  # closes the listener and its connections (see _Connection.callback_disconnected)
            if isinstance(listener, asyncio.Server):
                await listener.wait_closed()

    # --- answers -------------------------------------------------------------------------

    def answer(self, unit: int, fc: int, address: int, count: int) -> list[int] | int:
        """The words a read of `count` registers at `address` returns now, or its exception code."""
        if not 1 <= count <= 125:
            return ILLEGAL_VALUE
        if address + count > 65536:
            return ILLEGAL_ADDRESS
        bank_of = self.units.get(unit, self.default)
        if bank_of is None:
            return GATEWAY_TARGET_FAILED
        addresses = range(address, address + count)
        if self.refuse and any((fc, a) in self.refuse for a in addresses):
            return ILLEGAL_ADDRESS
        bank = bank_of()
        words = [bank.get((fc, a)) for a in addresses]
        if None in words:
            for i, a in enumerate(addresses):
                if words[i] is None:
                    # served on both tables: a value mapped on the other one
                    words[i] = bank.get((7 - fc, a))
                if words[i] is None:
                    if self.strict:
                        return ILLEGAL_ADDRESS
                    words[i] = 0
        return cast(list[int], words)

    def _received(self, conn: _Connection, request: ModbusPDU, addr: tuple[Any, ...] | None) -> None:
        """A request has arrived on `conn`: count it, then answer it in its turn."""
        if self.deaf_after_connect_s and asyncio.get_running_loop().time() - conn.opened < self.deaf_after_connect_s:
            return  # still waking up: the request is not even heard
        fc, stats = request.function_code, self.stats
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        if fc in READ_FUNCTIONS:
            stats.requests += 1
            stats.by_request[(request.dev_id, fc, request.address, request.count)] += 1
            if self.log_requests:
                log.info("request unit=%d fc=%d address=%d count=%d", request.dev_id, fc, request.address,
                         request.count)
        conn.waiting.append((request, addr))
        if len(conn.waiting) == 1:
            self._start_next(conn)

    def _start_next(self, conn: _Connection) -> None:
        """The first waiting request's turn: answered after the latency (a timer, not a task
        per request: the fleet of bench/ answers thousands a second in one process)."""
        if self.latency_s:
            conn.timer = asyncio.get_running_loop().call_later(self.latency_s, self._answer_first, conn)
        else:
            self._answer_first(conn)

    def _answer_first(self, conn: _Connection) -> None:
        conn.timer = None
        request, addr = conn.waiting.popleft()
        self.stats.in_flight -= 1
        self._answer(conn, request, addr)
        if conn.waiting:
            self._start_next(conn)  # one request at a time per connection, as a gateway or a bus does

    def _abandon(self, conn: _Connection) -> None:
        """The connection is gone (closed by the client, or by stop()): its waiting requests get no reply."""
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        self.stats.in_flight -= len(conn.waiting)
        conn.waiting.clear()

    def _answer(self, conn: _Connection, request: ModbusPDU, addr: tuple[Any, ...] | None) -> None:
        try:
            outcome = self._outcome(conn, request)
        except Exception:
            log.exception("answering unit=%d fc=%d", request.dev_id, request.function_code)
            outcome = SERVER_DEVICE_FAILURE
        if outcome == DROP and conn.comm_params.comm_type is CommType.TCP and conn.transport:
            cast(asyncio.Transport, conn.transport).abort()  # the reply is lost with the connection
        elif isinstance(outcome, (int, list)) and conn.transport:
            conn.server_send(_reply(request, outcome), addr)

    def _outcome(self, conn: _Connection, request: ModbusPDU) -> list[int] | Outcome:
        fc = request.function_code
        if fc not in READ_FUNCTIONS:
            return ILLEGAL_FUNCTION  # the poller only reads; so does this device
        unit, address, count = request.dev_id, request.address, request.count
        if self.on_request is not None and (fault := self.on_request(unit, fc, address, count)) is not None:
            return fault
        words = self.answer(unit, fc, address, count)
        if words == GATEWAY_TARGET_FAILED and isinstance(conn.framer, FramerRTU):
            return SILENT  # on a wire, a unit that is not there does not answer
        return words


def _reply(request: ModbusPDU, outcome: list[int] | int) -> ModbusPDU:
    unit, tid = request.dev_id, request.transaction_id
    if isinstance(outcome, int):
        return ExceptionResponse(request.function_code, outcome, device_id=unit, transaction=tid)
    response = _HoldingRegisters if request.function_code == 3 else _InputRegisters
    return response(registers=outcome, dev_id=unit, transaction_id=tid)


class _HoldingRegisters(ReadHoldingRegistersResponse):
    def encode(self) -> bytes:
        """pymodbus's encoding in one struct.pack rather than one per word."""
        return struct.pack(f">B{len(self.registers)}H", 2 * len(self.registers), *self.registers)


class _InputRegisters(_HoldingRegisters, ReadInputRegistersResponse):
    function_code = 4


# --- pymodbus's request decoding (public hook: the servers' custom_pdu) --------------------


class _ReadHolding(ReadHoldingRegistersRequest):
    """Function 3 as pymodbus decodes it, minus its count check (1..125): a count out of
    range is then answered with exception 3 (illegal data value), as devices do, not
    refused as an undecodable frame."""

    def decode(self, data: bytes) -> None:
        self.address, self.count = struct.unpack(">HH", data[:4])


class _ReadInput(_ReadHolding, ReadInputRegistersRequest):
    function_code = 4


def _unknown_function(fc: int) -> type[ModbusPDU]:
    def decode(self: ModbusPDU, data: bytes) -> None:
        pass

    return type(f"_Function{fc}", (ModbusPDU,), {"function_code": fc, "decode": decode})


# Modbus TCP and UDP frames carry their length, so any function code can be decoded and
# refused with exception 1 under its own code (pymodbus alone answers function 0x80).
# RTU frames have no length: a function pymodbus does not know cannot be framed, and a
# device on a wire skips it as noise, as pymodbus's RTU framer does.
_UNKNOWN_FUNCTIONS = [_unknown_function(fc) for fc in range(1, 128) if fc not in DecodePDU.pdu_table]


def _request_pdus(framer: Framer) -> list[type[ModbusPDU]]:
    return [_ReadHolding, _ReadInput, *(_UNKNOWN_FUNCTIONS if framer == "socket" else [])]


def _unused_datastore() -> SimDevice:
    """pymodbus's servers require a datastore; every request is answered by `_received`, never from it."""
    return SimDevice(0, simdata=SimData(0))


# --- where the simulator plugs into pymodbus's servers ------------------------------------
#
# pymodbus 3.16 has no public hook for answering a request with access to its connection
# (to delay it, count it, close the connection instead of replying). Its servers make one
# ServerRequestHandler per connection (`callback_new_connection`); the handler's
# `callback_data` decodes one request into `last_pdu` and schedules `handle_later`, whose
# `handle_request` answers from the datastore. The workaround lives here and only here:
# - `handle_later` takes the request at once and hands it to the simulator (pymodbus's
#   handle_request reads `last_pdu` again after awaiting the datastore, so with a latency
#   a request arriving meanwhile would take the first reply's transaction id);
# - `callback_data` takes every complete request of a read, not only the first, and puts
#   back the receive buffer that pymodbus's send() empties, so requests sent without
#   waiting for replies are all seen (and counted in flight). One gap stays: a partial
#   request waiting in the buffer when a delayed reply is sent is lost, as send() empties
#   the buffer then; clients that wait for each reply, as the poller does, never meet it.
# - `callback_connected` counts TCP connections; `callback_disconnected` abandons the
#   requests still waiting for their turn.


class _Connection(ServerRequestHandler):
    """One TCP connection, the UDP socket or the serial line: its requests, one at a time."""

    def __init__(self, owner: _Answering) -> None:
        super().__init__(owner, None, None, None)
        self.simulator = owner.simulator
        self.waiting: deque[tuple[ModbusPDU, tuple[Any, ...] | None]] = deque()  # the first is being answered
        self.timer: asyncio.TimerHandle | None = None
        self.opened = 0.0  # loop time the connection was made

    def callback_connected(self) -> None:
        super().callback_connected()
        self.opened = asyncio.get_running_loop().time()
        if self.comm_params.comm_type is CommType.TCP:
            self.simulator.stats.connections += 1
            if self.simulator.one_client and self.simulator._open_tcp and self.transport:
                cast(asyncio.Transport, self.transport).abort()  # busy with another client
                return
            self.simulator._open_tcp.add(self)

    def callback_disconnected(self, exc: Exception | None) -> None:
        super().callback_disconnected(exc)
        self.simulator._open_tcp.discard(self)
        self.simulator._abandon(self)

    def callback_data(self, data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        used = 0
        while used < len(data):
            taken: int = super().callback_data(data[used:], addr)
            if not taken:
                break  # the rest is an incomplete frame
            used += taken
            self.handle_later()  # now, not a loop iteration later: the call pymodbus scheduled finds nothing
        self.recv_buffer = data  # what the caller cuts `used` off next; a reply sent above emptied it
        return used

    def handle_later(self) -> None:
        request, addr = self.last_pdu, self.last_addr
        self.last_pdu = None
        if request is not None:
            self.simulator._received(self, request, addr)


class _Answering:
    """What the simulator adds to each of pymodbus's servers: its own connection handler."""

    simulator: SimulatedServer

    def callback_new_connection(self) -> _Connection:
        return _Connection(self)


class _TcpServer(_Answering, ModbusTcpServer):
    pass


class _UdpServer(_Answering, ModbusUdpServer):
    pass


class _SerialServer(_Answering, ModbusSerialServer):
    pass


def _bind_error(kind: socket.SocketKind, host: str, port: int) -> OSError:
    """Why host:port could not be listened on: bind it once more and keep the error."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        return exc
    return OSError(errno.EADDRNOTAVAIL, f"pymodbus could not listen on {host}:{port}")


def _open_error(device: str, baudrate: int, parity: str, stopbits: int, bytesize: int) -> OSError:
    """Why a serial device could not be opened: open it once more, as pymodbus does, and keep the error."""
    try:
        serial.serial_for_url(device, exclusive=True, baudrate=baudrate, parity=parity, stopbits=stopbits,
                              bytesize=bytesize).close()
    except (OSError, ValueError) as exc:
        return exc if isinstance(exc, OSError) else OSError(errno.EINVAL, str(exc))
    return OSError(errno.EIO, f"pymodbus could not open {device}")
