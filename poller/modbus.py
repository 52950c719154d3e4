"""Modbus TCP reads: one connection and one request at a time per host:port.

Only function codes 3 and 4 are ever sent. This module knows nothing of the
database or InfluxDB; it turns a ReadBlock into 16-bit words or a ModbusError.

Three layers, so other framings (RTU over TCP, UDP, serial RTU) can be added
beside MBAP without touching the rest:
- a framing (`MbapFraming`): pure functions from a `Request` to bytes and from
  bytes back to a `Reply`, checking everything the reply must echo;
- a connection (`StreamConnection`): an asyncio Protocol that feeds the bytes
  of a byte stream to its framing, one request at a time, and never raises
  into the event loop;
- an `Endpoint`: one host:port, its lock, its pause, its transaction ids, and
  the errors the cycle reports.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from dataclasses import dataclass
from typing import Protocol, cast

from .model import MAX_REGISTERS_PER_READ, FunctionCode, ReadBlock

log = logging.getLogger(__name__)

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
BUSY_CODES = frozenset({5, 6})  # try again shortly
SPLIT_CODES = frozenset({2, 3})  # a register in the block does not exist

READ_FUNCTIONS = frozenset(int(fc) for fc in FunctionCode)  # 3 and 4: the poller never writes


class ModbusError(Exception):
    """A read failed; `kind` is one word for counting, the message says why."""

    kind = "error"
    # True when the connection can no longer be trusted (timeout, garbage,
    # reset): the next request must go over a fresh connection.
    breaks_connection = True


class ConnectError(ModbusError):
    kind = "connect"


class ResponseTimeout(ModbusError):
    kind = "timeout"


class BadReply(ModbusError):
    kind = "bad_reply"


class BadRequest(ModbusError):
    """A block or unit id no Modbus request can carry; nothing was sent."""

    kind = "bad_request"
    breaks_connection = False


class ExceptionReply(ModbusError):
    kind = "exception"
    breaks_connection = False

    def __init__(self, code: int, block: ReadBlock, unit: int) -> None:
        self.code = code
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        super().__init__(f"unit {unit} answered {block} with exception {code} ({name})")


# ---------------------------------------------------------------------------------------------
# Framing: pure, no I/O


@dataclass(frozen=True, slots=True)
class Request:
    """One read as sent: everything its reply must echo."""

    transaction: int  # MBAP transaction id, 1..65535 (framings without one ignore it)
    unit: int
    function_code: int
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply that passed every check: the words asked for, or the device's exception code."""

    words: tuple[int, ...] = ()
    exception: int | None = None


class FrameError(ValueError):
    """The bytes are not the reply to the request (says what is wrong, not where it came from)."""


class Framing(Protocol):
    """How requests and replies are put on the wire (MBAP now; RTU, UDP later)."""

    name: str
    max_frame: int  # no reply is longer: more bytes than this are never buffered

    def encode(self, request: Request) -> bytes:
        """The request's bytes; ValueError for a request that cannot be sent."""
        ...

    def frame_size(self, data: bytes | bytearray, request: Request) -> int | None:
        """Length of the reply starting at data[0], None until enough bytes say it.

        Checks what the bytes so far allow, so a wrong reply fails at its first
        wrong byte; raises FrameError.
        """
        ...

    def decode(self, frame: bytes | bytearray, request: Request) -> Reply:
        """The reply in `frame` (exactly one whole reply); FrameError unless every check passes."""
        ...


def check_request(request: Request) -> None:
    """ValueError unless `request` is a read the poller may send."""
    if request.function_code not in READ_FUNCTIONS:
        raise ValueError(f"refusing to send function code {request.function_code}: "
                         f"the poller only reads ({', '.join(map(str, sorted(READ_FUNCTIONS)))})")
    if not 0 <= request.unit <= 255:
        raise ValueError(f"unit id {request.unit} outside 0..255")
    if not 1 <= request.count <= MAX_REGISTERS_PER_READ:
        raise ValueError(f"{request.count} registers: a read asks for 1..{MAX_REGISTERS_PER_READ}")
    if not 0 <= request.address or request.address + request.count > 0x10000:
        raise ValueError(f"registers {request.address}..{request.address + request.count - 1} "
                         "outside 0..65535")


_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id (0), length (of what follows), unit id
_MBAP_READ = struct.Struct(">HHHBBHH")  # the header, then function code, start address, count


class MbapFraming:
    """Modbus TCP: a 7-byte MBAP header, then the PDU (Modbus Messaging on TCP/IP, 3.1.3).

    A read of 2 holding registers from 107 (0x6B), unit 17, transaction 0x1234:
        request  12 34  00 00  00 06  11  03 00 6B 00 02
        reply    12 34  00 00  00 07  11  03 04 02 2B 00 64     -> words 0x022B, 0x0064
        refused  12 34  00 00  00 03  11  83 02                 -> exception 2
    A reply must echo the transaction id, protocol id 0, the unit id and the function code
    (or it with 0x80 and one exception byte); its byte count must be twice the count asked and
    the MBAP length must cover exactly that PDU (3..254 in any case).
    """

    name = "Modbus TCP"
    header = _MBAP.size
    max_frame = 6 + 254

    def encode(self, request: Request) -> bytes:
        check_request(request)
        if not 1 <= request.transaction <= 0xFFFF:  # 0 is never sent: some devices answer 0 to anything
            raise ValueError(f"transaction id {request.transaction} outside 1..65535")
        return _MBAP_READ.pack(request.transaction, 0, 6, request.unit, request.function_code,
                               request.address, request.count)

    def frame_size(self, data: bytes | bytearray, request: Request) -> int | None:
        n = len(data)
        if n >= 2 and (tid := int.from_bytes(data[0:2], "big")) != request.transaction:
            raise FrameError(f"reply to transaction {tid}, not to the one asked ({request.transaction}): "
                             "a stale, repeated or misrouted reply")
        if n >= 4 and (pid := int.from_bytes(data[2:4], "big")) != 0:
            raise FrameError(f"protocol id {pid}, not 0 (not Modbus TCP)")
        if n < 6:
            return None
        length = int.from_bytes(data[4:6], "big")
        if not 3 <= length <= 254:
            raise FrameError(f"MBAP length {length} outside 3..254")
        if n >= 7 and data[6] != request.unit:
            raise FrameError(f"reply from unit {data[6]}, not from the unit asked ({request.unit})")
        if n < 8:
            return None
        fc = data[7]
        if fc == request.function_code | 0x80:
            if length != 3:
                raise FrameError(f"exception reply with MBAP length {length}, not 3 (one exception code)")
            return 9
        if fc != request.function_code:
            raise FrameError(f"function code {fc} in the reply to function {request.function_code}")
        expected = 3 + 2 * request.count  # unit, function code, byte count, the words
        if length != expected:
            raise FrameError(f"MBAP length {length} for {request.count} registers ({expected} expected)")
        if n >= 9 and data[8] != 2 * request.count:
            raise FrameError(f"byte count {data[8]} for {request.count} registers ({2 * request.count} expected)")
        return 6 + expected

    def decode(self, frame: bytes | bytearray, request: Request) -> Reply:
        size = self.frame_size(frame, request)
        if size is None or len(frame) < size:
            raise FrameError(f"reply cut short after {len(frame)} byte(s)")
        if len(frame) > size:
            raise FrameError(f"{len(frame) - size} byte(s) after the end of the reply")
        if frame[7] & 0x80:
            return Reply(exception=frame[8])
        return Reply(words=struct.unpack_from(f">{request.count}H", frame, 9))


MBAP = MbapFraming()


# ---------------------------------------------------------------------------------------------
# Connection: bytes in, replies out


class ConnectionClosed(ConnectionError):
    """The connection ended while a request was in flight (the message says who ended it)."""


class StreamConnection(asyncio.Protocol):
    """One byte-stream connection carrying one request at a time in `framing`'s frames.

    Every byte received must belong to the reply of the request in flight.
    Bytes with no request in flight, past the end of the reply, or more than a
    reply can hold mean the stream can no longer be trusted: the connection is
    dropped (the request in flight fails), so stray bytes are never taken as
    the next reply. The buffer never holds more than `framing.max_frame` bytes.
    Nothing here raises into the event loop.
    """

    def __init__(self, framing: Framing) -> None:
        self.framing = framing
        self.transport: asyncio.Transport | None = None
        self.closed: str | None = None  # why the connection is unusable; None while it is usable
        self.peer = "?"
        self._buffer = bytearray()
        self._request: Request | None = None
        self._reply: asyncio.Future[Reply] | None = None

    @property
    def usable(self) -> bool:
        return self.closed is None and self.transport is not None and not self.transport.is_closing()

    @property
    def received(self) -> int:
        """Bytes of the current reply received so far."""
        return len(self._buffer)

    def send(self, request: Request, frame: bytes) -> asyncio.Future[Reply]:
        """Send `frame` (the encoded `request`); the future is its checked reply.

        The future fails with FrameError (a wrong reply) or ConnectionClosed.
        """
        if self._request is not None:
            raise RuntimeError("a request is already in flight on this connection")
        if self.closed is not None or self.transport is None:
            raise ConnectionClosed(self.closed or "not connected")
        reply: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._buffer.clear()
        self._request, self._reply = request, reply
        self.transport.write(frame)
        return reply

    def close(self, reason: str) -> None:
        """Drop the connection; a request in flight fails with `reason`."""
        self._drop(ConnectionClosed(reason))

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # create_connection: a stream transport
        self.peer = str(transport.get_extra_info("peername"))

    def data_received(self, data: bytes) -> None:
        try:
            self._take(data)
        except Exception as exc:  # pragma: no cover - a bug here fails the read, not the event loop
            self._drop(FrameError(f"internal error reading the reply ({type(exc).__name__}: {exc})"))

    def eof_received(self) -> bool:
        self._drop(ConnectionClosed("connection closed by the device"))
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._drop(ConnectionClosed("connection closed by the device" + (f" ({exc})" if exc else "")))

    # inside

    def _take(self, data: bytes) -> None:
        if self.closed is not None:
            return  # given up on: the transport is closing
        request = self._request
        if request is None:
            self._drop(FrameError(f"{len(data)} byte(s) arrived with no request in flight"))
            return
        if len(self._buffer) + len(data) > self.framing.max_frame:
            self._drop(FrameError(f"{len(self._buffer) + len(data)} bytes, more than a reply can hold "
                                  f"({self.framing.max_frame})"))
            return
        self._buffer += data
        try:
            size = self.framing.frame_size(self._buffer, request)
            if size is None or len(self._buffer) < size:
                return  # wait for the rest
            reply = self.framing.decode(self._buffer, request)  # also fails on bytes past the end
        except FrameError as exc:
            self._drop(exc)
            return
        self._buffer.clear()
        self._request, future, self._reply = None, self._reply, None
        if future is not None and not future.done():
            future.set_result(reply)

    def _drop(self, error: Exception) -> None:
        """Give up on the connection for good; the request in flight, if any, fails with `error`."""
        if self.closed is None:
            self.closed = str(error)
            log.debug("connection to %s dropped: %s", self.peer, error)
        future, self._request, self._reply = self._reply, None, None
        self._buffer.clear()
        if future is not None and not future.done():
            future.set_exception(error)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


# ---------------------------------------------------------------------------------------------
# Endpoint: what the cycle uses


class Endpoint:
    """One host:port (a meter or a gateway fronting many unit ids)."""

    def __init__(self, host: str, port: int, connect_timeout: float = 3.0) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.framing: Framing = MBAP
        self._connection: StreamConnection | None = None
        self._lock = asyncio.Lock()  # one request in flight, whatever the caller does
        self._last_reply = 0.0  # monotonic time the last request ended
        self._transaction = 0  # last transaction id sent; ids run 1..65535, never 0

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    async def read(self, block: ReadBlock, unit: int, timeout: float, pause: float = 0.0) -> list[int]:
        """Read one block from one unit id; the words, exactly `block.count` of them.

        `pause`: the least time between the end of one request on this
        host:port and the start of the next (a quirk of some gateways).
        Raises a ModbusError (or CancelledError), nothing else.
        """
        async with self._lock:
            if pause:
                wait = self._last_reply + pause - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                return await self._read(block, unit, timeout)
            finally:
                self._last_reply = time.monotonic()

    def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.close("connection closed by the poller")

    def _next_transaction(self) -> int:
        self._transaction = self._transaction % 0xFFFF + 1
        return self._transaction

    async def _read(self, block: ReadBlock, unit: int, timeout: float) -> list[int]:
        request = Request(self._next_transaction(), unit, int(block.function_code), block.address, block.count)
        try:
            frame = self.framing.encode(request)
        except ValueError as exc:
            raise BadRequest(f"{self} unit {unit}, {block}: not sent: {exc}") from None
        connection = await self._connected(timeout)
        try:
            async with asyncio.timeout(timeout):
                reply = await connection.send(request, frame)
        except TimeoutError:
            received = connection.received
            self.close()
            if received:
                raise ResponseTimeout(f"no complete reply from {self} unit {unit} to {block} within {timeout:g} s "
                                      f"({received} byte(s) arrived)") from None
            raise ResponseTimeout(f"no reply from {self} unit {unit} to {block} within {timeout:g} s") from None
        except (FrameError, ConnectionClosed) as exc:
            self.close()
            raise BadReply(f"{self} unit {unit}, {block}: {exc}") from None
        except BaseException:
            self.close()  # cancelled: a reply still on its way must not be taken as the next one's
            raise
        if reply.exception is not None:
            raise ExceptionReply(reply.exception, block, unit)
        return list(reply.words)

    async def _connected(self, timeout: float) -> StreamConnection:
        if self._connection is not None and self._connection.usable:
            return self._connection
        self.close()
        limit = max(timeout, self.connect_timeout)
        connection = StreamConnection(self.framing)
        try:
            async with asyncio.timeout(limit):
                await asyncio.get_running_loop().create_connection(lambda: connection, self.host, self.port)
        except TimeoutError:
            raise ConnectError(f"cannot connect to {self}: no answer within {limit:g} s") from None
        except socket.gaierror as exc:
            raise ConnectError(f"cannot connect to {self}: name not resolved ({exc.strerror})") from None
        except UnicodeError as exc:  # the idna codec: '192.168..10', '.meter', a label over 63 characters
            raise ConnectError(f"cannot connect to {self}: not a valid host name ({exc})") from None
        except ConnectionRefusedError:
            raise ConnectError(f"cannot connect to {self}: connection refused") from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {self}: {exc.strerror or exc}") from None
        except Exception as exc:  # e.g. OverflowError for a port outside 0..65535
            raise ConnectError(f"cannot connect to {self}: {type(exc).__name__}: {exc}") from None
        self._connection = connection
        return connection
