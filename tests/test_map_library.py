"""The whole register-map library (db/maps/*.sql, every file, including ones added later) read
back through the real simulator and the poller's own cycle, and the families' signatures
(device_signatures) told apart by `emm scan`'s matcher over a real socket.

One PostgreSQL database holds every map; one SimulatedServer serves every family at its own
unit id with frozen values; the poller polls them all in one cycle; poller.onboard's Reader and
`identify` scan the same server with --strict semantics (only map and signature registers answer).
"""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from poller.cycle import Poller
from poller.model import ByteOrder, DataType, DeviceType, FunctionCode, Meter, Register, Transport
from poller.onboard.signatures import Signature, identify, read_signatures
from poller.onboard.wire import Reader, parse_bus
from poller.store import load_configuration
from tests.servers import ROOT, ModbusServerThread, Postgres, free_port, start_module, stop_process, wait_for_port
from virtual_server.device import VirtualDevice, make_device
from virtual_server.server import SimulatedServer

MAPS_DIR = ROOT / "db" / "maps"
MAP_FILES = sorted(MAPS_DIR.glob("*.sql"))
SEED = 7

# Families that no documented register tells apart, each with the reason; a device of one of
# them may match the other's rows (and `emm scan` then names both). Empty today: every pair in
# the library is separated by an identification code or by where and how its values sit.
INDISTINGUISHABLE: dict[frozenset[str], str] = {}

# What a counter's data_unit may be, and the largest counter_max_rate that is still plausible
# for it: 1 kWh/s is a 3.6 MW feeder, beyond any meter in this library.
COUNTER_UNITS = {"Wh": 1000.0, "kWh": 1.0, "varh": 1000.0, "kvarh": 1.0}


def type_of(path: Path) -> str:
    names = set(re.findall(r"DELETE FROM registers WHERE type = '([^']+)'", path.read_text(encoding="utf-8")))
    assert len(names) == 1, path.name
    return names.pop()


@dataclass(frozen=True)
class Library:
    types: Mapping[str, DeviceType]  # every map file's type, as the poller validated it
    signatures: Mapping[str, tuple[Signature, ...]]  # device_signatures by type


@pytest.fixture(scope="module")
def library(postgres: Postgres) -> Iterator[Library]:
    name = "library_" + uuid.uuid4().hex[:8]
    postgres.create_database(name)
    try:
        for path in MAP_FILES:
            done = postgres.psql(name, "-f", str(path), check=False)
            assert done.returncode == 0 and "ERROR" not in done.stderr, f"{path.name}:\n{done.stderr}"
        conn = postgres.connect(name)
        try:
            config = load_configuration(conn)
            with conn.cursor() as cur:
                families = read_signatures(cur)
        finally:
            conn.close()
    finally:
        postgres.drop_database(name)
    assert config.problems == (), config.problems
    names = [type_of(p) for p in MAP_FILES]
    yield Library({n: config.device_types[n] for n in names}, families)


@pytest.fixture(scope="module")
def fleet(library: Library) -> Iterator[tuple[int, dict[int, str], dict[str, VirtualDevice]]]:
    """Every family at its own unit id (1, 2, ...) of one strict server, values frozen."""
    units = {uid: name for uid, name in enumerate(sorted(library.types), start=1)}
    devices = {name: make_device(name, library.types[name].registers, SEED, library.signatures.get(name, ()))
               for name in units.values()}
    words = {name: dev.words() for name, dev in devices.items()}
    server = SimulatedServer(units={uid: (lambda w=words[name]: w) for uid, name in units.items()}, strict=True)
    thread = ModbusServerThread(server)
    try:
        yield thread.port, units, devices
    finally:
        thread.close()


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def put(self, lines) -> None:  # type: ignore[no-untyped-def]
        self.lines.extend(lines)


VALUE = re.compile(r" value=(\S+) \d+$")


def test_every_map_reads_back_exactly_what_the_simulator_serves(library: Library, fleet) -> None:
    port, units, devices = fleet
    meters = [Meter(uid, "127.0.0.1", port, uid, library.types[name], transport=Transport.TCP)
              for uid, name in units.items()]

    async def one_cycle():  # type: ignore[no-untyped-def]
        poller = Poller(Lines(), status_points=False)
        try:
            return await poller.run_cycle(meters)
        finally:
            poller.close()

    report = asyncio.run(one_cycle())
    assert len(report.results) == len(meters)
    for result in report.results:
        name = result.meter.device_type.name
        assert result.ok, f"{name}: {result.error}"
        assert result.invalid == [], f"{name}: invalid {result.invalid}"
        got: dict[str, float] = {}
        for line in result.lines:
            measurement = line.split(",", 1)[0]
            match = VALUE.search(line)
            assert match, line
            assert measurement not in got, f"{name}.{measurement} written twice"
            got[measurement] = float(match.group(1))
        served = devices[name]
        expected = {r.measurement: served.value(r.measurement) for r in result.meter.device_type.registers}
        assert set(got) == set(expected), (f"{name}: missing {sorted(set(expected) - set(got))}, "
                                           f"extra {sorted(set(got) - set(expected))}")
        for measurement, value in expected.items():
            assert got[measurement] == pytest.approx(value, rel=1e-9, abs=1e-12), f"{name}.{measurement}"
    assert report.meters_ok == len(meters)


def test_the_fleet_covers_every_map_and_most_have_signatures(library: Library) -> None:
    assert len(library.types) == len(MAP_FILES) >= 18
    assert set(library.signatures) <= set(library.types)
    mine = {"eastron_sdm120", "eastron_sdm230", "eastron_sdm72", "eastron_sdm630", "carlo_gavazzi_em340",
            "carlo_gavazzi_em24", "abb_b2x", "janitza_umg96rm", "schneider_iem3x50", "siemens_pac",
            "chint_dtsu666", "orno_we514", "orno_we517", "socomec_countis_e2x"}
    assert mine <= set(library.signatures), sorted(mine - set(library.signatures))
    for name, sigs in library.signatures.items():
        assert len(sigs) >= 2, f"{name}: one signature row identifies nothing reliably"


def matching_families(signatures: Mapping[str, tuple[Signature, ...]], answered) -> set[str]:  # type: ignore[no-untyped-def]
    """Every family whose rows all read and hold (not only the best): what a device could be taken for."""
    return {name for name, sigs in signatures.items()
            if sigs and all(s.key in answered and s.holds(answered[s.key]) for s in sigs)}


def test_each_family_is_identified_as_itself_and_matches_no_other(library: Library, fleet) -> None:
    port, units, _ = fleet
    families = dict(library.signatures)

    async def scan():  # type: ignore[no-untyped-def]
        async with Reader(parse_bus(f"127.0.0.1:{port}"), timeout_s=2.0) as reader:
            return {uid: await identify(families, reader.read, uid) for uid in units}

    found = asyncio.run(scan())
    problems = []
    for uid, name in units.items():
        ident = found[uid]
        matches = matching_families(families, ident.answered)
        allowed = {name} | {other for pair in INDISTINGUISHABLE if name in pair for other in pair}
        if name in families:
            if ident.families != [name] and not set(ident.families) <= allowed:
                problems.append(f"{name} (unit {uid}) identified as {ident.families}")
            if name not in matches:
                refused = {k: v for k, v in ident.refused.items()
                           if any(s.key == k for s in families[name])}
                problems.append(f"{name}: its own device fails its signature (refused {refused})")
        extra = matches - allowed
        if extra:
            problems.append(f"a {name} device also matches {sorted(extra)}")
    assert not problems, "\n".join(problems)


def test_a_broken_signature_range_is_not_identified(library: Library, fleet) -> None:
    """The matcher really reads: a row whose range excludes the served value fails the family."""
    port, units, devices = fleet
    uid = next(u for u, n in units.items() if n == "eastron_sdm120")
    good = library.signatures["eastron_sdm120"]
    code = next(s for s in good if s.address == 0xFC02)
    broken = {"eastron_sdm120": tuple(s if s is not code else Signature(
        s.type, s.address, s.function_code, s.data_type, s.byte_order, s.scale, 0x21, 0x21, s.description)
        for s in good)}

    async def scan(families):  # type: ignore[no-untyped-def]
        async with Reader(parse_bus(f"127.0.0.1:{port}"), timeout_s=2.0) as reader:
            return await identify(families, reader.read, uid)

    assert asyncio.run(scan({"eastron_sdm120": good})).families == ["eastron_sdm120"]
    assert asyncio.run(scan(broken)).families == []


def test_counters_are_marked_and_their_rates_plausible(library: Library) -> None:
    """Vocabulary rule: a measurement named energy_* is a cumulative total, hence kind 'counter',
    except energy_*_today (resets at midnight); nothing else is a counter."""
    problems = []
    for name, dtype in library.types.items():
        for reg in dtype.registers:
            total = reg.measurement.startswith("energy_") and not reg.measurement.endswith("_today")
            if total != reg.counter:
                problems.append(f"{name}.{reg.measurement}: counter={reg.counter}, expected {total}")
            if reg.counter:
                assert reg.unit in COUNTER_UNITS, f"{name}.{reg.measurement}: counter in {reg.unit!r}"
            if reg.counter_max_rate is not None:
                assert 0 < reg.counter_max_rate <= COUNTER_UNITS[reg.unit or ""], f"{name}.{reg.measurement}"
                # the rate a simulated meter's counter grows at (2.5 kW) must pass the guard
                assert reg.counter_max_rate >= 2.5 / 3600 * (1000 if reg.unit in ("Wh", "varh") else 1)
    assert not problems, "\n".join(problems)


def test_direct_connected_eastron_rates_follow_the_documented_maxima(library: Library) -> None:
    """3 * 276 V * 100 A = 0.023 kWh/s, twice that 0.046 (SDM72D-M v2, SDM630); 276 V * 45 A twice
    = 0.007 (SDM120); CT-connected families carry no rate."""
    def rates(name: str) -> set[float | None]:
        return {r.counter_max_rate for r in library.types[name].registers
                if r.counter and not re.search(r"_l\d$", r.measurement)}

    assert rates("eastron_sdm72") == {0.046}
    assert rates("eastron_sdm630") == {0.046}
    assert rates("eastron_sdm120") == {0.007}
    assert 3 * 276 * 100 / 3.6e6 * 2 == pytest.approx(0.046, rel=0.01)
    assert 276 * 45 / 3.6e6 * 2 == pytest.approx(0.007, rel=0.02)
    for name in ("janitza_umg96rm", "siemens_pac", "chint_dtsu666", "abb_b2x", "schneider_iem3x50",
                 "socomec_countis_e2x", "carlo_gavazzi_em340", "carlo_gavazzi_em24"):
        assert rates(name) == {None}, name


def test_signature_rows_on_map_registers_hold_for_the_maps_values(library: Library) -> None:
    """A row on a register the map serves: the map's simulated value lies in its range (checked when
    the device is made); a row outside the map is served with a value inside."""
    for name, sigs in library.signatures.items():
        dev = make_device(name, library.types[name].registers, SEED, sigs)
        words = dev.words()
        for sig in sigs:
            key_words = [words[(int(sig.function_code), sig.address + i)] for i in range(sig.data_type.words)]
            value = sig.value(key_words)
            assert value is not None and sig.min_value <= value <= sig.max_value, f"{name}: {sig.description}"


def test_a_signature_the_map_contradicts_is_refused() -> None:
    volts = Register(1, "t", 0, "voltage_l1", "V", DataType.FLOAT32, FunctionCode.READ_INPUT_REGISTERS)
    low = Signature("t", 0, FunctionCode.READ_INPUT_REGISTERS, DataType.FLOAT32, ByteOrder.ABCD, 1, 10, 20, "V")
    with pytest.raises(ValueError, match="outside 10..20"):
        VirtualDevice([volts], seed=1, signatures=[low])
    straddling = Signature("t", 1, FunctionCode.READ_INPUT_REGISTERS, DataType.FLOAT32, ByteOrder.ABCD, 1, 0, 1, "x")
    with pytest.raises(ValueError, match="straddles"):
        VirtualDevice([volts], seed=1, signatures=[straddling])
    nothing = Signature("t", 9, FunctionCode.READ_HOLDING_REGISTERS, DataType.UINT16, ByteOrder.ABCD, 0.5, 1.1, 1.4,
                        "no whole raw value in range")
    with pytest.raises(ValueError, match="no UINT16 value"):
        VirtualDevice([volts], seed=1, signatures=[nothing])


def test_the_simulator_cli_serves_the_signature_rows(postgres: Postgres, database: str, tmp_path: Path) -> None:
    """python -m virtual_server --strict reads device_signatures: the SDM120's meter code answers."""
    postgres.psql(database, "-f", str(MAPS_DIR / "eastron_sdm120.sql"))
    port = free_port()
    proc = start_module("virtual_server", ["--port", str(port), "--strict", "--frozen", "--seed", "3",
                                           "--device-type", "eastron_sdm120"],
                        postgres.env(database), tmp_path / "sim.log")
    try:
        wait_for_port(port, proc=proc)

        async def read():  # type: ignore[no-untyped-def]
            async with Reader(parse_bus(f"127.0.0.1:{port}"), timeout_s=2.0) as reader:
                code = await reader.read(3, 0xFC02, 1, unit=1)
                volts = await reader.read(4, 0, 2, unit=1)
                return code, volts

        code, volts = asyncio.run(read())
    finally:
        stop_process(proc)
    assert code == [0x0020]
    assert 220 < Signature("t", 0, FunctionCode.READ_INPUT_REGISTERS, DataType.FLOAT32, ByteOrder.ABCD, 1, 0, 0,
                           "").value(volts) < 240  # type: ignore[operator]
    assert not math.isnan(0.0)
