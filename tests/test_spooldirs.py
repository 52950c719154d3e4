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

import json
import logging
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
from poller.spool import SEGMENT_PREFIX, SEGMENT_SUFFIX, Spool, SpoolError, SpoolInUse
from poller.spooldirs import Stranded, open_spool
from tests.test_outbox import FakeSink, wait_for
from tests.test_spool import DiskFaults, batch, corrupt, damage, drain


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
    assert drain_dir(root / "instance-2") == batch(2, 3)  # the running replica's, untouched
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


def test_a_directory_that_cannot_be_opened_is_said_once_and_the_others_are_found(tmp_path, caplog):
    root = tmp_path / "spool"
    leave(root / "instance-1", batch(1, 2))
    leave(root / "instance-2", batch(2, 2))
    real = Spool

    def spool(where, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(where).name == "instance-1":
            raise SpoolError(f"POLL_SPOOL_DIR={where} is not writable (Read-only file system); make it writable")
        return real(where, *args, **kwargs)

    stranded = Stranded(settings_for(root), root / "instance-0")
    with caplog.at_level(logging.WARNING, "poller"), mock.patch("poller.spooldirs.Spool", spool):
        for _ in range(3):
            found = stranded.find()
            assert [s.dir for s in found] == [root / "instance-2"]
            found[0].close()
    said = [r.getMessage() for r in caplog.records if "cannot be opened" in r.getMessage()]
    assert said == [f"spool: readings may wait in {root / 'instance-1'}, but it cannot be opened "
                    f"(POLL_SPOOL_DIR={root / 'instance-1'} is not writable (Read-only file system); make it "
                    "writable); they are sent once an instance can open it"], said


def drain_dir(where: Path) -> list[str]:
    spool = Spool(where)
    try:
        return drain(spool)
    finally:
        spool.close()


def test_the_outbox_sends_its_own_spool_then_the_stranded_ones_then_memory_each_line_once(tmp_path, caplog):
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
    assert sink.taken[7:50] == batch(1, 40) + batch(2, 3)  # then the others, each whole, in the order found
    assert sink.taken[50:] == batch(200, 5)  # memory last: the newest
    stats = box.stats()
    assert (stats.written_points, stats.replayed_points, stats.dropped_points) == (55, 50, 0)
    assert drain_dir(root / "instance-1") == [] and drain_dir(root / "instance-2") == []
    said = [r.getMessage() for r in caplog.records]
    for slot, n in (("instance-1", 40), ("instance-2", 3)):
        assert (f"spool: {n} points wait in {root / slot}, which no running instance holds (a replica gone, or "
                "POLL_COORDINATION changed): this instance sends them, after its own") in said, said
        assert f"spool: everything left in {root / slot} is sent; the directory is free" in said, said


def test_a_spool_taken_over_stays_on_disk_when_influxdb_is_down_at_the_stop(tmp_path, caplog):
    root = tmp_path / "spool"
    leave(root / "instance-1", batch(1, 12))
    settings = settings_for(root)
    sink = FakeSink(lambda n, body: WriteError("down (test)", True))
    own = open_spool(settings)
    box = Outbox(sink, own, batch_points=5, linger_s=0.01, retry_initial_s=30, close_timeout_s=0.5)
    found = Stranded(settings, own.dir).find()
    assert box.adopt(found[0])
    box.put(batch(2, 4))
    wait_for(lambda: sink.attempts, 5)  # one try, then the back-off
    assert box.stats().spool_points >= 12
    with caplog.at_level(logging.WARNING, "poller"):
        box.close()
    assert f"stopping with 12 points left in {root / 'instance-1'} (taken over, not sent yet)" in caplog.text
    assert not box.adopt(Spool(tmp_path / "late"))  # closing: the caller keeps it
    assert drain_dir(root / "instance-1") == batch(1, 12)  # all of it, still there for the next instance
    assert drain_dir(root / "instance-0") == batch(2, 4)
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
    assert drain_dir(root / "instance-1") == []


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
    after the own spool's and before memory's; what a running instance holds is untouched."""
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
                expected[where] = drain_dir(oracle)
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
            assert sorted(s.dir for s in found) == sorted(w for w, lines in expected.items() if lines)
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
        assert len(taken) == total
        assert taken[:own_points] == batch(900, own_points)
        middle = taken[own_points:total - memory_points]
        for lines in expected.values():  # each directory's lines in their order, none missing or twice
            assert [x for x in middle if x in set(lines)] == lines
        assert sorted(middle) == sorted(x for v in expected.values() for x in v)
        assert taken[total - memory_points:] == batch(999, memory_points)
        for where, lines in before.items():  # a running instance's directory: untouched
            logging.disable(logging.CRITICAL)
            try:
                assert drain_dir(where) == lines
            finally:
                logging.disable(logging.NOTSET)
