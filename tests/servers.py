"""Real servers for the tests: a throwaway PostgreSQL cluster, VictoriaMetrics
(an InfluxDB v2 write API that can be read back), and the project's own
processes started exactly as an operator starts them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def find_pg_bin(debian_root: Path = Path("/usr/lib/postgresql")) -> Path:
    """The server programs (initdb, pg_ctl) of the newest PostgreSQL installed.

    Debian keeps each major version apart, /usr/lib/postgresql/<major>/bin, and its
    `postgresql` package (scripts/test) brings whichever major is current; elsewhere
    they are on PATH or where `pg_config --bindir` says.
    """
    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(p) if p.isdigit() else -1 for p in bindir.parent.name.split("."))

    debian = [d for d in debian_root.glob("*/bin") if (d / "initdb").is_file() and (d / "pg_ctl").is_file()]
    if debian:
        return max(debian, key=version)
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    try:
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        bindir = ""
    if bindir and (Path(bindir) / "initdb").is_file():
        return Path(bindir)
    # not installed: the tests that need a cluster say so (postgres_cluster); the others still run
    return debian_root / "missing" / "bin"


PG_BIN = find_pg_bin()


def instance_pid(owner: str | None) -> int | None:
    """The process id in a poller instance's name (poller.lease.instance_name: host:pid:random)."""
    return None if owner is None else int(owner.split(":")[-2])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@dataclass
class Postgres:
    """A private PostgreSQL cluster on a free loopback port, password auth over TCP."""

    datadir: Path
    port: int
    user: str = "emm_test"
    password: str = "test-only-password"

    def env(self, dbname: str) -> dict[str, str]:
        return {
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_DB": dbname,
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
        }

    def psql(self, dbname: str, *args: str, input: str | None = None, check: bool = True,
             user: str | None = None, password: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PGPASSWORD": password or self.password}
        return subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", user or self.user, "-d", dbname, *args],
            input=input, env=env, capture_output=True, text=True, check=check, timeout=60)

    def create_database(self, name: str, init: bool = True) -> None:
        self.psql("postgres", "-c", f'CREATE DATABASE "{name}"')
        if init:
            self.psql(name, "-f", str(ROOT / "db" / "init.sql"))

    def drop_database(self, name: str) -> None:
        self.psql("postgres", "-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def connect(self, dbname: str):  # type: ignore[no-untyped-def]
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, dbname=dbname,
                                user=self.user, password=self.password)

    def reader_login(self, dbname: str, name: str, password: str) -> dict[str, str]:
        """A login made as db/10-poller-role.sh makes the poller's: a member of emm_reader,
        read-only by default; the POSTGRES_USER/PASSWORD settings that log in with it."""
        self.psql(dbname, "-c", f"""
            DO $$ BEGIN
                IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN CREATE ROLE {name} LOGIN; END IF;
            END $$;
            ALTER ROLE {name} LOGIN PASSWORD '{password}';
            GRANT emm_reader TO {name};
            ALTER ROLE {name} SET default_transaction_read_only = on;""")
        return {"POSTGRES_USER": name, "POSTGRES_PASSWORD": password}

    def lease_owners(self, dbname: str) -> dict[str, str | None]:
        """bus_leases (POLL_COORDINATION=postgres): bus -> the instance whose lease on it is still
        valid (None: expired or given back)."""
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT bus, CASE WHEN expires_at > now() THEN owner END FROM bus_leases")
                return dict(cur.fetchall())
        finally:
            conn.close()

    def configuration(self, dbname: str):  # type: ignore[no-untyped-def]
        """The configuration as the poller loads it from this database."""
        from poller.store import load_configuration

        conn = self.connect(dbname)
        try:
            return load_configuration(conn)
        finally:
            conn.close()

    def stop(self) -> None:
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-m", "fast",
                                     "-w", "stop"]), capture_output=True, timeout=60)

    def start(self) -> None:
        out = subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", "60",
                                           "-l", str(self.datadir / "server.log"), "start"]),
                             capture_output=True, text=True, timeout=90)
        if out.returncode != 0:
            log = (self.datadir / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pg_ctl start failed: {out.stderr}\n{log}")


@contextmanager
def postgres_cluster() -> Iterator[Postgres]:
    if not (PG_BIN / "initdb").is_file():
        raise RuntimeError("no PostgreSQL server programs (initdb) in /usr/lib/postgresql/*/bin, on PATH or at "
                           "`pg_config --bindir`: apt-get install postgresql (scripts/test does it as root)")
    base = Path(tempfile.mkdtemp(prefix="emm-pg-"))
    datadir = base / "data"
    pwfile = base / "pw"
    pg = Postgres(datadir=datadir, port=free_port())
    pwfile.write_text(pg.password + "\n")
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(pwfile, "postgres")
    try:
        subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(datadir), "-U", pg.user,
                                     f"--pwfile={pwfile}", "--auth-local=scram-sha-256",
                                     "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"]),
                       check=True, capture_output=True, timeout=120)
        with open(datadir / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {pg.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{base}'\nfsync = off\n"
                       "synchronous_commit = off\nfull_page_writes = off\n")
        pg.start()
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


class VictoriaMetrics:
    """VictoriaMetrics single-node: speaks the InfluxDB v2 write API on /api/v2/write."""

    extra_args: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="emm-vm-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"INFLUXDB_URL": self.url, "INFLUXDB_TOKEN": "test-token", "INFLUXDB_ORG": "emm",
                "INFLUXDB_BUCKET": "energy"}

    def start(self) -> None:
        binary = shutil.which("victoria-metrics")
        if binary is None:
            raise RuntimeError("victoria-metrics is not installed (the README test command installs it)")
        self.proc = subprocess.Popen(
            [binary, f"-storageDataPath={self.dir}", f"-httpListenAddr=127.0.0.1:{self.port}",
             "-retentionPeriod=100y", "-loggerLevel=ERROR", "-search.disableCache", *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("victoria-metrics did not become healthy")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _export_now(self, match: str) -> list[dict[str, Any]]:
        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10).read()
        query = urllib.parse.urlencode({"match[]": match, "start": "0"})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=30) as r:
            return [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]

    def export(self, match: str = '{__name__=~".+"}', min_samples: int = 1,
               timeout: float = 15.0) -> list[dict[str, Any]]:
        """Stored series: [{"metric": {...}, "values": [...], "timestamps": [...]}].

        Freshly written points become searchable after a moment: wait until at
        least `min_samples` samples are there, then until two reads a second
        apart agree, so a late duplicate would still be seen.
        """
        deadline = time.monotonic() + timeout
        series = self._export_now(match)
        while sum(len(s["values"]) for s in series) < min_samples and time.monotonic() < deadline:
            time.sleep(0.2)
            series = self._export_now(match)
        while time.monotonic() < deadline:
            time.sleep(1.0)
            again = self._export_now(match)
            if _canonical(again) == _canonical(series):
                break
            series = again
        return series


def _canonical(series: list[dict[str, Any]]) -> list[str]:
    """Series in a fixed order (VictoriaMetrics returns them in any order)."""
    return sorted(json.dumps(s, sort_keys=True) for s in series)


def project_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment a project process gets: no inherited settings, no .dev.env."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("POSTGRES_", "INFLUXDB_", "POLL_"))}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    # a spool of its own, so no reading of another test or run is ever replayed here
    env.setdefault("POLL_SPOOL_DIR", tempfile.mkdtemp(prefix="spool-", dir=_scratch()))
    env.setdefault("POLL_HTTP_PORT", "0")  # tests that want /healthz give a port
    return env


_SCRATCH: list[str] = []


def _scratch() -> str:
    """One temporary directory for this test session, removed when it ends."""
    if not _SCRATCH:
        import atexit

        _SCRATCH.append(tempfile.mkdtemp(prefix="emm-tests-"))
        atexit.register(shutil.rmtree, _SCRATCH[0], True)
    return _SCRATCH[0]


def scraped(port: int, name: str) -> float | None:
    """The value of an unlabelled series on a poller's /metrics (None: not exported)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        found = re.search(rf"^{re.escape(name)} (\S+)$", answer.read().decode(), re.M)
    return None if found is None else float(found[1])


_STARTED: list[subprocess.Popen[bytes]] = []
_KILL_AT_EXIT: list[bool] = []  # registered once


def _kill_leftovers() -> None:
    """At the end of the session, any process a test started and left running (a test that failed
    before its own stop) is killed: a poller left behind polls on, for ever, under init."""
    for proc in _STARTED:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_module(module: str, args: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m <module> ...` as the containers run it; no .dev.env unless the test gives one."""
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", module, "--env-file", "/nonexistent", *args],
                            cwd=ROOT, env=project_env(env), stdout=log, stderr=subprocess.STDOUT)
    if not _KILL_AT_EXIT:
        import atexit

        atexit.register(_kill_leftovers)
        _KILL_AT_EXIT.append(True)
    _STARTED[:] = [p for p in _STARTED if p.poll() is None] + [proc]
    return proc


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class ModbusServerThread:
    """The project's Modbus TCP server in a background event loop, for tests that
    need a device the CLI does not offer (no default unit, refused registers,
    NaN values) while the poller runs as its own process."""

    def __init__(self, server: Any, start: Callable[[Any], Coroutine[Any, Any, Any]] | None = None) -> None:
        """`start(server)` serves another wire (e.g. `lambda s: s.start_serial(path)`); the
        default is Modbus TCP on a free loopback port, kept in `port`."""
        import asyncio
        import threading

        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        starting = start(server) if start is not None else server.start("127.0.0.1", 0)
        self.port = asyncio.run_coroutine_threadsafe(starting, self.loop).result(10)

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class GarbageServer:
    """Answers every request with random bytes: a broken gateway or the wrong service on the port."""

    def __init__(self, seed: int = 0) -> None:
        import random

        self.rng = random.Random(seed)
        self._server: Any = None

    async def _serve(self, reader: Any, writer: Any) -> None:
        try:
            while await reader.read(260):
                writer.write(bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(1, 40))))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        import asyncio

        self._server = await asyncio.start_server(self._serve, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self._server.close()


def _dockerignore_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore line as a regex over paths relative to the context root
    (Go filepath.Match per segment, `**` for any number of segments)."""
    pattern = pattern.strip().strip("/")
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + "$")


def docker_build_context(dest: Path) -> Path:
    """Copy what `docker build` with the repository root as context would send: the
    checked-out files minus what .dockerignore excludes (a path is out when it or one
    of its parent folders matches). No `!` exceptions: the file has none (asserted)."""
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "extend docker_build_context for '!' patterns"
    regexes = [_dockerignore_pattern(p) for p in patterns]
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        parts = rel.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        if any(rx.match(p) for rx in regexes for p in prefixes) or not (ROOT / rel).exists():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    return dest


class InfluxDB1:
    """Debian's InfluxDB 1.x (`influxd`) on free loopback ports in a temporary directory.

    Its `/write` is the strict line-protocol parser of the tests: it answers 204 only
    when every line parses, and 400 (`partial write` / `unable to parse`) otherwise,
    as InfluxDB 2 does. Usable as a context manager.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="emm-influxd-"))
        self.port = free_port()
        self.rpc_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> InfluxDB1:
        binary = shutil.which("influxd") or "/usr/bin/influxd"
        if not os.access(binary, os.X_OK):
            raise RuntimeError("influxd is not installed (Debian's influxdb package)")
        conf = self.dir / "influxdb.conf"
        conf.write_text(f"""reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{self.dir}/meta"
[data]
  dir = "{self.dir}/data"
  wal-dir = "{self.dir}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
  max-body-size = 0
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
""")
        self.proc = subprocess.Popen([binary, "-config", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "influxd.log", "wb"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"influxd exited with {self.proc.returncode}: "
                                   f"{(self.dir / 'influxd.log').read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as r:
                    if r.status == 204:
                        return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("influxd did not answer /ping")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> InfluxDB1:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, path: str, params: Mapping[str, str], body: bytes = b"") -> tuple[int, bytes]:
        req = urllib.request.Request(f"{self.url}{path}?{urllib.parse.urlencode(params)}", data=body,
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def create_database(self, db: str) -> None:
        status, body = self._post("/query", {"q": f'CREATE DATABASE "{db}"'})
        assert status == 200 and b'"error"' not in body, body

    def drop_database(self, db: str) -> None:
        status, body = self._post("/query", {"q": f'DROP DATABASE "{db}"'})
        assert status == 200 and b'"error"' not in body, body

    def write(self, db: str, body: bytes | str, precision: str = "ms") -> tuple[int, str]:
        """POST /write: (HTTP status, response body); 204 when every line was accepted."""
        data = body.encode() if isinstance(body, str) else body
        status, answer = self._post("/write", {"db": db, "precision": precision}, data)
        return status, answer.decode("utf-8", "replace")

    def query(self, db: str, q: str) -> list[dict[str, Any]]:
        """One InfluxQL statement: its series ([{"name", "tags", "columns", "values"}]), times in ms."""
        status, body = self._post("/query", {"db": db, "q": q, "epoch": "ms"})
        out = json.loads(body)
        assert status == 200, out
        result = out["results"][0]
        assert "error" not in result, f"{q!r}: {result['error']}"
        return list(result.get("series", []))


class HttpThread:
    """A ThreadingHTTPServer with `handler` on a free loopback port, serving from a daemon thread
    (the scripted InfluxDB stand-ins of the tests); `poll_s`: how soon close() is noticed."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], poll_s: float = 0.5) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(poll_s,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


class InfluxV2Bridge:
    """The InfluxDB v2 write API in front of an InfluxDB1: `POST /api/v2/write?org=&bucket=&precision=`
    is forwarded to 1.x's `/write?db=<bucket>&precision=` and 1.x's status and body are returned,
    so the poller (its v2 API client, poller/sink.py) writes through the strict 1.x parser. `GET /health`
    and `GET /ping` answer as InfluxDB 2 does. `requests` counts the writes forwarded."""

    def __init__(self, influx: InfluxDB1) -> None:
        import gzip

        self.influx = influx
        self.requests = 0
        bridge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
                pass

            def _answer(self, status: int, body: bytes = b"", ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                path = urllib.parse.urlsplit(self.path).path
                if path == "/health":
                    self._answer(200, json.dumps({"name": "influxdb", "status": "pass"}).encode())
                elif path == "/ping":
                    self._answer(204)
                else:
                    self._answer(404, b'{"code":"not found","message":"path not found"}')

            def do_POST(self) -> None:  # noqa: N802
                url = urllib.parse.urlsplit(self.path)
                params = dict(urllib.parse.parse_qsl(url.query))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if url.path != "/api/v2/write":
                    self._answer(404, b'{"code":"not found","message":"path not found"}')
                    return
                if not params.get("bucket"):
                    self._answer(400, b'{"code":"invalid","message":"bucket not specified"}')
                    return
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    body = gzip.decompress(body)
                bridge.requests += 1
                status, answer = bridge.influx.write(params["bucket"], body, params.get("precision", "ns"))
                self._answer(status, answer.encode())

        self._http = HttpThread(Handler)
        self.port = self._http.port
        self.url = self._http.url

    def env(self, bucket: str) -> dict[str, str]:
        """The poller's INFLUXDB_* settings for writing into database `bucket` through the bridge."""
        return {"INFLUXDB_URL": self.url, "INFLUXDB_TOKEN": "bridge-token", "INFLUXDB_ORG": "emm",
                "INFLUXDB_BUCKET": bucket}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> InfluxV2Bridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Serial lines: socat pty pairs


class PtyPair:
    """Two ptys joined by socat: a serial line with `device` at one end and `poller` at the other."""

    def __init__(self, directory: Path, name: str = "line") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.device = str(directory / f"{name}-device")
        self.poller = str(directory / f"{name}-poller")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PtyPair:
        for link in (self.device, self.poller):  # left by a socat that was killed
            if os.path.lexists(link):
                os.unlink(link)
        socat = shutil.which("socat")
        assert socat, "socat is missing (scripts/test installs it)"
        self.proc = subprocess.Popen([socat, f"pty,raw,echo=0,link={self.device}",
                                      f"pty,raw,echo=0,link={self.poller}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not (os.path.exists(self.device) and os.path.exists(self.poller)):
            if self.proc.poll() is not None:
                said = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise AssertionError(f"socat ended: {said}")
            assert time.monotonic() < deadline, "socat made no pty pair within 10 s"
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None


@contextmanager
def pty_pairs(directory: Path, n: int = 1) -> Iterator[list[PtyPair]]:
    with ExitStack() as stack:
        pairs = []
        for i in range(n):
            pair = PtyPair(directory, f"line{i}").start()
            stack.callback(pair.stop)
            pairs.append(pair)
        yield pairs


@contextmanager
def pty_pair(where: Path) -> Iterator[tuple[str, str]]:
    """One serial line: (the device's end, the poller's end)."""
    with pty_pairs(where) as (pair,):
        yield pair.device, pair.poller
