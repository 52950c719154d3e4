"""`emm maps list | load` (issue 12 item 4): the library in db/maps/ against a real PostgreSQL."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from poller.onboard.maps import MapsError, find_map, library, meta_command, parse_map
from tests.servers import ROOT, free_port, project_env
from tests.test_emm_probe import EMM_SCRIPT, emm

MAPS = ROOT / "db" / "maps"


def library_types() -> dict[str, str]:
    """file name -> the device type its device_types INSERT names, read here independently of emm."""
    found = {}
    for path in sorted(MAPS.glob("*.sql")):
        match = re.search(r"INSERT INTO device_types\s*\([^)]*\)\s*VALUES\s*\(\s*'([^']+)'", path.read_text())
        assert match, path
        found[path.name] = match.group(1)
    return found


def counts(postgres, database: str, name: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    out = postgres.psql(database, "-At", "-c", f"SELECT (SELECT count(*) FROM registers WHERE type = '{name}'), "
                                               f"(SELECT count(*) FROM device_signatures WHERE type = '{name}')")
    registers, signatures = out.stdout.strip().split("|")
    return int(registers), int(signatures)


def test_list_shows_every_map_with_its_type_and_whether_it_is_loaded(postgres, database):
    out = emm(["maps", "list"], postgres.env(database))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["FILE", "DEVICE", "TYPE", "LOADED", "DESCRIPTION"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert {f: cells[1] for f, cells in rows.items()} == library_types()
    assert all(cells[2] == "no" for cells in rows.values())


def test_load_by_file_and_by_type_then_list_says_loaded(postgres, database):
    assert EMM_SCRIPT.exists(), f"{EMM_SCRIPT} missing: reinstall the project (pip install -e '.[test]')"
    out = emm(["maps", "load", "eastron_sdm630", "sunspec_inverter.sql"], postgres.env(database), script=True)
    assert out.returncode == 0, out.stderr
    sdm = counts(postgres, database, "eastron_sdm630")
    inverter = counts(postgres, database, "sunspec_inverter")
    assert sdm[0] > 0 and inverter[0] > 0
    assert out.stdout.splitlines() == [
        f"loaded eastron_sdm630.sql: device type eastron_sdm630, {sdm[0]} registers"
        + (f", {sdm[1]} signature rows" if sdm[1] else ""),
        f"loaded sunspec_inverter.sql: device type sunspec_inverter, {inverter[0]} registers"
        + (f", {inverter[1]} signature rows" if inverter[1] else "")]
    # by its device type, a second time: the map is replaced, not doubled
    again = emm(["maps", "load", "sunspec_inverter"], postgres.env(database))
    assert again.returncode == 0, again.stderr
    assert counts(postgres, database, "sunspec_inverter") == inverter
    listing = emm(["maps", "list"], postgres.env(database)).stdout
    state = {line.split()[0]: line.split("  ")[0:] for line in listing.splitlines()[1:]}
    assert f"yes: {sdm[0]} registers" in " ".join(state["eastron_sdm630.sql"])
    assert " no " in f" {' '.join(state['huawei_sun2000.sql'])} "
    # the poller takes what was loaded without a complaint
    config = postgres.configuration(database)
    assert len(config.device_types["eastron_sdm630"].registers) == sdm[0]
    assert not [p for p in config.problems if "eastron_sdm630" in p or "sunspec_inverter" in p]


def test_load_all_loads_every_map_in_the_library(postgres, database):
    out = emm(["maps", "load", "--all"], postgres.env(database))
    assert out.returncode == 0, out.stderr
    types = library_types()
    assert len(out.stdout.splitlines()) == len(types)
    for name in types.values():
        assert counts(postgres, database, name)[0] > 0, name
    config = postgres.configuration(database)
    assert not [p for p in config.problems if any(t in p for t in types.values())]


def test_a_failing_map_changes_nothing_and_says_where(postgres, database, tmp_path):
    (tmp_path / "broken.sql").write_text(
        "-- a map with a typo\n"
        "BEGIN;\n"
        "INSERT INTO device_types (name, description) VALUES ('broken_meter', 'broken');\n"
        "INSERT INTO registers (type, register_address, measurement_name, data_type)\n"
        "VALUES ('broken_meter', 0, 'voltage', 3);\n"
        "INSRT INTO registers (type, register_address, measurement_name, data_type)\n"
        "VALUES ('broken_meter', 2, 'current', 3);\n"
        "COMMIT;\n")
    (tmp_path / "bad_type.sql").write_text(
        "BEGIN;\n"
        "INSERT INTO device_types (name) VALUES ('bad_type_meter');\n"
        "INSERT INTO registers (type, register_address, measurement_name, data_type)\n"
        "VALUES ('bad_type_meter', 0, 'voltage', 99);\n"
        "COMMIT;\n")
    out = emm(["maps", "load", "broken", "--maps-dir", str(tmp_path)], postgres.env(database))
    assert out.returncode == 1
    assert out.stderr == ("emm maps load: broken.sql at line 6: syntax error at or near \"INSRT\"; "
                          "the file's transaction was rolled back\n")
    out = emm(["maps", "load", "bad_type_meter", "--maps-dir", str(tmp_path)], postgres.env(database))
    assert out.returncode == 1
    assert out.stderr.startswith("emm maps load: bad_type.sql: insert or update on table \"registers\" violates "
                                 "foreign key constraint")
    present = postgres.psql(database, "-At", "-c", "SELECT count(*) FROM device_types "
                                                   "WHERE name IN ('broken_meter', 'bad_type_meter')")
    assert present.stdout.strip() == "0"


def test_a_psql_meta_command_is_refused_before_anything_runs(postgres, database, tmp_path):
    (tmp_path / "meta.sql").write_text("-- \\i in a comment is fine\n"
                                       "INSERT INTO device_types (name) VALUES ('meta_meter');\n"
                                       "\\i other.sql\n")
    out = emm(["maps", "load", "meta", "--maps-dir", str(tmp_path)], postgres.env(database))
    assert out.returncode == 1
    assert out.stderr == ("emm maps load: meta.sql line 3: '\\\\i other.sql' is a psql meta-command; load this file "
                          "with psql -v ON_ERROR_STOP=1 -f\n")
    assert postgres.psql(database, "-At", "-c", "SELECT count(*) FROM device_types WHERE name = 'meta_meter'"
                         ).stdout.strip() == "0"


def test_the_pollers_read_only_login_cannot_load_and_is_told_what_to_use(postgres, database):
    import os

    name, password = f"emm_maps_reader_{os.getpid()}", "test-only-reader"
    env = {**postgres.env(database), **postgres.reader_login(database, name, password)}
    out = emm(["maps", "load", "eastron_sdm120"], env)
    assert out.returncode == 1
    assert out.stderr.startswith(f"emm maps load: eastron_sdm120.sql: the login '{name}' may not write")
    assert "use the admin login" in out.stderr and len(out.stderr.splitlines()) == 1
    assert counts(postgres, database, "eastron_sdm120") == (0, 0)
    # listing only reads: fine with the poller's login
    assert emm(["maps", "list"], env).returncode == 0


@pytest.mark.parametrize("args, code, says", [
    (["maps", "load", "no_such_map"], 2, "no map 'no_such_map' in the library (known: "),
    (["maps", "load"], 2, "name the maps to load"),
    (["maps", "load", "eastron_sdm630", "--all"], 2, "name the maps to load"),
    (["maps", "list", "--maps-dir", "/nonexistent/maps"], 2, "/nonexistent/maps is not a directory"),
])
def test_operator_mistakes_are_one_line(postgres, database, args, code, says):
    out = emm(args, postgres.env(database))
    assert out.returncode == code
    assert len(out.stderr.splitlines()) == 1 and says in out.stderr, out.stderr


def test_list_without_the_database_still_lists_and_exits_1(postgres, database):
    env = {**postgres.env(database), "POSTGRES_PORT": str(free_port())}
    out = emm(["maps", "list"], env)
    assert out.returncode == 1
    assert len(out.stdout.splitlines()) == len(library_types()) + 1
    assert all(line.split()[2] == "?" for line in out.stdout.splitlines()[1:])
    assert out.stderr.startswith("emm maps list: cannot connect to PostgreSQL ")


def test_the_library_is_found_from_any_working_directory(postgres, database, tmp_path):
    """The editable install (and the repository) keeps db/maps next to poller/; python -m from elsewhere."""
    out = subprocess.run([sys.executable, "-m", "poller.onboard", "--env-file", "/nonexistent", "maps", "list"],
                         cwd=tmp_path, env={**project_env(postgres.env(database)), "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == len(library_types()) + 1


# --- reading map files without running them ---------------------------------------------------


def test_parse_map_reads_the_type_and_its_description(tmp_path):
    path = tmp_path / "odd.sql"
    path.write_text("-- Odd meter (a header, first paragraph\n"
                    "-- goes on here)\n"
                    "--\n"
                    "-- the rest\n"
                    "BEGIN;\n"
                    "INSERT INTO device_types (max_block, name, description) -- (columns in another order)\n"
                    "VALUES (10, 'odd_meter', 'O''Brien''s meter, (three-phase)')\n"
                    "ON CONFLICT (name) DO NOTHING;\n"
                    "COMMIT;\n")
    parsed = parse_map(path)
    assert parsed.types == ("odd_meter",)
    assert parsed.description == "O'Brien's meter, (three-phase)"
    header_only = tmp_path / "header.sql"
    header_only.write_text("-- Odd meter (a header, first paragraph\n-- goes on here)\n--\n-- more\nSELECT 1;\n")
    assert parse_map(header_only).description == "Odd meter (a header, first paragraph goes on here)"
    assert parse_map(header_only).types == ()


def test_every_library_file_parses_to_the_type_it_defines():
    assert {m.path.name: m.types for m in library(MAPS)} == {f: (t,) for f, t in library_types().items()}
    assert all(m.description for m in library(MAPS))


def test_find_map_by_file_or_type():
    maps = library(MAPS)
    assert find_map(maps, "eastron_sdm630").path.name == "eastron_sdm630.sql"
    assert find_map(maps, "eastron_sdm630.sql").path.name == "eastron_sdm630.sql"
    with pytest.raises(MapsError, match="no map 'sdm999'"):
        find_map(maps, "sdm999")


def test_meta_command_detection():
    assert meta_command("SELECT 1;\n  \\set x 1\n") == (2, "\\set x 1")
    assert meta_command("-- \\x in a comment\nSELECT '\\not a command';\n") is None
