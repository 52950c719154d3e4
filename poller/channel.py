"""Messages between the main process and a worker (poller/workers.py), both ways, through the
event loop of each: pickled objects over the stream socket pair the pool makes.

    send(obj)  ->  [4-byte length][pickle]  ->  data_received -> on_message(obj), in order, whole

Sending never blocks: what the peer has not read yet waits in the transport's buffer (one
cycle's lines at most, as the main process asks for each cycle). multiprocessing's Connection
blocks both ways: a worker's event loop stood still, its buses' replies unread, while the
socket was full, and the main process's loop waited inside `recv_bytes` for the rest of a
message the worker was still writing (bench/README.md, "Worker processes").
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import pickle
import socket
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, cast

log = logging.getLogger("poller.workers")

_LENGTH = struct.Struct("!I")  # a message's pickle's length, before it
_PICKLE = pickle.HIGHEST_PROTOCOL


def frame(message: object, flat: bool = False) -> bytes:
    """One message as it travels. `flat`: the message holds no object twice and none inside itself
    (a batch of lines and results), so it is pickled without the memo that keeps shared objects
    shared: for a worker's batch of 3,000 lines, 0.13 ms instead of 1.0 ms (bench/README.md)."""
    if not flat:
        data = pickle.dumps(message, _PICKLE)
        return _LENGTH.pack(len(data)) + data
    out = io.BytesIO()
    out.write(bytes(_LENGTH.size))
    pickler = pickle.Pickler(out, _PICKLE)
    pickler.fast = True  # no memo: an object met twice is written twice, one inside itself raises ValueError
    pickler.dump(message)
    with out.getbuffer() as view:
        _LENGTH.pack_into(view, 0, len(view) - _LENGTH.size)
    return out.getvalue()


def socket_of(conn: Connection) -> socket.socket:
    """The stream socket behind a multiprocessing Pipe(duplex=True) end, which is closed."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    conn.close()
    sock.setblocking(False)
    return sock


class Channel(asyncio.Protocol):
    """One end. `on_message(obj)` for each message received (an exception it raises is logged,
    the next message still comes); `on_closed()` once, when the peer closed its end or went
    (EOF, a reset) or `close()` was called."""

    def __init__(self, name: str, on_message: Callable[[Any], None], on_closed: Callable[[], None]) -> None:
        self.name = name
        self._on_message = on_message
        self._on_closed = on_closed
        self._sock: socket.socket | None = None
        self._transport: asyncio.Transport | None = None
        self._early: list[bytes] = []  # sent before the transport was made
        self._received = bytearray()
        self._done: asyncio.Future[None] | None = None
        self._opening: asyncio.Task[Any] | None = None
        self.closed = False

    def open(self, sock: socket.socket) -> None:
        """Start on `sock` in the running event loop; messages sent until then wait."""
        loop = asyncio.get_running_loop()
        self._sock = sock
        self._done = loop.create_future()
        self._opening = loop.create_task(loop.connect_accepted_socket(lambda: self, sock))
        self._opening.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():  # closed at once while it was being opened
            self.connection_lost(None)
        elif (exc := task.exception()) is not None:  # not seen in practice: a socket pair
            log.error("%s: the channel could not be opened: %s", self.name, exc)
            self.connection_lost(None)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = self._transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport
        if self._early:
            stream.writelines(self._early)
            self._early = []
        if self.closed:  # closed while it was being opened: what was sent goes out first
            stream.close()

    def data_received(self, data: bytes) -> None:
        received = self._received
        received += data
        start = 0
        try:
            while len(received) - start >= _LENGTH.size:
                end = start + _LENGTH.size + _LENGTH.unpack_from(received, start)[0]
                if len(received) < end:
                    break
                body = received[start + _LENGTH.size:end]
                start = end
                try:
                    message = pickle.loads(body)
                    self._on_message(message)
                except Exception:  # a bug: said, and the next message is still read
                    log.exception("%s: handling a message failed", self.name)
        finally:
            del received[:start]

    def eof_received(self) -> bool:
        return False  # the transport closes: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._early = []
        if self._done is not None and not self._done.done():  # once
            self._done.set_result(None)
            self._on_closed()

    # the owner's

    def send(self, message: object, flat: bool = False) -> None:
        """Queue `message` (pickled now, `flat` as `frame` says); dropped once the channel is closed."""
        if self.closed:
            return
        data = frame(message, flat)
        if self._transport is None:
            self._early.append(data)
        else:
            self._transport.write(data)

    def close(self, now: bool = False) -> None:
        """Close this end: what was sent is written first, then the peer sees EOF. `now`: the peer
        sees EOF at once, even when this event loop does not run again (a blocking stop, atexit);
        what was not written yet is dropped."""
        if self.closed:
            return
        self.closed = True
        if now and self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        if self._transport is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed already (atexit)
                if now:
                    self._transport.abort()
                else:
                    self._transport.close()
        elif self._opening is not None and now:
            self._opening.cancel()
            if self._sock is not None:
                self._sock.close()

    async def wait_closed(self) -> None:
        """Until the transport is gone: what was sent has been written (or the peer went)."""
        if self._done is not None:
            await asyncio.shield(self._done)
