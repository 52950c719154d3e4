"""Line protocol: the contract's tags, escaping, the read's timestamp; every line parsed back
by a real InfluxDB 1.x `/write` (strict: it rejects what InfluxDB 2 rejects)."""

from __future__ import annotations

import itertools
import math
import random
import select
import socket
import struct
import threading
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.model import DataType, DeviceType, FunctionCode, Meter, Register
from poller.sink import (
    InfluxSink,
    SeriesKeys,
    StdoutSink,
    WriteError,
    float_texts,
    line_prefix,
    meter_tags,
    parse_retry_after,
    reading_lines,
    series_key,
    status_key,
)
from tests.servers import HttpThread, InfluxDB1, InfluxV2Bridge

REG = Register(7, "sdm", 0, "voltage_l1", "V", DataType.FLOAT32, FunctionCode.READ_INPUT_REGISTERS)
DTYPE = DeviceType("sdm 630", (REG,))
T0 = 1_700_000_000_000


def test_point_schema():
    meter = Meter(3, "gw.local", 502, 12, DTYPE, description="Main board, east=wing")
    (line,) = reading_lines({REG.id: line_prefix(series_key(meter, REG))}, [(0, REG, 230.5)], [1_700_000_000_123])
    assert line == ("voltage_l1,description=Main\\ board\\,\\ east\\=wing,host=gw.local,meter=3,"
                    "slave_address=12,type=sdm\\ 630,unit=V value=230.5 1700000000123")


def test_no_empty_tags_and_float_values():
    reg = Register(8, "sdm", 0, "power factor", None, DataType.INT16, FunctionCode.READ_HOLDING_REGISTERS)
    meter = Meter(1, "h", 502, 1, DTYPE, description="  ")
    assert series_key(meter, reg) == "power\\ factor,host=h,meter=1,slave_address=1,type=sdm\\ 630"
    (line,) = reading_lines({reg.id: line_prefix(series_key(meter, reg))}, [(0, reg, 5.0)], [1])
    assert line.endswith(" value=5.0 1")


def test_stdout_sink(capsys):
    StdoutSink().write(["a value=1.0 1", "b value=2.0 2"])
    assert capsys.readouterr().out == "a value=1.0 1\nb value=2.0 2\n"


# --------------------------------------------------------------------------- the strict parser


def stored(text: str) -> str:
    """The normalisation poller/sink.py documents, written out independently: Unicode Cc and
    U+2028/U+2029 -> space, backslash -> '/', spaces at both ends stripped, the first 256
    characters kept (trailing spaces stripped again). '' means the tag is left out."""
    out = "".join(" " if unicodedata.category(c) == "Cc" or c in "\u2028\u2029" else "/" if c == "\\" else c
                  for c in text)
    return out.strip(" ")[:256].rstrip(" ")


@pytest.fixture(scope="module")
def influx() -> Iterator[InfluxDB1]:
    with InfluxDB1() as server:
        yield server


@dataclass
class Status:
    ok: bool
    duration_s: float
    requests: int
    errors: int
    readings: int
    time_ms: int


@dataclass
class Row:
    """One meter with one register, as the configuration tables could hold it."""

    host: str
    type: str
    description: str | None
    unit: str | None
    measurement: str
    slave_address: int

    def meter(self, meter_id: int) -> Meter:
        reg = Register(meter_id, self.type, 0, self.measurement, self.unit, DataType.FLOAT32,
                       FunctionCode.READ_HOLDING_REGISTERS)
        return Meter(meter_id, self.host, 502, self.slave_address, DeviceType(self.type, (reg,)),
                     description=self.description)

    def expected_tags(self, meter_id: int, with_unit: bool = True) -> dict[str, str]:
        tags = {"meter": str(meter_id), "slave_address": str(self.slave_address), "host": stored(self.host),
                "type": stored(self.type), "description": stored(self.description or "")}
        if with_unit:
            tags["unit"] = stored(self.unit or "")
        return {k: v for k, v in tags.items() if v}


_databases = itertools.count()


def write_and_read_back(influx: InfluxDB1, rows: list[Row]) -> None:
    """All rows' reading and status points in one /write (204), each read back with its tags."""
    db = f"sink{next(_databases)}"
    influx.create_database(db)
    try:
        keys = SeriesKeys()
        lines = []
        for i, row in enumerate(rows, start=1):
            meter = row.meter(i)
            reg = meter.device_type.registers[0]
            lines += reading_lines(keys.line_prefixes(meter), [(0, reg, i + 0.5)], [T0 + i])
            lines.append(keys.status_line(meter, Status(i % 2 == 0, 0.25, 2, 1, 12, T0 + i)))
        status, body = influx.write(db, "\n".join(lines))
        assert status == 204, f"{body}\n" + "\n".join(lines)

        got = {}
        for series in influx.query(db, 'SELECT "value" FROM /.*/ GROUP BY *'):
            tags = {k: v for k, v in series["tags"].items() if v != ""}  # '': a key other series have
            got[tags["meter"]] = (series["name"], tags, series["values"])
        for i, row in enumerate(rows, start=1):
            assert got.pop(str(i)) == (stored(row.measurement), row.expected_tags(i), [[T0 + i, i + 0.5]]), \
                (row, lines[2 * i - 2])
        assert not got, got

        statuses = {}
        for series in influx.query(db, 'SELECT "up", "readings" FROM "poller_status" GROUP BY *'):
            tags = {k: v for k, v in series["tags"].items() if v != ""}
            statuses[tags["meter"]] = (tags, series["values"])
        assert statuses == {str(i): (row.expected_tags(i, with_unit=False), [[T0 + i, float(i % 2 == 0), 12.0]])
                            for i, row in enumerate(rows, start=1)}
    finally:
        influx.drop_database(db)


# What a PostgreSQL text column can hold (UTF8 database): any character but NUL; Python's
# surrogates cannot be encoded, so they never come out of psycopg2 either.
PG_CHAR = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
ODD = st.sampled_from(["\n", "\r", "\r\n", "\t", "\\", "\\\\", " ", "  ", ",", "=", '"', "'", "#", "😀", "é",
                       "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\ufeff", "\u00a0", "\\ ", "\\,", "\\="])
SHORT = st.lists(st.one_of(ODD, st.text(PG_CHAR, max_size=6)), max_size=10).map("".join)
LONG = st.builds(lambda s, n: s * n, st.text(PG_CHAR, min_size=1, max_size=20), st.integers(20, 4000))
TEXT = st.one_of(SHORT, SHORT, SHORT, LONG)
ALLOWED_MEASUREMENT = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_.-]*\Z")  # registers.measurement_name's CHECK
# beyond the CHECK: anything that starts with a letter (so neither empty nor a '#' comment line)
MEASUREMENT = st.one_of(ALLOWED_MEASUREMENT, ALLOWED_MEASUREMENT.map(lambda m: m + "_" * 300),
                        TEXT.map(lambda t: "m" + t))
ROW = st.builds(Row, host=TEXT, type=TEXT, description=st.none() | TEXT, unit=st.none() | TEXT,
                measurement=MEASUREMENT, slave_address=st.integers(0, 255))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=25))
def test_any_text_gives_lines_the_strict_parser_accepts_and_reads_back(influx: InfluxDB1, rows: list[Row]) -> None:
    write_and_read_back(influx, rows)


@pytest.mark.parametrize("row", [
    # issue 9 item 1: a newline/CR became an unescaped space; a trailing backslash: `invalid tag format`
    Row("gw\n1", "sdm", "Main\r\nboard", "V", "voltage_l1", 1),
    Row("gw", "sdm", "east wing\\", "k\\Wh\\", "energy", 2),
    # issue 14: commas in measurement names, backslashes in tag values
    Row("gw", "sdm", "a\\,b\\=c\\ d", None, "m,x y=z", 3),
    Row("  \t ", "sdm", "\x1b[31mred\x1b[0m", "  ", "m", 4),
    Row("gw", "t" * 70_000, "😀" * 300, "°C", "temperature", 5),
], ids=["newline", "trailing-backslash", "escapes", "blank-and-ansi", "overlong"])
def test_examples_read_back(influx: InfluxDB1, row: Row) -> None:
    write_and_read_back(influx, [row])


def test_worked_example_of_the_docstring() -> None:
    meter = Meter(3, "gw", 502, 1, DTYPE, description="Main board,\neast=wing\\")
    assert "description=Main\\ board\\,\\ east\\=wing/," in series_key(meter, REG)


@pytest.mark.parametrize(("text", "kept"), [
    (" V", "V"),
    ("Room 3\\East", "Room 3/East"),
    ("Main board,\neast=wing\\", "Main board, east=wing/"),
    ("XL meter X", "XL meter X"),
    ("\u00a0kWh\u3000", "\u00a0kWh\u3000"),  # only spaces are trimmed: other blanks are text
    ("a" * 255 + " b", "a" * 255),  # cut to 256 characters, then the trailing space goes too
    ("a" * 255 + "\u00a0b", "a" * 255 + "\u00a0"),
    ("é" * 300, "é" * 256),
    (" \t\r\n ", ""),  # nothing left: the tag is left out
])
def test_what_a_tag_value_is_stored_as(text: str, kept: str) -> None:
    """The module docstring's rules, as the `description` tag of a point (server-free twin of the
    read-back tests above, which check the same rules against a real InfluxDB)."""
    assert stored(text) == kept  # the oracle agrees with the table
    tags = meter_tags(Meter(3, "gw", 502, 1, DTYPE, description=text))
    assert tags.get("description") == (kept or None)


def test_a_meter_without_a_description_has_no_description_tag() -> None:
    meter = Meter(3, "gw", 502, 1, DTYPE, description=None)
    assert series_key(meter, REG) == "voltage_l1,host=gw,meter=3,slave_address=1,type=sdm\\ 630,unit=V"
    assert status_key(meter) == "poller_status,host=gw,meter=3,slave_address=1,type=sdm\\ 630"


def test_a_measurement_name_escapes_comma_and_space_but_not_equals() -> None:
    """The line protocol reference: in a measurement name only ',' and ' ' are escaped; a `\\=`
    there would be stored by InfluxDB 2 as a backslash and an equals sign."""
    reg = replace(REG, measurement="a=b c,d")
    key = series_key(Meter(3, "gw", 502, 1, DTYPE), reg)
    assert key == "a=b\\ c\\,d,host=gw,meter=3,slave_address=1,type=sdm\\ 630,unit=V"


def test_series_keys_follow_a_meter_whose_row_changed() -> None:
    keys = SeriesKeys()
    meter = Meter(3, "gw", 502, 1, DTYPE, description="old")
    first = keys.line_prefixes(meter)
    assert keys.line_prefixes(meter) == first == {REG.id: line_prefix(series_key(meter, REG))}
    moved = replace(meter, description="new")  # a reload gives a new Meter object for the changed row
    assert keys.line_prefixes(moved) == {REG.id: line_prefix(series_key(moved, REG))}
    assert "description=new" in keys.line_prefixes(moved)[7]
    keys.forget_except(set())
    assert keys.line_prefixes(meter) == first


def test_series_keys_are_built_once_per_meter_and_forgotten_with_it() -> None:
    """line_prefixes runs for every meter in every cycle: a meter's are built once (the same dict
    comes back while the Meter object is the same), and forget_except, after a reload, drops those
    of meters no longer configured and keeps those of the others."""
    keys = SeriesKeys()
    three, four = Meter(3, "gw", 502, 1, DTYPE), Meter(4, "gw", 502, 2, DTYPE)
    first_three, first_four = keys.line_prefixes(three), keys.line_prefixes(four)
    assert keys.line_prefixes(three) is first_three and keys.line_prefixes(four) is first_four
    assert first_three == {REG.id: line_prefix(series_key(three, REG))}
    keys.forget_except({3})
    assert keys.line_prefixes(three) is first_three
    rebuilt = keys.line_prefixes(four)
    assert rebuilt == first_four and rebuilt is not first_four



def test_a_status_line_follows_a_meter_whose_row_changed() -> None:
    """status_line runs for every meter in every cycle, as line_prefixes does: it carries the tags of
    the Meter object it is given, so a reloaded row's new description shows from the next cycle,
    and a forgotten meter's status key is built afresh."""
    keys = SeriesKeys()
    meter = Meter(3, "gw", 502, 1, DTYPE, description="old")
    status = Status(True, 0.5, 1, 0, 1, T0)
    tail = " up=1.0,duration_s=0.5,requests=1.0,errors=0.0,readings=1.0 1700000000000"
    assert keys.status_line(meter, status) == status_key(meter) + tail
    assert "description=old," in keys.status_line(meter, status)
    moved = replace(meter, description="new")
    assert keys.status_line(moved, status) == status_key(moved) + tail
    keys.forget_except(set())
    assert keys.status_line(meter, status) == status_key(meter) + tail
    assert keys.line_prefixes(meter) == {REG.id: line_prefix(series_key(meter, REG))}


def test_status_line_fields_are_floats_written_as_python_writes_them() -> None:
    keys = SeriesKeys()
    meter = Meter(3, "gw", 502, 1, DTYPE)
    line = keys.status_line(meter, Status(False, 1e-05, 12, 3, 0, 7))
    assert line == (status_key(meter) + " up=0.0,duration_s=1e-05,requests=12.0,errors=3.0,readings=0.0 7")


def reference_reading_lines(keys, decoded, times_ms):
    """reading_lines as it was first written: the straightforward form the fast one must equal
    (up to how a float's exponent is written: `same_as_repr`)."""
    return [f"{keys[reg.id]} value={value!r} {times_ms[index]}" for index, reg, value in decoded]


def same_as_repr(text: str, value: float) -> bool:
    """`text` reads back as exactly `value` (every bit, the sign of a zero too) and is the decimal
    number repr writes (its shortest digits), perhaps written another way: `1e16` for `1e+16`,
    `0.00001` for `1e-05`."""
    return struct.pack(">d", float(text)) == struct.pack(">d", value) and Decimal(text) == Decimal(repr(value))


def same_lines(ours: list[str], reference: list[str]) -> bool:
    """The same lines, each value's text `same_as_repr` the reference's."""
    def split(line: str) -> tuple[str, str, str]:
        head, _, stamp = line.rpartition(" ")
        key, _, text = head.rpartition(" value=")
        return key, text, stamp

    if len(ours) != len(reference):
        return False
    for mine, theirs in zip(map(split, ours), map(split, reference), strict=True):
        if mine[0] != theirs[0] or mine[2] != theirs[2] or not same_as_repr(mine[1], float(theirs[1])):
            return False
    return True


VALUES = st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                   st.floats(allow_nan=False, allow_infinity=False, width=32),
                   st.integers(-(2**63), 2**64).map(float),
                   st.sampled_from([0.0, -0.0, 5e-324, 1e16, 1e-05, 0.0001, 123456789012345680.0, 1e22]))


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 4), VALUES), max_size=40),
       st.lists(st.integers(0, 2**63), min_size=4, max_size=4))
def test_reading_lines_equal_the_straightforward_form(decoded, times):
    """The series key, ` value=`, the float as repr writes it (`same_as_repr`), a space, the block's time."""
    regs = {rid: replace(REG, id=rid, measurement=f"m{rid}") for rid in range(1, 5)}
    meter = Meter(3, "gw", 502, 1, DeviceType("sdm 630", tuple(regs.values())), description="a b")
    series = SeriesKeys()
    keys, prefixes = {r.id: series_key(meter, r) for r in regs.values()}, series.line_prefixes(meter)
    rows = [(index, regs[rid], value) for index, rid, value in decoded]
    assert same_lines(reading_lines(prefixes, rows, times), reference_reading_lines(keys, rows, times))
    once = times[:1] * 4
    assert same_lines(reading_lines(prefixes, iter(rows), once), reference_reading_lines(keys, rows, once))


@given(st.lists(VALUES, max_size=60))
def test_float_texts_read_back_as_exactly_the_float_with_repr_digits(values):
    texts = float_texts(values)
    assert len(texts) == len(values)
    for text, value in zip(texts, values, strict=True):
        assert same_as_repr(text, value), (text, repr(value))


def test_the_checks_of_a_float_text_fail_on_a_different_float():
    """same_as_repr and same_lines, which the tests above rest on, can tell a wrong text."""
    assert same_as_repr("1e16", 1e16) and same_as_repr("0.00001", 1e-05) and same_as_repr("-0.0", -0.0)
    assert not same_as_repr("0.0", -0.0)  # the sign of a zero
    assert not same_as_repr("230.1", 230.10000610351562)  # float32's shortest text is another float64
    assert same_as_repr("0.30000000000000004", 0.1 + 0.2)  # repr's own text
    assert not same_as_repr("0.3000000000000000444", 0.1 + 0.2)  # the same float, not repr's decimal
    line = "m,meter=1 value=1.5 7"
    assert same_lines([line], [line]) and not same_lines([line], ["m,meter=1 value=1.25 7"])
    assert not same_lines([line], ["m,meter=2 value=1.5 7"]) and not same_lines([line], [line, line])


def test_every_kind_of_float_is_stored_exactly_by_influxdb(influx: InfluxDB1) -> None:
    """The texts float_texts writes (shortest digits, exponents as `1e16`, `1e-7`, subnormals), parsed
    by the strict 1.x /write and read back: the same floats, bit for bit."""
    rng = random.Random(11)
    floats32 = [struct.unpack(">f", struct.pack(">I", rng.getrandbits(32)))[0] for _ in range(400)]
    values = [v for v in floats32 if math.isfinite(v)] + [
        0.0, 1e16, 1e-05, 1e-07, 5e-324, 2.0**64, 1e22, 123456789012345680.0, 3.4028234663852886e38,
        1.401298464324817e-45, -1.1754943508222875e-38, 230.10000610351562, 0.1, 1 / 3]
    regs = [replace(REG, id=i, measurement="v") for i in range(len(values))]
    meter = Meter(3, "gw", 502, 1, DeviceType("sdm 630", tuple(regs)))
    keys = SeriesKeys().line_prefixes(meter)
    lines = reading_lines(keys, [(i, reg, v) for i, (reg, v) in enumerate(zip(regs, values, strict=True))],
                          [T0 + i for i in range(len(values))])
    assert any("e-" in line.split(" value=")[1] for line in lines), "no exponent written: the test tests nothing"
    influx.create_database("floats")
    assert influx.write("floats", "\n".join(lines)) == (204, ""), "the strict parser refused a line"
    (series,) = influx.query("floats", 'SELECT "value" FROM "v"')
    # (InfluxDB's JSON writes a float with no fraction as a whole number: float() of it)
    assert [(t - T0, float(v)) for t, v in series["values"]] == list(enumerate(values))


# --------------------------------------------------------------------------- through the v2 API


def test_influx_sink_writes_through_the_v2_bridge(influx: InfluxDB1) -> None:
    """InfluxSink -> InfluxV2Bridge (the v2 write API) -> the strict 1.x parser, both ways."""
    influx.create_database("bridged")
    with InfluxV2Bridge(influx) as bridge:
        env = bridge.env("bridged")
        sink = InfluxSink(env["INFLUXDB_URL"], env["INFLUXDB_TOKEN"], env["INFLUXDB_ORG"], env["INFLUXDB_BUCKET"])
        try:
            meter = Meter(9, "gw\nforged", 502, 1, DTYPE, description="x\\")
            sink.write(reading_lines({REG.id: line_prefix(series_key(meter, REG))}, [(0, REG, 1.5), (1, REG, 2.5)],
                                     [T0, T0 + 1000]))
            with pytest.raises(WriteError) as refused:
                sink.write(["voltage_l1,host=a\\ value=1.0 1"])  # what the old escaping made of `a\`
            assert not refused.value.retryable and "HTTP 400" in str(refused.value), refused.value
        finally:
            sink.close()
        assert bridge.requests == 2
    (series,) = influx.query("bridged", 'SELECT "value" FROM "voltage_l1" GROUP BY *')
    assert series["tags"] == {"description": "x/", "host": "gw forged", "meter": "9", "slave_address": "1",
                              "type": "sdm 630", "unit": "V"}
    assert series["values"] == [[T0, 1.5], [T0 + 1000, 2.5]]


# --------------------------------------------------------------------------- InfluxSink's answers
# A stand-in for InfluxDB's /api/v2/write in this process (a thread, nothing to start): it answers
# as told and keeps each request as it arrived, so the answers a real server gives only in bad
# times (503 with Retry-After, 429, 408, 401 ...) are tried through InfluxSink's own HTTP client.


@dataclass
class Request:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    client: tuple[str, int]  # the connection it came on


class Answering:
    """Answers every write with `status`, `headers` and `body` (a 204 by default)."""

    def __init__(self) -> None:
        self.reply: tuple[int, dict[str, str], bytes] = (204, {}, b"")  # one attribute: read at once
        self.requests: list[Request] = []
        self.hang_up = False  # close each connection after its answer, without saying so (an idle timeout)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                status, headers, body = outer.reply
                hang_up = outer.hang_up  # read before the answer: once it is sent, the test goes on
                outer.requests.append(Request(url.path, parse_qs(url.query), dict(self.headers),
                                              self.rfile.read(int(self.headers["Content-Length"])),
                                              self.client_address))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = hang_up

            def log_message(self, *args: object) -> None:
                pass

        self.http = HttpThread(Handler, poll_s=0.02)
        self.url = self.http.url

    def answer(self, status: int, body: str = "", **headers: str) -> None:
        self.reply = (status, {k.replace("_", "-"): v for k, v in headers.items()}, body.encode())

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def answering() -> Iterator[Answering]:
    stand_in = Answering()
    yield stand_in
    stand_in.close()


@pytest.fixture
def sink(answering: Answering) -> Iterator[InfluxSink]:
    made = InfluxSink(answering.url, "s3cret", "emm", "energy", timeout_s=5)
    yield made
    made.close()


LINES = ["voltage_l1,host=gw,meter=3 value=230.5 1700000000123", "voltage_l1,host=gw,meter=3 value=231.0 1700000001123"]


def test_a_batch_is_one_plain_request_to_the_v2_write_api(answering: Answering, sink: InfluxSink) -> None:
    """What InfluxDB receives: the lines as they are (no gzip: it cost more CPU than the decoding,
    bench/README.md), in milliseconds, for the configured org and bucket, with the token; nothing
    for an empty batch."""
    sink.write(LINES)
    sink.write([])
    (request,) = answering.requests
    assert request.path == "/api/v2/write"
    assert request.query == {"org": ["emm"], "bucket": ["energy"], "precision": ["ms"]}
    assert request.headers["Authorization"] == "Token s3cret"
    assert "Content-Encoding" not in request.headers
    assert request.body.decode() == "\n".join(LINES)


BODY = '{"code":"invalid","message":"unable to parse \'voltage_l1,host=gw value=\': missing field value"}'


@pytest.mark.parametrize(("status", "reason", "retryable"), [
    (400, "Bad Request", False), (401, "Unauthorized", False), (403, "Forbidden", False),
    (404, "Not Found", False), (413, "Request Entity Too Large", False), (422, "Unprocessable Entity", False),
    (499, "", False),
    (408, "Request Timeout", True), (429, "Too Many Requests", True), (500, "Internal Server Error", True),
    (502, "Bad Gateway", True), (503, "Service Unavailable", True), (599, "", True),
])
def test_a_refusal_says_where_and_why_and_whether_retrying_can_help(answering: Answering, sink: InfluxSink,
                                                                      status: int, reason: str,
                                                                      retryable: bool) -> None:
    """README's table: 5xx, 408 and 429 are an outage (kept and retried), any other 4xx goes to the
    dead-letter file; the message names the server, the count, the status and InfluxDB's own words."""
    answering.answer(status, BODY + "\n")
    with pytest.raises(WriteError) as refused:
        sink.write(LINES)
    assert str(refused.value) == f"InfluxDB at {answering.url} refused 2 points: HTTP {status} {reason}: {BODY}"
    assert refused.value.retryable is retryable
    assert refused.value.retry_after is None  # no Retry-After header


def test_a_refusal_without_a_body_and_a_long_body_cut_to_300_characters(answering: Answering,
                                                                          sink: InfluxSink) -> None:
    answering.answer(503)
    with pytest.raises(WriteError) as empty:
        sink.write(LINES[:1])
    assert str(empty.value) == f"InfluxDB at {answering.url} refused 1 points: HTTP 503 Service Unavailable: "
    long = "".join(f"[{i:03}]" for i in range(200))  # 1000 characters, each position readable
    answering.answer(400, long)
    with pytest.raises(WriteError) as cut:
        sink.write(LINES[:1])
    assert str(cut.value) == f"InfluxDB at {answering.url} refused 1 points: HTTP 400 Bad Request: {long[:300]}"


@pytest.mark.parametrize(("status", "retry_after", "seconds"), [
    (503, "120", 120.0), (429, " 7 ", 7.0), (429, "0", 0.0), (503, "soon", None),
])
def test_retry_after_of_a_429_or_503_is_handed_to_the_outbox(answering: Answering, sink: InfluxSink, status: int,
                                                               retry_after: str, seconds: float | None) -> None:
    answering.answer(status, Retry_After=retry_after)
    with pytest.raises(WriteError) as refused:
        sink.write(LINES)
    assert refused.value.retryable and refused.value.retry_after == seconds


def test_retry_after_as_an_http_date_is_the_seconds_until_then(answering: Answering, sink: InfluxSink) -> None:
    later = datetime.now(UTC) + timedelta(seconds=90)
    answering.answer(503, Retry_After=format_datetime(later, usegmt=True))
    with pytest.raises(WriteError) as refused:
        sink.write(LINES)
    assert refused.value.retry_after is not None and 85 <= refused.value.retry_after <= 90


@pytest.mark.parametrize(("text", "seconds"), [
    (None, None), ("120", 120.0), ("  30 ", 30.0), ("1.5", None), ("-5", None), ("in a minute", None), ("", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: no wait
    ("Wed, 21 Oct 2015 07:28:00 -0000", 0.0),  # RFC 5322's "UTC, zone unknown"
])
def test_retry_after_values(text: str | None, seconds: float | None) -> None:
    assert parse_retry_after(text) == seconds


@pytest.mark.parametrize("form", [
    "%a, %d %b %Y %H:%M:%S GMT",  # IMF-fixdate, what servers send
    "%A, %d-%b-%y %H:%M:%S GMT",  # RFC 850, obsolete: RFC 9110 says recipients accept it
    "%a %b %d %H:%M:%S %Y",  # asctime, obsolete, no zone: it means UTC
    "%a, %d %b %Y %H:%M:%S -0000",
    "%a, %d %b %Y %H:%M:%S +0200",  # not an HTTP date, but a zone is a zone
])
def test_retry_after_dates_in_every_form_are_read_in_their_zone(form: str) -> None:
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=600)
    shown = later.astimezone(timezone(timedelta(hours=2))) if "+0200" in form else later
    seconds = parse_retry_after(shown.strftime(form))
    assert seconds is not None and 590 <= seconds <= 600, seconds


def test_a_write_waits_10_s_by_default_and_timeout_s_is_each_connections() -> None:
    """The poller's sink (make_outbox) uses the default: a write to a hung InfluxDB gives up after
    10 s (the wait itself: test_a_write_gives_up_after_its_timeout_once_the_outbox_retries_not_the_client)."""
    for sink, seconds in ((InfluxSink("http://127.0.0.1:9", "t", "emm", "energy"), 10.0),
                          (InfluxSink("https://127.0.0.1:9", "t", "emm", "energy", timeout_s=2.5), 2.5)):
        assert sink._connection().timeout == seconds
        sink.close()


def test_batches_share_one_connection_and_one_the_server_closed_meanwhile_is_no_outage(
        answering: Answering, sink: InfluxSink) -> None:
    """One connection for every batch while the server keeps it open (no handshake a batch); when
    InfluxDB or a proxy closed it while it was idle, the next batch opens another and is written,
    no outage said (a 5-minute schedule outlives most idle timeouts)."""
    for _ in range(3):
        sink.write(LINES)
    assert len({r.client for r in answering.requests}) == 1
    answering.hang_up = True
    sink.write(LINES)  # answered, then the server hangs up
    assert sink._conn is not None and sink._conn.sock is not None
    assert select.select([sink._conn.sock], [], [], 10)[0]  # its hang-up has reached this end
    answering.hang_up = False
    sink.write(LINES)
    sink.write(LINES)
    assert len(answering.requests) == 6 and len({r.client for r in answering.requests}) == 2


@pytest.mark.parametrize(("url", "host", "port"), [
    ("http://[::1]", "::1", 80), ("https://[2001:db8::1]/influx", "2001:db8::1", 443),
    ("http://[fd00::abcd]:8086", "fd00::abcd", 8086), ("https://influx.example", "influx.example", 443)])
def test_a_url_without_a_port_takes_the_schemes(url: str, host: str, port: int) -> None:
    """An IPv6 address without a port is not cut at its last colon (http.client's reading of a
    host with no port)."""
    sink = InfluxSink(url, "t", "emm", "energy")
    conn = sink._connection()
    assert (conn.host, conn.port) == (host, port)
    sink.close()


def test_an_answer_given_before_the_body_was_read_is_taken_not_an_outage() -> None:
    """A server (or a proxy) that refuses a batch from its headers (a bad token: 401, too large:
    413), answers and closes while the body is still being sent: its answer counts, so the batch
    goes where README's table says, not into retries for ever."""
    answer = (b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: application/json\r\nContent-Length: 18\r\n"
              b"Connection: close\r\n\r\n{\"code\":\"too big\"}")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                seen = b""
                while b"\r\n\r\n" not in seen:
                    seen += conn.recv(65536)
                conn.sendall(answer)  # and close, the body unread

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        sink = InfluxSink(f"http://127.0.0.1:{listener.getsockname()[1]}", "t", "emm", "energy", timeout_s=10)
        lines = [f"voltage_l1,host=gw,meter={i} value=230.5 1700000000123" for i in range(300_000)]  # 15 MB
        try:
            with pytest.raises(WriteError) as refused:
                sink.write(lines)
        finally:
            sink.close()
            server.join(10)
    assert not refused.value.retryable, refused.value
    assert "refused 300000 points: HTTP 413 Request Entity Too Large" in str(refused.value)


def test_an_influxdb_url_with_a_path_writes_below_it(answering: Answering) -> None:
    """INFLUXDB_URL=http://proxy/influx/ (InfluxDB behind a reverse proxy): the write goes to
    /influx/api/v2/write; an empty token sends no Authorization header."""
    sink = InfluxSink(answering.url + "/influx/", "", "my org", "b&b")
    try:
        sink.write(LINES)
    finally:
        sink.close()
    (request,) = answering.requests
    assert request.path == "/influx/api/v2/write"
    assert request.query == {"org": ["my org"], "bucket": ["b&b"], "precision": ["ms"]}
    assert "Authorization" not in request.headers


def test_an_influxdb_nobody_answers_at_is_an_outage_that_names_the_cause() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = InfluxSink(f"http://127.0.0.1:{port}", "t", "emm", "energy", timeout_s=5)
    try:
        with pytest.raises(WriteError) as down:
            sink.write(LINES + LINES[:1])
    finally:
        sink.close()
    message = str(down.value)
    assert message.startswith(f"InfluxDB at http://127.0.0.1:{port} is unreachable (ConnectionRefusedError: ")
    assert "Connection refused" in message and message.endswith("); 3 points not written")
    assert down.value.retryable and down.value.retry_after is None


def test_a_tls_handshake_that_fails_is_an_outage_not_a_refusal(answering: Answering) -> None:
    """Regression (found by the mutation check, when the client was influxdb-client, which reported a
    TLS failure as an answer with status 0): it was taken for a refusal (not retryable), and the
    outbox put the batch in the dead-letter file, where README's table puts only 4xx answers."""
    url = answering.url.replace("http://", "https://")  # TLS spoken to a plain-HTTP server
    sink = InfluxSink(url, "t", "emm", "energy", timeout_s=5)
    try:
        with pytest.raises(WriteError) as tls:
            sink.write(LINES)
    finally:
        sink.close()
    assert tls.value.retryable and tls.value.retry_after is None
    message = str(tls.value)
    assert message.startswith(f"InfluxDB at {url} is unreachable (SSLError") and "HTTP" not in message
    assert message.endswith("); 2 points not written")
    assert not answering.requests


def test_a_write_gives_up_after_its_timeout_once_the_outbox_retries_not_the_client() -> None:
    """A host that never completes the connection: one write waits `timeout_s` once and reports an
    outage, so the outbox can spool and back off; the sink does not retry on its own."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        with socket.create_connection(listener.getsockname()):  # fills the backlog: later SYNs are dropped
            sink = InfluxSink(f"http://127.0.0.1:{listener.getsockname()[1]}", "t", "emm", "energy", timeout_s=0.4)
            try:
                started = time.monotonic()
                with pytest.raises(WriteError) as hung:
                    sink.write(LINES)
                took = time.monotonic() - started
            finally:
                sink.close()
    assert hung.value.retryable and "timed out" in str(hung.value)
    assert 0.35 <= took < 0.75, took  # one attempt of 0.4 s, not a second one
