"""The running service against a slow InfluxDB, a locked configuration table, a
hung InfluxDB at SIGTERM, and a schedule changed while it runs (issue 9).

Real processes: PostgreSQL, the poller as `python -m poller`, the simulator's server;
VictoriaMetrics where readings are read back; a scripted HTTP server where InfluxDB
must misbehave on demand (slow, hung).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.spool import Spool
from tests.servers import HttpThread, InfluxDB1, InfluxV2Bridge, ModbusServerThread, start_module, stop_process
from tests.test_config import DEVICE_TYPES, METERS, REGISTERS, TYPE_NAMES, insert
from tests.test_faults import seed_registers
from virtual_server.device import make_device
from virtual_server.server import SimulatedServer

# EMM_SOAK=1 runs the soak tests as long as issue 9 asks (slow InfluxDB 90 s, a locked table 40 s);
# the default run (scripts/test, CI) keeps them shorter to stay within its time budget.
SOAK = os.environ.get("EMM_SOAK") == "1"
CYCLE = re.compile(r"cycle: meters ok=(\d+) failed=(\d+) backed_off=(\d+) readings=(\d+) ")


class SlowInflux:
    """The InfluxDB v2 write API, answering every write 204 after `delay_s` (or never: hang)."""

    def __init__(self, delay_s: float, hang: bool = False) -> None:
        self.delay_s, self.hang = delay_s, hang
        self.lines: set[str] = set()
        self.writes = 0
        self._release = threading.Event()
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.hang:
                    outer._release.wait()
                    return
                time.sleep(outer.delay_s)
                with lock:
                    outer.lines.update(body.decode().split("\n"))
                    outer.writes += 1
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = HttpThread(Handler)
        self.url = self.http.url

    def env(self) -> dict[str, str]:
        return {"INFLUXDB_URL": self.url, "INFLUXDB_TOKEN": "t", "INFLUXDB_ORG": "o", "INFLUXDB_BUCKET": "b"}

    def close(self) -> None:
        self._release.set()
        self.http.close()


def spooled_lines(spool_dir: Path, scratch: Path) -> list[str]:
    """Every line still pending in a spool directory (read from a copy; the original is untouched)."""
    copy = scratch / "spool-copy"
    shutil.copytree(spool_dir, copy)
    spool = Spool(copy)
    lines: list[str] = []
    try:
        while (batch := spool.peek()) is not None:
            lines.extend(batch.lines)
            spool.ack(batch)
    finally:
        spool.close()
    return lines


def sigterm(proc) -> tuple[int, float]:
    """SIGTERM: the exit code and how long the stop took."""
    term = time.monotonic()
    rc = stop_process(proc, timeout=30)
    return rc, time.monotonic() - term


def logged_points(text: str) -> int:
    """Points the cycles logged: each meter's readings plus its poller_status point."""
    return sum(ok + failed + backed_off + readings
               for ok, failed, backed_off, readings in (map(int, m.groups()) for m in CYCLE.finditer(text)))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fleet(postgres, database, meters: int) -> ModbusServerThread:
    """One gateway serving the seed map at `meters` unit ids, all configured."""
    words = make_device("virtual_meter", seed_registers(postgres, database), 3).words()
    gateway = ModbusServerThread(SimulatedServer(units={}, default=lambda: words))
    postgres.psql(database, "-c", f"""
        DELETE FROM energy_meters;
        INSERT INTO energy_meters (id, host, port, slave_address, type)
            SELECT u, '127.0.0.1', {gateway.port}, u, 'virtual_meter' FROM generate_series(1, {meters}) u;""")
    return gateway


def test_a_slow_influxdb_keeps_memory_bounded_and_loses_nothing(postgres, database, tmp_path):
    """InfluxDB answers every write after 8 s; 100 meters x 13 points a second for 90 s (EMM_SOAK=1;
    40 s in the default run, which already fills the write buffer and spools), then SIGTERM."""
    run_s = 90 if SOAK else 40
    gateway = fleet(postgres, database, 100)
    influx = SlowInflux(delay_s=8.0)
    spool_dir = tmp_path / "spool"
    log = tmp_path / "poller.log"
    env = {**postgres.env(database), **influx.env(), "POLL_CRON": "* * * * * *", "POLL_SPOOL_DIR": str(spool_dir),
           "POLL_WRITE_BUFFER": "20000", "POLL_SPOOL_RETRY_MAX_S": "5"}
    proc = start_module("poller", [], env, log)
    rss: list[tuple[float, int]] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < run_s:
            assert proc.poll() is None, log.read_text()
            rss.append((time.monotonic() - started, rss_kib(proc.pid)))
            time.sleep(1.0)
        rc, stop_s = sigterm(proc)
    finally:
        stop_process(proc)
        gateway.close()
    text = log.read_text()
    influx.close()
    assert rc == 0, text
    assert "Traceback" not in text
    assert stop_s < 12, f"SIGTERM took {stop_s:.1f} s"

    # Memory: after the first 20 s nothing grows with the readings taken (~117,000 in 90 s).
    settled = [k for t, k in rss if t >= 20]
    assert max(settled) - settled[0] < 40 * 1024, rss
    assert max(k for _, k in rss) < 250 * 1024, rss

    # Every reading is in InfluxDB or on disk.
    found = influx.lines | set(spooled_lines(spool_dir, tmp_path))
    found.discard("")
    logged = logged_points(text)
    assert len(CYCLE.findall(text)) >= run_s - 10 and logged > (run_s - 10) * 1300
    assert logged <= len(found) <= logged + 1300  # + the cycle a SIGTERM may have cut short
    per_meter: dict[str, list[int]] = {}
    for line in found:
        meter = re.search(r",meter=(\d+),", line).group(1)  # type: ignore[union-attr]
        counts = per_meter.setdefault(meter, [0, 0])
        counts[0 if line.startswith("poller_status,") else 1] += 1
    assert len(per_meter) == 100
    for meter, (statuses, readings) in per_meter.items():
        assert 12 * statuses <= readings <= 12 * (statuses + 1), (meter, statuses, readings)
    assert influx.writes >= max(3, run_s // 16)  # it was written to, slowly, all along


def test_sigterm_while_influxdb_hangs_stops_within_the_bound_and_keeps_everything(postgres, database, tmp_path,
                                                                                hung_port):
    """A SIGTERM while InfluxDB hangs and a device never answers (60 s timeout): the stop takes
    about 5 s for the cycles, 5 s for the outbox, and every reading taken is on disk."""
    gateway = fleet(postgres, database, 5)
    postgres.psql(database, "-c", f"""
        INSERT INTO device_types (name, timeout_s) VALUES ('hung', 60);
        INSERT INTO registers (type, register_address, measurement_name, data_type) VALUES ('hung', 0, 'v', 3);
        INSERT INTO energy_meters (id, host, port, slave_address, type)
            VALUES (99, '127.0.0.1', {hung_port}, 1, 'hung');""")
    influx = SlowInflux(delay_s=0, hang=True)
    spool_dir = tmp_path / "spool"
    log = tmp_path / "poller.log"
    env = {**postgres.env(database), **influx.env(), "POLL_CRON": "* * * * * *", "POLL_SPOOL_DIR": str(spool_dir)}
    proc = start_module("poller", [], env, log)
    try:
        deadline = time.monotonic() + 30
        while len(CYCLE.findall(log.read_text())) < 5:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.1)
        rc, stop_s = sigterm(proc)
    finally:
        stop_process(proc)
        gateway.close()
        influx.close()
    text = log.read_text()
    assert rc == 0, text
    assert stop_s < 13, f"SIGTERM took {stop_s:.1f} s with InfluxDB and a device hanging"
    assert "cycle(s) still reading after 5 s were stopped" in text, text
    logged = logged_points(text)
    on_disk = set(spooled_lines(spool_dir, tmp_path))
    # beyond the logged cycles: the first one (held by the hung device; its 5 meters were read) and
    # the one a SIGTERM may have cut short
    assert logged + 5 * 13 <= len(on_disk) <= logged + 2 * 5 * 13, (logged, len(on_disk))


def test_a_locked_configuration_table_never_stops_polling(postgres, database, victoria, tmp_path):
    """An admin holds registers locked for 40 s (EMM_SOAK=1; 15 s in the default run) while a
    committed change asks for a reload: every tick still polls, with the last configuration; the
    change lands after the unlock."""
    gateway = fleet(postgres, database, 1)
    log = tmp_path / "poller.log"
    env = {**postgres.env(database), **victoria.env(), "POLL_CRON": "* * * * * *"}
    proc = start_module("poller", [], env, log)
    admin = postgres.connect(database)
    try:
        deadline = time.monotonic() + 30
        while "cycle: meters ok=1" not in log.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.1)
        locker = admin.cursor()
        locker.execute("LOCK TABLE registers IN ACCESS EXCLUSIVE MODE")  # psycopg2: inside a transaction
        postgres.psql(database, "-c", "UPDATE energy_meters SET description = 'after the lock'")
        locked_from = time.time()
        time.sleep(40 if SOAK else 15)
        locked_until = time.time()
        admin.rollback()  # the lock goes; the committed description change is now readable
        deadline = time.monotonic() + 15
        while True:
            series = victoria._export_now('{__name__="voltage_l1_value", description="after the lock"}')
            if series or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert series, "the change made during the lock never arrived"
    finally:
        admin.close()
        rc = stop_process(proc)
        gateway.close()
    text = log.read_text()
    assert rc == 0, text
    assert "Traceback" not in text
    (voltage,) = victoria.export('{__name__="voltage_l1_value", description=""}')
    seconds = {t // 1000 for t in voltage["timestamps"]}
    window = set(range(int(locked_from) + 1, int(locked_until)))
    assert window <= seconds, f"ticks without a reading while the table was locked: {sorted(window - seconds)}"


# --- (a) generated configuration rows beside a healthy meter: the running service never stops ---

@pytest.fixture(scope="module")
def strict_influx():
    """InfluxDB 1.x (the strict line-protocol parser) behind the v2 write API the poller speaks."""
    with InfluxDB1() as influx, InfluxV2Bridge(influx) as bridge:
        yield influx, bridge


@pytest.fixture(scope="module")
def healthy_gateway():
    """A device answering 230.5 V (float32 at holding register 0) at every unit id."""
    words = {(3, 0): 0x4366, (3, 1): 0x8000}
    gateway = ModbusServerThread(SimulatedServer(units={}, default=lambda: words))
    yield gateway
    gateway.close()


_examples = itertools.count()
RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<message>.*)")


def problems_beyond_bad_rows(text: str) -> list[str]:
    """Log lines that mean a reading was lost or the poller broke, as opposed to bad rows reported.

    Read by structure (level, logger, where the error message starts), never by searching the whole
    text for a word: generated rows may hold any word (hypothesis once named a host "rejected"), and
    the formatter keeps a row's text on its record's one line.
    """
    problems = []
    for line in text.splitlines():
        record = RECORD.fullmatch(line)
        if record is None:  # a traceback's frames: the only lines without the record prefix
            problems.append(line)
            continue
        level, logger, message = record["level"], record["logger"], record["message"]
        if logger == "poller" and message.startswith("cycle: ") and " NOT WRITTEN=" in message:
            problems.append(line)
        elif level not in ("ERROR", "CRITICAL"):
            continue
        elif logger == "poller" and message.startswith("meter ") and ") failed: " in message:
            # a meter that cannot be read (cycle.DeviceHealth: "<meter> failed: <why>"), e.g. a host no
            # name server knows: a bad row's own error, unless the why is a bug of ours
            if message.split(") failed: ", 1)[1].startswith("internal error"):
                problems.append(line)
        elif logger != "poller.schedule":  # "schedule ... has no next fire time" is a bad row's report
            problems.append(line)
    return problems


def test_a_meter_that_cannot_be_read_is_a_bad_row_reported_and_a_bug_is_a_problem():
    """The log reader of the test below. A CI run generated a meter at meter-1.example with a
    pollable map: its "name not resolved" is that row's own error, which the reader, looking for
    a logger the cycle does not use, took for a problem."""
    t = "2026-11-27 17:55:49,004"
    unresolved = (f"{t} ERROR poller: meter 3 (meter-1.example:546 unit 131, c) failed: cannot connect to "
                  "meter-1.example:546: name not resolved (Name or service not known)")
    odd_host = f"{t} ERROR poller: meter 4 (rejected) x:1 unit 1, a) failed: no reply from x:1 unit 1 within 3 s"
    bug = f"{t} ERROR poller: meter 5 (h:502 unit 1, a) failed: internal error: KeyError: 7"
    lost = f"{t} INFO poller: cycle: meters ok=1 failed=0 readings=1 NOT WRITTEN=1"
    crash = f"{t} ERROR poller: cycle at 17:55:49 failed"
    frame = '  File "poller/cycle.py", line 3, in run_cycle'
    assert problems_beyond_bad_rows("\n".join([unresolved, odd_host, bug, lost, crash, frame])) == [
        bug, lost, crash, frame]


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(types=st.lists(DEVICE_TYPES, max_size=3), registers=st.lists(REGISTERS, max_size=8),
       meters=st.lists(METERS, min_size=1, max_size=5))
def test_generated_rows_never_stop_the_service_nor_its_healthy_meter(postgres, strict_influx, healthy_gateway,
                                                                     tmp_path_factory, types, registers, meters):
    influx, bridge = strict_influx
    n = next(_examples)
    database, bucket = f"emm_generated_{os.getpid()}_{n}", f"generated_{n}"
    postgres.create_database(database)
    influx.create_database(bucket)
    tmp = tmp_path_factory.mktemp("generated")
    try:
        conn = postgres.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute("TRUNCATE device_types, registers, energy_meters RESTART IDENTITY CASCADE")
            insert(conn, "device_types", {"name": "ok", "timeout_s": 0.5})
            insert(conn, "registers", {"type": "ok", "register_address": 0, "measurement_name": "v",
                                       "data_type": 3, "data_unit": "V"})
            healthy = insert(conn, "energy_meters", {"host": "127.0.0.1", "port": healthy_gateway.port,
                                                     "slave_address": 1, "type": "ok"})
            for row in types:
                insert(conn, "device_types", row)
            for name in TYPE_NAMES:
                insert(conn, "device_types", {"name": name})
            for row in registers:
                insert(conn, "registers", row)
            for row in meters:
                insert(conn, "energy_meters", row)
            conn.commit()
        finally:
            conn.close()
        log = tmp / "poller.log"
        spool_dir = tmp / "spool"
        env = {**postgres.env(database), **bridge.env(bucket), "POLL_CRON": "* * * * * *",
               "POLL_SPOOL_DIR": str(spool_dir)}
        proc = start_module("poller", [], env, log)
        started = time.time()
        try:
            time.sleep(5.5)
            assert proc.poll() is None, log.read_text()
        finally:
            rc = stop_process(proc)
        ended = time.time()
        text = log.read_text()
        assert rc == 0, text
        assert not problems_beyond_bad_rows(text), text
        assert not (spool_dir / "dead-letter.jsonl").exists()
        series = influx.query(bucket, f"SELECT value FROM v WHERE meter = '{healthy}'")
        stamps = [row[0] for s in series for row in s["values"]]
        seconds = {int(t) // 1000 for t in stamps}  # epoch=ms
        window = set(range(int(started) + 2, int(ended) - 1))
        assert window <= seconds, (sorted(window - seconds), text)
    finally:
        postgres.drop_database(database)
        influx.drop_database(bucket)


def test_a_meter_added_with_its_own_schedule_is_polled_from_its_first_slot(postgres, database, victoria, tmp_path):
    """Issue 9 item 8: the next tick used to be computed before the reload, so a meter added with
    its own poll_cron waited for the next POLL_CRON tick (here up to 10 s) before its schedule counted."""
    gateway = fleet(postgres, database, 1)
    log = tmp_path / "poller.log"
    env = {**postgres.env(database), **victoria.env(), "POLL_CRON": "* * * * * */10"}
    proc = start_module("poller", [], env, log)
    try:
        deadline = time.monotonic() + 30
        while "cycle: meters ok=1" not in log.read_text():  # just after a POLL_CRON tick: the next is 10 s away
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.05)
        added = time.time()
        postgres.psql(database, "-c", f"""INSERT INTO energy_meters (id, host, port, slave_address, type, poll_cron)
            VALUES (2, '127.0.0.1', {gateway.port}, 2, 'virtual_meter', '* * * * * *')""")
        deadline = time.monotonic() + 15
        while not (series := victoria._export_now('{__name__="voltage_l1_value", meter="2"}')):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        rc = stop_process(proc)
        gateway.close()
    assert rc == 0, log.read_text()
    first = min(series[0]["timestamps"]) / 1000
    assert first - added < 4, f"first reading {first - added:.1f} s after the meter was added"
