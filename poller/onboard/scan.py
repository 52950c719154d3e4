"""`emm scan`: which unit ids on a bus answer, and what each device is.

One unit id at a time, one request at a time (a gateway or an RS485 line carries one
request anyway; two in flight would only make timeouts lie). For each unit id:

1. Does it answer? One cheap request: function 3, address 0, one register. Any reply
   means a device is there, a Modbus exception reply too (a meter that has nothing at
   holding register 0 still answers "illegal data address"). No reply within the
   timeout, or a gateway's exception 10 or 11 (path unavailable, target failed to
   respond: the gateway saying nobody is there), means nobody. So a unit id that
   does not answer costs one timeout, and one that answers costs a few quick replies:
   a scan of 247 unit ids with 3 devices takes about 244 timeouts. The timeout is a budget
   per unit id (`unit_timeout`): a scan of N ids ends within N timeouts, the overhead of
   each request (a reconnect after a timeout) taken from the wait of the next ones.
2. For a unit that answers: the SunSpec marker ("SunS" at 40000, 0 or 50000) and its
   model ids (sunspec.read_chain), and the family by the signatures in
   device_signatures (signatures.identify: every register some family's signature
   needs, each read once).

Pure apart from the reads, which go through the Reader given; the progress display
and the output formats are here too, the database and the command line in cli.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from ..logsafe import escape_controls
from ..modbus import BadReply, ConnectError, ExceptionReply, ResponseTimeout
from ..model import BusAddress, Transport
from .probe import exception_text, table
from .signatures import Identification, Signature, identify
from .sqltext import sql_literal
from .sunspec import Chain, ChainError, read_chain
from .wire import Reader

__all__ = ["NOBODY_CODES", "ProgressDisplay", "ScanReport", "UnitFinding", "format_json", "format_report",
           "insert_rows", "parse_units", "scan"]

NOBODY_CODES = frozenset({10, 11})  # a gateway's "path unavailable", "target failed to respond": nobody there
PRESENCE_REQUEST = (3, 0, 1)  # function code, address, count: the cheapest read there is
UNIT_MIN, UNIT_MAX = 1, 255  # 0 is the broadcast address: no device answers it


class UnitsError(ValueError):
    """--units cannot be read; the message says how it is written."""


def parse_units(text: str) -> tuple[int, ...]:
    """'1-247', '1,3,10-20' -> the unit ids, ascending, each once. Unit 0 (broadcast) is refused."""
    units: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise UnitsError(f"--units {text!r}: {part!r} is not a unit id or a range such as 1-247")
        first, last = int(low), int(high) if dash else int(low)
        if first > last:
            raise UnitsError(f"--units {text!r}: the range {part} runs backwards")
        if first == 0:
            raise UnitsError("--units: unit id 0 is the broadcast address: no device answers it, so it is never "
                             "scanned (start at 1)")
        if last > UNIT_MAX:
            raise UnitsError(f"--units {text!r}: unit ids go up to {UNIT_MAX} (1..247 on a serial line)")
        units.update(range(first, last + 1))
    if not units:
        raise UnitsError(f"--units {text!r}: no unit ids")
    return tuple(sorted(units))


@dataclass
class UnitFinding:
    """A unit id that answered, and what is known of it."""

    unit: int
    reply: str  # what the presence request got: its word, or the device's exception
    identification: Identification | None = None
    chain: Chain | None = None
    sunspec_error: str | None = None
    complete: bool = False  # False: the scan was interrupted while this unit was being identified

    @property
    def families(self) -> list[str]:
        return self.identification.families if self.identification is not None else []

    @property
    def family(self) -> str | None:
        """The one family it matches, or None (none, or several)."""
        return self.identification.family if self.identification is not None else None

    @property
    def label(self) -> str:
        if not self.complete:
            return "not identified (interrupted)"
        if len(self.families) > 1:
            return "ambiguous: " + ", ".join(self.families)
        return self.families[0] if self.families else "unknown"

    @property
    def sunspec(self) -> str:
        if self.sunspec_error is not None:
            return "broken chain"
        if self.chain is None:
            return "-"
        return ", ".join(str(m.id) for m in self.chain.models) or "(no models)"


@dataclass
class ScanReport:
    bus: BusAddress
    units: tuple[int, ...]
    timeout_s: float
    found: list[UnitFinding] = field(default_factory=list)
    scanned: int = 0  # unit ids done
    garbled: list[tuple[int, str]] = field(default_factory=list)  # unit ids whose reply was broken
    interrupted: bool = False  # Ctrl-C
    stopped: str | None = None  # the bus failed (cannot connect): the scan could not go on
    elapsed_s: float = 0.0  # from the first request to the last reply
    requests: int = 0


class Progress(Protocol):
    def found(self, finding: UnitFinding) -> None: ...

    def update(self, scanned: int, unit: int, found: int) -> None: ...

    def done(self) -> None: ...


async def presence(reader: Reader, unit: int, report: ScanReport, timeout_s: float | None = None) -> str | None:
    """What a unit id answers to the presence request, or None when nobody is there."""
    fc, address, count = PRESENCE_REQUEST
    try:
        words = await reader.read(fc, address, count, unit, timeout_s)
    except ExceptionReply as exc:
        return None if exc.code in NOBODY_CODES else exception_text(exc)
    except ResponseTimeout:
        return None
    except BadReply as exc:
        report.garbled.append((unit, str(exc)))
        return None
    return "0x" + "".join(f"{w:04X}" for w in words)


async def identify_unit(reader: Reader, finding: UnitFinding, families: Mapping[str, Sequence[Signature]],
                        sunspec: bool = True) -> None:
    """Signatures first (the family), then the SunSpec chain."""
    finding.identification = await identify(families, reader.read, finding.unit)
    if sunspec:
        try:
            finding.chain = await read_chain(reader.read, finding.unit)
        except ChainError as exc:
            finding.sunspec_error = str(exc)
    finding.complete = True


MIN_SHARE = 0.8  # a unit id's wait is never cut below this share of the timeout
BUDGET_SHARE = 0.99  # aimed at: the last request's few milliseconds beyond its wait still fit


def unit_timeout(timeout_s: float, started: float, index: int) -> float:
    """How long the presence request of the index-th unit id waits: the timeout is the scan's budget
    per unit id, so a scan of N ids takes at most N timeouts. A unit gets the timeout, less what the
    scan has overrun its budget by so far (the few milliseconds each request costs beyond its wait,
    a reconnect after a timeout), never less than MIN_SHARE of it; the time left by units that
    answered quickly is the slack."""
    left = started + (index + 1) * timeout_s * BUDGET_SHARE - time.monotonic()
    return min(timeout_s, max(MIN_SHARE * timeout_s, left))


async def scan(reader: Reader, units: Sequence[int], families: Mapping[str, Sequence[Signature]],
               progress: Progress, sunspec: bool = True) -> ScanReport:
    """Every unit id in turn. Cancelling the task (Ctrl-C) ends the scan with what was found so far."""
    report = ScanReport(reader.address, tuple(units), reader.timeout_s)
    started = time.monotonic()
    sent_before = reader.requests
    try:
        for index, unit in enumerate(units):
            reply = await presence(reader, unit, report, unit_timeout(reader.timeout_s, started, index))
            if reply is not None:
                finding = UnitFinding(unit, reply)
                report.found.append(finding)
                await identify_unit(reader, finding, families, sunspec)
                progress.found(finding)
            report.scanned += 1
            progress.update(report.scanned, unit, len(report.found))
    except asyncio.CancelledError:
        report.interrupted = True  # what was found so far is the answer; the read in flight was abandoned
    except ConnectError as exc:
        report.stopped = str(exc)
    finally:
        report.elapsed_s = time.monotonic() - started
        report.requests = reader.requests - sent_before
        progress.done()
    return report


# --- progress ----------------------------------------------------------------------------


class ProgressDisplay:
    """Progress on stderr: a bar redrawn in place (`bar`), a line every tenth (`lines`), or nothing.

    The bar is for a terminal: `\\r` and the line drawn again, at most ten times a second
    and once at the end; a device found is printed on a line of its own above it. Lines
    are for logs and pipes: "scanned 25/247 unit ids, 1 answered", and a line per device.
    """

    def __init__(self, total: int, mode: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.total, self.mode, self.width = total, mode, width
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()
        self._drawn = 0  # length of the bar line on screen
        self._last_draw = 0.0
        self._state = self._shown = (0, 0, 0)
        self._step = max(1, total // 10)

    def found(self, finding: UnitFinding) -> None:
        if self.mode == "none":
            return
        self._clear()
        self.stream.write(f"unit {finding.unit} answered: {escape_controls(finding.label)}"
                          + (f" (SunSpec models {finding.sunspec})" if finding.chain is not None else "") + "\n")
        self._redraw(force=True)

    def update(self, scanned: int, unit: int, found: int) -> None:
        self._state = (scanned, unit, found)
        if self.mode == "lines":
            if scanned % self._step == 0 or scanned == self.total:
                self.stream.write(f"scanned {scanned}/{self.total} unit ids, {found} answered\n")
                self.stream.flush()
        elif self.mode == "bar":
            self._redraw(force=scanned == self.total)

    def done(self) -> None:
        if self.mode == "bar" and self._drawn:
            if self._shown != self._state:
                self._redraw(force=True)  # where it stopped (Ctrl-C), when that was not drawn yet
            self.stream.write("\n")
            self._drawn = 0
        self.stream.flush()

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0

    def _redraw(self, force: bool = False) -> None:
        if self.mode != "bar":
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self._shown = self._state
        scanned, unit, found = self._state
        filled = self.width * scanned // self.total if self.total else self.width
        elapsed = now - self.started
        left = elapsed / scanned * (self.total - scanned) if scanned else None
        text = (f"scan [{'#' * filled}{'.' * (self.width - filled)}] {scanned:>{len(str(self.total))}}/{self.total}"
                f"  unit {unit:>3}  found {found}  {_clock(elapsed)}"
                + (f", ~{_clock(left)} left" if left is not None and scanned < self.total else ""))
        pad = max(0, self._drawn - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._drawn = len(text)


def _clock(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return f"{seconds // 60}:{seconds % 60:02d}"


# --- output -------------------------------------------------------------------------------


def insert_rows(bus: BusAddress, findings: Sequence[UnitFinding]) -> list[tuple[UnitFinding, dict[str, object]]]:
    """The energy_meters row of each identified unit (one family), with the bus's transport columns."""
    rows = []
    for finding in findings:
        family = finding.family
        if family is None or not finding.complete:
            continue
        row: dict[str, object] = {"host": bus.host}
        if bus.transport is not Transport.SERIAL:
            row["port"] = bus.port
        row |= {"slave_address": finding.unit, "type": family,
                "description": f"{family} at unit {finding.unit} (found by emm scan)",
                "transport": bus.transport.value}
        if bus.transport is Transport.SERIAL and bus.line is not None:
            row |= {"baudrate": bus.line.baudrate, "parity": bus.line.parity, "stopbits": bus.line.stopbits,
                    "bytesize": bus.line.bytesize}
        rows.append((finding, row))
    return rows


INSERT_SQL = "INSERT INTO energy_meters ({columns}) VALUES ({values}) ON CONFLICT DO NOTHING"


def insert_statement(row: Mapping[str, object]) -> str:
    return INSERT_SQL.format(columns=", ".join(row), values=", ".join(sql_literal(v) for v in row.values())) + ";"


def _units_text(units: Sequence[int]) -> str:
    """1,2,3,5 -> '1-3, 5'."""
    parts: list[str] = []
    start = prev = None
    for u in (*units, None):
        if u is not None and prev is not None and u == prev + 1:
            prev = u
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = u
    return ", ".join(parts)


_REFUSAL_PREFIX = re.compile(r"^unit \d+ answered fc\d+ \d+\.\.\d+ with ")  # known where it is shown
_NO_REPLY = re.compile(r"^no reply from .* within ([0-9.]+ s)$")


def _refusal(reason: str) -> str:
    """A refused signature read's reason without what the listing says already (unit, register)."""
    reason = _REFUSAL_PREFIX.sub("", reason)
    return _NO_REPLY.sub(r"no reply within \1", reason)


def _key_text(key: tuple[int, int, int]) -> str:
    fc, address, count = key
    return f"fc{fc} {address}" + (f"..{address + count - 1}" if count > 1 else "")


def _signature_lines(finding: UnitFinding, families: Mapping[str, Sequence[Signature]]) -> list[str]:
    """What each signature register that answered gave at this unit, and what each family's row made
    of it; the refused ones grouped by why."""
    ident = finding.identification
    if ident is None:
        return []
    lines = []
    for key in sorted(ident.answered):
        words = ident.answered[key]
        lines.append(f"    {_key_text(key)}: {' '.join(f'0x{w:04X}' for w in words)}")
        for name in sorted(families):
            for sig in families[name]:
                if sig.key != key:
                    continue
                value = sig.value(words)
                shown = "no number" if value is None else f"{value:.6g}"
                verdict = "fits" if sig.holds(words) else "outside"
                lines.append(f"        {name}: {escape_controls(sig.description)} = {shown}, {verdict} "
                             f"{sig.min_value:g}..{sig.max_value:g} ({sig.data_type.name.lower()} "
                             f"{sig.byte_order.value})")
    refused: dict[str, list[tuple[int, int, int]]] = {}
    for key in sorted(ident.refused):
        refused.setdefault(_refusal(ident.refused[key]), []).append(key)
    for reason, keys in refused.items():
        lines.append(f"    {escape_controls(reason)}: " + ", ".join(_key_text(k) for k in keys))
    return lines


def _evidence(finding: UnitFinding, families: Mapping[str, Sequence[Signature]]) -> str:
    """Why a unit is taken for its family: each signature row's value and range."""
    ident, family = finding.identification, finding.family
    if ident is None or family is None:
        return finding.label
    parts = []
    for sig in families.get(family, ()):
        value = sig.value(ident.answered.get(sig.key, []))
        shown = "?" if value is None else f"{value:.6g}"
        parts.append(f"{escape_controls(sig.description)} = {shown} in {sig.min_value:g}..{sig.max_value:g}")
    return f"{family} ({'; '.join(parts)})"


def format_report(report: ScanReport, families: Mapping[str, Sequence[Signature]]) -> str:
    """The scan's table, what the unknown devices gave, and the INSERT statements."""
    out = [f"scan {report.bus}, unit ids {_units_text(report.units)}: {len(report.found)} answered "
           f"({report.scanned} of {len(report.units)} unit ids scanned in {report.elapsed_s:.2f} s, "
           f"{report.requests} requests, timeout {report.timeout_s:g} s)"]
    if report.interrupted:
        out.append(f"interrupted: unit ids {_units_text(report.units[report.scanned:])} were not scanned")
    if report.stopped:
        out.append(f"stopped: {escape_controls(report.stopped)}")
    if not families:
        out.append("no device_signatures rows in the database: families cannot be named "
                   "(load maps that declare signatures: emm maps load NAME)")
    if report.found:
        lines = [(str(f.unit), escape_controls(f.label), f.sunspec, escape_controls(f.reply)) for f in report.found]
        out += ["", table(("UNIT", "FAMILY", "SUNSPEC MODELS", "REPLY TO FC3 AT 0"), lines)]
    if report.garbled:
        # not counted as devices: a device at another baud rate or parity, two devices on one unit
        # id, noise, or a gateway that drops the connection for a unit that does not answer
        units = _units_text([unit for unit, _ in report.garbled])
        out.append(f"broken replies, not counted as devices, from unit ids {units} (e.g. "
                   f"{escape_controls(report.garbled[0][1])}): a device at another baud rate or parity, two "
                   "devices on one unit id, or a gateway closing the connection for a unit that is not there")
    for f in report.found:
        if f.sunspec_error:
            why = re.sub(r"^unit \d+: ", "", f.sunspec_error)
            out.append(f"unit {f.unit}: SunSpec marker found, but {escape_controls(why)}")
    unidentified = [f for f in report.found if f.complete and f.family is None and families]
    for f in unidentified:
        what = "ambiguous" if f.families else "unknown"
        out += ["", f"unit {f.unit}: {what}; the signature registers gave:", *_signature_lines(f, families)]
        if f.chain is not None:
            out.append(f"    SunSpec models {f.sunspec}: `emm sunspec {report.bus.host} --unit {f.unit}` "
                       "makes a map from them")
    rows = insert_rows(report.bus, report.found)
    if rows:
        out += ["", "-- energy_meters rows of the devices identified (emm scan --apply inserts them):"]
        for finding, row in rows:
            out.append(f"-- unit {finding.unit}: {_evidence(finding, families)}")
            out.append(insert_statement(row))
    return "\n".join(out)


def format_json(report: ScanReport) -> str:
    def finding(f: UnitFinding) -> dict[str, Any]:
        ident = f.identification
        return {
            "unit": f.unit, "reply": f.reply, "family": f.family, "families": f.families, "label": f.label,
            "complete": f.complete,
            "sunspec": None if f.chain is None else {
                "base": f.chain.base, "models": [{"id": m.id, "address": m.address, "length": m.length}
                                                 for m in f.chain.models]},
            "sunspec_error": f.sunspec_error,
            "answered": [] if ident is None else [
                {"function_code": k[0], "address": k[1], "words": w} for k, w in sorted(ident.answered.items())],
            "refused": [] if ident is None else [
                {"function_code": k[0], "address": k[1], "reason": r} for k, r in sorted(ident.refused.items())],
        }
    return json.dumps({
        "bus": str(report.bus), "units": list(report.units), "scanned": report.scanned,
        "timeout_s": report.timeout_s, "elapsed_s": round(report.elapsed_s, 3), "requests": report.requests,
        "interrupted": report.interrupted, "stopped": report.stopped,
        "garbled": [{"unit": u, "reason": r} for u, r in report.garbled],
        "found": [finding(f) for f in report.found],
        "inserts": [insert_statement(row) for _, row in insert_rows(report.bus, report.found)],
    }, indent=2)

