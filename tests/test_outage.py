"""InfluxDB away: readings wait in the spool and arrive exactly once, in order, when it is back.

Real processes (PostgreSQL, the simulator, the poller, VictoriaMetrics) for the outage
and the crash. The answers a real server will not give on demand (503, 429 with
Retry-After, 400, 401, slow, hung) are scripted in test_outbox.py and test_service_faults.py.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from poller.spool import SEGMENT_PREFIX
from tests.servers import start_module, stop_process
from tests.test_end_to_end import SEED, seed_map, simulator  # noqa: F401 - simulator is a fixture
from virtual_server.device import make_device

CYCLE_OK = re.compile(r"cycle: meters ok=1 failed=0 .*?readings=12 ")


def cycles(text: str) -> int:
    return len(CYCLE_OK.findall(text))


def wait_for_log(path, what, proc, timeout: float = 20.0, count: int = 1) -> str:
    """Wait until the log holds `what` (a str, or a compiled pattern) `count` times."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text()
        found = len(what.findall(text)) if isinstance(what, re.Pattern) else text.count(what)
        if found >= count:
            return text
        assert proc.poll() is None, f"poller exited with {proc.returncode}:\n{text}"
        assert time.monotonic() < deadline, f"no {what!r} x{count} in the log after {timeout} s:\n{text}"
        time.sleep(0.05)


def poller_env(postgres, database, victoria, spool_dir):
    return {**postgres.env(database), **victoria.env(), "POLL_CRON": "* * * * * *",
            "POLL_SPOOL_DIR": str(spool_dir), "POLL_SPOOL_RETRY_MAX_S": "3",
            "POLL_HTTP_PORT": "0"}  # no /metrics port: other test runs may hold the default one


def settled_export(victoria, min_samples: int, timeout: float = 30.0) -> list[dict]:
    """victoria.export, but two reads count as the same whatever order the series come in."""
    def read() -> list[dict]:
        series = victoria._export_now('{__name__=~".+"}')
        for s in series:
            pairs = sorted(zip(s["timestamps"], s["values"], strict=True))
            s["timestamps"], s["values"] = [t for t, _ in pairs], [v for _, v in pairs]
        return sorted(series, key=lambda s: json.dumps(s["metric"], sort_keys=True))

    deadline = time.monotonic() + timeout
    series = read()
    while sum(len(s["values"]) for s in series) < min_samples and time.monotonic() < deadline:
        time.sleep(0.2)
        series = read()
    while time.monotonic() < deadline:  # then until a late duplicate would have shown up
        time.sleep(1.0)
        again = read()
        if again == series:
            return series
        series = again
    raise AssertionError("VictoriaMetrics' export did not settle")


def check_exactly_once(victoria, postgres, database, n_cycles: int) -> dict[str, list[int]]:
    """Every reading's series holds one sample per logged cycle with the served value; no series
    (the poller_status ones included) holds a timestamp twice."""
    (meter,) = seed_map(postgres, database).meters
    expected = make_device("virtual_meter", meter.device_type.registers, SEED).values()
    series = settled_export(victoria, min_samples=12 * n_cycles)
    names = {s["metric"]["__name__"] for s in series}
    assert {f"{m}_value" for m in expected} <= names
    stamps = {}
    for s in series:
        name = s["metric"]["__name__"]
        ts = s["timestamps"]
        assert len(ts) == len(set(ts)), f"{name}: a timestamp stored twice"
        if name.endswith("_value"):
            assert len(ts) == n_cycles, f"{name}: {len(ts)} samples for {n_cycles} cycles"
            want = expected[name.removesuffix("_value")]
            assert all(v == pytest.approx(want, rel=1e-12, abs=1e-12) for v in s["values"]), name
        stamps[name] = sorted(ts)
    return stamps


def test_twenty_seconds_without_influxdb_lose_and_duplicate_nothing(postgres, database, simulator, victoria,  # noqa: F811
                                                                 tmp_path):
    spool_dir = tmp_path / "spool"
    log = tmp_path / "poller.log"
    proc = start_module("poller", [], poller_env(postgres, database, victoria, spool_dir), log)
    try:
        wait_for_log(log, CYCLE_OK, proc, count=3)
        victoria.stop()
        down_ms, down = int(time.time() * 1000), time.monotonic()
        text = wait_for_log(log, "unreachable: spooling to", proc)
        while time.monotonic() - down < 21:  # several retries, backed off up to POLL_SPOOL_RETRY_MAX_S
            assert proc.poll() is None, log.read_text()
            time.sleep(0.5)
        assert list(spool_dir.glob(f"{SEGMENT_PREFIX}*")), "nothing on disk during the outage"
        victoria.start()
        up_ms = int(time.time() * 1000)
        text = wait_for_log(log, "spool drained", proc, timeout=30)
        wait_for_log(log, CYCLE_OK, proc, count=cycles(text) + 2)
    finally:
        rc = stop_process(proc)
    text = log.read_text()
    assert rc == 0, text
    for bad in ("Traceback", "NOT WRITTEN", "dropped the oldest", "dead-letter file", "stopping with"):
        assert bad not in text, text
    assert text.count("unreachable: spooling to") == 1  # once per outage, not once per cycle
    assert re.search(r"InfluxDB at \S+ answers again after \d+ s: sending \d+ spooled points", text), text
    assert list(spool_dir.glob(f"{SEGMENT_PREFIX}*")) == []

    n = cycles(text)
    stamps = check_exactly_once(victoria, postgres, database, n)
    voltage = stamps["voltage_l1_value"]
    assert sum(down_ms < t < up_ms for t in voltage) >= 18, "the outage's readings are missing"
    # one reading a second, across the outage: a missing second is a cycle the log shows without them
    seconds = [t // 1000 for t in voltage]
    assert len(set(seconds)) == len(seconds)
    holes = seconds[-1] - seconds[0] + 1 - len(seconds)
    assert holes <= text.count("cycle: meters") - n, (holes, text)


def test_sigterm_then_sigkill_while_spooling_loses_and_duplicates_nothing(postgres, database, simulator,  # noqa: F811
                                                                          victoria, tmp_path):
    spool_dir = tmp_path / "spool"
    env = poller_env(postgres, database, victoria, spool_dir)
    logs = [tmp_path / f"poller-{i}.log" for i in range(3)]
    victoria.stop()

    # 1. InfluxDB away from the start; SIGTERM: a clean exit, the readings stay on disk.
    proc = start_module("poller", [], env, logs[0])
    try:
        wait_for_log(logs[0], "unreachable: spooling to", proc)
        wait_for_log(logs[0], CYCLE_OK, proc, count=3)
    finally:
        rc = stop_process(proc)
    text = logs[0].read_text()
    assert rc == 0, text
    assert re.search(r"stopping with \d+ points in the spool", text), text
    assert list(spool_dir.glob(f"{SEGMENT_PREFIX}*"))

    # 2. Still away; SIGKILL right after a cycle has handed its readings to the spool.
    proc = start_module("poller", [], env, logs[1])
    try:
        wait_for_log(logs[1], "from an earlier run; they are sent first", proc)
        seen = cycles(wait_for_log(logs[1], CYCLE_OK, proc, count=3))
        while cycles(logs[1].read_text()) == seen:
            time.sleep(0.002)
        # During an outage a cycle's readings are on disk one linger (0.25 s) and an fsync after it
        # hands them over (README, "Stopping and crashing"); kill just after that.
        time.sleep(0.6)
        proc.kill()
        proc.wait(10)
    finally:
        stop_process(proc)
    assert proc.returncode == -9

    # 3. InfluxDB back: the next start sends everything, oldest first, once.
    victoria.start()
    proc = start_module("poller", [], env, logs[2])
    try:
        text = wait_for_log(logs[2], "spool drained", proc, timeout=30)
        wait_for_log(logs[2], CYCLE_OK, proc, count=cycles(text) + 2)
    finally:
        rc = stop_process(proc)
    texts = [p.read_text() for p in logs]
    assert rc == 0, texts[2]
    for bad in ("Traceback", "NOT WRITTEN", "dropped the oldest", "dead-letter file"):
        assert all(bad not in t for t in texts), texts
    assert "answers: sending" in texts[2]
    assert list(spool_dir.glob(f"{SEGMENT_PREFIX}*")) == []
    check_exactly_once(victoria, postgres, database, sum(cycles(t) for t in texts))
