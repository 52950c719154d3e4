"""The counter guard (poller/counters.py): a counter reading that cannot be true is never written.

Generated sequences for the rule itself; then the poller as its own process against a
device that misbehaves on cue (a 0 reply, a value going backwards, a +10 GWh spike, a
genuine reset), with a restart in between, and what VictoriaMetrics stored.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import urllib.request
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from poller.counters import RESET_READINGS, CounterGuard
from poller.model import DataType, DeviceType, FunctionCode, Meter, Register
from tests.servers import ModbusServerThread, free_port, start_module, stop_process
from tests.test_end_to_end import run_poller
from tests.test_outage import poller_env, settled_export, wait_for_log
from virtual_server.device import encode
from virtual_server.server import SimulatedServer

RATE = 0.05  # kWh/s: the counter_max_rate of these tests


def counter(rate: float | None = RATE, unit: str = "kWh") -> Register:
    return Register(1, "t", 0, "energy_import", unit, DataType.FLOAT64, FunctionCode.READ_HOLDING_REGISTERS,
                    counter=True, counter_max_rate=rate)


REG = counter()
METER = Meter(1, "127.0.0.1", 502, 1, DeviceType("t", (REG,)))


def run(guard: CounterGuard, readings: list[tuple[float, int]], reg: Register = REG) -> tuple[list[float], list[str]]:
    """The values written and the reasons of those held back."""
    written, reasons = [], []
    for value, time_ms in readings:
        reason = guard.check(METER, reg, value, time_ms)
        if reason is None:
            written.append(value)
        else:
            reasons.append(reason)
    return written, reasons


def every_second(values: list[float], start_ms: int = 1_700_000_000_000) -> list[tuple[float, int]]:
    return [(v, start_ms + 1000 * i) for i, v in enumerate(values)]


# --- the rule ----------------------------------------------------------------------------------

rises = st.lists(st.floats(0, RATE, allow_nan=False), min_size=1, max_size=40)


def climbing(start: float, steps: list[float]) -> list[float]:
    values = [start]
    for step in steps:
        values.append(values[-1] + step)
    return values


@given(start=st.floats(0.001, 1e9), steps=rises)
def test_a_counter_that_behaves_is_written_whole(start, steps):
    values = climbing(start, steps)
    assert run(CounterGuard(), every_second(values)) == (values, [])


@given(start=st.floats(1.0, 1e6), steps=st.lists(st.floats(0, RATE), min_size=3, max_size=30),
       at=st.integers(1, 2), glitch=st.sampled_from(["zero", "backwards", "too_fast"]))
def test_one_glitch_costs_exactly_that_reading(start, steps, at, glitch):
    values = climbing(start, steps)
    bad = {"zero": 0.0, "backwards": values[at - 1] / 2, "too_fast": values[at - 1] + 1e7}[glitch]
    readings = every_second(values[:at] + [bad] + values[at:])
    written, reasons = run(CounterGuard(), readings)
    assert written == values and reasons == [glitch]


@given(values=st.lists(st.one_of(st.just(0.0), st.floats(0, 1e12)), min_size=1, max_size=60),
       gaps=st.lists(st.integers(0, 5000), min_size=60, max_size=60), rate=st.sampled_from([None, RATE, 10.0]))
# found in CI: 1.0 read twice, 1 ms apart, then 12.0 1.099 s after the second and 1.1 s after the first
@example(values=[0.0, 1.0, 1.0, 12.0], gaps=[0, 0, 1, 1099] + [0] * 56, rate=10.0)
@settings(max_examples=300)
def test_whatever_a_device_sends_what_is_written_is_a_counter(values, gaps, rate):
    """Generated garbage: each written value follows the one written before it (not lower, within
    the rate counted from when that value was first written: devices count in steps), or is a reset
    vouched for by RESET_READINGS consistent readings ending above 0; a 0 is never the first value
    written."""
    reg = counter(rate)
    guard = CounterGuard()
    times = [1_700_000_000_000 + sum(gaps[:i + 1]) for i in range(len(values))]
    last: tuple[float, int] | None = None
    seen: list[tuple[float, int]] = []
    for value, time_ms in zip(values, times, strict=False):
        seen.append((value, time_ms))
        if guard.check(METER, reg, value, time_ms) is not None:
            continue
        if last is None:
            assert value != 0
        else:
            follows = value >= last[0] and (
                rate is None or value - last[0] <= rate * max((time_ms - last[1]) / 1000, 1) + 4 * math.ulp(value))
            tail = seen[-RESET_READINGS:]
            vouched = len(tail) == RESET_READINGS and value > 0 and all(
                b >= a and (rate is None or b - a <= rate * max((tb - ta) / 1000, 1) + 4 * math.ulp(b))
                for (a, ta), (b, tb) in zip(tail, tail[1:], strict=False))
            assert follows or vouched, (last, seen)
        if last is None or value != last[0]:
            last = (value, time_ms)  # the same value again keeps its first time (counters.py, _write)


def test_a_replaced_meter_is_taken_after_three_consistent_readings():
    written, reasons = run(CounterGuard(), every_second([5000.0, 5000.01, 0.0, 0.0, 0.01, 0.02]))
    assert written == [5000.0, 5000.01, 0.01, 0.02]
    assert reasons == ["zero", "zero"]  # the reset's first two readings


def test_a_counter_stuck_at_zero_is_never_a_reset():
    written, reasons = run(CounterGuard(), every_second([5000.0] + [0.0] * 20))
    assert written == [5000.0] and reasons == ["zero"] * 20
    written, reasons = run(CounterGuard(), every_second([0.0] * 5 + [12.5]))  # no history: a 0 is not a start
    assert written == [12.5] and reasons == ["zero"] * 5


def test_without_a_rate_limit_a_spike_is_written_and_the_truth_comes_back_as_a_reset():
    """What counter_max_rate is for (README): with no limit a rise cannot be told from a spike."""
    written, reasons = run(CounterGuard(), every_second([100.0, 1e7, 100.1, 100.2, 100.3]), counter(None))
    assert written == [100.0, 1e7, 100.3] and reasons == ["backwards", "backwards"]


def test_the_rate_is_measured_over_the_real_time_between_readings():
    # 0.05 kWh/s: one hour offline allows 180 kWh more
    readings = [(1000.0, 0), (1179.0, 3_600_000), (1179.2, 3_601_000)]
    assert run(CounterGuard(), readings) == ([1000.0, 1179.0], ["too_fast"])


def test_a_counter_that_moves_in_steps_is_measured_from_when_each_step_was_first_read():
    """A device updating its total every 5 minutes, polled every second: each 0.5 kWh step
    follows 300 s of the same value, 6 kW on average, well within 0.05 kWh/s."""
    values = [1000.0 + 0.5 * (i // 300) for i in range(1200)]
    assert run(CounterGuard(), every_second(values)) == (values, [])


def test_units_and_meters_are_apart():
    guard = CounterGuard()
    assert guard.check(METER, counter(unit="kWh"), 1000.0, 0) is None
    assert guard.check(METER, counter(unit="Wh"), 5.0, 1000) is None  # another series: not "backwards"


# --- kept across restarts --------------------------------------------------------------------

def test_the_last_values_survive_a_restart(tmp_path: Path):
    path = tmp_path / "counters.json"
    first = CounterGuard(path)
    assert run(first, every_second([1000.0, 1000.01])) == ([1000.0, 1000.01], [])
    first.save()
    again = CounterGuard(path)
    again.load()
    assert len(again) == 1
    assert run(again, every_second([999.0, 1000.02], start_ms=1_700_000_100_000)) == ([1000.02], ["backwards"])


def test_the_state_is_written_at_most_once_a_minute_unless_forced(tmp_path: Path):
    path = tmp_path / "counters.json"
    guard = CounterGuard(path)
    run(guard, every_second([1.0]))
    guard.save()
    run(guard, every_second([1.01], start_ms=1_700_000_001_000))
    guard.save()  # within SAVE_EVERY_S: not written
    assert json.loads(path.read_text())["counters"][0][3] == 1.0
    guard.save(force=True)
    assert json.loads(path.read_text())["counters"][0][3] == 1.01


@given(damage=st.one_of(st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                        st.just('{"version": 1, "counters": [[1, "e", "kWh", "NaN", 5]]}'),
                        st.just('{"version": 1, "counters": [[true, "e", "kWh", 1.0, 5]]}'),
                        st.just('{"version": 2, "counters": []}')))
@settings(max_examples=60, deadline=None)
def test_a_damaged_state_file_is_set_aside_and_costs_only_the_history(tmp_path_factory, damage):
    directory = tmp_path_factory.mktemp("state")
    path = directory / "counters.json"
    path.write_text(damage, encoding="latin-1")
    guard = CounterGuard(path)
    guard.load()
    assert len(guard) == 0 or damage.startswith("{")  # an empty list of counters is a valid file
    if len(guard) == 0 and not path.exists():
        assert [p.name for p in directory.iterdir()][0].startswith("counters.json.damaged-")
    assert run(guard, every_second([7.0, 7.01])) == ([7.0, 7.01], [])


def test_the_newest_of_several_files_wins(tmp_path: Path):
    """Worker processes keep one file each; a counter moved between them keeps its newest value."""
    old, new = CounterGuard(tmp_path / "counters.json"), CounterGuard(tmp_path / "counters-worker-0.json")
    run(old, [(10.0, 1_000)])
    run(new, [(20.0, 2_000)])
    old.save(force=True)
    new.save(force=True)
    merged = CounterGuard()
    merged.load(sorted(tmp_path.glob("counters*.json")))
    assert run(merged, [(15.0, 3_000)], counter(None)) == ([], ["backwards"])


# --- the poller, a device misbehaving, VictoriaMetrics -------------------------------------

class Script:
    """A device whose counter answers each request with the next value of a script, and refuses
    (illegal data address) once the script is done: one request per cycle, so one value per cycle."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.served = 0

    def bank(self) -> dict[tuple[int, int], int]:
        if self.served >= len(self.values):
            return {}
        value = self.values[self.served]
        self.served += 1
        return {(3, i): w for i, w in enumerate(encode(REG, value))}


def metric(port: int, reason: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.search(rf'^emm_counter_readings_rejected_total{{reason="{reason}"}} (\S+)$', text, re.M)
    assert found, text
    return float(found.group(1))


def misbehaving_meter(postgres, database, port: int) -> None:  # type: ignore[no-untyped-def]
    postgres.psql(database, "-c", f"""
        INSERT INTO device_types (name, max_gap) VALUES ('misbehaving', 0);
        INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                               kind, counter_max_rate)
            VALUES ('misbehaving', 0, 'energy_import', 'kWh', 8, 3, 'counter', {RATE});
        DELETE FROM energy_meters;
        INSERT INTO energy_meters (host, port, slave_address, type) VALUES ('127.0.0.1', {port}, 1, 'misbehaving');""")


def test_once_checks_against_the_history_in_the_spool_directory(postgres, database, victoria, tmp_path):
    """`--once` from cron: each run's first reading is checked against the last run's (the spool
    directory exists); without the directory there is no history to check against."""
    script = Script()
    server = ModbusServerThread(SimulatedServer(units={1: script.bank}, strict=True))
    try:
        misbehaving_meter(postgres, database, server.port)
        spool = tmp_path / "spool"
        spool.mkdir()
        env = {**poller_env(postgres, database, victoria, spool)}
        outcomes = []
        for value in (1000.0, 900.0, 1000.01):
            script.values, script.served = [value], 0
            done = run_poller(["--once"], env)
            assert done.returncode == 0, done.stderr
            outcomes.append(re.search(r"readings=(\d+) invalid=(\d+)", done.stderr).groups())  # type: ignore[union-attr]
        assert outcomes == [("1", "0"), ("0", "1"), ("1", "0")]
        script.values, script.served = [1.0], 0  # no directory, no history: taken as it comes
        done = run_poller(["--once"], {**env, "POLL_SPOOL_DIR": str(tmp_path / "absent")})
        assert "readings=1 invalid=0" in done.stderr, done.stderr
    finally:
        server.close()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_misbehaving_counter_stores_only_the_truth_across_a_restart(postgres, database, victoria, tmp_path, workers):
    """In the main process (POLL_WORKERS=0) and in a worker process: the guard lives where the
    readings are decoded, its state in the spool directory either way."""
    script = Script()
    server = ModbusServerThread(SimulatedServer(units={1: script.bank}, strict=True))
    try:
        misbehaving_meter(postgres, database, server.port)
        spool = tmp_path / "spool"
        http = free_port()
        env = {**poller_env(postgres, database, victoria, spool), "POLL_HTTP_PORT": str(http),
               "POLL_WORKERS": str(workers)}

        def phase(values: list[float], log: Path) -> dict[str, float]:
            script.values, script.served = values, 0
            proc = start_module("poller", [], env, log)
            try:
                wait_for_log(log, "polling 1 meters", proc)
                deadline = time.monotonic() + 30
                while script.served < len(values):
                    assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                    time.sleep(0.1)
                wait_for_log(log, "is refused", proc)  # the script's end: every value was decoded
                counts = {r: metric(http, r) for r in ("zero", "backwards", "too_fast")}
            finally:
                assert stop_process(proc) == 0, log.read_text()
            return counts

        first = phase([1000.0, 1000.01, 0.0, 1000.02, 900.0, 1000.03, 1000.03 + 1e7, 1000.04], tmp_path / "1.log")
        assert first == {"zero": 1, "backwards": 1, "too_fast": 1}
        log = (tmp_path / "1.log").read_text()
        assert log.count("not written until it is consistent again") == 3  # once per streak
        assert (spool / ("counters-worker-0.json" if workers else "counters.json")).exists()

        # restarted: the first reading is checked against what the last run wrote (1000.04)
        second = phase([500.0, 1000.05, 0.0, 0.0, 0.01, 0.02], tmp_path / "2.log")
        assert second == {"zero": 2, "backwards": 1, "too_fast": 0}
        assert "taken as reset" in (tmp_path / "2.log").read_text()
    finally:
        server.close()

    (series,) = [s for s in settled_export(victoria, min_samples=8) if s["metric"]["__name__"] == "energy_import_value"]
    assert series["values"] == [1000.0, 1000.01, 1000.02, 1000.03, 1000.04, 1000.05, 0.01, 0.02]


def test_a_state_file_that_cannot_be_written_is_said_once_and_tried_again(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, "poller.counters")
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    guard = CounterGuard(blocked / "counters.json")
    run(guard, every_second([1.0]))
    for _ in range(3):
        guard.save(force=True)
    assert sum("cannot write the counter state" in r.getMessage() for r in caplog.records) == 1
    blocked.unlink()
    blocked.mkdir()
    guard.save(force=True)  # still due: the change was never written
    assert json.loads((blocked / "counters.json").read_text())["counters"] == [[1, "energy_import", "kWh", 1.0,
                                                                                1_700_000_000_000]]
    assert any("written again" in r.getMessage() for r in caplog.records)


def test_meters_no_longer_configured_are_forgotten_and_the_others_kept(tmp_path: Path):
    guard = CounterGuard(tmp_path / "counters.json")
    other = Meter(2, "127.0.0.1", 502, 2, DeviceType("t", (REG,)))
    assert guard.check(METER, REG, 100.0, 0) is None and guard.check(other, REG, 200.0, 0) is None
    guard.save(force=True)
    assert guard.snapshot(force=True) is None  # nothing changed since
    guard.forget_except({2})
    assert len(guard) == 1
    guard.save(force=True)  # the change is written: meter 1 is gone from the file too
    assert [row[0] for row in json.loads((tmp_path / "counters.json").read_text())["counters"]] == [2]
    assert guard.check(other, REG, 150.0, 1000) == "backwards"  # meter 2's history is still there
    assert guard.check(METER, REG, 50.0, 1000) is None  # meter 1 starts afresh


def test_a_zero_before_any_value_is_said_once_per_counter(caplog):
    guard = CounterGuard()
    for i in range(5):
        assert guard.check(METER, REG, 0.0, 1000 * i) == "zero"
    assert sum("reads 0 with no earlier value" in r.getMessage() for r in caplog.records) == 1
    assert guard.check(METER, REG, 3.0, 6000) is None
    assert guard.check(METER, REG, 3.0, 7000) is None and len(guard) == 1


def test_the_rate_limit_is_inclusive_and_measured_in_seconds():
    # exactly at the limit: written; the least bit above it: held back (0.5 per s over 1000 s = 500)
    assert run(CounterGuard(), [(1000.0, 0), (1500.0, 1_000_000)], counter(0.5)) == ([1000.0, 1500.0], [])
    assert run(CounterGuard(), [(1000.0, 0), (1500.001, 1_000_000)], counter(0.5)) == ([1000.0], ["too_fast"])
    # two readings in the same second are measured over one second, not over none
    assert run(CounterGuard(), [(1000.0, 0), (1000.5, 10)], counter(0.5)) == ([1000.0, 1000.5], [])


VALID_ROW = [1, "energy_import", "kWh", 1000.5, 1_700_000_000_000]
wrong_values = st.sampled_from([None, True, False, "1", 1.5, float("nan"), float("inf"), [], {}])


@given(field=st.integers(0, 4), wrong=wrong_values, extra=st.booleans())
@settings(max_examples=80, deadline=None)
def test_a_state_entry_of_the_wrong_shape_sets_the_file_aside(tmp_path_factory, field, wrong, extra):
    row = list(VALID_ROW)
    fits = {0: lambda v: type(v) is int, 1: lambda v: isinstance(v, str), 2: lambda v: isinstance(v, str),
            3: lambda v: type(v) in (int, float) and math.isfinite(v), 4: lambda v: type(v) is int}[field]
    if extra:
        row.append(0)  # one field too many
    elif fits(wrong):
        return  # the wrong value happens to be a right one for this field
    else:
        row[field] = wrong
    directory = tmp_path_factory.mktemp("state")
    path = directory / "counters.json"
    good = json.dumps({"version": 1, "counters": [VALID_ROW]})
    path.write_text(json.dumps({"version": 1, "counters": [VALID_ROW, row]}))
    guard = CounterGuard(path)
    guard.load()
    assert len(guard) == 0 and not path.exists()  # the whole file: one bad entry, no half-trusted history
    assert [p.name.startswith("counters.json.damaged-") for p in directory.iterdir()] == [True]
    path.write_text(good)
    guard.load()
    assert len(guard) == 1


@pytest.mark.parametrize("body", ['[]', '{"version": 1}', '{"version": 1, "counters": {}}',
                                  '{"counters": []}', '{"version": 1, "counters": [[1, "e", "kWh", 1.0]]}'])
def test_a_state_file_that_is_not_a_counter_state_is_set_aside(tmp_path: Path, body: str, caplog):
    path = tmp_path / "counters.json"
    path.write_text(body)
    guard = CounterGuard(path)
    guard.load()
    assert len(guard) == 0 and not path.exists()
    assert "is damaged" in caplog.text and "set aside as counters.json.damaged-" in caplog.text


def test_a_reset_and_its_end_are_logged_with_what_was_held_back(caplog):
    caplog.set_level(logging.INFO, "poller.counters")
    run(CounterGuard(), every_second([5000.0, 0.0, 0.0, 0.01, 0.02]))
    said = [r.getMessage() for r in caplog.records]
    assert any("counter energy_import dropped to zero (5000.0 -> 0.0 kWh): not written until it is consistent "
               "again" in m for m in said), said
    assert any("counter energy_import taken as reset (a replaced or cleared meter): 3 consistent readings in a "
               "row, 5000.0 -> 0.01 kWh; 2 reading(s) not written" in m for m in said), said
    caplog.clear()
    run(CounterGuard(), every_second([5000.0, 4000.0, 5000.01]))
    assert any("counter energy_import consistent again (5000.01 kWh) after 1 reading(s) not written" in r.getMessage()
               for r in caplog.records)
