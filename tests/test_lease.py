"""poller/lease.py against a real PostgreSQL: fair shares, give-back, takeover, fencing, and
many instances beating at once never granting one bus to two of them."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from poller.lease import BEAT_LOCK, Leases, bus_key, grace_s, wanted_buses
from poller.model import BusAddress, DeviceType, Meter, SerialLine, Transport
from poller.settings import from_env

BUSES = {f"tcp 10.0.0.{i}:502": 1.5 for i in range(10)}


def make(postgres, database, lease_s: float = 3.0) -> Leases:  # type: ignore[no-untyped-def]
    return Leases(from_env(postgres.env(database)), lease_s=lease_s, heartbeat_s=0.5)


def test_the_first_instance_takes_all_and_a_second_gets_its_share_after_the_grace(postgres, database):
    a, b = make(postgres, database), make(postgres, database)
    try:
        first = a.beat(BUSES)
        assert (first.live, first.share, first.owned) == (1, 10, 10)
        assert all(a.owns(BusAddress(Transport.TCP, f"10.0.0.{i}", 502)) for i in range(10))
        joined = b.beat(BUSES)  # registered, but nothing is free yet
        assert (joined.live, joined.share, joined.owned) == (2, 5, 0)
        given = a.beat(BUSES)
        assert given.owned == 5 and len(given.released) == 5
        # given back, but not claimable before the longest reply window (+1 s) is over
        assert b.beat(BUSES).owned == 0
        time.sleep(1.6)
        took = b.beat(BUSES)
        assert took.owned == 5 and sorted(took.claimed) == given.released
        assert a.held().isdisjoint(b.held()) and len(a.held() | b.held()) == 10
        assert b.takeovers == 0  # given back is not taken over
    finally:
        a.close()
        b.close()


def test_a_paused_instance_loses_its_buses_and_sends_on_none_of_them(postgres, database):
    a, b = make(postgres, database, lease_s=2.0), make(postgres, database, lease_s=2.0)
    wanted = dict(list(BUSES.items())[:3])
    address = BusAddress(Transport.TCP, "10.0.0.0", 502)
    try:
        a.beat(wanted)
        assert a.owns(address)
        before = a.until(address)
        # the local deadline: the clock before the transaction + the lease (here 1.5 s of grace + 2 heartbeats)
        assert a.effective_lease_s == pytest.approx(2.5)
        assert before <= time.monotonic() + 2.5
        time.sleep(a.effective_lease_s + 0.1)  # "paused": no heartbeat for longer than the lease
        assert not a.owns(address)  # by its own clock, before it talks to anyone
        took = b.beat(wanted)
        assert took.owned == 3 and b.takeovers == 3
        back = a.beat(wanted)  # the renewal finds the leases taken
        assert back.owned == 0 and back.lost == sorted(wanted)
        assert a.until(address) == 0.0 and a.shared.values[a.shared.slot(bus_key(address))] == 0.0
        assert set(postgres.lease_owners(database).values()) == {b.instance}
    finally:
        a.close()
        b.close()


def test_a_clean_stop_gives_every_lease_back_at_once(postgres, database):
    a, b = make(postgres, database), make(postgres, database)
    try:
        a.beat(BUSES)
        b.beat(BUSES)
        a.release_all()
        assert b.beat(BUSES).owned == 10  # no waiting for the lease to run out
    finally:
        b.close()


def beat_concurrently(instances: list[Leases], run) -> None:  # type: ignore[no-untyped-def]
    """run(lease, seed) in a thread per instance, all at once; then every instance closed."""
    threads = [threading.Thread(target=run, args=(lease, i)) for i, lease in enumerate(instances)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for lease in instances:
        lease.close()


def test_many_instances_beating_at_once_never_grant_a_bus_to_two(postgres, database):
    """Five instances, random configurations (buses coming and going), beating concurrently for
    3 s, some pausing past their lease: the spans in which each may poll a bus (from the end of
    the beat that granted it to its local deadline, or to the start of the beat that gave it
    back) never overlap for two instances."""
    instances = [make(postgres, database, lease_s=2.0) for _ in range(5)]
    spans: list[tuple[str, str, float, float]] = []  # (bus, instance, from, until)
    lock = threading.Lock()
    stop = time.monotonic() + 3.0
    errors: list[BaseException] = []

    def run(lease: Leases, seed: int) -> None:
        rng = random.Random(seed)
        open_: dict[str, tuple[float, float]] = {}
        try:
            while time.monotonic() < stop:
                wanted = {k: 0.2 for k in BUSES if rng.random() < 0.9}
                before = time.monotonic()
                lease.beat(wanted)
                after = time.monotonic()
                held = lease.held()
                for key in [k for k in open_ if k not in held]:
                    start, until = open_.pop(key)
                    with lock:
                        spans.append((key, lease.instance, start, min(until, before)))
                for key in held:
                    open_[key] = (open_.get(key, (after, 0.0))[0], lease.until_key(key))
                time.sleep(rng.uniform(0, 0.3))
                if rng.random() < 0.1:  # a pause past the lease now and then
                    time.sleep(2.1)
            with lock:
                spans.extend((k, lease.instance, start, until) for k, (start, until) in open_.items())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    beat_concurrently(instances, run)
    assert not errors, errors
    by_bus: dict[str, list[tuple[float, float, str]]] = {}
    for bus, who, start, until in spans:
        by_bus.setdefault(bus, []).append((start, until, who))
    assert len(by_bus) == len(BUSES)
    assert len({who for _, who, _, _ in spans}) >= 3, "the buses should have moved between instances"
    for bus, owned in by_bus.items():
        for i, (s1, u1, w1) in enumerate(owned):
            for s2, u2, w2 in owned[i + 1:]:
                assert w1 == w2 or u1 <= s2 or u2 <= s1, (bus, (s1, u1, w1), (s2, u2, w2))


@pytest.mark.parametrize("transport, line, expected", [
    (Transport.TCP, None, 3.0 + 1.0),
    (Transport.SERIAL, SerialLine(baudrate=9600), 3.0 + (8 + 255) * 10 / 9600 + 1.0),  # 8N1: 10 bits
])
def test_the_grace_covers_the_longest_reply_window(transport, line, expected):
    dtype = DeviceType(name="t", registers=(), timeout_s=3.0)
    slow = Meter(1, "/dev/ttyUSB0" if line else "h", 0 if line else 502, 1, dtype, transport=transport, line=line)
    fast = Meter(2, "/dev/ttyUSB0" if line else "h", 0 if line else 502, 2,
                 DeviceType(name="f", registers=(), timeout_s=0.5), transport=transport, line=line)
    assert grace_s([slow, fast]) == pytest.approx(expected)
    assert wanted_buses([slow, fast, Meter(3, "x", 502, 1, dtype, enabled=False)]) == {
        bus_key(slow.bus): pytest.approx(expected)}


def test_instances_claiming_the_same_free_buses_at_the_same_instant_get_one_each(postgres, database):
    """All see every bus free and claim at once: the claim re-checks the expiry on the row it
    locks, so the later one finds the bus taken (rounds repeated: the race is real each time)."""
    instances = [make(postgres, database) for _ in range(5)]
    try:
        for _ in range(5):
            barrier = threading.Barrier(len(instances))
            for lease in instances:  # everyone registered, so each one's share is 2
                lease.beat({})

            def claim(lease: Leases, barrier: threading.Barrier) -> None:
                barrier.wait()
                lease.beat(BUSES)

            threads = [threading.Thread(target=claim, args=(lease, barrier)) for lease in instances]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            held = [lease.held() for lease in instances]
            for i, mine in enumerate(held):
                for theirs in held[i + 1:]:
                    assert mine.isdisjoint(theirs), held
            for lease in instances:
                lease.release_all()
    finally:
        for lease in instances:
            lease.close()


def test_a_lease_shorter_than_a_meters_reply_window_is_lengthened(postgres, database):
    """POLL_LEASE_S=2 with a meter whose timeout is 3 s: a renewed lease must still leave room for
    that meter's whole reply window, or its requests would never be sent (fenced every time)."""
    a = Leases(from_env(postgres.env(database)), lease_s=2.0, heartbeat_s=0.5)
    address = BusAddress(Transport.TCP, "10.0.0.0", 502)
    try:
        a.beat({bus_key(address): 3.0 + 1.0})
        assert a.effective_lease_s == pytest.approx(5.0)
        time.sleep(0.5)  # one heartbeat later, just before the next renewal
        assert a.until(address) - time.monotonic() > 3.0 + 1.0
        assert postgres.lease_owners(database) == {bus_key(address): a.instance}
    finally:
        a.close()


def test_instances_beating_as_fast_as_they_can_never_fail_a_beat(postgres, database):
    """Eight instances, configurations changing at every beat (buses given back, claimed, taken
    over), pausing past their lease now and then: no beat fails. Before the beats took turns
    (BEAT_LOCK), one giving back a bus another claimed, and the other way round on a second
    bus, deadlocked in PostgreSQL, which failed one of the beats: 5 failed beats in 6 s here."""
    instances = [Leases(from_env(postgres.env(database)), lease_s=1.0, heartbeat_s=0.25) for _ in range(8)]
    buses = [f"tcp 10.0.1.{i}:502" for i in range(12)]
    errors: list[str] = []
    beats = [0]
    stop = time.monotonic() + 6.0

    def run(lease: Leases, seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            try:
                lease.beat({k: 0.1 for k in buses if rng.random() < 0.6})
                beats[0] += 1
            except Exception as exc:  # noqa: BLE001 - what the test counts
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
            if rng.random() < 0.2:
                time.sleep(1.1)  # past the lease

    beat_concurrently(instances, run)
    assert not errors, errors
    assert beats[0] > 100


# --------------------------------------------------------------------------- the ticks a change of instance costs

EVERY_S = "* * * * * *"
DTYPE = DeviceType(name="t", registers=(), timeout_s=0.5)
ON_BUSES = [Meter(10 * i + u, f"10.0.0.{i}", 502, u, DTYPE) for i in range(10) for u in (1, 2)]  # 2 on each


def next_second() -> datetime:
    """A tick to start from: the next whole second (the claims happen before it)."""
    return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)


def seconds(t: datetime, n: float) -> datetime:
    return t + timedelta(seconds=n)


def polled_through(postgres, database) -> dict[str, datetime | None]:  # type: ignore[no-untyped-def]
    rows = postgres.psql(database, "-At", "-F", "|", "-c",
                         "SELECT bus, extract(epoch FROM polled_through) FROM bus_leases").stdout
    out: dict[str, datetime | None] = {}
    for row in rows.splitlines():
        bus, _, epoch = row.partition("|")
        out[bus] = datetime.fromtimestamp(float(epoch), UTC) if epoch else None
    return out


def missed(lease: Leases, tick: datetime, gaps: dict[str, datetime]) -> int:
    crons = {key: [EVERY_S for m in ON_BUSES if bus_key(m.bus) == key] for key in gaps}
    return lease.count_gaps(tick, gaps, crons)


@contextlib.contextmanager
def two_instances(postgres, database, lease_s: float = 3.0) -> Iterator[tuple[Leases, Leases]]:  # type: ignore[no-untyped-def]
    a, b = make(postgres, database, lease_s), make(postgres, database, lease_s)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_buses_handed_to_a_joining_instance_count_exactly_the_ticks_between_the_two_polls(postgres, database):
    with two_instances(postgres, database) as (a, b):
        claimed_at = datetime.now(UTC)
        t1 = next_second()  # before the claim: no whole second between the two
        a.beat(BUSES)
        mine, gaps = a.take(t1, ON_BUSES)
        # a bus no instance polled before: counted from its claim, none of its ticks came before this one
        assert mine == ON_BUSES and set(gaps) == set(BUSES) and missed(a, t1, gaps) == 0
        assert all(claimed_at - timedelta(seconds=1) < since < t1 for since in gaps.values())
        a.take(seconds(t1, 1), ON_BUSES)  # polled a second later, written at the next beat
        b.beat(BUSES)  # joins
        given = a.beat(BUSES).released
        assert len(given) == 5 and {k: polled_through(postgres, database)[k] for k in given} == {
            k: seconds(t1, 1) for k in given}
        mine, gaps = a.take(seconds(t1, 2), ON_BUSES)  # what it gave back is not polled here
        assert {bus_key(m.bus) for m in mine}.isdisjoint(given) and gaps == {}
        time.sleep(1.6)  # the grace
        assert sorted(b.beat(BUSES).claimed) == given
        tick = seconds(t1, 5)  # b's first tick on them: t1 + 2, 3 and 4 had no poll
        mine, gaps = b.take(tick, ON_BUSES)
        assert gaps == {k: seconds(t1, 1) for k in given}
        assert missed(b, tick, gaps) == 3 * 2 * 5 and b.ticks_missed == 30
        assert b.take(seconds(tick, 1), ON_BUSES)[1] == {}  # counted once
        b.beat(BUSES)
        assert {k: polled_through(postgres, database)[k] for k in given} == {k: seconds(tick, 1) for k in given}
        assert a.ticks_missed == 0


def test_a_bus_given_back_before_its_first_poll_counts_from_the_claim(postgres, database):
    """Claimed, then given back to a joining instance before any tick: the ticks until the new
    owner polls it are counted all the same (the claim is where its ticks became someone's)."""
    with two_instances(postgres, database) as (a, b):
        a.beat(BUSES)
        b.beat(BUSES)
        given = a.beat(BUSES).released
        claims = polled_through(postgres, database)
        assert all(claims[k] is not None for k in given)
        time.sleep(1.6)
        b.beat(BUSES)
        tick = seconds(max(claims[k] for k in given), 3)  # type: ignore[type-var]
        _, gaps = b.take(tick, ON_BUSES)
        assert gaps == {k: claims[k] for k in given} and missed(b, tick, gaps) >= 2 * 2 * 5


def test_an_instance_that_stops_beating_leaves_its_latest_recorded_tick_to_the_one_taking_over(postgres, database):
    wanted = dict(list(BUSES.items())[:3])
    with two_instances(postgres, database, lease_s=2.0) as (a, b):
        a.beat(wanted)
        t1 = next_second()
        a.take(t1, ON_BUSES)
        a.beat(wanted)  # t1 recorded
        a.take(seconds(t1, 1), ON_BUSES)  # then it dies: t1 + 1 is never recorded
        time.sleep(a.effective_lease_s + 0.1)
        took = b.beat(wanted)
        assert took.owned == 3 and b.takeovers == 3
        _, gaps = b.take(seconds(t1, 4), ON_BUSES)
        # counted from t1: t1 + 1 (polled, not recorded: at most a heartbeat's ticks), + 2, + 3
        assert gaps == {k: t1 for k in wanted} and missed(b, seconds(t1, 4), gaps) == 3 * 2 * 3


def test_an_instance_back_from_a_pause_records_its_latest_tick_on_the_buses_it_lost(postgres, database):
    """Its leases ran out while it was stopped; its first beat after finds them lost, not taken
    yet: it writes the tick it polled last, so the instance taking them counts from there."""
    wanted = dict(list(BUSES.items())[:3])
    with two_instances(postgres, database, lease_s=2.0) as (a, b):
        a.beat(wanted)
        t1 = next_second()
        a.take(t1, ON_BUSES)
        a.beat(wanted)
        a.take(seconds(t1, 1), ON_BUSES)  # the last tick before the pause
        time.sleep(a.effective_lease_s + 0.1)
        b.beat({})  # b is live, so a's share is 2 of the 3 when it is back
        back = a.beat(wanted)
        assert back.owned == 2 and len(back.lost) == 1  # two of its own expired leases, claimed again
        assert polled_through(postgres, database) == {k: seconds(t1, 1) for k in wanted}
        _, gaps = a.take(seconds(t1, 4), ON_BUSES)
        assert len(gaps) == 2 and set(gaps.values()) == {seconds(t1, 1)}  # t1 + 2 and + 3 missed
        assert missed(a, seconds(t1, 4), gaps) == 2 * 2 * 2
        third = b.beat(wanted)
        assert len(third.claimed) == 1 and b.take(seconds(t1, 4), ON_BUSES)[1] == {
            third.claimed[0]: seconds(t1, 1)}


def test_a_clean_stop_records_the_latest_ticks(postgres, database):
    with two_instances(postgres, database) as (a, b):
        a.beat(BUSES)
        t1 = next_second()
        a.take(t1, ON_BUSES)
        a.take(seconds(t1, 1), ON_BUSES)
        a.release_all()
        assert set(polled_through(postgres, database).values()) == {seconds(t1, 1)}
        b.beat(BUSES)
        assert b.take(seconds(t1, 3), ON_BUSES)[1] == {k: seconds(t1, 1) for k in BUSES}


def test_a_database_older_than_the_ticks_column_still_shares_the_fleet(postgres, database, caplog):
    postgres.psql(database, "-c", "ALTER TABLE bus_leases DROP COLUMN polled_through")
    with two_instances(postgres, database) as (a, b):
        with caplog.at_level(logging.WARNING, "poller.lease"):
            a.beat(BUSES)
            t1 = next_second()
            assert a.take(t1, ON_BUSES)[1] == {}
            b.beat(BUSES)
            a.beat(BUSES)
            time.sleep(1.6)
            assert b.beat(BUSES).owned == 5
            assert b.take(seconds(t1, 3), ON_BUSES)[1] == {}  # nothing to count from
            a.release_all()
        warned = [r.getMessage() for r in caplog.records if "predates db/upgrade.sql" in r.getMessage()]
        assert len(warned) == 2, warned  # once per instance
        postgres.psql(database, "-c", "ALTER TABLE bus_leases ADD COLUMN polled_through timestamptz")
        held = b.held()
        b.take(seconds(t1, 4), ON_BUSES)
        b.beat(BUSES)  # db/upgrade.sql ran meanwhile: recorded from the next heartbeat on
        assert {k: t for k, t in polled_through(postgres, database).items() if k in held} == {
            k: seconds(t1, 4) for k in held}


def test_instances_joining_and_leaving_at_random_count_exactly_the_ticks_no_one_polled(postgres, database):
    """Three instances beat in threads at random moments while ticks come every second; one
    joins, another joins, one stops cleanly (every change of owner a hand-over, none a death).
    Every tick each running instance takes the buses it holds (as its tick loop does): the ticks
    of each bus that no instance took are exactly what the instances counted, no more, no less."""
    buses = {f"tcp 10.0.9.{i}:502": 1.5 for i in range(6)}
    meters = [Meter(i + 1, f"10.0.9.{i}", 502, 1, DTYPE) for i in range(6)]
    crons = {bus_key(m.bus): [EVERY_S] for m in meters}
    a, b, c = (make(postgres, database) for _ in range(3))
    running: list[Leases] = [a]
    stop = {id(x): threading.Event() for x in (a, b, c)}
    errors: list[BaseException] = []

    def beating(lease: Leases, seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop[id(lease)].is_set():
                lease.beat(buses)
                stop[id(lease)].wait(rng.uniform(0.05, 0.5))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads: dict[int, threading.Thread] = {}

    def start(lease: Leases) -> None:
        threads[id(lease)] = threading.Thread(target=beating, args=(lease, len(threads)))
        threads[id(lease)].start()

    taken: dict[str, set[datetime]] = {key: set() for key in buses}
    try:
        a.beat(buses)  # holds all before the first tick
        first = next_second()
        start(a)
        ticks = [seconds(first, i) for i in range(14)]
        for i, tick in enumerate(ticks):
            time.sleep(max(0.0, (tick - datetime.now(UTC)).total_seconds()))
            if i == 2:
                running.append(b)
                start(b)
            if i == 5:
                running.append(c)
                start(c)
            if i == 9:  # b stops cleanly: its beats end, then it gives every lease back
                stop[id(b)].set()
                threads[id(b)].join(10)
                b.release_all()
                running.remove(b)
            for lease in random.sample(running, len(running)):  # the instances' tick loops, in any order
                mine, gaps = lease.take(tick, meters)
                for meter in mine:
                    assert tick not in taken[bus_key(meter.bus)], "a tick taken twice"
                    taken[bus_key(meter.bus)].add(tick)
                if gaps:
                    lease.count_gaps(tick, gaps, crons)
    finally:
        for event in stop.values():
            event.set()
        for thread in threads.values():
            thread.join(10)
        for lease in (a, b, c):
            lease.close()
    assert not errors, errors
    missed = sum(1 for key in buses for tick in ticks if tick not in taken[key])
    assert len({key for key in buses if len(taken[key]) < len(ticks)}) >= 2, "buses should have changed hands"
    assert sum(x.ticks_missed for x in (a, b, c)) == missed, (
        [x.ticks_missed for x in (a, b, c)], missed, {k: sorted(t.second for t in v) for k, v in taken.items()})


def test_a_tick_between_the_renewal_and_the_give_back_is_the_tick_given_back(postgres, database, monkeypatch):
    """The event loop polls a tick while the heartbeat's thread is between renewing the leases
    (which wrote the tick before) and giving buses back: the give-back writes that later tick, so
    the next owner does not count a tick that was polled."""
    with two_instances(postgres, database) as (a, b):
        t1 = next_second()
        a.beat(BUSES)
        a.take(t1, ON_BUSES)
        b.beat(BUSES)  # joins: a's next beat gives 5 buses back
        renew = Leases._count_and_renew

        def renew_then_tick(self: Leases, wanted):  # type: ignore[no-untyped-def]
            out = renew(self, wanted)  # wrote t1 for every bus it holds
            self.take(seconds(t1, 1), ON_BUSES)  # the tick lands here, on buses about to go back
            return out

        monkeypatch.setattr(Leases, "_count_and_renew", renew_then_tick)
        given = a.beat(BUSES).released
        monkeypatch.undo()
        assert {k: polled_through(postgres, database)[k] for k in given} == {k: seconds(t1, 1) for k in given}
        time.sleep(1.6)
        b.beat(BUSES)
        _, gaps = b.take(seconds(t1, 3), ON_BUSES)
        assert gaps == {k: seconds(t1, 1) for k in given} and missed(b, seconds(t1, 3), gaps) == 1 * 2 * 5


def config_changed(postgres, database, at: datetime) -> None:  # type: ignore[no-untyped-def]
    """The configuration changed at `at` (what its triggers record: db/init.sql, config_version)."""
    postgres.psql(database, "-c", f"UPDATE config_version SET version = version + 1, changed_at = '{at.isoformat()}'")


def test_a_database_in_another_time_zone_counts_the_same_ticks(postgres, database):
    """initdb gives a cluster the host's time zone; the schedule's ticks are UTC: an hourly cron
    counted in +05:30 would fire at other instants."""
    postgres.psql(database, "-c", f"ALTER DATABASE {database} SET timezone = 'Asia/Kolkata'")
    hourly = "0 * * * *"
    meter = Meter(1, "10.0.0.1", 502, 1, DTYPE, poll_cron=hourly)
    key = bus_key(meter.bus)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    config_changed(postgres, database, hour - timedelta(days=1))
    with two_instances(postgres, database) as (a, b):
        a.beat(wanted_buses([meter]))
        a.take(hour, [meter])
        a.release_all()
        b.beat(wanted_buses([meter]))
        tick = hour + timedelta(hours=3)  # hour + 1 and hour + 2 had no poll
        _, gaps = b.take(tick, [meter])
        assert gaps == {key: hour} and gaps[key].utcoffset() == timedelta(0)
        assert b.count_gaps(tick, gaps, {key: [hourly]}) == 2


def test_a_meter_disabled_for_a_while_misses_no_ticks_of_that_while(postgres, database):
    """Disabled (maintenance), its bus is no longer wanted and goes back; enabled again, it is
    claimed again: the ticks while it was disabled were nobody's to poll."""
    meter = Meter(1, "10.0.0.1", 502, 1, DTYPE)
    key = bus_key(meter.bus)
    config_changed(postgres, database, datetime.now(UTC) - timedelta(days=1))
    a = make(postgres, database, lease_s=2.0)
    try:
        a.beat(wanted_buses([meter]))
        t1 = next_second()
        assert a.take(t1, [meter])[0] == [meter]
        config_changed(postgres, database, seconds(t1, 0.5))  # disabled
        a.beat({})  # no longer configured: given back
        assert a.held() == set()
        time.sleep(a.effective_lease_s + 0.1)  # stands for the minute it stays disabled
        config_changed(postgres, database, seconds(t1, 60.5))  # enabled again
        a.beat(wanted_buses([meter]))
        tick = seconds(t1, 61)
        mine, gaps = a.take(tick, [meter])
        assert mine == [meter] and gaps == {key: seconds(t1, 60.5)}
        assert a.count_gaps(tick, gaps, {key: [EVERY_S]}) == 0
    finally:
        a.close()


def test_a_meter_added_just_before_a_restart_counts_from_the_change_not_the_buses_last_poll(postgres, database):
    """A bus with a meter read daily (polled at midnight); at 12:00:01 a meter read every 10 s is
    added on it, and the poller restarts at 12:00:05, before that meter's first tick: the one
    polling it from 12:00:10 on has missed nothing. Counting from midnight would say 4,319."""
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    daily, every_10_s = "0 0 * * *", "* * * * * */10"
    first = Meter(1, "10.0.0.1", 502, 1, DTYPE, poll_cron=daily)
    added = Meter(2, "10.0.0.1", 502, 2, DTYPE, poll_cron=every_10_s)
    key = bus_key(first.bus)
    config_changed(postgres, database, midnight - timedelta(days=1))
    with two_instances(postgres, database) as (a, b):
        a.beat(wanted_buses([first]))
        a.take(midnight, [first])
        a.beat(wanted_buses([first]))
        config_changed(postgres, database, midnight + timedelta(hours=12, seconds=1))
        a.beat(wanted_buses([first, added]))
        a.release_all()  # the restart
        b.beat(wanted_buses([first, added]))
        tick = midnight + timedelta(hours=12, seconds=10)
        mine, gaps = b.take(tick, [added])
        assert mine == [added] and gaps == {key: midnight + timedelta(hours=12, seconds=1)}
        assert b.count_gaps(tick, gaps, {key: [daily, every_10_s]}) == 0


def test_buses_a_failed_give_back_left_unpolled_count_their_ticks_when_kept(postgres, database, monkeypatch):
    """The beat that gives buses back stops polling them first; PostgreSQL goes away before it
    commits, so they are still this instance's there. If its share has grown by the next beat, it
    keeps them: the ticks in between had no poll anywhere, and are counted."""
    meters = [m for m in ON_BUSES if m.slave_address == 1][:4]  # four buses
    wanted = wanted_buses(meters)
    with two_instances(postgres, database) as (a, b):
        a.beat(wanted)
        t1 = next_second()
        assert len(a.take(t1, meters)[0]) == 4
        b.beat(wanted)  # joins: a's share is 2
        query = Leases._query

        def failing(self: Leases, sql: str, params=None):  # type: ignore[no-untyped-def]
            if "SET owner = NULL" in sql:  # the give-back
                raise psycopg2.OperationalError("server closed the connection unexpectedly")
            return query(self, sql, params)

        monkeypatch.setattr(Leases, "_query", failing)
        with pytest.raises(psycopg2.OperationalError):
            a.beat(wanted)
        monkeypatch.undo()
        assert len(a.held()) == 2
        unpolled = set(wanted) - a.held()
        for n in (1, 2):
            assert unpolled.isdisjoint(bus_key(m.bus) for m in a.take(seconds(t1, n), meters)[0])
        b.release_all()  # a's share is all four again
        a.beat(wanted)
        assert a.held() == set(wanted)
        tick = seconds(t1, 3)
        mine, gaps = a.take(tick, meters)
        assert len(mine) == 4 and gaps == {k: t1 for k in unpolled}
        assert a.count_gaps(tick, gaps, {k: [EVERY_S] for k in wanted}) == 2 * 2  # t1 + 1 and + 2


def test_the_ticks_column_is_looked_for_in_the_table_the_leases_use(postgres, database):
    """A database older than db/upgrade.sql, with a namesake table that has the column in another
    schema (a staging copy): the instance must not take the column for there, or every beat fails."""
    postgres.psql(database, "-c", "ALTER TABLE bus_leases DROP COLUMN polled_through")
    postgres.psql(database, "-c", "CREATE SCHEMA archive; "
                                  "CREATE TABLE archive.bus_leases (bus text PRIMARY KEY, polled_through timestamptz)")
    a = make(postgres, database)
    try:
        assert a.beat(BUSES).owned == len(BUSES)
    finally:
        a.close()


def test_an_instance_claiming_its_own_expired_leases_again_takes_over_from_no_one(postgres, database, caplog):
    a = make(postgres, database, lease_s=2.0)
    try:
        a.beat(BUSES)
        time.sleep(a.effective_lease_s + 0.1)  # held up past its lease; no other instance runs
        with caplog.at_level(logging.WARNING, "poller.lease"):
            assert a.beat(BUSES).owned == len(BUSES)
        said = [r.getMessage() for r in caplog.records]
        assert a.takeovers == 0 and not [m for m in said if "took over" in m]
        assert len([m for m in said if "had expired (this instance was held up): claimed again" in m]) == len(BUSES)
    finally:
        a.close()


# --------------------------------------------------------------------------- the grace a bus given back keeps


def expires_at(postgres, database) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Each bus's expires_at, as Unix time."""
    rows = postgres.psql(database, "-At", "-F", "|", "-c",
                         "SELECT bus, extract(epoch FROM expires_at) FROM bus_leases").stdout
    return {bus: float(epoch) for bus, _, epoch in (row.partition("|") for row in rows.splitlines())}


def test_a_bus_given_back_stays_leased_for_its_grace_from_when_sending_stopped(postgres, database):
    """now() is the transaction's start; the giver stops sending later, after its turn among the
    beats (another instance's beat, held up, may hold it for seconds) and the renewal: a request
    the fence let out just before the stop must be over before the bus can be claimed."""
    window = 0.5  # BUSES' grace is this timeout + 1 s
    with two_instances(postgres, database) as (a, b):
        a.beat(BUSES)
        b.beat(BUSES)  # joins: a's next beat gives 5 buses back
        holder = postgres.connect(database)
        try:
            with holder.cursor() as cur:  # another beat holds the turn for 1.6 s
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (BEAT_LOCK,))
            threading.Timer(1.6, holder.rollback).start()
            stopped: dict[str, float] = {}
            set_deadline = a._set

            def spy(key: str, until: float | None) -> None:
                if until is None and key not in stopped:
                    assert time.monotonic() + window <= a.until_key(key)  # a request could still go out
                    stopped[key] = time.time()
                set_deadline(key, until)

            a._set = spy  # type: ignore[method-assign]
            given = a.beat(BUSES).released
        finally:
            holder.close()
        expires = expires_at(postgres, database)
        assert len(given) == 5 and all(expires[k] >= stopped[k] + window for k in given), {
            k: round(stopped[k] + window - expires[k], 3) for k in given}


def test_a_clean_stop_that_cut_a_request_short_keeps_its_bus_leased_until_the_reply_is_due(
        postgres, database, hung_port, monkeypatch):
    """SIGTERM: the cycles get STOP_CYCLES_S, then are cancelled, a request still out (an RTU
    gateway, a serial line may still carry its reply): the bus is given back with its grace, not
    at once, so no other instance sends on it while that reply may come."""
    import asyncio
    import types

    import poller.__main__ as service
    from poller.cycle import Poller
    from poller.model import DataType, FunctionCode, Register

    timeout = 3.0
    dtype = DeviceType("slow", (Register(1, "t", 0, "m1", "V", DataType.UINT16, FunctionCode.READ_HOLDING_REGISTERS),),
                       timeout_s=timeout)
    meter = Meter(1, "127.0.0.1", hung_port, 1, dtype, transport=Transport.RTU_OVER_TCP)
    wanted = wanted_buses([meter])
    sent: list[float] = []

    class Lines:
        def put(self, lines: list[str]) -> None:
            pass

    async def stop_while_a_request_is_out(a: Leases) -> None:
        def fence(address: BusAddress) -> float:
            sent.append(time.time())
            return a.until(address)

        poller = Poller(Lines(), fence=fence)
        task = asyncio.create_task(poller.run_cycle([meter]))
        while not sent:
            await asyncio.sleep(0.01)
        monkeypatch.setattr(service, "STOP_CYCLES_S", 0.2)

        async def nothing() -> None:
            pass

        running = types.SimpleNamespace(running={task: (meter,)}, monitor=types.SimpleNamespace(stop=nothing),
                                        poller=poller, leases=a, outbox=None,
                                        watcher=types.SimpleNamespace(close=lambda: None))
        await service.Service._shut_down(running, None, None, None)  # type: ignore[arg-type]

    with two_instances(postgres, database) as (a, b):
        a.beat(wanted)
        b.beat(wanted)
        asyncio.run(stop_while_a_request_is_out(a))
        assert expires_at(postgres, database)[bus_key(meter.bus)] >= sent[0] + timeout
        assert b.beat(wanted).claimed == []


def test_a_timeout_lowered_while_a_cycle_polls_with_the_old_one_keeps_the_longer_grace():
    """A cycle polls the meters of the configuration at its tick: a request may be out with the old,
    longer timeout when the configuration lowers it. The buses the heartbeat wants keep that grace
    while such a cycle runs (a bus given back meanwhile stays leased until its reply is due)."""
    import asyncio
    import types

    import poller.__main__ as service

    slow = DeviceType("t", (), timeout_s=10.0)
    old = (Meter(1, "10.0.0.9", 502, 1, slow), Meter(2, "10.0.0.2", 502, 1, DTYPE))
    new = (Meter(1, "10.0.0.9", 502, 1, DTYPE), old[1])

    async def under_way() -> None:
        cycle = asyncio.get_running_loop().create_future()
        it = types.SimpleNamespace(watcher=types.SimpleNamespace(current=types.SimpleNamespace(meters=new)),
                                   running={cycle: old})
        assert service.Service._wanted_buses(it) == {  # type: ignore[arg-type]
            bus_key(old[0].bus): grace_s([old[0]]), bus_key(old[1].bus): grace_s([old[1]])}
        it.running = {}  # that cycle is over
        assert service.Service._wanted_buses(it) == wanted_buses(new)  # type: ignore[arg-type]

    asyncio.run(under_way())
