"""scripts/run-native: the stack without Docker shows the simulator's readings within one cycle.

Started as README.md says (scripts/run-native), with a fresh state directory:
a private PostgreSQL cluster, VictoriaMetrics (InfluxDB v2 write API), the simulator
and the poller; it prints every reading that arrives in the readings store. One run
per state directory (a second is refused), arguments checked before anything is
touched, the previous run's logs kept, and its addresses in <state>/env for a shell.
"""

from __future__ import annotations

import os
import re
import selectors
import shlex
import signal
import socket
import stat
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEED_MEASUREMENTS = {"voltage_l1", "voltage_l2", "voltage_l3", "current_l1", "current_l2", "current_l3",
                     "active_power", "frequency", "power_factor", "temperature", "reactive_power",
                     "energy_import"}
UNITS = {"voltage_l1": "V", "active_power": "W", "energy_import": "Wh", "frequency": "Hz", "temperature": "°C"}
READING = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}\s+meter\s+(\d+) (\S+):(\d+)\s+(\w+)\s+(-?[\d.]+) ?(\S*)$")


def cycle_seconds() -> int:
    """One POLL_CRON period (.dev.env: '* * * * * */10' = 10 s)."""
    cron = next(line.split("=", 1)[1] for line in (ROOT / ".dev.env").read_text().splitlines()
                if line.startswith("POLL_CRON="))
    m = re.fullmatch(r"\* \* \* \* \* \*/(\d+)", cron.strip())
    assert m, f"this test expects a seconds schedule in .dev.env, not {cron!r}"
    return int(m.group(1))


@pytest.fixture
def state_dir():
    base = Path(tempfile.mkdtemp(prefix="emm-native-"))
    os.chmod(base, 0o755)  # the postgres user must reach the cluster inside
    yield base / "state"
    subprocess.run(["rm", "-rf", str(base)], check=False)


def readings(lines: list[str]) -> dict[str, tuple[str, str, float, str]]:
    out = {}
    for line in lines:
        m = READING.match(line)
        if m:
            meter, host, unit_id, name, value, unit = m.groups()
            out[name] = (meter, host, float(value), unit)
    return out


def check_readings(lines: list[str]) -> None:
    got = readings(lines)
    assert set(got) == SEED_MEASUREMENTS, f"missing {SEED_MEASUREMENTS - set(got)} in:\n" + "\n".join(lines)
    for name, (meter, host, _value, unit) in got.items():
        assert (meter, host) == ("1", "127.0.0.1"), (name, meter, host)
        assert unit == UNITS.get(name, unit), (name, unit)
    assert 200 < got["voltage_l1"][2] < 260 and 45 < got["frequency"][2] < 65


def log_time(line: str) -> datetime:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def test_timed_run_shows_readings_within_one_cycle(state_dir: Path) -> None:
    budget = cycle_seconds() + 10  # start-up + the first tick + the 2 s read-back, with room to spare
    start = time.monotonic()
    run = subprocess.run([str(ROOT / "scripts" / "run-native"), "--seconds", str(budget),
                          "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    check_readings(run.stdout.splitlines())
    assert time.monotonic() - start < 60, "a newcomer sees it work in under a minute"
    assert "virtual_modbustcp_server:502 -> 127.0.0.1:" in run.stderr
    log = (state_dir / "logs" / "poller.log").read_text().splitlines()
    started = next(line for line in log if " INFO poller: polling " in line)
    first_cycle = next((line for line in log if " INFO poller: cycle: " in line), None)
    assert first_cycle is not None and "readings=12" in first_cycle, "\n".join(log)
    waited = (log_time(first_cycle) - log_time(started)).total_seconds()
    assert waited <= cycle_seconds() + 1, f"first cycle {waited:.1f} s after start:\n" + "\n".join(log)
    assert not (state_dir / "pg" / "postmaster.pid").exists(), "PostgreSQL left running"


class Running:
    """scripts/run-native until Ctrl-C, in its own session, its output collected line by line."""

    def __init__(self, state_dir: Path) -> None:
        self.proc = subprocess.Popen([str(ROOT / "scripts" / "run-native"), "--state-dir", str(state_dir)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.err: list[str] = []
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ, self.lines)  # type: ignore[arg-type]
        self._sel.register(self.proc.stderr, selectors.EVENT_READ, self.err)  # type: ignore[arg-type]

    def read_until(self, done, timeout: float) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done():
            for key, _ in self._sel.select(timeout=1):
                line = key.fileobj.readline()  # type: ignore[union-attr]
                if line:
                    key.data.append(line.rstrip("\n"))
            assert self.proc.poll() is None, "run-native stopped by itself:\n" + "\n".join(self.err)

    def all_readings(self, timeout: float) -> None:
        self.read_until(lambda: len(readings(self.lines)) >= len(SEED_MEASUREMENTS), timeout)
        check_readings(self.lines)

    def ctrl_c(self) -> int:
        try:
            os.killpg(self.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
            self.proc.wait(30)
        finally:
            self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def test_ctrl_c_stops_everything(state_dir: Path) -> None:
    run = Running(state_dir)
    try:
        run.all_readings(cycle_seconds() + 20)
        ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", "\n".join(run.err))]
        assert len(set(ports)) >= 3, run.err  # PostgreSQL, VictoriaMetrics, the simulator
        returncode = run.ctrl_c()
    finally:
        run.kill()
    assert returncode in (130, 0, 1), returncode
    assert not (state_dir / "pg" / "postmaster.pid").exists(), "PostgreSQL left running"
    for port in set(ports):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    leftovers = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(state_dir).encode() in cmdline.read_bytes():
                leftovers.append(cmdline.parent.name)
        except OSError:
            pass
    assert not leftovers, f"processes left behind: {leftovers}"


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every path under root with its mode, mtime and content (files)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, path.read_bytes() if path.is_file() else b"")
    return out


def previous_run(state_dir: Path) -> None:
    """What an earlier run left behind (the layout run-native makes)."""
    (state_dir / "logs").mkdir(parents=True)
    (state_dir / "pg").mkdir()
    (state_dir / ".emm-native").touch()
    (state_dir / "logs" / "poller.log").write_text("the previous run's poller log\n")
    (state_dir / "pg" / "PG_VERSION").write_text("15\n")


@pytest.mark.parametrize("args", [["--seconds", "abc"], ["--seconds", "-5"], ["--seconds", "1.5"], ["--seconds"],
                                  ["--seconds="], ["--seconds", "10", "--bogus"], ["--state-dir"]],
                         ids=["abc", "negative", "fraction", "missing", "empty", "unknown-option", "no-dir"])
def test_bad_arguments_touch_nothing(state_dir: Path, args: list[str]) -> None:
    previous_run(state_dir)
    before = snapshot(state_dir)
    run = subprocess.run([str(ROOT / "scripts" / "run-native"), "--state-dir", str(state_dir), *args],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "run-native: " in run.stderr and "see --help" in run.stderr, run.stderr
    assert snapshot(state_dir) == before


def clean_env() -> dict[str, str]:
    """A shell's environment without any of the project's settings (no .dev.env exported)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("POSTGRES_", "INFLUXDB_", "POLL_", "PG", "DOCKER_INFLUXDB_", "GF_"))}


def test_one_run_per_state_dir_and_the_previous_logs_are_kept(state_dir: Path) -> None:
    previous_run(state_dir)
    first = Running(state_dir)
    try:
        first.all_readings(cycle_seconds() + 20)
        assert (state_dir / "logs.previous" / "poller.log").read_text() == "the previous run's poller log\n"

        # <state>/env: this run's addresses, for a shell; no password; only its owner reads it
        env_file = state_dir / "env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert "PASSWORD" not in env_file.read_text() and "TOKEN" not in env_file.read_text()
        # --check as the README says, from a shell without .dev.env exported; scripts/service-env
        # reads .dev.env itself and logs in as the poller's read-only role
        source = f". {shlex.quote(str(env_file))} && "
        check = subprocess.run(["bash", "-c", source + "scripts/service-env .venv/bin/python -m poller --check"],
                               cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "meter 1 (127.0.0.1:" in check.stdout, check.stdout
        password = next(line.split("=", 1)[1] for line in (ROOT / ".dev.env").read_text().splitlines()
                        if line.startswith("POSTGRES_PASSWORD="))
        psql = subprocess.run(["bash", "-c", source + "psql -XtA -c 'SELECT host FROM energy_meters'"],
                              cwd=ROOT, env={**clean_env(), "PGPASSWORD": password}, capture_output=True, text=True,
                              timeout=30)
        assert psql.returncode == 0 and psql.stdout.strip() == "127.0.0.1", psql.stdout + psql.stderr

        # a second run on the same directory is refused and touches nothing
        before = {name: (state_dir / name).read_bytes() for name in ("env", "pg/postmaster.pid", ".lock")}
        log_size = (state_dir / "logs" / "poller.log").stat().st_size
        for args in (["--seconds", "5"], []):
            second = subprocess.run([str(ROOT / "scripts" / "run-native"), "--state-dir", str(state_dir), *args],
                                    capture_output=True, text=True, timeout=60)
            assert second.returncode == 2, second.stdout + second.stderr
            assert f"another run-native (pid {first.proc.pid}) is using {state_dir}" in second.stderr, second.stderr
        assert {name: (state_dir / name).read_bytes() for name in before} == before
        assert (state_dir / "logs" / "poller.log").stat().st_size >= log_size
        assert (state_dir / "logs.previous" / "poller.log").exists()

        # ... while the first keeps working: the next cycle's readings arrive
        shown = len(first.lines)
        first.read_until(lambda: len(readings(first.lines[shown:])) >= len(SEED_MEASUREMENTS), cycle_seconds() + 15)
        check_readings(first.lines[shown:])
        assert not any("not answering" in line for line in first.err), first.err
        returncode = first.ctrl_c()
    finally:
        first.kill()
    assert returncode in (130, 0, 1), returncode
    assert not (state_dir / "env").exists(), "the addresses of a stopped run stay behind"


def test_service_env_by_hand_reads_dev_env(tmp_path: Path) -> None:
    """scripts/service-env from a shell that never exported .dev.env (run from elsewhere, too):
    it reads the repository's .dev.env itself, variables already set win (python-dotenv)."""
    dev = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in (ROOT / ".dev.env").read_text().splitlines()
           if re.match(r"^[A-Za-z_]\w*=", line)}
    run = subprocess.run([str(ROOT / "scripts" / "service-env"), "env", "-0"], cwd=tmp_path,
                         env={**clean_env(), "POSTGRES_HOST": "127.0.0.1", "POLL_CRON": "* * * * *"},
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    env = dict(item.split("=", 1) for item in run.stdout.split("\0") if "=" in item)
    assert env["POSTGRES_USER"] == dev["POSTGRES_READER_USER"]
    assert env["POSTGRES_PASSWORD"] == dev["POSTGRES_READER_PASSWORD"] != ""
    assert env["POSTGRES_HOST"] == "127.0.0.1" and env["POLL_CRON"] == "* * * * *"  # set before: kept
    assert env["POSTGRES_PORT"] == dev["POSTGRES_PORT"] and env["INFLUXDB_URL"] == dev["INFLUXDB_URL"]
    assert env["INFLUXDB_TOKEN"] == dev["INFLUXDB_TOKEN"]
    for name in ("POSTGRES_READER_PASSWORD", "DOCKER_INFLUXDB_INIT_PASSWORD", "GF_SECURITY_ADMIN_PASSWORD"):
        assert env[name] == "", name  # other credentials emptied, as in the containers
