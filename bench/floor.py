"""The bare-pymodbus floor: the poller's planned requests and nothing else.

    python -m bench.floor --rounds 5      (POSTGRES_* in the environment)

One bare-pymodbus AsyncModbusTcpClient per gateway, all gateways in parallel,
each sending the requests `poller.plan.plan_device` gives for its meters, one at
a time: no decoding, no line protocol, no writing. The framing is the meters'
transport: Modbus TCP for 'tcp', pymodbus's RTU framer (FramerType.RTU) for
'rtuovertcp'. Connections are opened before the clock starts. Prints one JSON
line: the wall time of each round and the CPU time (user + system) of this
process per round and per reading.

    python -m bench.floor --paced-s 1 --rounds 30

The same rounds beside a running poller that polls every that many seconds: each as late in a
slot of its schedule as it fits (`paced_start`), in the gaps between the poller's cycles
(bench/run.py starts it with each poller run and keeps the rounds of the measured cycles).

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
# beside a poller (--paced-s): a round starts as late in a slot as it fits, but not before this far
# into it, after the poller's cycle and its writes (0.15 and 0.5 s into a 1 s slot on the reference fleet)
PACED_AT = 0.6
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


def slot_bounds(now: float, every_s: float) -> tuple[float, float]:
    """The poller's schedule slot (a POLL_CRON every `every_s` seconds: second 0 of each minute,
    then every `every_s` within it) that `now` is in: its start and the next slot's start."""
    minute = now - now % 60
    k = int((now - minute) // every_s)
    start = minute + k * every_s
    return start, min(start + every_s, minute + 60)


def paced_start(now: float, every_s: float, wall_s: float) -> float:
    """When to start a round of about `wall_s` beside the poller: as late in a slot as it fits with
    a margin (the poller's cycle and its writes come at the slot's start), at the earliest
    PACED_AT of the way in; the first such instant not before `now`."""
    slot, end = slot_bounds(now, every_s)
    while True:
        start = max(slot + PACED_AT * (end - slot), end - 1.3 * wall_s - 0.02)
        if start >= now:
            return start
        slot, end = slot_bounds(end + 1e-6, every_s)


async def timed_rounds(rounds: int, gateway: Callable[[Endpoint], Awaitable[None]],
                       by_endpoint: dict[Endpoint, list[tuple[int, ReadBlock]]], readings: int,
                       paced_s: float = 0.0) -> dict[str, object]:
    """A warm-up round (first requests, lazy imports), then `rounds` timed ones: every gateway in parallel.

    `paced_s`: the rounds go beside a poller polling every `paced_s` seconds (`paced_start`), in the
    gaps between its cycles, so both are measured on the machine as it was then; each round's start
    (wall clock) is reported, and the rounds that ran into the next slot (`late_rounds`)."""
    wall_guess = paced_s  # the warm-up round at PACED_AT of its slot: its length is not known yet

    async def one_round() -> tuple[float, float, float]:
        if paced_s > 0:
            now = time.time()
            await asyncio.sleep(paced_start(now, paced_s, wall_guess) - now)
        at = time.time()
        cpu0 = cpu_s()
        started = time.perf_counter()
        await asyncio.gather(*(gateway(ep) for ep in by_endpoint))
        return at, time.perf_counter() - started, cpu_s() - cpu0

    _, wall_guess, _ = await one_round()
    starts, walls, cpus = [], [], []
    late = 0
    for _ in range(rounds):
        at, wall, cpu_round = await one_round()
        starts.append(at)
        walls.append(wall)
        cpus.append(cpu_round)
        wall_guess = max(walls[-5:])
        late += paced_s > 0 and at + wall > slot_bounds(at, paced_s)[1]
    cpu = sum(cpus) / rounds
    return {
        "rounds": rounds,
        "paced_s": paced_s,
        "requests_per_round": sum(len(v) for v in by_endpoint.values()),
        "readings_per_round": readings,
        "wall_s": statistics.median(walls),
        "wall_min_s": min(walls),
        "cpu_s_per_round": cpu,
        "cpu_us_per_reading": cpu / readings * 1e6 if readings else 0.0,
        "round_starts": starts,
        "cpu_s_rounds": cpus,
        "late_rounds": late,
    }


async def run(rounds: int, paced_s: float = 0.0) -> dict[str, object]:
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

    result = await timed_rounds(rounds, gateway, by_endpoint, readings, paced_s)
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
    p.add_argument("--paced-s", type=float, default=0.0,
                   help="beside a poller polling every this many seconds: each round late in a slot of its schedule")
    a = p.parse_args(argv)
    if a.lean:
        print(json.dumps(event_loop.run(run_lean(a.rounds), "auto")), flush=True)
    else:
        print(json.dumps(asyncio.run(run(a.rounds, a.paced_s))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
