"""Worker processes (POLL_WORKERS): the buses sharded over N processes, each with its own
event loop, its own connections and its own Poller. The main process keeps the schedule,
the configuration, the outbox and spool, the leases and /metrics: one service to run.

    main process                                        worker i (spawned)
    WorkerPool.run_cycle(due meters)
      each bus -> one worker (Shards)
      ("meters", Meter objects, fence slots, keep) -->  held by id, Poller.forget_except
      ("run", cycle, meter ids)                    -->  Poller.run_cycle(them), a task per request
      Outbox.put(lines), results kept   <-- ("lines", lines, results)
                                                        the lines and results of the meters done in
                                                        the last HAND_OVER_S (20 ms), one message
      merged into one CycleReport       <-- ("report", cycle, counts)

Messages travel through a Channel (poller/channel.py) each way: pickled, framed, through each
process's event loop, so neither process ever blocks on the other. Lines travel as a pickled
list of str (measured: pickling and unpickling a meter's 30 lines takes 2.3 us, joining and
splitting them again 3.1 us), pickled flat (`channel.frame`: no memo, which a batch of distinct
strings does not need and which made pickling it 8 times slower). The message, its system calls
and the wake-ups cost about 10 us of main-process CPU each, more than the pickling: a worker
gathers the lines and results of the meters it finishes for HAND_OVER_S after the first, then
sends them as one message (a cycle's report goes out right after its last lines, without
waiting). Sending each loop turn's meters at the end of that turn cost 6 % more CPU per reading
with 2 workers (bench/README.md).
Results carry meter ids, not Meter objects, which the main process has, and the cycle they are
of: cycles overlap (a bus still busy sits a tick out, a meter moves to another bus), so the
order a worker finishes a meter's polls in does not say which cycle a result belongs to. Meter
objects travel when the configuration changes (`forget_except`), or with the first request
that needs them.

A bus stays with its worker while the pool runs (a bus that leaves the configuration and
comes back goes to the same worker), so a bus is never polled by two processes at once. Each
tick's request is a task of its own in the worker, so its Poller's busy rule applies as in
one process: a bus still busy with an earlier tick sits the tick out (CycleReport.buses_busy).

Fencing (POLL_COORDINATION=postgres): the lease deadlines live in shared memory
(lease.SharedFences, written by the main process only); each bus's slot is sent with its
meters, and the worker's Poller reads `values[slot]` just before each request.

A worker that dies is seen at once (EOF on its channel): the meters of its cycles under way that
it had not sent the lines and result of (not finished, or finished in its last HAND_OVER_S) are
reported failed (what it had sent is in the outbox, and those meters count as it reported them),
it is logged once at ERROR and a new one takes its place, with its buses, for the next tick
(emm_worker_restarts_total). Workers ignore SIGINT and SIGTERM (the main process stops them:
`aclose`; one that does not stop in time is killed, its cycles under way reported as a dead
worker's) and exit when their channel to the main process closes, so they never outlive it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import itertools
import logging
import math
import multiprocessing
import operator
import os
import signal
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import loop as event_loop
from .channel import Channel, socket_of
from .counters import CounterGuard
from .cycle import CycleReport, MeterResult, Poller, Readings
from .lease import SharedFences, bus_key
from .modbus import ModbusError
from .model import BusAddress, Meter, Wire

if TYPE_CHECKING:
    from .lease import Leases
    from .settings import Settings

log = logging.getLogger("poller.workers")

HAND_OVER_S = 0.02  # a worker's finished meters wait this long for others to share their message
JOIN_S = 3.0  # at stop: how long workers get to send their last lines and exit before they are killed
RESTART_DELAYS_S = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)  # a worker that keeps dying young waits longer
YOUNG_S = 10.0  # a worker that dies sooner than this after its start counts towards the delay
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}

# A meter's result travels with its lines as (cycle, meter id, the fields after `meter` and `lines`
# in MeterResult's own order): the main process has the meter, and builds each result positionally
# (a fifth of the time keywords take, for every meter every cycle). The error travels as its
# message and kind: the exception class may not pickle.
_RESULT_FIELDS = tuple(f.name for f in fields(MeterResult))[2:]
_ERROR_AT = _RESULT_FIELDS.index("error")
_result_values = operator.attrgetter(*_RESULT_FIELDS)
_COUNT_FIELDS = tuple(f.name for f in fields(CycleReport) if f.name not in ("duration_s", "results"))
# In a worker: the cycle the running task polls for (set by `_Worker._run`). The Poller's tasks
# inherit it, and so does its `_finish`, scheduled by call_soon from them, so `on_done` knows the
# cycle without the Poller passing it (0: none, never asked for by the main process).
_CYCLE: contextvars.ContextVar[int] = contextvars.ContextVar("cycle", default=0)


class WorkerError(ModbusError):
    """A meter's failure as its worker reported it (the kind and the message of the original)."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


class WorkerLost(ModbusError):
    """The worker polling the meter died, or was restarting, during the cycle."""

    kind = "worker_lost"


# ---------------------------------------------------------------------------------------------
# Pure parts: which worker polls which bus, and the merge of the workers' reports


class Shards:
    """Which worker polls which bus: a bus goes to the least loaded worker the first time it is
    seen (the heaviest new buses first), and stays there while the pool runs. A bus's load is the
    number of values its enabled meters read (at least one per meter): the CPU a cycle spends on
    it. A bus is its wire: described anew (Modbus TCP to RTU over TCP on the same gateway, other
    serial settings), it stays with its worker, where a poll still under way holds it."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.of: dict[Wire, int] = {}
        self.weight: dict[Wire, int] = {}  # the configured buses only
        self.load = [0] * workers

    def update(self, weights: Mapping[Wire, int]) -> None:
        """The configured buses and their loads now; buses not in `weights` weigh nothing (but
        keep their worker, should they come back)."""
        for bus in [b for b in self.weight if b not in weights]:
            self.load[self.of[bus]] -= self.weight.pop(bus)
        for bus, weight in weights.items():
            if bus in self.of:
                self.load[self.of[bus]] += weight - self.weight.get(bus, 0)
                self.weight[bus] = weight
        for bus in sorted((b for b in weights if b not in self.of), key=lambda b: (-weights[b], str(b))):
            index = min(range(self.workers), key=lambda i: (self.load[i], i))
            self.of[bus] = index
            self.weight[bus] = weights[bus]
            self.load[index] += weights[bus]

    def worker(self, bus: Wire) -> int:
        """The bus's worker (a bus not seen before is placed now, with the least load)."""
        index = self.of.get(bus)
        if index is None:
            index = self.of[bus] = min(range(self.workers), key=lambda i: (self.load[i], i))
        return index


def bus_weights(meters: Iterable[Meter]) -> dict[Wire, int]:
    weights: dict[Wire, int] = {}
    for meter in meters:
        if meter.enabled:  # a disabled meter is not polled: no load
            wire = meter.bus.wire
            weights[wire] = weights.get(wire, 0) + max(1, len(meter.device_type.registers))
    return weights


def merge_reports(parts: Iterable[CycleReport], duration_s: float) -> CycleReport:
    """One report of the workers' ones: counts summed, results in turn, the pool's wall time."""
    report = CycleReport(duration_s=duration_s)
    for part in parts:
        for name in _COUNT_FIELDS:
            setattr(report, name, getattr(report, name) + getattr(part, name))
        report.results.extend(part.results)
    return report


def failed_part(meters: Iterable[Meter], why: str) -> CycleReport:
    """The part of a cycle a worker could not report: every meter failed, nothing read."""
    now_ms = time.time_ns() // 1_000_000
    results = [MeterResult(m, error=WorkerLost(why), time_ms=now_ms) for m in meters]
    return CycleReport(meters_failed=len(results), results=results)


def _replace_error(values: tuple[Any, ...], error: Any) -> tuple[Any, ...]:
    return (*values[:_ERROR_AT], error, *values[_ERROR_AT + 1:])


def encode_result(r: MeterResult, cycle: int) -> tuple[int, int, tuple[Any, ...]]:
    values = _result_values(r)
    if r.error is not None:
        values = _replace_error(values, (str(r.error), r.error.kind))
    return cycle, r.meter.id, values


def decode_result(encoded: tuple[int, int, tuple[Any, ...]], meters: Mapping[int, Meter]) -> MeterResult:
    _, meter_id, values = encoded
    if values[_ERROR_AT] is not None:
        values = _replace_error(values, WorkerError(*values[_ERROR_AT]))
    return MeterResult(meters[meter_id], [], *values)


def report_counts(report: CycleReport) -> tuple[int, ...]:
    """What a worker's report carries: its counts (its results went with their lines)."""
    return tuple(getattr(report, name) for name in _COUNT_FIELDS)


def counted_report(counts: Sequence[int], results: list[MeterResult]) -> CycleReport:
    """The report of `report_counts`, with the results the main process heard."""
    return CycleReport(**dict(zip(_COUNT_FIELDS, counts, strict=True)), results=results)


# ---------------------------------------------------------------------------------------------
# The worker process


@dataclass(frozen=True)
class WorkerOptions:
    max_parallel_endpoints: int = 256
    status_points: bool = True
    log_level: int = logging.INFO
    fenced: bool = False  # POLL_COORDINATION=postgres: every request is fenced by its bus's lease
    counters_dir: str | None = None  # where the counter guard keeps its state (the spool's directory)
    event_loop: str = "auto"  # POLL_EVENT_LOOP, as the main process's (poller/loop.py)


def worker_main(index: int, conn: Connection, fences: Any, options: WorkerOptions) -> None:
    """A worker process's life: serve the main process's requests until it says stop or goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process orchestrates the stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by the pool around the start
    from .logsafe import setup_logging

    setup_logging(options.log_level)
    event_loop.keep_freed_blocks()
    try:
        event_loop.run(_Worker(index, conn, fences, options).serve(), options.event_loop)
    finally:
        conn.close()


class _Worker:
    """The worker's side: Readings for its Poller (each meter's lines to the main process)."""

    def __init__(self, index: int, conn: Connection, fences: Any, options: WorkerOptions) -> None:
        self.index = index
        self.conn = conn
        self.fences = fences
        self.meters: dict[int, Meter] = {}
        self.slots: dict[BusAddress, int] = {}
        self.cycles: dict[int, asyncio.Task[None]] = {}
        self.channel = Channel(f"worker {index}", self._handle, self._finish)
        self.counters_dir = options.counters_dir
        self.poller = Poller(self, options.max_parallel_endpoints, status_points=options.status_points,
                             fence=self.fence if options.fenced else None,
                             counters=counter_guard(options.counters_dir, f"counters-worker-{index}.json"),
                             on_done=self.meter_done)
        self.done: asyncio.Future[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.batch: list[str] = []  # lines put since the last message, not sent yet
        self.results: list[tuple[int, int, tuple[Any, ...]]] = []  # the results of the meters those lines are of
        self.timer: asyncio.TimerHandle | None = None

    def fence(self, address: BusAddress) -> float:
        """The lease deadline the main process keeps for the bus (0.0: not held, send nothing)."""
        slot = self.slots.get(address)
        return 0.0 if slot is None else float(self.fences[slot])

    def put(self, lines: Sequence[str]) -> None:
        """A meter's lines: sent within HAND_OVER_S, together with those of the other meters
        finished meanwhile (one message, one wake-up of the main process)."""
        if lines:
            self._soon()
            self.batch.extend(lines)

    def meter_done(self, result: MeterResult) -> None:
        """The meter's result (Poller's on_done, right after its lines): sent with them, so what
        the main process counts of a worker that dies later includes every meter it heard of."""
        encoded = encode_result(result, _CYCLE.get())
        self._soon()
        self.results.append(encoded)

    def _soon(self) -> None:
        if self.timer is None and self.loop is not None:
            self.timer = self.loop.call_later(HAND_OVER_S, self._flush)

    def _flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.batch or self.results:
            message = ("lines", self.batch, self.results)
            self.batch, self.results = [], []
            self.channel.send(message, flat=True)  # dropped once the main process is gone (and serve() ends)

    def _send(self, message: object) -> None:
        self._flush()  # a cycle's report never overtakes its lines and results
        self.channel.send(message)

    def _finish(self) -> None:
        """Stop serving (asked to, or the main process is gone): serve() cancels what still runs."""
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def serve(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        self.channel.open(socket_of(self.conn))  # stop, or the main process gone: _finish
        try:
            await self.done
        finally:
            tasks = list(self.cycles.values())
            for task in tasks:
                task.cancel()  # what a cancelled meter read so far is still handed over
            await asyncio.gather(*tasks, return_exceptions=True)
            self._flush()  # the last lines, read before the cycles were cancelled
            self.poller.close()
            self.channel.close()  # written out first: the main process reads until the EOF
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.channel.wait_closed(), JOIN_S)

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "run":
            _, cycle, ids = message
            meters = [self.meters[i] for i in ids if i in self.meters]
            unknown = [i for i in ids if i not in self.meters]
            self.cycles[cycle] = asyncio.create_task(self._run(cycle, meters, unknown))
        elif kind == "meters":
            _, meters, slots, keep, moved = message
            self.slots.update(slots)
            for meter in meters:
                self.meters[meter.id] = meter
            if moved and self.counters_dir is not None and self.poller.counters is not None:
                # meters moved here from another worker's bus: their counters' history comes from the
                # state files (the other worker's is at most SAVE_EVERY_S old: still a lower bound;
                # the newest value wins over what an earlier owner of this spool slot left)
                self.poller.counters.load(counter_files(self.counters_dir), set(moved))
            if keep is not None:
                kept = set(keep)
                self.meters = {i: m for i, m in self.meters.items() if i in kept}
                self.poller.forget_except(list(self.meters.values()))
        elif kind == "history":  # meters whose bus this instance took from another (Poller.load_counter_history)
            _, files, ids = message
            self.poller.load_counter_history([Path(f) for f in files], ids)
        elif kind == "cancel":
            task = self.cycles.get(message[1])
            if task is not None:
                task.cancel()
        elif kind == "stop":
            self._finish()  # serve() cancels what still runs, then the process exits

    async def _run(self, cycle: int, meters: list[Meter], unknown: list[int]) -> None:
        _CYCLE.set(cycle)  # this task's own context: the results of its meters say they are this cycle's
        try:
            report = await self.poller.run_cycle(meters)
        except asyncio.CancelledError:
            return  # the main process gave this cycle up (the service stops)
        except Exception:  # a bug: the main process reports the cycle's meters it did not hear of failed
            log.exception("worker %d: cycle failed", self.index)
            self._send(("report", cycle, None, unknown))
        else:
            self._send(("report", cycle, report_counts(report), unknown))
        finally:
            self.cycles.pop(cycle, None)


# ---------------------------------------------------------------------------------------------
# The main process's side


@dataclass(eq=False)
class _Pending:
    """A worker's part of a cycle under way: its meters, and the results heard so far (each comes
    with the meter's lines)."""

    future: asyncio.Future[CycleReport]
    meters: dict[int, Meter]
    heard: dict[int, tuple[int, int, tuple[Any, ...]]] = field(default_factory=dict)  # encoded, as they came

    def results(self) -> list[MeterResult]:
        return [decode_result(encoded, self.meters) for encoded in self.heard.values()]

    def part(self, why: str) -> CycleReport:
        """The part when the worker cannot report it: the results heard, the other meters failed."""
        heard = CycleReport()
        for result in self.results():
            heard.add(result)
        return merge_reports([heard, failed_part([m for i, m in self.meters.items() if i not in self.heard], why)],
                             0.0)


@dataclass(eq=False)
class _Handle:
    """One worker process as the pool sees it."""

    index: int
    process: BaseProcess
    channel: Channel
    started: float
    alive: bool = True
    sent: dict[int, Meter] = field(default_factory=dict)  # the meters it holds: the objects sent
    slots_sent: set[BusAddress] = field(default_factory=set)
    pending: dict[int, _Pending] = field(default_factory=dict)  # by cycle
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int | None:
        return self.process.pid


class WorkerPool:
    """What Service uses of a Poller (`run_cycle`, `forget_except`, `close`), with the buses
    polled in `workers` processes. Made inside the running event loop; stop it with `aclose()`."""

    def __init__(self, readings: Readings, workers: int, max_parallel_endpoints: int = 256,
                 status_points: bool = True, fences: SharedFences | None = None,
                 log_level: int | None = None, counters_dir: str | None = None, event_loop: str = "auto") -> None:
        if workers < 1:
            raise ValueError("a WorkerPool needs at least one worker")
        self.readings = readings
        self.size = workers
        self.fences = fences
        self.options = WorkerOptions(
            max_parallel_endpoints=math.ceil(max_parallel_endpoints / workers), status_points=status_points,
            log_level=logging.getLogger().getEffectiveLevel() if log_level is None else log_level,
            fenced=fences is not None, counters_dir=counters_dir, event_loop=event_loop)
        self.shards = Shards(workers)
        self.restarts = 0
        self._loop = asyncio.get_running_loop()
        self._context = multiprocessing.get_context("spawn")
        self._cycles = itertools.count(1)
        self._meters: dict[int, Meter] = {}  # the configuration's meters (forget_except's): what workers hold
        self._closing = False
        self._young = [0] * workers  # per index: deaths in a row, each soon after its start
        self._restarting: set[asyncio.Task[None]] = set()
        self.workers: list[_Handle] = [self._start(i) for i in range(workers)]
        atexit.register(self.close)  # never leave a worker behind, whatever path the process exits by

    # --- the Poller's interface ---

    def forget_except(self, meters: Sequence[Meter]) -> None:
        """The configuration changed: each worker gets the meters of its buses that it does not
        hold yet (or holds an older version of) and forgets the others."""
        self._meters = {m.id: m for m in meters}
        self.shards.update(bus_weights(meters))
        mine: list[list[Meter]] = [[] for _ in self.workers]
        for meter in meters:
            mine[self.shards.worker(meter.bus.wire)].append(meter)
        held = {mid: h.index for h in self.workers for mid in h.sent}  # before any worker is told
        for handle, its in zip(self.workers, mine, strict=True):
            if handle.alive:
                moved = {m.id for m in its if held.get(m.id, handle.index) != handle.index}
                self._send_meters(handle, its, keep=True, moved=moved)

    def load_counter_history(self, files: Sequence[Path], meter_ids: Collection[int]) -> None:
        """Poller.load_counter_history, in the workers of the meters' buses (before their next cycle:
        the channel keeps the order)."""
        ids: dict[int, list[int]] = {}
        for mid in meter_ids:
            if (meter := self._meters.get(mid)) is not None:
                ids.setdefault(self.shards.worker(meter.bus.wire), []).append(mid)
        for index, its in ids.items():
            handle = self.workers[index]
            if handle.alive:
                handle.channel.send(("history", [os.fspath(f) for f in files], its))

    async def run_cycle(self, meters: Sequence[Meter]) -> CycleReport:
        """Poll the meters in their buses' workers; returns when every worker reported (or died, or
        was killed at the stop).
        Each meter's lines reach the outbox as soon as its worker sends them."""
        started = time.monotonic()
        cycle = next(self._cycles)
        groups: dict[int, list[Meter]] = {}
        for meter in meters:
            groups.setdefault(self.shards.worker(meter.bus.wire), []).append(meter)
        asked: list[tuple[_Handle, asyncio.Future[CycleReport]]] = []
        for index, group in groups.items():
            handle = self.workers[index]
            future: asyncio.Future[CycleReport] = self._loop.create_future()
            if not handle.alive:
                future.set_result(failed_part(group, f"worker {index} is being restarted"))
            else:
                handle.pending[cycle] = _Pending(future, {m.id: m for m in group})
                self._send_meters(handle, [m for m in group if handle.sent.get(m.id) is not m], keep=False)
                handle.channel.send(("run", cycle, [m.id for m in group]))
            asked.append((handle, future))
        try:
            parts = await asyncio.gather(*(f for _, f in asked))
        except asyncio.CancelledError:  # the service stops: the workers cancel the cycle too
            for handle, _ in asked:
                if handle.pending.pop(cycle, None) is not None and handle.alive:
                    handle.channel.send(("cancel", cycle))
            raise
        return merge_reports(parts, time.monotonic() - started)

    def close(self) -> None:
        """Immediate stop (atexit, errors): the channels close, workers exit; stragglers are killed.
        Blocking (up to about 2 s per worker that will not go); call it from the event loop's thread."""
        self._closing = True
        for task in self._restarting:
            task.cancel()
        for handle in self.workers:
            self._detach(handle, f"worker {handle.index} (pid {handle.pid}) was stopped", now=True)
        self._join_all()

    def _join_all(self) -> None:
        for handle in self.workers:
            handle.process.join(1.0)
            if handle.process.exitcode is None:
                handle.process.kill()
                handle.process.join(1.0)
        atexit.unregister(self.close)

    async def aclose(self, timeout_s: float = JOIN_S) -> None:
        """Stop: workers cancel what still runs (the service gave its cycles STOP_CYCLES_S already),
        send their last lines and exit; the lines are read until then. Stragglers are killed."""
        self._closing = True
        for task in list(self._restarting):
            task.cancel()
        await asyncio.gather(*self._restarting, return_exceptions=True)
        alive = [h for h in self.workers if h.alive]
        for handle in alive:
            handle.channel.send(("stop",))
        if alive:
            waiters = [asyncio.ensure_future(h.gone.wait()) for h in alive]
            _, late = await asyncio.wait(waiters, timeout=timeout_s)
            for waiter in late:
                waiter.cancel()
            stragglers = [h for h in alive if h.alive]
            if stragglers:
                log.warning("%d worker process(es) did not stop within %.0f s: killed", len(stragglers), timeout_s)
            for handle in stragglers:
                handle.process.kill()
        for handle in self.workers:  # the stragglers (the others detached themselves at their EOF)
            self._detach(handle, f"worker {handle.index} (pid {handle.pid}) did not stop: killed")
        await asyncio.to_thread(self._join_all)

    # --- inside ---

    def _start(self, index: int) -> _Handle:
        mine, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(target=worker_main, name=f"emm-poller-worker-{index}",
                                        args=(index, theirs, None if self.fences is None else self.fences.values,
                                              self.options))
        # SIGINT/SIGTERM blocked across the spawn: the child inherits the mask, so a Ctrl-C that reaches
        # the process group cannot kill it before it ignores them (worker_main)
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            theirs.close()
        channel = Channel(f"worker {index}", lambda message: self._received(handle, message),
                          lambda: self._lost(handle))
        handle = _Handle(index, process, channel, time.monotonic())
        channel.open(socket_of(mine))
        log.info("worker %d started: pid %s", index, process.pid)
        return handle

    def _send_meters(self, handle: _Handle, meters: list[Meter], keep: bool, moved: Collection[int] = ()) -> None:
        """Send the meters the worker does not hold yet, with their buses' fence slots. keep: `meters`
        are all the worker is to hold now (it forgets the others); else they are added. `moved`: of
        them, those another worker of this pool held (their counter history is in its state file;
        a meter that comes with a lease, from another instance, starts without: README)."""
        if keep:
            changed = [m for m in meters if handle.sent.get(m.id) is not m]
            handle.sent = {m.id: m for m in meters}
        else:
            changed = meters
            handle.sent.update((m.id, m) for m in meters)
        if not changed and not keep:
            return
        slots: dict[BusAddress, int] = {}
        if self.fences is not None:
            for bus in {m.bus for m in changed} - handle.slots_sent:
                slots[bus] = self.fences.slot(bus_key(bus))
            handle.slots_sent.update(slots)
        handle.channel.send(("meters", changed, slots, list(handle.sent) if keep else None, list(moved)))

    def _received(self, handle: _Handle, message: tuple[Any, ...]) -> None:
        """A message from a worker: lines to the outbox and their meters' results to their cycles,
        or a cycle's report."""
        if message[0] == "lines":
            _, lines, results = message
            if lines:
                self.readings.put(lines)
            for encoded in results:
                self._heard(handle, encoded)
        else:
            self._reported(handle, message)

    @staticmethod
    def _heard(handle: _Handle, encoded: tuple[int, int, tuple[Any, ...]]) -> None:
        """A meter's result, to the cycle the worker polled it for; that of a cycle given up
        (cancelled) is dropped, never given to another cycle."""
        pending = handle.pending.get(encoded[0])
        if pending is not None and encoded[1] in pending.meters:
            pending.heard[encoded[1]] = encoded

    def _reported(self, handle: _Handle, message: tuple[Any, ...]) -> None:
        _, cycle, counts, unknown = message
        pending = handle.pending.pop(cycle, None)
        if pending is None:
            return  # a cycle given up (cancelled)
        if counts is None:
            part = pending.part(f"worker {handle.index}: the cycle failed (see its log)")
        else:
            try:
                part = counted_report(counts, pending.results())
            except Exception:  # noqa: BLE001 - a bug: the meters not heard of count as failed, said loudly
                # (the counts, sent by the worker, did not fit this process's CycleReport)
                log.exception("worker %d: its report could not be read", handle.index)
                part = pending.part(f"worker {handle.index}: unreadable report")
            else:
                if unknown:
                    part = merge_reports([part, failed_part([pending.meters[i] for i in unknown if i in pending.meters],
                                                            f"worker {handle.index} did not hold the meter")], 0.0)
        if not pending.future.done():
            pending.future.set_result(part)

    def _detach(self, handle: _Handle, why: str, now: bool = False) -> None:
        """No more reading from the worker; its channel closes (`now`: at once, Channel.close). Its
        cycles under way end: the meters it did not send the result of fail (`why`), since nothing
        else would ever end them."""
        if not handle.alive:
            return
        handle.alive = False
        handle.channel.close(now)
        handle.gone.set()
        if not self._loop.is_closed():  # close() at exit: no one waits, and set_result would raise
            for pending in handle.pending.values():
                if not pending.future.done():
                    pending.future.set_result(pending.part(why))
        handle.pending.clear()

    def _lost(self, handle: _Handle) -> None:
        """EOF from a worker: it exited (asked to, or not). Its cycles under way are reported
        failed; unless the pool stops, a new worker takes its place."""
        if not handle.alive:
            return  # detached on purpose
        self._detach(handle, f"worker {handle.index} (pid {handle.pid}) died")
        if not self._closing:
            task = self._loop.create_task(self._restart(handle))
            self._restarting.add(task)
            task.add_done_callback(self._restarting.discard)

    async def _restart(self, dead: _Handle) -> None:
        code = await asyncio.to_thread(_reap, dead.process, 2.0)
        lived = time.monotonic() - dead.started
        young = self._young[dead.index] = self._young[dead.index] + 1 if lived < YOUNG_S else 0
        # the first death at once; a worker that keeps dying young (a bug at start) waits longer each time
        delay = RESTART_DELAYS_S[min(young - 1, len(RESTART_DELAYS_S) - 1)] if young else 0.0
        buses = sum(1 for i in self.shards.of.values() if i == dead.index)
        self.restarts += 1
        log.error("worker %d (pid %s) %s after %.1f s; a new worker takes over its %d bus(es)%s; the meters "
                  "of its cycles under way that it had not finished are reported failed, what it had sent is kept",
                  dead.index, dead.pid, describe_exit(code), lived, buses,
                  f" in {delay:g} s" if delay else " from the next tick")
        if delay:
            await asyncio.sleep(delay)
        if self._closing:
            return
        handle = self._start(dead.index)
        self.workers[dead.index] = handle
        its = [m for m in self._meters.values() if self.shards.worker(m.bus.wire) == dead.index]
        self._send_meters(handle, its, keep=True)


def _reap(process: BaseProcess, timeout_s: float) -> int | None:
    """The exit code of a worker whose channel closed; one that lingers is killed."""
    process.join(timeout_s)
    if process.exitcode is None:
        process.kill()
        process.join(timeout_s)
    return process.exitcode


def describe_exit(code: int | None) -> str:
    if code is None:
        return "closed its pipe and would not exit (killed)"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


# ---------------------------------------------------------------------------------------------
# Service's choice


def counter_guard(directory: str | os.PathLike[str] | None, name: str = "counters.json") -> CounterGuard:
    """The counter guard of one process: its state in `directory`/`name` (None: kept in memory only),
    started from the newest value of every counter in any counters*.json there, so a counter moved
    between the main process and a worker (POLL_WORKERS changed) keeps its history."""
    if directory is None:
        return CounterGuard()
    guard = CounterGuard(Path(directory) / name)
    guard.load(counter_files(directory))
    return guard


def counter_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Every process's counter state in `directory` (counters.json, counters-worker-N.json)."""
    return sorted(Path(directory).glob("counters*.json"))


def retire_counter_files(directory: str | os.PathLike[str], workers: int) -> None:
    """At a start, in the directory this service alone uses: the state files of processes this run
    does not have (POLL_WORKERS lowered, or set to or from 0) are merged into its first file, then
    removed. Left, they were read at every start and never written again: a counter only they
    held (a meter deleted since) came back each time, and held back its id's next first reading."""
    live = ["counters.json"] if workers <= 0 else [f"counters-worker-{i}.json" for i in range(workers)]
    files = counter_files(directory)
    orphans = [f for f in files if f.name not in live]
    if not orphans:
        return
    merged = CounterGuard(Path(directory) / live[0])
    merged.load(files)  # the newest value of every counter, in any file
    body = merged.snapshot(force=True)
    if body is not None and not merged.write(body):
        return  # logged; the files stay, and are tried again at the next start
    for path in orphans:
        with contextlib.suppress(OSError):
            path.unlink()
    log.info("counter state of %s merged into %s (POLL_WORKERS=%d)", ", ".join(p.name for p in orphans), live[0],
             workers)


def make_poller(readings: Readings, settings: Settings, status_points: bool = True,
                leases: Leases | None = None, counters_dir: str | os.PathLike[str] | None = None,
                ) -> Poller | WorkerPool:
    """POLL_WORKERS=0: today's in-process Poller; N: a pool of N worker processes. `counters_dir`:
    where the counter guard keeps its state (None: in memory only)."""
    if settings.workers <= 0:
        return Poller(readings, settings.max_parallel_endpoints, status_points=status_points,
                      fence=None if leases is None else leases.until, counters=counter_guard(counters_dir))
    return WorkerPool(readings, settings.workers, settings.max_parallel_endpoints, status_points=status_points,
                      fences=None if leases is None else leases.shared,
                      counters_dir=None if counters_dir is None else os.fspath(counters_dir),
                      event_loop=settings.event_loop)


async def close_poller(poller: Poller | WorkerPool) -> None:
    """Service's stop: a pool's workers stop and are joined; a Poller closes its connections."""
    if isinstance(poller, WorkerPool):
        await poller.aclose()
    else:
        poller.close()
