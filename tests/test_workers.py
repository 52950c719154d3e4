"""Worker processes (POLL_WORKERS, poller/workers.py): the buses sharded over processes, one
service to the operator.

The shard assignment and the report merge are pure; the rest runs real processes: the pool's
spawned workers against real Modbus sockets, and `python -m poller` with PostgreSQL and
VictoriaMetrics, whose workers are killed, signalled and orphaned on purpose.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pickle
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.channel import Channel, frame
from poller.counters import CounterGuard
from poller.cycle import CycleReport, MeterResult, Poller
from poller.lease import SharedFences, bus_key
from poller.modbus import ResponseTimeout
from poller.model import BusAddress, DataType, DeviceType, FunctionCode, Meter, Register, Transport
from poller.workers import (
    Shards,
    WorkerError,
    WorkerLost,
    WorkerPool,
    _Pending,
    bus_weights,
    counted_report,
    counter_files,
    counter_guard,
    decode_result,
    describe_exit,
    encode_result,
    failed_part,
    merge_reports,
    report_counts,
    retire_counter_files,
)
from tests.servers import ModbusServerThread, free_port, start_module, stop_process
from tests.test_faults import seed_registers
from virtual_server.device import make_device
from virtual_server.server import SimulatedServer

CYCLE = re.compile(r"cycle: meters ok=(\d+) failed=(\d+) backed_off=(\d+) readings=(\d+) ")
STARTED = re.compile(r"worker (\d+) started: pid (\d+)")
HOLDING = FunctionCode.READ_HOLDING_REGISTERS


def dtype(values: int = 2, name: str = "t", timeout_s: float = 1.0) -> DeviceType:
    registers = tuple(Register(i, name, 2 * i, f"m{i}", "V", DataType.FLOAT32, HOLDING) for i in range(values))
    return DeviceType(name, registers, timeout_s=timeout_s)


def meter(mid: int, host: str = "gw", port: int = 502, unit: int = 1, values: int = 2) -> Meter:
    return Meter(mid, host, port, unit, dtype(values))


# --------------------------------------------------------------------------- (d) pure parts


def test_each_bus_goes_to_the_least_loaded_worker_and_stays_there():
    shards = Shards(2)
    heavy, light = BusAddress(Transport.TCP, "heavy", 502).wire, BusAddress(Transport.TCP, "light", 502).wire
    others = [BusAddress(Transport.TCP, f"b{i}", 502).wire for i in range(4)]
    shards.update({light: 2, heavy: 10, **{b: 3 for b in others}})
    # the heaviest first, each to the least loaded: heavy (10) + light (2) against 4 x 3
    assert shards.load == [12, 12] and shards.of[heavy] == shards.of[light] != shards.of[others[0]]
    before = dict(shards.of)
    # loads change, buses come and go: no bus already placed ever moves
    shards.update({heavy: 1, others[0]: 50})
    assert {b: shards.of[b] for b in before} == before
    assert sum(shards.load) == 51 and shards.load[shards.of[others[0]]] >= 50
    new = BusAddress(Transport.UDP, "light", 502).wire
    shards.update({heavy: 1, others[0]: 50, new: 1})
    assert shards.of[new] != shards.of[others[0]]  # the least loaded
    shards.update({})  # everything gone ...
    assert shards.load == [0, 0]
    shards.update({light: 2})  # ... and back: where it was
    assert shards.of[light] == before[light] and shards.worker(light) == before[light]
    # a bus never seen (a meter due before the configuration reached the pool): placed at once, then fixed
    stray = BusAddress(Transport.TCP, "stray", 1502).wire
    assert shards.worker(stray) == shards.worker(stray) == shards.of[stray]


def test_buses_weigh_what_their_meters_read_and_spread_evenly():
    meters = [meter(i, f"gw{i % 6}", values=1 + i % 3) for i in range(60)]
    weights = bus_weights(meters)
    assert sum(weights.values()) == sum(len(m.device_type.registers) for m in meters)
    # a disabled meter is not polled: it weighs nothing (a bus of only disabled meters, not at all)
    idle = [dataclasses.replace(meter(100 + i, "idle", values=9), enabled=False) for i in range(3)]
    assert bus_weights(meters + idle) == weights
    shards = Shards(4)
    shards.update(weights)
    assert max(shards.load) - min(shards.load) <= max(weights.values())
    assert len(set(shards.of.values())) == 4


TEXTS = st.lists(st.text(max_size=8), max_size=3)


@given(st.builds(
    dict, readings=st.integers(0, 10**6), invalid=TEXTS, counter_rejects=TEXTS, requests=st.integers(0, 99),
    errors=st.integers(0, 99), error=st.none() | st.text(max_size=12), backed_off=st.booleans(),
    handed_off=st.booleans(), duration_s=st.floats(0, 1e6), time_ms=st.integers(0, 2**63)))
def test_a_meter_result_travels_whole(fields_):
    """Every field of a MeterResult reaches the main process as the worker had it (the lines went
    to the outbox before; the error as a WorkerError of the same kind and message)."""
    m = meter(1)
    error = None if fields_["error"] is None else ResponseTimeout(fields_["error"])
    sent = MeterResult(m, lines=["x"], **{**fields_, "error": error})
    received: list[tuple[Any, ...]] = []
    Channel("test", received.append, lambda: None).data_received(
        frame(("lines", [], [encode_result(sent, 1)]), flat=True))
    got = decode_result(received[0][2][0], {1: m})
    assert got.meter is m and got.lines == []
    assert {**vars(got), "meter": None, "lines": None, "error": None} == {**vars(sent), "meter": None, "lines": None,
                                                                         "error": None}
    if error is None:
        assert got.error is None
    else:
        assert isinstance(got.error, WorkerError) and (got.error.kind, str(got.error)) == ("timeout", str(error))


def test_a_result_heard_goes_to_the_cycle_it_was_polled_for():
    """Two cycles under way both poll meter 1: each result goes to the cycle the worker says, even
    the later cycle's first (the earlier cycle skipped the meter's busy bus, or the meter moved to a
    faster bus); a result of a cycle given up goes nowhere. A worker that dies then leaves each cycle
    with what it heard, the rest failed."""
    a, b = meter(1), meter(2, "gw2")
    loop = asyncio.new_event_loop()
    try:
        first = _Pending(loop.create_future(), {1: a, 2: b})
        second = _Pending(loop.create_future(), {1: a})
        handle = SimpleNamespace(pending={1: first, 2: second})
        failed = MeterResult(a, requests=1, errors=1, error=ResponseTimeout("x"))
        WorkerPool._heard(handle, encode_result(failed, 2))  # type: ignore[arg-type]
        WorkerPool._heard(handle, encode_result(MeterResult(a, readings=3, requests=1), 1))
        WorkerPool._heard(handle, encode_result(MeterResult(a, readings=1), 3))  # a cycle given up: dropped
        WorkerPool._heard(handle, encode_result(MeterResult(meter(9), readings=1), 1))  # not the cycle's: ignored
        (one,), (two,) = first.results(), second.results()
        assert one.meter is a and one.readings == 3 and one.ok
        assert two.meter is a and not two.ok and isinstance(two.error, WorkerError)
        part = first.part("worker 0 died")
        assert (part.meters_ok, part.meters_failed, part.readings, part.requests) == (1, 1, 3, 1)
        assert [(r.meter.id, type(r.error)) for r in part.results] == [(1, type(None)), (2, WorkerLost)]
    finally:
        loop.close()


def test_a_cycle_the_worker_could_not_report_counts_each_meter_once():
    """The worker's cycle failed (a bug) and it did not hold meter 2: meter 1, heard, counts as read;
    meter 2 fails once (it was counted twice: as not reported and as not held)."""
    a, b = meter(1), meter(2, "gw2")
    loop = asyncio.new_event_loop()
    try:
        pending = _Pending(loop.create_future(), {1: a, 2: b})
        handle = SimpleNamespace(index=0, pending={7: pending})
        WorkerPool._heard(handle, encode_result(MeterResult(a, readings=3, requests=1), 7))  # type: ignore[arg-type]
        WorkerPool._reported(None, handle, ("report", 7, None, [2]))  # type: ignore[arg-type]
        part = pending.future.result()
        assert (part.meters_ok, part.meters_failed, len(part.results)) == (1, 1, 2), part.summary()
    finally:
        loop.close()


def test_reports_merge_into_one_and_travel_without_their_meters():
    a, b, c = meter(1), meter(2, "gw2"), meter(3, "gw3")
    one = CycleReport(meters_ok=1, meters_failed=1, readings=2, invalid=1, requests=3, buses_busy=1,
                      results=[MeterResult(a, readings=2, requests=1, invalid=["m1: NaN"], duration_s=0.5,
                                           time_ms=7),
                               MeterResult(b, requests=2, errors=2, error=ResponseTimeout("no reply"))])
    two = CycleReport(meters_backed_off=1, meters_handed_off=1, results=[MeterResult(c, backed_off=True)])
    merged = merge_reports([one, two], 1.25)
    assert (merged.meters_ok, merged.meters_failed, merged.meters_backed_off, merged.meters_handed_off,
            merged.buses_busy, merged.readings, merged.invalid, merged.requests, merged.duration_s) == (
        1, 1, 1, 1, 1, 2, 1, 3, 1.25)
    assert [r.meter for r in merged.results] == [a, b, c]
    assert merged.summary().startswith("cycle: meters ok=1 failed=1 backed_off=1 readings=2 invalid=1 requests=3")

    heard = [decode_result(pickle.loads(pickle.dumps(encode_result(r, 1))), {1: a, 2: b}) for r in one.results]
    back = counted_report(pickle.loads(pickle.dumps(report_counts(one))), heard)
    assert back.summary() == one.summary()
    ok, failed = back.results
    assert ok.meter is a and ok.ok and (ok.readings, ok.requests, ok.invalid, ok.duration_s, ok.time_ms) == (
        2, 1, ["m1: NaN"], 0.5, 7)
    assert failed.meter is b and not failed.ok and failed.errors == 2
    assert isinstance(failed.error, WorkerError) and failed.error.kind == "timeout" and str(failed.error) == "no reply"
    assert ok.lines == []  # the lines went to the outbox as the meter finished

    lost = failed_part([a, b], "worker 1 died")
    assert lost.meters_failed == 2 and all(isinstance(r.error, WorkerLost) and not r.ok for r in lost.results)
    assert describe_exit(-9) == "was killed by SIGKILL" and describe_exit(3) == "exited with code 3"


# --------------------------------------------------------------------------- the channel between the processes


messages = st.lists(st.one_of(st.binary(max_size=3000), st.text(max_size=200),
                              st.tuples(st.just("report"), st.integers(), st.lists(st.integers(), max_size=20))),
                    max_size=30)


@settings(max_examples=150, deadline=None)
@given(sent=messages, flat=st.lists(st.booleans(), min_size=30, max_size=30),
       cuts=st.lists(st.integers(1, 5000), max_size=40))
def test_channel_delivers_every_message_whole_and_in_order_however_the_bytes_arrive(sent, flat, cuts):
    """The byte stream cut anywhere (a frame's length split, a pickle in pieces, many frames in
    one read), frames pickled with and without a memo: each message comes out once, whole, in
    order, and none before its last byte."""
    got: list[object] = []
    channel = Channel("test", got.append, lambda: None)
    stream = b"".join(frame(message, flat=f) for message, f in zip(sent, flat, strict=False))
    position = 0
    for cut in cuts:
        channel.data_received(stream[position:position + cut])
        position += cut
        assert got == sent[:len(got)]
    channel.data_received(stream[position:])
    assert got == sent


def test_a_flat_frame_refuses_a_message_inside_itself():
    """Without the memo, pickle cannot see a cycle by its memo: it stops at the nesting limit with
    an error (never a frame that loops for ever)."""
    looped: list[object] = ["line"]
    looped.append(looped)
    with pytest.raises(ValueError, match="cyclic"):
        frame(("lines", looped, []), flat=True)


def test_channel_never_blocks_the_sender_on_a_peer_that_does_not_read():
    """A worker's event loop must not stand still while the main process is slow to read (nor the
    other way round): 16 MB sent to a socket nobody reads returns at once; once the peer reads,
    everything arrives, in order, and the close comes after it."""

    async def run() -> None:
        mine, theirs = socket.socketpair()
        got: list[object] = []
        closed = asyncio.Event()
        sender = Channel("sender", lambda m: None, lambda: None)
        sender.open(mine)
        chunk = b"x" * 65536
        for i in range(256):  # 16 MB, far beyond the socket's buffer: Connection.send_bytes blocked here
            sender.send((i, chunk))
        sender.close()  # written out first
        receiver = Channel("receiver", got.append, closed.set)
        receiver.open(theirs)
        await asyncio.wait_for(closed.wait(), 30)
        assert [m[0] for m in got] == list(range(256)) and all(m[1] == chunk for m in got)
        await asyncio.wait_for(sender.wait_closed(), 5)

    asyncio.run(run())


def test_a_message_the_receiver_cannot_handle_is_said_and_the_next_still_comes(caplog):
    got: list[object] = []

    def handle(message: object) -> None:
        if message == "bad":
            raise RuntimeError("a bug")
        got.append(message)

    channel = Channel("worker 7", handle, lambda: None)
    channel.data_received(frame("bad") + frame("good"))
    assert got == ["good"] and "worker 7: handling a message failed" in caplog.text


# --------------------------------------------------------------------------- the pool, in this process


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def put(self, lines):
        assert isinstance(lines, list)
        self.lines.extend(lines)


def words(values: int = 8) -> dict[tuple[int, int], int]:
    return {(3, a): (0x4366 if a % 2 == 0 else 0x8000) for a in range(2 * values)}  # 230.5 each


@pytest.fixture
def gateways() -> Iterator[list[ModbusServerThread]]:
    servers = [ModbusServerThread(SimulatedServer(units={}, default=words)) for _ in range(4)]
    yield servers
    for server in servers:
        server.close()


def test_the_pool_polls_in_its_workers_fences_with_the_main_process_deadlines_and_replaces_the_dead(gateways):
    meters = [Meter(10 * g + u, "127.0.0.1", s.port, u, dtype(3)) for g, s in enumerate(gateways) for u in (1, 2)]
    fences = SharedFences(capacity=64)

    async def scenario() -> None:
        out = Lines()
        pool = WorkerPool(out, 2, fences=fences)
        try:
            for m in meters:
                fences.set(bus_key(m.bus), time.monotonic() + 3600)
            pool.forget_except(meters)
            report = await pool.run_cycle(meters)
            assert (report.meters_ok, report.readings, report.meters_failed) == (8, 24, 0), report.summary()
            assert len(out.lines) == 8 * 4  # 3 readings and a status point per meter
            assert {r.meter.id for r in report.results} == {m.id for m in meters}
            assert len({pool.shards.of[m.bus.wire] for m in meters}) == 2  # both workers have buses

            # the lease of one bus ends in the main process: its worker sends nothing there any more
            ended = meters[0].bus
            fences.set(bus_key(ended), 0.0)
            report = await pool.run_cycle(meters)
            handed = {r.meter.id for r in report.results if r.handed_off}
            assert handed == {m.id for m in meters if m.bus == ended}, report.summary()
            assert report.meters_ok == 6

            # a worker killed: its part of the cycle under way fails, the cycle returns, a new one takes over
            victim = pool.workers[0]
            os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
            report = await asyncio.wait_for(pool.run_cycle(meters[2:]), 10)
            assert report.meters_failed + report.meters_ok == 6
            deadline = time.monotonic() + 15
            while pool.workers[0] is victim or not pool.workers[0].alive:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert pool.restarts == 1 and pool.workers[0].pid != victim.pid
            report = await asyncio.wait_for(pool.run_cycle(meters[2:]), 15)
            assert (report.meters_ok, report.meters_failed) == (6, 0), report.summary()
            workers = [h.process for h in pool.workers]
        finally:
            await pool.aclose()
        assert all(p.exitcode == 0 for p in workers), [p.exitcode for p in workers]

    asyncio.run(scenario())
    for gateway in gateways:  # one client at a time on every bus, whatever process it was
        assert gateway.server.stats.max_in_flight == 1


def test_a_stop_mid_read_hands_over_what_the_workers_had_read(gateways):
    """aclose() while a slow meter is between two of its three requests: the worker cancels its
    cycle, sends the block it read, and exits; the cycle under way returns, its meter failed."""
    slow = ModbusServerThread(SimulatedServer(units={}, default=words, latency_s=0.4))
    spread = DeviceType("spread", tuple(Register(i, "spread", 100 * i, f"s{i}", "V", DataType.FLOAT32, HOLDING)
                                        for i in range(3)), max_gap=0, timeout_s=2.0)
    meters = [Meter(1, "127.0.0.1", slow.port, 1, spread), Meter(2, "127.0.0.1", gateways[0].port, 1, dtype(2))]

    async def scenario() -> None:
        out = Lines()
        pool = WorkerPool(out, 2)
        pool.forget_except(meters)
        assert (await pool.run_cycle(meters[1:])).meters_ok == 1  # the workers are up
        cycle = asyncio.ensure_future(pool.run_cycle(meters))
        await asyncio.sleep(0.6)  # the first block is read, the second is on its way
        await pool.aclose()
        report = await asyncio.wait_for(cycle, 5)
        assert {r.meter.id: r.ok for r in report.results} == {1: False, 2: True}, report.summary()
        assert [line.split(",")[0] for line in out.lines if "meter=1," in line] == ["s0"]
        assert all(h.process.exitcode == 0 for h in pool.workers)

    try:
        asyncio.run(scenario())
    finally:
        slow.close()


def test_a_worker_killed_mid_cycle_reports_the_meters_it_had_finished_as_read():
    """SIGKILL while the second of a bus's two meters waits for its reply: the first was read and
    its lines handed over, so it counts as read (ok, its readings); only the second fails."""
    slow = ModbusServerThread(SimulatedServer(units={}, default=words, latency_s=0.5))
    meters = [Meter(1, "127.0.0.1", slow.port, 1, dtype(3)), Meter(2, "127.0.0.1", slow.port, 2, dtype(3))]

    async def scenario() -> None:
        out = Lines()
        pool = WorkerPool(out, 1)
        try:
            pool.forget_except(meters)
            assert (await pool.run_cycle(meters)).meters_ok == 2  # the worker is up and connected
            out.lines.clear()
            cycle = asyncio.ensure_future(pool.run_cycle(meters))
            await asyncio.sleep(0.75)  # meter 1 read at 0.5 s; meter 2's reply due at 1.0 s
            os.kill(pool.workers[0].pid, signal.SIGKILL)  # type: ignore[arg-type]
            report = await asyncio.wait_for(cycle, 10)
        finally:
            await pool.aclose()
        assert {r.meter.id: r.ok for r in report.results} == {1: True, 2: False}, report.summary()
        assert (report.meters_ok, report.meters_failed, report.readings) == (1, 1, 3), report.summary()
        (failed,) = [r for r in report.results if not r.ok]
        assert isinstance(failed.error, WorkerLost) and "died" in str(failed.error)
        assert len([line for line in out.lines if "meter=1," in line]) == 4  # 3 readings and its status point
        assert not [line for line in out.lines if "meter=2," in line]

    try:
        asyncio.run(scenario())
    finally:
        slow.close()


def test_each_result_goes_to_the_cycle_that_polled_it_as_in_one_process():
    """Cycle 2 skips bus A (busy with cycle 1: CycleReport.buses_busy) and waits for slow bus B;
    cycle 3 reads A again meanwhile. Meter 1's result of cycle 3 is cycle 3's, never cycle 2's (which
    did not poll it): each cycle reports what the in-process Poller reports."""
    a = ModbusServerThread(SimulatedServer(units={}, default=words, latency_s=1.0))
    b = ModbusServerThread(SimulatedServer(units={}, default=words, latency_s=3.0))
    x, y = Meter(1, "127.0.0.1", a.port, 1, dtype(2, "t", 3.0)), Meter(2, "127.0.0.1", b.port, 1, dtype(2, "slow", 5.0))

    async def scenario(poller: Poller | WorkerPool) -> tuple[Any, ...]:
        poller.forget_except([x, y])
        assert (await poller.run_cycle([x, y])).meters_ok == 2  # connected
        first = asyncio.ensure_future(poller.run_cycle([x]))  # meter 1 on A: 1 s
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(poller.run_cycle([x, y]))  # A busy: skipped; meter 2 on B: 3 s
        await asyncio.sleep(1.3)  # the first is over, the second waits for B
        third = asyncio.ensure_future(poller.run_cycle([x]))  # meter 1 on A again, done at about 2.4 s
        reports = await asyncio.wait_for(asyncio.gather(first, second, third), 15)
        return tuple(([r.meter.id for r in report.results], report.meters_ok, report.buses_busy) for report in reports)

    async def in_process() -> tuple[Any, ...]:
        poller = Poller(Lines())
        try:
            return await scenario(poller)
        finally:
            poller.close()

    async def in_workers() -> tuple[Any, ...]:
        pool = WorkerPool(Lines(), 1)
        try:
            return await scenario(pool)
        finally:
            await pool.aclose()

    try:
        expected = asyncio.run(in_process())
        got = asyncio.run(in_workers())
    finally:
        a.close()
        b.close()
    assert expected == (([1], 1, 0), ([2], 1, 1), ([1], 1, 0))
    assert got == expected


def test_a_meter_a_killed_worker_had_sent_counts_as_read_in_the_cycle_that_polled_it():
    """As above (cycle 2 skipped bus A and waits for B); cycle 3 also polls meter 3 on slow bus C, and
    the worker dies after it sent meter 1's result of cycle 3. Cycle 3 counts meter 1 as read (not
    lost, its result given to cycle 2) and only meter 3 as lost."""
    a = ModbusServerThread(SimulatedServer(units={}, default=words, latency_s=1.0))
    b = ModbusServerThread(SimulatedServer(units={}, default=words, latency_s=3.5))
    c = ModbusServerThread(SimulatedServer(units={}, default=words, latency_s=3.5))
    x = Meter(1, "127.0.0.1", a.port, 1, dtype(2, "t", 3.0))
    y = Meter(2, "127.0.0.1", b.port, 1, dtype(2, "slow", 5.0))
    z = Meter(3, "127.0.0.1", c.port, 1, dtype(2, "slow", 5.0))

    async def scenario() -> None:
        out = Lines()
        pool = WorkerPool(out, 1)
        try:
            pool.forget_except([x, y, z])
            assert (await pool.run_cycle([x, y])).meters_ok == 2
            first = asyncio.ensure_future(pool.run_cycle([x]))
            await asyncio.sleep(0.1)
            second = asyncio.ensure_future(pool.run_cycle([x, y]))
            await asyncio.sleep(1.3)
            out.lines.clear()
            third = asyncio.ensure_future(pool.run_cycle([x, z]))  # meter 1 read at about 2.4 s, meter 3 at 4.9 s
            await asyncio.sleep(1.5)  # meter 2's reply is due at 3.6 s
            assert [line for line in out.lines if "meter=1," in line]  # meter 1's lines of cycle 3 arrived
            os.kill(pool.workers[0].pid, signal.SIGKILL)  # type: ignore[arg-type]
            *_, three = await asyncio.wait_for(asyncio.gather(first, second, third), 10)
        finally:
            await pool.aclose()
        assert {r.meter.id: r.ok for r in three.results} == {1: True, 3: False}, three.summary()
        assert isinstance(three.results[-1].error, WorkerLost)

    try:
        asyncio.run(scenario())
    finally:
        for server in (a, b, c):
            server.close()


def test_a_meter_moved_to_another_bus_keeps_each_cycles_result_with_its_cycle():
    """Meter 1 fails on slow bus A in cycle 1 (no reply within its timeout) while the configuration
    moves it to fast bus B (same worker), where cycle 2 reads it at once: cycle 1's result is the
    failure, cycle 2's the success, as their counts (the worker's) say."""
    a = ModbusServerThread(SimulatedServer(units={}, default=words, latency_s=1.5))
    b = ModbusServerThread(SimulatedServer(units={}, default=words))
    old, new = Meter(1, "127.0.0.1", a.port, 1, dtype(2)), Meter(1, "127.0.0.1", b.port, 1, dtype(2))
    stays = Meter(2, "127.0.0.1", a.port, 2, dtype(2))  # bus A stays configured

    async def scenario() -> None:
        pool = WorkerPool(Lines(), 1)
        try:
            pool.forget_except([old, stays])
            first = asyncio.ensure_future(pool.run_cycle([old]))
            await asyncio.sleep(0.3)
            pool.forget_except([new, stays])
            two = await asyncio.wait_for(pool.run_cycle([new]), 5)
            one = await asyncio.wait_for(first, 5)
        finally:
            await pool.aclose()
        assert (one.meters_ok, one.meters_failed, [r.ok for r in one.results]) == (0, 1, [False]), one.summary()
        assert (two.meters_ok, two.meters_failed, [r.ok for r in two.results]) == (1, 0, [True]), two.summary()

    try:
        asyncio.run(scenario())
    finally:
        a.close()
        b.close()


def test_a_cycle_under_way_returns_when_the_stop_kills_a_worker_that_would_not_stop():
    """run_cycle returns when every worker reported or died: a worker that does not stop within
    aclose's time is killed, and the cycle it had under way returns, its meter failed."""
    slow = ModbusServerThread(SimulatedServer(units={}, default=words, latency_s=1.0))
    x = Meter(1, "127.0.0.1", slow.port, 1, dtype(2, "slow", 5.0))

    async def scenario() -> None:
        pool = WorkerPool(Lines(), 1)
        try:
            pool.forget_except([x])
            assert (await pool.run_cycle([x])).meters_ok == 1
            cycle = asyncio.ensure_future(pool.run_cycle([x]))
            await asyncio.sleep(0.2)
            os.kill(pool.workers[0].pid, signal.SIGSTOP)  # type: ignore[arg-type]  # it cannot stop now
            await pool.aclose(timeout_s=1.0)  # kills it
            report = await asyncio.wait_for(cycle, 5)
        finally:
            pool.close()
        assert (report.meters_ok, report.meters_failed) == (0, 1), report.summary()
        assert isinstance(report.results[0].error, WorkerLost)

    try:
        asyncio.run(scenario())
    finally:
        slow.close()


def test_an_immediate_close_lets_the_workers_see_the_end_at_once(gateways):
    """close() is the blocking stop (atexit, a failed start): the event loop does not run again
    before it joins, yet each worker must see its channel end and exit by itself, not be killed
    after the join's second."""

    async def scenario() -> WorkerPool:
        pool = WorkerPool(Lines(), 2)
        meters = [meter(1, "127.0.0.1", gateways[0].port), meter(2, "127.0.0.1", gateways[1].port)]
        pool.forget_except(meters)
        assert (await pool.run_cycle(meters)).meters_ok == 2  # both workers up and serving
        pool.close()  # joins each worker for up to 1 s, then kills it
        return pool

    pool = asyncio.run(scenario())
    assert [h.process.exitcode for h in pool.workers] == [0, 0]  # exited, not killed


# --------------------------------------------------------------------------- python -m poller


def fleet(postgres, database, gateways: int, units: int, latency_s: float = 0.0) -> list[ModbusServerThread]:
    """`gateways` gateways (each its own server and stats), the seed map at `units` unit ids each."""
    bank = make_device("virtual_meter", seed_registers(postgres, database), 3).words()
    servers = [ModbusServerThread(SimulatedServer(units={}, default=lambda: bank, latency_s=latency_s))
               for _ in range(gateways)]
    rows = ", ".join(f"({g * units + u}, '127.0.0.1', {s.port}, {u}, 'virtual_meter')"
                     for g, s in enumerate(servers) for u in range(1, units + 1))
    postgres.psql(database, "-c", f"DELETE FROM energy_meters; INSERT INTO energy_meters "
                                  f"(id, host, port, slave_address, type) VALUES {rows};")
    return servers


def wait_for(what, log: Path, proc, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (found := what(log.read_text())):
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
        time.sleep(0.05)
    return found


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = {int(c) for c in (task / "children").read_text().split()}
            except OSError:
                continue
            todo.extend(children - found)
            found |= children
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (a dead child no one reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def sigterm_timed(proc: subprocess.Popen[bytes]) -> tuple[set[int], int, float]:
    """SIGTERM the service: its descendants before, its exit code, and how long it took."""
    children = descendants(proc.pid)
    term = time.monotonic()
    rc = stop_process(proc, timeout=30)
    return children, rc, time.monotonic() - term


def left_behind(pids: set[int], wait_s: float = 3.0) -> list[str]:
    """The command lines of those still running after `wait_s` (multiprocessing's resource tracker,
    a child too, exits a moment after the main process, when it sees its pipe close)."""
    deadline = time.monotonic() + wait_s
    while (alive := [p for p in pids if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ") for p in alive if running(p)]


def worker_pids(text: str) -> dict[int, int]:
    """The live worker of each index, as the log says (a restarted worker's new pid wins)."""
    return {int(i): int(p) for i, p in STARTED.findall(text)}


def samples(victoria, expected: int) -> dict[str, list[int]]:
    """meter id -> timestamps (ms) of its voltage_l1 readings."""
    series = victoria.export('{__name__=~".+_value"}', min_samples=expected, timeout=20)
    assert sum(len(s["values"]) for s in series) == expected, (expected, sum(len(s["values"]) for s in series))
    return {s["metric"]["meter"]: s["timestamps"] for s in series if s["metric"]["__name__"] == "voltage_l1_value"}


def test_two_workers_store_every_reading_and_serve_each_bus_over_one_connection(postgres, database, victoria,
                                                                                tmp_path):
    """(a) POLL_WORKERS=2, 6 gateways x 3 units every second: every reading of every tick is stored,
    each gateway sees one client connection and one request at a time; SIGTERM stops it cleanly."""
    servers = fleet(postgres, database, 6, 3, latency_s=0.002)
    log = tmp_path / "poller.log"
    env = {**postgres.env(database), **victoria.env(), "POLL_CRON": "* * * * * *", "POLL_WORKERS": "2"}
    proc = start_module("poller", [], env, log)
    try:
        wait_for(lambda t: len(CYCLE.findall(t)) >= 6, log, proc)
        pids = worker_pids(log.read_text())
        assert len(pids) == 2 and set(pids.values()) <= descendants(proc.pid)
        children, rc, stop_s = sigterm_timed(proc)
    finally:
        stop_process(proc)
        for server in servers:
            server.close()
    text = log.read_text()
    assert rc == 0 and stop_s < 10, (rc, stop_s, text)
    assert "Traceback" not in text and " ERROR " not in text, text
    assert not left_behind(children)
    cycles = [tuple(map(int, m.groups())) for m in CYCLE.finditer(text)]
    assert all(c == (18, 0, 0, 18 * 12) for c in cycles), cycles
    stamps = samples(victoria, 18 * 12 * len(cycles))
    assert sorted(stamps, key=int) == [str(i) for i in range(1, 19)]
    assert all(len(t) == len(cycles) for t in stamps.values()), {m: len(t) for m, t in stamps.items()}
    for server in servers:
        assert (server.server.stats.connections, server.server.stats.max_in_flight) == (1, 1)


def test_a_killed_worker_is_replaced_and_its_buses_are_read_again_within_two_ticks(postgres, database, victoria,
                                                                                  tmp_path):
    """(b) SIGKILL to a worker: the service goes on, says so once, the worker's buses are read again
    within two ticks, and every reading taken before the kill is stored."""
    servers = fleet(postgres, database, 4, 2)
    log = tmp_path / "poller.log"
    port = free_port()
    env = {**postgres.env(database), **victoria.env(), "POLL_CRON": "* * * * * *", "POLL_WORKERS": "2",
           "POLL_HTTP_PORT": str(port)}
    proc = start_module("poller", [], env, log)
    try:
        wait_for(lambda t: len(CYCLE.findall(t)) >= 3, log, proc)
        victim = worker_pids(log.read_text())[0]
        killed = time.time()
        os.kill(victim, signal.SIGKILL)
        replaced = wait_for(lambda t: [p for i, p in STARTED.findall(t) if i == "0" and int(p) != victim], log, proc)
        assert int(replaced[0]) in descendants(proc.pid)
        time.sleep(3.5)
        assert proc.poll() is None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        rc = stop_process(proc, timeout=30)
    finally:
        stop_process(proc)
        for server in servers:
            server.close()
    text = log.read_text()
    assert rc == 0, text
    assert "emm_worker_restarts_total 1.0" in metrics
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"worker 0 (pid {victim}) was killed by SIGKILL" in errors[0], errors
    stored = victoria.export('{__name__=~".+_value"}', min_samples=1, timeout=20)
    logged = sum(int(m.group(4)) for m in CYCLE.finditer(text))
    # the cycle the worker died in reports its meters failed, but what it had sent is stored too
    assert sum(len(s["values"]) for s in stored) >= logged
    voltage = {s["metric"]["meter"]: [t / 1000 for t in s["timestamps"]] for s in stored
               if s["metric"]["__name__"] == "voltage_l1_value"}
    assert len(voltage) == 8
    first = max(min(t) for t in voltage.values())  # from the first tick every meter was read in
    for meter_id, seconds in voltage.items():
        ticks = {int(t) for t in seconds}
        before = set(range(int(first), int(killed)))
        assert before <= ticks, (meter_id, sorted(before - ticks))  # nothing taken before the kill is lost
        again = [t for t in seconds if t > killed]
        assert again and min(again) - killed < 3.0, (meter_id, again[:3], killed)


def test_sigterm_stops_workers_mid_read_within_the_budget_and_leaves_no_process(postgres, database, victoria,
                                                                                tmp_path, hung_port):
    """(c) A device that never answers (60 s timeout) holds a cycle in a worker when SIGTERM comes:
    the service stops within compose's 20 s with exit 0, and none of its processes is left. Workers
    ignore SIGTERM and SIGINT sent to them directly (the main process orchestrates)."""
    servers = fleet(postgres, database, 2, 2)
    postgres.psql(database, "-c", f"""
        INSERT INTO device_types (name, timeout_s) VALUES ('hung', 60);
        INSERT INTO registers (type, register_address, measurement_name, data_type) VALUES ('hung', 0, 'v', 3);
        INSERT INTO energy_meters (id, host, port, slave_address, type)
            VALUES (99, '127.0.0.1', {hung_port}, 1, 'hung');""")
    log = tmp_path / "poller.log"
    env = {**postgres.env(database), **victoria.env(), "POLL_CRON": "* * * * * *", "POLL_WORKERS": "2"}
    proc = start_module("poller", [], env, log)
    try:
        wait_for(lambda t: len(CYCLE.findall(t)) >= 2, log, proc)
        pids = worker_pids(log.read_text())
        for pid in pids.values():
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGINT)
        time.sleep(0.5)
        assert all(running(p) for p in pids.values()) and worker_pids(log.read_text()) == pids
        children, rc, stop_s = sigterm_timed(proc)
    finally:
        stop_process(proc)
        for server in servers:
            server.close()
    text = log.read_text()
    assert rc == 0, text
    assert 4.5 < stop_s < 20, f"SIGTERM took {stop_s:.1f} s"
    assert "cycle(s) still reading after 5 s were stopped" in text, text
    assert "did not stop" not in text and "Traceback" not in text, text
    assert not left_behind(children)


def test_workers_exit_when_the_main_process_dies(postgres, database, victoria, tmp_path):
    """No orphans even when the main process cannot clean up (SIGKILL): each worker sees its pipe
    close and exits."""
    servers = fleet(postgres, database, 1, 1)
    log = tmp_path / "poller.log"
    env = {**postgres.env(database), **victoria.env(), "POLL_CRON": "* * * * * *", "POLL_WORKERS": "2"}
    proc = start_module("poller", [], env, log)
    try:
        wait_for(lambda t: len(CYCLE.findall(t)) >= 1, log, proc)
        children = descendants(proc.pid)
        assert set(worker_pids(log.read_text()).values()) <= children
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 5
        while [p for p in children if running(p)]:
            assert time.monotonic() < deadline, "worker processes outlived the main process"
            time.sleep(0.05)
    finally:
        stop_process(proc)
        for server in servers:
            server.close()


def test_a_gateway_described_anew_while_its_poll_is_under_way_is_never_polled_twice_at_once():
    """The operator changes a gateway's transport (Modbus TCP to RTU over TCP, the same host:port:
    the same wire) while its poll is under way: the new description waits for the old poll, in one
    process as with workers (the same worker), so the gateway never has two clients at once."""
    server = SimulatedServer(units={}, default=words, latency_s=1.0)
    gateway = ModbusServerThread(server)
    other = ModbusServerThread(SimulatedServer(units={}, default=words))
    old = Meter(1, "127.0.0.1", gateway.port, 1, dtype(2, "t", 3.0))
    new = dataclasses.replace(old, transport=Transport.RTU_OVER_TCP)
    assert old.bus != new.bus and old.bus.wire == new.bus.wire
    added = Meter(2, "127.0.0.1", other.port, 1, dtype(9))  # a gateway added in the same edit
    most = [0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            most[0] = max(most[0], len(server._open_tcp))
            time.sleep(0.002)

    async def scenario(poller: Poller | WorkerPool) -> int:
        poller.forget_except([old])
        assert (await poller.run_cycle([old])).meters_ok == 1  # connected
        first = asyncio.ensure_future(poller.run_cycle([old]))
        await asyncio.sleep(0.3)
        poller.forget_except([new, added])
        second = await asyncio.wait_for(poller.run_cycle([new, added]), 10)
        assert (await asyncio.wait_for(first, 10)).meters_ok == 1
        return second.buses_busy

    async def in_process() -> int:
        poller = Poller(Lines())
        try:
            return await scenario(poller)
        finally:
            poller.close()

    async def in_workers() -> int:
        pool = WorkerPool(Lines(), 2)
        try:
            return await scenario(pool)
        finally:
            await pool.aclose()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        assert asyncio.run(in_process()) == 1  # sat the tick out
        assert asyncio.run(in_workers()) == 1
    finally:
        sampling.set()
        gateway.close()
        other.close()
    assert most[0] == 1


ENERGY = DeviceType("meter", (Register(1, "meter", 0, "energy", "kWh", DataType.FLOAT32, HOLDING, counter=True),))


def energy_reads(value: float) -> Callable[[], dict[tuple[int, int], int]]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return lambda: {(3, 0): hi, (3, 1): lo}


def test_a_meter_that_comes_with_a_lease_takes_no_history_from_an_earlier_tenant_of_the_spool_slot(tmp_path):
    """Another instance left meter 1 at 1000 kWh in this spool slot an hour ago; the meter was
    replaced since, and reads 20 kWh. Its bus comes to this instance by a lease (the first
    configuration is applied before any lease): the readings are written, none held back as
    'backwards' against a stale value (README: the history does not follow a bus across instances)."""
    old = CounterGuard(tmp_path / "counters-worker-0.json")
    meter = Meter(1, "127.0.0.1", 0, 1, ENERGY)
    assert old.check(meter, ENERGY.registers[0], 1000.0, time.time_ns() // 1_000_000 - 3_600_000) is None
    old.save(force=True)
    server = ModbusServerThread(SimulatedServer(units={}, default=energy_reads(20.0)))
    meter = dataclasses.replace(meter, port=server.port)

    async def scenario() -> list[list[str]]:
        pool = WorkerPool(Lines(), 2, counters_dir=str(tmp_path))
        try:
            pool.forget_except([])  # the first configuration: no lease held yet
            pool.forget_except([meter])  # the bus's lease comes
            return [[x for r in (await pool.run_cycle([meter])).results for x in r.counter_rejects]
                    for _ in range(2)]
        finally:
            await pool.aclose()

    try:
        assert asyncio.run(scenario()) == [[], []]
    finally:
        server.close()


def test_a_counter_moved_to_another_workers_bus_keeps_its_history(tmp_path):
    """Meter 1 (an energy counter) reads 1000 kWh on gateway A, then is moved to gateway B, which
    another worker polls, and reads 900 kWh there: held back as 'backwards', as one process does,
    since its history comes with it (the state files in the counters directory)."""
    a = ModbusServerThread(SimulatedServer(units={}, default=energy_reads(1000.0)))
    b = ModbusServerThread(SimulatedServer(units={}, default=energy_reads(900.0)))
    on_a, on_b = Meter(1, "127.0.0.1", a.port, 1, ENERGY), Meter(1, "127.0.0.1", b.port, 1, ENERGY)
    neighbour = Meter(2, "127.0.0.1", b.port, 2, ENERGY)  # gateway B is already polled

    async def scenario() -> list[str]:
        pool = WorkerPool(Lines(), 2, counters_dir=str(tmp_path))
        try:
            pool.forget_except([on_a, neighbour])
            assert (await pool.run_cycle([on_a, neighbour])).meters_ok == 2
            assert pool.shards.of[on_a.bus.wire] != pool.shards.of[on_b.bus.wire]
            pool.forget_except([on_b, neighbour])
            second = await pool.run_cycle([on_b, neighbour])
            return [reason for r in second.results if r.meter.id == 1 for reason in r.counter_rejects]
        finally:
            await pool.aclose()

    try:
        assert asyncio.run(scenario()) == ["backwards"]
    finally:
        a.close()
        b.close()


def test_the_counter_state_of_workers_no_longer_running_is_merged_then_removed(tmp_path):
    """POLL_WORKERS lowered from 2 to 1: worker 1's file is read at the start (its counters keep
    their history), merged into worker 0's and removed. Left, it was read at every start and never
    written again: a meter deleted since came back each time, and its id's next first reading (a
    meter re-added, its counter reset) was held back as 'backwards'."""
    kept, deleted = Meter(2, "gw", 502, 2, ENERGY), Meter(1, "gw", 502, 1, ENERGY)
    reg = ENERGY.registers[0]
    now_ms = time.time_ns() // 1_000_000
    for name, m, value in (("counters-worker-0.json", kept, 50.0), ("counters-worker-1.json", deleted, 1000.0)):
        guard = CounterGuard(tmp_path / name)
        assert guard.check(m, reg, value, now_ms) is None
        guard.save(force=True)
    retire_counter_files(tmp_path, 1)
    assert [p.name for p in counter_files(tmp_path)] == ["counters-worker-0.json"]
    first = counter_guard(tmp_path, "counters-worker-0.json")
    assert first.check(deleted, reg, 900.0, now_ms + 1000) == "backwards"  # the history was kept
    first.forget_except({kept.id})  # the meter is deleted
    first.save(force=True)
    again = counter_guard(tmp_path, "counters-worker-0.json")  # the next start
    assert again.check(deleted, reg, 5.0, now_ms + 2000) is None  # its id re-used: a first reading
    assert again.check(kept, reg, 40.0, now_ms + 2000) == "backwards"
    retire_counter_files(tmp_path, 0)  # back to one process: counters.json, nothing lost
    assert [p.name for p in counter_files(tmp_path)] == ["counters.json"]
    assert counter_guard(tmp_path).check(kept, reg, 40.0, now_ms + 3000) == "backwards"


def test_counter_files_that_cannot_be_merged_stay_for_the_next_start(tmp_path, monkeypatch):
    """The merged state cannot be written (a full or read-only disk): the files of the processes
    gone are kept, so their history is read at this start and merged at a later one."""
    gone = CounterGuard(tmp_path / "counters-worker-1.json")
    meter = Meter(1, "gw", 502, 1, ENERGY)
    assert gone.check(meter, ENERGY.registers[0], 1000.0, time.time_ns() // 1_000_000) is None
    gone.save(force=True)
    monkeypatch.setattr(CounterGuard, "write", lambda self, body: False)
    retire_counter_files(tmp_path, 1)
    assert [p.name for p in counter_files(tmp_path)] == ["counters-worker-1.json"]
    first = counter_guard(tmp_path, "counters-worker-0.json")
    assert first.check(meter, ENERGY.registers[0], 900.0, time.time_ns() // 1_000_000) == "backwards"
