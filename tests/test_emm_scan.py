"""`emm scan` (issue 12 item 2): the real simulator behind one gateway, a real PostgreSQL, the CLI as a process.

The families are this test's own device types with device_signatures rows (the library's maps
are someone else's work in progress): three families with distinct signatures, one device
matching two families (ambiguous), one with no signature (unknown) and a hand-made SunSpec
device. The simulator counts the requests in flight (virtual_server.server.Stats: from a
request's arrival to its reply, over every connection), which is how "never two requests in
flight on the gateway" is measured; with a few milliseconds of latency per reply, any overlap
shows.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from poller.model import BusAddress, SerialLine, Transport
from poller.onboard.scan import ProgressDisplay, UnitFinding, insert_rows, insert_statement, parse_units
from poller.onboard.signatures import Identification
from tests.servers import (
    ROOT,
    ModbusServerThread,
    free_port,
    project_env,
    pty_pair,
    start_module,
    stop_process,
    wait_for_port,
)
from tests.test_emm_probe import EMM_SCRIPT, emm
from virtual_server.device import make_device
from virtual_server.server import DROP, SILENT, SimulatedServer

FAMILIES_SQL = """
    INSERT INTO device_types (name, description) VALUES
        ('scan_alpha', 'alpha meter'), ('scan_beta', 'beta meter'), ('scan_gamma', 'gamma inverter'),
        ('scan_hybrid', 'looks like alpha and beta'), ('scan_mystery', 'no signature');
    INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code, scale)
    VALUES
        ('scan_alpha',   0,   'voltage',     'V',  3, 4, 1),
        ('scan_alpha',   2,   'current',     'A',  3, 4, 1),
        ('scan_beta',    100, 'frequency',   'Hz', 1, 3, 0.01),
        ('scan_beta',    101, 'temperature', '°C', 4, 3, 1),
        ('scan_gamma',   300, 'model',       's',  4, 3, 1),
        ('scan_gamma',   302, 'power',       'W',  3, 3, 1),
        ('scan_hybrid',  0,   'voltage',     'V',  3, 4, 1),
        ('scan_hybrid',  100, 'frequency',   'Hz', 1, 3, 0.01),
        ('scan_mystery', 0,   'current',     'A',  3, 4, 1),
        ('scan_mystery', 500, 'counter',     NULL, 4, 3, 1);
    INSERT INTO device_signatures (type, register_address, function_code, data_type, scale, min_value, max_value,
                                   description) VALUES
        ('scan_alpha', 0,   4, 3, 1,    180,  280,   'line voltage, V'),
        ('scan_beta',  100, 3, 1, 0.01, 45,   65,    'mains frequency, Hz'),
        ('scan_gamma', 300, 3, 4, 1,    3600, 3600,  'model code'),
        ('scan_gamma', 302, 3, 3, 1,    0,    10000, 'power, W');
"""

Bank = Callable[[], Mapping[tuple[int, int], int]]


def sunspec_bank() -> Bank:
    """A SunSpec device: "SunS" at 40000, common model 1 (66 registers), inverter model 103 (50), the end."""
    words = {(3, 40000): 0x5375, (3, 40001): 0x6E53, (3, 40002): 1, (3, 40003): 66}
    words |= {(3, 40004 + i): 0 for i in range(66)}
    words |= {(3, 40070): 103, (3, 40071): 50}
    words |= {(3, 40072 + i): 0 for i in range(50)}
    words |= {(3, 40122): 0xFFFF, (3, 40123): 0}
    return lambda: words


@pytest.fixture
def families(postgres, database) -> Callable[[str, int], Bank]:  # type: ignore[no-untyped-def]
    """The test families in the database; `bank(type, seed)` serves one as the simulator does."""
    postgres.psql(database, "-c", FAMILIES_SQL)
    types = postgres.configuration(database).device_types

    def bank(name: str, seed: int = 1) -> Bank:
        words = make_device(name, types[name].registers, seed).words()
        return lambda: words

    return bank


def serve(units: Mapping[int, Bank], start: Callable[[SimulatedServer], Any] | None = None,
          **options: Any) -> ModbusServerThread:
    return ModbusServerThread(SimulatedServer(units=dict(units), strict=True, **options), start)


@pytest.fixture
def gateway(families) -> Iterator[ModbusServerThread]:  # type: ignore[no-untyped-def]
    """One Modbus TCP gateway with seven devices; other unit ids get exception 11 (nobody there)."""
    server = serve({1: families("scan_alpha"), 2: families("scan_beta"), 5: families("scan_gamma"),
                    6: families("scan_alpha", 2), 8: families("scan_hybrid"), 10: families("scan_mystery"),
                    12: sunspec_bank()}, latency_s=0.002)
    try:
        yield server
    finally:
        server.close()


EXPECTED = {1: "scan_alpha", 2: "scan_beta", 5: "scan_gamma", 6: "scan_alpha",
            8: "ambiguous: scan_alpha, scan_beta", 10: "unknown", 12: "unknown"}


def test_scan_finds_every_unit_names_each_family_and_never_has_two_requests_in_flight(postgres, database, gateway):
    out = emm(["scan", f"127.0.0.1:{gateway.port}", "--units", "1-14", "--json"], postgres.env(database))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {f["unit"]: f["label"] for f in report["found"]} == EXPECTED
    stats = gateway.server.stats
    assert stats.max_in_flight == 1
    assert stats.requests == report["requests"]  # every request the scanner made reached the gateway
    by_unit = {f["unit"]: f for f in report["found"]}
    assert by_unit[12]["sunspec"] == {"base": 40000, "models": [{"id": 1, "address": 40004, "length": 66},
                                                                {"id": 103, "address": 40072, "length": 50}]}
    assert all(by_unit[u]["sunspec"] is None for u in EXPECTED if u != 12)
    # the unknown device: the signature registers that answered, with their words, and those refused
    mystery = by_unit[10]
    assert [(a["function_code"], a["address"]) for a in mystery["answered"]] == [(4, 0)]
    assert {(r["function_code"], r["address"]) for r in mystery["refused"]} == {(3, 100), (3, 300), (3, 302)}
    assert report["inserts"] == [
        f"INSERT INTO energy_meters (host, port, slave_address, type, description, transport) VALUES "
        f"('127.0.0.1', {gateway.port}, {unit}, '{family}', '{family} at unit {unit} (found by emm scan)', 'tcp') "
        "ON CONFLICT DO NOTHING;" for unit, family in [(1, "scan_alpha"), (2, "scan_beta"), (5, "scan_gamma"),
                                                        (6, "scan_alpha")]]


def test_scan_table_and_apply_through_the_emm_script(postgres, database, gateway):
    assert EMM_SCRIPT.exists(), f"{EMM_SCRIPT} missing: reinstall the project (pip install -e '.[test]')"
    bus = f"127.0.0.1:{gateway.port}"
    out = emm(["scan", bus, "--units", "1-14", "--apply"], postgres.env(database), script=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"scan {bus}, unit ids 1-14: 7 answered (14 of 14 unit ids scanned in ")
    header = lines.index(next(line for line in lines if line.startswith("UNIT")))
    table = {int(line.split()[0]): line for line in lines[header + 1:header + 8]}
    assert sorted(table) == sorted(EXPECTED)
    for unit, label in EXPECTED.items():
        assert table[unit].split("  ")[1:] and label in table[unit], table[unit]
    assert re.search(r"^12 +unknown +1, 103 +exception 2 \(illegal data address\)$", table[12], re.M)
    # what the unknown device gave at the signature registers, value and verdict per family row
    text = out.stdout
    assert "unit 10: unknown; the signature registers gave:" in text
    assert re.search(r"    fc4 0..1: 0x[0-9A-F]{4} 0x[0-9A-F]{4}\n        scan_alpha: line voltage, V = [0-9.]+, "
                     r"outside 180\.\.280 \(float32 ABCD\)", text)
    assert "    exception 2 (illegal data address): fc3 100, fc3 300, fc3 302..303\n" in text
    assert "unit 8: ambiguous; the signature registers gave:" in text
    assert "unit 12: unknown" in text and "`emm sunspec 127.0.0.1 --unit 12`" in text
    assert text.count("INSERT INTO energy_meters") == 4
    assert "-- unit 5: scan_gamma (model code = 3600 in 3600..3600; power, W = " in text
    assert "emm scan: inserted 4 energy_meters row(s)" in out.stderr

    conn = postgres.connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT host, port, slave_address, type, transport FROM energy_meters "
                        "WHERE type LIKE 'scan_%' ORDER BY slave_address")
            assert cur.fetchall() == [("127.0.0.1", gateway.port, 1, "scan_alpha", "tcp"),
                                      ("127.0.0.1", gateway.port, 2, "scan_beta", "tcp"),
                                      ("127.0.0.1", gateway.port, 5, "scan_gamma", "tcp"),
                                      ("127.0.0.1", gateway.port, 6, "scan_alpha", "tcp")]
    finally:
        conn.close()
    # the poller takes them as they are
    config = postgres.configuration(database)
    assert not [p for p in config.problems if "scan_" in p]
    assert sorted(m.slave_address for m in config.meters if m.device_type.name.startswith("scan_")) == [1, 2, 5, 6]
    again = emm(["scan", bus, "--units", "1-6", "--apply", "--no-progress"], postgres.env(database))
    assert again.returncode == 0
    assert again.stderr == "emm scan: inserted 0 energy_meters row(s), 4 already there\n"


def test_apply_with_the_pollers_read_only_login_is_refused_with_what_to_do(postgres, database, gateway):
    name, password = f"emm_scan_reader_{os.getpid()}", "test-only-reader"
    env = {**postgres.env(database), **postgres.reader_login(database, name, password)}
    out = emm(["scan", f"127.0.0.1:{gateway.port}", "--units", "1-2", "--apply", "--no-progress"], env)
    assert out.returncode == 1
    assert out.stdout.count("INSERT INTO energy_meters") == 2  # the statements are printed all the same
    assert out.stderr.startswith(f"emm scan: --apply: nothing inserted: the login '{name}' may not write")
    assert "use the admin login (POSTGRES_USER" in out.stderr and len(out.stderr.splitlines()) == 1


def silent_except(units: set[int]) -> Callable[[int, int, int, int], Any]:
    """A gateway where only `units` answer: every other unit id gets no reply at all (a timeout)."""
    return lambda unit, fc, address, count: None if unit in units else SILENT


def test_247_unit_ids_with_3_answering_finish_within_247_unit_timeouts_with_the_progress_bar(
        postgres, database, families):
    """244 silent unit ids cost one timeout each, and nothing more: no retry, no second request;
    the whole scan within 247 timeouts (the timeout is the scan's budget per unit id: the few
    milliseconds each request costs beyond its wait come out of the next ones' waits)."""
    timeout = 0.1
    present = {5: "scan_alpha", 100: "scan_beta", 200: "scan_gamma"}
    server = serve({u: families(t) for u, t in present.items()}, on_request=silent_except(set(present)))
    try:
        bus = f"127.0.0.1:{server.port}"
        started = time.monotonic()
        base = emm(["scan", bus, "--units", "5", "--timeout", str(timeout), "--json"], postgres.env(database))
        fixed = time.monotonic() - started  # the process's start, the database, one device's identification
        assert base.returncode == 0, base.stderr
        requests_before = server.server.stats.by_request.copy()
        started = time.monotonic()
        out = emm(["scan", bus, "--timeout", str(timeout), "--progress", "--json"], postgres.env(database))
        wall = time.monotonic() - started
        asked = server.server.stats.by_request - requests_before
    finally:
        server.close()
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["units"] == list(range(1, 248)) and report["scanned"] == 247
    assert {f["unit"]: f["label"] for f in report["found"]} == present
    # every unit id was asked once (fc3 at 0, one register); the silent ones nothing else
    assert all(asked[(unit, 3, 0, 1)] == 1 for unit in range(1, 248))
    assert {unit for unit, *_ in asked} == set(range(1, 248))
    assert sum(n for (unit, *_), n in asked.items() if unit not in present) == 244
    assert server.server.stats.max_in_flight == 1
    print(f"247 unit ids at --timeout {timeout}: scan {report['elapsed_s']:.2f} s (process {wall:.2f} s, its "
          f"start and one unit {fixed:.2f} s); 247 x timeout = {247 * timeout:.2f} s")
    assert report["elapsed_s"] >= 244 * 0.8 * timeout  # every silent unit id was waited for (MIN_SHARE)
    assert report["elapsed_s"] <= 247 * timeout  # from the first request to the last reply, as the scan measures it
    assert wall - fixed <= 247 * timeout + 1.0  # the same from outside, less the process's start (1 s: its exit)
    # the bar, drawn in place on stderr, to its end; the devices found on lines of their own
    frames = out.stderr.split("\r")
    assert len(frames) > 10, out.stderr
    assert any(re.match(r"scan \[#{30}\] 247/247  unit 247  found 3", f) for f in frames), frames[-3:]
    assert any(re.match(r"scan \[#*\.+\] +\d+/247  unit +\d+  found \d  0:\d\d, ~\d+:\d\d left", f)
               for f in frames)
    assert "unit 100 answered: scan_beta\n" in out.stderr


def test_ctrl_c_stops_the_scan_cleanly_with_what_was_found_so_far(postgres, database, families, tmp_path):
    server = serve({2: families("scan_alpha"), 3: families("scan_beta")}, on_request=silent_except({2, 3}))
    stdout, stderr = tmp_path / "out", tmp_path / "err"
    try:
        with open(stdout, "w") as out, open(stderr, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "poller.onboard", "--env-file", "/nonexistent", "scan",
                                     f"127.0.0.1:{server.port}", "--timeout", "0.2"],
                                    cwd=ROOT, env=project_env(postgres.env(database)), stdout=out, stderr=err)
            deadline = time.monotonic() + 60
            while "scanned 24/247" not in stderr.read_text():  # lines, not the bar: stderr is no terminal
                assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            sent = time.monotonic()
            code = proc.wait(30)
            stopped_in = time.monotonic() - sent
    finally:
        server.close()
    said, printed = stderr.read_text(), stdout.read_text()
    assert code == 130, (said, printed)
    assert stopped_in < 2.0  # the read in flight is abandoned, not waited for
    assert "Traceback" not in said
    assert re.search(r"^emm scan: interrupted after (2[4-9]|[3-9]\d) of 247 unit ids$", said, re.M), said
    assert "unit 2 answered: scan_alpha\nunit 3 answered: scan_beta\n" in said
    lines = printed.splitlines()
    assert re.match(r"scan 127\.0\.0\.1:\d+, unit ids 1-247: 2 answered \((2[4-9]|[3-9]\d) of 247 unit ids", lines[0])
    assert lines[1].startswith("interrupted: unit ids ") and lines[1].endswith("-247 were not scanned")
    assert re.search(r"^2 +scan_alpha ", printed, re.M) and re.search(r"^3 +scan_beta ", printed, re.M)
    assert printed.count("INSERT INTO energy_meters") == 2


@pytest.mark.parametrize("transport", ["tcp", "rtuovertcp", "udp", "serial"])
def test_scan_on_every_transport(postgres, database, families, tmp_path, transport):
    """Units 2 and 3 answer; 1 and 4 do not (exception 11 from a Modbus TCP/UDP gateway, silence on RTU)."""
    units = {2: families("scan_alpha"), 3: families("scan_beta")}
    with pty_pair(tmp_path) as (device_end, poller_end):
        start: Callable[[SimulatedServer], Any] | None = {
            "tcp": None,
            "rtuovertcp": lambda s: s.start_tcp("127.0.0.1", 0, framer="rtu"),
            "udp": lambda s: s.start_udp("127.0.0.1", 0),
            "serial": lambda s: s.start_serial(device_end, baudrate=19200),
        }[transport]
        server = serve(units, start, latency_s=0.002)
        try:
            bus = {"tcp": f"127.0.0.1:{server.port}", "rtuovertcp": f"rtuovertcp:127.0.0.1:{server.port}",
                   "udp": f"udp:127.0.0.1:{server.port}", "serial": poller_end}[transport]
            extra = ["--baudrate", "19200"] if transport == "serial" else []
            out = emm(["scan", bus, "--units", "1-4", "--timeout", "0.3", "--json", *extra], postgres.env(database))
        finally:
            server.close()
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {f["unit"]: f["label"] for f in report["found"]} == {2: "scan_alpha", 3: "scan_beta"}
    assert server.server.stats.max_in_flight == 1
    if transport == "serial":
        assert report["inserts"][0] == (
            "INSERT INTO energy_meters (host, slave_address, type, description, transport, baudrate, parity, "
            f"stopbits, bytesize) VALUES ('{poller_end}', 2, 'scan_alpha', 'scan_alpha at unit 2 (found by emm "
            "scan)', 'serial', 19200, 'N', 1, 8) ON CONFLICT DO NOTHING;")
    else:
        assert report["inserts"][0] == (
            "INSERT INTO energy_meters (host, port, slave_address, type, description, transport) VALUES "
            f"('127.0.0.1', {server.port}, 2, 'scan_alpha', 'scan_alpha at unit 2 (found by emm scan)', "
            f"'{transport}') ON CONFLICT DO NOTHING;")


def test_nobody_answering_exits_1_and_a_dead_bus_is_one_line(postgres, database, families):
    server = serve({}, on_request=silent_except(set()))
    try:
        out = emm(["scan", f"127.0.0.1:{server.port}", "--units", "1-3", "--timeout", "0.05"], postgres.env(database))
    finally:
        server.close()
    assert out.returncode == 1
    assert out.stdout.startswith(f"scan 127.0.0.1:{server.port}, unit ids 1-3: 0 answered (3 of 3 unit ids")
    dead = emm(["scan", f"127.0.0.1:{server.port}", "--units", "1-3"], postgres.env(database))
    assert dead.returncode == 1 and dead.stdout == ""
    assert dead.stderr.endswith(f"emm scan: cannot connect to 127.0.0.1:{server.port}: connection refused\n")


def test_a_gateway_that_drops_the_connection_for_absent_units_finds_the_present_one(postgres, database, families):
    """Broken replies (here: the connection closed instead of a reply) are no device, and said once."""
    server = serve({2: families("scan_beta")}, on_request=lambda unit, *_: None if unit == 2 else DROP)
    try:
        out = emm(["scan", f"127.0.0.1:{server.port}", "--units", "1-4", "--timeout", "0.3"], postgres.env(database))
    finally:
        server.close()
    assert out.returncode == 0, out.stderr
    assert re.search(r"^2 +scan_beta ", out.stdout, re.M)
    assert "1 answered" in out.stdout.splitlines()[0]
    assert "broken replies, not counted as devices, from unit ids 1, 3-4 (e.g. 127.0.0.1:" in out.stdout
    assert "connection closed by the device" in out.stdout


@pytest.mark.parametrize("units, says", [
    ("0-10", "unit id 0 is the broadcast address"),
    ("5-1", "runs backwards"),
    ("1-300", "unit ids go up to 255"),
    ("a-b", "is not a unit id or a range"),
])
def test_bad_units_exit_2_with_one_line(units, says):
    out = subprocess.run([sys.executable, "-m", "poller.onboard", "scan", "127.0.0.1", "--units", units],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1 and says in out.stderr, out.stderr


def test_the_bar_is_drawn_when_stderr_is_a_terminal(postgres, database, families):
    """No --progress: a terminal gets the bar, a pipe gets lines (test above)."""
    server = serve({1: families("scan_alpha")}, on_request=silent_except({1}))
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "poller.onboard", "--env-file", "/nonexistent", "scan",
                                 f"127.0.0.1:{server.port}", "--units", "1-3", "--timeout", "0.05"],
                                cwd=ROOT, env=project_env(postgres.env(database)), stdout=subprocess.PIPE,
                                stderr=follower)
        os.close(follower)
        stdout, _ = proc.communicate(timeout=60)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
        server.close()
    assert proc.returncode == 0
    assert b"\rscan [" in seen and b"3/3" in seen and b"scanned 3/3" not in seen, seen


def test_scan_names_the_library_families_served_by_the_simulator(postgres, database, tmp_path):
    """The maps of db/maps with their own signatures, loaded with `emm maps load --all`, and served by
    `python -m virtual_server` (which serves each type's signature registers too); unit 5 is the
    simulator's own virtual_meter, which no library signature claims."""
    loaded = emm(["maps", "load", "--all"], postgres.env(database))
    assert loaded.returncode == 0, loaded.stderr
    served = {1: "eastron_sdm630", 2: "sma_sunny_tripower", 3: "huawei_sun2000", 4: "carlo_gavazzi_em340"}
    port = free_port()
    proc = start_module("virtual_server", ["--port", str(port), "--strict", "--frozen", "--seed", "1",
                                           *(f"--unit={u}={t}" for u, t in served.items())],
                        postgres.env(database), tmp_path / "simulator.log")
    try:
        wait_for_port(port, proc=proc)
        out = emm(["scan", f"127.0.0.1:{port}", "--units", "1-5", "--json"], postgres.env(database))
    finally:
        stop_process(proc)
    assert out.returncode == 0, out.stderr
    assert {f["unit"]: f["label"] for f in json.loads(out.stdout)["found"]} == {**served, 5: "unknown"}


def test_the_in_flight_measure_sees_two_scanners_at_once(families):
    """The instrument of the tests above: two scans of one gateway at the same time show as two in flight."""
    import asyncio

    from poller.onboard.scan import scan
    from poller.onboard.signatures import signatures_by_type
    from poller.onboard.wire import Reader

    server = serve({1: families("scan_alpha"), 2: families("scan_beta")}, latency_s=0.005)
    quiet = ProgressDisplay(2, "none")

    async def two_at_once() -> None:
        address = BusAddress(Transport.TCP, "127.0.0.1", server.port)
        async with Reader(address, 0.5) as one, Reader(address, 0.5) as other:
            await asyncio.gather(scan(one, (1, 2), signatures_by_type([]), quiet),
                                 scan(other, (1, 2), signatures_by_type([]), quiet))

    try:
        asyncio.run(two_at_once())
    finally:
        server.close()
    assert server.server.stats.max_in_flight == 2


# --- the pieces, without processes -----------------------------------------------------------


def test_parse_units():
    assert parse_units("1-3, 7,5,3") == (1, 2, 3, 5, 7)
    assert parse_units("247") == (247,)
    assert len(parse_units("1-247")) == 247


def test_insert_statement_quotes_what_it_is_given():
    finding = UnitFinding(3, "0x0000", Identification(families=["o'brien_meter"]), complete=True)
    [(_, row)] = insert_rows(BusAddress(Transport.TCP, "gw.example", 1502), [finding])
    assert insert_statement(row) == (
        "INSERT INTO energy_meters (host, port, slave_address, type, description, transport) VALUES "
        "('gw.example', 1502, 3, 'o''brien_meter', 'o''brien_meter at unit 3 (found by emm scan)', 'tcp') "
        "ON CONFLICT DO NOTHING;")
    serial = BusAddress(Transport.SERIAL, "/dev/ttyUSB0", 0, SerialLine(9600, "E", 2, 8))
    [(_, row)] = insert_rows(serial, [finding])
    assert row["parity"] == "E" and row["stopbits"] == 2 and "port" not in row
    # ambiguous, unknown and half-identified units get no row
    unclear = [UnitFinding(4, "", Identification(families=["a", "b"]), complete=True),
               UnitFinding(5, "", Identification(), complete=True),
               UnitFinding(6, "", Identification(families=["a"]), complete=False)]
    assert insert_rows(serial, unclear) == []


def test_progress_lines_every_tenth_and_each_device():
    stream = io.StringIO()
    display = ProgressDisplay(20, "lines", stream)
    for unit in range(1, 21):
        if unit == 7:
            display.found(UnitFinding(7, "0x0000", Identification(families=["x"]), complete=True))
        display.update(unit, unit, int(unit >= 7))
    display.done()
    assert stream.getvalue().splitlines() == [
        "scanned 2/20 unit ids, 0 answered", "scanned 4/20 unit ids, 0 answered", "scanned 6/20 unit ids, 0 answered",
        "unit 7 answered: x", *(f"scanned {n}/20 unit ids, 1 answered" for n in range(8, 21, 2))]


def test_progress_none_prints_nothing():
    stream = io.StringIO()
    display = ProgressDisplay(5, "none", stream)
    display.found(UnitFinding(1, "", complete=True))
    display.update(5, 5, 1)
    display.done()
    assert stream.getvalue() == ""
