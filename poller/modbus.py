"""Modbus on the wire: framings, connections and the errors of a read.

Only function codes 3 and 4 are ever sent. This module knows nothing of the
database or InfluxDB, nor of which bus a meter is on (poller/transport.py
makes the buses); it turns a request into bytes, bytes into a checked reply,
and says what went wrong as a ModbusError.

Two layers:
- a framing (`MbapFraming` for Modbus TCP and UDP, `RtuFraming` for RTU over a
  serial line or a TCP socket): pure functions from a `Request` to bytes and
  from bytes back to a `Reply`, checking everything the reply must echo;
- a connection, carrying one request at a time in a framing's frames and never
  raising into the event loop: `StreamConnection` (an asyncio Protocol on a
  byte stream: any stray byte drops it), `DatagramConnection` (one reply per
  datagram: a datagram that is not the reply is ignored) and
  `SerialConnection` (a serial port's fd: bytes that are no reply are noise,
  thrown away, and the time the line was last busy is kept for the silence
  between frames).
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from typing import Any, NamedTuple, Protocol, cast

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


class NotOwner(ModbusError):
    """The bus's lease (several pollers, README "Several pollers") ends before this request's
    reply window would: another instance polls the bus from now on. Nothing was sent, unless
    `sent` (the process was paused as it wrote the request: it went out late, its reply is thrown
    away)."""

    kind = "not_owner"
    breaks_connection = False

    def __init__(self, message: str, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


class ExceptionReply(ModbusError):
    kind = "exception"
    breaks_connection = False

    def __init__(self, code: int, block: ReadBlock, unit: int) -> None:
        self.code = code
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        super().__init__(f"unit {unit} answered {block} with exception {code} ({name})")


# ---------------------------------------------------------------------------------------------
# Framing: pure, no I/O


class Request(NamedTuple):
    """One read as sent: everything its reply must echo. (A named tuple, not a frozen dataclass:
    one is made per request, in a third of the time.)"""

    transaction: int  # MBAP transaction id, 1..65535 (framings without one ignore it)
    unit: int
    function_code: int
    address: int
    count: int  # type: ignore[assignment]  # (a field: shadows tuple.count, which nothing here calls)


class Reply(NamedTuple):
    """A reply that passed every check: the words asked for, or the device's exception code.
    (A named tuple: one is made per reply.)"""

    words: tuple[int, ...] = ()
    exception: int | None = None


class FrameError(ValueError):
    """The bytes are not the reply to the request (says what is wrong, not where it came from)."""


class Framing(Protocol):
    """How requests and replies are put on the wire (MBAP, RTU)."""

    name: str
    max_frame: int  # no reply is longer: more bytes than this are never buffered
    transaction_ids: bool  # whether a reply names its request (MBAP), or only echoes unit and function (RTU)

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

    def decode_sized(self, frame: bytes | bytearray, request: Request, size: int) -> Reply:
        """`decode`, for a frame whose `frame_size` was just found to be `size` (not looked at again)."""
        ...


def assemble(framing: Framing, buffer: bytearray, data: bytes, request: Request) -> Reply | None:
    """Add `data` to the bytes of the reply being received: the reply once it is whole, else
    None; FrameError as soon as the bytes cannot be the reply (or are more than one can hold)."""
    if len(buffer) + len(data) > framing.max_frame:
        raise FrameError(f"{len(buffer) + len(data)} bytes, more than a reply can hold ({framing.max_frame})")
    buffer += data
    size = framing.frame_size(buffer, request)
    if size is None or len(buffer) < size:
        return None
    return framing.decode_sized(buffer, request, size)  # also fails on bytes past the end


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


# the words of a reply to a read of n registers, at index n: every count a reply's frame_size accepts
# (its byte count, 2 * n, is one byte), made once instead of a format string per reply
_WORDS = tuple(struct.Struct(f">{n}H") for n in range(128))
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
    transaction_ids = True

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
        return self.decode_sized(frame, request, size)

    def decode_sized(self, frame: bytes | bytearray, request: Request, size: int) -> Reply:
        if len(frame) > size:
            raise FrameError(f"{len(frame) - size} byte(s) after the end of the reply")
        if frame[7] & 0x80:
            return Reply((), frame[8])
        return Reply(_WORDS[request.count].unpack_from(frame, 9))


MBAP = MbapFraming()


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray) -> int:
    """CRC-16/MODBUS (polynomial 0xA001 reflected, start 0xFFFF), sent low byte first.

    crc16(bytes.fromhex("11 03 006B 0003")) == 0x8776, so the frame ends 76 87.
    """
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


_RTU_READ = struct.Struct(">BBHH")  # unit id, function code, start address, count (the CRC follows)


class RtuFraming:
    """Modbus RTU: unit id, the PDU, CRC-16 low byte first (Modbus over Serial Line, 2.5.1).

    A read of 3 holding registers from 107 (0x6B), unit 17:
        request  11  03 00 6B 00 03  76 87
        reply    11  03 06 02 2B 00 00 00 64  C8 BA     -> words 0x022B, 0x0000, 0x0064
        refused  11  83 02  C1 34                       -> exception 2
    There is no transaction id and no length field: a reply must come from the unit asked,
    echo the function code (or it with 0x80 and one exception byte, 5 bytes in all), carry
    a byte count of twice the count asked, be exactly that long, and end in its CRC.
    Unit 0 is the serial line's broadcast address: no device answers a read sent to it.
    """

    name = "Modbus RTU"
    max_frame = 256  # 5 + 2 * 125 = 255 for the longest read
    transaction_ids = False

    def encode(self, request: Request) -> bytes:
        check_request(request)
        if request.unit == 0:
            raise ValueError("unit id 0 is the broadcast address of a serial line: no device answers a read to it")
        pdu = _RTU_READ.pack(request.unit, request.function_code, request.address, request.count)
        return pdu + crc16(pdu).to_bytes(2, "little")

    def frame_size(self, data: bytes | bytearray, request: Request) -> int | None:
        n = len(data)
        if n >= 1 and data[0] != request.unit:
            raise FrameError(f"reply from unit {data[0]}, not from the unit asked ({request.unit})")
        if n < 2:
            return None
        fc = data[1]
        if fc == request.function_code | 0x80:
            return 5  # unit, function code | 0x80, exception code, CRC
        if fc != request.function_code:
            raise FrameError(f"function code {fc} in the reply to function {request.function_code}")
        if n >= 3 and data[2] != 2 * request.count:
            raise FrameError(f"byte count {data[2]} for {request.count} registers ({2 * request.count} expected)")
        return 5 + 2 * request.count  # unit, function code, byte count, the words, CRC

    def decode(self, frame: bytes | bytearray, request: Request) -> Reply:
        size = self.frame_size(frame, request)
        if size is None or len(frame) < size:
            raise FrameError(f"reply cut short after {len(frame)} byte(s)")
        return self.decode_sized(frame, request, size)

    def decode_sized(self, frame: bytes | bytearray, request: Request, size: int) -> Reply:
        if len(frame) > size:
            raise FrameError(f"{len(frame) - size} byte(s) after the end of the reply")
        sent, computed = int.from_bytes(frame[-2:], "little"), crc16(frame[:-2])
        if sent != computed:
            raise FrameError(f"CRC {sent:04X} does not match the frame's ({computed:04X}): damaged on the line")
        if frame[1] & 0x80:
            return Reply((), frame[2])
        return Reply(_WORDS[request.count].unpack_from(frame, 3))


RTU = RtuFraming()


# ---------------------------------------------------------------------------------------------
# Byte streams: bytes in, replies out


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
        self._loop: asyncio.AbstractEventLoop | None = None  # the transport's (get_running_loop costs a getpid)

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
        if self.closed is not None or self.transport is None or self._loop is None:
            raise ConnectionClosed(self.closed or "not connected")
        reply: asyncio.Future[Reply] = self._loop.create_future()
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
        self._loop = asyncio.get_running_loop()

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
        try:
            reply = assemble(self.framing, self._buffer, data, request)
        except FrameError as exc:
            self._drop(exc)
            return
        if reply is None:
            return  # wait for the rest
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
# Datagrams: one whole reply per datagram, or none


class DatagramConnection(asyncio.DatagramProtocol):
    """One UDP socket, connected to the device, carrying one request at a time in `framing`'s frames.

    A datagram is a whole reply or none, so there is no stream to fall out of step with:
    a datagram that is not the reply to the request in flight (another transaction id: a
    reply that came after its request timed out, a duplicate, a stranger; or nothing in
    flight) is ignored and counted in `ignored`. One with the right transaction id is the
    reply, checked whole: anything wrong in it fails the request (FrameError). An ICMP
    error (port unreachable) fails the request in flight with that OSError.
    """

    def __init__(self, framing: Framing) -> None:
        self.framing = framing
        self.transport: asyncio.DatagramTransport | None = None
        self.closed: str | None = None
        self.ignored = 0  # datagrams that were no reply to the request in flight
        self.peer = "?"
        self._request: Request | None = None
        self._reply: asyncio.Future[Reply] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def usable(self) -> bool:
        return self.closed is None and self.transport is not None and not self.transport.is_closing()

    @property
    def received(self) -> int:
        return 0  # a datagram is never half received

    def send(self, request: Request, frame: bytes) -> asyncio.Future[Reply]:
        """Send `frame` (the encoded `request`) in one datagram; the future is its checked reply.

        The future fails with FrameError, OSError (an ICMP error) or ConnectionClosed.
        """
        if self._request is not None:
            raise RuntimeError("a request is already in flight on this socket")
        if self.closed is not None or self.transport is None or self._loop is None:
            raise ConnectionClosed(self.closed or "not connected")
        reply: asyncio.Future[Reply] = self._loop.create_future()
        self._request, self._reply = request, reply
        self.transport.sendto(frame)  # an error here comes back through error_received
        return reply

    def abandon(self) -> None:
        """Forget the request in flight (timed out or cancelled): its reply, if it ever comes, is ignored."""
        self._request = self._reply = None

    def close(self, reason: str) -> None:
        self._finish(ConnectionClosed(reason))
        if self.closed is None:
            self.closed = reason
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # asyncio.DatagramProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.peer = str(transport.get_extra_info("peername"))
        self._loop = asyncio.get_running_loop()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            self._take(data)
        except Exception as exc:  # pragma: no cover - a bug here fails the read, not the event loop
            self._finish(FrameError(f"internal error reading the reply ({type(exc).__name__}: {exc})"))

    def error_received(self, exc: Exception) -> None:
        if self._request is None:
            log.debug("%s: %s with no request in flight", self.peer, exc)
            return
        self._finish(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self.closed or "socket closed" + (f" ({exc})" if exc else "")
        self._finish(ConnectionClosed(self.closed))

    # inside

    def _take(self, data: bytes) -> None:
        request = self._request
        if request is None or len(data) < 2 or int.from_bytes(data[:2], "big") != request.transaction:
            self.ignored += 1
            log.debug("%s: ignored a datagram of %d byte(s) that is not the reply to the request in flight "
                      "(%d so far)", self.peer, len(data), self.ignored)
            return
        try:
            reply: Reply | Exception = self.framing.decode(data, request)
        except FrameError as exc:
            reply = exc
        self._finish(reply)

    def _finish(self, outcome: Reply | Exception) -> None:
        future, self._request, self._reply = self._reply, None, None
        if future is None or future.done():
            return
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


# ---------------------------------------------------------------------------------------------
# Serial line: a file descriptor, frames told apart by silence


class SerialConnection:
    """RTU frames on an open serial port's file descriptor, read with the loop's add_reader.

    A serial line has no connection to drop and no transaction ids. Bytes that are not the
    reply to the request in flight (noise, the rest of a reply that went wrong, a reply
    that came after its request timed out) are read and thrown away, counted in `noise`;
    `last_activity` says when the line was last busy (the last byte seen, or the end of the
    last byte sent as the baud rate reckons it), so the bus can keep the inter-frame
    silence before its next request. A reply fails its request at its first wrong byte.
    A read or write error (the adapter unplugged, the pty's other end gone) breaks the
    connection for good. Nothing here raises into the event loop; the fd stays its
    owner's to close, after close().
    """

    def __init__(self, fd: int, framing: Framing, char_time_s: float, name: str = "?") -> None:
        self.fd = fd
        self.framing = framing
        self.char_time_s = char_time_s
        self.peer = name
        self.closed: str | None = None
        self.noise = 0  # bytes read that were no reply to anything
        self.last_activity = time.monotonic()
        self._buffer = bytearray()
        self._request: Request | None = None
        self._reply: asyncio.Future[Reply] | None = None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._readable)

    @property
    def usable(self) -> bool:
        return self.closed is None

    @property
    def received(self) -> int:
        """Bytes of the current reply received so far."""
        return len(self._buffer)

    def discard_input(self) -> None:
        """Read whatever is waiting now, as noise (the bus calls this just before sending)."""
        while self.closed is None and self._request is None and self._read_once():
            pass

    def send(self, request: Request, frame: bytes) -> asyncio.Future[Reply]:
        """Write `frame` (the encoded `request`); the future is its checked reply.

        The future fails with FrameError (a wrong reply) or ConnectionClosed.
        """
        if self._request is not None:
            raise RuntimeError("a request is already in flight on this line")
        if self.closed is not None:
            raise ConnectionClosed(self.closed)
        reply: asyncio.Future[Reply] = self._loop.create_future()
        self._buffer.clear()
        self._request, self._reply = request, reply
        try:
            written = os.write(self.fd, frame)  # 8 bytes: the driver's buffer takes them at once
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._break(f"the serial device failed ({exc.strerror or exc})")
            return reply
        if written != len(frame):
            self._break(f"the serial port took {written} of the request's {len(frame)} bytes (output blocked)")
            return reply
        self.last_activity = time.monotonic() + len(frame) * self.char_time_s  # when its last bit leaves
        return reply

    def abandon(self) -> None:
        """Forget the request in flight (timed out or cancelled): what comes for it now is noise."""
        self._buffer.clear()
        self._request = self._reply = None

    def close(self, reason: str) -> None:
        """Stop reading the fd; a request in flight fails with `reason`."""
        self._break(reason)

    # inside

    def _readable(self) -> None:
        try:
            self._read_once()
        except Exception as exc:  # pragma: no cover - a bug here fails the read, not the event loop
            self._fail(FrameError(f"internal error reading the reply ({type(exc).__name__}: {exc})"))

    def _read_once(self) -> bool:
        """Read what is there; False when nothing was."""
        if self.closed is not None:
            return False
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._break(f"the serial device failed ({exc.strerror or exc})")
            return False
        if not data:
            self._break("the serial device hung up (end of file)")
            return False
        self.last_activity = time.monotonic()
        self._take(data)
        return True

    def _take(self, data: bytes) -> None:
        request = self._request
        if request is None:
            self.noise += len(data)
            log.debug("%s: %d byte(s) with no request in flight thrown away (%d so far)",
                      self.peer, len(data), self.noise)
            return
        try:
            reply = assemble(self.framing, self._buffer, data, request)
        except FrameError as exc:
            self._fail(exc)
            return
        if reply is None:
            return  # wait for the rest
        future = self._reply
        self.abandon()
        if future is not None and not future.done():
            future.set_result(reply)

    def _fail(self, error: Exception) -> None:
        """The request in flight fails; the line stays open, and what follows on it is noise."""
        future = self._reply
        self.abandon()
        if future is not None and not future.done():
            log.debug("%s: reply refused: %s", self.peer, error)
            future.set_exception(error)

    def _break(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
            self._loop.remove_reader(self.fd)
            log.debug("%s: %s", self.peer, reason)
        self._fail(ConnectionClosed(reason))
