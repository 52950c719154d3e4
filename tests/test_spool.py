"""The durable spool on its own: order, torn records, the size bound, the sink's replay logic."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from poller.sink import WriteError
from poller.spool import HEADER, SEGMENT_PREFIX, Spool, SpoolError, SpoolingSink, encode_record


def batch(n: int, points: int = 3) -> list[str]:
    """`points` distinct lines tagged with the batch number n."""
    return [f"m,b={n} value={i}.0 {1_700_000_000_000 + n * 1000 + i}" for i in range(points)]


def drain(spool: Spool, max_points: int = 5000) -> list[str]:
    out: list[str] = []
    while (b := spool.peek(max_points)) is not None:
        out.extend(b.lines)
        spool.ack(b)
    return out


def segments(path) -> list:
    return sorted(path.glob(f"{SEGMENT_PREFIX}*"))


def test_order_is_kept_across_segments_and_restarts(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=300)
    for n in range(20):
        spool.append(batch(n))
    assert len(segments(tmp_path)) >= 5
    assert spool.pending_points == 60
    first = spool.peek(max_points=7)  # whole records only: 2 batches of 3
    assert first is not None and first.lines == batch(0) + batch(1)
    spool.ack(first)
    spool.close()

    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=300)  # as after a restart
    assert again.pending_points == 54
    again.append(batch(20))
    assert drain(again, max_points=4) == [x for n in range(2, 21) for x in batch(n)]
    assert again.pending_points == 0 and segments(tmp_path) == []
    again.close()


def test_a_torn_record_at_the_end_is_skipped_with_a_warning(tmp_path, caplog):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for n in range(3):
        spool.append(batch(n))
    spool.close()
    (seg,) = segments(tmp_path)
    whole = seg.read_bytes()
    last = len(encode_record(batch(2)))
    seg.write_bytes(whole[:-last + HEADER.size + 5])  # header and 5 bytes of the payload made it to disk

    with caplog.at_level(logging.WARNING, logger="poller.spool"):
        again = Spool(tmp_path, max_bytes=1 << 20)
    assert any("not a whole record" in r.message and seg.name in r.message and r.levelno == logging.WARNING
               for r in caplog.records), caplog.text
    assert again.pending_points == 6
    again.append(batch(3))  # goes to a new segment, after the torn one
    assert drain(again) == batch(0) + batch(1) + batch(3)
    again.close()


def test_a_garbled_record_is_detected_by_its_checksum(tmp_path, caplog):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(batch(0))
    spool.append(batch(1))
    spool.close()
    (seg,) = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0x01  # one bit of the last record's payload
    seg.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="poller.spool"):
        again = Spool(tmp_path, max_bytes=1 << 20)
    assert "not a whole record" in caplog.text
    assert drain(again) == batch(0)
    again.close()


def test_the_size_bound_drops_the_oldest_first_and_counts(tmp_path, caplog):
    record = len(encode_record(batch(0, points=10)))
    limit = 12 * record
    spool = Spool(tmp_path, max_bytes=limit, segment_bytes=2 * record)
    with caplog.at_level(logging.ERROR, logger="poller.spool"):
        for n in range(40):
            spool.append(batch(n, points=10))
            assert spool.size_bytes <= limit
    assert spool.dropped_points > 0 and spool.dropped_points % 10 == 0
    kept = drain(spool)
    assert spool.dropped_points + len(kept) == 400
    oldest_kept = 40 - len(kept) // 10
    assert kept == [x for n in range(oldest_kept, 40) for x in batch(n, points=10)]  # the newest, in order
    full = [r for r in caplog.records if "is full" in r.message]
    assert full and all(r.levelno == logging.ERROR for r in full)
    assert f"{spool.dropped_points} points dropped since start" in full[-1].message
    spool.close()


def test_one_process_per_spool_directory(tmp_path):
    first = Spool(tmp_path)
    with pytest.raises(SpoolError, match="in use by another poller"):
        Spool(tmp_path)
    first.close()
    Spool(tmp_path).close()


def test_an_unusable_directory_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SpoolError, match=f"POLL_SPOOL_DIR={blocker}/spool cannot be created"):
        Spool(blocker / "spool")


class ScriptedSink:
    """Fails while `down` is set; records every batch it took."""

    url = "http://scripted"

    def __init__(self) -> None:
        self.down = threading.Event()
        self.taken: list[list[str]] = []
        self.attempts: list[float] = []

    def write(self, lines):
        self.attempts.append(time.monotonic())
        if self.down.is_set():
            raise WriteError("InfluxDB at http://scripted is unreachable (test)", True)
        self.taken.append(list(lines))

    def close(self):
        pass


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_new_readings_never_overtake_spooled_ones(tmp_path, caplog):
    inner = ScriptedSink()
    sink = SpoolingSink(inner, Spool(tmp_path), retry_initial_s=0.2, retry_max_s=0.4)
    try:
        sink.write(batch(0))
        inner.down.set()
        with caplog.at_level(logging.INFO, logger="poller.spool"):
            for n in range(1, 6):
                sink.write(batch(n))  # returns: safe on disk
                time.sleep(0.05)
            assert sink.spooled_points == 15 and sink.spool_points == 15 and sink.spool_bytes > 0
            attempts_down = len(inner.attempts)
            time.sleep(0.5)
            assert 1 <= len(inner.attempts) - attempts_down <= 4  # backing off, not hammering
            inner.down.clear()
            sink.write(batch(6))  # while the spool is not empty: behind it
            # the replay thread says so when it has sent the last spooled batch
            wait_for(lambda: any(r.message.startswith("spool drained") for r in caplog.records))
            assert sink.spool_points == 0
            sink.write(batch(7))  # straight through again
    finally:
        sink.close()
    taken = [x for b in inner.taken for x in b]
    assert taken == [x for n in range(8) for x in batch(n)]
    assert sink.replayed_points == 18 and sink.dropped_points == 0 and sink.dead_lettered_points == 0
    errors = [r.message for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"InfluxDB at http://scripted unreachable: spooling to {tmp_path}; 3 points in spool "
                      "(InfluxDB at http://scripted is unreachable (test))"]
    assert any("answers again after" in r.message for r in caplog.records)
    assert any(r.message.startswith("spool drained: 18 points replayed") for r in caplog.records)


def test_close_leaves_what_it_cannot_send_on_disk(tmp_path, caplog):
    inner = ScriptedSink()
    inner.down.set()
    sink = SpoolingSink(inner, Spool(tmp_path), retry_initial_s=30, close_timeout_s=1)
    sink.write(batch(0))
    sink.write(batch(1))
    with caplog.at_level(logging.WARNING, logger="poller.spool"):
        sink.close()
    assert "stopping with 6 points in the spool" in caplog.text
    inner.down.clear()
    with caplog.at_level(logging.INFO, logger="poller.spool"):
        sink = SpoolingSink(inner, Spool(tmp_path))
        wait_for(lambda: sink.spool_points == 0)
        sink.close()
    assert "6 points in 1 segment(s) from an earlier run" in caplog.text
    assert [x for b in inner.taken for x in b] == batch(0) + batch(1)
