"""`emm probe` (issue 12 item 1) against a real PostgreSQL and the real simulator over a socket.

The simulator (`python -m virtual_server --strict --frozen --seed`) serves a good map; the
probe reads that map, and a copy of it with one wrong address, through the command line as
an operator runs it. Values are checked against what the simulator serves
(virtual_server.device with the same seed gives the same values in any process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.servers import ROOT, free_port, project_env, start_module, stop_process, wait_for_port
from virtual_server.device import make_device

SEED = 7
EMM_SCRIPT = Path(sys.executable).parent / "emm"

# A meter with floats (one block), a scaled int16, and a SunSpec-style value with its scale factor.
GOOD_MAP = """
    INSERT INTO device_types (name, description, max_gap, timeout_s) VALUES ('{name}', 'probe test meter', 16, 1);
    INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                           scale, scale_factor) VALUES
        ('{name}', 0,   'voltage',     'V',  3, 4, 1,   NULL),
        ('{name}', 2,   'current',     'A',  3, 4, 1,   NULL),
        ('{name}', 4,   'power',       'W',  3, 4, 1,   NULL),
        ('{name}', {freq}, 'frequency', 'Hz', 3, 4, 1,   NULL),
        ('{name}', 100, 'temperature', '°C', 1, 3, 0.1, NULL),
        ('{name}', 201, 'sf_power',    NULL, 1, 3, 1,   NULL),
        ('{name}', 200, 'ac_power',    'W',  1, 3, 1,   'sf_power'),
        ('{name}', 202, 'ac_voltage',  'V',  1, 3, 1,   'sf_voltage'),
        ('{name}', 203, 'sf_voltage',  NULL, 1, 3, 1,   NULL);
"""


def emm(args: Sequence[str], env: Mapping[str, str], *, script: bool = False, timeout: float = 120,
        cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The command line as an operator runs it: `python -m poller.onboard` (or the `emm` script)."""
    command = [str(EMM_SCRIPT)] if script else [sys.executable, "-m", "poller.onboard"]
    out = subprocess.run([*command, "--env-file", "/nonexistent", *args], cwd=cwd, env=project_env(env),
                         capture_output=True, timeout=timeout)
    # decoded by hand: text mode would turn the progress bar's carriage returns into newlines
    return subprocess.CompletedProcess(out.args, out.returncode, out.stdout.decode(), out.stderr.decode())


def add_map(postgres, database: str, name: str, freq_address: int = 6) -> None:  # type: ignore[no-untyped-def]
    postgres.psql(database, "-c", GOOD_MAP.format(name=name, freq=freq_address))


@pytest.fixture
def simulator(postgres, database, tmp_path) -> Iterator[int]:  # type: ignore[no-untyped-def]
    """`python -m virtual_server` serving probe_meter at every unit id, strict and frozen; its port."""
    add_map(postgres, database, "probe_meter")
    add_map(postgres, database, "probe_meter_bad", freq_address=10)  # frequency where the device has nothing
    port = free_port()
    proc = start_module("virtual_server", ["--port", str(port), "--device-type", "probe_meter", "--seed",
                                           str(SEED), "--frozen", "--strict"],
                        postgres.env(database), tmp_path / "simulator.log")
    try:
        wait_for_port(port, proc=proc)
        yield port
    finally:
        stop_process(proc)


def served_values(postgres, database: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    regs = postgres.configuration(database).device_types["probe_meter"].registers
    return make_device("probe_meter", regs, SEED).values()


def test_probe_of_a_good_map_shows_every_value_the_device_serves(postgres, database, simulator):
    expected = served_values(postgres, database)
    out = emm(["probe", f"127.0.0.1:{simulator}", "--unit", "3", "--type", "probe_meter", "--json"],
              postgres.env(database))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    rows = {r["measurement"]: r for r in result["rows"]}
    assert set(rows) == set(expected)
    for name, value in expected.items():
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["value"] == pytest.approx(value, rel=1e-9), name
    # the scale factor was read in the same pass and applied (the simulator serves sf -1 or 0)
    assert rows["ac_power"]["reason"] == "sf_power = 0"
    assert rows["ac_voltage"]["reason"] == "sf_voltage = -1"
    assert rows["ac_voltage"]["value"] * 10 == pytest.approx(rows["ac_voltage"]["raw"][0])
    assert rows["temperature"]["reason"] == "x 0.1"
    # as the poller plans it: one request for the floats, one for 100, one for 200..203; nothing refused
    assert result["blocks"] == result["requests"] == 3
    assert result["failed"] == 0 and result["notes"] == []


def test_probe_table_through_the_installed_emm_script(postgres, database, simulator):
    assert EMM_SCRIPT.exists(), f"{EMM_SCRIPT} missing: reinstall the project (pip install -e '.[test]')"
    expected = served_values(postgres, database)
    out = emm(["probe", f"127.0.0.1:{simulator}", "--unit", "1", "--type", "probe_meter"],
              postgres.env(database), script=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("MEASUREMENT"))
    assert lines[header].split() == ["MEASUREMENT", "ADDRESS", "FC", "TYPE", "RAW", "VALUE", "UNIT", "NOTE"]
    voltage = next(line for line in lines if line.startswith("voltage "))
    cells = voltage.split()
    assert cells[1:4] == ["0", "4", "float32"]
    assert cells[4].startswith("0x") and cells[5].startswith("0x")  # two raw words, in hex
    assert float(cells[6]) == pytest.approx(expected["voltage"], rel=1e-9)
    assert cells[7] == "V"
    # columns are aligned: every row's VALUE starts where the header's does
    column = lines[header].index("VALUE")
    rows = lines[header + 1:header + 1 + len(expected)]
    assert all(len(r) > column and r[column - 2:column] == "  " and r[column] != " " for r in rows), rows
    assert lines[-1] == f"{len(expected)} of {len(expected)} registers read"


def test_probe_of_a_map_with_one_wrong_address_shows_the_exception_on_that_row_only(postgres, database, simulator):
    expected = served_values(postgres, database)
    out = emm(["probe", f"127.0.0.1:{simulator}", "--unit", "3", "--type", "probe_meter_bad", "--json"],
              postgres.env(database))
    assert out.returncode == 1, out.stderr
    rows = {r["measurement"]: r for r in json.loads(out.stdout)["rows"]}
    assert rows["frequency"]["status"] == "failed"
    assert rows["frequency"]["address"] == 10
    assert rows["frequency"]["reason"] == "exception 2 (illegal data address)"
    assert rows["frequency"]["value"] is None and rows["frequency"]["raw"] is None
    for name in set(expected) - {"frequency"}:
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["value"] == pytest.approx(expected[name], rel=1e-9)
    # and as a table: the row says why, the summary counts it
    table = emm(["probe", f"127.0.0.1:{simulator}", "--unit", "3", "--type", "probe_meter_bad"],
                postgres.env(database))
    assert table.returncode == 1
    frequency = next(line for line in table.stdout.splitlines() if line.startswith("frequency "))
    assert frequency.split()[1:7] == ["10", "4", "float32", "-", "-", "Hz"]
    assert frequency.endswith("exception 2 (illegal data address)")
    assert "fc4 0..11 refused (exception 2 (illegal data address)): read register by register" in table.stdout
    assert table.stdout.splitlines()[-1] == f"{len(expected) - 1} of {len(expected)} registers read, 1 failed"


@pytest.mark.parametrize("args, says", [
    (["probe", "127.0.0.1:1502", "--type", "probe_meter"], "the following arguments are required: --unit"),
    (["probe", "127.0.0.1:1502", "--unit", "300", "--type", "probe_meter"], "'300' is not a unit id (0..255)"),
    (["probe", "127.0.0.1:99999", "--unit", "1", "--type", "probe_meter"], "port '99999' is not 1..65535"),
    (["probe", "serial:dev/ttyUSB0", "--unit", "1", "--type", "probe_meter"], "a serial bus is a device path"),
    (["probe", "/dev/ttyEMMmissing0", "--unit", "1", "--type", "probe_meter"], "does not exist"),
    (["probe", "rtuovertcp:127.0.0.1:4196", "--unit", "0", "--type", "probe_meter"], "broadcast"),
    (["probe", "192.168..10", "--unit", "1", "--type", "probe_meter"], "empty label"),
    (["probe", "127.0.0.1:1502", "--unit", "1", "--type", "no_such_type"],
     "device type 'no_such_type' is not in the database (known: "),
])
def test_bad_arguments_exit_2_with_one_line(postgres, database, args, says):
    add_map(postgres, database, "probe_meter")
    out = emm(args, postgres.env(database))
    assert out.returncode == 2, out
    assert out.stdout == ""
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith("emm probe: ") and says in out.stderr, out.stderr


def test_database_unreachable_is_one_line_exit_2(postgres, database):
    env = {**postgres.env(database), "POSTGRES_PORT": str(free_port())}
    out = emm(["probe", "127.0.0.1:1502", "--unit", "1", "--type", "probe_meter"], env)
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith("emm probe: cannot connect to PostgreSQL ")


def test_a_bus_nobody_listens_on_is_one_line_exit_1(postgres, database):
    add_map(postgres, database, "probe_meter")
    port = free_port()
    out = emm(["probe", f"127.0.0.1:{port}", "--unit", "1", "--type", "probe_meter"], postgres.env(database))
    assert out.returncode == 1
    assert out.stderr == f"emm probe: cannot connect to 127.0.0.1:{port}: connection refused\n"


def test_a_silent_unit_fails_every_row_with_the_timeout(postgres, database, hung_port):
    """A device that never answers: every block times out after --timeout; exit 1, nothing invented."""
    add_map(postgres, database, "probe_meter")
    out = emm(["probe", f"127.0.0.1:{hung_port}", "--unit", "1", "--type", "probe_meter", "--timeout", "0.1",
               "--json"], postgres.env(database))
    assert out.returncode == 1, out.stderr
    result = json.loads(out.stdout)
    assert result["failed"] == len(result["rows"]) == 9
    assert all("no reply from" in r["reason"] and "within 0.1 s" in r["reason"] for r in result["rows"])


def test_help_of_every_subcommand():
    for args in (["--help"], ["probe", "--help"], ["scan", "--help"], ["sunspec", "--help"], ["maps", "--help"],
                 ["maps", "list", "--help"], ["maps", "load", "--help"]):
        out = subprocess.run([sys.executable, "-m", "poller.onboard", *args], cwd=ROOT, capture_output=True,
                             text=True, timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert out.returncode == 0, (args, out.stderr)
        assert out.stdout.startswith("usage: emm"), (args, out.stdout)
