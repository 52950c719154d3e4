"""Several pollers, one fleet (issue 11, README "Several pollers"): three `python -m poller`
processes with POLL_COORDINATION=postgres share 12 buses through one real PostgreSQL.

The simulated buses are the oracle: each records every request it receives with the TCP
connection it came on (one instance, one connection per bus), and counts requests in flight
at once. Through a steady state, a SIGKILLed instance, a SIGSTOPped one that comes back
after its leases ran out, and a PostgreSQL restart: no bus ever has requests from two
instances in flight at once, a connection that lost its bus never sends on it again, no
tick is polled twice, and every bus is polled again within the documented bound.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import pytest

from tests.servers import free_port, instance_pid, scraped, start_module, stop_process
from virtual_server.server import SimulatedServer

BUSES, UNITS = 12, 2
LEASE_S = 3
INTERVAL_S = 1
WORDS = {(3, 0): 0x4366, (3, 1): 0x8000}  # 230.5 V, float32 at holding register 0


class RecordingServer(SimulatedServer):
    """A bus that remembers when each request came and on which connection."""

    def __init__(self) -> None:
        super().__init__(units={}, default=lambda: WORDS, latency_s=0.02)
        self.seen: list[tuple[float, int]] = []  # (time.time(), serial number of the connection)
        self.reads: list[tuple[float, int]] = []  # (time.time(), unit id): which meter was read when
        self._serials = itertools.count()
        self.trap: int | None = None  # a poller's pid, stopped at its next request to unit 1
        self.trapped_at = 0.0

    def _received(self, conn: Any, request: Any, addr: Any) -> None:
        if not hasattr(conn, "emm_serial"):  # not id(conn): a closed connection's id is reused
            conn.emm_serial = next(self._serials)
        self.seen.append((time.time(), conn.emm_serial))
        self.reads.append((self.seen[-1][0], request.dev_id))
        if self.trap is not None and request.dev_id == 1:
            # SIGSTOP the poller whose request this is, while the request is in flight: when it
            # wakes, its reply is there and the next request, to unit 2, is due (the fence's case).
            # The stop comes 0.2 s after the request, its reply after the stop: the poller then only
            # waits for that reply (its other buses were read long before), so the stop does not fall
            # between a fence check and its write, the window poller/transport.py answers apart
            # (tests/test_transport.py, test_a_request_written_after_the_lease_ended_...).
            pid, self.trap = self.trap, None

            def stop_then_answer() -> None:
                os.kill(pid, signal.SIGSTOP)
                self.trapped_at = time.time()
                super(RecordingServer, self)._received(conn, request, addr)

            asyncio.get_running_loop().call_later(0.2, stop_then_answer)
            return
        super()._received(conn, request, addr)


class Fleet:
    """The 12 buses in one background event loop, each on its own loopback port."""

    def __init__(self, n: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.buses = [RecordingServer() for _ in range(n)]
        self.ports = [asyncio.run_coroutine_threadsafe(b.start_tcp("127.0.0.1", 0), self.loop).result(10)
                      for b in self.buses]

    def seen(self) -> list[list[tuple[float, int]]]:
        return [list(b.seen) for b in self.buses]

    def close(self) -> None:
        for bus in self.buses:
            asyncio.run_coroutine_threadsafe(bus.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def wait_until(check, timeout: float, what: str, procs=()):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        for proc in procs:
            assert proc.poll() is None, f"a poller exited ({proc.returncode}) while waiting for {what}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)


def per_whole_second(seen: list[tuple[float, int]], start: float, end: float) -> Counter[int]:
    """Requests in each whole second from `start` to `end`, every such second present (0 if none came):
    a second cut by the window's edge would count only some of its tick's requests."""
    seconds = range(math.ceil(start), math.floor(end))
    counts = Counter(int(t) for t, _ in seen if seconds.start <= t < seconds.stop)
    return Counter({s: counts[s] for s in seconds})


def transitions(seen: list[tuple[float, int]], since: float) -> list[tuple[str, int]]:
    """Where the connection sending on a bus changed: (seconds since `since`, connection)."""
    out: list[tuple[str, int]] = []
    for t, conn in seen:
        if not out or out[-1][1] != conn:
            out.append((f"{t - since:.2f}", conn))
    return out


@pytest.fixture
def poller_login(postgres, database):  # type: ignore[no-untyped-def]
    """The poller's own login, as db/10-poller-role.sh makes it: a member of emm_reader, read-only
    by default."""
    return postgres.reader_login(database, f"emm_poller_{os.getpid()}", "test-only-poller")


def pollers_env(postgres, database, victoria, login, **more: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The environment of pollers that share the fleet through PostgreSQL as the poller's login,
    every second, with `more` settings."""
    return {**postgres.env(database), **login, **victoria.env(), "POLL_CRON": "* * * * * *",
            "POLL_COORDINATION": "postgres", "POLL_LEASE_S": str(LEASE_S), **more}


def shared_fleet(postgres, database, victoria, login, buses: int, cron: str):  # type: ignore[no-untyped-def]
    """`buses` recording buses with UNITS meters each (one float32 register), and the environment
    of pollers that share them through PostgreSQL as the poller's login."""
    fleet = Fleet(buses)
    postgres.psql(database, "-c", f"""
        DELETE FROM energy_meters;
        INSERT INTO device_types (name, timeout_s) VALUES ('one', 0.5);
        INSERT INTO registers (type, register_address, measurement_name, data_type, data_unit)
            VALUES ('one', 0, 'v', 3, 'V');
        INSERT INTO energy_meters (host, port, slave_address, type)
            SELECT '127.0.0.1', p, u, 'one' FROM unnest(ARRAY{fleet.ports}) p, generate_series(1, {UNITS}) u;""")
    return fleet, pollers_env(postgres, database, victoria, login, POLL_CRON=cron)


def test_three_pollers_share_twelve_buses_through_kill_stop_and_a_postgres_restart(
        postgres, database, victoria, poller_login, tmp_path):
    fleet, env = shared_fleet(postgres, database, victoria, poller_login, BUSES, "* * * * * *")
    logs = [tmp_path / f"poller{i}.log" for i in range(3)]
    # one POLL_SPOOL_DIR for all, as replicas of one compose service share one volume
    env["POLL_SPOOL_DIR"] = str(tmp_path / "spool")
    procs = [start_module("poller", [], env, logs[i]) for i in range(3)]
    bound_s = LEASE_S + 2 * INTERVAL_S  # README: lease + heartbeat (<= 1 interval) + the next tick
    try:
        # steady state: every bus held, each instance exactly its fair share (12 / 3)
        def shared_fairly(n: int):  # type: ignore[no-untyped-def]
            owners = postgres.lease_owners(database)
            counts = Counter(instance_pid(o) for o in owners.values())
            return len(owners) == BUSES and None not in counts and len(counts) == n and \
                max(counts.values()) <= math.ceil(BUSES / n) and counts
        counts = wait_until(lambda: shared_fairly(3), 30, "12 buses shared 4/4/4", procs)
        assert set(counts) == {p.pid for p in procs}
        steady_from = time.time()
        time.sleep(5)  # at least 2 whole seconds between steady_from + 1 and the end - 1
        for i, seen in enumerate(fleet.seen()):
            per_second = per_whole_second(seen, steady_from + 1, time.time() - 1)
            assert set(per_second.values()) == {UNITS}, f"bus {i}: requests per second {sorted(per_second.items())}"

        # SIGKILL one: its buses are polled by the others within the bound
        victim = procs[0]
        theirs = [bus for bus, owner in postgres.lease_owners(database).items() if instance_pid(owner) == victim.pid]
        assert len(theirs) == 4
        ports = [int(bus.rsplit(":", 1)[1]) for bus in theirs]
        killed = time.time()
        victim.kill()
        victim.wait()
        connections_before = {p: {c for _, c in fleet.buses[fleet.ports.index(p)].seen} for p in ports}

        def taken_over():  # type: ignore[no-untyped-def]
            firsts = []
            for p in ports:
                new = [t for t, c in fleet.buses[fleet.ports.index(p)].seen if c not in connections_before[p]]
                if not new:
                    return None
                firsts.append(new[0])
            return max(firsts)
        last_taken = wait_until(taken_over, bound_s + 5, "the killed instance's buses polled again", procs[1:])
        takeover_s = last_taken - killed
        assert takeover_s <= bound_s + 0.5, f"takeover took {takeover_s:.1f} s, bound {bound_s} s"
        wait_until(lambda: shared_fairly(2), 15, "12 buses shared 6/6", procs[1:])

        # SIGSTOP one in the middle of polling a bus, past its lease, then SIGCONT: it must not send
        # on a bus it lost, not even the request that was next when it stopped
        paused = procs[1]
        trapped = next(fleet.buses[fleet.ports.index(int(bus.rsplit(":", 1)[1]))]
                       for bus, owner in postgres.lease_owners(database).items() if instance_pid(owner) == paused.pid)
        trapped.trap = paused.pid
        try:
            wait_until(lambda: trapped.trapped_at, 5, "the paused instance's next request", procs[1:])
            stopped = trapped.trapped_at
            wait_until(lambda: shared_fairly(1), LEASE_S + 10, "the other instance holds all 12", procs[2:])
            time.sleep(1)
        finally:
            trapped.trap = None
            os.kill(paused.pid, signal.SIGCONT)
        resumed = time.time()
        wait_until(lambda: shared_fairly(2), 20, "the resumed instance takes its share again", procs[1:])
        rejoin_s = time.time() - resumed

        # PostgreSQL restarted: both carry on, no bus orphaned
        postgres.stop()
        time.sleep(1)
        postgres.start()
        wait_until(lambda: shared_fairly(2), 20, "12 buses shared again after the restart", procs[1:])
        settled = time.time()
        time.sleep(5)
        for i, seen in enumerate(fleet.seen()):
            per_second = per_whole_second(seen, settled + 1, time.time() - 1)
            assert set(per_second.values()) == {UNITS}, f"bus {i} after the restart: {sorted(per_second.items())}"
    finally:
        rcs = [stop_process(p) for p in procs]  # the first too: killed by now, unless the test failed before
        fleet.close()
    texts = [log.read_text() for log in logs]
    assert rcs[1:] == [0, 0], texts[1:]
    for text in texts:
        assert "Traceback" not in text, text
    slots = sorted(re.search(r"spool: \S+/(instance-\d+) \(slot", text)[1] for text in texts)  # type: ignore[index]
    assert slots == ["instance-0", "instance-1", "instance-2"], slots

    # the oracle, over the whole run from the steady state on
    for i, bus in enumerate(fleet.buses):
        assert bus.stats.max_in_flight == 1, f"bus {i}: two requests in flight at once"
        seen = [(t, c) for t, c in bus.seen if t >= steady_from]
        # a connection that lost its bus never sends on it again (no interleaving of owners)
        finished: set[int] = set()
        current = None
        for _, conn in seen:
            if conn != current:
                assert conn not in finished, (
                    f"bus {i}: a connection came back after another took over: "
                    f"{transitions(seen, steady_from)}; killed {killed - steady_from:.2f}, stopped "
                    f"{stopped - steady_from:.2f}, resumed {resumed - steady_from:.2f}, "
                    f"settled {settled - steady_from:.2f}")
                if current is not None:
                    finished.add(current)
                current = conn
        # no tick polled twice: never more than one poll's requests in one second
        per_second = Counter(int(t) for t, _ in seen)
        assert max(per_second.values()) <= UNITS, f"bus {i}: {per_second.most_common(3)}"
    # the paused instance sent nothing on its former buses after it came back until it
    # held them again: covered by the interleaving check (its connections were closed or
    # never used again), and it logged the lost leases
    assert "lost" in texts[1] or "gave back" in texts[1], texts[1]
    print(f"takeover {takeover_s:.2f} s (bound {bound_s} s), rejoin {rejoin_s:.1f} s, stopped for "
          f"{resumed - stopped:.1f} s")


def missed_ticks(fleet: Fleet, buses: list[int], every_s: int, start: int, end: int) -> int:
    """The oracle's count: (bus, unit, tick) from `start` to `end` (ticks every `every_s` s, on the
    seconds divisible by it) with no request for that unit in that tick's slot."""
    missed = 0
    for i in buses:
        slots = Counter((unit, int(t) // every_s * every_s) for t, unit in fleet.buses[i].reads)
        missed += sum(1 for unit in range(1, UNITS + 1) for tick in range(start, end + 1, every_s)
                      if not slots[unit, tick])
    return missed


def ticks_counted(port: int) -> float:
    counted = scraped(port, "emm_meter_ticks_missed_total")
    assert counted is not None, "emm_meter_ticks_missed_total is not exported"
    return counted


def test_the_ticks_buses_miss_while_they_change_instance_are_counted(postgres, database, victoria, poller_login,
                                                                     tmp_path):
    """/metrics against the oracle (every request's unit and time, on each bus). A second instance
    joins: the meter-ticks the buses handed to it missed are counted exactly. The first is
    SIGKILLed: the second counts at least what its buses missed, and at most one tick more per
    meter (a tick the dead one polled after its last heartbeat; README, "Several pollers")."""
    every_s, n_buses = 1, 6  # a hand-over takes the grace (1.5 s): at least one tick is missed
    fleet, env = shared_fleet(postgres, database, victoria, poller_login, n_buses, f"* * * * * */{every_s}")
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"poller{i}.log" for i in range(2)]
    procs: list[Any] = []

    def holding(pid: int) -> list[int]:
        return [fleet.ports.index(int(bus.rsplit(":", 1)[1]))
                for bus, owner in postgres.lease_owners(database).items() if instance_pid(owner) == pid]

    def next_tick(after: float) -> int:
        return (int(after) // every_s + 1) * every_s

    try:
        procs.append(start_module("poller", [], {**env, "POLL_HTTP_PORT": str(ports[0])}, logs[0]))
        wait_until(lambda: len(holding(procs[0].pid)) == n_buses, 30, "the first instance holds every bus", procs)
        start = next_tick(time.time())
        time.sleep(start + 0.5 - time.time())  # the first instance polled every bus at `start`: the count starts there
        procs.append(start_module("poller", [], {**env, "POLL_HTTP_PORT": str(ports[1])}, logs[1]))
        wait_until(lambda: len(holding(procs[1].pid)) == n_buses // 2, 30, "the second instance's share", procs)
        moved = holding(procs[1].pid)
        end = next_tick(time.time() + every_s)  # the moved buses polled from the second instance's first tick
        time.sleep(end + every_s - time.time())  # that tick's requests are in, and counted
        truth = missed_ticks(fleet, list(range(n_buses)), every_s, start, end)
        counted = ticks_counted(ports[0]) + ticks_counted(ports[1])
        assert missed_ticks(fleet, moved, every_s, start, end) == truth > 0, (
            "only the moved buses miss ticks", moved, start, end,
            [missed_ticks(fleet, [i], every_s, start, end) for i in range(n_buses)])
        assert counted == truth, (counted, truth)
        joined = f"join: {truth} meter-ticks missed, {counted:g} counted"

        theirs = holding(procs[0].pid)
        before = ticks_counted(ports[1])
        start = next_tick(time.time())
        procs[0].kill()
        procs[0].wait()
        wait_until(lambda: len(holding(procs[1].pid)) == n_buses, LEASE_S + 15, "the survivor holds every bus",
                   procs[1:])
        end = next_tick(time.time() + every_s)
        time.sleep(end + every_s - time.time())
        truth = missed_ticks(fleet, theirs, every_s, start, end)
        counted = ticks_counted(ports[1]) - before
        assert missed_ticks(fleet, list(range(n_buses)), every_s, start, end) == truth > 0
        assert truth <= counted <= truth + UNITS * len(theirs), (counted, truth)
        print(f"{joined}; kill: {truth} missed, {counted:g} counted (at most {truth + UNITS * len(theirs)})")
    finally:
        rcs = [stop_process(p) for p in procs]  # the first too: killed by now, unless the test failed before
        fleet.close()
    texts = [log.read_text() for log in logs]
    assert rcs[1:] == [0], texts[1]
    assert re.search(r"\d bus\(es\) changed instance, polled here from \S+ on: \d+ meter-tick\(s\) since \S+ had no "
                     r"poll", texts[1]), texts[1]
    for text in texts:
        assert "Traceback" not in text, text


# --------------------------------------------------------------------------- what /metrics says of a bus gone


def meter_up(port: int) -> dict[str, float]:
    """emm_meter_up by meter id, as the instance serving /metrics on `port` exports it ({}: not
    serving yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
    except urllib.error.URLError:
        return {}
    return {m[1]: float(m[2]) for m in re.finditer(r'^emm_meter_up\{[^}]*meter="(\d+)"[^}]*\} (\S+)$', text, re.M)}


def one_register_meters(postgres, database, rows: str, timeout_s: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    """`rows`: (host, port, slave_address) of meters with one register each."""
    postgres.psql(database, "-c", f"""
        DELETE FROM energy_meters;
        INSERT INTO device_types (name, timeout_s) VALUES ('one', {timeout_s});
        INSERT INTO registers (type, register_address, measurement_name, data_type, data_unit)
            VALUES ('one', 0, 'v', 3, 'V');
        INSERT INTO energy_meters (host, port, slave_address, type)
            SELECT h, p, u, 'one' FROM (VALUES {rows}) AS m(h, p, u);""")


def meter_ids(postgres, database, port: int) -> list[str]:  # type: ignore[no-untyped-def]
    return postgres.psql(database, "-At", "-c", f"SELECT id FROM energy_meters WHERE port = {port} ORDER BY id"
                         ).stdout.split()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bus_handed_over_with_a_request_out_fails_no_meter_and_leaves_no_series_behind(
        postgres, database, victoria, poller_login, tmp_path, workers):
    """A polls buses Y (fast) and X (0.9 s a reply, two meters: a request is out at almost any
    instant); B joins and A gives X back. The request out is answered within the grace: no meter
    is reported failed (log, poller_status, /metrics), and A, which no longer polls X, exports
    nothing of X's meters, even for the cycle that was under way at the hand-over."""
    fleet = Fleet(2)
    y, x = sorted(fleet.ports, key=lambda p: f"tcp 127.0.0.1:{p}")  # A keeps the first key in order (lease.py)
    fleet.buses[fleet.ports.index(x)].latency_s = 0.9
    one_register_meters(postgres, database, f"('127.0.0.1', {x}, 1), ('127.0.0.1', {x}, 2), ('127.0.0.1', {y}, 1)")
    env = pollers_env(postgres, database, victoria, poller_login, POLL_WORKERS=str(workers))
    ports = [free_port(), free_port()]
    x_ids = meter_ids(postgres, database, x)
    procs: list[Any] = []

    def holding(pid: int) -> set[str]:
        return {bus for bus, owner in postgres.lease_owners(database).items() if instance_pid(owner) == pid}

    try:
        procs.append(start_module("poller", [], {**env, "POLL_HTTP_PORT": str(ports[0])}, tmp_path / "a.log"))
        wait_until(lambda: len(holding(procs[0].pid)) == 2, 30, "A holds both buses", procs)
        wait_until(lambda: all(meter_up(ports[0]).get(i) == 1.0 for i in x_ids), 15, "A: X's meters up", procs)
        procs.append(start_module("poller", [], {**env, "POLL_HTTP_PORT": str(ports[1])}, tmp_path / "b.log"))
        wait_until(lambda: holding(procs[1].pid) == {f"tcp 127.0.0.1:{x}"}, 30, "B holds X", procs)
        wait_until(lambda: all(meter_up(ports[1]).get(i) == 1.0 for i in x_ids), 15, "B: X's meters up", procs)
        time.sleep(3)  # A's cycles under way at the hand-over are over
        on_a = meter_up(ports[0])
        status = victoria.export("poller_status_up", min_samples=20)
    finally:
        rcs = [stop_process(p) for p in procs]
        fleet.close()
    failed = [line for line in (tmp_path / "a.log").read_text().splitlines()
              if " failed" in line and "failed=0" not in line]
    assert not failed
    assert [s["metric"]["meter"] for s in status if 0 in s["values"]] == []
    assert set(on_a) == set(meter_ids(postgres, database, y)) and set(on_a.values()) == {1.0}
    assert rcs == [0, 0]


def buses_held(postgres, database, pid: int) -> int:  # type: ignore[no-untyped-def]
    """How many buses the instance with this pid holds the lease of."""
    return sum(instance_pid(owner) == pid for owner in postgres.lease_owners(database).values())


def health(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_series_of_meters_an_instance_stops_polling_go(postgres, database, victoria, poller_login, tmp_path):
    """A meter disabled is polled no more and its series go; PostgreSQL away long enough for the
    leases to run out: nothing is polled, nothing says a meter is up, and /healthz says why (a
    tick with nothing due still completes a cycle); once PostgreSQL is back, all is well again."""
    fleet = Fleet(1)
    port = free_port()
    one_register_meters(postgres, database, f"('127.0.0.1', {fleet.ports[0]}, 1), ('127.0.0.1', {fleet.ports[0]}, 2)",
                        timeout_s=0.5)
    first, second = meter_ids(postgres, database, fleet.ports[0])
    env = pollers_env(postgres, database, victoria, poller_login, POLL_HTTP_PORT=str(port))
    proc = start_module("poller", [], env, tmp_path / "a.log")
    try:
        wait_until(lambda: meter_up(port) == {first: 1.0, second: 1.0}, 30, "both meters up", [proc])
        postgres.psql(database, "-c", f"UPDATE energy_meters SET enabled = false WHERE id = {second}")
        wait_until(lambda: meter_up(port) == {first: 1.0}, 10, "the disabled meter's series gone", [proc])
        since = time.time()
        time.sleep(2)
        assert {unit for t, unit in fleet.buses[0].reads if t >= since} == {1}
        postgres.stop()
        try:
            wait_until(lambda: scraped(port, "emm_buses_leased") == 0, LEASE_S + 10, "the lease ran out", [proc])
            wait_until(lambda: meter_up(port) == {}, 5, "the series gone with the lease", [proc])
            code, text = health(port)
            assert code == 503 and text.startswith("no lease heartbeat answered for ") and text.endswith(
                "this instance holds no bus and polls nothing\n"), (code, text)
        finally:
            postgres.start()
        wait_until(lambda: health(port)[0] == 200, 30, "/healthz well again", [proc])
        wait_until(lambda: meter_up(port) == {first: 1.0}, 30, "the meter polled again", [proc])
    finally:
        assert stop_process(proc) == 0
        fleet.close()


def test_readings_a_replica_leaves_when_scaled_down_are_sent_by_the_one_that_stays(
        postgres, database, victoria, poller_login, tmp_path):
    """Two replicas share POLL_SPOOL_DIR; InfluxDB is away, so both spool; one is stopped (scaled
    down) and leaves its readings in its slot. The one that stays takes its bus and its slot, and
    once InfluxDB is back every reading either replica took is stored: as many points per meter
    as its bus answered requests."""
    fleet = Fleet(2)
    one_register_meters(postgres, database, ", ".join(f"('127.0.0.1', {p}, 1)" for p in fleet.ports))
    env = pollers_env(postgres, database, victoria, poller_login, POLL_SPOOL_RETRY_MAX_S="2",
                      POLL_SPOOL_DIR=str(tmp_path / "spool"))
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs: list[Any] = []

    try:
        procs.append(start_module("poller", [], env, logs[0]))
        wait_until(lambda: buses_held(postgres, database, procs[0].pid) == 2, 30, "A holds both buses", procs)
        procs.append(start_module("poller", [], env, logs[1]))
        wait_until(lambda: buses_held(postgres, database, procs[1].pid) == 1, 30, "B holds one bus", procs)
        victoria.stop()
        time.sleep(4)  # both poll into their spools
        assert stop_process(procs[1]) == 0  # scaled down
        b_log = logs[1].read_text()
        assert "stopping with" in b_log and "points in the spool" in b_log, b_log
        slot = re.search(r"spool: (\S+) \(slot 1 of POLL_SPOOL_DIR\)", b_log)
        assert slot is not None, b_log
        wait_until(lambda: buses_held(postgres, database, procs[0].pid) == 2, 3 * LEASE_S + 5,
                   "A holds both buses again", procs[:1])
        wait_until(lambda: f"wait in {slot[1]}, which no running instance holds" in logs[0].read_text(), 15,
                   "A takes B's spool over", procs[:1])
        victoria.start()
        wait_until(lambda: f"everything left in {slot[1]} is sent" in logs[0].read_text(), 30,
                   "B's readings sent by A", procs[:1])
        time.sleep(2)
    finally:
        rcs = [stop_process(p) for p in procs]
        fleet.close()
    assert rcs == [0, 0]
    text = logs[0].read_text()
    assert "Traceback" not in text, text
    for port, bus in zip(fleet.ports, fleet.buses, strict=True):
        (meter,) = meter_ids(postgres, database, port)
        answered = len(bus.reads)
        series = victoria.export(f'{{__name__="v_value",meter="{meter}"}}', min_samples=answered)
        stored = sum(len(s["values"]) for s in series)
        assert stored == answered, f"meter {meter}: {stored} points stored, its bus answered {answered} requests"


@pytest.mark.parametrize("workers", [0, 1])
def test_a_counters_history_follows_its_bus_to_the_instance_that_takes_it(
        postgres, database, victoria, poller_login, tmp_path, workers):
    """README, "Counters that never lie": an energy total only grows. A reads 1000 kWh; the meter
    then lies (500 kWh) just as B takes its bus over. B knows the last value from A's counter state
    on the shared POLL_SPOOL_DIR, so it holds the lie back as a counter going backwards instead of
    taking it as a first reading."""
    words = {(3, 0): 0x447A, (3, 1): 0x0000}  # 1000.0, float32 at holding register 0
    fleet = Fleet(1)
    fleet.buses[0].default = lambda: words
    postgres.psql(database, "-c", f"""
        DELETE FROM energy_meters;
        INSERT INTO device_types (name, timeout_s) VALUES ('one', 1);
        INSERT INTO registers (type, register_address, measurement_name, data_type, data_unit, kind)
            VALUES ('one', 0, 'energy', 3, 'kWh', 'counter');
        INSERT INTO energy_meters (host, port, slave_address, type)
            VALUES ('127.0.0.1', {fleet.ports[0]}, 1, 'one');""")
    env = pollers_env(postgres, database, victoria, poller_login, POLL_WORKERS=str(workers),
                      POLL_SPOOL_DIR=str(tmp_path / "spool"))
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs: list[Any] = []

    try:
        procs.append(start_module("poller", [], env, logs[0]))
        wait_until(lambda: buses_held(postgres, database, procs[0].pid) == 1, 30, "A holds the bus", procs)
        wait_until(lambda: victoria.export('{__name__="energy_value"}', timeout=1), 15, "A's first reading", procs)
        procs.append(start_module("poller", [], env, logs[1]))
        wait_until(lambda: "sharing the fleet" in logs[1].read_text(), 30, "B runs", procs)
        words[3, 0] = 0x43FA  # 500.0: the lie
        assert stop_process(procs[0]) == 0
        wait_until(lambda: buses_held(postgres, database, procs[1].pid) == 1, 3 * LEASE_S + 5, "B holds the bus",
                   procs[1:])
        wait_until(lambda: "went backwards (1000.0 -> 500.0 kWh)" in logs[1].read_text(), 10,
                   "B holds the lie back", procs[1:])
    finally:
        rcs = [stop_process(p) for p in procs]
        fleet.close()
    assert rcs == [0, 0]
    assert "Traceback" not in logs[1].read_text()
