"""Spool directories no running instance holds: found under their own locks, then sent.

Replicas sharing POLL_SPOOL_DIR take slots instance-N (poller/spooldirs.py). Readings left at
the top level (one instance before POLL_COORDINATION=postgres), in the slot of a replica gone
(fewer replicas than before), or in slots after switching back are found by `Stranded.find`
and sent by the outbox (`Outbox.adopt`) after its own spool, each once; a directory a running
instance holds is never touched. Real files and locks throughout; the outbox's sink is the
in-process FakeSink where the order must be seen exactly (tests/test_outbox.py sends to a real
InfluxDB write API, and tests/test_instances.py runs the scale-down with real processes).
"""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.outbox import Outbox
from poller.settings import Settings
from poller.sink import WriteError
from poller.spool import HEADER, SEGMENT_PREFIX, SEGMENT_SUFFIX, Spool, SpoolError, SpoolInUse
from poller.spooldirs import Stranded, open_spool
from tests.test_outbox import FakeSink, spooled_lines, wait_for
from tests.test_spool import DiskFaults, batch, corrupt, damage, segments


def leave(where: Path, lines: list[str], sent: int = 0) -> None:
    """A directory a poller left: `lines` spooled, the first `sent` records acknowledged."""
    spool = Spool(where, segment_bytes=1200)
    for k in range(0, len(lines), 3):
        assert spool.append(lines[k:k + 3]).error is None
    for _ in range(sent):
        b = spool.peek(max_points=1)
        assert b is not None
        spool.ack(b)
    spool.close()


def settings_for(root: Path, coordination: str = "postgres") -> Settings:
    return Settings(spool_dir=str(root), coordination=coordination, influxdb_url="http://127.0.0.1:9")


def test_find_opens_only_the_directories_no_running_instance_holds(tmp_path):
    root = tmp_path / "spool"
    leave(root, batch(0, 1))
    leave(root / "instance-1", batch(1, 2))
    leave(root / "instance-2", batch(2, 3))
    leave(root / "instance-4", batch(4, 3), sent=1)  # everything acknowledged
    (root / "instance-3").mkdir()  # a slot never written to
    (root / "instance-5").write_text("not a directory")
    settings = settings_for(root)
    running = Spool(root / "instance-2")  # a replica that still runs
    own = open_spool(settings)
    try:
        assert own.dir == root / "instance-0"
        stranded = Stranded(settings, own.dir)
        found = stranded.find()
        try:
            assert [(s.dir, s.pending_points) for s in found] == [(root, 1), (root / "instance-1", 2)]
            for s in found:  # their locks are held: no other instance takes them meanwhile
                with pytest.raises(SpoolInUse):
                    Spool(s.dir)
            assert stranded.find() == []  # held here now: not found twice
        finally:
            for s in found:
                s.close()
        again = stranded.find()
        assert [s.dir for s in again] == [root, root / "instance-1"]  # not sent: found again
        for s in again:
            s.close()
    finally:
        own.close()
        running.close()
    assert spooled_lines(root / "instance-2") == batch(2, 3)  # the running replica's, untouched
    assert not list((root / "instance-4").glob(f"{SEGMENT_PREFIX}*"))  # acknowledged segments removed on opening


def test_a_single_poller_finds_the_slots_left_after_switching_coordination_back(tmp_path):
    root = tmp_path / "spool"
    leave(root / "instance-0", batch(0, 2))
    leave(root / "instance-7", batch(7, 1))
    settings = settings_for(root, coordination="none")
    own = open_spool(settings)
    try:
        assert own.dir == root
        found = Stranded(settings, own.dir).find()
        assert [(s.dir, s.pending_points) for s in found] == [(root / "instance-0", 2), (root / "instance-7", 1)]
        for s in found:
            s.close()
    finally:
        own.close()


def test_a_directory_with_nothing_to_send_is_not_opened_again_until_its_files_change(tmp_path, caplog):
    """A file the spool cannot use is said (ERROR) when the directory is opened; looking every
    minute must not say it every minute."""
    root = tmp_path / "spool"
    slot = root / "instance-1"
    slot.mkdir(parents=True)
    stray = slot / f"{SEGMENT_PREFIX}0000000000000001{SEGMENT_SUFFIX}"
    stray.write_bytes(b"no spool record in here")
    stranded = Stranded(settings_for(root), root / "instance-0")
    with caplog.at_level(logging.ERROR, "poller"):
        assert stranded.find() == []
        assert stranded.find() == []
    said = [r for r in caplog.records if "holds no spool record" in r.getMessage()]
    assert len(said) == 1, caplog.text
    leave(slot, batch(9, 2))  # readings arrive beside it (another segment): looked at again
    found = stranded.find()
    assert [(s.dir, s.pending_points) for s in found] == [(slot, 2)]
    found[0].close()


def opening_fails(name: str, error: BaseException):  # type: ignore[no-untyped-def]
    """poller.spooldirs.Spool patched: opening the directory `name` raises `error`."""
    real = Spool

    def spool(where, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(where).name == name:
            raise error
        return real(where, *args, **kwargs)

    return mock.patch("poller.spooldirs.Spool", spool)


def test_a_directory_that_cannot_be_opened_is_said_once_and_the_others_are_found(tmp_path, caplog):
    root = tmp_path / "spool"
    leave(root / "instance-1", batch(1, 2))
    leave(root / "instance-2", batch(2, 2))
    error = SpoolError(f"POLL_SPOOL_DIR={root / 'instance-1'} is not writable (Read-only file system); make it "
                       "writable")
    stranded = Stranded(settings_for(root), root / "instance-0")
    with caplog.at_level(logging.WARNING, "poller"), opening_fails("instance-1", error):
        for _ in range(3):
            found = stranded.find()
            assert [s.dir for s in found] == [root / "instance-2"]
            found[0].close()
    said = [r.getMessage() for r in caplog.records if "cannot be opened" in r.getMessage()]
    assert said == [f"spool: readings may wait in {root / 'instance-1'}, but it cannot be opened "
                    f"(POLL_SPOOL_DIR={root / 'instance-1'} is not writable (Read-only file system); make it "
                    "writable); they are sent once an instance can open it"], said


def test_the_outbox_sends_its_own_spool_then_the_stranded_ones_beside_memory_each_line_once(tmp_path, caplog):
    root = tmp_path / "spool"
    own_lines = batch(100, 7)
    leave(root / "instance-0", own_lines)  # this instance's, from its earlier run
    leave(root / "instance-1", batch(1, 40))
    leave(root / "instance-2", batch(2, 3))
    settings = settings_for(root)
    sink = FakeSink()
    own = open_spool(settings)
    box = Outbox(sink, own, batch_points=10, linger_s=0.01)
    try:
        with caplog.at_level(logging.INFO, "poller"):
            for other in Stranded(settings, own.dir).find():
                assert box.adopt(other)
            box.put(batch(200, 5))
            wait_for(lambda: len(sink.taken) == 7 + 40 + 3 + 5, 10)
            wait_for(lambda: box.stats().spool_points == 0, 5)
    finally:
        box.close()
    assert sink.taken[:7] == own_lines  # its own first: it was there before the others were found
    rest = [x for x in sink.taken[7:] if x not in batch(200, 5)]
    assert rest == batch(1, 40) + batch(2, 3)  # then the others, each whole, in the order found
    assert [x for x in sink.taken if x in batch(200, 5)] == batch(200, 5)  # memory's, taking turns with them
    stats = box.stats()
    assert (stats.written_points, stats.replayed_points, stats.dropped_points) == (55, 50, 0)
    assert spooled_lines(root / "instance-1") == [] and spooled_lines(root / "instance-2") == []
    said = [r.getMessage() for r in caplog.records]
    for slot, n in (("instance-1", 40), ("instance-2", 3)):
        assert (f"spool: {n} points wait in {root / slot}, which no running instance holds (a replica gone, or "
                "POLL_COORDINATION changed): this instance sends them") in said, said
        assert f"spool: everything left in {root / slot} is sent; the directory is free" in said, said
    # "... from an earlier run; they are sent first" is its own spool's line, not a taken-over one's
    assert not [m for m in said if "they are sent first" in m], said


def test_a_spool_taken_over_stays_on_disk_when_influxdb_is_down_at_the_stop(tmp_path, caplog):
    root = tmp_path / "spool"
    leave(root / "instance-1", batch(1, 12))
    settings = settings_for(root)
    sink = FakeSink(lambda n, body: WriteError("down (test)", True))
    own = open_spool(settings)
    box = Outbox(sink, own, batch_points=5, linger_s=0.01, retry_initial_s=30, close_timeout_s=0.5)
    found = Stranded(settings, own.dir).find()
    with caplog.at_level(logging.ERROR, "poller"):
        assert box.adopt(found[0])
        box.put(batch(2, 4))
        wait_for(lambda: sink.attempts, 5)  # one try, then the back-off
        wait_for(lambda: "unreachable: spooling to" in caplog.text, 5)
    assert box.stats().spool_points >= 12
    # the outage's line counts the readings taken over too (the 4 put may come just after it)
    waiting = re.search(r"unreachable: spooling to .*; (\d+) points waiting", caplog.text)
    assert waiting is not None and int(waiting.group(1)) in (12, 16), caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "poller"):
        box.close()
    assert f"stopping with 12 points left in {root / 'instance-1'} (taken over, not sent yet)" in caplog.text
    assert not box.adopt(Spool(tmp_path / "late"))  # closing: the caller keeps it
    assert spooled_lines(root / "instance-1") == batch(1, 12)  # all of it, still there for the next instance
    assert spooled_lines(root / "instance-0") == batch(2, 4)
    assert box.stats().dropped_points == 0


def test_rejected_batches_of_a_spool_taken_over_go_to_this_instances_dead_letter_file(tmp_path):
    root = tmp_path / "spool"
    leave(root / "instance-1", batch(1, 6))
    settings = settings_for(root)
    sink = FakeSink(lambda n, body: WriteError("HTTP 400: bad line (test)", False))
    own = open_spool(settings)
    box = Outbox(sink, own, batch_points=5, linger_s=0.01)
    try:
        assert box.adopt(Stranded(settings, own.dir).find()[0])
        wait_for(lambda: box.stats().dead_lettered_points == 6, 10)
    finally:
        box.close()
    dead = (root / "instance-0" / "dead-letter.jsonl").read_text().splitlines()
    assert [x for entry in dead for x in json.loads(entry)["lines"]] == batch(1, 6)
    assert spooled_lines(root / "instance-1") == []


def test_without_a_spool_of_its_own_the_outbox_takes_nothing_over(tmp_path):
    leave(tmp_path / "other", batch(1, 2))
    other = Spool(tmp_path / "other")
    box = Outbox(FakeSink(), None)
    try:
        assert not box.adopt(other)
    finally:
        box.close()
        other.close()


slot_contents = st.tuples(
    st.lists(st.integers(1, 5), max_size=8),  # batches (points each)
    st.integers(0, 4),  # records acknowledged
    st.lists(damage.filter(lambda op: op[0] != "unreadable"), max_size=2),  # damage at rest
    st.booleans())  # held by a running instance


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(slots=st.lists(slot_contents, min_size=1, max_size=4), own_points=st.integers(0, 6),
       memory_points=st.integers(0, 6))
def test_any_layout_of_stranded_directories_sends_every_good_pending_line_once(slots, own_points, memory_points):
    """Whatever replicas left (records sent or not, damage at rest, some still running): the
    good pending lines of every directory no one holds reach the sink once, in their order,
    after the own spool's (memory's take turns with them); what a running instance holds is
    untouched."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "spool"
        if own_points:
            leave(root / "instance-0", batch(900, own_points))
        expected: dict[Path, list[str]] = {}
        held: list[Spool] = []
        before: dict[Path, list[str]] = {}
        for n, (sizes, acked, ops, running) in enumerate(slots, start=1):
            where = root / f"instance-{n}"
            lines = [x for k, p in enumerate(sizes) for x in batch(n * 100 + k, p)]
            leave(where, lines, sent=min(acked, len(lines) // 3))
            corrupt(where, ops, DiskFaults())
            oracle = Path(tmp) / f"copy-{n}"  # what an instance that takes this directory would send
            shutil.copytree(where, oracle)
            logging.disable(logging.CRITICAL)  # the damage is said by every Spool that opens it
            try:
                expected[where] = spooled_lines(oracle)
            finally:
                logging.disable(logging.NOTSET)
            if running:
                held.append(Spool(where))
                before[where] = expected.pop(where)
        settings = settings_for(root)
        sink = FakeSink()
        logging.disable(logging.CRITICAL)
        own = open_spool(settings)
        box = Outbox(sink, own, batch_points=4, linger_s=0.01)
        try:
            found = Stranded(settings, own.dir).find()
            # those with lines to send, and maybe some with only damage to count: never a held one
            assert {w for w, lines in expected.items() if lines} <= {s.dir for s in found} <= set(expected)
            for other in found:
                assert box.adopt(other)
            box.put(batch(999, memory_points))
            total = own_points + sum(len(v) for v in expected.values()) + memory_points
            wait_for(lambda: len(sink.taken) >= total and box.stats().spool_points == 0, 10)
        finally:
            box.close()
            for h in held:
                h.close()
            logging.disable(logging.NOTSET)
        taken = sink.taken
        assert len(taken) == total and len(set(taken)) == total  # none missing, none twice
        assert taken[:own_points] == batch(900, own_points)  # its own spool first: it was there before
        sources = [*expected.values(), batch(999, memory_points)]
        assert sorted(taken[own_points:]) == sorted(x for lines in sources for x in lines)
        for lines in sources:  # each directory's lines, and memory's, in their order
            assert [x for x in taken if x in set(lines)] == lines
        for where, lines in before.items():  # a running instance's directory: untouched
            logging.disable(logging.CRITICAL)
            try:
                assert spooled_lines(where) == lines
            finally:
                logging.disable(logging.NOTSET)


def flip_every_payload(where: Path) -> int:
    """One payload byte flipped in every record of every segment (the headers still check out)."""
    n = 0
    for path in segments(where):
        data = bytearray(path.read_bytes())
        pos = 0
        while pos < len(data):
            length = int.from_bytes(data[pos + 24:pos + 28], "big")
            data[pos + HEADER.size] ^= 0x01
            pos += HEADER.size + length
            n += 1
        path.write_bytes(bytes(data))
    return n


def test_what_a_stranded_directory_lost_is_counted_even_with_nothing_left_to_send(tmp_path):
    """Opening it finds the damage and removes the segment (nothing pending): no one could count
    it later, so it is counted here (emm_spool_damaged_records_total, emm_dropped_disk_error_points_total)."""
    root = tmp_path / "spool"
    leave(root / "instance-1", batch(1, 6))  # two records of 3 points
    assert flip_every_payload(root / "instance-1") == 2
    settings = settings_for(root)
    own = open_spool(settings)
    box = Outbox(FakeSink(), own, batch_points=5, linger_s=0.01)
    try:
        for other in Stranded(settings, own.dir).find():
            assert box.adopt(other)
        wait_for(lambda: box.stats().damaged_records == 2, 5)
        stats = box.stats()
    finally:
        box.close()
    assert not segments(root / "instance-1")
    assert (stats.damaged_records, stats.dropped_disk_error_points, stats.written_points) == (2, 6, 0), stats
    assert box.stats().dropped_disk_error_points == 6  # and it stays counted after the close


def test_a_blip_while_a_stranded_spool_is_sent_loses_and_repeats_nothing(tmp_path):
    root = tmp_path / "spool"
    leave(root / "instance-1", batch(1, 12))
    settings = settings_for(root)
    sink = FakeSink(lambda n, body: WriteError("blip (test)", True) if n == 0 else None)
    own = open_spool(settings)
    box = Outbox(sink, own, batch_points=3, linger_s=0.01, retry_initial_s=0.3)
    try:
        (other,) = Stranded(settings, own.dir).find()
        assert box.adopt(other)
        box.put(batch(2, 3))  # newer: spooled by the outage the blip starts
        wait_for(lambda: len(sink.taken) == 15 and box.stats().spool_points == 0, 10)
    finally:
        box.close()
    assert sorted(sink.taken) == sorted(batch(1, 12) + batch(2, 3))
    assert [x for x in sink.taken if x in batch(1, 12)] == batch(1, 12)


def test_a_large_stranded_spool_keeps_no_new_reading_waiting(tmp_path):
    """Its batches and memory's take turns: a reading put while it is sent goes out within a
    batch or two, not after the whole backlog (which would sit in memory, where a crash loses it)."""
    root = tmp_path / "spool"
    leave(root / "instance-1", [x for n in range(40) for x in batch(n, 30)])  # 1200 points
    settings = settings_for(root)
    sink = FakeSink(delay=lambda n: 0.02)  # a batch of 30 in 20 ms: the backlog takes about 0.8 s
    own = open_spool(settings)
    box = Outbox(sink, own, batch_points=30, linger_s=0.01)
    try:
        (other,) = Stranded(settings, own.dir).find()
        assert box.adopt(other)
        wait_for(lambda: len(sink.taken) >= 90, 5)
        box.put(["new,meter=1 value=1.0 1800000000000"])
        wait_for(lambda: "new,meter=1 value=1.0 1800000000000" in sink.taken, 5)
        sent_before = len(sink.taken)
        wait_for(lambda: len(sink.taken) == 1201, 10)
    finally:
        box.close()
    assert sent_before <= 90 + 3 * 30 + 1, f"the new reading waited for {sent_before - 91} stranded points"


def test_a_stranded_record_sent_but_not_marked_sent_is_not_sent_again_at_the_next_look(tmp_path, caplog):
    """The mark cannot be written and the finished segment cannot be removed: the records stay
    'pending' on disk. The directory is kept (its lock held) until the stop, as an own spool keeps
    such acknowledgements in memory, so the look a minute later does not send them again."""
    root = tmp_path / "spool"
    slot = root / "instance-1"
    leave(slot, batch(1, 6))
    settings = settings_for(root)
    sink = FakeSink()
    own = open_spool(settings)
    box = Outbox(sink, own, batch_points=10, linger_s=0.01)
    faults = DiskFaults()

    def in_slot(path: str) -> bool:
        return path.startswith(f"{slot}/{SEGMENT_PREFIX}")

    faults.fail("pwrite", errno.EIO, in_slot)  # the mark SENT
    faults.fail("unlink", errno.EIO, in_slot)  # the finished segment
    stranded = Stranded(settings, own.dir)
    try:
        with faults.active(), caplog.at_level(logging.WARNING, "poller"):
            for _ in range(3):  # three looks, a minute apart
                for other in stranded.find():
                    assert box.adopt(other)
                wait_for(lambda: box.stats().spool_points == 0, 10)
    finally:
        box.close()
    assert sink.taken == batch(1, 6)
    assert f"spool: everything left in {slot} is sent, but not all of it could be marked sent" in caplog.text


def test_a_failure_while_looking_keeps_no_lock_of_the_directories_opened_before_it(tmp_path):
    root = tmp_path / "spool"
    leave(root / "instance-1", batch(1, 3))
    leave(root / "instance-2", batch(2, 3))
    with opening_fails("instance-2", MemoryError("a stray file too large to read (test)")), pytest.raises(MemoryError):
        Stranded(settings_for(root), root / "instance-0").find()
    assert spooled_lines(root / "instance-1") == batch(1, 3)  # opened by find, and free again


def test_slots_are_looked_at_in_their_numbers_order_and_a_stop_ends_the_look(tmp_path):
    root = tmp_path / "spool"
    for n in (10, 2, 1):
        leave(root / f"instance-{n}", batch(n, 1))
    stranded = Stranded(settings_for(root), root / "instance-0")
    found = stranded.find()
    assert [s.dir.name for s in found] == ["instance-1", "instance-2", "instance-10"]
    for s in found:
        s.close()
    stranded.stop()
    assert stranded.find() == []


def test_the_service_says_a_failing_look_and_looks_again(tmp_path, monkeypatch, caplog):
    """A bug in a look (Stranded.find raising) is said once with its traceback; the next look,
    a minute later or when the leases change, still takes over what it finds."""
    import asyncio
    import types

    from poller import __main__ as service

    root = tmp_path / "spool"
    leave(root / "instance-1", batch(1, 2))
    settings = settings_for(root)
    looks: list[int] = []
    real = Stranded(settings, root / "instance-0")

    class Flaky:
        def find(self) -> list[Spool]:
            looks.append(1)
            if len(looks) == 1:
                raise RuntimeError("a bug (test)")
            return real.find()

        def stop(self) -> None:
            pass

    adopted: list[Spool] = []
    monkeypatch.setattr(service, "STRANDED_FIRST_S", 0.0)
    monkeypatch.setattr(service, "STRANDED_EVERY_S", 0.05)

    async def run() -> None:
        this = types.SimpleNamespace(outbox=types.SimpleNamespace(adopt=lambda s: adopted.append(s) or True),
                                     look_for_stranded=asyncio.Event())
        task = asyncio.create_task(service.Service._send_stranded(this, Flaky()))  # type: ignore[arg-type]
        while not adopted:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.ERROR, "poller"):
        asyncio.run(asyncio.wait_for(run(), 10))
    try:
        assert [s.dir for s in adopted] == [root / "instance-1"]
    finally:
        for s in adopted:
            s.close()
    failed = [r for r in caplog.records if "looking for spool directories no running instance holds failed"
              in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None


def test_counter_history_is_read_from_every_slot_and_a_volume_that_cannot_be_listed_is_said(tmp_path, monkeypatch,
                                                                                            caplog):
    """Service._counter_history (a bus new here): the counter state files of POLL_SPOOL_DIR and
    of each slot are handed to the poller; when the volume cannot be listed it says so once, and
    the meters' counters start without history (nothing raised into the cycle)."""
    import asyncio
    import types

    from poller import __main__ as service

    root = tmp_path / "spool"
    for where in (root, root / "instance-0", root / "instance-1"):
        where.mkdir(parents=True, exist_ok=True)
    (root / "counters.json").write_text("{}")
    (root / "instance-0" / "counters-worker-1.json").write_text("{}")
    (root / "instance-1" / "counters.json").write_text("{}")
    loaded: list[tuple[list[Path], list[int]]] = []
    this = types.SimpleNamespace(settings=types.SimpleNamespace(spool_dir=str(root)),
                                 poller=types.SimpleNamespace(load_counter_history=lambda f, i: loaded.append((f, i))))
    asyncio.run(service.Service._counter_history(this, [4, 5]))  # type: ignore[arg-type]
    assert loaded == [([root / "counters.json", root / "instance-0" / "counters-worker-1.json",
                        root / "instance-1" / "counters.json"], [4, 5])]

    def unlistable(where: Path) -> list[Path]:
        raise PermissionError(errno.EACCES, "Permission denied", str(where))

    monkeypatch.setattr(service, "spool_dirs", unlistable)
    with caplog.at_level(logging.WARNING, "poller"):
        asyncio.run(service.Service._counter_history(this, [6]))  # type: ignore[arg-type]
    assert len(loaded) == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"counter state under {root} cannot be listed (Permission denied): the counters of 1 meter(s) new here "
        "start without history"]
