"""scripts/run-native: the stack without Docker shows the simulator's readings within one cycle.

Started as README.md says (scripts/run-native), with a fresh state directory:
a private PostgreSQL cluster, VictoriaMetrics (InfluxDB v2 write API), the simulator
and the poller; it prints every reading that arrives in the readings store.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
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


def test_ctrl_c_stops_everything(state_dir: Path) -> None:
    proc = subprocess.Popen([str(ROOT / "scripts" / "run-native"), "--state-dir", str(state_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    err: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, lines)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    deadline = time.monotonic() + cycle_seconds() + 20
    try:
        while time.monotonic() < deadline and len(readings(lines)) < len(SEED_MEASUREMENTS):
            for key, _ in sel.select(timeout=1):
                line = key.fileobj.readline()
                if line:
                    key.data.append(line.rstrip("\n"))
            assert proc.poll() is None, "run-native stopped by itself:\n" + "\n".join(err)
        check_readings(lines)
        ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", "\n".join(err))]
        assert len(set(ports)) >= 3, err  # PostgreSQL, VictoriaMetrics, the simulator
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode in (130, 0, 1), proc.returncode
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
