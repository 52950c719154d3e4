"""Grafana provisioning and dashboards, against a real InfluxQL engine.

Every panel's InfluxQL query, with Grafana's macros and template variables
substituted as Grafana would, runs on InfluxDB 1.6 (Debian's influxd) loaded with
the points `python -m poller --once --dry-run` printed while reading the simulator
(two meters: the seed meter and a second one at unit 2). Each panel must return
the series it is meant to show. Grafana itself is not available here: its files
are checked structurally (YAML parses, datasource uids resolve).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml

from tests.servers import InfluxDB1, docker_build_context, find_pg_bin

ROOT = Path(__file__).resolve().parents[1]
PROVISIONING = ROOT / "grafana" / "provisioning"
DASHBOARDS = ROOT / "grafana" / "dashboards"
PG_BIN = find_pg_bin()  # the newest installed (a text sort would put 9.6 after 15)
METERS = {"1", "2"}  # the seed meter, and a second one added below (unit 2 of the simulator)
FROM_MS = 0  # set by the influx fixture: the time range the panels are queried over
TO_MS = 0


def read_env_file(path: Path = ROOT / ".dev.env") -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m:
            env[m.group(1)] = m.group(2)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{what} is not listening on 127.0.0.1:{port} after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- services


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, str]]:
    """A private PostgreSQL cluster with db/init.sql and db/10-poller-role.sh loaded."""
    assert (PG_BIN / "initdb").is_file(), "PostgreSQL server binaries missing: apt-get install postgresql"
    env = read_env_file()
    state = Path(tempfile.mkdtemp(prefix="emm-pg-"))
    as_pg: list[str] = []
    if os.geteuid() == 0:
        as_pg = ["runuser", "-u", "postgres", "--"]
        os.chmod(state, 0o755)
    data = state / "data"
    data.mkdir()
    pwfile = state / "pw"
    pwfile.write_text(env["POSTGRES_PASSWORD"] + "\n")
    if as_pg:
        shutil.chown(data, "postgres")
        shutil.chown(pwfile, "postgres")
    port = free_port()
    subprocess.run([*as_pg, str(PG_BIN / "initdb"), "-D", str(data), "-U", env["POSTGRES_USER"],
                    f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
                   check=True, capture_output=True)
    subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-t", "30",
                    "-l", str(data / "server.log"), "-o",
                    f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories=''",
                    "start"], check=True, capture_output=True)
    try:
        admin = {"PGHOST": "127.0.0.1", "PGPORT": str(port), "PGPASSWORD": env["POSTGRES_PASSWORD"]}
        psql = [str(PG_BIN / "psql"), "-v", "ON_ERROR_STOP=1", "-qX", "-U", env["POSTGRES_USER"]]
        penv = {**os.environ, **env, **admin, "PATH": f"{PG_BIN}:{os.environ['PATH']}"}
        subprocess.run([*psql, "-d", "postgres", "-c", f'CREATE DATABASE "{env["POSTGRES_DB"]}"'],
                       env=penv, check=True, capture_output=True)
        subprocess.run([*psql, "-d", env["POSTGRES_DB"], "-f", str(ROOT / "db" / "init.sql")],
                       env=penv, check=True, capture_output=True)
        subprocess.run([str(ROOT / "db" / "10-poller-role.sh")], env=penv, check=True, capture_output=True)
        yield {**env, "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(port)}
    finally:
        subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


def admin_connect(pg: dict[str, str]):
    return psycopg2.connect(host=pg["POSTGRES_HOST"], port=pg["POSTGRES_PORT"], dbname=pg["POSTGRES_DB"],
                            user=pg["POSTGRES_USER"], password=pg["POSTGRES_PASSWORD"])


@pytest.fixture(scope="module")
def units(postgres: dict[str, str]) -> dict[str, str]:
    """measurement -> data_unit ('' when NULL) of the virtual meter's registers."""
    with admin_connect(postgres) as conn, conn.cursor() as cur:
        cur.execute("SELECT measurement_name, coalesce(data_unit, '') FROM registers WHERE type = 'virtual_meter'")
        return dict(cur.fetchall())


@pytest.fixture(scope="module")
def image_context() -> Iterator[Path]:
    """The files the service images are built from (.dockerignore applied): the services
    below run from there, as in their containers (WORKDIR /app = the build context)."""
    base = Path(tempfile.mkdtemp(prefix="emm-context-"))
    yield docker_build_context(base)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def line_protocol(postgres: dict[str, str], image_context: Path) -> list[str]:
    """What the poller printed in three dry-run cycles against the simulator, both
    started with their containers' command, from the image's build context, with
    .dev.env as their environment (compose's env_file) and no .dev.env file."""
    sim_port = free_port()
    with admin_connect(postgres) as conn, conn.cursor() as cur:
        cur.execute("UPDATE energy_meters SET host = '127.0.0.1', port = %s WHERE host = 'virtual_modbustcp_server'",
                    (sim_port,))
        assert cur.rowcount == 1, "the seed meter (host virtual_modbustcp_server) is missing from db/init.sql"
        cur.execute("INSERT INTO energy_meters (host, port, slave_address, type, description) "
                    "VALUES ('127.0.0.1', %s, 2, 'virtual_meter', 'Second meter')", (sim_port,))
    env = {**os.environ, **postgres, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    assert not (image_context / ".dev.env").exists()
    sim = subprocess.Popen([str(image_context / "scripts" / "service-env"), "python", "-m", "virtual_server",
                            "--host", "127.0.0.1", "--port", str(sim_port), "--seed", "7"],
                           cwd=image_context, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(sim_port, sim, "the simulator")
        lines: list[str] = []
        for cycle in range(3):
            if cycle == 1:
                # cross a 10 s boundary, so that GROUP BY time(10s) sees two intervals
                time.sleep(10.1 - time.time() % 10)
            elif cycle:
                time.sleep(1.1)
            run = subprocess.run([str(image_context / "scripts" / "service-env"), "python", "-m", "poller",
                                  "--once", "--dry-run"], cwd=image_context, env=env, capture_output=True,
                                 text=True, timeout=60)
            assert run.returncode == 0, run.stderr
            lines += [ln for ln in run.stdout.splitlines() if ln.strip()]
    finally:
        stop(sim)
    assert lines, "the poller printed no line protocol"
    return lines


def status_lines(readings: list[str]) -> list[str]:
    """The poller_status points the poller writes for the cycles that printed these readings
    (`--dry-run` prints the readings only), built by the real code: poller.sink's
    SeriesKeys.status_line for a cycle.MeterResult of each meter and cycle. The meter is the
    one the readings name (their tags, written by the same sink code)."""
    from poller.cycle import MeterResult
    from poller.model import DeviceType, Meter
    from poller.sink import SeriesKeys

    if any(ln.startswith("poller_status,") for ln in readings):
        return []
    by_meter: dict[Meter, list[int]] = {}
    for ln in readings:
        tags = {k: re.sub(r"\\(.)", r"\1", v) for k, v in re.findall(r",(\w+)=((?:\\.|[^,\\ ])*)", ln)}
        meter = Meter(id=int(tags["meter"]), host=tags["host"], port=502, slave_address=int(tags["slave_address"]),
                      device_type=DeviceType(tags["type"], ()), description=tags.get("description"))
        by_meter.setdefault(meter, []).append(int(ln.rpartition(" ")[2]))
    keys = SeriesKeys()
    out = []
    for meter, stamps in by_meter.items():
        stamps.sort()
        cycles = [[stamps[0]]]
        for ms in stamps[1:]:  # the dry runs are more than a second apart, one cycle's reads are not
            if ms - cycles[-1][-1] < 500:
                cycles[-1].append(ms)
            else:
                cycles.append([ms])
        for cycle in cycles:
            result = MeterResult(meter, readings=len(cycle), requests=2, errors=0, duration_s=0.004,
                                 time_ms=cycle[0])
            out.append(keys.status_line(meter, result))
    return sorted(out)


@pytest.fixture(scope="module")
def influx(line_protocol: list[str]) -> Iterator[Callable[[str], list[dict[str, Any]]]]:
    """influxd 1.6 loaded with the poller's points; yields query(q) -> series."""
    global FROM_MS, TO_MS
    db = read_env_file()["INFLUXDB_BUCKET"]  # InfluxDB 2's virtual DBRP: database = bucket
    with InfluxDB1() as server:
        server.create_database(db)
        points = line_protocol + status_lines(line_protocol)
        status, answer = server.write(db, "\n".join(points))  # the poller writes with millisecond precision
        assert status == 204, answer
        stamps = [int(ln.rpartition(" ")[2]) for ln in points]
        FROM_MS, TO_MS = min(stamps) - 60_000, max(stamps) + 60_000
        yield lambda q: server.query(db, q)


# --------------------------------------------------------------------------- Grafana's rendering


def regex_escape(value: str) -> str:
    # Grafana escapes a variable's value in a regex like JavaScript's escapeRegExp
    return re.sub(r"[\\^$*+?.()|{}\[\]/]", lambda m: "\\" + m.group(0), value)


def render(query: str, variables: dict[str, str]) -> str:
    """The query as Grafana sends it (dashboard time range, $__interval = datasource's timeInterval)."""
    q = query.replace("$timeFilter", f"time >= {FROM_MS}ms and time <= {TO_MS}ms")
    q = q.replace("$__interval", "10s").replace("$interval", "10s")
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        q = q.replace("${" + name + "}", regex_escape(value)).replace("$" + name, regex_escape(value))
    leftover = re.findall(r"\$\{?[A-Za-z_]\w*", q)
    assert not leftover, f"unsubstituted {leftover} in {q!r}"
    return q


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def load_dashboards() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        dash = json.loads(path.read_text())
        assert dash["uid"] not in out, f"uid {dash['uid']} twice"
        out[dash["uid"]] = dash
    return out


def tag(series: dict[str, Any], key: str) -> str:
    return series.get("tags", {}).get(key, "")


def values(series: dict[str, Any]) -> list[float]:
    return [v for row in series["values"] for v in row[1:] if v is not None]


# --------------------------------------------------------------------------- structure


def test_provisioning_parses_and_uids_resolve() -> None:
    ds_files = sorted((PROVISIONING / "datasources").glob("*.y*ml"))
    assert ds_files, "no datasource provisioning file"
    datasources = [d for f in ds_files for d in yaml.safe_load(f.read_text())["datasources"]]
    uids = {d["uid"] for d in datasources}
    influx_ds = [d for d in datasources if d["type"] == "influxdb"]
    assert len(influx_ds) == 1
    ds = influx_ds[0]
    assert ds["jsonData"]["version"] == "InfluxQL"
    assert ds["jsonData"]["dbName"] == "$INFLUXDB_BUCKET"
    assert ds["url"] == "$INFLUXDB_URL"
    assert ds["jsonData"]["httpHeaderName1"] == "Authorization"
    assert ds["secureJsonData"]["httpHeaderValue1"].startswith("Token $__file{")  # which file: test_compose.py

    providers = [p for f in sorted((PROVISIONING / "dashboards").glob("*.y*ml"))
                 for p in yaml.safe_load(f.read_text())["providers"]]
    assert [p["type"] for p in providers] == ["file"]

    dashboards = load_dashboards()
    assert {"emm-overview", "emm-meter"} <= set(dashboards)
    for uid, dash in dashboards.items():
        for var in dash["templating"]["list"]:
            assert var["datasource"]["uid"] in uids, f"{uid}: variable {var['name']}"
        for panel in panels(dash):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in uids, f"{uid}: panel {panel['title']!r}"
            assert panel["targets"], f"{uid}: panel {panel['title']!r} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] in uids, f"{uid}: panel {panel['title']!r}"
                assert target["rawQuery"] is True and target["query"].strip()


def test_units_come_through(units: dict[str, str]) -> None:
    """Panels of one known measurement carry its Grafana unit; tables group by the unit tag."""
    grafana_unit = {"W": "watt", "Wh": "watth", "V": "volt", "A": "amp", "Hz": "hertz", "°C": "celsius"}
    checked = 0
    for dash in load_dashboards().values():
        for panel in panels(dash):
            for target in panel.get("targets", []):
                m = re.search(r'FROM "(\w+)"', target["query"])
                if m and m.group(1) in units:
                    assert panel["fieldConfig"]["defaults"]["unit"] == grafana_unit[units[m.group(1)]], panel["title"]
                    checked += 1
                elif "FROM /" in target["query"]:
                    assert '"unit"' in target["query"], f"{panel['title']!r} loses the unit tag"
                    checked += 1
    assert checked >= 5


# --------------------------------------------------------------------------- queries


def test_poller_points_are_accepted(influx, line_protocol: list[str], units: dict[str, str]) -> None:
    series = influx('SELECT count("value") FROM /.*/ GROUP BY "meter"')
    got = {(s["name"], tag(s, "meter")): values(s)[0] for s in series}
    expected = {(m, meter) for m in units for meter in METERS}
    assert set(got) == expected
    assert set(got.values()) == {3}, "three cycles -> three points per series"


def test_variables(influx, units: dict[str, str]) -> None:
    dash = load_dashboards()["emm-meter"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert set(variables) == {"meter", "measurement"}
    meters = [row[1] for s in influx(render(variables["meter"]["query"], {})) for row in s["values"]]
    assert set(meters) == METERS
    for meter in METERS:
        q = render(variables["measurement"]["query"], {"meter": meter})
        names = [row[0] for s in influx(q) for row in s["values"]]
        pattern = variables["measurement"]["regex"].strip("/")
        shown = {n for n in names if re.search(pattern, n)}
        assert "poller_status" in names and shown == set(units), f"meter {meter}: {sorted(shown)}"


def expect_per_meter(meters: set[str], names: set[str] | None = None) -> Callable:
    def check(series: list[dict[str, Any]], units: dict[str, str]) -> None:
        assert {tag(s, "meter") for s in series} == meters
        if names is not None:
            assert {s["name"] for s in series} == names
        for s in series:
            assert values(s), f"{s['name']} {s.get('tags')}: no values"
    return check


def expect_latest(meters: set[str]) -> Callable:
    def check(series: list[dict[str, Any]], units: dict[str, str]) -> None:
        got = {(s["name"], tag(s, "meter")) for s in series}
        assert got == {(m, meter) for m in units for meter in meters}
        for s in series:
            assert tag(s, "unit") == units[s["name"]], s
            assert "description" in s["tags"]
            assert values(s)
    return check


def expect_nonnegative(meters: set[str], name: str) -> Callable:
    base = expect_per_meter(meters, {name})

    def check(series: list[dict[str, Any]], units: dict[str, str]) -> None:
        base(series, units)
        assert all(v >= 0 for s in series for v in values(s))
    return check


def expect_status_columns(meters: set[str], columns: set[str]) -> Callable:
    base = expect_per_meter(meters, {"poller_status"})

    def check(series: list[dict[str, Any]], units: dict[str, str]) -> None:
        base(series, units)
        assert all(columns <= set(s["columns"]) for s in series)
    return check


def expectations(meters: set[str]) -> dict[str, Callable]:
    """Panel title (template variables left as written) -> what its query must return."""
    per = "" if meters == METERS else " $meter"
    out = {
        "Meter reachable" + per: expect_per_meter(meters, {"poller_status"}),
        "Cycle duration per meter" + per: expect_per_meter(meters, {"poller_status"}),
        "Errors per meter" + per: expect_per_meter(meters, {"poller_status"}),
        "Requests and readings per cycle" + per: expect_status_columns(meters, {"requests", "readings"}),
    }
    if meters == METERS:
        out.update({
            "Latest reading of every meter": expect_latest(meters),
            "Active power per meter": expect_per_meter(meters, {"active_power"}),
            "Energy imported in the time range, per meter": expect_nonnegative(meters, "energy_import"),
            "Energy imported per interval, per meter": expect_nonnegative(meters, "energy_import"),
            "Energy meter reading per meter": expect_per_meter(meters, {"energy_import"}),
        })
    else:
        out["Latest readings of meter $meter"] = expect_latest(meters)
    return out


def test_overview_panels(influx, units: dict[str, str]) -> None:
    dash = load_dashboards()["emm-overview"]
    expected = expectations(METERS)
    seen = set()
    for panel in panels(dash):
        if panel["type"] == "row":
            continue
        assert panel["title"] in expected, f"no expectation for panel {panel['title']!r}: add one"
        series = [s for t in panel["targets"] for s in influx(render(t["query"], {}))]
        expected[panel["title"]](series, units)
        seen.add(panel["title"])
    assert seen == set(expected)


@pytest.mark.parametrize("meter", sorted(METERS))
def test_meter_detail_panels(influx, units: dict[str, str], meter: str) -> None:
    dash = load_dashboards()["emm-meter"]
    expected = expectations({meter})
    seen = set()
    for panel in panels(dash):
        if panel["type"] == "row":
            continue
        if panel.get("repeat") == "measurement":
            # Grafana repeats the panel once per selected measurement ("All" = every one)
            for name in units:
                series = [s for t in panel["targets"]
                          for s in influx(render(t["query"], {"meter": meter, "measurement": name}))]
                assert [s["name"] for s in series] == [name]
                assert tag(series[0], "unit") == units[name]
                assert values(series[0])
            seen.add(panel["title"])
            continue
        assert panel["title"] in expected, f"no expectation for panel {panel['title']!r}: add one"
        series = [s for t in panel["targets"] for s in influx(render(t["query"], {"meter": meter}))]
        expected[panel["title"]](series, units)
        seen.add(panel["title"])
    assert seen == set(expected) | {"$measurement"}


COORDINATION_TABLES = {"poller_instances", "bus_leases"}  # the poller's own (POLL_COORDINATION=postgres)


def test_reader_role_can_only_read(postgres: dict[str, str]) -> None:
    """db/10-poller-role.sh: the poller's login reads the configuration and can write nothing
    anywhere, even in a session that turned its read-only default off (issue 9 item 17), but
    its two coordination tables (issue 11: never a configuration table)."""

    def login(dbname: str = postgres["POSTGRES_DB"]):
        return psycopg2.connect(host=postgres["POSTGRES_HOST"], port=postgres["POSTGRES_PORT"], dbname=dbname,
                                user=postgres["POSTGRES_READER_USER"], password=postgres["POSTGRES_READER_PASSWORD"])

    with admin_connect(postgres) as admin, admin.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                    "AND table_type = 'BASE TABLE' ORDER BY 1")
        every_table = [row[0] for row in cur.fetchall()]
        tables = [t for t in every_table if t not in COORDINATION_TABLES]
        cur.execute("SELECT c.oid::regclass::text, a.attname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
                    "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND a.attnum = 1")
        first_column = dict(cur.fetchall())
        cur.execute("SELECT c.oid::regclass::text FROM pg_class c WHERE c.relkind = 'S' "
                    "AND c.relnamespace = 'public'::regnamespace")
        sequences = [row[0] for row in cur.fetchall()]
        cur.execute("SELECT datname FROM pg_database WHERE datallowconn AND datname <> current_database()")
        other_databases = [row[0] for row in cur.fetchall()]
    admin.close()
    assert {"energy_meters", "registers", "device_types", "config_version"} <= set(tables), tables
    assert COORDINATION_TABLES <= set(every_table), every_table
    assert other_databases, "expected the cluster's postgres and template1 databases"

    # running the script again changes nothing (it runs at every native start)
    pg_bin = {"PATH": f"{PG_BIN}:{os.environ['PATH']}"}
    again = subprocess.run([str(ROOT / "db" / "10-poller-role.sh")], capture_output=True, text=True,
                           env={**os.environ, **postgres, **pg_bin, "PGHOST": postgres["POSTGRES_HOST"],
                                "PGPORT": postgres["POSTGRES_PORT"], "PGPASSWORD": postgres["POSTGRES_PASSWORD"]})
    assert again.returncode == 0, again.stderr

    conn = login()
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM registers")
            assert cur.fetchone()[0] > 0
            for table in tables:  # every configuration table reads
                cur.execute(f"SELECT * FROM {table} LIMIT 1")
            # read-only by default ...
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                cur.execute("INSERT INTO device_types (name) VALUES ('x')")
            # ... and without anything to write into when a session turns that off
            cur.execute("SET default_transaction_read_only = off")
            attempts = [
                "CREATE TEMP TABLE t (i int)",
                "CREATE TABLE public.x (i int)",
                "CREATE TABLE pg_temp.x (i int)",
                "CREATE SCHEMA s",
                "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                "CREATE VIEW public.v AS SELECT 1",
                "CREATE EXTENSION pgcrypto",  # a trusted extension: needs CREATE on the database
                "SELECT lo_create(0)",
                "SELECT lo_creat(-1)",
                "SELECT lo_from_bytea(0, 'x')",
                "SELECT lo_import('/etc/hostname')",
                "SELECT lo_open(1, 131072)",
                "SELECT lo_put(1, 0, 'x')",
                "SELECT lowrite(0, 'x')",
                "SELECT pg_logical_emit_message(false, 'emm', 'x')",
                *(f"INSERT INTO {t} DEFAULT VALUES" for t in tables),
                *(f"UPDATE {t} SET {first_column[t]} = {first_column[t]}" for t in tables),
                *(f"DELETE FROM {t}" for t in tables),
                *(f"TRUNCATE {t}" for t in tables),
                *(f"SELECT * FROM {t} FOR UPDATE" for t in tables),
                *(f"SELECT nextval('{seq}')" for seq in sequences),
            ]
            for sql in attempts:
                with pytest.raises(psycopg2.Error) as refused:
                    cur.execute(sql)
                assert refused.value.pgcode == "42501", (sql, refused.value.pgcode, str(refused.value))
            # what the poller writes: its coordination rows, and nothing it could grow a table with
            cur.execute("INSERT INTO poller_instances (instance, expires_at) VALUES ('i', now())")
            cur.execute("INSERT INTO bus_leases (bus, owner, expires_at) VALUES ('tcp h:502', 'i', now())")
            cur.execute("UPDATE bus_leases SET epoch = epoch + 1")
            cur.execute("DELETE FROM bus_leases")
            cur.execute("DELETE FROM poller_instances")
            for table in sorted(COORDINATION_TABLES):
                with pytest.raises(psycopg2.Error) as refused:
                    cur.execute(f"TRUNCATE {table}")
                assert refused.value.pgcode == "42501", (table, str(refused.value))
            cur.execute("SELECT nspname FROM pg_namespace WHERE has_schema_privilege(nspname, 'CREATE')")
            assert cur.fetchall() == []
            cur.execute("SELECT datname FROM pg_database WHERE has_database_privilege(datname, 'CREATE') "
                        "OR has_database_privilege(datname, 'TEMPORARY')")
            assert cur.fetchall() == []
            cur.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user")
            assert cur.fetchone() == (False, False, False)
    finally:
        conn.close()
    # no other database to write into instead
    for dbname in other_databases:
        with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
            login(dbname).close()
