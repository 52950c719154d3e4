"""The register-map library in db/maps/: each file loads with psql into a real
PostgreSQL built from db/init.sql, loads again without change, and yields rows
that poller.store accepts without a single problem.

PostgreSQL: the shared fixtures of tests/conftest.py (`postgres`, a throwaway
cluster for the session; `database`, a fresh database from db/init.sql).
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2.extras
import pytest

from poller.model import DataType, FunctionCode
from poller.plan import plan_reads
from poller.store import DEVICE_TYPES_SQL, METERS_SQL, REGISTERS_SQL, build_configuration
from tests.servers import Postgres

ROOT = Path(__file__).resolve().parent.parent
MAPS_DIR = ROOT / "db" / "maps"
MAP_FILES = sorted(MAPS_DIR.glob("*.sql"))

# The device families the library promises (file name -> device_types.name).
REQUIRED = {
    "eastron_sdm120.sql": "eastron_sdm120",
    "eastron_sdm72.sql": "eastron_sdm72",
    "eastron_sdm630.sql": "eastron_sdm630",
    "carlo_gavazzi_em340.sql": "carlo_gavazzi_em340",
    "sunspec_inverter.sql": "sunspec_inverter",
    "sunspec_meter.sql": "sunspec_meter",
    "huawei_sun2000.sql": "huawei_sun2000",
    "sma_sunny_tripower.sql": "sma_sunny_tripower",
    # meter families of issue 12 (tests/test_map_library.py reads each back through the simulator)
    "eastron_sdm230.sql": "eastron_sdm230",
    "abb_b2x.sql": "abb_b2x",
    "janitza_umg96rm.sql": "janitza_umg96rm",
    "schneider_iem3x50.sql": "schneider_iem3x50",
    "siemens_pac.sql": "siemens_pac",
    "chint_dtsu666.sql": "chint_dtsu666",
    "carlo_gavazzi_em24.sql": "carlo_gavazzi_em24",
    "orno_we514.sql": "orno_we514",
    "orno_we517.sql": "orno_we517",
    "socomec_countis_e2x.sql": "socomec_countis_e2x",
    # PV, inverter and gateway families of issue 12
    "fronius_smart_meter_float.sql": "fronius_smart_meter_float",
    "fronius_inverter_float.sql": "fronius_inverter_float",
    "solaredge_meter.sql": "solaredge_meter",
    "growatt_inverter.sql": "growatt_inverter",
    "goodwe_et.sql": "goodwe_et",
    "sungrow_sh.sql": "sungrow_sh",
    "kostal_plenticore.sql": "kostal_plenticore",
    "victron_gx_grid.sql": "victron_gx_grid",
    "shelly_pro_3em.sql": "shelly_pro_3em",
    # more meter and inverter families of issue 12 (30 families)
    "abb_a4x.sql": "abb_a4x",
    "inepro_pro380.sql": "inepro_pro380",
    "saia_burgess_ale3.sql": "saia_burgess_ale3",
    "solis_inverter.sql": "solis_inverter",
    "deye_hybrid.sql": "deye_hybrid",
}


def load(pg: Postgres, dbname: str, path: Path) -> None:
    """The documented one command: psql -v ON_ERROR_STOP=1 -d DB -f file."""
    done = pg.psql(dbname, "-f", str(path), check=False)
    assert done.returncode == 0, f"{path.name} failed to load:\n{done.stderr}"
    assert "ERROR" not in done.stderr, done.stderr


def load_via_stdin(pg: Postgres, dbname: str, path: Path) -> None:
    """The docker form: psql ... < file."""
    done = pg.psql(dbname, input=path.read_text(encoding="utf-8"), check=False)
    assert done.returncode == 0, f"{path.name} failed to load from stdin:\n{done.stderr}"


def type_of(path: Path) -> str:
    """The device type a map file defines (its DELETE names exactly one)."""
    names = set(re.findall(r"DELETE FROM registers WHERE type = '([^']+)'", path.read_text(encoding="utf-8")))
    assert len(names) == 1, f"{path.name}: expected one DELETE FROM registers WHERE type = '...', got {names}"
    return names.pop()


@contextmanager
def connected(pg: Postgres, dbname: str) -> Iterator:
    conn = pg.connect(dbname)
    try:
        yield conn
    finally:
        conn.close()


def fetch(conn, sql: str, *params) -> list[dict]:
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(sql, params)
        return [dict(r) for r in cur.fetchall()]


def map_rows(conn, type_name: str) -> list[tuple]:
    """The type's registers without their serial ids, for comparing loads."""
    rows = fetch(conn, """
        SELECT register_address, measurement_name, data_unit, data_type, function_code,
               byte_order, scale, value_offset, scale_factor, not_available
        FROM registers WHERE type = %s ORDER BY register_address, measurement_name""", type_name)
    return [tuple(r.values()) for r in rows]


def configuration(conn):
    """What the poller would build from this database (store's own SQL)."""
    return build_configuration(fetch(conn, DEVICE_TYPES_SQL), fetch(conn, REGISTERS_SQL), fetch(conn, METERS_SQL))


def add_meter(conn, type_name: str, slave_address: int = 1) -> None:
    with conn.cursor() as cur:
        cur.execute("INSERT INTO energy_meters (host, port, slave_address, type, description) "
                    "VALUES (%s, 502, %s, %s, %s)",
                    (f"{type_name.replace('_', '-')}.example", slave_address, type_name, f"test {type_name}"))
    conn.commit()


map_params = pytest.mark.parametrize("path", MAP_FILES, ids=[p.name for p in MAP_FILES])


# ---------------------------------------------------------------------------
# The library is complete
# ---------------------------------------------------------------------------

def test_every_required_family_has_a_map_file():
    present = {p.name for p in MAP_FILES}
    missing = sorted(set(REQUIRED) - present)
    assert not missing, f"missing map files: {missing}"
    for file_name, type_name in REQUIRED.items():
        assert type_of(MAPS_DIR / file_name) == type_name


def test_readme_lists_every_map_file():
    readme = (MAPS_DIR / "README.md").read_text(encoding="utf-8")
    for path in MAP_FILES:
        assert path.name in readme, f"db/maps/README.md does not mention {path.name}"
    assert "INSERT INTO energy_meters" in readme


# ---------------------------------------------------------------------------
# File form: citation header, transaction, idempotent statements
# ---------------------------------------------------------------------------

def _header(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines:
        if not line.startswith("--") and line.strip():
            break
        header.append(line)
    return "\n".join(header)


@map_params
def test_file_begins_with_a_citation_comment(path: Path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("-- "), f"{path.name}: must begin with a comment block"
    header = _header(path)
    for field in ("Source:", "Function code:", "Unit id:", "Addresses:"):
        assert field in header, f"{path.name}: header lacks {field!r}"
    # A citation names a document and where it is published.
    assert re.search(r"\"[^\"]{8,}\"", header), f"{path.name}: header quotes no document title"
    assert re.search(r"[a-z0-9-]+\.(com|de|org|eu)\b|github\.com", header), \
        f"{path.name}: header names no place of publication"
    assert "Cross-checked:" in header or "sunspec/models" in header


@map_params
def test_file_is_one_idempotent_transaction(path: Path):
    body = re.sub(r"--[^\n]*", "", path.read_text(encoding="utf-8"))
    statements = [s.strip() for s in body.split(";") if s.strip()]
    assert statements[0] == "BEGIN" and statements[-1] == "COMMIT", f"{path.name}: not wrapped in BEGIN/COMMIT"
    kinds = [s.split(None, 2)[0].upper() + " " + s.split(None, 2)[1].upper() for s in statements[1:-1]]
    # device_types, registers, and (optionally) the family's device_signatures
    assert kinds in (["INSERT INTO", "DELETE FROM", "INSERT INTO"],
                     ["INSERT INTO", "DELETE FROM", "INSERT INTO", "DELETE FROM", "INSERT INTO"]), \
        f"{path.name}: statements {kinds}"
    assert "ON CONFLICT (name) DO UPDATE" in statements[1]
    name = type_of(path)
    assert re.search(rf"VALUES\s*\('{name}'", statements[1]), f"{path.name}: device_types row is not {name!r}"
    # Every register row belongs to the type the file deletes.
    row_types = set(re.findall(r"^\s*\('([^']+)',", statements[3], flags=re.M))
    assert row_types == {name}, f"{path.name}: register rows for {row_types}"
    if len(statements) > 6:
        assert statements[4] == f"DELETE FROM device_signatures WHERE type = '{name}'", path.name
        sig_types = set(re.findall(r"^\s*\('([^']+)',", statements[5], flags=re.M))
        assert sig_types == {name}, f"{path.name}: signature rows for {sig_types}"


# ---------------------------------------------------------------------------
# Loading into a real database
# ---------------------------------------------------------------------------

@map_params
def test_loads_and_reloads_without_change(postgres: Postgres, database: str, path: Path):
    name = type_of(path)
    load(postgres, database, path)
    with connected(postgres, database) as conn:
        first = map_rows(conn, name)
        first_type = fetch(conn, "SELECT * FROM device_types WHERE name = %s", name)
        assert len(first) >= 5, f"{name}: only {len(first)} registers loaded"
        add_meter(conn, name)  # a meter attached in between must survive the reload
    load(postgres, database, path)
    load_via_stdin(postgres, database, path)
    with connected(postgres, database) as conn:
        assert map_rows(conn, name) == first
        assert fetch(conn, "SELECT * FROM device_types WHERE name = %s", name) == first_type
        counts = fetch(conn, "SELECT (SELECT count(*) FROM registers WHERE type = %s) AS regs, "
                             "(SELECT count(*) FROM device_types) AS types, "
                             "(SELECT count(*) FROM energy_meters WHERE type = %s) AS meters", name, name)[0]
        assert counts == {"regs": len(first), "types": 2, "meters": 1}  # virtual_meter + this one
        # The seed is untouched.
        assert fetch(conn, "SELECT count(*) AS n FROM registers WHERE type = 'virtual_meter'")[0]["n"] == 12


@map_params
def test_rows_pass_the_poller_validation(postgres: Postgres, database: str, path: Path):
    name = type_of(path)
    load(postgres, database, path)
    with connected(postgres, database) as conn:
        add_meter(conn, name, slave_address=3)
        n_rows = len(map_rows(conn, name))
        config = configuration(conn)
    assert config.problems == (), "\n".join(config.problems)
    dtype = config.device_types[name]
    assert len(dtype.registers) == n_rows
    meters = [m for m in config.meters if m.device_type.name == name]
    assert len(meters) == 1 and meters[0].slave_address == 3
    plan = plan_reads(dtype.registers, dtype.max_block, dtype.max_gap)
    assert sum(len(b.registers) for b in plan) == n_rows
    assert all(b.count <= dtype.max_block for b in plan)


def test_all_maps_load_together(postgres: Postgres, database: str):
    for path in MAP_FILES:
        load(postgres, database, path)
    with connected(postgres, database) as conn:
        for path in MAP_FILES:
            add_meter(conn, type_of(path))
        config = configuration(conn)
    assert config.problems == (), "\n".join(config.problems)
    assert {type_of(p) for p in MAP_FILES} <= set(config.device_types)
    assert len(config.meters) == len(MAP_FILES) + 1  # + the seeded virtual meter


def test_a_broken_map_is_rolled_back(postgres: Postgres, database: str, tmp_path: Path):
    """ON_ERROR_STOP + BEGIN/COMMIT: a failing file leaves the previous map intact."""
    good = MAPS_DIR / "eastron_sdm120.sql"
    load(postgres, database, good)
    with connected(postgres, database) as conn:
        before = map_rows(conn, "eastron_sdm120")
    text = good.read_text(encoding="utf-8")
    # A later row with an unknown data_type fails after the DELETE has run.
    bad = "'energy_import', 'kWh', 9, 4,"
    broken_text = text.replace("'energy_import', 'kWh', 3, 4,", bad).replace(
        "single-phase meter (input", "BROKEN single-phase meter (input")
    assert bad in broken_text and "BROKEN" in broken_text
    broken = tmp_path / "broken.sql"
    broken.write_text(broken_text, encoding="utf-8")
    done = postgres.psql(database, "-f", str(broken), check=False)
    assert done.returncode != 0 and "data_type" in done.stderr
    with connected(postgres, database) as conn:
        assert map_rows(conn, "eastron_sdm120") == before and len(before) == 14
        desc = fetch(conn, "SELECT description FROM device_types WHERE name = 'eastron_sdm120'")[0]["description"]
        assert "BROKEN" not in desc


# ---------------------------------------------------------------------------
# Map content, as the poller sees it after validation
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def loaded(postgres: Postgres) -> dict:
    """Every map loaded once into one database -> {type: DeviceType}."""
    name = "maps_all_" + uuid.uuid4().hex[:8]
    postgres.create_database(name)
    try:
        for path in MAP_FILES:
            load(postgres, name, path)
        conn = postgres.connect(name)
        try:
            config = configuration(conn)
        finally:
            conn.close()
    finally:
        postgres.drop_database(name)
    assert config.problems == ()
    return {type_of(p): config.device_types[type_of(p)] for p in MAP_FILES}


def test_no_two_registers_of_a_type_overlap(loaded: dict):
    for name, dtype in loaded.items():
        by_fc: dict[FunctionCode, list] = {}
        for reg in dtype.registers:
            by_fc.setdefault(reg.function_code, []).append(reg)
        for fc, regs in by_fc.items():
            regs.sort(key=lambda r: r.address)
            for a, b in itertools.pairwise(regs):
                assert a.end <= b.address, (f"{name} fc{int(fc)}: {a.measurement} ({a.address}..{a.end - 1}) "
                                            f"overlaps {b.measurement} at {b.address}")


def test_sdm630_reads_in_at_most_three_requests(loaded: dict):
    sdm = loaded["eastron_sdm630"]
    blocks = plan_reads(sdm.registers, sdm.max_block, sdm.max_gap)
    # the three requests the map's header comment promises
    assert [str(b) for b in blocks] == ["fc4 0..79", "fc4 200..251", "fc4 342..363"]
    assert all(b.count <= 80 for b in blocks), "Eastron: at most 40 parameters (80 registers) per request"
    # The planner's full Modbus limit must not need more either.
    assert len(plan_reads(sdm.registers, 125, sdm.max_gap)) <= 3
    assert len(sdm.registers) >= 50, "the SDM630 map should carry its main electrical values"


# Each map's requests, worked out by hand from its rows and limits (and, where the header
# comment states them, as it states them); a change to a map or to the planner that reads a
# family differently shows here.
HAND_PLANS = {
    "carlo_gavazzi_em340": ["fc4 0..19", "fc4 20..39", "fc4 40..55", "fc4 64..69", "fc4 78..81"],  # max 20
    "eastron_sdm120": ["fc4 0..37", "fc4 70..79", "fc4 342..345"],
    "eastron_sdm630": ["fc4 0..79", "fc4 200..251", "fc4 342..363"],
    "eastron_sdm72": ["fc4 0..57", "fc4 60..75", "fc4 200..225", "fc4 342..345", "fc4 1280..1283"],
    "huawei_sun2000": ["fc3 32016..32023", "fc3 32064..32115"],
    # max_gap 0, "seven requests": the uint64 yields, then the runs of 32-bit values
    "sma_sunny_tripower": ["fc3 30513..30520", "fc3 30769..30788", "fc3 30803..30806", "fc3 30813..30814",
                           "fc3 30953..30954", "fc3 30957..30962", "fc3 30977..30982"],
    "sunspec_inverter": ["fc3 40069..40108"],  # model 101..103 after its two header registers
    "sunspec_meter": ["fc3 40069..40123"],
    # issue 12 meters; each file's header comment states its requests where a source constrains them
    "eastron_sdm230": ["fc4 0..37", "fc4 70..79", "fc4 342..345"],
    "abb_b2x": ["fc3 20480..20487", "fc3 21600..21623", "fc3 23296..23357"],  # 0x5000, 0x5460, 0x5B00 blocks
    "janitza_umg96rm": ["fc3 19000..19077"],
    "schneider_iem3x50": ["fc3 2999..3076", "fc3 3109..3110", "fc3 3203..3226", "fc3 3517..3528"],
    "siemens_pac": ["fc4 1..70", "fc4 801..812"],
    "chint_dtsu666": ["fc3 4126..4143", "fc3 8198..8241", "fc3 8260..8261"],  # 0x101E.., 0x2006.., 0x2044
    "carlo_gavazzi_em24": ["fc4 0..5", "fc4 12..23", "fc4 40..41", "fc4 50..55", "fc4 66..75", "fc4 92..93"],
    "orno_we514": ["fc3 304..305", "fc3 313..314", "fc3 320..321", "fc3 328..329", "fc3 336..337",
                   "fc3 344..344", "fc3 40960..40961", "fc3 40990..40991"],  # max_gap 0
    "orno_we517": ["fc3 14..59", "fc3 256..297"],
    "socomec_countis_e2x": ["fc3 50520..50555", "fc3 50946..50953"],
    # issue 12 PV / inverter / gateway families
    "fronius_smart_meter_float": ["fc3 40069..40144"],  # model 213; PF 40121..40128 bridged
    "fronius_inverter_float": ["fc3 40069..40118"],  # model 113 up to StVnd
    "solaredge_meter": ["fc3 40188..40242"],  # sunspec_meter's block + 119
    "growatt_inverter": ["fc4 0..10", "fc4 35..56", "fc4 93..94"],  # max 45 per request
    "goodwe_et": ["fc3 35103..35202"],  # max_gap 40: the library reads the block whole
    "sungrow_sh": ["fc4 5007..5034", "fc4 5241..5241", "fc4 12999..13003", "fc4 13030..13046"],
    "kostal_plenticore": ["fc3 56..57", "fc3 98..101", "fc3 150..179", "fc3 258..287", "fc3 320..323"],
    "victron_gx_grid": ["fc3 2616..2648"],
    "shelly_pro_3em": ["fc4 1013..1069", "fc4 1162..1165"],
    # more families: the B-series blocks plus the reactive accumulators 0x500C..0x5013
    "abb_a4x": ["fc3 20480..20499", "fc3 21600..21623", "fc3 23296..23357"],
    "inepro_pro380": ["fc3 20482..20529", "fc3 24576..24637"],  # 0x5002..0x5031, 0x6000..0x603D (tariffs bridged)
    "saia_burgess_ale3": ["fc3 27..51"],  # registers 28..52 in one request
    "solis_inverter": ["fc4 3004..3024", "fc4 3033..3042"],  # max_gap 7: 3025..3032 not read
    "deye_hybrid": ["fc3 76..112", "fc3 150..187"],
}


def test_each_map_reads_in_the_requests_worked_out_by_hand(loaded: dict):
    assert set(HAND_PLANS) == set(loaded)
    for name, dtype in loaded.items():
        blocks = plan_reads(dtype.registers, dtype.max_block, dtype.max_gap)
        assert [str(b) for b in blocks] == HAND_PLANS[name], name


def test_request_limits_of_device_families(loaded: dict):
    assert loaded["huawei_sun2000"].max_block <= 64
    assert loaded["huawei_sun2000"].request_pause_s > 0
    assert loaded["carlo_gavazzi_em340"].max_block <= 20
    assert loaded["sma_sunny_tripower"].max_gap == 0
    for name in ("eastron_sdm120", "eastron_sdm72", "eastron_sdm630"):
        assert loaded[name].max_block <= 80


UNITS: list[tuple[str, set[str | None]]] = [  # shared vocabulary: a name means one quantity in one unit family
    (r"voltage_(l\d(_l\d)?|ln_average|ll_average)|dc_voltage(_\d)?", {"V"}),
    (r"current_(l\d|total|average|neutral)|dc_current(_\d)?", {"A"}),
    (r"active_power(_l\d|_import|_export)?|dc_power(_\d)?", {"W"}),
    (r"reactive_power(_l\d)?", {"var"}),
    (r"apparent_power(_l\d)?", {"VA"}),
    (r"frequency", {"Hz"}),
    (r"energy_(import|export|total|yield)(_l\d|_today)?", {"Wh", "kWh"}),
    (r"energy_reactive_(import|export|total)", {"varh", "kvarh"}),
    (r"power_factor(_l\d)?|sf_\w+|sunspec_model_id|operating_state\w*", {None}),
    (r"temperature\w*", {"°C"}),
    (r"(voltage|current)_thd_\w+|efficiency", {"%"}),
    (r"phase_angle(_l\d)?", {"°"}),
]


def test_names_follow_the_shared_vocabulary(loaded: dict):
    for name, dtype in loaded.items():
        for reg in dtype.registers:
            assert re.fullmatch(r"[a-z][a-z0-9_]*", reg.measurement), f"{name}.{reg.measurement}: not snake_case"
            units = [u for pattern, u in UNITS if re.fullmatch(pattern, reg.measurement)]
            assert units, f"{name}.{reg.measurement}: not in the shared vocabulary"
            assert reg.unit in units[0], f"{name}.{reg.measurement}: unit {reg.unit!r}, expected one of {units[0]}"


def test_every_map_has_the_core_values(loaded: dict):
    core = {"active_power", "frequency", "voltage_l1", "current_l1"}
    per_phase_power = {"active_power_l1", "active_power_l2", "active_power_l3"}
    for name, dtype in loaded.items():
        have = {r.measurement for r in dtype.registers}
        if per_phase_power <= have and name == "victron_gx_grid":
            have |= {"active_power"}  # the GX grid service publishes the phases only, no total
        if name == "saia_burgess_ale3":
            have |= {"frequency"}  # the ALE3's 52 registers hold no frequency (SBC datasheet)
        assert core <= have, f"{name}: lacks {sorted(core - have)}"
        # energy_total: meters that count one total only (ORNO OR-WE-514)
        assert have & {"energy_import", "energy_yield", "energy_total"}, f"{name}: no energy counter"


def test_sunspec_values_use_scale_factors_and_sentinels(loaded: dict):
    for name in ("sunspec_inverter", "sunspec_meter"):
        regs = {r.measurement: r for r in loaded[name].registers}
        sfs = {m for m in regs if m.startswith("sf_")}
        assert len(sfs) >= 6
        for m in sfs:
            assert regs[m].data_type is DataType.INT16 and regs[m].not_available == -32768, f"{name}.{m}"
        used = set()
        for m, reg in regs.items():
            assert reg.function_code is FunctionCode.READ_HOLDING_REGISTERS
            if reg.unit is not None or m.startswith("power_factor"):
                assert reg.scale_factor in sfs, f"{name}.{m}: physical value without a SunSpec scale factor"
                used.add(reg.scale_factor)
                expected_na = {DataType.INT16: -32768, DataType.UINT16: 65535, DataType.UINT32: 0}
                assert reg.not_available == expected_na[reg.data_type], f"{name}.{m}: sentinel {reg.not_available}"
        assert used == sfs, f"{name}: unused scale factors {sfs - used}"
        # Every scale factor sits inside the model block, close to its values.
        for reg in regs.values():
            if reg.scale_factor:
                assert 0 < regs[reg.scale_factor].address - reg.address < 20


# Pinned against the cited sources: (type, measurement) -> (address, data type, fc, order, scale).
GOLDEN = {
    ("eastron_sdm630", "voltage_l1"): (0, DataType.FLOAT32, 4, "ABCD", 1),
    ("eastron_sdm630", "active_power"): (0x34, DataType.FLOAT32, 4, "ABCD", 1),
    ("eastron_sdm630", "energy_import"): (0x48, DataType.FLOAT32, 4, "ABCD", 1),
    ("eastron_sdm630", "energy_total"): (0x156, DataType.FLOAT32, 4, "ABCD", 1),
    ("eastron_sdm120", "frequency"): (0x46, DataType.FLOAT32, 4, "ABCD", 1),
    ("eastron_sdm72", "active_power_import"): (0x500, DataType.FLOAT32, 4, "ABCD", 1),
    ("carlo_gavazzi_em340", "active_power"): (0x28, DataType.INT32, 4, "CDAB", 0.1),
    ("carlo_gavazzi_em340", "current_l1"): (0x0C, DataType.INT32, 4, "CDAB", 0.001),
    ("carlo_gavazzi_em340", "frequency"): (0x33, DataType.INT16, 4, "ABCD", 0.1),
    ("carlo_gavazzi_em340", "energy_export"): (0x4E, DataType.INT32, 4, "CDAB", 0.1),
    ("sunspec_inverter", "sunspec_model_id"): (40069, DataType.UINT16, 3, "ABCD", 1),
    ("sunspec_inverter", "active_power"): (40083, DataType.INT16, 3, "ABCD", 1),
    ("sunspec_inverter", "energy_yield"): (40093, DataType.UINT32, 3, "ABCD", 1),
    ("sunspec_meter", "active_power"): (40087, DataType.INT16, 3, "ABCD", 1),
    ("sunspec_meter", "energy_import"): (40115, DataType.UINT32, 3, "ABCD", 1),
    ("huawei_sun2000", "active_power"): (32080, DataType.INT32, 3, "ABCD", 1),
    ("huawei_sun2000", "dc_power"): (32064, DataType.INT32, 3, "ABCD", 1),
    ("huawei_sun2000", "dc_voltage_1"): (32016, DataType.INT16, 3, "ABCD", 0.1),
    ("huawei_sun2000", "energy_yield"): (32106, DataType.UINT32, 3, "ABCD", 0.01),
    ("sma_sunny_tripower", "active_power"): (30775, DataType.INT32, 3, "ABCD", 1),
    ("sma_sunny_tripower", "energy_yield"): (30513, DataType.UINT64, 3, "ABCD", 1),
    ("sma_sunny_tripower", "current_l1"): (30977, DataType.INT32, 3, "ABCD", 0.001),
    ("eastron_sdm230", "energy_import"): (0x48, DataType.FLOAT32, 4, "ABCD", 1),
    ("abb_b2x", "voltage_l1"): (0x5B00, DataType.UINT32, 3, "ABCD", 0.1),
    ("abb_b2x", "energy_import"): (0x5000, DataType.UINT64, 3, "ABCD", 0.01),
    ("janitza_umg96rm", "active_power"): (19026, DataType.FLOAT32, 3, "ABCD", 1),
    ("schneider_iem3x50", "energy_import"): (3203, DataType.INT64, 3, "ABCD", 1),
    ("siemens_pac", "frequency"): (55, DataType.FLOAT32, 4, "ABCD", 1),
    ("chint_dtsu666", "voltage_l1"): (0x2006, DataType.FLOAT32, 3, "ABCD", 0.1),
    ("carlo_gavazzi_em24", "frequency"): (0x37, DataType.INT16, 4, "ABCD", 0.1),
    ("orno_we514", "voltage_l1"): (0x131, DataType.UINT16, 3, "ABCD", 0.01),
    ("orno_we517", "active_power"): (0x1C, DataType.FLOAT32, 3, "ABCD", 1000),
    ("socomec_countis_e2x", "voltage_l1"): (0xC558, DataType.UINT32, 3, "ABCD", 0.01),
    ("fronius_smart_meter_float", "active_power"): (40097, DataType.FLOAT32, 3, "ABCD", 1),  # 213:W, offset 28
    ("fronius_smart_meter_float", "energy_import"): (40137, DataType.FLOAT32, 3, "ABCD", 1),  # 213:TotWhImp, 68
    ("fronius_inverter_float", "energy_yield"): (40101, DataType.FLOAT32, 3, "ABCD", 1),  # 113:WH, offset 32
    ("solaredge_meter", "sunspec_model_id"): (40188, DataType.UINT16, 3, "ABCD", 1),
    ("solaredge_meter", "energy_import"): (40234, DataType.UINT32, 3, "ABCD", 1),
    ("growatt_inverter", "active_power"): (35, DataType.INT32, 4, "ABCD", 0.1),
    ("growatt_inverter", "energy_yield"): (55, DataType.UINT32, 4, "ABCD", 0.1),
    ("goodwe_et", "dc_power_1"): (35105, DataType.UINT32, 3, "ABCD", 1),
    ("goodwe_et", "energy_yield"): (35191, DataType.UINT32, 3, "ABCD", 0.1),
    ("sungrow_sh", "dc_power"): (5016, DataType.UINT32, 4, "CDAB", 1),  # register 5017
    ("sungrow_sh", "energy_yield"): (13002, DataType.UINT32, 4, "CDAB", 0.1),  # register 13003
    ("kostal_plenticore", "dc_power"): (100, DataType.FLOAT32, 3, "CDAB", 1),
    ("kostal_plenticore", "energy_yield"): (320, DataType.FLOAT32, 3, "CDAB", 1),
    ("victron_gx_grid", "voltage_l1"): (2616, DataType.UINT16, 3, "ABCD", 0.1),
    ("victron_gx_grid", "energy_import"): (2634, DataType.UINT32, 3, "ABCD", 0.01),
    ("shelly_pro_3em", "active_power"): (1013, DataType.FLOAT32, 4, "CDAB", 1),  # 31013
    ("shelly_pro_3em", "energy_import"): (1162, DataType.FLOAT32, 4, "CDAB", 1),  # 31162
    ("abb_a4x", "voltage_l1"): (0x5B00, DataType.UINT32, 3, "ABCD", 0.1),
    ("abb_a4x", "energy_reactive_import"): (0x500C, DataType.UINT64, 3, "ABCD", 0.01),  # A43/A44 manual p. 108
    ("inepro_pro380", "voltage_l1"): (0x5002, DataType.FLOAT32, 3, "ABCD", 1),
    ("inepro_pro380", "active_power"): (0x5012, DataType.FLOAT32, 3, "ABCD", 1000),  # kW
    ("inepro_pro380", "energy_import"): (0x600C, DataType.FLOAT32, 3, "ABCD", 1),
    ("saia_burgess_ale3", "energy_import"): (27, DataType.UINT32, 3, "ABCD", 0.01),  # register 28-29 WT1
    ("saia_burgess_ale3", "voltage_l1"): (35, DataType.UINT16, 3, "ABCD", 1),  # register 36
    ("saia_burgess_ale3", "active_power"): (50, DataType.INT16, 3, "ABCD", 10),  # register 51, 0.01 kW
    ("solis_inverter", "active_power"): (3004, DataType.UINT32, 4, "ABCD", 1),  # register 3005
    ("solis_inverter", "energy_yield"): (3008, DataType.UINT32, 4, "ABCD", 1),  # register 3009, kWh
    ("solis_inverter", "frequency"): (3042, DataType.UINT16, 4, "ABCD", 0.01),  # register 3043
    ("deye_hybrid", "active_power"): (175, DataType.INT16, 3, "ABCD", 1),
    ("deye_hybrid", "energy_yield"): (96, DataType.UINT32, 3, "CDAB", 0.1),  # 96 low word, 97 high
    ("deye_hybrid", "frequency"): (79, DataType.UINT16, 3, "ABCD", 0.01),
}


@pytest.mark.parametrize("key", sorted(GOLDEN), ids=[".".join(k) for k in sorted(GOLDEN)])
def test_pinned_registers(loaded: dict, key: tuple[str, str]):
    name, measurement = key
    regs = {r.measurement: r for r in loaded[name].registers}
    reg = regs[measurement]
    address, data_type, fc, order, scale = GOLDEN[key]
    assert (reg.address, reg.data_type, int(reg.function_code), reg.byte_order.value) == (address, data_type, fc, order)
    assert reg.scale == pytest.approx(scale)


def test_sunspec_inverter_block_matches_model_103_layout(loaded: dict):
    """Offsets from the model ID follow sunspec/models json/model_103.json."""
    offsets = {"current_total": 2, "sf_current": 6, "voltage_l1": 10, "sf_voltage": 13, "active_power": 14,
               "sf_power": 15, "frequency": 16, "power_factor": 22, "energy_yield": 24, "sf_energy": 26,
               "dc_power": 31, "temperature": 33, "sf_temperature": 37, "operating_state": 38}
    regs = {r.measurement: r for r in loaded["sunspec_inverter"].registers}
    base = regs["sunspec_model_id"].address
    for m, off in offsets.items():
        assert regs[m].address - base == off, m


def test_sunspec_meter_block_matches_model_203_layout(loaded: dict):
    """Offsets from the model ID follow sunspec/models json/model_203.json."""
    offsets = {"current_total": 2, "sf_current": 6, "voltage_ln_average": 7, "voltage_l1": 8, "sf_voltage": 15,
               "frequency": 16, "active_power": 18, "sf_power": 22, "power_factor": 33, "sf_power_factor": 37,
               "energy_export": 38, "energy_import": 46, "sf_energy": 54}
    regs = {r.measurement: r for r in loaded["sunspec_meter"].registers}
    base = regs["sunspec_model_id"].address
    for m, off in offsets.items():
        assert regs[m].address - base == off, m


def test_sunspec_float_blocks_match_models_213_and_113(loaded: dict):
    """Offsets from the model ID follow sunspec/models json/model_213.json and model_113.json (float32)."""
    layouts = {
        "fronius_smart_meter_float": {"current_total": 2, "voltage_l1": 12, "frequency": 26, "active_power": 28,
                                      "reactive_power": 44, "energy_export": 60, "energy_import": 68},
        "fronius_inverter_float": {"current_total": 2, "voltage_l1_l2": 10, "voltage_l1": 16, "active_power": 22,
                                   "frequency": 24, "power_factor": 30, "energy_yield": 32, "dc_power": 38,
                                   "operating_state": 48},
    }
    for name, offsets in layouts.items():
        regs = {r.measurement: r for r in loaded[name].registers}
        base = regs["sunspec_model_id"].address
        assert base == 40069, name
        for m, off in offsets.items():
            assert regs[m].address - base == off, f"{name}.{m}"


def test_solaredge_meter_is_the_sunspec_meter_block_119_registers_later(loaded: dict):
    """SolarEdge serves meter 1's model 203 at 40188 (model id), the int+SF block of sunspec_meter at 40069."""
    def rows(name: str, shift: int) -> list[tuple]:
        return sorted((r.address + shift, r.measurement, r.data_type, r.scale, r.scale_factor, r.not_available,
                       r.counter) for r in loaded[name].registers)
    assert rows("solaredge_meter", 0) == rows("sunspec_meter", 119)
