"""python -m virtual_server: serve simulated meters over Modbus TCP, RTU over TCP, UDP or serial RTU.

The register maps come from the configuration database (the same POSTGRES_*
settings as the poller), so what is served is exactly what the poller reads.

    python -m virtual_server                           # Modbus TCP on 127.0.0.1:502
    python -m virtual_server --port 4196 --framer rtu  # RTU over TCP (a transparent serial server)
    python -m virtual_server --udp --port 1502         # Modbus UDP
    python -m virtual_server --serial /dev/pts/3       # RTU on a serial line, 9600 8N1
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import signal
import sys
import time

from poller.config import ConfigError, ConfigSource
from poller.logsafe import setup_logging
from poller.model import Register
from poller.onboard.signatures import Signature
from poller.onboard.signatures import read_signatures as select_signatures
from poller.settings import SettingsError, from_env, load_env_file

from .device import make_device
from .server import Framer, SimulatedServer
from .sunspec import sunspec_units

log = logging.getLogger("virtual_server")


def tcp_port(text: str) -> int:
    """--port: a whole number 0..65535 (0: any free port), else a usage error (exit 2)."""
    try:
        port = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0..65535)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is outside 0..65535")
    return port


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m virtual_server",
        description="Serve simulated meters over Modbus TCP, RTU over TCP, UDP or serial RTU (functions 3 "
                    "and 4), with register maps read from the configuration database (POSTGRES_* settings, "
                    ".dev.env).")
    # loopback unless asked: run by hand, a simulated meter is no business of the network
    # (docker-compose.yml passes --host 0.0.0.0, so the poller's container reaches it)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; "
                   "0.0.0.0 for every address)")
    p.add_argument("--port", type=tcp_port, default=502, help="TCP or UDP port (default 502)")
    p.add_argument("--framer", choices=("socket", "rtu"), default=None,
                   help="socket: Modbus TCP (MBAP header, the default); rtu: RTU frames with CRC over TCP "
                        "(or UDP), as a transparent serial server passes them")
    wire = p.add_mutually_exclusive_group()
    wire.add_argument("--udp", action="store_true", help="serve over UDP instead of TCP")
    wire.add_argument("--serial", metavar="DEVICE",
                      help="serve RTU on a serial device instead, e.g. one end of a pty pair made with "
                           "`socat -d -d pty,raw,echo=0 pty,raw,echo=0` (--host and --port are then unused)")
    p.add_argument("--baudrate", type=int, default=9600, help="serial: baud rate (default 9600)")
    p.add_argument("--parity", type=parity, default="N", help="serial: none, even or odd (N, E, O; default none)")
    p.add_argument("--stopbits", type=int, choices=(1, 2), default=1, help="serial: stop bits (default 1)")
    p.add_argument("--bytesize", type=int, choices=(7, 8), default=8, help="serial: data bits (default 8)")
    p.add_argument("--device-type", default=None,
                   help="device type served at every unit id (default virtual_meter; with --sunspec alone, none)")
    p.add_argument("--unit", action="append", default=[], metavar="ID=TYPE",
                   help="serve TYPE at unit ID only (repeatable); other unit ids get --device-type")
    p.add_argument("--sunspec", action="append", default=[], metavar="UNIT=MODELS[@BASE]",
                   help="serve a simulated SunSpec device at UNIT (repeatable), e.g. 1=1,103,120,160x2,203@40000 "
                        "(160x2: two MPPT modules; BASE 0, 40000 or 50000); alone, without --unit or "
                        "--device-type, it needs no database and other unit ids are not served")
    p.add_argument("--seed", type=int, default=None, help="random seed, for repeatable values")
    p.add_argument("--frozen", action="store_true", help="values never change after start")
    p.add_argument("--strict", action="store_true",
                   help="answer 'illegal data address' for addresses no register covers")
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before every reply")
    p.add_argument("--log-requests", action="store_true", help="log every request received")
    p.add_argument("--env-file", default=".dev.env", help="settings file loaded when present")
    args = p.parse_args(argv)
    if args.serial and args.framer == "socket":
        p.error("--framer socket: a serial line carries RTU frames")
    return args


def parity(text: str) -> str:
    """--parity: none/even/odd or N/E/O, any case, as pyserial's letter."""
    letter = {"none": "N", "even": "E", "odd": "O"}.get(text.lower(), text.upper())
    if letter not in ("N", "E", "O"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a parity (none, even or odd)")
    return letter


async def start(server: SimulatedServer, args: argparse.Namespace) -> str | None:
    """Start serving as the arguments say: where it serves, or None (logged) when it cannot."""
    framer: Framer = args.framer or "socket"
    kind = {"socket": "Modbus", "rtu": "RTU over"}[framer]
    try:
        if args.serial:
            await server.start_serial(args.serial, baudrate=args.baudrate, parity=args.parity,
                                      stopbits=args.stopbits, bytesize=args.bytesize)
            return f"serial RTU on {args.serial} {args.baudrate} {args.bytesize}{args.parity}{args.stopbits}"
        if args.udp:
            port = await server.start_udp(args.host, args.port, framer=framer)
            return f"{kind} UDP on {args.host}:{port}"
        port = await server.start_tcp(args.host, args.port, framer=framer)
        return f"{kind} TCP on {args.host}:{port}"
    except OSError as exc:
        if args.serial:
            log.error("cannot open serial device %s: %s", args.serial, exc.strerror or exc)
            return None
        hint = {errno.EADDRINUSE: ": another process listens there; choose another --port",
                errno.EACCES: ": ports below 1024 need privileges; choose --port 1502 or another"}
        log.error("cannot listen on %s:%d%s: %s%s", args.host, args.port, " (udp)" if args.udp else "",
                  exc.strerror or exc, hint.get(exc.errno or 0, ""))
        return None


def read_signatures(source: ConfigSource, wanted: set[str]) -> dict[str, tuple[Signature, ...]]:
    """The device_signatures rows of the wanted types (none from a database older than the table);
    a plain SELECT on the configuration's own connection settings (the poller never reads them)."""
    import psycopg2

    try:
        conn = psycopg2.connect(**source.dsn())
    except psycopg2.Error as exc:
        raise ConfigError(f"cannot read device_signatures from {source.where}: {' '.join(str(exc).split())}") from None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('device_signatures') IS NOT NULL")
            if not cur.fetchone()[0]:
                return {}
            return select_signatures(cur, wanted)
    except psycopg2.Error as exc:
        raise ConfigError(f"cannot read device_signatures from {source.where}: {' '.join(str(exc).split())}") from None
    finally:
        conn.close()


async def load_types(wanted: set[str], stop: asyncio.Event
                     ) -> dict[str, tuple[tuple[Register, ...], tuple[Signature, ...]]] | None:
    """Wait for the database, then the register map and the signature rows of every wanted type."""
    source = ConfigSource(from_env())
    signatures: dict[str, tuple[Signature, ...]] = {}
    try:
        while not stop.is_set():
            try:
                config = await asyncio.to_thread(source.load)
                signatures.update(await asyncio.to_thread(read_signatures, source, wanted))
                break
            except ConfigError as exc:
                log.warning("%s; trying again in 2 s", exc)
                try:
                    await asyncio.wait_for(stop.wait(), 2)
                except TimeoutError:
                    pass
        else:
            return None
    finally:
        source.close()
    missing = sorted(t for t in wanted if t not in config.device_types or not config.device_types[t].registers)
    if missing:
        known = ", ".join(sorted(config.device_types)) or "none"
        raise SystemExit(f"device type(s) {', '.join(missing)} not in the database or without registers "
                         f"(known: {known})")
    return {t: (config.device_types[t].registers, signatures.get(t, ())) for t in wanted}


async def serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    unit_types: dict[int, str] = {}
    for spec in args.unit:
        uid, _, tname = spec.partition("=")
        if not uid.isdigit() or not 0 <= int(uid) <= 255 or not tname:
            raise SystemExit(f"--unit {spec!r}: expected ID=TYPE with ID 0..255")
        unit_types[int(uid)] = tname
    sunspec = sunspec_units(args.sunspec)
    sunspec_only = bool(sunspec) and not unit_types and args.device_type is None
    args.device_type = args.device_type or "virtual_meter"
    wanted = {args.device_type, *unit_types.values()}
    maps = {} if sunspec_only else await load_types(wanted, stop)
    if maps is None:
        return 0
    try:
        devices = {name: make_device(name, regs, args.seed, sigs) for name, (regs, sigs) in maps.items()}
    except ValueError as exc:  # a signature row its own map contradicts
        raise SystemExit(f"device_signatures: {exc}") from None

    # what each type serves now, encoded once per step rather than once per request
    served = {name: dev.words() for name, dev in devices.items()}

    def bank(name: str):  # type: ignore[no-untyped-def]
        return lambda: served[name]

    server = SimulatedServer(
        units={**{uid: bank(t) for uid, t in unit_types.items()}, **{u: d.bank for u, d in sunspec.items()}},
        default=None if sunspec_only else bank(args.device_type),
        latency_s=args.latency_ms / 1000.0,
        strict=args.strict,
        log_requests=args.log_requests,
    )
    where = await start(server, args)
    if where is None:
        return 2
    log.info("serving %s over %s (%s)", ", ".join([*sorted(devices), *(f"SunSpec unit {u}" for u in sunspec)]),
             where,
             "frozen values" if args.frozen else "values change every second")
    last = time.monotonic()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
        now = time.monotonic()
        if not args.frozen:
            for name, dev in devices.items():
                dev.step(now - last)
                served[name] = dev.words()
        last = now
    await server.stop()
    log.info("stopped after %d requests", server.stats.requests)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(logging.INFO)
    # pymodbus logs its own startup and a failed listen (reported here, once); its errors stay
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    load_env_file(args.env_file)
    try:
        return asyncio.run(serve(args))
    except SettingsError as exc:
        log.error("setting: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
