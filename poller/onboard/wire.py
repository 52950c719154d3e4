"""A bus named on the command line, and one reader of it that the operator tools share.

BUS is written the way an operator thinks of the wire:

    192.0.2.10            Modbus TCP, port 502
    192.0.2.10:1502       Modbus TCP, another port
    [2001:db8::7]:502     an IPv6 literal, in brackets when a port follows
    rtuovertcp:gw:4196    RTU frames over TCP (a transparent serial server)
    udp:192.0.2.10:502    Modbus UDP
    /dev/ttyUSB0          serial RTU (also serial:/dev/ttyUSB0); its line from --baudrate,
                          --parity, --stopbits, --bytesize (default 9600 8N1)

The reader sends through poller.transport's bus, so the same rules hold as in the
poller: one request at a time on the bus, replies checked against their request,
a timeout per request.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from types import TracebackType

from ..model import BusAddress, FunctionCode, ReadBlock, SerialLine, Transport
from ..transport import Bus, open_bus

__all__ = ["BusSpecError", "Reader", "add_bus_arguments", "bus_from_args", "parse_bus"]

DEFAULT_TIMEOUT_S = 1.0


class BusSpecError(ValueError):
    """BUS cannot name a wire; the message says what is wrong and how it is written."""


def parse_bus(text: str, line: SerialLine | None = None) -> BusAddress:
    """The BusAddress a BUS argument names (forms in the module text)."""
    spec = text.strip()
    if not spec:
        raise BusSpecError("BUS is empty (e.g. 192.0.2.10, 192.0.2.10:1502, rtuovertcp:gw:4196, /dev/ttyUSB0)")
    kind, sep, rest = spec.partition(":")
    if sep and kind.lower() in ("tcp", "rtuovertcp", "udp", "serial"):
        transport, spec = Transport(kind.lower()), rest
    elif spec.startswith("/"):
        transport = Transport.SERIAL
    else:
        transport = Transport.TCP
    if transport is Transport.SERIAL:
        if not spec.startswith("/"):
            raise BusSpecError(f"{text!r}: a serial bus is a device path, e.g. /dev/ttyUSB0")
        return BusAddress(Transport.SERIAL, spec, 0, line or SerialLine())
    host, port = _host_port(text, spec)
    return BusAddress(transport, host, port)


def _host_port(text: str, spec: str) -> tuple[str, int]:
    if spec.startswith("["):  # [IPv6]:port
        host, bracket, tail = spec[1:].partition("]")
        if not bracket or not host:
            raise BusSpecError(f"{text!r}: an IPv6 address in brackets needs its closing ']'")
        if tail and not tail.startswith(":"):
            raise BusSpecError(f"{text!r}: after ']' only ':PORT' may follow")
        port_text = tail[1:] if tail else ""
    elif spec.count(":") > 1:  # a bare IPv6 literal: no port
        host, port_text = spec, ""
    else:
        host, _, port_text = spec.partition(":")
    if not host:
        raise BusSpecError(f"{text!r}: no host")
    if not port_text:
        return host, 502
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise BusSpecError(f"{text!r}: port {port_text!r} is not 1..65535")
    return host, int(port_text)


def add_bus_arguments(parser: argparse.ArgumentParser) -> None:
    """BUS, the serial line settings and --timeout, as every tool takes them."""
    parser.add_argument("bus", metavar="BUS",
                        help="the wire: HOST[:PORT] (Modbus TCP), rtuovertcp:HOST:PORT, udp:HOST:PORT, "
                             "or a serial device path such as /dev/ttyUSB0")
    parser.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help=f"seconds to wait for one reply (default {DEFAULT_TIMEOUT_S:g})")
    serial = parser.add_argument_group("serial line (a serial BUS only)")
    serial.add_argument("--baudrate", type=int, default=9600, help="baud rate (default 9600)")
    serial.add_argument("--parity", choices=("N", "E", "O"), default="N", help="parity (default N)")
    serial.add_argument("--stopbits", type=int, choices=(1, 2), default=1, help="stop bits (default 1)")
    serial.add_argument("--bytesize", type=int, choices=(7, 8), default=8, help="data bits (default 8)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"{text} is outside (0, 60] seconds")
    return value


def bus_from_args(args: argparse.Namespace) -> BusAddress:
    """The BusAddress of parsed arguments (BusSpecError when BUS is malformed)."""
    line = SerialLine(args.baudrate, args.parity, args.stopbits, args.bytesize)
    return parse_bus(args.bus, line)


class Reader:
    """Reads registers of any unit id on one bus, one request at a time.

        async with Reader(address, timeout_s=1.0) as reader:
            words = await reader.read(3, 40000, 2, unit=1)

    `read` raises poller.modbus.ModbusError (ExceptionReply, ResponseTimeout,
    ConnectError, BadReply ...) and nothing else; `requests` counts what was sent.
    """

    def __init__(self, address: BusAddress, timeout_s: float = DEFAULT_TIMEOUT_S, bus: Bus | None = None) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.bus = bus if bus is not None else open_bus(address, connect_timeout=max(timeout_s, 1.0))
        self.requests = 0

    async def read(self, function_code: int, address: int, count: int, unit: int,
                   timeout_s: float | None = None, pause: float = 0.0, connect_pause: float = 0.0) -> list[int]:
        """One request; `pause` and `connect_pause` as the bus takes them (a device type's quirks)."""
        block = ReadBlock(FunctionCode(function_code), address, count, ())
        self.requests += 1
        return await self.bus.read(block, unit, self.timeout_s if timeout_s is None else timeout_s,
                                   pause=pause, connect_pause=connect_pause)

    async def read_many(self, unit: int, requests: Sequence[tuple[int, int, int]]) -> list[list[int]]:
        """Several (function_code, address, count) requests in order."""
        return [await self.read(fc, address, count, unit) for fc, address, count in requests]

    def close(self) -> None:
        self.bus.close()

    async def __aenter__(self) -> Reader:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()
        await asyncio.sleep(0)  # let the transport's close run before the loop ends
