"""The bare-pymodbus floor: the poller's planned requests and nothing else.

    python -m bench.floor --rounds 5      (POSTGRES_* in the environment)

One bare-pymodbus AsyncModbusTcpClient per gateway, all gateways in parallel,
each sending the requests `poller.plan.plan_device` gives for its meters, one at
a time: no decoding, no line protocol, no writing. The framing is the meters'
transport: Modbus TCP for 'tcp', pymodbus's RTU framer (FramerType.RTU) for
'rtuovertcp'. Connections are opened before the clock starts. Prints one JSON
line: the wall time of each round and the CPU time (user + system) of this
process per round and per reading.

    python -m bench.floor --lean --rounds 5

The lean client: the same requests, encoded before the clock starts, written to a bare
asyncio protocol per gateway on the fastest event loop here (uvloop where installed), each
reply taken when its bytes are in (no check, no decoding). Nothing sends these requests with
less work, so its wall time is what the fleet, on this machine, allows any client: the
measured counterpart of the network bound, which assumes a fleet that answers in exactly its
latency however many requests arrive at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.framer import FramerType

from poller import loop as event_loop
from poller.modbus import MBAP, RTU, Request
from poller.model import FunctionCode, ReadBlock, Transport
from poller.plan import plan_device
from poller.settings import from_env
from poller.store import load_configuration

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

# pymodbus's framing for each transport the bench serves (bench.fleet --framer)
FRAMERS = {Transport.TCP: FramerType.SOCKET, Transport.RTU_OVER_TCP: FramerType.RTU}
Endpoint = tuple[str, int, Transport]  # host, port, transport


def client_for(host: str, port: int, transport: Transport) -> AsyncModbusTcpClient:
    """A bare-pymodbus client to host:port with the framing of `transport` (tcp or rtuovertcp)."""
    if transport not in FRAMERS:
        raise SystemExit(f"{host}:{port}: the bench serves tcp and rtuovertcp only, not {transport.value}")
    return AsyncModbusTcpClient(host, port=port, framer=FRAMERS[transport], timeout=3, retries=0)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def planned_requests() -> tuple[dict[Endpoint, list[tuple[int, ReadBlock]]], int]:
    """{(host, port, transport): [(unit, block), ...]} in the poller's order, and readings per round."""
    import psycopg2

    settings = from_env()
    conn = psycopg2.connect(**settings.postgres_dsn())
    try:
        config = load_configuration(conn)
    finally:
        conn.close()
    by_endpoint: dict[Endpoint, list[tuple[int, ReadBlock]]] = {}
    readings = 0
    for meter in config.meters:
        if not meter.enabled:
            continue
        dtype = meter.device_type
        endpoint = (meter.host, meter.port, meter.transport)
        for block in plan_device(dtype):
            by_endpoint.setdefault(endpoint, []).append((meter.slave_address, block))
            readings += len(block.registers)
    return by_endpoint, readings


async def timed_rounds(rounds: int, gateway: Callable[[Endpoint], Awaitable[None]],
                       by_endpoint: dict[Endpoint, list[tuple[int, ReadBlock]]], readings: int) -> dict[str, object]:
    """A warm-up round (first requests, lazy imports), then `rounds` timed ones: every gateway in parallel."""

    async def one_round() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(gateway(ep) for ep in by_endpoint))
        return time.perf_counter() - started

    await one_round()
    walls = []
    cpu0 = cpu_s()
    for _ in range(rounds):
        walls.append(await one_round())
    cpu = (cpu_s() - cpu0) / rounds
    return {
        "rounds": rounds,
        "requests_per_round": sum(len(v) for v in by_endpoint.values()),
        "readings_per_round": readings,
        "wall_s": statistics.median(walls),
        "wall_min_s": min(walls),
        "cpu_s_per_round": cpu,
        "cpu_us_per_reading": cpu / readings * 1e6 if readings else 0.0,
    }


async def run(rounds: int) -> dict[str, object]:
    by_endpoint, readings = planned_requests()
    clients = {ep: client_for(*ep) for ep in by_endpoint}
    await asyncio.gather(*(c.connect() for c in clients.values()))

    async def gateway(ep: Endpoint) -> None:
        client = clients[ep]
        for unit, block in by_endpoint[ep]:
            if block.function_code is FunctionCode.READ_INPUT_REGISTERS:
                reply = await client.read_input_registers(block.address, count=block.count, device_id=unit)
            else:
                reply = await client.read_holding_registers(block.address, count=block.count, device_id=unit)
            if reply.isError():
                raise RuntimeError(f"{ep} unit {unit} {block}: {reply}")

    result = await timed_rounds(rounds, gateway, by_endpoint, readings)
    for c in clients.values():
        c.close()
    return {**result, "transports": sorted({ep[2].value for ep in by_endpoint})}


class _Lean(asyncio.Protocol):
    """One gateway's connection: a reply is done when `size` bytes are in."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.size = 0
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= self.size and self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def ask(self, frame: bytes, size: int) -> None:
        assert self.transport is not None
        self.received, self.size = 0, size
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(frame)
        await self.done


async def run_lean(rounds: int) -> dict[str, object]:
    by_endpoint, readings = planned_requests()
    frames: dict[Endpoint, list[tuple[bytes, int]]] = {}
    for ep, requests in by_endpoint.items():
        framing = RTU if ep[2] is Transport.RTU_OVER_TCP else MBAP
        header = 3 + 2 if framing is RTU else 7 + 2  # unit/fc/count + CRC, or MBAP + fc/count
        frames[ep] = [(framing.encode(Request(i % 0xFFFF + 1, unit, int(block.function_code), block.address,
                                              block.count)), header + 2 * block.count)
                      for i, (unit, block) in enumerate(requests)]
    loop = asyncio.get_running_loop()
    links = {}
    for ep in by_endpoint:
        _, links[ep] = await loop.create_connection(_Lean, ep[0], ep[1])

    async def gateway(ep: Endpoint) -> None:
        link = links[ep]
        for frame, size in frames[ep]:
            await link.ask(frame, size)

    result = await timed_rounds(rounds, gateway, by_endpoint, readings)
    for link in links.values():
        assert link.transport is not None
        link.transport.close()
    return {**result, "client": f"lean ({event_loop.describe('auto')})"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--lean", action="store_true", help="the lean client instead of bare pymodbus")
    a = p.parse_args(argv)
    if a.lean:
        print(json.dumps(event_loop.run(run_lean(a.rounds), "auto")), flush=True)
    else:
        print(json.dumps(asyncio.run(run(a.rounds))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
