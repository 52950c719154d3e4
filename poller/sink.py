r"""Readings -> InfluxDB line protocol -> the InfluxDB v2 write API (or stdout).

Point schema (DESIGN.md): measurement = registers.measurement_name, one float
field `value`, tags meter, host, slave_address, type, unit and description
(when set), timestamp = time of the read in milliseconds. `value` is always
written as a float, so changing a register's data type or scale never causes
an InfluxDB field-type conflict.

Every tag value and measurement name goes through `escape` (one function), so no
text a database row can hold makes a line that InfluxDB 1.x, InfluxDB 2 or
VictoriaMetrics rejects or reads differently. What is stored is `normalise(text)`:

1. control characters (Unicode Cc: newline, CR, tab, ESC, NEL ...; and U+2028/U+2029)
   become a space: a raw newline ends the line, and InfluxDB 2 then rejects the whole
   batch (HTTP 400) while VictoriaMetrics drops the broken lines silently;
2. a backslash becomes `/`: InfluxDB 1.x keeps an escaped backslash `\\` as two
   backslashes while InfluxDB 2 and VictoriaMetrics read one, and 1.x rejects a tag
   value ending in one (`invalid tag format`); no way of writing a backslash reads
   back the same everywhere, a slash does (`Room 3\East` is stored as `Room 3/East`);
3. spaces at either end are removed (a unit `" V"` is stored as `V`);
4. at most 256 characters are kept (then trailing spaces removed again): InfluxDB
   refuses a series key over 64 KB, and a tag is a label, not a document;
5. an empty result leaves the tag out of the point (line protocol has no empty tag
   value), as a NULL or blank description does.

Then `,`, `=` and space are escaped with a backslash (in a measurement name only `,`
and space, as the line protocol reference says). Worked example: the description
`Main board,<newline>east=wing\` is stored as `Main board, east=wing/` and written
`description=Main\ board\,\ east\=wing/`. Measurement names are also held to
registers' CHECK (`^[A-Za-z_][A-Za-z0-9_.-]*$`), so none is empty or starts with `#`
(which would make a comment line).
"""

from __future__ import annotations

import http.client
import logging
import select
import socket
import ssl
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TextIO
from urllib.parse import urlencode, urlsplit

import orjson

from .logsafe import CONTROL_CHARACTERS
from .model import Meter, ReadBlock, Register

log = logging.getLogger(__name__)


class MeterStatus(Protocol):
    """What a status point reports of one meter's cycle (cycle.MeterResult)."""

    @property
    def ok(self) -> bool: ...

    duration_s: float
    requests: int
    errors: int
    readings: int
    time_ms: int


MAX_TEXT = 256  # characters kept of a tag value or measurement name (step 4 above)
_NORMALISE = str.maketrans({**dict.fromkeys(CONTROL_CHARACTERS, " "), "\\": "/"})
_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})


def normalise(text: str) -> str:
    """What InfluxDB stores for a tag value or measurement name `text` ('' = the tag is left out)."""
    return text.translate(_NORMALISE).strip(" ")[:MAX_TEXT].rstrip(" ")


def escape(text: str, measurement: bool = False) -> str:
    """`text` normalised and escaped for line protocol: a tag value, or a measurement name."""
    return normalise(text).translate(_MEASUREMENT_ESCAPES if measurement else _TAG_ESCAPES)


def meter_tags(meter: Meter) -> dict[str, str]:
    """The tags every point of a meter carries, as InfluxDB stores them (normalised, not escaped);
    a tag that normalises to '' is left out."""
    tags = {"host": meter.host, "meter": str(meter.id), "slave_address": str(meter.slave_address),
            "type": meter.device_type.name, "description": meter.description or ""}
    return {k: n for k, v in tags.items() if (n := normalise(v))}


def _key(measurement: str, tags: dict[str, str]) -> str:
    """`measurement,tag=value,...` with the tags sorted by key, as InfluxDB prefers."""
    return ",".join([escape(measurement, measurement=True), *(f"{k}={escape(v)}" for k, v in sorted(tags.items()))])


def series_key(meter: Meter, register: Register) -> str:
    """The series of one register of one meter: its measurement, the meter's tags and the unit."""
    tags = meter_tags(meter)
    if unit := normalise(register.unit or ""):
        tags["unit"] = unit
    return _key(register.measurement, tags)


def status_key(meter: Meter) -> str:
    """The meter's `poller_status` series."""
    return _key("poller_status", meter_tags(meter))


def line_prefix(key: str) -> str:
    """`<series key> value=`: a line's start, kept per register (SeriesKeys.line_prefixes)."""
    return f"{key} value="


def reading_lines(prefixes: Mapping[int, str], decoded: Iterable[tuple[int, Register, float]],
                  times_ms: Sequence[int]) -> list[str]:
    """Line protocol for decoded values: `<series key> value=<float> <ms>`.

    `prefixes`: `line_prefix` of each register's series key, by register id
    (SeriesKeys.line_prefixes); `decoded`: (block
    index, register, finite value) as decode_block_values gives them; `times_ms`:
    when each block was read. Built in one comprehension: it runs per reading; each
    block's ` <ms>` is formatted once, not once per line.
    """
    decoded = decoded if isinstance(decoded, list) else list(decoded)
    stamps = [f" {time_ms}" for time_ms in times_ms]
    texts = float_texts([value for _, _, value in decoded])
    return [f"{prefixes[reg.id]}{text}{stamps[index]}" for (index, reg, _), text in zip(decoded, texts, strict=True)]


def block_lines(prefixes: Sequence[str], values: Sequence[float], time_ms: int) -> list[str]:
    """reading_lines for one block's plain values (decode.plain_block_values): `prefixes` are its
    registers' `<series key> value=` (SeriesKeys.prefixes), the same lines without a tuple a value."""
    stamp = f" {time_ms}"
    return [f"{prefix}{text}{stamp}" for prefix, text in zip(prefixes, float_texts(list(values)), strict=True)]


def float_texts(values: list[float]) -> list[str]:
    """Each finite float as the shortest decimal that reads back as exactly that float: the number
    repr() writes, sometimes written another way (`1e16` for `1e+16`, `0.00001` for `1e-05`; line
    protocol reads both). orjson formats the whole list in C, about 0.1 us a value against repr's
    0.4-0.7 (bench/README.md). It would write NaN and infinity as `null`, which the decoder never
    hands over (decode_block_values: finite values only)."""
    if not values:
        return []
    return orjson.dumps(values).decode()[1:-1].split(",")


class SeriesKeys:
    """Caches each meter's line prefixes (`line_prefix` of its series keys) and status key; rebuilt
    when a meter object changes. The prefixes are kept, not the keys: one string a series."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[Meter, dict[int, str], str]] = {}
        # per meter: each read block's line prefixes (the same string objects), by the block's id (the
        # block kept with them, so an id reused by a block of a new plan is never taken for the old one)
        self._prefixes: dict[int, tuple[Meter, dict[int, tuple[ReadBlock, tuple[str, ...]]]]] = {}

    def _keys(self, meter: Meter) -> tuple[Meter, dict[int, str], str]:
        cached = self._cache.get(meter.id)
        if cached is None or cached[0] is not meter:
            cached = (meter, {r.id: line_prefix(series_key(meter, r)) for r in meter.device_type.registers},
                      status_key(meter))
            self._cache[meter.id] = cached
        return cached

    def line_prefixes(self, meter: Meter) -> dict[int, str]:
        """`line_prefix` of each register's series key, by register id (reading_lines)."""
        return self._keys(meter)[1]

    def prefixes(self, meter: Meter, block: ReadBlock) -> tuple[str, ...]:
        """The line prefix of each of the block's registers (block_lines)."""
        cached = self._prefixes.get(meter.id)
        if cached is None or cached[0] is not meter:
            cached = self._prefixes[meter.id] = (meter, {})
        known = cached[1].get(id(block))
        if known is None or known[0] is not block:
            prefixes = self.line_prefixes(meter)
            known = cached[1][id(block)] = (block, tuple(prefixes[r.id] for r in block.registers))
        return known[1]

    def forget_except(self, meter_ids: set[int]) -> None:
        for mid in [m for m in self._cache if m not in meter_ids]:
            del self._cache[mid]
        for mid in [m for m in self._prefixes if m not in meter_ids]:
            del self._prefixes[mid]

    def status_line(self, meter: Meter, result: MeterStatus) -> str:
        """The meter's `poller_status` point for one cycle (fields are floats, as `value` is)."""
        key = self._keys(meter)[2]
        requests, errors, readings = result.requests, result.errors, result.readings
        return (f"{key} up={1.0 if result.ok else 0.0},duration_s={result.duration_s!r},"
                f"requests={_COUNTS[requests] if 0 <= requests < _COUNTED else repr(float(requests))},"
                f"errors={_COUNTS[errors] if 0 <= errors < _COUNTED else repr(float(errors))},"
                f"readings={_COUNTS[readings] if 0 <= readings < _COUNTED else repr(float(readings))} "
                f"{result.time_ms}")


# repr(float(n)) of the counts a status point mostly carries, made once ("3.0"); bigger ones are made as before
_COUNTED = 1024
_COUNTS = tuple(repr(float(n)) for n in range(_COUNTED))


class WriteError(Exception):
    """A batch could not be written; the message says where and why.

    retry_after: seconds the server asked us to wait (Retry-After of a 429/503), if any.
    """

    def __init__(self, message: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def parse_retry_after(value: object) -> float | None:
    """Retry-After as seconds: `120` or an HTTP date (RFC 9110 10.2.3); None when absent or unreadable."""
    if value is None:
        return None
    text = str(value).strip()
    if text.isdigit():
        return float(text)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    from datetime import UTC, datetime

    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class InfluxSink:
    """Writes batches of lines to the InfluxDB v2 write API: one POST to `<url>/api/v2/write` a
    batch, on one HTTP/1.1 connection kept open (http.client; TLS for https://, the system's CA
    certificates). Plain text, no gzip: compressing cost more CPU than all the decoding (27 % of
    the poller at 30,000 readings/s, bench/README.md), and the stack's InfluxDB is on the same
    host or LAN, where bytes are cheap. One attempt a write: the outbox retries, spools and backs
    off. This was influxdb-client until 2026-11-28: its own Python cost 0.7 ms a 5,000-line batch
    over this (1.47 against 0.75 ms, 6 % of the poller's CPU at 2 worker processes;
    bench/README.md)."""

    def __init__(self, url: str, token: str, org: str, bucket: str, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        self.url = url
        self._tls = parts.scheme == "https"
        self._address = (parts.hostname or "", parts.port or (443 if self._tls else 80))  # http://[::1] too
        self.timeout_s = timeout_s
        # `<url>` may carry a path (InfluxDB behind a reverse proxy at /influx)
        self._path = (parts.path.rstrip("/") + "/api/v2/write?"
                      + urlencode({"org": org, "bucket": bucket, "precision": "ms"}))
        self._headers = {"Content-Type": "text/plain; charset=utf-8", "Accept": "application/json",
                         "User-Agent": "emm-poller"}
        if token:
            self._headers["Authorization"] = f"Token {token}"
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        """The connection to write on. One the server closed while it was idle (InfluxDB's or a
        proxy's idle timeout: not an outage) is closed here too, and http.client opens it again
        for the request (one it closes at the very moment of the write fails it: an outage like
        any other, retried by the outbox)."""
        conn = self._conn
        if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
            conn.close()
        if conn is None:
            host, port = self._address
            if self._tls:
                conn = http.client.HTTPSConnection(host, port, timeout=self.timeout_s,
                                                   context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(host, port, timeout=self.timeout_s)
            self._conn = conn
        return conn

    def write(self, lines: Sequence[str]) -> None:
        if not lines:
            return
        body = "\n".join(lines).encode("utf-8")
        try:
            conn = self._connection()
            try:
                conn.request("POST", self._path, body, self._headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # it stopped reading: it may have answered first (a 401, a 413), which says more
            answer = conn.getresponse()
            text = answer.read()
            if answer.will_close:
                self.close()
        except Exception as exc:  # refused, reset, timed out, DNS, TLS: no answer at all, an outage
            self.close()
            raise WriteError(f"InfluxDB at {self.url} is unreachable ({type(exc).__name__}: {exc}); "
                             f"{len(lines)} points not written", True) from None
        status = answer.status
        if 200 <= status < 300:
            return
        retryable = status >= 500 or status in (408, 429)
        raise WriteError(f"InfluxDB at {self.url} refused {len(lines)} points: HTTP {status} {answer.reason}: "
                         f"{text.decode('utf-8', 'replace').strip()[:300]}", retryable,
                         parse_retry_after(answer.getheader("Retry-After")))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    """The peer closed (or reset) an idle connection, or sent what nobody asked for: not usable."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class StdoutSink:
    """--dry-run: print the line protocol instead of writing it."""

    url = "stdout"

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def write(self, lines: Sequence[str]) -> None:
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()

    def close(self) -> None:
        pass
