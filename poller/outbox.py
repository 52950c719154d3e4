"""Outbox: every reading handed over reaches InfluxDB once and in order, or is counted as lost.

One queue, memory in front of disk, one sender:

    put(lines) -> memory: batches of up to batch_points lines -> sender thread -> InfluxDB
                     `-> spooler thread -> Spool (disk) -> sender thread -'

- put() is called from the asyncio loop. It only takes a lock that is never held across
  disk or network I/O, so it never waits for either.
- The sender sends oldest first: from the spool while it holds anything, else from memory.
  A memory batch goes when it is full, linger_s after its first line, or at flush(); while
  a cycle holds the outbox (hold()/release(), at most hold's `seconds`), memory batches wait
  for the cycle to end, unless memory is more than half full, so writing (and InfluxDB's
  work on what is written, on a shared host) does not compete with reading.
  While the spool is empty and InfluxDB answers, the disk is not touched.
- The spooler moves the oldest memory batches to the spool when memory holds more than
  memory_points (InfluxDB slower than the readings arrive), during an outage (a write failed
  retryably: each batch goes as soon as it is formed, so none waits in memory, where a
  crash would lose it), and at close.
  Before anything else it writes ahead the batch the sender has in flight from memory; if
  that write then succeeds its records are acknowledged, if it fails they are sent first.
  So the spool always holds the older part and memory the newer part: readings reach
  InfluxDB in the order put() got them.
- When the spool cannot take a batch (read-only, I/O error; a full disk first evicts the
  oldest spooled readings), the batch stays in memory and the spool is tried again after
  2, 4, 8 ... s. Memory never holds more than twice memory_points: past that the oldest
  points in memory are dropped, counted (with a working disk only a burst faster than the
  spooler could get there).
- adopt(spool): a spool directory no running poller holds (a replica gone, POLL_COORDINATION
  changed) is sent by this sender too, then closed: while this outbox's own spool is empty,
  its batches and memory's take turns (a large one keeps no new reading waiting); its
  rejected batches go to this outbox's dead-letter file. The order between its readings and
  this outbox's is not kept (each reading carries its time). At close what is left in it
  stays there, for whoever takes it next.
- close(): memory and the batch in flight go to the spool, then the sender has up to
  close_timeout_s to send; the rest stays on disk. A hung request cannot hold it: the
  sender is a daemon thread, and what it has in flight is on disk (at worst sent twice).

InfluxDB's answers: 2xx written; connection errors, timeouts, 5xx, 408 and 429 are an
outage, retried after retry_initial_s, doubling up to retry_max_s, where a Retry-After is
honoured but kept between the current step and retry_max_s; any other 4xx sends the batch
to the dead-letter file (or, if that cannot be written, drops it, counted). Without a spool
(--once, --dry-run) nothing is retried: a batch that fails is counted as failed.

Every loss is counted in stats() by reason and logged once per streak, never per batch.
Nothing raises out of put(), flush(), close() or the threads.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .sink import WriteError
from .spool import Batch, Spool

log = logging.getLogger(__name__)


class BatchSink(Protocol):
    """Where batches go: InfluxSink (raises WriteError, retryable or not) or StdoutSink."""

    url: str

    def write(self, lines: Sequence[str]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class OutboxStats:
    """Counters since start (points unless named otherwise), and what waits now."""

    written_points: int = 0  # accepted by InfluxDB, straight from memory or from the spool
    spooled_points: int = 0  # put in the spool
    replayed_points: int = 0  # sent from the spool (part of written_points)
    dead_lettered_points: int = 0  # rejected for good, kept in dead-letter.jsonl
    dropped_points: int = 0  # lost: the sum of the four below
    dropped_spool_full_points: int = 0  # evicted for room: POLL_SPOOL_MAX_MB or a full disk
    dropped_disk_error_points: int = 0  # damaged or unreadable in the spool; not spoolable at stop
    dropped_dead_letter_points: int = 0  # rejected for good, and the dead-letter file could not take them
    dropped_memory_points: int = 0  # oldest in memory, past twice memory_points
    failed_points: int = 0  # not written, no spool to keep them (--once, --dry-run), or put after close
    damaged_records: int = 0  # spool records found damaged, cut short or unreadable
    skipped_spool_files: int = 0  # entries in the spool directory left alone (not a readable segment)
    memory_points: int = 0  # waiting in memory (in flight included)
    spool_points: int = 0  # waiting in the spool
    spool_bytes: int = 0  # size of the spool on disk


@dataclass(eq=False)
class _Chunk:
    """A batch in memory: lines put one after the other."""

    lines: list[str]
    born: float  # time.monotonic() of its first line
    first: int  # points put before its first line (flush() waits by this number)
    spilling: bool = False  # being written to the spool
    ahead: Batch | None = None  # in flight: its records written ahead to the spool
    ahead_lines: int = 0  # of its lines, dealt with by the spool (stored, or dropped and counted)
    ahead_tried: bool = False


@dataclass
class _Outage:
    since: float  # time.monotonic()
    retry_after_logged: bool = False


@dataclass
class _Backlog:
    """The spool holds readings: from its first, until it is drained."""

    since: float
    cause: str  # for the "spool drained" line: "the first failure", "the first spill", "the stop", "the start"
    earlier_run: bool = False
    answered: bool = False


_SPOOL = object()  # the sender's next job: the oldest records in the spool


class Outbox:
    def __init__(self, sink: BatchSink, spool: Spool | None, *, batch_points: int = 5000, linger_s: float = 0.25,
                 memory_points: int = 100_000, retry_initial_s: float = 2.0, retry_max_s: float = 60.0,
                 close_timeout_s: float = 5.0) -> None:
        self.sink, self.spool = sink, spool
        self.url = sink.url
        self.batch_points = max(1, batch_points)
        self.linger_s = linger_s
        self.memory_points = max(1, memory_points)
        self.memory_hard_points = 2 * self.memory_points
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = max(retry_max_s, retry_initial_s)
        self.close_timeout_s = close_timeout_s
        self._cond = threading.Condition()  # guards everything below; never held across I/O
        self._logs: list[tuple[int, str, tuple[object, ...]]] = []  # written once the lock is released
        self._streaks: set[str] = set()
        self._memory: deque[_Chunk] = deque()
        self._memory_points = 0  # in self._memory
        self._put_total = 0
        self._flush_upto = 0
        self._holders = 0  # cycles under way that asked memory batches to wait (hold)
        self._held_until = 0.0  # time.monotonic() at which they go anyway
        self._hold_started = 0.0  # time.monotonic() of the first hold of the cycles under way
        self._inflight: _Chunk | None = None  # the sender's memory batch
        self._spilling: _Chunk | None = None  # the spooler's memory batch
        self._delay = retry_initial_s
        self._next_attempt = 0.0  # time.monotonic() before which InfluxDB is left alone
        self._outage: _Outage | None = None
        self._backlog: _Backlog | None = None
        self._disk_delay = retry_initial_s
        self._disk_retry_at = 0.0
        self._closing = False
        self._stopped = False
        self._close_deadline = float("inf")
        self._sender_done = False
        self._sender_gave_up = False
        self._spill_done = spool is None
        self._spill_gave_up = False
        self._written = self._spooled = self._replayed = self._dead_lettered = 0
        self._dropped_disk = self._dropped_dead_letter = self._dropped_memory = self._failed = 0
        self._adopted: deque[Spool] = deque()  # spools taken over (adopt), sent after the own one
        self._adopted_kept: list[Spool] = []  # sent, but held until close (Spool.remembers_acks)
        self._adopted_turn = False  # the sender's last batch was a taken-over one: memory's turn
        self._adopted_damaged_records = self._adopted_damaged_points = 0  # of those done with
        if spool is not None and spool.pending_records:
            self._backlog = _Backlog(time.monotonic(), "the start", earlier_run=True)
        self._sender = threading.Thread(target=self._send_loop, name="outbox-sender", daemon=True)
        self._spooler = None
        if spool is not None:
            self._spooler = threading.Thread(target=self._spool_loop, name="outbox-spooler", daemon=True)
            self._spooler.start()
        self._sender.start()

    # ---- the caller's side -------------------------------------------------------

    def put(self, lines: Sequence[str]) -> None:
        """Hand over lines (from the event loop); returns at once. Thread-safe; never raises."""
        if not lines:
            return
        try:
            with self._cond:
                self._put(lines)
        except Exception:  # noqa: BLE001 - a bug here must not stop the cycle
            log.exception("outbox: handing over %d points failed", len(lines))
        self._emit()

    def hold(self, seconds: float) -> None:
        """A cycle starts: memory batches wait until it calls release(), for at most `seconds`
        from now, unless memory is more than half full. Thread-safe; never raises.

        Cycles that overlap (a hung device keeps one running into the next ticks) do not
        push the wait on: it ends at most `seconds` after the first of them started (the
        first hold since none was under way), not `seconds` after the latest."""
        with self._cond:
            if not self._holders:
                self._hold_started = time.monotonic()
            self._holders += 1
            self._held_until = max(self._held_until, self._hold_started + seconds)

    def release(self) -> None:
        """The cycle that called hold() is over (however it ended)."""
        with self._cond:
            self._holders = max(0, self._holders - 1)
            if not self._holders:
                self._held_until = 0.0
            self._cond.notify_all()

    def adopt(self, spool: Spool) -> bool:
        """Send what waits in `spool`, a directory no running poller holds, then close it. Thread-safe.

        Its batches go while this outbox's own spool is empty, taking turns with memory's. False
        (the caller still has it) without a spool of its own (--once, --dry-run) or once closing."""
        with self._cond:
            if self.spool is None or self._closing:
                return False
            self._adopted.append(spool)
            if spool.pending_points:
                self._say(logging.INFO, "spool: %d points wait in %s, which no running instance holds (a replica "
                          "gone, or POLL_COORDINATION changed): this instance sends them", spool.pending_points,
                          spool.dir)
            self._cond.notify_all()
        self._emit()
        return True

    def _put(self, lines: Sequence[str]) -> None:
        n = len(lines)
        if self._closing:
            self._failed += n
            self._once("after-close", logging.ERROR, "%d points handed over after the outbox was closed: not "
                       "written (counted in emm_points_not_written_total)", n)
            return
        now = time.monotonic()
        wake = False
        i = 0
        while i < n:
            tail = self._memory[-1] if self._memory else None
            if tail is None or len(tail.lines) >= self.batch_points:
                tail = _Chunk([], now, self._put_total + i)
                self._memory.append(tail)
                wake = True  # a new batch: the sender starts its linger
            part = lines[i:i + self.batch_points - len(tail.lines)]
            tail.lines.extend(part)
            i += len(part)
            wake = wake or len(tail.lines) >= self.batch_points
        self._put_total += n
        self._memory_points += n
        if self._memory_points > self.memory_points:
            wake = True
            if self._memory_points > self.memory_hard_points:
                self._drop_oldest()
        if wake:
            self._cond.notify_all()

    def _drop_oldest(self) -> None:
        excess = self._memory_points - self.memory_hard_points
        dropped = 0
        while excess > 0 and self._memory:
            head = self._memory[0]
            k = min(excess, len(head.lines))
            if k == len(head.lines):
                self._memory.popleft()
            else:
                del head.lines[:k]
                head.first += k
            excess -= k
            dropped += k
        self._memory_points -= dropped
        self._dropped_memory += dropped
        why = (f"the spool at {self.spool.dir} cannot take them" if self.spool is not None
               else f"InfluxDB at {self.url} takes them slower than they arrive and there is no spool")
        self._once("memory", logging.ERROR, "more than %d points wait in memory (twice the outbox's bound) because "
                   "%s: dropped the oldest %d, %d since start (further drops are counted and logged at DEBUG "
                   "until memory is back under %d)", self.memory_hard_points, why, dropped, self._dropped_memory,
                   self.memory_points)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything put so far is in InfluxDB, in the spool, or counted as lost.

        True when that happened within timeout (seconds; None waits as long as it takes).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._put_total
            self._flush_upto = max(self._flush_upto, target)
            self._cond.notify_all()
            while not self._settled(target):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _settled(self, target: int) -> bool:
        if self._memory and self._memory[0].first < target:
            return False
        if self._spilling is not None and self._spilling.first < target:
            return False
        b = self._inflight
        return b is None or b.first >= target or b.ahead_lines >= len(b.lines)

    def close(self) -> None:
        """Stop: memory and the batch in flight go to the spool, then up to close_timeout_s of sending.

        What is not sent by then stays in the spool for the next start. Returns within about
        close_timeout_s plus the disk's time, even when InfluxDB hangs. Never raises.
        """
        try:
            self._close()
        except Exception:  # noqa: BLE001 - stopping must go on
            log.exception("outbox: closing failed")
        self._emit()

    def _close(self) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._next_attempt = 0.0  # one more try now, whatever the back-off
            self._cond.notify_all()
        if self._spooler is not None:
            self._spooler.join()  # the disk's time: everything in memory goes to the spool
        self._emit()
        with self._cond:
            self._close_deadline = time.monotonic() + self.close_timeout_s
            self._cond.notify_all()
            while not self._sender_done:
                left = self._close_deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._stopped = True  # a sender still waiting for InfluxDB is left behind (a daemon thread)
            self._cond.notify_all()
            lost = sum(len(c.lines) for c in self._memory)
            b = self._inflight
            if b is not None:
                lost += len(b.lines) - b.ahead_lines
            self._memory.clear()
            self._memory_points = 0
            self._inflight = None
            if lost and self.spool is not None:
                self._dropped_disk += lost
                self._say(logging.ERROR, "stopping: %d points could neither be sent to %s nor put in the spool "
                          "at %s; they are lost", lost, self.url, self.spool.dir)
            elif lost:
                self._failed += lost
                self._say(logging.ERROR, "stopping: %d points not written to %s", lost, self.url)
        self._emit()
        if self.spool is not None:
            if self.spool.pending_points:
                log.warning("stopping with %d points in the spool at %s; they are sent at the next start",
                            self.spool.pending_points, self.spool.dir)
            self.spool.close()
        with self._cond:
            adopted = list(self._adopted) + self._adopted_kept
        for other in adopted:
            if other.pending_points:
                log.warning("stopping with %d points left in %s (taken over, not sent yet); they wait there for the "
                            "next instance", other.pending_points, other.dir)
            other.close()
        try:
            self.sink.close()
        except Exception as exc:  # noqa: BLE001
            log.warning("closing the connection to %s: %s", self.url, exc)

    def stats(self) -> OutboxStats:
        """Counters for /metrics; cheap, never waits for the disk."""
        with self._cond:
            memory = self._memory_points + (len(self._spilling.lines) if self._spilling is not None else 0)
            if self._inflight is not None:
                memory += len(self._inflight.lines) - self._inflight.ahead_lines
            written, spooled, replayed, dead = self._written, self._spooled, self._replayed, self._dead_lettered
            disk, dead_letter, mem = self._dropped_disk, self._dropped_dead_letter, self._dropped_memory
            failed = self._failed
            damaged = self._adopted_damaged_records
            disk += self._adopted_damaged_points
            spools = ([] if self.spool is None else [self.spool]) + list(self._adopted) + self._adopted_kept
        full = sum(sp.evicted_points for sp in spools)
        disk += sum(sp.damaged_points for sp in spools)
        return OutboxStats(
            written_points=written, spooled_points=spooled, replayed_points=replayed, dead_lettered_points=dead,
            dropped_points=full + disk + dead_letter + mem, dropped_spool_full_points=full,
            dropped_disk_error_points=disk, dropped_dead_letter_points=dead_letter, dropped_memory_points=mem,
            failed_points=failed, damaged_records=damaged + sum(sp.damaged_records for sp in spools),
            skipped_spool_files=sum(sp.skipped_files for sp in spools), memory_points=memory,
            spool_points=sum(sp.pending_points for sp in spools), spool_bytes=sum(sp.size_bytes for sp in spools))

    # ---- logging: decided under the lock, written after ---------------------------

    def _say(self, level: int, msg: str, *args: object) -> None:
        self._logs.append((level, msg, args))

    def _once(self, key: str, level: int, msg: str, *args: object) -> None:
        """A problem: logged at `level` when its streak starts, at DEBUG while it goes on."""
        self._say(logging.DEBUG if key in self._streaks else level, msg, *args)
        self._streaks.add(key)

    def _end(self, key: str) -> bool:
        """The streak is over; True when there was one."""
        if key in self._streaks:
            self._streaks.discard(key)
            return True
        return False

    def _emit(self) -> None:
        with self._cond:
            logs, self._logs = self._logs, []
        for level, msg, args in logs:
            log.log(level, msg, *args)

    # ---- the sender ------------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            try:
                job = self._next_job()
                self._emit()
                if job is None:
                    return
                if job is _SPOOL:
                    assert self.spool is not None
                    self._send_spooled(self.spool)
                elif isinstance(job, Spool):  # one taken over (adopt)
                    self._send_spooled(job)
                elif isinstance(job, _Chunk):
                    self._send_chunk(job)
            except Exception:  # noqa: BLE001 - the sender must outlive a bug
                log.exception("outbox sender: unexpected error; going on in 1 s")
                time.sleep(1)
            self._emit()

    def _next_job(self) -> object | None:
        with self._cond:
            while True:
                if self._stopped:
                    return None
                now = time.monotonic()
                if self._closing and (self._sender_gave_up or now >= self._close_deadline or (
                        not self._memory and self._spilling is None and self._spill_done
                        and (self.spool is None or not self.spool.pending_records))):
                    self._sender_done = True
                    self._cond.notify_all()
                    return None
                if now < self._next_attempt:
                    self._cond.wait(self._next_attempt - now)
                    continue
                if self.spool is not None and self.spool.pending_records:
                    return _SPOOL
                if self._adopted and not self._closing:  # left on disk at close
                    # taken-over and memory batches take turns: a large one keeps no new reading waiting
                    if not (self._adopted_turn and self._memory and self._spilling is None
                            and self._ready_at(self._memory[0]) <= now):
                        self._adopted_turn = True
                        return self._adopted[0]
                if self._spilling is not None:  # older readings are on their way to the spool
                    self._cond.wait()
                    continue
                if not self._memory:
                    self._cond.wait()
                    continue
                head = self._memory[0]
                ready = self._ready_at(head)
                if ready > now:
                    self._cond.wait(ready - now)
                    continue
                self._memory.popleft()
                self._adopted_turn = False
                self._memory_points -= len(head.lines)
                if self._memory_points <= self.memory_points:
                    self._end("memory")
                self._inflight = head
                self._cond.notify_all()
                return head

    def _ready_at(self, chunk: _Chunk) -> float:
        if self._closing or chunk.first < self._flush_upto:
            return 0.0
        ready = 0.0 if len(chunk.lines) >= self.batch_points else chunk.born + self.linger_s
        if self._holders and self._memory_points <= self.memory_points // 2:
            ready = max(ready, self._held_until)  # a cycle is reading: after it (or the hold's end)
        return ready

    def _write(self, lines: Sequence[str]) -> WriteError | None:
        try:
            self.sink.write(lines)
        except WriteError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - a sink that raises something else: retried like an outage
            log.debug("writing to %s", self.url, exc_info=True)
            return WriteError(f"writing {len(lines)} points to {self.url} failed ({type(exc).__name__}: {exc})", True)
        return None

    def _send_chunk(self, chunk: _Chunk) -> None:
        error = self._write(chunk.lines)
        now = time.monotonic()
        ack: Batch | None = None
        release: Batch | None = None
        reject = False
        with self._cond:
            while chunk.spilling:  # its write-ahead is under way: settle after it
                self._cond.wait()
            if self._stopped:
                return  # close() counted it; its records written ahead are on disk
            self._inflight = None
            n = len(chunk.lines)
            if error is None:
                self._answered(now)
                self._written += n
                ack = chunk.ahead
            elif self.spool is None:
                self._failed += n
                if self._closing:
                    self._sender_gave_up = True
                self._once("failed", logging.ERROR, "%s; without a spool (--once, --dry-run) nothing is retried "
                           "(later failures are logged at DEBUG)", error)
            elif error.retryable:
                release = chunk.ahead
                rest = chunk.lines[chunk.ahead_lines:]
                if rest:  # back to the front, oldest first
                    self._memory.appendleft(_Chunk(rest, chunk.born, chunk.first + chunk.ahead_lines))
                    self._memory_points += len(rest)
                self._failed_retryably(error, now)
            else:
                reject, ack = True, chunk.ahead
            self._cond.notify_all()
        if release is not None and self.spool is not None:
            self.spool.release(release)
        if reject and error is not None:
            self._reject(chunk.lines, error, spooled=False)
        if ack is not None and self.spool is not None:
            self.spool.ack(ack)
        if error is None:
            self._check_drained()

    def _send_spooled(self, spool: Spool) -> None:
        """The oldest records of `spool`: this outbox's own, or one taken over (adopt)."""
        batch = spool.peek(self.batch_points)
        if batch is None:
            if spool is not self.spool:
                self._adopted_done(spool)
            self._check_drained()
            return
        error = self._write(batch.lines)
        now = time.monotonic()
        with self._cond:
            if self._stopped:
                return  # the spool is closed: the batch is still on disk, sent (again) at the next start
            if error is None:
                self._answered(now)  # before the ack: its message counts this batch as waiting
                self._written += batch.points
                self._replayed += batch.points
            elif error.retryable:
                self._failed_retryably(error, now)
            self._cond.notify_all()
        if error is None:
            spool.ack(batch)
        elif error.retryable:
            spool.release(batch)
        else:
            self._reject(batch.lines, error, spooled=True)
            spool.ack(batch)  # after its dead-letter entry is on disk
        self._check_drained()

    def _adopted_done(self, spool: Spool) -> None:
        """A spool taken over has nothing left to send: closed, its directory free again; kept (its
        lock held) until close when closing would forget acknowledgements (Spool.remembers_acks)."""
        keep = spool.remembers_acks
        with self._cond:
            if spool in self._adopted:
                self._adopted.remove(spool)
            damage = f" ({spool.damaged_points} damaged points in it counted as lost)" if spool.damaged_points else ""
            if keep:
                self._adopted_kept.append(spool)
                self._say(logging.WARNING, "spool: everything left in %s is sent%s, but not all of it could be marked "
                          "sent: this instance holds the directory until it stops, so that none is sent twice",
                          spool.dir, damage)
            else:
                self._adopted_damaged_records += spool.damaged_records
                self._adopted_damaged_points += spool.damaged_points  # it never appends: nothing is evicted
                self._say(logging.INFO, "spool: everything left in %s is sent%s; the directory is free", spool.dir,
                          damage)
        if not keep:
            spool.close()
        self._emit()

    def _failed_retryably(self, error: WriteError, now: float) -> None:
        """An outage: back off (2, 4, 8 ... s; Retry-After kept within [step, retry_max_s])."""
        step = self._delay
        wait = min(step if error.retry_after is None else max(error.retry_after, step), self.retry_max_s)
        self._delay = min(step * 2, self.retry_max_s)
        self._next_attempt = now + wait
        if self._closing:
            self._sender_gave_up = True
        if self._outage is None:
            self._outage = _Outage(now)
            spool = self.spool
            assert spool is not None
            waiting = self._memory_points + sum(sp.pending_points for sp in (spool, *self._adopted))
            self._say(logging.ERROR, "InfluxDB at %s unreachable: spooling to %s; %d points waiting (%s)",
                      self.url, spool.dir, waiting, error)
            if self._backlog is None:
                self._backlog = _Backlog(now, "the first failure")
        else:
            self._say(logging.DEBUG, "InfluxDB at %s still unreachable, next attempt in %.1f s: %s",
                      self.url, wait, error)
        if error.retry_after is not None and not self._outage.retry_after_logged:
            self._outage.retry_after_logged = True
            self._say(logging.WARNING, "InfluxDB at %s asks to wait (%s): honouring Retry-After, next attempt in "
                      "%.0f s (Retry-After is kept between the back-off step and POLL_SPOOL_RETRY_MAX_S = %.0f s)",
                      self.url, error, wait, self.retry_max_s)

    def _answered(self, now: float) -> None:
        self._delay = self.retry_initial_s
        self._next_attempt = 0.0
        self._end("rejected")
        if self._end("failed"):
            self._say(logging.INFO, "InfluxDB at %s answers again", self.url)
        waiting = self.spool.pending_points if self.spool is not None else 0
        backlog = self._backlog
        if backlog is not None and backlog.earlier_run and not backlog.answered:
            self._say(logging.INFO, "InfluxDB at %s answers: sending %d points left in the spool, oldest first",
                      self.url, waiting)
        elif self._outage is not None:
            self._say(logging.INFO, "InfluxDB at %s answers again after %.0f s: sending %d spooled points, "
                      "oldest first", self.url, now - self._outage.since, waiting)
        if backlog is not None:
            backlog.answered = True
        self._outage = None

    def _reject(self, lines: list[str], error: WriteError, spooled: bool) -> None:
        """A batch InfluxDB refuses for good: to the dead-letter file, or dropped and counted."""
        spool = self.spool
        assert spool is not None
        n = len(lines)
        problem = None
        try:
            path = spool.dead_letter(lines, str(error), self.url)
            if path is None:
                problem = f"the dead-letter file {spool.dead_letter_path} is full (POLL_SPOOL_MAX_MB)"
        except OSError as exc:
            problem = (f"the dead-letter file {spool.dead_letter_path} cannot be written "
                       f"({errno.errorcode.get(exc.errno or 0, '?')}: {exc.strerror})")
        with self._cond:
            what = f"{n} spooled points" if spooled else f"{n} points"
            if problem is None:
                self._dead_lettered += n
                self._end("dead-letter")
                where = f"{n} points written to the dead-letter file {spool.dead_letter_path}, not retried"
            else:
                self._dropped_dead_letter += n
                where = f"{n} points dropped: {problem}"
                self._once("dead-letter", logging.ERROR, "%s: %d rejected points dropped, %d since start (further "
                           "drops are logged at DEBUG until an entry can be written)", problem, n,
                           self._dropped_dead_letter)
            self._once("rejected", logging.ERROR, "InfluxDB at %s rejected %s for good (%s); %s (further rejections "
                       "are logged at DEBUG until a write succeeds)", self.url, what, error, where)
            self._cond.notify_all()

    def _check_drained(self) -> None:
        spool = self.spool
        if spool is None:
            return
        with self._cond:
            b = self._inflight
            if (self._backlog is None or spool.pending_records or self._spilling is not None
                    or (b is not None and b.ahead is not None)):
                return
            backlog, self._backlog = self._backlog, None
            self._end("slow")
            dropped = self._dropped_total()
            self._say(logging.INFO, "spool drained: %d points replayed to %s, %d dead-lettered, %d dropped since "
                      "start; %.0f s after %s", self._replayed, self.url, self._dead_lettered, dropped,
                      time.monotonic() - backlog.since, backlog.cause)

    def _dropped_total(self) -> int:
        """Points lost since start, all reasons (with the lock held)."""
        spools = ([] if self.spool is None else [self.spool]) + list(self._adopted) + self._adopted_kept
        spool_lost = sum(sp.evicted_points + sp.damaged_points for sp in spools) + self._adopted_damaged_points
        return spool_lost + self._dropped_disk + self._dropped_dead_letter + self._dropped_memory

    # ---- the spooler -------------------------------------------------------------------

    def _spool_loop(self) -> None:
        while True:
            try:
                job = self._next_spill()
                self._emit()
                if job is None:
                    return
                self._spill(*job)
            except Exception:  # noqa: BLE001 - the spooler must outlive a bug
                log.exception("outbox spooler: unexpected error; going on in 1 s")
                time.sleep(1)
            self._emit()

    def _next_spill(self) -> tuple[_Chunk, bool] | None:
        with self._cond:
            while True:
                if self._stopped:
                    return None
                job, wait = self._pick_spill(time.monotonic())
                if job is not None:
                    return job
                if self._closing and wait is None:
                    self._spill_done = True
                    self._cond.notify_all()
                    return None
                self._cond.wait(wait)

    def _pick_spill(self, now: float) -> tuple[tuple[_Chunk, bool] | None, float | None]:
        """What to move to the spool now (chunk, written ahead?), else how long to wait (None: a change)."""
        if self._closing and self._spill_gave_up:
            return None, None
        if now < self._disk_retry_at and not self._closing:
            return None, self._disk_retry_at - now
        over = self._memory_points > self.memory_points
        if not (self._closing or over or self._outage is not None):
            return None, None
        b = self._inflight
        if b is not None and not b.ahead_tried:
            b.ahead_tried = b.spilling = True
            return (b, True), None
        if b is not None and b.ahead_lines < len(b.lines):
            # Its write-ahead failed: nothing newer may reach the spool before it has an outcome.
            if self._closing:
                self._spill_gave_up = True
            return None, None
        if not self._memory:
            return None, None
        head = self._memory[0]
        ready = self._ready_at(head)
        if not over and ready > now:
            return None, ready - now
        self._memory.popleft()
        self._memory_points -= len(head.lines)
        self._spilling = head
        head.spilling = True
        return (head, False), None

    def _spill(self, chunk: _Chunk, ahead: bool) -> None:
        spool = self.spool
        assert spool is not None
        lines = chunk.lines
        result = spool.append(lines, hold=ahead)
        now = time.monotonic()
        with self._cond:
            chunk.spilling = False
            self._spooled += result.stored
            if result.stored and self._backlog is None:
                if self._outage is None and not self._closing:
                    self._once("slow", logging.WARNING, "InfluxDB at %s takes readings slower than they arrive: "
                               "more than %d points wait in memory; the oldest go to the spool at %s and are sent "
                               "from there", self.url, self.memory_points, spool.dir)
                cause = "the first failure" if self._outage is not None else "the stop" if self._closing \
                    else "the first spill"
                self._backlog = _Backlog(now, cause)
            if ahead:
                chunk.ahead, chunk.ahead_lines = result.batch, result.taken
            else:
                self._spilling = None
                rest = lines[result.taken:]
                if rest:  # back to the front of memory, oldest first
                    self._memory.appendleft(_Chunk(rest, chunk.born, chunk.first + result.taken))
                    self._memory_points += len(rest)
            if result.error is not None:
                self._disk_retry_at = now + self._disk_delay
                self._disk_delay = min(2 * self._disk_delay, self.retry_max_s)
                if self._closing:
                    self._spill_gave_up = True
                err = result.error
                self._once("disk", logging.ERROR, "cannot write to the spool at %s (%s: %s): %d points wait in "
                           "memory, trying again in %.0f s; past %d the oldest are dropped", spool.dir,
                           errno.errorcode.get(err.errno or 0, "?"), err.strerror, self._memory_points,
                           self._disk_retry_at - now, self.memory_hard_points)
            else:
                self._disk_delay = self.retry_initial_s
                if self._end("disk"):
                    self._say(logging.INFO, "the spool at %s takes readings again", spool.dir)
            if self._memory_points <= self.memory_points:
                self._end("memory")
            self._cond.notify_all()
