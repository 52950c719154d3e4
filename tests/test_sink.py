"""Line protocol: the contract's tags, escaping, the read's timestamp; every line parsed back
by a real InfluxDB 1.x `/write` (strict: it rejects what InfluxDB 2 rejects)."""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.model import DataType, DeviceType, FunctionCode, Meter, Register
from poller.sink import InfluxSink, SeriesKeys, StdoutSink, WriteError, reading_lines, series_key
from tests.servers import InfluxDB1, InfluxV2Bridge

REG = Register(7, "sdm", 0, "voltage_l1", "V", DataType.FLOAT32, FunctionCode.READ_INPUT_REGISTERS)
DTYPE = DeviceType("sdm 630", (REG,))
T0 = 1_700_000_000_000


def test_point_schema():
    meter = Meter(3, "gw.local", 502, 12, DTYPE, description="Main board, east=wing")
    (line,) = reading_lines({REG.id: series_key(meter, REG)}, [(0, REG, 230.5)], [1_700_000_000_123])
    assert line == ("voltage_l1,description=Main\\ board\\,\\ east\\=wing,host=gw.local,meter=3,"
                    "slave_address=12,type=sdm\\ 630,unit=V value=230.5 1700000000123")


def test_no_empty_tags_and_float_values():
    reg = Register(8, "sdm", 0, "power factor", None, DataType.INT16, FunctionCode.READ_HOLDING_REGISTERS)
    meter = Meter(1, "h", 502, 1, DTYPE, description="  ")
    assert series_key(meter, reg) == "power\\ factor,host=h,meter=1,slave_address=1,type=sdm\\ 630"
    (line,) = reading_lines({reg.id: series_key(meter, reg)}, [(0, reg, 5.0)], [1])
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
            lines += reading_lines(keys.for_meter(meter), [(0, reg, i + 0.5)], [T0 + i])
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


# --------------------------------------------------------------------------- through the v2 API


def test_influx_sink_writes_through_the_v2_bridge(influx: InfluxDB1) -> None:
    """influxdb-client's v2 write API -> InfluxV2Bridge -> the strict 1.x parser, both ways."""
    influx.create_database("bridged")
    with InfluxV2Bridge(influx) as bridge:
        env = bridge.env("bridged")
        sink = InfluxSink(env["INFLUXDB_URL"], env["INFLUXDB_TOKEN"], env["INFLUXDB_ORG"], env["INFLUXDB_BUCKET"])
        try:
            meter = Meter(9, "gw\nforged", 502, 1, DTYPE, description="x\\")
            sink.write(reading_lines({REG.id: series_key(meter, REG)}, [(0, REG, 1.5), (1, REG, 2.5)],
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
