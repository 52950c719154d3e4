"""`emm`: the operator's command line (also `python -m poller.onboard`).

    emm probe BUS --unit N --type T     read type T's map from the device once and show every value
    emm scan BUS [--units 1-247]        find the unit ids that answer and name each device's family
    emm sunspec BUS --unit N            a register map from a SunSpec device's models
    emm maps list | load NAME...        the register map library in db/maps/

BUS is written as the poller's buses are (poller/onboard/wire.py): 192.0.2.10[:502],
rtuovertcp:HOST:PORT, udp:HOST:PORT, /dev/ttyUSB0. Settings (POSTGRES_*) come from the
environment, with .dev.env loaded when present (--env-file), as for the poller.

Exit codes: 0 done (probe: every register read; scan: a device answered), 1 the job
failed in part (probe: some register failed; scan: nothing answered, or the bus
failed; maps: a file failed), 2 bad arguments or nothing to work with (a malformed
BUS, an unknown type or map, the database unreachable), 130 interrupted (Ctrl-C).
An operator's mistake is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ..logsafe import escape_controls
from ..model import BusAddress, DeviceType, Transport
from ..settings import Settings, SettingsError, from_env, load_env_file
from ..store import device_path_problem, host_problem
from . import maps as maps_lib
from . import probe as probe_lib
from . import scan as scan_lib
from .signatures import Signature, read_signatures
from .wire import BusSpecError, Reader, add_bus_arguments, bus_from_args

__all__ = ["OperatorError", "build_parser", "main"]

PROG = "emm"
# Why 0.5 s: a device that is there answers a one-register read within tens of milliseconds
# (at 9600 baud the frames take 17 ms, meters answer within 50-200 ms), so half a second leaves
# room for a slow device behind a gateway, and 247 unit ids that all stay silent take two minutes.
# On a serial line the transport adds the frames' own time on the wire to it.
SCAN_TIMEOUT_S = 0.5
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a job stopped by Ctrl-C


class OperatorError(Exception):
    """A mistake or a missing piece the operator can fix: one line on stderr, then `code`."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line: 'emm probe: --unit is required (emm probe --help)'."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


# --- arguments ----------------------------------------------------------------------------


def _unit_id(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 255:
        raise argparse.ArgumentTypeError(f"{text!r} is not a unit id (0..255)")
    return int(text)


def _units(text: str) -> tuple[int, ...]:
    try:
        return scan_lib.parse_units(text)
    except scan_lib.UnitsError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--units: ")) from None


def _set_timeout_default(parser: argparse.ArgumentParser, default: float | None, help_text: str) -> None:
    """--timeout as wire.add_bus_arguments made it, with this command's own default."""
    for action in parser._actions:
        if action.dest == "timeout":
            action.default, action.help = default, help_text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="EMM operator tools: check a register map on a live device, find the "
                     "devices on a bus, generate SunSpec maps, load the map library. Settings (POSTGRES_*) come "
                     "from the environment; .dev.env is loaded when present.")
    parser.add_argument("--env-file", default=".dev.env", help="settings file loaded when present (default .dev.env)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    # --env-file after the command too (emm probe ... --env-file X); SUPPRESS keeps the top one's value otherwise
    common = _Parser(add_help=False)
    common.add_argument("--env-file", default=argparse.SUPPRESS, help="settings file loaded when present")

    probe = commands.add_parser(
        "probe", parents=[common], help="read a device type's map from a live device once and show every value",
        description="Read device type T's register map from the database and read it from unit N once, as the "
                    "poller would (its planned requests, timeout and pauses); print every register with its raw "
                    "words and decoded value, or why it failed. Nothing is written. Exit 0 when every register "
                    "read, 1 when some failed, 2 on bad arguments.")
    add_bus_arguments(probe)
    _set_timeout_default(probe, None, "seconds to wait for one reply (default: the device type's timeout_s)")
    probe.add_argument("--unit", type=_unit_id, required=True, metavar="N", help="the device's unit id")
    probe.add_argument("--type", required=True, metavar="T", dest="device_type", help="the device type (its map)")
    probe.add_argument("--json", action="store_true", help="print JSON instead of a table")
    probe.set_defaults(run=run_probe)

    scan = commands.add_parser(
        "scan", parents=[common], help="find the unit ids that answer on a bus and identify each device",
        description="Ask every unit id in --units, one at a time, whether it answers (function 3, address 0, "
                    "one register; a Modbus exception reply counts as an answer, a timeout or a gateway's "
                    "exception 10/11 as nobody), then identify each device: its SunSpec models, and its family by "
                    "the device_signatures in the database. Prints a table and an energy_meters INSERT for every "
                    "device identified; --apply inserts them. Exit 0 when a device answered, 1 when none did or "
                    "the bus failed, 2 on bad arguments, 130 when interrupted (Ctrl-C: what was found so far "
                    "is printed).")
    add_bus_arguments(scan)
    _set_timeout_default(scan, SCAN_TIMEOUT_S,
                         f"seconds to wait for a unit id's reply before taking it for absent (default "
                         f"{SCAN_TIMEOUT_S:g}: a present device answers within tens of milliseconds; raise it for "
                         "slow devices or a gateway whose own RS485 timeout is longer)")
    scan.add_argument("--units", type=_units, default=scan_lib.parse_units("1-247"), metavar="LIST",
                      help="unit ids to scan: 1-247 (default), 1,3,10-20 ... (0, broadcast, is never scanned)")
    progress = scan.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_const", const="bar", default="auto",
                          help="draw the progress bar on stderr even when it is not a terminal")
    progress.add_argument("--no-progress", dest="progress", action="store_const", const="none",
                          help="no progress output")
    scan.add_argument("--apply", action="store_true",
                      help="insert the energy_meters rows printed (admin login: POSTGRES_USER, not the poller's)")
    scan.add_argument("--no-sunspec", dest="sunspec", action="store_false",
                      help="do not look for the SunSpec marker (three requests fewer per device)")
    scan.add_argument("--json", action="store_true", help="print JSON instead of the table")
    scan.set_defaults(run=run_scan)

    from .sunspec import add_parser as add_sunspec

    add_sunspec(commands)

    maps = commands.add_parser("maps", parents=[common], help="the register map library (db/maps)",
                               description="List the register maps in the library, or load them into the "
                                           "database (with the admin login, POSTGRES_USER).")
    maps_commands = maps.add_subparsers(dest="maps_command", metavar="ACTION", parser_class=_Parser)
    listing = maps_commands.add_parser("list", parents=[common], help="the maps, and whether each is loaded",
                                       description="Every map file with its device type and description, and "
                                                   "whether it is loaded (with how many registers).")
    listing.set_defaults(run=run_maps_list)
    load = maps_commands.add_parser("load", parents=[common], help="load maps into the database",
                                    description="Run map files in the database as `psql -v ON_ERROR_STOP=1 -f` "
                                                "would, each in its own transaction; NAME is the file name "
                                                "(eastron_sdm630) or the device type.")
    load.add_argument("names", nargs="*", metavar="NAME", help="map file (stem) or device type")
    load.add_argument("--all", action="store_true", help="every map in the library")
    load.set_defaults(run=run_maps_load)
    for sub in (maps, listing, load):
        sub.add_argument("--maps-dir", type=Path, default=argparse.SUPPRESS,
                         help="the library's directory (default: db/maps next to the poller package, "
                              "else in the working directory)")
    maps.set_defaults(run=lambda args: _usage(maps))
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    return 2


# --- settings and the database ------------------------------------------------------------


def settings() -> Settings:
    try:
        return from_env()
    except SettingsError as exc:
        raise OperatorError(f"setting: {exc}") from None


def _where(s: Settings) -> str:
    return f"PostgreSQL {s.postgres_user}@{s.postgres_host}:{s.postgres_port}/{s.postgres_db}"


def _pg_message(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@contextlib.contextmanager
def database(s: Settings, code: int = 2) -> Iterator[Any]:
    """A psycopg2 connection with the settings' login, closed afterwards; OperatorError when unreachable."""
    import psycopg2

    dsn = {**s.postgres_dsn(), "application_name": "emm", "connect_timeout": 10}
    try:
        connection = psycopg2.connect(**dsn)
    except psycopg2.Error as exc:
        raise OperatorError(f"cannot connect to {_where(s)}: {_pg_message(exc)}", code) from None
    try:
        yield connection
    finally:
        connection.close()


def _query(connection: Any) -> maps_lib.Query:
    def query(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with connection.cursor() as cur:
            cur.execute(sql, params or None)
            return list(cur.fetchall()) if cur.description is not None else []
    return query


def _write_refused(exc: BaseException, s: Settings) -> str:
    """What to do when the login may not write (the poller's read-only login)."""
    import psycopg2

    if isinstance(exc, psycopg2.errors.InsufficientPrivilege | psycopg2.errors.ReadOnlySqlTransaction):
        return (f"the login {s.postgres_user!r} may not write the configuration ({_pg_message(exc)}); use the "
                "admin login (POSTGRES_USER/POSTGRES_PASSWORD in .dev.env), not the poller's (POSTGRES_READER_USER, "
                "what scripts/service-env swaps in)")
    return _pg_message(exc)


def load_device_type(s: Settings, name: str) -> DeviceType:
    """Device type `name` as the poller loads it (store.Loader: every check of every column)."""
    import psycopg2

    from ..store import Loader

    with database(s) as connection:
        try:
            connection.set_session(isolation_level="REPEATABLE READ", readonly=True)
            config = Loader().load(_query(connection))
            connection.rollback()
        except psycopg2.Error as exc:
            raise OperatorError(f"cannot read the configuration from {_where(s)}: {_pg_message(exc)}") from None
    mine = [p for p in config.problems
            if f"device_types {name}:" in p or f"({name}." in p or f"type {name!r}" in p
            or p.startswith("the database predates")]
    for problem in mine:
        print(f"{PROG} probe: configuration: {escape_controls(problem)}", file=sys.stderr)
    dtype = config.device_types.get(name)
    if dtype is None:
        known = sorted(config.device_types)
        shown = ", ".join(known[:20]) + (f" ... ({len(known)} in all)" if len(known) > 20 else "")
        if mine:
            raise OperatorError(f"device type {name!r} cannot be used (see above)")
        raise OperatorError(f"device type {name!r} is not in the database (known: {shown or 'none'}); a library "
                            "map is loaded with `emm maps load NAME`")
    if not dtype.registers:
        raise OperatorError(f"device type {name!r} has no usable registers: nothing to probe")
    return dtype


def load_families(s: Settings) -> dict[str, tuple[Signature, ...]]:
    """The device_signatures rows by family (none, said once, when the database predates the table)."""
    import psycopg2

    with database(s) as connection:
        connection.set_session(readonly=True)
        try:
            with connection.cursor() as cur:
                return read_signatures(cur)
        except psycopg2.errors.UndefinedTable:
            print(f"{PROG} scan: the database has no device_signatures table (run db/upgrade.sql): "
                  "families cannot be named", file=sys.stderr)
            return {}
        except psycopg2.Error as exc:
            raise OperatorError(f"cannot read device_signatures from {_where(s)}: {_pg_message(exc)}") from None


# --- the bus ------------------------------------------------------------------------------


def bus_address(args: argparse.Namespace, unit: int | None = None) -> BusAddress:
    """The BUS argument, checked as the poller checks an energy_meters row's host."""
    address = bus_from_args(args)  # BusSpecError: main() says it in one line
    if address.transport is Transport.SERIAL:
        problem = device_path_problem(address.host)
        if problem is None and not os.path.exists(address.host):
            problem = "does not exist (is the adapter plugged in and the path right?)"
    else:
        problem = host_problem(address.host)
    if problem is not None:
        raise OperatorError(f"BUS {escape_controls(args.bus)!r}: {escape_controls(address.host)!r} {problem}")
    if unit == 0 and address.transport in (Transport.SERIAL, Transport.RTU_OVER_TCP):
        raise OperatorError("--unit 0 is the RTU broadcast address, which no device answers; give the device's "
                            "own unit id")
    return address


@contextlib.contextmanager
def interrupt_cancels(task: asyncio.Task[Any]) -> Iterator[None]:
    """Ctrl-C (SIGINT) cancels `task` once, so it can end cleanly; a second Ctrl-C stops the process."""
    loop = asyncio.get_running_loop()

    def first() -> None:
        loop.remove_signal_handler(signal.SIGINT)
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGINT, first)
        installed = True
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread: Ctrl-C stays as it is
        installed = False
    try:
        yield
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)


# --- the commands -------------------------------------------------------------------------


def run_probe(args: argparse.Namespace) -> int:
    address = bus_address(args, args.unit)
    s = settings()
    dtype = load_device_type(s, args.device_type)
    timeout = args.timeout if args.timeout is not None else dtype.timeout_s

    async def go() -> probe_lib.ProbeResult:
        async with Reader(address, timeout_s=timeout) as reader:
            return await probe_lib.probe(reader, dtype, args.unit)

    result = asyncio.run(go())
    if result.aborted and all(r.words is None for r in result.rows):
        raise OperatorError(escape_controls(result.aborted), 1)
    print(probe_lib.format_json(result) if args.json else probe_lib.format_table(result))
    return 1 if result.failed or result.aborted else 0


def run_scan(args: argparse.Namespace) -> int:
    address = bus_address(args)
    s = settings()
    families = load_families(s)
    mode = args.progress
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "lines"
    display = scan_lib.ProgressDisplay(len(args.units), mode)

    async def go() -> scan_lib.ScanReport:
        async with Reader(address, timeout_s=args.timeout) as reader:
            task = asyncio.create_task(scan_lib.scan(reader, args.units, families, display, sunspec=args.sunspec))
            with interrupt_cancels(task):
                return await task

    report = asyncio.run(go())
    if report.stopped and not report.found:
        raise OperatorError(escape_controls(report.stopped), 1)
    print(scan_lib.format_json(report) if args.json else scan_lib.format_report(report, families))
    sys.stdout.flush()
    if report.interrupted:
        print(f"{PROG} scan: interrupted after {report.scanned} of {len(report.units)} unit ids"
              + ("; nothing inserted (--apply)" if args.apply else ""), file=sys.stderr)
        return INTERRUPTED
    if args.apply:
        _apply(s, scan_lib.insert_rows(address, report.found))
    return 0 if report.found and not report.stopped else 1


def _apply(s: Settings, rows: list[tuple[scan_lib.UnitFinding, dict[str, object]]]) -> None:
    """The scan's INSERTs in one transaction, with the settings' (admin) login."""
    import psycopg2

    if not rows:
        print(f"{PROG} scan: no device identified: nothing to insert", file=sys.stderr)
        return
    inserted = 0
    with database(s, code=1) as connection:
        try:
            with connection, connection.cursor() as cur:
                for _, row in rows:
                    cur.execute(scan_lib.INSERT_SQL.format(columns=", ".join(row),
                                                           values=", ".join(["%s"] * len(row))) + " RETURNING id",
                                tuple(row.values()))
                    inserted += len(cur.fetchall())
        except psycopg2.Error as exc:
            raise OperatorError(f"--apply: nothing inserted: {_write_refused(exc, s)}", 1) from None
    print(f"{PROG} scan: inserted {inserted} energy_meters row(s)"
          + (f", {len(rows) - inserted} already there" if inserted < len(rows) else ""), file=sys.stderr)


def _maps_dir(args: argparse.Namespace) -> Path:
    given = getattr(args, "maps_dir", None)
    try:
        return Path(given) if given is not None else maps_lib.default_maps_dir()
    except maps_lib.MapsError as exc:
        raise OperatorError(str(exc)) from None


def _library(args: argparse.Namespace) -> list[maps_lib.MapFile]:
    try:
        return maps_lib.library(_maps_dir(args))
    except maps_lib.MapsError as exc:
        raise OperatorError(str(exc)) from None


def run_maps_list(args: argparse.Namespace) -> int:
    import psycopg2

    maps = _library(args)
    registers: dict[str, int] | None = None
    signatures: dict[str, int] | None = None
    problem = None
    try:
        with database(settings()) as connection:
            connection.set_session(readonly=True)
            registers, signatures = maps_lib.loaded(_query(connection))
    except OperatorError as exc:
        problem = str(exc)
    except psycopg2.Error as exc:
        problem = f"cannot read device_types: {_pg_message(exc)}"
    print(maps_lib.format_list(maps, registers, signatures))
    if problem is not None:
        print(f"{PROG} maps list: {escape_controls(problem)} (LOADED is ? for every map)", file=sys.stderr)
        return 1
    return 0


def run_maps_load(args: argparse.Namespace) -> int:
    import psycopg2

    maps = _library(args)
    if args.all == bool(args.names):
        raise OperatorError("name the maps to load (emm maps list shows them), or give --all")
    try:
        chosen = maps if args.all else [maps_lib.find_map(maps, name) for name in args.names]
    except maps_lib.MapsError as exc:
        raise OperatorError(str(exc)) from None
    s = settings()
    failed = 0
    for i, m in enumerate(chosen):
        # a session per file (a failed file leaves its session in an aborted transaction); the
        # database unreachable at the first one is a mistake in the settings (2), later a failure (1)
        with database(s, code=2 if i == 0 else 1) as connection:
            try:
                maps_lib.run_sql_file(connection, m.path)
                registers, signatures = maps_lib.loaded(_query(connection))
            except maps_lib.MapsError as exc:
                print(f"{PROG} maps load: {escape_controls(str(exc))}", file=sys.stderr)
                failed += 1
                continue
            except psycopg2.Error as exc:
                print(f"{PROG} maps load: {m.path.name}: {escape_controls(_write_refused(exc, s))}", file=sys.stderr)
                failed += 1
                continue
        for name in m.types:
            sigs = signatures.get(name, 0)
            print(f"loaded {m.path.name}: device type {name}, {registers.get(name, 0)} registers"
                  + (f", {sigs} signature rows" if sigs else ""))
    return 1 if failed else 0


# --- main ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    # poller modules log at WARNING and above; the tools report in their own words
    logging.basicConfig(level=logging.ERROR, format=f"{PROG}: %(message)s")
    load_env_file(args.env_file)
    command = " ".join(c for c in (PROG, args.command, getattr(args, "maps_command", None)) if c)
    try:
        return int(run(args))
    except OperatorError as exc:
        print(f"{command}: {escape_controls(str(exc))}", file=sys.stderr)
        return exc.code
    except BusSpecError as exc:
        print(f"{command}: {escape_controls(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return INTERRUPTED
