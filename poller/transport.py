"""How requests reach a bus: one client per bus kind, made here and nowhere else.

The cycle asks `open_bus(address)` for the client of a BusAddress and then only calls

    words = await bus.read(block, unit, timeout, pause=..., connect_pause=..., fence=...)
    bus.close()

A bus connects at its first read, and again at the first read after close() or after
anything that made its connection untrustworthy. Every bus:
- carries one request at a time (its own lock), whatever its callers do;
- keeps `pause` between the end of one request and the start of the next, and
  `connect_pause` between (re)connecting (opening the port, for serial) and the first
  request on that connection (Huawei dongles drop requests sent sooner);
- sends a request only when its whole reply window ends before `fence()`, read just
  before the bytes go out (the monotonic time this instance's lease on the bus ends,
  poller/lease.py); otherwise it raises NotOwner and sends nothing;
- raises nothing but a ModbusError (or CancelledError), whose message names the bus as
  str(address); logs nothing above DEBUG per request; may be closed any number of times.

The kinds:
- tcp: MBAP over a TCP stream. A byte stream cannot get back into step once a byte
  that is not the reply has come, so after a timeout, a wrong reply or a cancelled
  read the connection is dropped and the next read connects anew.
- rtuovertcp: the same with RTU frames (transparent serial servers). An RTU reply names
  no request (no transaction id), so after a wrong reply or a cancelled read nothing
  more is sent until that request's own timeout is over: the reply the device may
  still be sending, which some gateways hand to the next connection, then finds no
  request it could pass for.
- udp: MBAP in datagrams. A datagram is a whole reply or none, and a late or repeated
  reply carries the transaction id of its own request, so those are ignored (and
  counted) and the socket is kept; a datagram with the right id and a wrong body is a
  BadReply. An ICMP "port unreachable" is a ConnectError.
- serial: RTU on a local serial device. Frames are told apart by silence: a request is
  sent only after the line has been quiet for 3.5 characters (line.silence_s) since the
  last byte seen or sent. The port stays open after a failure: whatever still arrives
  is read and thrown away, and, as for rtuovertcp, nothing is sent until the failed
  request's timeout is over and the line is quiet, so noise and the tail of a garbled
  frame are never taken as a reply. The timeout counts the device's silence: the
  frames' own time on the wire, long at low baud rates, is added to it. A dead unit
  costs its bus one timeout and nothing else.
  What RTU cannot tell apart: a reply that comes after its own timeout is over, during
  the next request to the same unit for as many registers with the same function code.
  The window, the quiet wait and the unit, function code, byte count and CRC checks are
  the defence there is.

Serial I/O: pyserial opens the port and sets the line (baud rate, parity, stop and data
bits) with an exclusive lock, so a second program on the same port is refused when it
opens, not heard later as noise; the event loop then reads the port's file descriptor
itself (loop.add_reader). Not pyserial-asyncio(-fast): its transport buffers writes and
tells neither when the last byte of a request left nor lets waiting input be read and
discarded just before a request, which is what the inter-frame silence needs; and a read
request is 8 bytes, which one non-blocking write hands to the driver whole, so a write
buffer would have nothing to do. POSIX only, as the service is (its image is Linux).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import termios
import time
from collections.abc import Callable
from typing import Protocol

import serial

from .modbus import (
    MBAP,
    RTU,
    BadReply,
    BadRequest,
    ConnectError,
    ConnectionClosed,
    DatagramConnection,
    ExceptionReply,
    FrameError,
    Framing,
    NotOwner,
    Reply,
    Request,
    ResponseTimeout,
    SerialConnection,
    StreamConnection,
)
from .model import BusAddress, ReadBlock, SerialLine, Transport

__all__ = ["Bus", "SerialBus", "TcpBus", "UdpBus", "open_bus"]


class Bus(Protocol):
    """One bus: one connection, one request at a time (the implementation's lock)."""

    async def read(self, block: ReadBlock, unit: int, timeout: float, pause: float = 0.0,
                   connect_pause: float = 0.0, fence: Callable[[], float] | None = None) -> list[int]: ...

    def close(self) -> None: ...


def open_bus(address: BusAddress, connect_timeout: float = 3.0) -> Bus:
    """The client for `address`'s kind; it connects at its first read."""
    if address.transport in (Transport.TCP, Transport.RTU_OVER_TCP):
        return TcpBus(address, connect_timeout)
    if address.transport is Transport.UDP:
        return UdpBus(address, connect_timeout)
    if address.transport is Transport.SERIAL:
        return SerialBus(address)
    raise ValueError(f"{address}: unknown transport {address.transport!r}")  # pragma: no cover - an enum


class _Link(Protocol):
    """What a bus needs of a connection (modbus.StreamConnection, DatagramConnection, SerialConnection)."""

    @property
    def usable(self) -> bool: ...

    @property
    def received(self) -> int: ...

    def send(self, request: Request, frame: bytes) -> asyncio.Future[Reply]: ...


class _Bus:
    """What every kind shares: the lock, the pauses, transaction ids, and the errors of a read."""

    framing: Framing = MBAP
    _connection: _Link | None = None  # each kind's own connection; usable or not
    _waits_before_send = False  # whether the kind has a `_before_send` (serial): no coroutine a request else

    def __init__(self, address: BusAddress, connect_timeout: float = 3.0) -> None:
        self.address = address
        self.connect_timeout = connect_timeout
        self._lock = asyncio.Lock()  # one request in flight, whatever the callers do
        self._last_end = 0.0  # monotonic time the last request ended
        self._connected_at = 0.0  # monotonic time the current connection was made
        self._window_end = 0.0  # monotonic time the request in flight times out
        self._reserved_until = 0.0  # no request before this: a failed request's reply may still come
        self._transaction = 0  # last transaction id sent; ids run 1..65535, never 0
        # The reply windows' timer (`_expire`): one timer serves the bus's requests one after the
        # other. It stays armed when a request ends, and when it fires for an earlier request it
        # is armed again for the one in flight then (if any): one timer every reply window or so,
        # not one a request (a timer made and cancelled a request cost about 3 us more a request,
        # measured in place with bench.fleet).
        self._in_flight: asyncio.Future[Reply] | None = None  # the reply awaited; its window ends at _window_end
        self._looked = False  # its window is over and the sockets get their one look (EXPIRY_GRACE_S)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # the monotonic time the timer is due
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def __str__(self) -> str:
        return str(self.address)

    async def read(self, block: ReadBlock, unit: int, timeout: float, pause: float = 0.0,
                   connect_pause: float = 0.0, fence: Callable[[], float] | None = None) -> list[int]:
        """Read one block from one unit id; the words, exactly `block.count` of them.

        `pause`: the least time between the end of one request on this bus and the
        start of the next. `connect_pause`: the least time between (re)connecting and
        a request. `fence`: the monotonic time the right to use this bus ends (None: no
        end); a request whose reply window would outlast it is not sent (NotOwner).
        Raises a ModbusError (or CancelledError), nothing else.
        """
        lock = self._lock
        await lock.acquire()  # `async with` does the same, with two more coroutines a request
        try:
            if pause:
                await _sleep_until(self._last_end + pause)
            try:
                return await self._read(block, unit, timeout, connect_pause, fence)
            finally:
                self._last_end = time.monotonic()
        finally:
            lock.release()

    def close(self) -> None:
        raise NotImplementedError

    # what a kind provides

    async def _connect(self, timeout: float) -> _Link:
        """A usable connection: the one there is, or a new one (then `_connected_at` is now)."""
        raise NotImplementedError

    async def _before_send(self, link: _Link, request: Request, block: ReadBlock, timeout: float) -> None:
        """Anything to wait for between having a connection and sending (serial: the quiet line)."""

    def _wire_time(self, request: Request) -> float:
        """Time the request and its reply spend on the wire, added to the timeout."""
        return 0.0

    def _drop(self) -> None:
        """The request in flight failed or was cancelled: never take its reply for another's."""
        self.close()

    # shared

    def _next_transaction(self) -> int:
        self._transaction = self._transaction % 0xFFFF + 1
        return self._transaction

    def _give_up(self, reserve: bool = True) -> None:
        if reserve and not self.framing.transaction_ids:
            # RTU: a reply names no request, so the failed one's reply, still on its way (the
            # device answering behind noise, or a cancelled read's), could pass for the next
            # one's. Nothing is sent until the failed request's own timeout is over. (Not after
            # the connection or port broke: no reply comes through a line that is gone.)
            self._reserved_until = max(self._reserved_until, self._window_end)
        self._drop()

    async def _read(self, block: ReadBlock, unit: int, timeout: float, connect_pause: float,
                    fence: Callable[[], float] | None) -> list[int]:
        request = Request(self._next_transaction(), unit, int(block.function_code), block.address, block.count)
        try:
            frame = self.framing.encode(request)
        except ValueError as exc:
            raise BadRequest(f"{self} unit {unit}, {block}: not sent: {exc}") from None
        self._window_end = 0.0  # nothing in flight yet: a failure before sending reserves nothing
        if self._reserved_until > time.monotonic():  # a failed RTU request's window (no coroutine a request)
            await _sleep_until(self._reserved_until)
        link = self._connection
        if link is None or not link.usable:  # (one usable is taken as it is: no coroutine a request)
            link = await self._connect(timeout)
        try:
            if connect_pause:
                await _sleep_until(self._connected_at + connect_pause)
            if self._waits_before_send:
                await self._before_send(link, request, block, timeout)
            window = timeout + self._wire_time(request)
            now = time.monotonic()
            # Fencing: checked here, after every wait, with nothing that yields between this check and
            # the write inside link.send(). A request goes out only if its reply would be in before the
            # lease ends; the lease in PostgreSQL ends later still (poller/lease.py).
            if fence is not None and now + window > fence():
                raise NotOwner(f"{self}: not sent to unit {unit}: this instance's lease on the bus ends "
                               f"before the reply window would")
            self._window_end = now + window
            pending = link.send(request, frame)
            if fence is not None and time.monotonic() + window > fence():
                # the process was paused (SIGSTOP, a VM freeze) in the microseconds between the check
                # and the write, past its lease: the request went out late, and nothing can call it
                # back; its reply must not become a reading, and nothing more goes out (lease.py)
                pending.cancel()
                self._give_up()
                raise NotOwner(f"{self}: a request to unit {unit} went out after this instance's lease "
                               "ended (the process was paused as it sent it); its reply is discarded", sent=True)
            # the reply window's end by the bus's own timer, not asyncio.timeout (twice the cost)
            # nor a timer a request (`_expire`)
            self._in_flight, self._looked = pending, False
            loop = pending.get_loop()
            if self._timer is None or self._timer_at > self._window_end or self._timer_loop is not loop:
                self._arm(loop, window, self._window_end)
            try:
                reply = await pending
            finally:
                self._in_flight = None
        except TimeoutError:
            received = link.received
            self._give_up()
            if received:
                raise ResponseTimeout(f"no complete reply from {self} unit {unit} to {block} within {timeout:g} s "
                                      f"({received} byte(s) arrived)") from None
            raise ResponseTimeout(f"no reply from {self} unit {unit} to {block} within {timeout:g} s") from None
        except (FrameError, ConnectionClosed) as exc:
            self._give_up(reserve=isinstance(exc, FrameError))
            raise BadReply(f"{self} unit {unit}, {block}: {exc}") from None
        except NotOwner:
            raise  # not sent: the connection is as good as it was (sent late: given up above)
        except OSError as exc:  # an ICMP error on a datagram socket
            self._give_up()
            raise ConnectError(f"cannot connect to {self}: {_unreachable(exc)}") from None
        except BaseException:
            self._give_up()  # cancelled: a reply still on its way must not be taken as the next one's
            raise
        if reply.exception is not None:
            raise ExceptionReply(reply.exception, block, unit)
        return list(reply.words)

    def _arm(self, loop: asyncio.AbstractEventLoop, delay: float, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at, self._timer_loop = loop.call_later(delay, self._expire), due, loop

    def _expire(self) -> None:
        """The bus's timer: the reply window of the request in flight ends at `_window_end`
        (time.monotonic()); then, once the sockets have had their look (EXPIRY_GRACE_S later), its
        read fails with TimeoutError. A timer that is early (armed for an earlier request, or
        uvloop's, by a millisecond) waits out the rest first; with nothing in flight it is not armed
        again (the next request arms it)."""
        self._timer = None
        reply = self._in_flight
        if reply is None or reply.done():
            return
        loop = reply.get_loop()
        left = self._window_end - time.monotonic()
        if left > 0:  # early: the rest of the window first
            self._arm(loop, left, self._window_end)
        elif not self._looked:
            self._looked = True
            self._arm(loop, EXPIRY_GRACE_S, time.monotonic() + EXPIRY_GRACE_S)
        else:
            reply.set_exception(TimeoutError())

    def _connect_error(self, exc: BaseException, limit: float) -> ConnectError:
        """The ConnectError for what creating a socket to host:port raised."""
        if isinstance(exc, TimeoutError):
            return ConnectError(f"cannot connect to {self}: no answer within {limit:g} s")
        if isinstance(exc, socket.gaierror):
            return ConnectError(f"cannot connect to {self}: name not resolved ({exc.strerror})")
        if isinstance(exc, UnicodeError):  # the idna codec: '192.168..10', '.meter', a label over 63 characters
            return ConnectError(f"cannot connect to {self}: not a valid host name ({exc})")
        if isinstance(exc, ConnectionRefusedError):
            return ConnectError(f"cannot connect to {self}: connection refused")
        if isinstance(exc, OSError):
            return ConnectError(f"cannot connect to {self}: {exc.strerror or exc}")
        # e.g. OverflowError for a port outside 0..65535
        return ConnectError(f"cannot connect to {self}: {type(exc).__name__}: {exc}")


async def _sleep_until(deadline: float) -> None:
    """Until time.monotonic() reaches `deadline`, never before: uvloop's timers may fire a
    millisecond early (libuv keeps milliseconds and the time a loop turn began), and a pause, a
    connect pause or the wait for a failed request's reply window is a least time."""
    while (wait := deadline - time.monotonic()) > 0:
        await asyncio.sleep(wait)


# A reply window's end is given this much more, so that the event loop looks at the sockets once
# before the read fails: uvloop (libuv) runs the timers that fell due before it polls, so after
# the loop was held up (a long callback, the process descheduled on a busy host) a reply that came
# in time would lose to its own timeout. (asyncio's loop polls first: there a timeout only ends
# a millisecond later.)
EXPIRY_GRACE_S = 0.001


def _unreachable(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "port unreachable (ICMP): nothing listens on that UDP port"
    return exc.strerror or str(exc)


class TcpBus(_Bus):
    """Modbus TCP (MBAP) or RTU over TCP to one host:port: a meter, or a gateway fronting many units."""

    def __init__(self, address: BusAddress, connect_timeout: float = 3.0) -> None:
        super().__init__(address, connect_timeout)
        self.framing = RTU if address.transport is Transport.RTU_OVER_TCP else MBAP
        self._connection: StreamConnection | None = None

    def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.close("connection closed by the poller")

    async def _connect(self, timeout: float) -> StreamConnection:
        if self._connection is not None and self._connection.usable:
            return self._connection
        self.close()
        limit = max(timeout, self.connect_timeout)
        connection = StreamConnection(self.framing)
        try:
            async with asyncio.timeout(limit):
                await asyncio.get_running_loop().create_connection(lambda: connection, self.address.host,
                                                                   self.address.port)
        except Exception as exc:
            raise self._connect_error(exc, limit) from None
        self._connection = connection
        self._connected_at = time.monotonic()
        return connection


class UdpBus(_Bus):
    """Modbus UDP to one host:port: MBAP, one request and one reply per datagram."""

    def __init__(self, address: BusAddress, connect_timeout: float = 3.0) -> None:
        super().__init__(address, connect_timeout)
        self._connection: DatagramConnection | None = None

    @property
    def ignored(self) -> int:
        """Datagrams ignored on the current socket: late, repeated or stray replies."""
        return self._connection.ignored if self._connection is not None else 0

    def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.close("socket closed by the poller")

    async def _connect(self, timeout: float) -> DatagramConnection:
        if self._connection is not None and self._connection.usable:
            return self._connection
        self.close()
        limit = max(timeout, self.connect_timeout)  # name resolution, if the host is a name
        connection = DatagramConnection(self.framing)
        try:
            async with asyncio.timeout(limit):
                await asyncio.get_running_loop().create_datagram_endpoint(
                    lambda: connection, remote_addr=(self.address.host, self.address.port))
        except Exception as exc:
            raise self._connect_error(exc, limit) from None
        self._connection = connection
        self._connected_at = time.monotonic()
        return connection

    def _drop(self) -> None:
        # A late reply carries its own transaction id and will be ignored: keep the socket.
        if self._connection is not None:
            self._connection.abandon()
            if not self._connection.usable:
                self.close()


class SerialBus(_Bus):
    """Modbus RTU on a local serial device (address.host is its path, address.line its settings)."""

    framing = RTU
    _waits_before_send = True

    def __init__(self, address: BusAddress) -> None:
        super().__init__(address)
        self.line = address.line or SerialLine()
        self._port: serial.Serial | None = None
        self._connection: SerialConnection | None = None

    @property
    def noise(self) -> int:
        """Bytes thrown away on the current port: noise, late replies, the rest of garbled frames."""
        return self._connection.noise if self._connection is not None else 0

    def close(self) -> None:
        connection, port, self._connection, self._port = self._connection, self._port, None, None
        if connection is not None:
            connection.close("port closed by the poller")  # stops reading the fd before it is closed
        if port is not None:
            port.close()

    async def _connect(self, timeout: float) -> SerialConnection:
        if self._connection is not None and self._connection.usable:
            return self._connection
        self.close()
        path, line = self.address.host, self.line
        try:
            port = serial.Serial(path, baudrate=line.baudrate, bytesize=line.bytesize, parity=line.parity,
                                 stopbits=line.stopbits, timeout=0, write_timeout=0, exclusive=True)
        except Exception as exc:
            raise ConnectError(f"cannot connect to {self}: {_port_problem(path, exc)}") from None
        try:
            fd = port.fileno()
            os.set_blocking(fd, False)  # pyserial opens it so and leaves it so; the loop must never block on it
            # VMIN 1 (pyserial sets 0): an empty read then fails with EAGAIN, so a read of 0 bytes
            # means the device hung up (an adapter unplugged), not "nothing yet".
            attrs = termios.tcgetattr(fd)
            attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
            self._connection = SerialConnection(fd, self.framing, line.char_time_s, str(self))
        except Exception as exc:
            port.close()
            raise ConnectError(f"cannot connect to {self}: {type(exc).__name__}: {exc}") from None
        self._port = port
        self._connected_at = time.monotonic()
        return self._connection

    def _wire_time(self, request: Request) -> float:
        return (8 + 5 + 2 * request.count) * self.line.char_time_s  # the request, and the longest reply

    async def _before_send(self, link: _Link, request: Request, block: ReadBlock, timeout: float) -> None:
        """Wait until the line has been quiet for the inter-frame silence; at most `timeout`."""
        assert isinstance(link, SerialConnection)
        silence = self.line.silence_s
        deadline = time.monotonic() + timeout
        while True:
            link.discard_input()  # noise: read now, so that it counts as activity and never as a reply
            now = time.monotonic()
            quiet = now - link.last_activity
            if quiet >= silence or not link.usable:
                return
            if now >= deadline:
                raise ResponseTimeout(f"{self} never fell quiet for {silence * 1000:g} ms within {timeout:g} s "
                                      f"to ask unit {request.unit} for {block} (noise on the line, or another "
                                      "master talking)")
            await asyncio.sleep(min(silence - quiet, deadline - now))

    def _drop(self) -> None:
        # Keep the port: what still arrives for the failed request is read as noise, and the
        # next request waits for the line to be quiet. A broken port is closed (reopened next read).
        if self._connection is not None:
            self._connection.abandon()
            if not self._connection.usable:
                self.close()


_PORT_ERRORS = {
    errno.ENOENT: "no such device (is the adapter plugged in, the path right, and the device passed into the "
                  "container?)",
    errno.EACCES: "permission denied (the poller's user needs the device's group, usually dialout)",
    errno.EPERM: "permission denied (the poller's user needs the device's group, usually dialout)",
    errno.EAGAIN: "in use: another program holds it with an exclusive lock",
    errno.EBUSY: "device busy",
    errno.ENOTTY: "not a serial device",
    errno.ENXIO: "no such device (the adapter is gone)",
    errno.ENODEV: "no such device (the adapter is gone)",
}


def _port_problem(path: str, exc: BaseException) -> str:
    """Why `path` could not be opened as a serial port, from what pyserial raised."""
    code = getattr(exc, "errno", None)
    cause = exc.__context__
    if code is None and isinstance(cause, termios.error) and cause.args and isinstance(cause.args[0], int):
        code = cause.args[0]  # "Could not configure port: (25, 'Inappropriate ioctl for device')"
    if code is None and isinstance(cause, OSError):
        code = cause.errno
    if code in _PORT_ERRORS:
        return f"{path}: {_PORT_ERRORS[code]}"
    if isinstance(exc, serial.SerialException | OSError | ValueError):
        return f"{path}: {exc}"
    return f"{path}: {type(exc).__name__}: {exc}"
