"""One poll cycle: plan -> read (all buses in parallel) -> decode -> hand the readings over.

The cycle never writes to InfluxDB itself: each meter's lines go to an outbox
(poller/outbox.py) the moment the meter is done, so a slow device or a slow
InfluxDB never holds up the readings of the others. Whatever happens inside one
meter's poll stays there: the meter is reported failed, the cycle goes on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .counters import CounterGuard, describe
from .decode import decode_block_values, plain_block_values
from .modbus import BUSY_CODES, SPLIT_CODES, ExceptionReply, ModbusError, NotOwner
from .model import BusAddress, Meter, ReadBlock, Register, Wire
from .plan import plan_device, split_block
from .sink import SeriesKeys, block_lines, reading_lines
from .transport import Bus, open_bus

log = logging.getLogger("poller")

BUSY_RETRIES = (0.1, 0.25, 0.5)  # seconds to wait before each retry of a busy device
_WAITS = (*BUSY_RETRIES, None)  # after each attempt at a request: the wait before the next, or none left
MAX_BACKOFF_CYCLES = 32  # a failing meter is tried at least every 33 cycles


class Readings(Protocol):
    """Where a meter's lines go once it is read (outbox.Outbox); never blocks."""

    def put(self, lines: Sequence[str]) -> None: ...


class InternalError(ModbusError):
    """A bug met while polling one meter: that meter fails, the cycle goes on."""

    kind = "internal"


@dataclass
class MeterResult:
    meter: Meter
    lines: list[str] = field(default_factory=list)
    readings: int = 0
    invalid: list[str] = field(default_factory=list)
    counter_rejects: list[str] = field(default_factory=list)  # counters.REASONS of readings held back
    requests: int = 0
    errors: int = 0  # requests that failed (timeouts, exception replies, broken replies)
    error: ModbusError | None = None
    backed_off: bool = False  # not polled this cycle: it kept failing
    handed_off: bool = False  # not (fully) polled: this instance's lease on the bus ended (lease.py)
    duration_s: float = 0.0
    time_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.backed_off and not self.handed_off


@dataclass
class CycleReport:
    meters_ok: int = 0
    meters_failed: int = 0
    meters_backed_off: int = 0
    meters_handed_off: int = 0  # left to the instance that holds their bus's lease now
    buses_busy: int = 0  # buses left out: still busy with an earlier cycle
    readings: int = 0
    invalid: int = 0
    requests: int = 0
    duration_s: float = 0.0
    results: list[MeterResult] = field(default_factory=list)

    def add(self, res: MeterResult) -> None:
        """One meter's result, counted."""
        self.results.append(res)
        self.requests += res.requests
        self.readings += res.readings
        self.invalid += len(res.invalid)
        if res.ok:
            self.meters_ok += 1
        elif res.backed_off:
            self.meters_backed_off += 1
        elif res.handed_off:
            self.meters_handed_off += 1
        else:
            self.meters_failed += 1

    def summary(self) -> str:
        text = (f"cycle: meters ok={self.meters_ok} failed={self.meters_failed} "
                f"backed_off={self.meters_backed_off} readings={self.readings} invalid={self.invalid} "
                f"requests={self.requests} duration={self.duration_s:.3f}s")
        if self.buses_busy:
            text += f" busy_endpoints_skipped={self.buses_busy}"  # the key bench/run.py reads
        if self.meters_handed_off:
            text += f" handed_off={self.meters_handed_off}"
        return text


class DeviceHealth:
    """Per meter: consecutive failures, back-off, and how failures are logged.

    The first failure is logged at ERROR, repeats at DEBUG, the recovery at
    INFO. After n failures in a row the meter sits out 2^(n-1) - 1 cycles
    (0, 1, 3, 7 ... capped at MAX_BACKOFF_CYCLES), so a dead device costs its
    gateway one timeout now and then instead of one every cycle.
    """

    def __init__(self) -> None:
        self._failures: dict[int, int] = {}
        self._skip: dict[int, int] = {}
        self._reported: set[tuple[int, str]] = set()

    def backing_off(self, meter: Meter) -> bool:
        """True when the meter sits this cycle out (and counts the cycle)."""
        left = self._skip.get(meter.id, 0)
        if left > 0:
            self._skip[meter.id] = left - 1
            return True
        return False

    def failed(self, meter: Meter, message: str) -> None:
        n = self._failures.get(meter.id, 0) + 1
        self._failures[meter.id] = n
        skip = min(2 ** (n - 1) - 1, MAX_BACKOFF_CYCLES)
        self._skip[meter.id] = skip
        if n == 1:
            log.error("%s failed: %s", meter, message)
        else:
            log.debug("%s failed %d times in a row: %s; skipping %d cycles", meter, n, message, skip)

    def ok(self, meter: Meter) -> None:
        n = self._failures.pop(meter.id, 0)
        self._skip.pop(meter.id, None)
        if n:
            log.info("%s recovered after %d failed cycles", meter, n)

    def once(self, meter: Meter, message: str) -> None:
        """A problem worth one WARNING per meter, not one per cycle."""
        if (meter.id, message) not in self._reported:
            self._reported.add((meter.id, message))
            log.warning("%s: %s", meter, message)

    def forget_except(self, meter_ids: set[int]) -> None:
        for table in (self._failures, self._skip):
            for mid in [m for m in table if m not in meter_ids]:
                del table[mid]
        self._reported = {r for r in self._reported if r[0] in meter_ids}


class Poller:
    """Keeps connections, learned plans and device state from cycle to cycle.

    A bus (a host:port for the TCP kinds, a device path for serial) is polled one
    request at a time; different buses in parallel. `connect` makes the client of
    a bus (transport.open_bus; the seam tests give a fake bus through): the cycle
    itself never builds clients.
    """

    def __init__(self, readings: Readings, max_parallel_endpoints: int = 256, status_points: bool = True,
                 connect: Callable[[BusAddress], Bus] = open_bus,
                 fence: Callable[[BusAddress], float] | None = None, counters: CounterGuard | None = None,
                 on_done: Callable[[MeterResult], None] | None = None) -> None:
        self.readings = readings
        # on_done(result): a meter's poll is over and its lines were handed over, for every result the
        # cycle's report will hold (workers.py: each travels with its lines, so a worker that dies later
        # has still reported it, and its cycle's report carries only the counts)
        self.on_done = on_done
        self.status_points = status_points  # write a poller_status point per meter and cycle
        self.connect = connect
        # fence(bus): the monotonic time this instance's right to poll the bus ends (lease.py), read
        # by the bus just before each request; None: one poller, no end
        self.fence = fence
        # counters.py: a counter reading that cannot be true is not written; None: no guard (tests)
        self.counters = counters
        self.buses: dict[BusAddress, Bus] = {}
        self._plans: dict[int, tuple[Meter, tuple[ReadBlock, ...]]] = {}
        self.keys = SeriesKeys()
        self.health = DeviceHealth()
        self.max_parallel_endpoints = max_parallel_endpoints
        self._gate: asyncio.Semaphore | None = None
        # the wires (BusAddress.wire) with a poll under way: a bus described anew (its transport
        # or serial settings changed) is the same wire, and waits until the old poll is over
        self._busy: set[Wire] = set()
        self._busy_reported: set[BusAddress] = set()
        self._crashed: set[int] = set()  # meters whose internal error was logged with its traceback

    def plan_for(self, meter: Meter) -> tuple[ReadBlock, ...]:
        cached = self._plans.get(meter.id)
        if cached is not None and cached[0] is meter:
            return cached[1]
        blocks = plan_device(meter.device_type)
        self._plans[meter.id] = (meter, blocks)
        return blocks

    def forget_except(self, meters: Sequence[Meter]) -> None:
        """Drop connections, plans and keys of meters no longer configured."""
        ids = {m.id for m in meters}
        for mid in [m for m in self._plans if m not in ids]:
            del self._plans[mid]
        self.keys.forget_except(ids)
        self.health.forget_except(ids)
        if self.counters is not None:
            self.counters.forget_except(ids)
        self._crashed &= ids
        wanted = {m.bus for m in meters}
        for address in [a for a in self.buses if a not in wanted]:
            bus = self.buses.pop(address)
            if address.wire not in self._busy:  # one being polled: its request in flight may still be
                bus.close()                 # answered (a bus given back keeps its lease for that);
                                            # _poll_bus closes it when its poll ends

    def load_counter_history(self, files: Sequence[Path], meter_ids: Collection[int]) -> None:
        """Meters whose bus this poller has just taken from another (POLL_COORDINATION=postgres): their
        counters' last values, the newest in `files` (every poller's state on this volume), so the
        first reading here is checked like any other (counters.py)."""
        if self.counters is not None and meter_ids:
            self.counters.load(files, set(meter_ids))

    def close(self) -> None:
        for bus in self.buses.values():
            bus.close()
        self.buses.clear()
        if self.counters is not None:
            self.counters.save(force=True)

    async def run_cycle(self, meters: Sequence[Meter]) -> CycleReport:
        """Poll the meters, every bus in parallel; returns when all are read and handed over.

        A bus still busy with an earlier cycle (a slow or hung device) is left
        out of this one and counted, so no device is ever polled by two cycles
        at once and no device delays another.
        """
        started = time.monotonic()
        if self._gate is None:
            self._gate = asyncio.Semaphore(self.max_parallel_endpoints)
        by_bus: dict[BusAddress, list[Meter]] = {}
        for meter in meters:
            by_bus.setdefault(meter.bus, []).append(meter)
        report = CycleReport()
        busy = [k for k in by_bus if k.wire in self._busy]
        if busy:
            skipped = sum(len(by_bus.pop(k)) for k in busy)
            report.buses_busy = len(busy)
            fresh = [k for k in busy if k not in self._busy_reported]
            self._busy_reported.update(busy)
            names = ", ".join(str(a) for a in (fresh or busy)[:5]) + (" ..." if len(busy) > 5 else "")
            log.log(logging.WARNING if fresh else logging.DEBUG,
                    "%d bus(es) still busy with an earlier cycle (%s): their %d meter(s) skip this tick",
                    len(busy), names, skipped)
        for address in by_bus:  # claimed now, before any await: a concurrent cycle sees them busy
            self._busy.add(address.wire)
        groups = await asyncio.gather(*(self._poll_bus(a, g) for a, g in by_bus.items()))
        for results in groups:
            for res in results:
                report.add(res)
        report.duration_s = time.monotonic() - started
        if self.counters is not None and (state := self.counters.snapshot()) is not None:
            await asyncio.to_thread(self.counters.write, state)  # at most every counters.SAVE_EVERY_S
        return report

    async def _poll_bus(self, address: BusAddress, meters: list[Meter]) -> list[MeterResult]:
        """Every meter on one bus, one request at a time."""
        assert self._gate is not None
        results: list[MeterResult] = []
        bus: Bus | None = None
        try:
            async with self._gate:
                bus = self.buses.get(address)
                if bus is None:
                    bus = self.buses[address] = self.connect(address)
                # the bus's meters share its connection: it waits the longest pause any of them needs
                connect_pause = max(m.device_type.connect_pause_s for m in meters)
                fence = None if self.fence is None else functools.partial(self.fence, address)
                loop = asyncio.get_running_loop()
                for i, meter in enumerate(meters):
                    result, read = await self._poll_one(bus, meter, connect_pause, fence)
                    results.append(result)
                    # Decoded once the next meter's request is on its way: the bus's next request goes out
                    # the moment this reply is in, and the decoding fills the wait for the next reply (a
                    # callback scheduled now runs after the steps already due, e.g. other buses' replies).
                    loop.call_soon(self._finish, meter, result, read)
                    if result.handed_off:
                        # the lease ended: what was read before is kept; the bus's other meters and
                        # their status points are the new owner's
                        for other in meters[i + 1:]:
                            results.append(left := MeterResult(other, handed_off=True, time_ms=result.time_ms))
                            self._done(left)
                        break
                if any(m.device_type.close_after_poll for m in meters):
                    bus.close()  # the quirk of devices that allow one client: the next poll reconnects
                await asyncio.sleep(0)  # the last _finish runs before the bus counts as done
        finally:
            self._busy.discard(address.wire)
            if bus is not None and self.buses.get(address) is not bus:
                bus.close()  # dropped from the configuration while it was being polled
        if all(r.ok for r in results):  # healthy again: a new busy streak is worth a WARNING
            self._busy_reported.discard(address)
        return results

    async def _poll_one(self, bus: Bus, meter: Meter, connect_pause: float, fence: Callable[[], float] | None,
                        ) -> tuple[MeterResult, list[tuple[ReadBlock, list[int], int]]]:
        """Read one meter (not decoded yet: `_finish`); its health follows the outcome."""
        read: list[tuple[ReadBlock, list[int], int]] = []
        started = time.monotonic()
        if self.health.backing_off(meter):
            return MeterResult(meter, backed_off=True, time_ms=time.time_ns() // 1_000_000), read
        result = MeterResult(meter, time_ms=time.time_ns() // 1_000_000)
        try:
            await self._read_blocks(bus, meter, result, read, connect_pause, fence)
        except asyncio.CancelledError:
            # the service is stopping: what was read so far is handed over before the cancellation goes on
            result.duration_s = time.monotonic() - started
            self._decode(meter, result, read)
            self.readings.put(result.lines)
            raise
        except Exception as exc:  # a bug: contained to this meter, logged with its traceback once
            self._crashed_while(meter, exc, result)
            read.clear()
            bus.close()  # its state is unknown now
        result.duration_s = time.monotonic() - started
        if isinstance(result.error, NotOwner):
            result.error, result.handed_off = None, True  # not the device's failure
        elif result.ok:
            self.health.ok(meter)
        else:
            self.health.failed(meter, str(result.error))
        return result, read

    def _crashed_while(self, meter: Meter, exc: Exception, result: MeterResult) -> None:
        if meter.id not in self._crashed:
            self._crashed.add(meter.id)
            log.error("%s: internal error while polling (a bug; please report it)", meter, exc_info=exc)
        result.error = InternalError(f"internal error: {type(exc).__name__}: {exc}")

    def _finish(self, meter: Meter, result: MeterResult, read: list[tuple[ReadBlock, list[int], int]]) -> None:
        """Decode what was read, add the status point, hand the meter's lines over (never raises: a
        callback's exception would only reach the event loop's log)."""
        try:
            self._decode(meter, result, read)
        except Exception as exc:  # a bug: this meter fails, the others go on
            self._crashed_while(meter, exc, result)
            result.lines, result.readings = [], 0
            self.health.failed(meter, str(result.error))
        if self.status_points and not result.handed_off:
            result.lines.append(self.keys.status_line(meter, result))
        self.readings.put(result.lines)
        self._done(result)

    def _done(self, result: MeterResult) -> None:
        if self.on_done is not None:
            self.on_done(result)

    async def _read_blocks(self, bus: Bus, meter: Meter, result: MeterResult,
                           read: list[tuple[ReadBlock, list[int], int]], connect_pause: float,
                           fence: Callable[[], float] | None) -> None:
        queue = list(self.plan_for(meter))
        kept: list[ReadBlock] = []
        split = False
        i = 0
        while i < len(queue):
            block = queue[i]
            i += 1
            try:
                words = await self._read(bus, meter, block, result, connect_pause, fence)
            except ExceptionReply as exc:
                if exc.code in SPLIT_CODES and len(block.registers) > 1:
                    queue[i:i] = split_block(block)  # read both halves next
                    split = True
                    continue
                if exc.code in SPLIT_CODES:
                    reg = block.registers[0]
                    self.health.once(meter, f"register {reg.measurement} at {reg.address} "
                                            f"(fc{int(reg.function_code)}) is refused: {exc}")
                    result.invalid.append(f"{reg.measurement}: refused by the device")
                    kept.append(block)
                    continue
                result.error = exc
                return
            except ModbusError as exc:
                result.error = exc
                return
            read.append((block, words, time.time_ns() // 1_000_000))
            kept.append(block)
        if split:
            # Remember the split so later cycles do not pay for it again.
            self._plans[meter.id] = (meter, tuple(kept))
            log.info("%s: read plan adjusted to %d requests after the device refused a block", meter, len(kept))

    def _decode(self, meter: Meter, result: MeterResult, read: list[tuple[ReadBlock, list[int], int]]) -> None:
        guarded = self.counters is not None and meter.device_type.has_counters
        if not guarded and (plain := plain_block_values([(block, words) for block, words, _ in read])) is not None:
            lines: list[str] = []  # most meters' reads: every value plain and finite, nothing to check
            for (block, _, time_ms), block_values in zip(read, plain, strict=True):
                lines += block_lines(self.keys.prefixes(meter, block), block_values, time_ms)
            result.lines = lines
            result.readings = len(lines)
            return
        prefixes = self.keys.line_prefixes(meter)
        values, invalid = decode_block_values([(block, words) for block, words, _ in read])
        result.invalid.extend(invalid)
        times_ms = [time_ms for _, _, time_ms in read]
        if guarded:
            assert self.counters is not None
            values = self._guard(self.counters, meter, result, values, times_ms)
        result.lines = reading_lines(prefixes, values, times_ms)
        result.readings = len(result.lines)

    @staticmethod
    def _guard(counters: CounterGuard, meter: Meter, result: MeterResult,
               values: list[tuple[int, Register, float]], times_ms: list[int]) -> list[tuple[int, Register, float]]:
        """The values to write: a counter reading the guard holds back is counted with its reason.
        Only the counters are looked at; the list is copied only when one is held back."""
        held: set[int] = set()
        for item in [item for item in values if item[1].counter]:
            index, reg, value = item
            reason = counters.check(meter, reg, value, times_ms[index])
            if reason is not None:
                held.add(id(item))
                result.counter_rejects.append(reason)
                result.invalid.append(f"{reg.measurement}: counter {describe(reason)} ({value!r})")
        return [item for item in values if id(item) not in held] if held else values

    async def _read(self, bus: Bus, meter: Meter, block: ReadBlock, result: MeterResult,
                    connect_pause: float, fence: Callable[[], float] | None) -> list[int]:
        dtype = meter.device_type
        for attempt, backoff in enumerate(_WAITS):
            result.requests += 1
            try:
                return await bus.read(block, meter.slave_address, dtype.timeout_s, pause=dtype.request_pause_s,
                                      connect_pause=connect_pause, fence=fence)
            except NotOwner as exc:
                if not exc.sent:
                    result.requests -= 1  # not sent (one sent late counts, as it reached the device)
                raise
            except ModbusError as exc:
                result.errors += 1
                if not isinstance(exc, ExceptionReply) or exc.code not in BUSY_CODES or backoff is None:
                    raise
                log.debug("%s busy (attempt %d), retrying %s in %.2f s", meter, attempt + 1, block, backoff)
                await asyncio.sleep(backoff)
        raise AssertionError("unreachable")
