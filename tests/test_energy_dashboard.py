"""The energy dashboard (grafana/dashboards/emm-energy.json) against a real InfluxQL engine.

Every panel's InfluxQL is taken from the dashboard file, rendered as Grafana renders it
(time range, `${__from}`/`${__to}` in epoch ms, `${__timezone:raw}` = the dashboard's time
zone, `$meter` as the regex of the selected meters) and run on Debian's InfluxDB 1.6
(tests/servers.py, InfluxDB1), loaded through its /write endpoint with synthetic counters
whose answer is known without InfluxDB:

- meter 1 ("Main board", unit Wh): energy_import rises by 1 kWh every hour, so a local day
  holds as many kWh as it has hours: 23 on 30 March 2025, 25 on 26 October 2025 in
  Europe/Berlin, 24 on the others. active_power is 1000 W with three known spikes.
- meter 2 ("Feed-in meter", unit kWh): energy_import rises by 2 kWh an hour from 08:00 to
  16:00 local time (16 kWh a day), energy_export by 1 kWh an hour from 10:00 to 14:00
  (4 kWh a day); on 15 October 2025 at 12:00 the meter is replaced and its import counter
  starts again at 0.
- meter 3 (an inverter, unit Wh): energy_yield rises by 1 kWh an hour from 10:00 to 15:00.
- meter 9 (unit MWh): a unit the dashboard cannot convert; it must be listed as left out,
  not added to anything.

Readings every 5 minutes (meters 3 and 9: every hour), from 28 February to 6 April and from
28 September to 2 November 2025 (local time), so every month and ISO week asked about is
complete, with the quarter hour before it.

Grafana itself is not available here: its transformations (join, merge, the bar chart) are
checked for shape only; what the tests prove is what InfluxDB returns to them.
"""

from __future__ import annotations

import functools
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.servers import InfluxDB1

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "grafana" / "dashboards" / "emm-energy.json"
BERLIN = ZoneInfo("Europe/Berlin")
DB = "energy"
STEP = timedelta(minutes=5)
PERIODS = [(datetime(2025, 2, 28, tzinfo=BERLIN), datetime(2025, 4, 7, tzinfo=BERLIN)),
           (datetime(2025, 9, 28, tzinfo=BERLIN), datetime(2025, 11, 3, tzinfo=BERLIN))]
REPLACED = datetime(2025, 10, 15, 12, 0, tzinfo=BERLIN)  # meter 2's new meter starts at 0 kWh
SPIKES = {  # active_power of meter 1 (W) at these local readings, 1000 W at every other
    **{datetime(2025, 3, 12, 9, m, tzinfo=BERLIN): 3000.0 for m in (0, 5, 10)},
    **{datetime(2025, 3, 30, 12, m, tzinfo=BERLIN): 6000.0 for m in (10, 15, 20)},
    **{datetime(2025, 10, 10, 18, m, tzinfo=BERLIN): 9000.0 for m in (0, 5, 10)},
}
ALL_METERS = "(1|2|3|9)"  # what Grafana puts for $meter with these four selected


# --------------------------------------------------------------------------- synthetic data


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


@functools.cache
def readings() -> tuple[tuple[datetime, dict[str, float]], ...]:
    """(time, {series: value}) every STEP; the counters are integrals of a rate that depends on
    the local hour, so they are exact at every reading."""
    out = []
    replaced, spikes = REPLACED.astimezone(UTC), {k.astimezone(UTC): v for k, v in SPIKES.items()}
    hours = STEP / timedelta(hours=1)
    for start, end in PERIODS:
        t, stop = start.astimezone(UTC), end.astimezone(UTC)
        c = {"m1": 5_000_000.0, "m2_import": 10_000.0, "m2_export": 2_000.0, "m3": 3_000_000.0, "m9": 42.0}
        while t < stop:
            if t == replaced:
                c["m2_import"] = 0.0
            out.append((t, {**c, "m1_power": spikes.get(t, 1000.0)}))
            hour = t.astimezone(BERLIN).hour
            c["m1"] += 1000 * hours
            c["m2_import"] += 2 * hours if 8 <= hour < 16 else 0
            c["m2_export"] += 1 * hours if 10 <= hour < 14 else 0
            c["m3"] += 1000 * hours if 10 <= hour < 15 else 0
            c["m9"] += 0.001 * hours
            t += STEP
    return tuple(out)


def line_protocol() -> str:
    """Meters 1 and 2 read every 5 minutes, the inverter and the MWh meter every hour."""
    m1 = "meter=1,host=gw1,slave_address=1,type=sdm630,description=Main\\ board"
    m2 = "meter=2,host=gw1,slave_address=2,type=em340,description=Feed-in\\ meter"
    lines = []
    for t, v in readings():
        stamp = ms(t)
        lines += [f"energy_import,{m1},unit=Wh value={v['m1']} {stamp}",
                  f"active_power,{m1},unit=W value={v['m1_power']} {stamp}",
                  f"energy_import,{m2},unit=kWh value={v['m2_import']} {stamp}",
                  f"energy_export,{m2},unit=kWh value={v['m2_export']} {stamp}"]
        if t.minute == 0:
            lines += [f"energy_yield,meter=3,host=gw2,slave_address=1,type=sun2000,unit=Wh value={v['m3']} {stamp}",
                      f"energy_import,meter=9,host=gw2,slave_address=9,type=odd,unit=MWh value={v['m9']} {stamp}"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def influx() -> Iterator[Callable[[str], list[dict[str, Any]]]]:
    with InfluxDB1() as server:
        server.create_database(DB)
        status, answer = server.write(DB, line_protocol())
        assert status == 204, answer
        yield lambda q: server.query(DB, q)


# --------------------------------------------------------------------------- Grafana's side


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> dict[str, dict[str, Any]]:
    return {p["title"]: p for p in dashboard()["panels"] if p["type"] != "row"}


def query(title: str, ref: str = "A") -> str:
    return next(t["query"] for t in panels()[title]["targets"] if t["refId"] == ref)


def local(y: int, m: int, d: int, *hms: int) -> datetime:
    return datetime(y, m, d, *hms, tzinfo=BERLIN)


def month(y: int, m: int) -> tuple[datetime, datetime]:
    """Grafana's range for a whole month ("This month", "Previous month"): from the 1st 00:00
    to the last millisecond of the month, local time."""
    nxt = local(y + m // 12, m % 12 + 1, 1)
    return local(y, m, 1), nxt - timedelta(milliseconds=1)


def panel_range(panel: dict[str, Any], now: datetime) -> tuple[datetime, datetime]:
    """The time range of a panel with its own relative time and time shift, as Grafana computes it
    in the dashboard's time zone (only the values the energy dashboard uses)."""
    assert panel.get("timeFrom") == "now/M"  # "This month so far"
    start, end = local(now.year, now.month, 1), now
    if "timeShift" in panel:
        assert panel["timeShift"] == "1M/M"  # both ends a month back, rounded to the month
        prev = (now.replace(day=1) - timedelta(days=1))
        start, end = month(prev.year, prev.month)
    return start, end


def render(q: str, start: datetime, end: datetime, tz: str = "Europe/Berlin", meters: str = ALL_METERS) -> str:
    """The query as Grafana sends it: $timeFilter as Grafana writes it, ${__from}/${__to} in epoch
    ms, ${__timezone:raw} the zone's name unescaped, $meter the regex of the selected meters."""
    a, b = ms(start), ms(end)
    q = q.replace("$timeFilter", f"time >= {a}ms and time <= {b}ms")
    q = q.replace("${__from}", str(a)).replace("${__to}", str(b)).replace("${__timezone:raw}", tz)
    q = q.replace("${meter}", meters).replace("$meter", meters)
    leftover = re.findall(r"\$\{?[A-Za-z_]\w*", q)
    assert not leftover, f"unsubstituted {leftover} in {q!r}"
    return q


def by_series(series: list[dict[str, Any]], column: int = 1) -> dict[tuple[str, str], dict[int, float]]:
    """{(measurement, meter): {time ms: value}} of the rows that have a value."""
    out: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for s in series:
        for row in s["values"]:
            if row[column] is not None:
                out[(s["name"], s.get("tags", {}).get("meter", ""))][row[0]] = row[column]
    return dict(out)


def by_local_date(rows: dict[int, float]) -> dict[date, float]:
    """{local date a row starts on: value}, each row (a day, a week) starting at local midnight."""
    days = {}
    for stamp, value in rows.items():
        t = datetime.fromtimestamp(stamp / 1000, BERLIN)
        assert (t.hour, t.minute, t.second) == (0, 0, 0), f"a day starts at {t}, not at local midnight"
        days[t.date()] = value
    return days


def hours_of(day: date) -> float:
    """The length of a local day in hours (23, 24 or 25), from the time zone database alone."""
    start = datetime(day.year, day.month, day.day, tzinfo=BERLIN)
    nxt = datetime.combine(day + timedelta(days=1), datetime.min.time(), BERLIN)
    return (nxt.astimezone(UTC) - start.astimezone(UTC)) / timedelta(hours=1)


def days_of(start: datetime, end: datetime) -> list[date]:
    d, out = start.date(), []
    while d <= end.date():
        out.append(d)
        d += timedelta(days=1)
    return out


def totals(influx: Callable, title: str, start: datetime, end: datetime) -> dict[str, dict[str, float]]:
    """A totals table's four queries: {column: {meter: value}} (what the merge transformation joins)."""
    out: dict[str, dict[str, float]] = {}
    for t in panels()[title]["targets"]:
        assert t["resultFormat"] == "table"
        for s in influx(render(t["query"], start, end)):
            column = s["columns"][1]
            assert len(s["values"]) == 1, s
            out.setdefault(column, {})[s["tags"]["meter"]] = s["values"][0][1]
    return out


# --------------------------------------------------------------------------- structure


def test_dashboard_shape() -> None:
    dash = dashboard()
    assert dash["uid"] == "emm-energy"
    assert dash["timezone"] == "", "the dashboard follows the user's/organisation's/server's time zone"
    assert dash["weekStart"] == "monday", "'This week' in the time picker must be the ISO week the panels use"
    [meter] = dash["templating"]["list"]
    assert meter["name"] == "meter" and meter["multi"] and meter["includeAll"] and meter["allValue"] == ".*"
    expected = {"Energy imported per day", "Energy exported or generated per day", "Energy imported per week",
                "Energy exported or generated per week", "This month so far", "Previous month",
                "Peak demand per day", "Mean power per quarter hour", "Totals for the selected time range",
                "Energy counters left out (unit neither Wh nor kWh)"}
    assert set(panels()) == expected, "a panel without a test below: add one"
    for title, panel in panels().items():
        for t in panel["targets"]:
            q = t["query"]
            assert t["rawQuery"] is True and t["datasource"]["uid"] == "emm-influxdb", title
            assert "$__interval" not in q, f"{title}: fixed periods, not Grafana's interval"
            if re.search(r"GROUP BY time\((1d|1w)", q):
                assert q.rstrip().endswith("tz('${__timezone:raw}')"), f"{title}: days and weeks need local time"
            if "energy_" in q:
                assert "non_negative_difference" in q or '"unit" !~' in q, title
        if panel["type"] == "barchart":  # one frame with a row per day or week, labelled by its start
            assert panel["transformations"][0]["id"] == "joinByField"
            [time_field] = [o for o in panel["fieldConfig"]["overrides"] if o["matcher"]["options"] == "Time"]
            assert time_field["properties"][0]["value"] in ("time:YYYY-MM-DD", "time:GGGG-[W]WW")
    for title in ("This month so far", "Previous month", "Totals for the selected time range"):
        panel = panels()[title]
        assert [t["query"] for t in panel["targets"]] == \
               [t["query"] for t in panels()["Totals for the selected time range"]["targets"]]
        ids = [t["id"] for t in panel["transformations"]]
        assert ids == ["organize", "merge", "convertFieldType", "organize", "sortBy"], title
        assert panel["transformations"][0]["options"]["excludeByName"] == {"Time": True}


# --------------------------------------------------------------------------- days


@pytest.mark.parametrize("y, m, short_or_long", [(2025, 3, date(2025, 3, 30)), (2025, 10, date(2025, 10, 26))])
def test_days_are_local_days_across_the_clock_change(influx, y: int, m: int, short_or_long: date) -> None:
    """A counter rising 1 kWh an hour: 23 kWh on 30 March, 25 on 26 October, 24 on every other
    local day; every bar starts at local midnight. Grouped in UTC (tz() left to its default) the
    days are 24 hours long and start at 01:00 or 02:00 local time: another answer. Without the
    quarter hour before the range, the first day loses its first quarter hour (23.75)."""
    start, end = month(y, m)
    q = query("Energy imported per day")
    days = by_local_date(by_series(influx(render(q, start, end)))[("energy_import", "1")])
    assert list(days) == days_of(start, end)
    assert days == pytest.approx({d: hours_of(d) for d in days}, abs=1e-6)
    assert days[short_or_long] == pytest.approx(23 if m == 3 else 25)
    assert [days[short_or_long - timedelta(days=1)], days[short_or_long + timedelta(days=1)]] == [pytest.approx(24)] * 2

    utc = by_series(influx(render(q, start, end, tz="UTC")))[("energy_import", "1")]
    assert sorted(utc.values()) != sorted(days.values()), "tz() changed nothing"
    no_lead = by_series(influx(render(q.replace(" - 15m", ""), start, end)))[("energy_import", "1")]
    assert min(no_lead.items())[1] == pytest.approx(23.75), "the quarter hour before the range is needed"


def test_wh_and_kwh_maps_both_in_kwh_and_export_apart_from_import(influx) -> None:
    start, end = month(2025, 3)
    imported = by_series(influx(render(query("Energy imported per day"), start, end)))
    assert set(imported) == {("energy_import", "1"), ("energy_import", "2")}, "meter 9 (MWh) must be left out"
    assert list(by_local_date(imported[("energy_import", "2")]).values()) == [pytest.approx(16)] * 31  # kWh map
    out = by_series(influx(render(query("Energy exported or generated per day"), start, end)))
    assert set(out) == {("energy_export", "2"), ("energy_yield", "3")}
    assert list(by_local_date(out[("energy_export", "2")]).values()) == [pytest.approx(4)] * 31
    assert list(by_local_date(out[("energy_yield", "3")]).values()) == [pytest.approx(5)] * 31  # Wh map, in kWh

    [left_out] = influx(render(query("Energy counters left out (unit neither Wh nor kWh)"), start, end))
    assert (left_out["tags"]["meter"], left_out["tags"]["unit"]) == ("9", "MWh")


def test_a_replaced_meter_costs_one_quarter_hour_not_a_day(influx) -> None:
    """Meter 2's counter restarts at 0 at 12:00 on 15 October: that day shows 16 kWh less the
    energy between its last reading before the replacement and the first quarter hour's last
    reading (11:55 to 12:10 at 2 kWh/h = 0.5 kWh), never a negative or a huge day."""
    start, end = month(2025, 10)
    q = query("Energy imported per day")
    days = by_local_date(by_series(influx(render(q, start, end)))[("energy_import", "2")])
    assert days.pop(date(2025, 10, 15)) == pytest.approx(15.5)
    assert list(days.values()) == [pytest.approx(16)] * 30
    plain = by_series(influx(render(q.replace("non_negative_difference", "difference"), start, end)))
    assert by_local_date(plain[("energy_import", "2")])[date(2025, 10, 15)] < 0, "the counter did go back"


# --------------------------------------------------------------------------- weeks


@pytest.mark.parametrize("first_monday, last_sunday, odd_week, hours", [
    (date(2025, 3, 3), date(2025, 4, 6), date(2025, 3, 24), 167),
    (date(2025, 9, 29), date(2025, 11, 2), date(2025, 10, 20), 169),
])
def test_weeks_are_iso_weeks_in_local_time(influx, first_monday: date, last_sunday: date, odd_week: date,
                                           hours: int) -> None:
    """Weeks start on Monday 00:00 local time, also right after a clock change; the week holding
    the change has 167 or 169 hours. GROUP BY time(1w, 4d), the obvious Monday offset, puts the
    week after the change an hour off in InfluxDB (its zone offset is looked up 4 days early)."""
    start = datetime.combine(first_monday, datetime.min.time(), BERLIN)
    end = datetime.combine(last_sunday + timedelta(days=1), datetime.min.time(), BERLIN) - timedelta(milliseconds=1)
    q = query("Energy imported per week")
    rows = by_series(influx(render(q, start, end)))[("energy_import", "1")]
    weeks = by_local_date(rows)
    assert list(weeks) == [first_monday + timedelta(weeks=i) for i in range(5)]
    assert all(w.isoweekday() == 1 for w in weeks)
    assert weeks == pytest.approx({w: hours if w == odd_week else 168 for w in weeks}, abs=1e-6)
    # each week is the sum of its seven days
    days = by_local_date(by_series(influx(render(query("Energy imported per day"), start, end)))[
        ("energy_import", "1")])
    for w, kwh in weeks.items():
        assert kwh == pytest.approx(sum(days[w + timedelta(days=i)] for i in range(7)))

    assert "time(1w, -3d)" in q
    naive = by_series(influx(render(q.replace("time(1w, -3d)", "time(1w, 4d)"), start, end)))
    with pytest.raises(AssertionError, match="not at local midnight"):
        by_local_date(naive[("energy_import", "1")])


# --------------------------------------------------------------------------- months


@pytest.mark.parametrize("y, m, now", [(2025, 3, local(2025, 4, 15, 10, 30)), (2025, 10, local(2025, 11, 3, 8))])
def test_month_totals_are_the_sum_of_their_local_days(influx, y: int, m: int, now: datetime) -> None:
    """The totals table over a calendar month (the time picker's "Previous month", and the
    "Previous month" panel seen from the next month) equals the sum of that month's daily bars
    and the known answer: meter 1, 743 kWh in March (a 23-hour day), 745 in October (a 25-hour
    day); meter 2, 16 kWh a day (less the 0.5 kWh of its replacement in October)."""
    start, end = month(y, m)
    table = totals(influx, "Totals for the selected time range", start, end)
    assert table == totals(influx, "Previous month", *panel_range(panels()["Previous month"], now))

    day_rows = by_series(influx(render(query("Energy imported per day"), start, end)))
    for meter in ("1", "2"):
        days = by_local_date(day_rows[("energy_import", meter)])
        assert table["import"][meter] == pytest.approx(sum(days.values()))
    n_days = len(days_of(start, end))
    assert table["import"]["1"] == pytest.approx(sum(hours_of(d) for d in days_of(start, end)))
    assert table["import"]["1"] == pytest.approx(743 if m == 3 else 745)
    assert table["import"]["2"] == pytest.approx(16 * n_days - (0.5 if m == 10 else 0))
    assert table["export"] == {"2": pytest.approx(4 * n_days)}
    assert table["yield"] == {"3": pytest.approx(5 * n_days)}
    assert "9" not in table["import"]


def counter_rise(series: str, start: datetime, end: datetime) -> float:
    """What the dashboard means by the energy of a time range: the counter's last reading in the
    range less its last reading before it (exact to one reading interval at either end)."""
    before = last = None
    for t, v in readings():
        if t < start:
            before = v[series]
        elif t <= end:
            last = v[series]
    assert before is not None and last is not None
    return last - before


def test_this_month_so_far(influx) -> None:
    """"This month so far" runs from the 1st 00:00 to now: on 31 October at 12:00, the 733 hours
    since 1 October 00:00 (26 October has 25) and the 5 minutes since the last reading before it."""
    now = local(2025, 10, 31, 12)
    start, end = panel_range(panels()["This month so far"], now)
    assert (start, end) == (local(2025, 10, 1), now)
    table = totals(influx, "This month so far", start, end)
    assert table["import"]["1"] == pytest.approx(counter_rise("m1", start, end) / 1000)
    assert table["import"]["1"] == pytest.approx(733 + 5 / 60)
    assert table["import"]["2"] == pytest.approx(16 * 30 + 2 * 4 - 0.5)  # 30 days, 08:00-12:00, the replacement


# --------------------------------------------------------------------------- peak demand


def quarter_hour_means() -> dict[datetime, float]:
    """Meter 1's active_power averaged over each quarter hour of the clock, computed here."""
    sums: dict[datetime, list[float]] = defaultdict(list)
    for t, v in readings():
        q = t.replace(minute=t.minute - t.minute % 15, second=0, microsecond=0)
        sums[q].append(v["m1_power"])
    return {q: sum(v) / len(v) for q, v in sums.items()}


def test_peak_demand_is_the_largest_quarter_hour_mean(influx) -> None:
    """Per day and per month, the largest mean over a quarter hour of the clock: 30 March's spike
    (6000 W from 12:10 to 12:20) gives 4333.3 W (12:15-12:30: 6000, 6000, 1000), not the 6000 W
    of a sliding window; 12 March 3000 W; October's peak 9000 W."""
    means = quarter_hour_means()
    start, end = month(2025, 3)
    known = max(v for q, v in means.items() if start <= q <= end)
    assert known == pytest.approx(13000 / 3)

    days = by_local_date(by_series(influx(render(query("Peak demand per day"), start, end)))[("active_power", "1")])
    assert days[date(2025, 3, 30)] == pytest.approx(known)
    assert days[date(2025, 3, 12)] == pytest.approx(3000)
    assert [v for d, v in days.items() if d.day not in (12, 30)] == [pytest.approx(1000)] * 29

    for y, m in ((2025, 3), (2025, 10)):
        start, end = month(y, m)
        table = totals(influx, "Totals for the selected time range", start, end)
        assert table["peak"] == {"1": pytest.approx(max(v for q, v in means.items() if start <= q <= end))}
    assert table["peak"]["1"] == pytest.approx(9000)

    series = by_series(influx(render(query("Mean power per quarter hour"), *month(2025, 3))))[("active_power", "1")]
    assert max(series.values()) == pytest.approx(known)
    assert {datetime.fromtimestamp(s / 1000, UTC) for s in series} <= set(means), "quarter hours of the clock"
