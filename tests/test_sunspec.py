"""`emm sunspec` (poller/onboard/sunspec.py) against simulated SunSpec devices (virtual_server/sunspec.py).

The simulator lays its models out and encodes them with pysunspec2's own `Model.get_mb()`;
the generator walks the chain over a real socket and lays the points out from the model
definitions itself. The map it generates is applied to a real PostgreSQL, loaded by the
poller's loader, and read by the poller's own Poller for one cycle: every value stored
must equal what the simulator serves (scale factors applied), and nothing else may be
stored (the "not implemented" sentinels, strings, enums, bit fields).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from poller.cycle import Poller
from poller.modbus import ExceptionReply
from poller.model import FunctionCode, ReadBlock
from poller.onboard import cli
from poller.onboard.sunspec import Chain, ChainError, Model, Survey, generate, read_chain, read_device, to_sql
from tests.servers import (
    ROOT,
    ModbusServerThread,
    Postgres,
    free_port,
    project_env,
    start_module,
    stop_process,
    wait_for_port,
)
from virtual_server.server import SimulatedServer
from virtual_server.sunspec import SimPoint, SunSpecDevice, parse_models

TYPE = "emm_siminverter_10k"  # the default name: the common model's Mn "EMM" and Md "SimInverter 10K"
STORED_TYPES = {"int16", "uint16", "acc16", "count", "sunssf", "int32", "uint32", "acc32", "int64", "uint64",
                "acc64", "float32", "float64"}
SKIPPED_TYPES = {"string", "enum16", "enum32", "bitfield16", "bitfield32", "ipaddr", "ipv6addr", "eui48", "pad"}


# --- helpers ---------------------------------------------------------------------------------

@contextmanager
def served(models: str, base: int = 40000, strict: bool = True, broken: Any = None,
           ) -> Iterator[tuple[SunSpecDevice, int, SimulatedServer]]:
    device = SunSpecDevice(parse_models(models), base, broken=broken)
    server = SimulatedServer(units={1: device.bank}, strict=strict)
    thread = ModbusServerThread(server)
    try:
        yield device, thread.port, server
    finally:
        thread.close()


def emm(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`emm sunspec ...` in this process (cli.main, as the console script runs it)."""
    code = cli.main(["sunspec", *args, "--env-file", "/nonexistent"])
    out, err = capsys.readouterr()
    return code, out, err


def use_database(monkeypatch: pytest.MonkeyPatch, postgres: Postgres, database: str) -> None:
    for key in [k for k in os.environ if k.startswith(("POSTGRES_", "INFLUXDB_", "POLL_"))]:
        monkeypatch.delenv(key)
    for key, value in postgres.env(database).items():
        monkeypatch.setenv(key, value)


def measurement(p: SimPoint) -> str:
    """The name the map must give a point (the naming rule of `emm sunspec`, written out again)."""
    prefix = f"m{p.model}" if p.instance == 1 else f"m{p.model}_{p.instance}"
    for group, index in p.groups:
        prefix += f"_{group.lower()}{index if index is not None else ''}"
    if p.type == "sunssf":
        return f"sf_{prefix}_{p.name[:-3].lower() if p.name.upper().endswith('_SF') else p.name.lower()}"
    return f"{prefix}_{p.name.lower()}"


def expected_values(device: SunSpecDevice) -> dict[str, float]:
    """What a correct poller stores: every numeric point the device implements, scaled."""
    return {measurement(p): p.value for p in device.points
            if p.type in STORED_TYPES and p.value is not None and not (not p.groups and p.name in ("ID", "L"))}


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def put(self, lines: list[str]) -> None:
        self.lines.extend(lines)


def poll_once(postgres: Postgres, database: str, port: int, type_name: str = TYPE) -> dict[str, float]:
    """Attach the device to the type, load the configuration as the poller does, poll one cycle."""
    postgres.psql(database, "-c", f"INSERT INTO energy_meters (host, port, slave_address, type) "
                                  f"VALUES ('127.0.0.1', {port}, 1, '{type_name}')")
    config = postgres.configuration(database)
    assert not config.problems, config.problems
    meters = [m for m in config.meters if m.device_type.name == type_name]
    out = Lines()

    async def one_cycle():  # type: ignore[no-untyped-def]
        poller = Poller(out, status_points=False)
        try:
            return await poller.run_cycle(meters)
        finally:
            poller.close()
            await asyncio.sleep(0)  # the connection's close runs before the loop ends

    report = asyncio.run(one_cycle())
    assert report.meters_ok == 1, report.summary()
    return {ln.split(",")[0]: float(ln.split(" value=")[1].split()[0]) for ln in out.lines}


def database_state(postgres: Postgres, database: str) -> str:
    return postgres.psql(database, "-At", "-c",
                         "SELECT (SELECT version FROM config_version), (SELECT count(*) FROM device_types), "
                         "(SELECT count(*) FROM registers)").stdout


# --- the generated map, read by the poller --------------------------------------------------

@pytest.mark.parametrize("base, models", [
    (40000, "1,103,120,160x2,203"),
    (40000, "1,103,120,160x4,203"),
    (0, "1,103,120,160x2,203"),
    (50000, "1,103,120,160x4,203"),
    (50000, "1,103,120,160x2,203,705x3x4"),  # 7xx: curves of points, counted by NCrv and NPt
    (40000, "1,111,160x3,701,213"),  # float32 models (NaN sentinels), DER 701's 64-bit totals
], ids=["40000-2mppt", "40000-4mppt", "0-2mppt", "50000-4mppt", "50000-705", "40000-float-701"])
def test_the_generated_map_reads_what_the_device_serves(postgres, database, monkeypatch, capsys, base, models):
    use_database(monkeypatch, postgres, database)
    with served(models, base) as (device, port, _):
        code, out, err = emm(capsys, f"127.0.0.1:{port}", "--unit", "1", "--apply")
        assert code == 0, err
        assert f"applied: device type {TYPE}" in err
        stored = poll_once(postgres, database, port)
    want = expected_values(device)
    assert sorted(stored) == sorted(want)  # sentinels, text, codes: nothing stored
    for name, value in want.items():
        assert stored[name] == pytest.approx(value, rel=1e-12), name
    # the repeats follow the device: every module (curve, point) and no more
    modules = int(models.split("160x")[1][0])
    assert {n.split("_")[1] for n in stored if n.startswith("m160_module")} == {f"module{i}" for i in
                                                                                 range(1, modules + 1)}
    # what the test relies on: scale factors of both signs, and sentinels served
    sfs = {p.value for p in device.points if p.type == "sunssf"}
    assert min(sfs) < 0 < max(sfs)  # type: ignore[operator]
    assert any(p.type in STORED_TYPES and p.raw is None for p in device.points)


def test_the_sql_is_idempotent_and_lists_what_it_skips(postgres, database, capsys):
    with served("1,103,120,160x2,203") as (device, port, _):
        code, sql, err = emm(capsys, f"127.0.0.1:{port}")
    assert code == 0, err
    assert sql.count("BEGIN;") == 1 and sql.rstrip().endswith("COMMIT;")
    assert f"DELETE FROM registers WHERE type = '{TYPE}';" in sql
    path = ROOT / ".pytest_cache" / f"sunspec-{database}.sql"
    path.parent.mkdir(exist_ok=True)
    path.write_text(sql, encoding="utf-8")
    loads = []
    try:
        for _ in range(2):  # twice: the same rows
            done = postgres.psql(database, "-f", str(path), check=False)
            assert done.returncode == 0, done.stderr
            loads.append(postgres.psql(database, "-At", "-c", "SELECT register_address, measurement_name, "
                                       f"data_type, scale_factor, not_available, kind FROM registers WHERE type = "
                                       f"'{TYPE}' ORDER BY register_address").stdout)
    finally:
        path.unlink()
    first = loads[0]
    assert first.count("\n") > 100 and loads[1] == first
    # every point that is no number is named, with its reason, on stderr and in the SQL
    skipped = [p for p in device.points if p.type in SKIPPED_TYPES]
    assert {p.type for p in skipped} >= {"string", "enum16", "bitfield32", "pad"}
    for p in skipped:
        prefix = measurement(p).rsplit("_", 1)[0] if p.type != "sunssf" else ""
        line = f"{prefix} {p.name} ({p.type})"
        assert f"skipped {line}" in err, line
        assert f"--   {line}" in sql, line
    assert "m103 St (enum16) at 40108: an enumeration" in err  # the address and the reason
    # a counter: the energy totals (acc32 in Wh) and nothing else
    kinds = dict(line.split("|")[1::4] for line in first.splitlines())  # measurement -> kind
    assert kinds["m103_wh"] == "counter" and kinds["m203_totwhimp"] == "counter"
    assert kinds["m103_w"] == "gauge" and kinds["sf_m103_wh"] == "gauge"


def test_output_file_and_a_chosen_name(capsys, tmp_path):
    target = tmp_path / "map.sql"
    with served("1,103") as (_, port, _server):
        code, out, err = emm(capsys, f"127.0.0.1:{port}", "--name", "my.inverter-1", "--output", str(target))
    assert code == 0, err
    assert out == ""
    assert "DELETE FROM registers WHERE type = 'my.inverter-1';" in target.read_text(encoding="utf-8")


def test_the_command_runs_as_a_program(capsys):
    """`python -m poller.onboard sunspec ...`, the form the `emm` console script runs."""
    with served("1,103") as (_, port, _server):
        done = subprocess.run([sys.executable, "-m", "poller.onboard", "--env-file", "/nonexistent", "sunspec",
                               f"127.0.0.1:{port}", "--unit", "1"], cwd=ROOT, env=project_env({}),
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "INSERT INTO registers" in done.stdout and "'sf_m103_w'" in done.stdout


# --- broken chains, no SunSpec, nobody there ------------------------------------------------

@pytest.mark.parametrize("broken, strict, says", [
    ("long_model", True, "no model header at"),
    ("long_model", False, "model id 0 at"),
    ("no_end", True, "the end marker (0xFFFF) is missing"),
    ("no_end", False, "model id 0 at"),
    ("past_65535", True, "runs past register 65535"),
])
def test_a_broken_chain_is_a_clear_error_and_nothing_is_applied(postgres, database, monkeypatch, capsys,
                                                                broken, strict, says):
    use_database(monkeypatch, postgres, database)
    before = database_state(postgres, database)
    with served("1,103,160x2,203", strict=strict, broken=broken) as (device, port, _):
        code, out, err = emm(capsys, f"127.0.0.1:{port}", "--apply")
    assert code == 1
    assert "broken SunSpec model chain" in err and says in err, err
    assert "after model 203" in err or "model 203 at" in err, err  # where: after the last model
    assert out == ""
    assert database_state(postgres, database) == before


def test_a_map_the_database_refuses_is_not_applied_in_part(postgres, database, monkeypatch, capsys):
    """The type's row goes in first and the registers last: a refusal of the last undoes the first."""
    use_database(monkeypatch, postgres, database)
    postgres.psql(database, "-c", "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                                  "$$ BEGIN RAISE EXCEPTION 'registers are read-only today'; END $$; "
                                  "CREATE TRIGGER refuse BEFORE INSERT ON registers FOR EACH STATEMENT "
                                  "EXECUTE FUNCTION refuse()")
    before = database_state(postgres, database)
    with served("1,103") as (_, port, _server):
        code, out, err = emm(capsys, f"127.0.0.1:{port}", "--apply")
    assert code == 1
    assert "nothing applied" in err and "registers are read-only today" in err, err
    assert database_state(postgres, database) == before


def test_a_device_without_the_marker_is_no_sunspec_device(capsys):
    server = SimulatedServer(units={1: lambda: {(3, a): 0x1234 for a in range(60000)}}, strict=True)
    thread = ModbusServerThread(server)
    try:
        code, out, err = emm(capsys, f"127.0.0.1:{thread.port}")
        asked = [key[2] for key in server.stats.by_request]
    finally:
        thread.close()
    assert code == 1 and "no SunSpec device" in err and out == ""
    assert asked == [40000, 0, 50000]  # the marker's places, most common first


def test_an_unreachable_device_is_said_so(capsys, hung_port):
    code, _, err = emm(capsys, f"127.0.0.1:{hung_port}", "--timeout", "0.2")
    assert code == 1 and "unreachable" in err, err
    code, _, err = emm(capsys, f"127.0.0.1:{free_port()}")  # nothing listens
    assert code == 1 and "unreachable" in err, err


@pytest.mark.parametrize("args, says", [
    (["--name", "no spaces"], "--name"),
    (["--unit", "256"], "--unit"),
    (["--apply", "--name", "x" * 64], "--name"),
])
def test_bad_arguments_exit_2(capsys, args, says):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sunspec", "127.0.0.1:1502", *args])
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err
    assert emm(capsys, "127.0.0.1:99999")[0] == 2  # a BUS that names no wire


# --- the generator on its own (no socket) ---------------------------------------------------

def words_reader(words: dict[tuple[int, int], int]):  # type: ignore[no-untyped-def]
    async def read(fc: int, address: int, count: int, unit: int) -> list[int]:
        got = [words.get((3, a)) for a in range(address, address + count)]
        if None in got:
            raise ExceptionReply(2, ReadBlock(FunctionCode(fc), address, count, ()), unit)
        return [w for w in got if w is not None]
    return read


def test_an_unknown_model_is_skipped_and_the_walk_goes_on():
    device = SunSpecDevice(parse_models("1,103"), 40000)
    words = dict(device.words)
    # a vendor model 64999 of 3 registers between 103 and the end marker
    end = max(a for _, a in words) - 1
    words.update({(3, end): 64999, (3, end + 1): 3, (3, end + 2): 7, (3, end + 3): 8, (3, end + 4): 9,
                  (3, end + 5): 0xFFFF, (3, end + 6): 0})
    chain = asyncio.run(read_chain(words_reader(words), 1))
    assert chain is not None and [m.id for m in chain.models] == [1, 103, 64999]
    survey = Survey(1, chain, {})
    device_map = generate(survey, "t")
    unknown = [s for s in device_map.skipped if s.model == 64999]
    assert len(unknown) == 1 and "no definition in pysunspec2" in unknown[0].reason
    assert "model 64999 at 40122: no definition" in to_sql(device_map)


def test_a_chain_that_never_ends_is_stopped():
    words = {(3, 40000): 0x5375, (3, 40001): 0x6E53}
    for i in range(300):  # 300 empty vendor models: 64999, length 0
        words[(3, 40002 + 2 * i)], words[(3, 40003 + 2 * i)] = 64999, 0
    with pytest.raises(ChainError, match="more than 200 models"):
        asyncio.run(read_chain(words_reader(words), 1))


def test_a_shorter_older_model_and_an_uneven_repeating_part():
    """Model 1 with L = 65 (no Pad, as Fronius and SolarEdge send it) maps without the Pad; a model
    160 whose length leaves a partial module maps its fixed part and skips the modules, saying why."""
    chain = Chain(40000, (Model(1, 40004, 65), Model(160, 40071, 8 + 20 + 7)))
    device_map = generate(Survey(1, chain, {}), "t")
    names = {r.measurement for r in device_map.rows}
    assert "m1_da" in names and "sf_m160_dca" in names and not any(n.startswith("m160_module") for n in names)
    reasons = {s.what: s.reason for s in device_map.skipped}
    assert "past the model's length 65" in reasons["m1 Pad (pad)"]
    assert "not a whole number of 20-register module groups" in reasons["m160 group module"]


def test_repeats_are_sized_from_the_model_length_not_the_definition():
    for modules in (0, 1, 3, 6):
        chain = Chain(40000, (Model(160, 40004, 8 + 20 * modules),))
        rows = generate(Survey(1, chain, {}), "t").rows
        dcw = sorted((r.address, r.measurement) for r in rows if r.measurement.endswith("_dcw"))
        # header at 40002, DCW_SF at 40006, 8 registers of fixed part after the header, then 20 per
        # module, each with its DCW after ID, IDStr (8), DCA and DCV
        assert dcw == [(40006, "sf_m160_dcw")] + [(40004 + 8 + 20 * i + 11, f"m160_module{i + 1}_dcw")
                                                  for i in range(modules)]


# --- the simulator on the command line ------------------------------------------------------

def test_the_simulator_serves_a_sunspec_device_without_a_database(tmp_path, capsys):
    port = free_port()
    proc = start_module("virtual_server", ["--port", str(port), "--sunspec", "3=1,103,160x2@50000"], {},
                        tmp_path / "sim.log")
    try:
        wait_for_port(port, proc=proc)
        code, sql, err = emm(capsys, f"127.0.0.1:{port}", "--unit", "3")
    finally:
        stop_process(proc)
    assert code == 0, err + (tmp_path / "sim.log").read_text()
    assert "\"SunS\" at 50000; models (id at address, L): 1 at 50002 L 66, 103 at 50070 L 50, 160 at 50122 L 48" in sql


def test_a_bad_sunspec_option_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "virtual_server", "--env-file", "/nonexistent", "--port", "0",
                           "--sunspec", "1=1,103@123"], cwd=ROOT, env=project_env({}), capture_output=True,
                          text=True, timeout=30)
    assert done.returncode != 0
    assert "--sunspec '1=1,103@123': " in done.stderr and "BASE is 0, 40000 or 50000" in done.stderr


def test_curve_counts_come_from_the_device_and_are_checked_against_the_length():
    """Model 705: NCrv and NPt are read from the device; a length they do not give is said."""
    device = SunSpecDevice(parse_models("705x2x3"), 40000)
    survey = asyncio.run(read_device_words(device.words))
    rows = generate(survey, "t").rows
    assert {r.measurement for r in rows if r.measurement.startswith("m705_crv2_pt3_")} == {
        "m705_crv2_pt3_v", "m705_crv2_pt3_var"}
    assert not any(r.measurement.startswith(("m705_crv3", "m705_crv1_pt4")) for r in rows)
    assert generate(survey, "t").notes == ()
    (model,) = survey.chain.models
    longer = Survey(1, Chain(40000, (Model(705, model.address, model.length + 4),)), survey.words)
    (note,) = generate(longer, "t").notes
    assert "NCrv=2, NPt=3 give 45 registers after the header; the device says L=49" in note


async def read_device_words(words: dict[tuple[int, int], int]) -> Survey:
    survey = await read_device(words_reader(words), 1)
    assert survey is not None
    return survey
