"""Durable spool: readings InfluxDB did not take wait on disk, in order, until it answers again.

POLL_SPOOL_DIR holds

    seg-0000000000000001.spool   append-only segments of records, oldest first
    dead-letter.jsonl            batches InfluxDB rejected for good, one JSON object a line

One record per batch (big-endian):

    b"EM" | status 1 byte (0 pending, 1 sent) | version 1 byte | length u32 | points u32 | crc32 u32 | payload

The payload is the batch's line protocol joined by "\\n". crc32 covers length, points
and payload, so a record torn by a crash (or garbled on disk) is detected and skipped
with a warning. The status byte is outside the crc: it is flipped in place to 1 once
InfluxDB has the batch, so "sent" is one 1-byte write, which cannot tear.

What is fsynced, and when:
  - append: the record is written with one pwrite and fdatasync'ed before append()
    returns; a new segment file is created and the directory fsynced first.
  - ack (InfluxDB answered 2xx): the status bytes are written, then fdatasync.
  - a segment with nothing pending is unlinked and the directory fsynced.
  - dead-letter entries are written and fsynced before their records are marked sent.

So after a SIGKILL (or a power cut, for what the disk acknowledged) every batch that
append() accepted is either in InfluxDB or still pending in the spool. The only window
for a duplicate is between InfluxDB's 2xx and the status pwrite, a few microseconds of
Python for a SIGKILL (the page cache survives the process), up to the fdatasync for a
power cut: the batch is then sent once more at the next start. Sending it before
marking it is the only order that loses nothing; InfluxDB overwrites a point with the
same series and timestamp, so a re-sent batch does not create duplicates there.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from .sink import WriteError

log = logging.getLogger(__name__)

MIB = 1024 * 1024
HEADER = struct.Struct(">2sBBIII")  # magic, status, version, length, points, crc32
MAGIC = b"EM"
VERSION = 1
PENDING, SENT = 0, 1
STATUS_OFFSET = 2  # of the status byte inside a record
SEGMENT_PREFIX, SEGMENT_SUFFIX = "seg-", ".spool"
DEAD_LETTER_FILE = "dead-letter.jsonl"


class SpoolError(Exception):
    """The spool directory cannot be used; the message names it and says what to do."""


@dataclass(eq=False)
class Segment:
    seq: int
    path: Path
    size: int = 0  # bytes in the file, a torn tail included
    valid_end: int = 0  # end of the last whole record
    cursor: int = 0  # first record that may still be pending
    pending_records: int = 0
    pending_points: int = 0
    fd: int | None = None


@dataclass(eq=False)
class Batch:
    """Consecutive pending records of one segment, as one write."""

    segment: Segment
    offsets: list[int]
    lines: list[str]
    points: int
    end: int  # just after the last record taken


def _crc(length: int, points: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack(">II", length, points)))


def encode_record(lines: Sequence[str]) -> bytes:
    payload = "\n".join(lines).encode("utf-8")
    return HEADER.pack(MAGIC, PENDING, VERSION, len(payload), len(lines),
                       _crc(len(payload), len(lines), payload)) + payload


class Spool:
    """Append-only segments of batches in one directory, read back oldest first.

    Thread-safe: one thread appends while another reads and acknowledges. One
    process per directory (an exclusive flock on the directory says so).
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 512 * MIB,
                 segment_bytes: int | None = None) -> None:
        self.dir = Path(directory).absolute()
        self.max_bytes = max_bytes
        # Size bound works in whole segments: 1/64 of it, so dropping frees little at a time.
        self.segment_bytes = segment_bytes or min(max(max_bytes // 64, 64 * 1024), 16 * MIB)
        self.dropped_points = 0  # lost to the size bound (or to disk corruption)
        self._lock = threading.RLock()
        self._segments: list[Segment] = []
        self._active: Segment | None = None
        self._dir_fd = self._open_dir()
        try:
            self._load()
        except BaseException:
            os.close(self._dir_fd)
            raise

    # ---- opening -------------------------------------------------------------

    def _open_dir(self) -> int:
        where = f"POLL_SPOOL_DIR={self.dir}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise SpoolError(f"{where} cannot be created or opened ({exc.strerror}); "
                             "point it at a writable directory (a volume in compose)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolError(f"{where} is in use by another poller process; "
                             "give each poller its own spool directory") from None
        probe = self.dir / ".write-test"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            os.close(fd)
            raise SpoolError(f"{where} is not writable ({exc.strerror}); "
                             "make it writable for the poller's user (uid 10001 in the image)") from None
        return fd

    def _load(self) -> None:
        found = []
        for path in self.dir.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"):
            digits = path.name[len(SEGMENT_PREFIX):-len(SEGMENT_SUFFIX)]
            if digits.isdigit():
                found.append((int(digits), path))
        found.sort()
        self._next_seq = (found[-1][0] + 1) if found else 1
        for seq, path in found:
            seg = self._scan(seq, path)
            if seg.pending_records:
                self._segments.append(seg)
            else:
                path.unlink()
        if found:
            os.fsync(self._dir_fd)
        if self._segments:
            log.info("spool %s: %d points in %d segment(s) from an earlier run; they are sent first",
                     self.dir, self.pending_points, len(self._segments))

    def _scan(self, seq: int, path: Path) -> Segment:
        data = path.read_bytes()
        seg = Segment(seq, path, size=len(data))
        first_pending = None
        pos = 0
        while pos < len(data):
            if len(data) - pos < HEADER.size:
                break
            magic, status, version, length, points, crc = HEADER.unpack_from(data, pos)
            end = pos + HEADER.size + length
            if (magic != MAGIC or version != VERSION or status not in (PENDING, SENT) or end > len(data)
                    or _crc(length, points, data[pos + HEADER.size:end]) != crc):
                break
            if status == PENDING:
                seg.pending_records += 1
                seg.pending_points += points
                if first_pending is None:
                    first_pending = pos
            pos = end
        seg.valid_end = pos
        seg.cursor = pos if first_pending is None else first_pending
        if pos < len(data):
            log.warning("spool %s: %d bytes at offset %d are not a whole record (a write torn when the "
                        "poller was killed, or a damaged disk); skipped", path, len(data) - pos, pos)
        return seg

    # ---- state ---------------------------------------------------------------

    @property
    def pending_points(self) -> int:
        with self._lock:
            return sum(s.pending_points for s in self._segments)

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return sum(s.size for s in self._segments)

    @property
    def dead_letter_path(self) -> Path:
        return self.dir / DEAD_LETTER_FILE

    def _fd(self, seg: Segment) -> int:
        if seg.fd is None:
            seg.fd = os.open(seg.path, os.O_RDWR)
        return seg.fd

    def _remove(self, seg: Segment) -> None:
        if seg.fd is not None:
            os.close(seg.fd)
            seg.fd = None
        self._segments.remove(seg)
        if self._active is seg:
            self._active = None
        seg.path.unlink(missing_ok=True)
        os.fsync(self._dir_fd)

    # ---- writing -------------------------------------------------------------

    def append(self, lines: Sequence[str]) -> int:
        """Store one batch durably (fsynced on return); returns points dropped to make room."""
        record = encode_record(lines)
        with self._lock:
            dropped = 0
            while self._segments and self.size_bytes + len(record) > self.max_bytes:
                dropped += self._drop_oldest()
            seg = self._active
            if seg is None or seg.size >= self.segment_bytes:
                seg = self._new_segment()
            fd = self._fd(seg)
            try:
                written = 0
                while written < len(record):
                    written += os.pwrite(fd, record[written:], seg.size + written)
                os.fdatasync(fd)
            except OSError:
                # Never leave half a record in front of later ones: cut it off, start a new segment.
                try:
                    os.ftruncate(fd, seg.size)
                except OSError:
                    pass
                self._active = None
                if not seg.pending_records:
                    self._remove(seg)
                raise
            if not seg.pending_records:
                seg.cursor = seg.size
            seg.size = seg.valid_end = seg.size + len(record)
            seg.pending_records += 1
            seg.pending_points += len(lines)
            return dropped

    def _new_segment(self) -> Segment:
        if self._active is not None and self._active.fd is not None:
            os.close(self._active.fd)  # sealed; reopened when it becomes the oldest
            self._active.fd = None
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        path = self.dir / f"{SEGMENT_PREFIX}{seq:016d}{SEGMENT_SUFFIX}"
        seg = Segment(seq, path, fd=os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640))
        os.fsync(self._dir_fd)
        self._segments.append(seg)
        self._active = seg
        return seg

    def _drop_oldest(self) -> int:
        seg = self._segments[0]
        points = seg.pending_points
        self._remove(seg)
        self.dropped_points += points
        log.error("spool %s is full (limit %.1f MB, POLL_SPOOL_MAX_MB): dropped the oldest %d points "
                  "(%s) to make room for new readings; %d points dropped since start",
                  self.dir, self.max_bytes / MIB, points, seg.path.name, self.dropped_points)
        return points

    # ---- reading back --------------------------------------------------------

    def peek(self, max_points: int = 5000) -> Batch | None:
        """The oldest pending records (at least one, then up to max_points), or None when empty."""
        with self._lock:
            while self._segments:
                seg = self._segments[0]
                batch = self._read(seg, max_points)
                if batch.offsets:
                    return batch
                if seg.pending_records == 0 and seg is not self._active:
                    self._remove(seg)
                elif seg.pending_records == 0:
                    return None
                else:  # pending records that no longer read back: counted as lost
                    self.dropped_points += seg.pending_points
                    self._remove(seg)
            return None

    def _read(self, seg: Segment, max_points: int) -> Batch:
        fd = self._fd(seg)
        batch = Batch(seg, [], [], 0, seg.cursor)
        pos = seg.cursor
        while pos < seg.valid_end:
            _, status, _, length, points, crc = HEADER.unpack(os.pread(fd, HEADER.size, pos))
            if batch.offsets and batch.points + points > max_points:
                break
            after = pos + HEADER.size + length
            if status == PENDING:
                payload = os.pread(fd, length, pos + HEADER.size)
                if _crc(length, points, payload) == crc:
                    batch.offsets.append(pos)
                    batch.lines.extend(payload.decode("utf-8").split("\n"))
                    batch.points += points
                    batch.end = after
                else:
                    log.error("spool %s: the record at offset %d (%d points) no longer matches its checksum "
                              "(damaged disk?); skipped", seg.path, pos, points)
                    os.pwrite(fd, bytes([SENT]), pos + STATUS_OFFSET)
                    seg.pending_records -= 1
                    seg.pending_points -= points
                    self.dropped_points += points
            if not batch.offsets:  # nothing taken yet: what lies before is done
                seg.cursor = batch.end = after
            pos = after
        return batch

    def ack(self, batch: Batch) -> None:
        """InfluxDB has the batch: mark its records sent (fdatasync), free finished segments."""
        with self._lock:
            seg = batch.segment
            if seg not in self._segments:
                return  # dropped by the size bound while it was being sent
            fd = self._fd(seg)
            for offset in batch.offsets:
                os.pwrite(fd, bytes([SENT]), offset + STATUS_OFFSET)
            os.fdatasync(fd)
            seg.cursor = batch.end
            seg.pending_records -= len(batch.offsets)
            seg.pending_points -= batch.points
            if seg.pending_records == 0:
                self._remove(seg)

    # ---- dead letters --------------------------------------------------------

    def dead_letter(self, lines: Sequence[str], reason: str, url: str) -> Path | None:
        """Append a rejected batch to dead-letter.jsonl (fsynced); None when that file is full."""
        entry = json.dumps({"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "url": url,
                            "reason": reason, "points": len(lines), "lines": list(lines)}) + "\n"
        data = entry.encode("utf-8")
        path = self.dead_letter_path
        with self._lock:
            existed = path.exists()
            if existed and path.stat().st_size + len(data) > self.max_bytes:
                return None
            with open(path, "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if not existed:
                os.fsync(self._dir_fd)
        return path

    def close(self) -> None:
        with self._lock:
            for seg in self._segments:
                if seg.fd is not None:
                    os.close(seg.fd)
                    seg.fd = None
            if self._dir_fd >= 0:
                os.close(self._dir_fd)  # releases the flock
                self._dir_fd = -1


class BatchSink(Protocol):
    url: str

    def write(self, lines: Sequence[str]) -> None: ...

    def close(self) -> None: ...


@dataclass
class _Outage:
    since: float  # time.monotonic()
    first_error: str
    answered: bool = False
    earlier_run: bool = False  # started with readings an earlier run left in the spool
    logged: bool = True  # its ERROR line was written


@dataclass
class SpoolStats:
    spooled_points: int = 0
    replayed_points: int = 0
    dead_lettered_points: int = 0
    dropped_points: int = 0
    spool_points: int = 0
    spool_bytes: int = 0


class SpoolingSink:
    """An InfluxSink that never loses a batch InfluxDB could not take.

    While the spool is empty a batch goes straight to InfluxDB. A retryable failure
    (connection, timeout, 5xx, 408, 429) puts the batch in the spool; from then on new
    batches are appended behind it (so they never overtake), and a background thread
    sends the spool oldest first, retrying after 2, 4, 8 ... up to retry_max_s seconds,
    or after Retry-After when InfluxDB gives one. A batch InfluxDB rejects for good
    (4xx other than 408/429) goes to the dead-letter file with the reason.
    """

    def __init__(self, inner: BatchSink, spool: Spool, retry_initial_s: float = 2.0, retry_max_s: float = 60.0,
                 replay_points: int = 5000, close_timeout_s: float = 5.0) -> None:
        self.inner, self.spool = inner, spool
        self.url = inner.url
        self.retry_initial_s, self.retry_max_s = retry_initial_s, max(retry_max_s, retry_initial_s)
        self.replay_points = replay_points
        self.close_timeout_s = close_timeout_s
        self.spooled_points = 0
        self.replayed_points = 0
        self.dead_lettered_points = 0
        self._dead_letter_dropped = 0
        self._delay = retry_initial_s
        self._next_attempt = 0.0  # time.monotonic() before which InfluxDB is left alone
        self._outage: _Outage | None = None
        self._state = threading.Lock()  # _delay, _next_attempt, _outage
        self._writing = threading.Lock()  # one write() at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        if spool.pending_points:
            self._outage = _Outage(time.monotonic(), "readings left by an earlier run", earlier_run=True,
                                   logged=False)
        self._thread = threading.Thread(target=self._replay_loop, name="spool-replay", daemon=True)
        self._thread.start()

    # ---- counters (self-monitoring) --------------------------------------------

    @property
    def dropped_points(self) -> int:
        return self.spool.dropped_points + self._dead_letter_dropped

    @property
    def spool_bytes(self) -> int:
        return self.spool.size_bytes

    @property
    def spool_points(self) -> int:
        return self.spool.pending_points

    def stats(self) -> SpoolStats:
        return SpoolStats(self.spooled_points, self.replayed_points, self.dead_lettered_points,
                          self.dropped_points, self.spool_points, self.spool_bytes)

    # ---- the sink interface -----------------------------------------------------

    def write(self, lines: Sequence[str]) -> None:
        """Returns when the batch is in InfluxDB or safe on disk; WriteError when neither."""
        if not lines:
            return
        with self._writing:
            new_outage = None
            if not self.spool.pending_points:
                try:
                    self.inner.write(lines)
                    return
                except WriteError as exc:
                    if not exc.retryable:
                        where = self._dead_letter(lines, exc)
                        raise WriteError(f"{exc}; {where}", False) from None
                    new_outage = self._failed(exc)
            self._append(lines)
            if new_outage is not None:
                log.error("InfluxDB at %s unreachable: spooling to %s; %d points in spool (%s)",
                          self.url, self.spool.dir, self.spool.pending_points, new_outage)
            self._wake.set()

    def close(self) -> None:
        """Stop replaying, try one last drain for a few seconds, leave the rest on disk."""
        self._stop.set()
        self._wake.set()
        self._thread.join()
        if self.spool.pending_points:
            self._drain(deadline=time.monotonic() + self.close_timeout_s)
        if self.spool.pending_points:
            log.warning("stopping with %d points in the spool at %s; they are sent at the next start",
                        self.spool.pending_points, self.spool.dir)
        self.spool.close()
        self.inner.close()

    # ---- internals ----------------------------------------------------------------

    def _append(self, lines: Sequence[str]) -> None:
        try:
            self.spool.append(lines)
        except OSError as exc:
            raise WriteError(f"cannot spool {len(lines)} points to {self.spool.dir} "
                             f"({errno.errorcode.get(exc.errno or 0, '?')}: {exc.strerror}); they are lost",
                             False) from None
        self.spooled_points += len(lines)

    def _failed(self, exc: WriteError) -> str | None:
        """Schedule the next attempt; the reason when this failure starts an outage."""
        now = time.monotonic()
        with self._state:
            if exc.retry_after is not None:
                wait = min(max(exc.retry_after, 0.0), 3600.0)
                log.warning("InfluxDB at %s asks to wait (%s): honouring Retry-After, next attempt in %.0f s",
                            self.url, exc, wait)
            else:
                wait = self._delay
                self._delay = min(self._delay * 2, self.retry_max_s)
            self._next_attempt = now + wait
            if self._outage is None or self._outage.answered:
                self._outage = _Outage(now, str(exc))
                return str(exc)
            if not self._outage.logged:
                self._outage.logged = True
                return str(exc)
            log.debug("InfluxDB at %s still unreachable, next attempt in %.0f s: %s", self.url, wait, exc)
            return None

    def _answered(self) -> None:
        with self._state:
            self._delay = self.retry_initial_s
            self._next_attempt = 0.0
            if self._outage is not None and not self._outage.answered:
                self._outage.answered = True
                if self._outage.earlier_run:
                    log.info("InfluxDB at %s answers: sending %d points left in the spool, oldest first",
                             self.url, self.spool.pending_points)
                else:
                    log.info("InfluxDB at %s answers again after %.0f s: sending %d spooled points, oldest first",
                             self.url, time.monotonic() - self._outage.since, self.spool.pending_points)

    def _drained(self) -> None:
        with self._state:
            if self._outage is not None:
                since = "the start" if self._outage.earlier_run else "the first failure"
                log.info("spool drained: %d points replayed to %s, %d dead-lettered, %d dropped since start; "
                         "%.0f s after %s", self.replayed_points, self.url, self.dead_lettered_points,
                         self.dropped_points, time.monotonic() - self._outage.since, since)
                self._outage = None

    def _dead_letter(self, lines: Sequence[str], exc: WriteError) -> str:
        path = self.spool.dead_letter(lines, str(exc), self.url)
        if path is None:
            self._dead_letter_dropped += len(lines)
            text = (f"the dead-letter file {self.spool.dead_letter_path} is full "
                    f"(POLL_SPOOL_MAX_MB): {len(lines)} rejected points dropped")
            log.error("%s", text)
            return text
        self.dead_lettered_points += len(lines)
        return f"{len(lines)} points written to the dead-letter file {path}, not retried"

    def _replay_loop(self) -> None:
        while not self._stop.is_set():
            timeout = None
            if self.spool.pending_points:
                timeout = max(0.0, self._next_attempt - time.monotonic())
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self.spool.pending_points and time.monotonic() >= self._next_attempt:
                try:
                    self._drain()
                except Exception:  # noqa: BLE001 - keep replaying; the batch stays on disk
                    log.exception("spool replay failed; trying again in %.0f s", self.retry_max_s)
                    self._next_attempt = time.monotonic() + self.retry_max_s

    def _drain(self, deadline: float | None = None) -> None:
        """Send the spool oldest first until it is empty, InfluxDB fails, or time is up."""
        while not (deadline is None and self._stop.is_set()):
            if deadline is not None and time.monotonic() > deadline:
                return
            batch = self.spool.peek(self.replay_points)
            if batch is None:
                self._drained()
                return
            try:
                self.inner.write(batch.lines)
            except WriteError as exc:
                if exc.retryable:
                    if self._failed(exc) is not None:
                        log.error("InfluxDB at %s unreachable: spooling to %s; %d points in spool (%s)",
                                  self.url, self.spool.dir, self.spool.pending_points, exc)
                    return
                where = self._dead_letter(batch.lines, exc)
                log.error("InfluxDB at %s rejected %d spooled points for good (%s); %s",
                          self.url, batch.points, exc, where)
                self.spool.ack(batch)  # after the dead-letter entry is on disk
                continue
            self._answered()  # before the ack, so the count includes this batch
            self.spool.ack(batch)
            self.replayed_points += batch.points
