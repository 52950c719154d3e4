"""InfluxDB away: readings wait in the spool and arrive exactly once, in order, when it is back.

Real processes (PostgreSQL, the simulator, the poller, VictoriaMetrics) for the outage
and the crash; a scripted HTTP server for the answers a real server will not give on
demand (503, 429 with Retry-After, 400, 401).
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from poller.sink import InfluxSink, WriteError
from poller.spool import SEGMENT_PREFIX, Spool, SpoolingSink
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


def test_a_minute_without_influxdb_loses_and_duplicates_nothing(postgres, database, simulator, victoria,  # noqa: F811
                                                                 tmp_path):
    spool_dir = tmp_path / "spool"
    log = tmp_path / "poller.log"
    proc = start_module("poller", [], poller_env(postgres, database, victoria, spool_dir), log)
    try:
        wait_for_log(log, CYCLE_OK, proc, count=3)
        victoria.stop()
        down_ms, down = int(time.time() * 1000), time.monotonic()
        text = wait_for_log(log, "unreachable: spooling to", proc)
        while time.monotonic() - down < 61:
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
    assert sum(down_ms < t < up_ms for t in voltage) >= 55, "the outage's readings are missing"
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


class ScriptedInflux:
    """An HTTP server that answers each write with the next scripted (status, headers, body)."""

    def __init__(self, script: list[tuple[int, dict[str, str], str]]) -> None:
        self.script = list(script)
        self.requests: list[tuple[float, str, list[str]]] = []  # (time.monotonic(), path, lines)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                outer.requests.append((time.monotonic(), self.path, body.decode().split("\n")))
                status, headers, text = outer.script.pop(0) if outer.script else (204, {}, "")
                data = text.encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def test_503_429_400_401_are_retried_honoured_and_dead_lettered(tmp_path, caplog):
    influx = ScriptedInflux([
        (503, {}, '{"code":"unavailable","message":"service unavailable"}'),
        (429, {"Retry-After": "2"}, '{"code":"too many requests","message":"slow down"}'),
        (400, {}, '{"code":"invalid","message":"unable to parse \'m,b=0 value=1.0\'"}'),
        (401, {}, '{"code":"unauthorized","message":"unauthorized access"}'),
    ])
    first = ["m,b=0 value=1.0 1700000000000", "m,b=0 value=2.0 1700000001000"]
    second = ["m,b=1 value=3.0 1700000002000"]
    sink = SpoolingSink(InfluxSink(influx.url, "token", "org", "bucket"), Spool(tmp_path),
                        retry_initial_s=0.3, retry_max_s=5)
    try:
        with caplog.at_level(logging.INFO):
            sink.write(first)  # 503: spooled, write() returns
            deadline = time.monotonic() + 15
            while len(influx.requests) < 3 or sink.spool_points:
                assert time.monotonic() < deadline, influx.requests
                time.sleep(0.02)
            with pytest.raises(WriteError, match="HTTP 401.*dead-letter file"):
                sink.write(second)  # spool empty: straight to InfluxDB, 401
    finally:
        sink.close()
        influx.close()

    times = [r[0] for r in influx.requests]
    assert [r[2] for r in influx.requests] == [first, first, first, second]
    assert all("/api/v2/write?" in r[1] and "precision=ms" in r[1] for r in influx.requests)
    assert times[1] - times[0] >= 0.3  # backed off after the 503
    assert times[2] - times[1] >= 2.0  # Retry-After: 2 honoured
    assert sink.dead_lettered_points == 3 and sink.replayed_points == 0 and sink.spooled_points == 2

    letters = [json.loads(x) for x in (tmp_path / "dead-letter.jsonl").read_text().splitlines()]
    assert [(d["lines"], d["points"], d["url"]) for d in letters] == [(first, 2, influx.url), (second, 1, influx.url)]
    assert "HTTP 400" in letters[0]["reason"] and "unable to parse" in letters[0]["reason"]
    assert "HTTP 401" in letters[1]["reason"] and "unauthorized" in letters[1]["reason"]

    msgs = [(r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("poller")]
    assert (logging.ERROR, f"InfluxDB at {influx.url} unreachable: spooling to {tmp_path}; 2 points in spool "
            f"(InfluxDB at {influx.url} refused 2 points: HTTP 503 Service Unavailable: "
            '{"code":"unavailable","message":"service unavailable"})') in msgs
    assert any(level == logging.WARNING and "HTTP 429" in m and "honouring Retry-After, next attempt in 2 s" in m
               for level, m in msgs), msgs
    assert any(level == logging.ERROR and "rejected 2 spooled points for good" in m and "HTTP 400" in m
               and f"written to the dead-letter file {tmp_path}/dead-letter.jsonl, not retried" in m
               for level, m in msgs), msgs
