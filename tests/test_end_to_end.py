"""PostgreSQL -> simulator over TCP -> poller -> VictoriaMetrics, all real processes."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from tests.servers import PG_BIN, ROOT, find_pg_bin, free_port, project_env, start_module, stop_process, wait_for_port
from virtual_server.device import make_device

SEED = 7


@pytest.fixture
def simulator(postgres, database, tmp_path):
    """The simulator on a free port, frozen values, the seed meter pointed at it."""
    port = free_port()
    postgres.psql(database, "-c", f"UPDATE energy_meters SET host = '127.0.0.1', port = {port}")
    log = tmp_path / "simulator.log"
    proc = start_module("virtual_server", ["--host", "127.0.0.1", "--port", str(port), "--seed", str(SEED),
                                           "--frozen", "--log-requests"], postgres.env(database), log)
    try:
        wait_for_port(port, proc=proc)
        yield port, log
    finally:
        stop_process(proc)


def run_poller(args, env, timeout=60):
    return subprocess.run([sys.executable, "-m", "poller", "--env-file", "/nonexistent", *args],
                          cwd=ROOT, env=project_env(env), capture_output=True, text=True, timeout=timeout)


def seed_map(postgres, database):
    config = postgres.configuration(database)
    assert not config.problems, config.problems
    return config


def test_every_seed_register_arrives_once_with_the_served_value(postgres, database, simulator, victoria):
    port, sim_log = simulator
    config = seed_map(postgres, database)
    (meter,) = config.meters
    registers = meter.device_type.registers
    assert len(registers) == 12
    expected = make_device("virtual_meter", registers, SEED).values()

    before_ms = int(time.time() * 1000)
    done = run_poller(["--once"], {**postgres.env(database), **victoria.env()})
    after_ms = int(time.time() * 1000)
    assert done.returncode == 0, done.stderr
    summary = r"cycle: meters ok=1 failed=0 backed_off=0 readings=12 invalid=0 requests=2 "
    assert re.search(summary, done.stderr), done.stderr

    series = victoria.export(min_samples=12 + 5)
    status = {s["metric"]["__name__"]: s["values"] for s in series if s["metric"]["__name__"].startswith("poller_")}
    stored = {s["metric"]["__name__"]: s for s in series if not s["metric"]["__name__"].startswith("poller_")}
    assert status["poller_status_up"] == [1.0]
    assert status["poller_status_readings"] == [12.0] and status["poller_status_requests"] == [2.0]
    assert status["poller_status_errors"] == [0.0]
    assert sorted(stored) == sorted(f"{r.measurement}_value" for r in registers)
    for reg in registers:
        s = stored[f"{reg.measurement}_value"]
        tags = {k: v for k, v in s["metric"].items() if k != "__name__"}
        want = {"meter": str(meter.id), "host": "127.0.0.1", "slave_address": "1", "type": "virtual_meter",
                "description": "Virtual meter (simulator)"}
        if reg.unit:
            want["unit"] = reg.unit
        assert tags == want, reg.measurement
        assert len(s["values"]) == 1, f"{reg.measurement} stored {len(s['values'])} times"
        assert s["values"][0] == pytest.approx(expected[reg.measurement], rel=1e-12, abs=1e-12), reg.measurement
        assert before_ms <= s["timestamps"][0] <= after_ms

    # One request per coalesced block, not one per register: the seed map (db/init.sql) is
    # eight float32 input registers at 0..15 and four holding registers at 100..105.
    requests = re.findall(r"request unit=(\d+) fc=(\d) address=(\d+) count=(\d+)", sim_log.read_text())
    assert sorted(tuple(map(int, r)) for r in requests) == [(1, 3, 100, 6), (1, 4, 0, 16)]


def test_dry_run_prints_one_line_per_register(postgres, database, simulator):
    done = run_poller(["--once", "--dry-run"], {**postgres.env(database), "INFLUXDB_URL": "http://127.0.0.1:9"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    measurements = sorted(line.split(",", 1)[0] for line in lines)
    with postgres.connect(database) as conn, conn.cursor() as cur:
        cur.execute("SELECT measurement_name FROM registers WHERE type = 'virtual_meter'")
        assert measurements == sorted(r[0] for r in cur.fetchall())
    assert all(re.fullmatch(r"\S+(,\S+=\S+)+ value=[-0-9.e+]+ \d{13}", line.replace("\\ ", "_")) for line in lines)


@pytest.mark.parametrize("event_loop", ["auto", "asyncio"])
def test_runs_on_the_schedule_and_stops_cleanly(postgres, database, simulator, victoria, tmp_path, event_loop):
    """On the loop POLL_EVENT_LOOP gives (auto: uvloop, a dependency wherever it has wheels; asyncio's)."""
    env = {**postgres.env(database), **victoria.env(), "POLL_CRON": "* * * * * *", "POLL_EVENT_LOOP": event_loop}
    log = tmp_path / "poller.log"
    proc = start_module("poller", [], env, log)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and log.read_text().count("cycle: meters ok=1") < 3:
            time.sleep(0.2)
    finally:
        rc = stop_process(proc)
    text = log.read_text()
    assert text.count("cycle: meters ok=1") >= 3, text
    assert rc == 0, text
    assert re.search(r"writing to \S+, event loop " + ("uvloop 0\\." if event_loop == "auto" else "asyncio$"),
                     text, re.M), text
    (voltage,) = victoria.export('{__name__="voltage_l1_value"}', min_samples=3)
    stamps = voltage["timestamps"]
    assert len(stamps) >= 3 and len(set(stamps)) == len(stamps)
    # each tick lands in its own second (the schedule is every second)
    assert len({t // 1000 for t in stamps}) == len(stamps)


def test_check_lists_the_read_plan_and_the_skipped_rows(postgres, database):
    postgres.psql(database, "-c", "INSERT INTO energy_meters (host, port, slave_address, type, poll_cron) "
                                  "VALUES ('10.0.0.9', 502, 4, 'virtual_meter', 'every minute')")
    done = run_poller(["--check"], postgres.env(database))
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == ("meter 1 (virtual_modbustcp_server:502 unit 1, virtual_meter): 12 registers in 2 requests "
                        "(fc3 100..105, fc4 0..15), schedule '* * * * * */10'")
    assert lines[1].startswith("SKIPPED energy_meters.id 2 (10.0.0.9:502 unit 4): poll_cron 'every minute'")
    assert lines[-1] == "1 meters, 1 rows skipped"


def test_the_newest_installed_postgresql_is_used(tmp_path):
    """Debian installs each major version under /usr/lib/postgresql/<major>; scripts/test gets
    whichever the `postgresql` package brings, so the tests must not assume one."""
    for version in ("9.6", "15", "16", "17"):
        bindir = tmp_path / version / "bin"
        bindir.mkdir(parents=True)
        for tool in ("initdb", "pg_ctl") if version != "17" else ("psql",):  # 17: only the client
            (bindir / tool).write_text("#!/bin/sh\n")
    assert find_pg_bin(tmp_path) == tmp_path / "16" / "bin"  # by number: 16 > 15 > 9.6, not as text
    # and on this machine: the server that answers the tests is the one found
    assert (PG_BIN / "initdb").is_file()
    out = subprocess.run([str(PG_BIN / "initdb"), "--version"], capture_output=True, text=True, check=True)
    assert re.search(rf"\b{re.escape(PG_BIN.parent.name)}(\.\d+)?\b", out.stdout), (PG_BIN, out.stdout)
