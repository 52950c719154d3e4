"""The configuration path against a real PostgreSQL: rows checked where they enter, loads off the
poll path with bounded waits, unchanged rows giving back the very same objects, reloads costing
what changed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.config import ConfigError, ConfigSource, ConfigWatcher
from poller.cycle import Poller
from poller.modbus import ExceptionReply
from poller.settings import from_env
from tests.servers import postgres_cluster
from tests.test_store import assert_usable


def source_for(postgres, database, **kw) -> ConfigSource:
    return ConfigSource(from_env(postgres.env(database)), **kw)


def admin(postgres, database):
    conn = postgres.connect(database)
    conn.autocommit = True
    return conn


def execute(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)


# --- (a) rows the real database accepts, however odd: the load never raises ------------------

ODD = ["\n", "\r\n", "\\", "'", '"', ",", "=", " ", "é", "Ω", "\u2028", "\x1b", "\t", "#", "😀", "\\\n"]
ODD_TEXT = st.one_of(st.sampled_from(ODD),
                     st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12),
                     st.lists(st.sampled_from(ODD + list("ab1.-_")), max_size=8).map("".join))
HOSTS = st.one_of(st.sampled_from(["10.0.0.1", "::1", "meter-1.example", "virtual_modbustcp_server", "192.168..10",
                                   ".meter", "a" * 64, "meter 1", "h\nforged", "10.0.0.1:502", "zähler.local",
                                   "xn--zz", "m.\u2ff0", "a\\b", ".".join(["a" * 63] * 4)]), ODD_TEXT)
CRONS = st.one_of(st.none(), st.sampled_from(["*/5 * * * *", "* * * * * */10", "0 0 30 2 *", "0 0 31 4 *",
                                              "* * * * * * *", "0 0 1 1 * 0 2099", "@daily", "every minute",
                                              "* * * * * 61", "0 0 29 2 *", " 1  * * * * "]), ODD_TEXT)
FLOATS = st.one_of(st.sampled_from([1.0, 0.1, 0.001, -1.0, 1e-9, 1e9, 1e-10, 1e10, 1e-320, 5e-324, 1e308, -1e308,
                                    0.0, float("nan"), float("inf"), 1e15, -1e16, 2.5]),
                   st.floats(allow_nan=False, allow_infinity=False))
NOT_AVAILABLE = st.one_of(st.none(), st.sampled_from(["Infinity", "-Infinity", "NaN", "1e400", "-32768", "65535",
                                                      "4294967295", "18446744073709551615", "1.5", "3.4e38",
                                                      "3.5e38", "1e-50", "-1.1", "0"]),
                          st.integers(-2**65, 2**65).map(str), st.floats(allow_nan=False).map(repr))
TYPE_NAMES = ["a", "b", "c"]
MEASUREMENTS = ["v", "w", "x", "sf", "y"]

DEVICE_TYPES = st.fixed_dictionaries({
    "name": st.sampled_from(TYPE_NAMES), "max_block": st.integers(0, 126), "max_gap": st.integers(-1, 125),
    "timeout_s": st.sampled_from([3.0, 1e-45, 60.0, 60.1, 0.0, float("nan"), float("inf"), 0.5]),
    "request_pause_ms": st.integers(-1, 10001)})
REGISTERS = st.fixed_dictionaries({
    "type": st.sampled_from(TYPE_NAMES),
    "register_address": st.one_of(st.integers(0, 40), st.integers(-1, 65536)),
    "measurement_name": st.one_of(st.sampled_from(MEASUREMENTS), st.sampled_from(MEASUREMENTS), ODD_TEXT),
    "data_unit": st.one_of(st.none(), ODD_TEXT), "data_type": st.one_of(st.integers(1, 8), st.integers(0, 9)),
    "function_code": st.one_of(st.sampled_from([3, 4]), st.integers(2, 5)),
    "byte_order": st.sampled_from(["ABCD", "CDAB", "BADC", "DCBA", "abcd"]), "scale": FLOATS,
    "value_offset": FLOATS, "scale_factor": st.one_of(st.none(), st.sampled_from(MEASUREMENTS)),
    "not_available": NOT_AVAILABLE})
METERS = st.fixed_dictionaries({
    "host": HOSTS, "port": st.integers(0, 65536), "slave_address": st.integers(-1, 256),
    "type": st.sampled_from(TYPE_NAMES), "description": st.one_of(st.none(), ODD_TEXT), "poll_cron": CRONS,
    "enabled": st.booleans()})


def insert(conn, table, row) -> int | None:
    """Insert `row`; its id, or None when the database refuses it (then it is simply not there)."""
    cols = ", ".join(row)
    marks = ", ".join("%s::numeric" if c == "not_available" else "%s" for c in row)
    returning = " RETURNING id" if table != "device_types" else " RETURNING 0"
    with conn.cursor() as cur:
        cur.execute("SAVEPOINT row")
        try:
            cur.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks}){returning}", list(row.values()))
        except Exception:  # noqa: BLE001 - a CHECK, a foreign key, a unique key: rows the database refuses
            cur.execute("ROLLBACK TO SAVEPOINT row")
            return None
        return cur.fetchone()[0]


@pytest.fixture
def persistent(postgres, database):
    """One ConfigSource kept across the examples of a test: its incremental loads are checked too."""
    source = source_for(postgres, database)
    yield source
    source.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(types=st.lists(DEVICE_TYPES, max_size=3), registers=st.lists(REGISTERS, max_size=8),
       meters=st.lists(METERS, max_size=5))
def test_rows_the_database_accepts_never_break_the_load(postgres, database, persistent, types, registers, meters):
    conn = postgres.connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute("TRUNCATE device_types, registers, energy_meters RESTART IDENTITY CASCADE")
        # the healthy meter beside them
        insert(conn, "device_types", {"name": "ok"})
        insert(conn, "registers", {"type": "ok", "register_address": 0, "measurement_name": "v", "data_type": 3})
        healthy = insert(conn, "energy_meters", {"host": "127.0.0.1", "port": 502, "slave_address": 1, "type": "ok"})
        for row in types:
            insert(conn, "device_types", row)
        for name in TYPE_NAMES:  # refused limits or none drawn: the type still exists for the other rows
            insert(conn, "device_types", {"name": name})
        register_ids = [i for i in (insert(conn, "registers", row) for row in registers) if i is not None]
        meter_ids = [i for i in (insert(conn, "energy_meters", row) for row in meters) if i is not None]
        conn.commit()
    finally:
        conn.close()

    fresh = source_for(postgres, database)
    try:
        config = fresh.load()  # must not raise
    finally:
        fresh.close()
    incremental = persistent.load()
    assert incremental.meters == config.meters and incremental.problems == config.problems
    assert dict(incremental.device_types) == dict(config.device_types)

    assert healthy in [m.id for m in config.meters]
    loaded_registers = {r.id for d in config.device_types.values() for r in d.registers}
    for rid in register_ids:
        assert rid in loaded_registers or any(p.startswith(f"registers.id {rid} ") for p in config.problems)
    loaded_meters = {m.id for m in config.meters}
    for mid in meter_ids:
        assert mid in loaded_meters or any(p.startswith(f"energy_meters.id {mid} ") for p in config.problems)
    assert all("\n" not in m.host and m.host == m.host.strip() for m in config.meters)
    assert_usable(config)


# --- (c) object reuse: plans, learned splits and series keys survive unrelated changes ---------

def test_an_unrelated_change_gives_back_the_very_same_objects(postgres, database):
    postgres.psql(database, "-c", """
        INSERT INTO device_types (name) VALUES ('other');
        INSERT INTO registers (type, register_address, measurement_name, data_type) VALUES ('other', 0, 'v', 1);
        INSERT INTO energy_meters (host, port, slave_address, type) VALUES ('10.0.0.2', 502, 1, 'other');""")
    source = source_for(postgres, database)
    try:
        first = source.load()
        assert source.load() is first  # nothing changed: the very same configuration
        postgres.psql(database, "-c", "INSERT INTO energy_meters (host, port, slave_address, type) "
                                      "VALUES ('10.0.0.3', 502, 1, 'other')")
        second = source.load()
        assert len(second.meters) == 3
        assert second.meters[0] is first.meters[0] and second.meters[1] is first.meters[1]
        assert second.device_types["other"] is first.device_types["other"]
        assert second.meters[2].device_type is first.device_types["other"]
        # a changed register rebuilds its own type only (and the meters of that type)
        postgres.psql(database, "-c", "UPDATE registers SET scale = 2 WHERE type = 'other'")
        third = source.load()
        assert third.device_types["virtual_meter"] is first.device_types["virtual_meter"]
        assert third.meters[0] is first.meters[0]
        assert third.device_types["other"] is not second.device_types["other"]
        assert third.device_types["other"].registers[0].scale == 2.0
        assert third.meters[1] is not second.meters[1] and third.meters[1].device_type is third.device_types["other"]
        # a statement that changes no row bumps the counter; the rows are the same: so is the configuration
        postgres.psql(database, "-c", "UPDATE registers SET scale = scale")
        assert source.load() is third
    finally:
        source.close()


class RefusingDevice:
    """A bus stand-in whose device refuses one register (exception 2): the block is split."""

    def __init__(self, refused: int) -> None:
        self.refused = refused
        self.requests = 0

    def __call__(self, address):
        return self

    async def read(self, block, unit, timeout, pause=0.0, connect_pause=0.0, fence=None):
        self.requests += 1
        if block.address <= self.refused < block.address + block.count:
            raise ExceptionReply(2, block, unit)
        return [1] * block.count

    def close(self) -> None:
        pass


class Lines:
    def put(self, lines) -> None:
        pass


def test_a_learned_block_split_survives_an_unrelated_change(postgres, database):
    postgres.psql(database, "-c", """
        INSERT INTO device_types (name, max_gap) VALUES ('six', 0);
        INSERT INTO registers (type, register_address, measurement_name, data_type)
            SELECT 'six', a, 'r' || a, 4 FROM generate_series(0, 5) a;
        DELETE FROM energy_meters;
        INSERT INTO energy_meters (id, host, port, slave_address, type) VALUES (1, '10.0.0.9', 502, 1, 'six');""")
    device = RefusingDevice(refused=3)
    poller = Poller(Lines(), status_points=False, connect=device)
    source = source_for(postgres, database)

    def requests_of_a_cycle(config) -> int:
        before = device.requests
        asyncio.run(poller.run_cycle([m for m in config.meters if m.id == 1]))
        return device.requests - before

    try:
        config = source.load()
        # 0..5 refused -> 0..2 + 3..5; 3..5 refused -> 3 + 4..5; 3 refused alone: 5 requests, 3 learned
        assert requests_of_a_cycle(config) == 5
        assert requests_of_a_cycle(config) == 3
        postgres.psql(database, "-c", "INSERT INTO energy_meters (host, port, slave_address, type) "
                                      "VALUES ('10.0.0.10', 502, 1, 'virtual_meter')")
        config = source.load()
        assert len(config.meters) == 2
        assert requests_of_a_cycle(config) == 3  # not 5: the split is remembered
    finally:
        source.close()
        poller.close()


# --- an older database, and the session's own limits ----------------------------------------

def test_without_config_version_every_check_reads_the_fingerprints_and_sees_changes(postgres, database):
    postgres.psql(database, "-c", "DROP TABLE config_version; DROP FUNCTION bump_config_version() CASCADE")
    source = source_for(postgres, database)
    try:
        first = source.load()
        assert source.load() is first
        postgres.psql(database, "-c", "UPDATE energy_meters SET description = 'moved'")
        second = source.load()
        assert second.meters[0].description == "moved"
        assert second.meters[0].device_type is first.meters[0].device_type
    finally:
        source.close()


def test_the_session_is_read_only_with_statement_and_lock_timeouts(postgres, database):
    source = source_for(postgres, database, statement_timeout_s=7, lock_timeout_s=1.5)
    try:
        source.load()
        session = source._session
        assert session is not None
        shown = [session.query(f"SHOW {name}")[0][0] for name in
                 ("statement_timeout", "lock_timeout", "default_transaction_read_only", "application_name")]
        assert shown == ["7s", "1500ms", "on", "emm-poller"]
        with pytest.raises(Exception, match="read-only transaction"):
            session.query("INSERT INTO device_types (name) VALUES ('x')")
    finally:
        source.close()


def test_load_keeps_the_last_configuration_and_says_so_once(postgres, database, caplog):
    source = source_for(postgres, database, lock_timeout_s=0.2)
    lock = admin(postgres, database)
    try:
        first = source.load()
        execute(lock, "BEGIN; LOCK TABLE registers IN ACCESS EXCLUSIVE MODE")
        execute(admin(postgres, database), "UPDATE energy_meters SET description = 'x'")
        with caplog.at_level(logging.INFO, logger="poller.config"):
            assert source.load() is first
            assert source.load() is first
            execute(lock, "ROLLBACK")
            assert source.load().meters[0].description == "x"
    finally:
        lock.close()
        source.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "lock timeout" in errors[0]
    assert errors[0].endswith("; polling goes on with the last configuration loaded")
    assert any(r.getMessage().startswith("configuration readable again from PostgreSQL") for r in caplog.records)


def test_no_configuration_at_all_is_a_config_error(postgres):
    from tests.servers import free_port

    env = {**postgres.env("nowhere"), "POSTGRES_PORT": str(free_port())}
    source = ConfigSource(from_env(env), connect_timeout_s=2)
    with pytest.raises(ConfigError, match=r"^cannot read the configuration from PostgreSQL emm_test@127.0.0.1:\d+/"
                                          r"nowhere: "):
        source.load()


# --- (b) a locked or hung PostgreSQL never holds up the event loop ---------------------------

class Ticker:
    """A coroutine ticking every 100 ms in the loop under test: how late was it, at worst?"""

    def __init__(self) -> None:
        self.worst = 0.0
        self.ticks = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            due = time.monotonic() + 0.1
            await asyncio.sleep(0.1)
            self.worst = max(self.worst, time.monotonic() - due)
            self.ticks += 1


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def errors_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "poller.config" and r.levelno >= logging.ERROR]


def test_an_admin_lock_never_delays_the_loop_and_the_change_comes_after_it(postgres, database, caplog):
    caplog.set_level(logging.DEBUG, logger="poller.config")
    watcher = ConfigWatcher(source_for(postgres, database, lock_timeout_s=0.5), interval_s=0.2, hang_report_s=3)
    lock, other = admin(postgres, database), admin(postgres, database)

    async def scenario() -> None:
        stop = asyncio.Event()
        first = await watcher.first(stop)
        assert first is not None and len(first.meters) == 1
        ticker = Ticker()
        tasks = [asyncio.create_task(watcher.run(stop)), asyncio.create_task(ticker.run(stop))]
        try:
            # an admin opens `BEGIN; LOCK TABLE registers ...` and holds it for 10 s after a change
            await asyncio.to_thread(execute, lock, "BEGIN; LOCK TABLE registers IN ACCESS EXCLUSIVE MODE")
            await asyncio.to_thread(execute, other, "INSERT INTO energy_meters (host, port, slave_address, type) "
                                                    "VALUES ('10.0.0.5', 502, 2, 'virtual_meter')")
            held = time.monotonic()
            await until(lambda: errors_of(caplog), 5, "the lock to be reported")
            while time.monotonic() - held < 10:
                assert watcher.current is first and not watcher.changed.is_set()
                await asyncio.sleep(0.2)
            await asyncio.to_thread(execute, lock, "ROLLBACK")
            released = time.monotonic()
            await until(lambda: watcher.changed.is_set(), 5, "the change after the lock")
            assert time.monotonic() - released < 2
            assert len(watcher.current.meters) == 2
            assert watcher.current.meters[0] is first.meters[0]
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        print(f"ticker: worst lateness {ticker.worst * 1000:.1f} ms over {ticker.ticks} ticks")
        assert ticker.ticks >= 100 and ticker.worst < 0.05, ticker.worst

    try:
        asyncio.run(scenario())
    finally:
        watcher.close()
        assert watcher.join(10)
        lock.close()
        other.close()
    errors = errors_of(caplog)
    assert len(errors) == 1, errors  # one ERROR for the whole streak
    assert "lock timeout" in errors[0] and errors[0].endswith("polling goes on with the last configuration loaded")
    assert sum("configuration readable again from PostgreSQL" in r.getMessage() for r in caplog.records) == 1


def cluster_pids(datadir: Path) -> list[int]:
    """The postmaster and every process it started (backends, checkpointer, ...)."""
    postmaster = int((datadir / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            pids.append(int(stat.parent.name))
    return pids


@pytest.fixture
def stoppable_postgres(postgres):
    """A cluster of this test's own, to SIGSTOP. (Asks for `postgres` only so that server-free
    selections such as tests/mutation_selection.py leave the test out.)"""
    with postgres_cluster() as pg:
        pg.create_database("stoppable")
        yield pg


def test_a_stopped_server_never_delays_the_loop_and_is_reported_once(stoppable_postgres, caplog):
    pg = stoppable_postgres
    caplog.set_level(logging.DEBUG, logger="poller.config")
    source = source_for(pg, "stoppable", connect_timeout_s=1, statement_timeout_s=1, answer_timeout_s=2)
    watcher = ConfigWatcher(source, interval_s=0.2, hang_report_s=1)
    stopped: list[int] = []

    def cont() -> None:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    async def scenario() -> None:
        stop = asyncio.Event()
        first = await watcher.first(stop)
        assert first is not None
        ticker = Ticker()
        tasks = [asyncio.create_task(watcher.run(stop)), asyncio.create_task(ticker.run(stop))]
        try:
            await asyncio.sleep(0.5)
            for pid in cluster_pids(pg.datadir):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            await until(lambda: errors_of(caplog), 5, "the hang to be reported")
            await asyncio.sleep(5)  # checks keep hanging and timing out: said once
            assert watcher.current is first
            cont()
            await asyncio.to_thread(pg.psql, "stoppable", "-c", "INSERT INTO energy_meters (host, port, "
                                    "slave_address, type) VALUES ('10.0.0.7', 502, 3, 'virtual_meter')")
            await until(lambda: watcher.changed.is_set(), 15, "the change after SIGCONT")
            assert [m.id for m in watcher.current.meters] == [1, 2]
        finally:
            cont()
            stop.set()
            await asyncio.gather(*tasks)
        print(f"ticker: worst lateness {ticker.worst * 1000:.1f} ms over {ticker.ticks} ticks")
        assert ticker.worst < 0.05, ticker.worst

    try:
        asyncio.run(scenario())
    finally:
        cont()
        watcher.close()
        assert watcher.join(10)
    errors = errors_of(caplog)
    assert len(errors) == 1, errors
    assert errors[0] == (f"PostgreSQL emm_test@127.0.0.1:{pg.port}/stoppable has not answered for 1 s; polling goes "
                         "on with the last configuration loaded")
    assert any("no answer within" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    assert sum("configuration readable again from PostgreSQL" in r.getMessage() for r in caplog.records) == 1


def test_first_retries_with_one_error_per_streak_and_returns_none_on_stop(caplog):
    from tests.servers import free_port

    port = free_port()
    env = {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(port), "POSTGRES_USER": "u", "POSTGRES_DB": "d"}
    watcher = ConfigWatcher(ConfigSource(from_env(env), connect_timeout_s=1), retry_s=0.1)

    async def scenario():
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(1.0, stop.set)
        return await watcher.first(stop)

    with caplog.at_level(logging.DEBUG, logger="poller.config"):
        assert asyncio.run(scenario()) is None
    watcher.close()
    assert watcher.join(10)
    errors = errors_of(caplog)
    assert len(errors) == 1
    assert errors[0].startswith(f"cannot read the configuration from PostgreSQL u@127.0.0.1:{port}/d: ")
    assert errors[0].endswith("; trying again in 0.1 s")
    assert sum("trying again" in r.getMessage() for r in caplog.records) >= 3  # the repeats at DEBUG


# --- (e) 250,000 registers: a reload after one change costs a fraction of a full load ---------

FLEET = """
    INSERT INTO device_types (name) SELECT 't' || i FROM generate_series(1, 2500) i;
    INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code, scale)
        SELECT 't' || i, 2 * j, 'm' || j, 'V', 3, 4, 1 FROM generate_series(1, 2500) i, generate_series(0, 99) j;
    INSERT INTO energy_meters (host, port, slave_address, type)
        SELECT '10.0.' || (i / 250) || '.' || (i % 250), 502, 1, 't' || i FROM generate_series(1, 2500) i;"""


@pytest.mark.slow  # ~25 s: filling 250,000 rows and two full loads
def test_a_reload_after_one_change_costs_a_fraction_of_a_full_load(postgres, database):
    postgres.psql(database, "-c", FLEET)
    watched = source_for(postgres, database)
    fresh = source_for(postgres, database)
    try:
        started = time.monotonic()
        before = watched.load()
        full_first = time.monotonic() - started
        assert len(before.meters) == 2501 and before.problems == ()

        postgres.psql(database, "-c", "UPDATE registers SET scale = 0.5 WHERE type = 't1234' AND register_address = 8")
        started = time.monotonic()
        after = watched.load()
        incremental = time.monotonic() - started

        started = time.monotonic()
        reference = fresh.load()
        full_second = time.monotonic() - started
    finally:
        watched.close()
        fresh.close()
    full = min(full_first, full_second)
    print(f"250,000 registers: full load {full:.2f} s, reload after one change {incremental:.2f} s")
    assert after.meters == reference.meters and after.problems == reference.problems
    changed = [n for n in after.device_types if after.device_types[n] is not before.device_types[n]]
    assert changed == ["t1234"]
    assert sum(a is not b for a, b in zip(after.meters, before.meters, strict=True)) == 1
    assert incremental * 4 < full, (incremental, full)
