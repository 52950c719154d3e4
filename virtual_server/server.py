"""A Modbus TCP server for simulated devices (functions 3 and 4 only).

Requests on one connection are answered one after the other, as a real
gateway does. The server counts what it receives (requests per function,
unit and block) and the most requests it ever had in flight at once, so tests
can check what a poller sent.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger("virtual_server")

ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE = 1, 2, 3
GATEWAY_TARGET_FAILED = 11

# {(function code, address): word} of one unit, read at the time of the request
Bank = Callable[[], Mapping[tuple[int, int], int]]


@dataclass
class Stats:
    requests: int = 0
    by_request: Counter[tuple[int, int, int, int]] = field(default_factory=Counter)  # (unit, fc, addr, count)
    in_flight: int = 0
    max_in_flight: int = 0
    connections: int = 0


class ModbusTcpServer:
    """Serves `units` ({unit id: bank}); `default` answers any other unit id.

    strict: addresses no register covers answer "illegal data address", as
    many devices do; otherwise they read as 0, as an Eastron meter does.
    refuse: (fc, address) pairs that always answer "illegal data address".
    """

    def __init__(
        self,
        units: Mapping[int, Bank],
        default: Bank | None = None,
        latency_s: float = 0.0,
        strict: bool = False,
        refuse: frozenset[tuple[int, int]] = frozenset(),
        log_requests: bool = False,
    ) -> None:
        self.units = dict(units)
        self.default = default
        self.latency_s = latency_s
        self.strict = strict
        self.refuse = refuse
        self.log_requests = log_requests
        self.stats = Stats()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # Close the connections rather than cancel their handlers: each
            # handler then sees the end of its stream and returns normally.
            for writer in list(self._writers):
                writer.close()
            if self._connections:
                await asyncio.wait(self._connections, timeout=5)
            await self._server.wait_closed()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._writers.add(writer)
        try:
            while True:
                header = await reader.readexactly(7)
                tid, pid, length, unit = struct.unpack(">HHHB", header)
                if pid != 0 or not 2 <= length <= 254:
                    return  # not Modbus TCP: drop the connection, as devices do
                pdu = await reader.readexactly(length - 1)
                reply = await self._answer(unit, pdu)
                writer.write(struct.pack(">HHHB", tid, 0, len(reply) + 1, unit) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, unit: int, pdu: bytes) -> bytes:
        self.stats.in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            return self._reply(unit, pdu)
        finally:
            self.stats.in_flight -= 1

    def _reply(self, unit: int, pdu: bytes) -> bytes:
        fc = pdu[0]
        if fc not in (3, 4) or len(pdu) != 5:
            return bytes([fc | 0x80, ILLEGAL_FUNCTION])
        address, count = struct.unpack(">HH", pdu[1:5])
        self.stats.requests += 1
        self.stats.by_request[(unit, fc, address, count)] += 1
        if self.log_requests:
            log.info("request unit=%d fc=%d address=%d count=%d", unit, fc, address, count)
        if not 1 <= count <= 125:
            return bytes([fc | 0x80, ILLEGAL_VALUE])
        if address + count > 65536:
            return bytes([fc | 0x80, ILLEGAL_ADDRESS])
        bank_of = self.units.get(unit, self.default)
        if bank_of is None:
            return bytes([fc | 0x80, GATEWAY_TARGET_FAILED])
        bank = bank_of()
        words = []
        for a in range(address, address + count):
            if (fc, a) in self.refuse:
                return bytes([fc | 0x80, ILLEGAL_ADDRESS])
            word = bank.get((fc, a))
            if word is None:
                # served on both tables: a value mapped on the other one
                word = bank.get((7 - fc, a))
            if word is None:
                if self.strict:
                    return bytes([fc | 0x80, ILLEGAL_ADDRESS])
                word = 0
            words.append(word)
        return struct.pack(f">BB{count}H", fc, 2 * count, *words)
