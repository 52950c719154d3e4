"""Durable spool: readings InfluxDB has not taken yet wait on disk, in order, until it answers.

POLL_SPOOL_DIR holds

    seg-0000000000000001.spool   append-only segments of records, oldest first
    dead-letter.jsonl            batches InfluxDB rejected for good, one JSON object a line

A record holds consecutive lines of one batch (a batch larger than a segment is split).
Version 2 (written since the outbox; big-endian, 40-byte header):

    b"EM" | kind 0 | version 2 | status 4 bytes | seq u64 | before u64 | length u32 | points u32
          | payload crc32 u32 | header crc32 u32 | payload

  - status: b"PEND", overwritten in place by b"SENT" once InfluxDB has the record. It is
    outside both checksums; anything but exactly b"SENT" (a flipped byte, an overwrite torn
    across a sector) reads as pending, so damage there re-sends a record, never loses one.
  - seq: the record's number in the spool; before: points in all records before it. Both
    run on across segments (and across restarts, from the newest record found), so the
    records and points lost in a damaged stretch between two whole records are known exactly.
  - header crc32 covers every header byte but the status and itself: a record whose header
    checks out is trusted to end where its length says, even when its payload is damaged.
  - payload: the lines joined by "\\n", UTF-8.

Version 1 (written before the outbox; still read, acknowledged in place, never written):

    b"EM" | status 1 byte (0 pending, 1 sent) | version 1 | length u32 | points u32 | crc32 u32 | payload

  crc32 covers length, points and payload. A damaged version-1 record is skipped alone when
  a whole record (or the end of the file) starts where its header says it ends.

Damage loses at most the damaged records. Reading (at start, or when a record is read back)
checks each record; a bad one is skipped when its framing is trustworthy, else the reader
scans forward to the next whole record. Losses are counted (records, and points where
known) and logged once per segment with the file and offset. During a run the spool knows
what each segment holds, so what was damaged, truncated or became unreadable after it was
written is counted exactly; at start, a stretch between two whole version-2 records is
exact (so is a segment cut exactly between two records when another segment follows: the
numbers say what went), and one at either end of the spool counts one record per damaged
stretch found (a file cut exactly between two records at the very end leaves nothing to find). An
empty segment is counted as one record and removed. An entry named like a segment that
is not a regular file, cannot be read or holds no record is left in place, logged,
counted (skipped_files), and its number is never used again.

What is fsynced, and when:
  - append: each record is written with pwrite and fdatasync'ed before append() returns;
    a new segment is created and the directory fsynced before its first record is written.
  - ack (InfluxDB answered 2xx): the records' status fields are written, then fdatasync.
  - a segment with nothing pending is unlinked and the directory fsynced.
  - dead-letter entries are written and fsynced before their records are acknowledged.

So after a SIGKILL (or a power cut, for what the disk acknowledged) every record append()
accepted is either in InfluxDB or still pending here. A record is sent before it is marked
sent: a duplicate needs a stop between InfluxDB's 2xx and the mark, or a mark that could
not be written; InfluxDB overwrites a point with the same series and timestamp, so a
re-sent record adds nothing.

Failures of the disk never raise out of ack(), release(), peek() or close(): an ack that
cannot be written is kept in memory for this run (sent again at the next start), a
segment that cannot be unlinked is tried again later, a segment that cannot be read is
left in place (read again at the next start) and its pending points are counted.
append() reports what it could not store (Appended.error) and dead_letter() raises
OSError: the caller still has those lines.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import stat
import struct
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MAGIC = b"EM"
VERSION = 2
HEADER = struct.Struct(">2sBB4sQQIIII")  # magic, kind, version, status, seq, before, length, points, pcrc, hcrc
STATUS_AT = 4  # offset of the status inside a version-2 record
PENDING, SENT = b"PEND", b"SENT"
HEADER_V1 = struct.Struct(">2sBBIII")  # magic, status, version, length, points, crc32
STATUS_AT_V1 = 2
SENT_V1 = 1  # version 1's status byte: 0 pending, 1 sent
SEGMENT_PREFIX, SEGMENT_SUFFIX = "seg-", ".spool"
DEAD_LETTER_FILE = "dead-letter.jsonl"
LEFTOVER_RETRY_S = 5.0  # how often to try again to unlink a finished segment


class SpoolError(Exception):
    """The spool directory cannot be used; the message names it and says what to do."""


class SpoolInUse(SpoolError):
    """Another poller process holds the directory's lock."""


def _header_crc(buf: bytes | memoryview, pos: int) -> int:
    """crc32 of a version-2 header without its status and its own crc."""
    return zlib.crc32(buf[pos + 8:pos + 36], zlib.crc32(buf[pos:pos + 4]))


def _crc_v1(length: int, points: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack(">II", length, points)))


def _encode(payload: bytes, points: int, seq: int, before: int) -> bytes:
    """One version-2 record, pending."""
    head = bytearray(HEADER.pack(MAGIC, 0, VERSION, PENDING, seq, before, len(payload), points,
                                 zlib.crc32(payload), 0))
    struct.pack_into(">I", head, 36, _header_crc(head, 0))
    return bytes(head) + payload


@dataclass(frozen=True)
class _Item:
    """What the reader found at one offset: a record (whole or damaged) or unrecognisable bytes."""

    offset: int
    end: int
    good: bool  # a whole record: its checksums match
    framed: bool  # its extent is trustworthy (a record header that checks out)
    sent: bool = False
    points: int | None = None  # known when framed
    seq: int | None = None  # version 2 only
    before: int | None = None
    version: int = 0
    what: str = ""  # for damage: what is wrong


def _parse(buf: bytes, pos: int, limit: int, lookahead: bool = True) -> _Item | None:
    """The record at pos, whole or with a damaged payload but trustworthy framing; None otherwise."""
    if limit - pos < 4 or buf[pos:pos + 2] != MAGIC:
        return None
    version = buf[pos + 3]
    if version == VERSION:
        if limit - pos < HEADER.size:
            return None
        _, kind, _, status, seq, before, length, points, pcrc, hcrc = HEADER.unpack_from(buf, pos)
        if kind != 0 or _header_crc(buf, pos) != hcrc:
            return None
        end = pos + HEADER.size + length
        sent = status == SENT
        if end > limit:
            return _Item(pos, limit, False, True, sent, points, seq, before, VERSION, "cut short")
        good = zlib.crc32(memoryview(buf)[pos + HEADER.size:end]) == pcrc
        return _Item(pos, end, good, True, sent, points, seq, before, VERSION, "" if good else "checksum mismatch")
    if version == 1:
        if limit - pos < HEADER_V1.size:
            return None
        _, status, _, length, points, crc = HEADER_V1.unpack_from(buf, pos)
        end = pos + HEADER_V1.size + length
        sent = status == SENT_V1
        if end <= limit and _crc_v1(length, points, memoryview(buf)[pos + HEADER_V1.size:end]) == crc:
            return _Item(pos, end, True, True, sent, points, version=1)
        # Damaged: its length is trusted only if a record (or the end) starts where it says it ends.
        if lookahead and (end == limit or (end < limit and _parse(buf, end, limit, lookahead=False))):
            known = points if points <= length + 1 else None
            return _Item(pos, end, False, True, sent, known, version=1, what="checksum mismatch")
    return None


def _resync(buf: bytes, pos: int, limit: int) -> int:
    """The next offset from pos where a record can be trusted to start (limit when none)."""
    while True:
        pos = buf.find(MAGIC, pos, limit)
        if pos < 0:
            return limit
        if _parse(buf, pos, limit, lookahead=False) is not None:
            return pos
        pos += 1


def _scan(buf: bytes, base: int = 0) -> list[_Item]:
    """Every record and damaged stretch in buf, in order; offsets are base + index into buf."""
    items: list[_Item] = []
    pos, limit = 0, len(buf)
    while pos < limit:
        item = _parse(buf, pos, limit)
        if item is None:
            nxt = _resync(buf, pos + 1, limit)
            item = _Item(pos, nxt, False, False, what="unrecognisable bytes")
        items.append(item)
        pos = item.end
    if base:
        items = [_Item(i.offset + base, i.end + base, i.good, i.framed, i.sent, i.points, i.seq, i.before,
                       i.version, i.what) for i in items]
    return items


@dataclass(eq=False)
class Segment:
    seq: int
    path: Path
    size: int = 0  # bytes written (or found at start)
    valid_end: int = 0  # reading stops here
    cursor: int = 0  # the first record that may still be pending
    pending_records: int = 0
    pending_points: int = 0
    skips: dict[int, int] = field(default_factory=dict)  # damaged stretches: start -> end
    fd: int | None = None
    writable: bool = True  # fd is open for writing
    abandoned: bool = False  # became unreadable: left in place, not unlinked
    damage_logged: bool = False


@dataclass(frozen=True)
class RecordRef:
    segment: Segment
    offset: int
    end: int
    points: int
    version: int


@dataclass(eq=False)
class Batch:
    """Records handed out by peek() or append(hold=True): ack() or release() them."""

    records: list[RecordRef]
    lines: list[str]
    points: int
    evicted_points: int = 0  # of its records, removed by the size bound while it was out


@dataclass(frozen=True)
class Appended:
    """What append() did with a batch of n lines.

    lines[:taken] are dealt with: stored (`stored` points) or, when the batch alone is
    larger than the spool, dropped and counted (taken - stored). lines[taken:] were not
    stored because of `error`; the caller still has them.
    """

    taken: int
    stored: int
    batch: Batch | None  # the stored records, with hold=True
    error: OSError | None


class Spool:
    """Append-only segments of records in one directory, read back oldest first.

    Thread-safe: one thread appends while another reads and acknowledges. One process per
    directory (an exclusive flock on the directory says so). Counters and sizes are plain
    attributes, readable from any thread without waiting for the disk.
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 512 * MIB,
                 segment_bytes: int | None = None, *, taken_over: bool = False) -> None:
        self.dir = Path(directory).absolute()
        self._taken_over = taken_over  # another instance's, left behind (spooldirs): the outbox says so
        self.max_bytes = max_bytes
        # The size bound works in whole segments: 1/64 of it, so evicting frees little at a time.
        wanted = segment_bytes or min(max(max_bytes // 64, 64 * 1024), 16 * MIB)
        self.segment_bytes = max(HEADER.size + 1, min(wanted, max_bytes))
        # Since start; read by the outbox for /metrics.
        self.evicted_points = 0  # dropped for room: POLL_SPOOL_MAX_MB, a full disk, a batch larger than all
        self.damaged_records = 0  # found damaged, cut short or unreadable
        self.damaged_points = 0  # their points, where known
        self.skipped_files = 0  # entries named like a segment that are left alone
        self.pending_points = 0
        self.pending_records = 0
        self.size_bytes = 0
        self._lock = threading.RLock()
        self._segments: list[Segment] = []
        self._active: Segment | None = None
        self._held: list[Batch] = []
        self._leftovers: dict[Path, int] = {}  # finished segments not unlinked yet: size
        self._leftovers_tried = 0.0
        self._unmarked = False  # an ack's marks could not be written: they live in memory until close
        self._streaks: set[str] = set()  # problems logged once until they clear
        self._closed = False
        self._next_seq = 1
        self._record_seq = 0
        self._record_before = 0
        self._dir_fd = self._open_dir()
        try:
            self._load()
        except BaseException:
            os.close(self._dir_fd)
            raise
        self._recount()

    # ---- opening -------------------------------------------------------------

    def _open_dir(self) -> int:
        where = f"POLL_SPOOL_DIR={self.dir}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise SpoolError(f"{where} cannot be created or opened ({exc.strerror}); "
                             "point it at a writable directory (a volume in compose)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolInUse(f"{where} is in use by another poller process; "
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
        try:
            names = os.listdir(self.dir)
        except OSError as exc:
            raise SpoolError(f"POLL_SPOOL_DIR={self.dir} cannot be listed ({exc.strerror}); "
                             "check the volume and its permissions") from None
        found = []
        for name in names:
            digits = name[len(SEGMENT_PREFIX):-len(SEGMENT_SUFFIX)]
            if (name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX)
                    and digits.isascii() and digits.isdigit()):
                found.append((int(digits), self.dir / name))
        found.sort()
        # Numbers of entries skipped below are never used again either.
        self._next_seq = (found[-1][0] + 1) if found else 1
        chain = _Chain(self)
        unlinked = False
        for seq, path in found:
            data = self._read_entry(path)
            if data is None:
                chain.broken()
                continue
            if not data:
                self.damaged_records += 1
                log.warning("spool %s is empty (the poller stopped right after creating it, or the disk lost "
                            "its content); removed, counted as one damaged record", path)
                self._unlink(path, 0)
                unlinked = True
                chain.broken()
                continue
            items = _scan(data)
            if not any(item.framed for item in items):
                self._skip_entry(path, "holds no spool record")
                chain.broken()
                continue
            seg = Segment(seq, path, size=len(data), valid_end=len(data))
            chain.segment(seg, items)
            pending = [i for i in items if i.good and not i.sent]
            seg.pending_records = len(pending)
            seg.pending_points = sum(i.points or 0 for i in pending)
            seg.cursor = pending[0].offset if pending else len(data)
            seg.skips = {i.offset: i.end for i in items if not i.good and i.offset >= seg.cursor}
            for item in items:
                if item.good and item.version == VERSION and item.seq is not None and item.before is not None:
                    self._record_seq = max(self._record_seq, item.seq + 1)
                    self._record_before = max(self._record_before, item.before + (item.points or 0))
            if seg.pending_records:
                self._segments.append(seg)
            else:
                self._unlink(path, len(data))
                unlinked = True
        chain.done()
        if unlinked:
            self._fsync_dir()
        if self._segments:  # a spool taken over is announced by the outbox that sends it, not before its own
            log.log(logging.DEBUG if self._taken_over else logging.INFO,
                    "spool %s: %d points in %d segment(s) from an earlier run; they are sent first",
                    self.dir, sum(s.pending_points for s in self._segments), len(self._segments))

    def _read_entry(self, path: Path) -> bytes | None:
        """A segment file's bytes; None (logged, counted) for what cannot be one of ours or be read."""
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                self._skip_entry(path, "is not a regular file")
                return None
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                chunks = []
                while chunk := os.read(fd, 1 << 20):
                    chunks.append(chunk)
            finally:
                os.close(fd)
            return b"".join(chunks)
        except OSError as exc:
            self._skip_entry(path, f"cannot be read ({errno.errorcode.get(exc.errno or 0, '?')}: {exc.strerror})")
            return None

    def _skip_entry(self, path: Path, why: str) -> None:
        self.skipped_files += 1
        log.error("spool %s %s: left in place and skipped; readings in it, if any, are not sent. Move it "
                  "out of the spool directory (to recover it, make it a readable file of this name again "
                  "and restart the poller)", path, why)

    # ---- state ---------------------------------------------------------------

    @property
    def dead_letter_path(self) -> Path:
        return self.dir / DEAD_LETTER_FILE

    @property
    def remembers_acks(self) -> bool:
        """Records on disk were sent but could not be marked sent: closing now would send them
        again from whoever opens this directory next (this process too)."""
        with self._lock:
            return self._unmarked and bool(self._segments or self._leftovers)

    def _recount(self) -> None:
        self.pending_records = sum(s.pending_records for s in self._segments)
        self.pending_points = sum(s.pending_points for s in self._segments)
        self.size_bytes = self._bytes()

    def _bytes(self) -> int:
        return sum(s.size for s in self._segments) + sum(self._leftovers.values())

    def _once(self, key: str, level: int, msg: str, *args: object) -> None:
        """Log a problem once per streak (the rest at DEBUG)."""
        if key in self._streaks:
            log.debug(msg, *args)
        else:
            self._streaks.add(key)
            log.log(level, msg, *args)

    def _fd(self, seg: Segment) -> int:
        if seg.fd is None:
            flags = os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                seg.fd, seg.writable = os.open(seg.path, os.O_RDWR | flags), True
            except OSError as exc:
                if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
                seg.fd, seg.writable = os.open(seg.path, os.O_RDONLY | flags), False  # read, ack in memory
        return seg.fd

    def _close_fd(self, seg: Segment) -> None:
        if seg.fd is not None:
            try:
                os.close(seg.fd)
            except OSError:
                pass
            seg.fd = None

    def _fsync_dir(self) -> None:
        try:
            os.fsync(self._dir_fd)
        except OSError as exc:
            log.debug("spool %s: fsync of the directory failed: %s", self.dir, exc)

    def _unlink(self, path: Path, size: int) -> bool:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            self._leftovers[path] = size
            self._once("unlink", logging.WARNING, "spool %s: cannot remove %s, whose readings are all sent (%s); "
                       "trying again later", self.dir, path.name, exc.strerror)
            return False
        self._leftovers.pop(path, None)
        return True

    def _retry_leftovers(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._leftovers or (not force and now - self._leftovers_tried < LEFTOVER_RETRY_S):
            return
        self._leftovers_tried = now
        if all([self._unlink(path, size) for path, size in list(self._leftovers.items())]):
            self._streaks.discard("unlink")
        self._fsync_dir()

    def _remove(self, seg: Segment) -> None:
        """Forget a segment: unlinked, unless it could not be read (then it stays for the next start)."""
        self._close_fd(seg)
        if seg in self._segments:
            self._segments.remove(seg)
        if self._active is seg:
            self._active = None
        if not seg.abandoned and self._unlink(seg.path, seg.size):
            self._fsync_dir()

    def _lost(self, seg: Segment, offset: int, records: int, points: int, what: str, more: str = "") -> None:
        """Records of a segment that can no longer be sent: counted, logged once per segment."""
        self.damaged_records += records
        self.damaged_points += points
        if records and not seg.damage_logged:
            seg.damage_logged = True
            log.error("spool %s: %s at offset %d%s: %d record(s) with %d points lost, the records around them "
                      "are sent (later damage in this file is counted without a log line)",
                      seg.path, what, offset, more, records, points)

    # ---- writing -------------------------------------------------------------

    def append(self, lines: Sequence[str], hold: bool = False) -> Appended:
        """Store lines durably (fsynced on return), oldest first; never raises.

        Evicts the oldest records when the size bound or a full disk asks for room. With
        hold=True the stored records are handed back as a Batch, as peek() does.
        """
        lines = list(lines)
        with self._lock:
            if self._closed:
                return Appended(0, 0, None, OSError(errno.EBADF, "the spool is closed"))
            self._retry_leftovers()
            chunks = self._chunks(lines)
            sizes = [HEADER.size + len(payload) for _, _, payload in chunks]
            skipped = 0
            while sum(sizes[skipped:]) > self.max_bytes:
                skipped += 1
            taken = chunks[skipped][0] if skipped < len(chunks) else len(lines)
            if taken:
                self.evicted_points += taken
                log.error("spool %s: one batch of %d points is larger than the whole spool (limit %.1f MB, "
                          "POLL_SPOOL_MAX_MB): its oldest %d points are dropped; %d points dropped since start",
                          self.dir, len(lines), self.max_bytes / MIB, taken, self.evicted_points)
            refs: list[RecordRef] = []
            error = None
            for start, stop, payload in chunks[skipped:]:
                try:
                    refs.append(self._write_record(payload, stop - start))
                except OSError as exc:
                    error = exc
                    break
                taken = stop
            stored = sum(r.points for r in refs)
            batch = None
            if hold and refs:
                batch = Batch(refs, lines[taken - stored:taken], stored)
                self._held.append(batch)
            self._recount()
            return Appended(taken, stored, batch, error)

    def _chunks(self, lines: list[str]) -> list[tuple[int, int, bytes]]:
        """lines split into payloads that fit a segment (at least one line each), oldest first.

        Cut from the newest end, so only the oldest payload is short: a batch larger than
        the whole spool then keeps as many of its newest lines as fit.
        """
        limit = self.segment_bytes - HEADER.size
        payload = "\n".join(lines).encode("utf-8")
        if len(payload) <= limit or len(lines) <= 1:
            return [(0, len(lines), payload)] if lines else []
        bounds = []
        stop, size = len(lines), -1
        for i in range(len(lines) - 1, -1, -1):
            n = len(lines[i].encode("utf-8")) + 1
            if i < stop - 1 and size + n > limit:
                bounds.append((i + 1, stop))
                stop, size = i + 1, -1
            size += n
        bounds.append((0, stop))
        return [(a, b, "\n".join(lines[a:b]).encode("utf-8")) for a, b in reversed(bounds)]

    def _write_record(self, payload: bytes, points: int) -> RecordRef:
        record = _encode(payload, points, self._record_seq, self._record_before)
        while True:
            while self._bytes() + len(record) > self.max_bytes and self._segments:
                self._evict_oldest(f"spool {self.dir} is full (limit {self.max_bytes / MIB:.1f} MB, "
                                   "POLL_SPOOL_MAX_MB)")
            if self._bytes() + len(record) > self.max_bytes:
                raise OSError(errno.ENOSPC, f"the spool is full of files it cannot remove ({self.dir})")
            try:
                seg = self._active
                if seg is None or (seg.size and seg.size + len(record) > self.segment_bytes):
                    seg = self._new_segment()
                self._write_at(seg, record)
                break
            except OSError as exc:
                if exc.errno == errno.ENOSPC and self._segments:
                    self._evict_oldest(f"the disk of spool {self.dir} is full (ENOSPC)")
                    continue
                raise
        offset = seg.size
        if not seg.pending_records:
            seg.cursor = offset
        seg.size = seg.valid_end = offset + len(record)
        seg.pending_records += 1
        seg.pending_points += points
        self._record_seq += 1
        self._record_before += points
        return RecordRef(seg, offset, seg.size, points, VERSION)

    def _write_at(self, seg: Segment, record: bytes) -> None:
        fd = -1
        try:
            fd = self._fd(seg)
            if not seg.writable:
                raise OSError(errno.EROFS, f"{seg.path} can only be opened for reading")
            view = memoryview(record)
            written = 0
            while written < len(record):
                n = os.pwrite(fd, view[written:], seg.size + written)
                if n <= 0:
                    raise OSError(errno.EIO, f"short write to {seg.path}")
                written += n
            os.fdatasync(fd)
        except OSError:
            # Never leave half a record in front of later ones: cut it off, go on in a new segment.
            try:
                os.ftruncate(fd, seg.size)
            except OSError:
                pass
            self._close_fd(seg)
            if self._active is seg:
                self._active = None
            if seg.size == 0:
                self._remove(seg)
            raise

    def _new_segment(self) -> Segment:
        if self._active is not None:
            self._close_fd(self._active)  # sealed; reopened when it is read
            self._active = None
        while True:
            seq, self._next_seq = self._next_seq, self._next_seq + 1
            path = self.dir / f"{SEGMENT_PREFIX}{seq:016d}{SEGMENT_SUFFIX}"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
            except FileExistsError:
                continue  # someone else's file: never overwritten
            break
        try:
            os.fsync(self._dir_fd)
        except OSError:
            os.close(fd)
            self._unlink(path, 0)
            raise
        seg = Segment(seq, path, fd=fd)
        self._segments.append(seg)
        self._active = seg
        return seg

    def _evict_oldest(self, why: str) -> None:
        seg = self._segments[0]
        out = 0
        for batch in self._held:
            mine = sum(r.points for r in batch.records if r.segment is seg)
            batch.evicted_points += mine  # counted if it is released unsent
            out += mine
        points = max(0, seg.pending_points - out)
        self.evicted_points += points
        self._once("evict", logging.ERROR, "%s: dropped the oldest %d points (%s) to make room for new readings; "
                   "%d points dropped since start (further drops are counted in emm_dropped_points_total "
                   "and logged at DEBUG until the spool is drained)", why, points, seg.path.name, self.evicted_points)
        self._remove(seg)

    # ---- reading back --------------------------------------------------------

    def peek(self, max_points: int = 5000) -> Batch | None:
        """The oldest pending records (at least one, then up to max_points), or None when there are none.

        Damaged records are skipped and counted on the way. ack() or release() the batch.
        """
        with self._lock:
            if self._closed:
                return None
            self._retry_leftovers()
            try:
                while self._segments:
                    seg = self._segments[0]
                    taken = self._take(seg, max_points)
                    if taken:
                        batch = Batch([r for r, _ in taken], [x for _, lines in taken for x in lines],
                                      sum(r.points for r, _ in taken))
                        self._held.append(batch)
                        return batch
                    if seg.pending_records:  # counted pending, nothing left to read
                        self._lost(seg, seg.cursor, seg.pending_records, seg.pending_points,
                                   "records missing at the end")
                        seg.pending_records = seg.pending_points = 0
                    if seg is self._active and not seg.abandoned:
                        return None
                    self._remove(seg)
                return None
            finally:
                self._recount()

    def _take(self, seg: Segment, max_points: int) -> list[tuple[RecordRef, list[str]]]:
        taken: list[tuple[RecordRef, list[str]]] = []
        points = 0
        pos = seg.cursor
        rescanned_at = -1
        while pos < seg.valid_end:
            skip_to = seg.skips.get(pos)
            if skip_to is not None:
                pos = skip_to
                if not taken:
                    seg.cursor = pos
                continue
            try:
                got = self._read_record(seg, pos)
                if got is None:
                    if rescanned_at == pos:  # the rescan trusted what the reader does not: skip it
                        seg.skips[pos] = self._next_item_end(seg, pos)
                    else:
                        self._rescan(seg, pos, taken)
                        rescanned_at = pos
                    continue
            except OSError as exc:
                self._unreadable(seg, pos, taken, exc)
                break
            ref, lines, sent = got
            if sent:  # marked sent on disk (at start it was not counted pending)
                pos = ref.end
                if not taken:
                    seg.cursor = pos
                continue
            if taken and points + ref.points > max_points:
                break
            taken.append((ref, lines))
            points += ref.points
            pos = ref.end
        return taken

    def _read_record(self, seg: Segment, pos: int) -> tuple[RecordRef, list[str], bool] | None:
        """The whole record at pos, or None when it is damaged or cut short. OSError when unreadable."""
        fd = self._fd(seg)
        limit = seg.valid_end
        head = os.pread(fd, min(HEADER.size, limit - pos), pos)
        if len(head) < 4 or head[:2] != MAGIC:
            return None
        version = head[3]
        if version == VERSION and len(head) == HEADER.size:
            _, kind, _, status, _, _, length, points, crc, hcrc = HEADER.unpack(head)
            if kind != 0 or _header_crc(head, 0) != hcrc:
                return None
            start, sent = pos + HEADER.size, status == SENT
        elif version == 1 and len(head) >= HEADER_V1.size:
            _, status1, _, length, points, crc = HEADER_V1.unpack_from(head)
            start, sent = pos + HEADER_V1.size, status1 == SENT_V1
        else:
            return None
        end = start + length
        if end > limit:
            return None
        payload = os.pread(fd, length, start) if length else b""
        if len(payload) != length:
            return None
        if (zlib.crc32(payload) if version == VERSION else _crc_v1(length, points, payload)) != crc:
            return None
        try:
            lines = payload.decode("utf-8").split("\n")
        except UnicodeDecodeError:
            return None
        if len(lines) != points:
            return None
        return RecordRef(seg, pos, end, points, version), lines, sent

    def _rescan(self, seg: Segment, pos: int, taken: list[tuple[RecordRef, list[str]]]) -> None:
        """Damage at pos: find what is still whole after it; count the rest of what was pending."""
        try:
            data = os.pread(self._fd(seg), seg.valid_end - pos, pos)
        except OSError as exc:
            self._unreadable(seg, pos, taken, exc)
            return
        items = _scan(data, pos)
        if items and items[0].good:  # the reader did not trust it: neither do we
            items[0] = _Item(items[0].offset, items[0].end, False, True, what="record that does not read back")
        whole = [i for i in items if i.good and not i.sent]
        mine_r, mine_p = len(taken), sum(r.points for r, _ in taken)
        lost_r = max(0, seg.pending_records - mine_r - len(whole))
        lost_p = max(0, seg.pending_points - mine_p - sum(i.points or 0 for i in whole))
        what = items[0].what if items else "data missing (the file was cut short)"
        if len(data) < seg.valid_end - pos:
            what += f"; the file ends at {pos + len(data)}, {seg.valid_end} expected"
        seg.valid_end = pos + len(data)
        seg.skips.update({i.offset: i.end for i in items if not i.good})
        seg.pending_records = mine_r + len(whole)
        seg.pending_points = mine_p + sum(i.points or 0 for i in whole)
        if self._active is seg:  # nothing more is written behind damage
            self._close_fd(seg)
            self._active = None
        self._lost(seg, pos, lost_r, lost_p, what)

    def _next_item_end(self, seg: Segment, pos: int) -> int:
        try:
            data = os.pread(self._fd(seg), seg.valid_end - pos, pos)
        except OSError:
            return seg.valid_end
        return pos + _resync(data, 1, len(data)) if data else seg.valid_end

    def _unreadable(self, seg: Segment, pos: int, taken: list[tuple[RecordRef, list[str]]], exc: OSError) -> None:
        mine_r, mine_p = len(taken), sum(r.points for r, _ in taken)
        lost_r, lost_p = max(0, seg.pending_records - mine_r), max(0, seg.pending_points - mine_p)
        seg.pending_records, seg.pending_points = mine_r, mine_p
        seg.valid_end = pos
        seg.abandoned = True
        if self._active is seg:
            self._active = None
        self.damaged_records += lost_r
        self.damaged_points += lost_p
        log.error("spool %s cannot be read at offset %d (%s: %s): its %d other pending record(s) with %d points "
                  "are not sent in this run and counted as lost; the file is left in place and read again at the "
                  "next start. Check the disk (dmesg)", seg.path, pos, errno.errorcode.get(exc.errno or 0, "?"),
                  exc.strerror, lost_r, lost_p)

    def ack(self, batch: Batch) -> None:
        """InfluxDB has the batch: mark its records sent (then fdatasync); free finished segments.

        When the marks cannot be written the records stay acknowledged in memory for this
        run; they are sent once more at the next start.
        """
        with self._lock:
            self._unhold(batch)
            if self._closed:
                return
            failed: OSError | None = None
            synced: set[int] = set()
            touched: list[Segment] = []
            for ref in batch.records:
                seg = ref.segment
                if seg not in self._segments:
                    continue  # evicted while it was being sent
                try:
                    if not seg.writable:
                        raise OSError(errno.EROFS, "opened for reading only")
                    fd = self._fd(seg)
                    if ref.version == VERSION:
                        os.pwrite(fd, SENT, ref.offset + STATUS_AT)
                    else:
                        os.pwrite(fd, bytes([SENT_V1]), ref.offset + STATUS_AT_V1)
                    synced.add(fd)
                except OSError as exc:
                    failed = failed or exc
                seg.cursor = max(seg.cursor, ref.end)
                seg.pending_records = max(0, seg.pending_records - 1)
                seg.pending_points = max(0, seg.pending_points - ref.points)
                if seg not in touched:
                    touched.append(seg)
            for fd in synced:
                try:
                    os.fdatasync(fd)
                except OSError as exc:
                    failed = failed or exc
            if failed is not None:
                self._unmarked = True
                self._once("ack", logging.WARNING, "spool %s: cannot mark sent records as sent (%s); they are "
                           "remembered until the poller stops and sent once more at the next start",
                           self.dir, failed.strerror)
            else:
                self._streaks.discard("ack")
            for seg in touched:
                if seg.pending_records == 0 and seg.cursor >= seg.valid_end:
                    self._remove(seg)
            if not self._segments:
                self._streaks.discard("evict")
            self._recount()

    def release(self, batch: Batch) -> None:
        """The batch was not sent: its records stay pending (those evicted meanwhile are counted now)."""
        with self._lock:
            self._unhold(batch)
            if batch.evicted_points:
                self.evicted_points += batch.evicted_points
                batch.evicted_points = 0

    def _unhold(self, batch: Batch) -> None:
        if batch in self._held:
            self._held.remove(batch)

    # ---- dead letters --------------------------------------------------------

    def dead_letter(self, lines: Sequence[str], reason: str, url: str) -> Path | None:
        """Append a rejected batch to dead-letter.jsonl (fsynced); None when that file is full.

        OSError when it cannot be written (a half-written entry is cut off again).
        """
        entry = json.dumps({"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "url": url,
                            "reason": reason, "points": len(lines), "lines": list(lines)}) + "\n"
        data = entry.encode("utf-8")
        path = self.dead_letter_path
        with self._lock:
            if self._closed:
                raise OSError(errno.EBADF, "the spool is closed")
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
            try:
                size = os.fstat(fd).st_size
                if size + len(data) > self.max_bytes:
                    return None
                try:
                    view = memoryview(data)
                    written = 0
                    while written < len(data):
                        n = os.write(fd, view[written:])
                        if n <= 0:
                            raise OSError(errno.EIO, f"short write to {path}")
                        written += n
                    os.fsync(fd)
                except OSError:
                    try:
                        os.ftruncate(fd, size)
                    except OSError:
                        pass
                    raise
            finally:
                os.close(fd)
            if size == 0:
                self._fsync_dir()
        return path

    def close(self) -> None:
        """Close every file; never raises. Later calls are no-ops."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for seg in self._segments:
                self._close_fd(seg)
            try:
                self._retry_leftovers(force=True)
            except OSError:
                pass
            try:
                os.close(self._dir_fd)  # releases the flock
            except OSError:
                pass


class _Chain:
    """Counts, at start, what damaged stretches lost, using the record numbers around them.

    Acknowledgements go oldest first, so a stretch followed by a record marked sent was
    sent; otherwise it counts, exactly when whole version-2 records with consistent
    numbers frame it, else as one record per damaged item (points where headers survive).
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.prev: _Item | None = None
        self.prev_seg: Segment | None = None
        self.run: list[tuple[Segment, _Item]] = []

    def broken(self) -> None:
        self.done()
        self.prev = self.prev_seg = None

    def segment(self, seg: Segment, items: list[_Item]) -> None:
        if self.prev_seg is not None and seg.seq != self.prev_seg.seq + 1:
            self.broken()
        for item in items:
            if item.good:
                self._settle(item, seg)
                self.prev = item if item.version == VERSION else None
            else:
                self.run.append((seg, item))
        self.prev_seg = seg

    def done(self) -> None:
        self._settle(None)

    def _settle(self, nxt: _Item | None, nxt_seg: Segment | None = None) -> None:
        run, self.run = self.run, []
        if nxt is not None and nxt.sent:
            return
        if not run:
            if nxt is not None and nxt_seg is not None:
                self._gap(nxt, nxt_seg)
            return
        counted = [i for _, i in run if not (i.framed and i.sent)]
        records = len(counted)
        points = sum(i.points or 0 for i in counted)
        prev = self.prev
        if (prev is not None and nxt is not None and nxt.version == VERSION and prev.seq is not None
                and nxt.seq is not None and prev.before is not None and nxt.before is not None
                and nxt.seq - prev.seq - 1 >= records
                and nxt.before - prev.before - (prev.points or 0) >= points):
            records = nxt.seq - prev.seq - 1
            points = nxt.before - prev.before - (prev.points or 0)
        if not records:
            return
        seg, first = run[0]
        more = ""
        if len(run) > 1:
            last_seg, last = run[-1]
            more = f" (and {len(run) - 1} more damaged stretch(es) up to {last_seg.path.name} offset {last.offset})"
        self.spool._lost(seg, first.offset, records, points, first.what, more)

    def _gap(self, nxt: _Item, seg: Segment) -> None:
        """Two whole version-2 records in a row whose numbers are not: the records between them went
        without a trace, e.g. a segment cut exactly between two records, followed by the next one."""
        prev = self.prev
        if (prev is None or nxt.version != VERSION or prev.seq is None or nxt.seq is None
                or prev.before is None or nxt.before is None or nxt.seq <= prev.seq + 1):
            return
        points = max(0, nxt.before - prev.before - (prev.points or 0))
        self.spool._lost(seg, nxt.offset, nxt.seq - prev.seq - 1, points,
                         f"records {prev.seq + 1}..{nxt.seq - 1} missing before the record")
