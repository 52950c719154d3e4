"""poller/monitor.py: the health server shrugs off hostile or broken clients (issue 9 item 17),
and a meter's /metrics series follow its labels (item 16).

The server runs in its own event loop thread and is spoken to with real sockets; every
log record of the process is collected, and none may be at WARNING or above.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from poller.cycle import CycleReport, MeterResult
from poller.modbus import ModbusError
from poller.model import DataType, DeviceType, FunctionCode, Meter, Register
from poller.monitor import Monitor


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def loud(self) -> list[str]:
        return [f"{r.name} {r.levelname}: {r.getMessage()}" for r in self.records if r.levelno >= logging.WARNING]


class Served:
    """A Monitor's HTTP server in a background event loop."""

    def __init__(self) -> None:
        self.monitor = Monitor(stale_after_s=60)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self.monitor.start("127.0.0.1", 0), self.loop).result(10)

    def settle(self) -> None:
        """Let the server's loop finish what the last connection left (a failed handler
        task is reported by a callback after the connection is closed)."""
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.02), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.monitor.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    server = Served()
    yield server
    server.close()


@pytest.fixture(scope="module")
def collected() -> Iterator[Collect]:
    root = logging.getLogger()
    handler = Collect()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def logs(collected: Collect, served: Served) -> Iterator[Collect]:
    """What the process logged during one test (the server's loop settled first)."""
    served.settle()
    collected.records.clear()
    yield collected


def exchange(port: int, data: bytes, *, close_write: bool = True, timeout: float = 10) -> bytes:
    """Send `data`, then read until the server closes; what the server answered (b'' when it
    closed or reset without an answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        answer = b""
        try:
            s.sendall(data)
            if close_write:
                s.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before all was sent: read what it said
            pass
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def healthz(port: int) -> bytes:
    return exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", close_write=False)


def status(answer: bytes) -> int | None:
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    return int(m.group(1)) if m else None


def test_plain_requests_still_work(served: Served, logs: Collect) -> None:
    assert status(healthz(served.port)) == 200
    metrics = exchange(served.port, b"GET /metrics HTTP/1.0\r\n\r\n")
    assert status(metrics) == 200 and b"emm_cycles_total" in metrics
    head = exchange(served.port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
    assert status(head) == 200 and head.endswith(b"\r\n\r\n")
    assert status(exchange(served.port, b"GET /nope HTTP/1.1\r\n\r\n")) == 404
    assert status(exchange(served.port, b"POST /healthz HTTP/1.1\r\n\r\n")) == 405
    served.settle()
    assert not logs.loud()


@pytest.mark.parametrize("request_bytes, expected", [
    (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n", {414, None}),
    (b"GET /healthz HTTP/1.1\r\n" + b"X-Pad: " + b"b" * 100_000 + b"\r\n\r\n", {431, None}),
    (b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", {431, None}),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)), {400}),  # a TLS hello
    (b"GET /healthz\r\n\r\n", {400}),
    (b"\r\n", {400}),
    (b"", {None}),
], ids=["100KB-request-line", "100KB-header", "150-headers", "tls", "no-version", "empty-line", "port-check"])
def test_bad_requests_are_refused_quietly(served: Served, logs: Collect, request_bytes: bytes,
                                          expected: set[int | None]) -> None:
    assert status(exchange(served.port, request_bytes)) in expected
    served.settle()
    assert not logs.loud(), logs.loud()
    assert status(healthz(served.port)) == 200


def test_a_slow_client_is_cut_off(served: Served, logs: Collect) -> None:
    """Slow loris: a header line every 0.2 s would keep a per-line timeout happy forever."""
    served.monitor.request_timeout_s = 0.5
    try:
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            start = time.monotonic()
            closed_after = None
            while time.monotonic() - start < 4:
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                    s.settimeout(0.2)
                    if s.recv(1024) == b"":
                        closed_after = time.monotonic() - start
                        break
                except TimeoutError:
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    closed_after = time.monotonic() - start
                    break
        assert closed_after is not None and closed_after < 2, closed_after
        assert status(healthz(served.port)) == 200
    finally:
        served.monitor.request_timeout_s = 5.0
    served.settle()
    assert not logs.loud(), logs.loud()


def test_too_many_connections_do_not_pile_up(served: Served, logs: Collect) -> None:
    served.monitor.request_timeout_s = 1.0
    idle = [socket.create_connection(("127.0.0.1", served.port), timeout=5) for _ in range(80)]
    try:
        time.sleep(0.3)
        # beyond the cap a connection is closed at once; within it, a request would wait
        assert exchange(served.port, b"GET /healthz HTTP/1.1\r\n\r\n", close_write=False, timeout=2) == b""
    finally:
        for s in idle:
            s.close()
        served.monitor.request_timeout_s = 5.0
    deadline = time.monotonic() + 5
    while status(healthz(served.port)) != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status(healthz(served.port)) == 200
    served.settle()
    assert not logs.loud(), logs.loud()


PIECES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"\r\n", b"\n", b"\r", b"GET /healthz HTTP/1.1\r\n", b"GET /metrics HTTP/1.0\r\n", b" ", b"\x00",
                     b"\xff\xfe", b"Host: x\r\n", b"a" * 9000, b"b" * 70_000, b"GET ", b"HTTP/1.1", b"\r\n\r\n"]),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request_bytes=st.lists(PIECES, max_size=200).map(b"".join))
def test_any_bytes_get_an_http_answer_or_a_close(served: Served, logs: Collect, request_bytes: bytes) -> None:
    answer = exchange(served.port, request_bytes)
    assert answer == b"" or status(answer) in (200, 400, 404, 405, 414, 431), answer[:200]
    served.settle()
    assert not logs.loud(), logs.loud()


def test_a_refusal_is_logged_at_debug(served: Served, logs: Collect) -> None:
    assert status(exchange(served.port, b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n")) in (414, None)
    served.settle()
    assert any(r.levelno == logging.DEBUG and r.name == "poller.monitor" and "414" in r.getMessage()
               for r in logs.records), [r.getMessage() for r in logs.records]
    assert status(healthz(served.port)) == 200
    served.settle()
    assert not logs.loud(), logs.loud()


# --------------------------------------------------------------------------- one label set per meter

REG = Register(1, "sdm", 0, "voltage", "V", DataType.FLOAT32, FunctionCode.READ_INPUT_REGISTERS)


def meter(host: str = "10.0.0.5", unit: int = 1, type_name: str = "sdm", meter_id: int = 7) -> Meter:
    return Meter(meter_id, host, 502, unit, DeviceType(type_name, (REG,)))


def polled(monitor: Monitor, *meters: Meter, errors: int = 0) -> str:
    monitor.cycle_done(CycleReport(results=[MeterResult(meter=m, errors=errors) for m in meters]))
    return generate_latest(monitor.registry).decode()


def series(text: str, name: str) -> list[str]:
    return re.findall(rf"^{name}\{{(.*?)\}} ", text, re.M)


def test_a_meter_has_one_label_set() -> None:
    monitor = Monitor(stale_after_s=60)
    text = polled(monitor, meter(), meter(host="10.0.0.9", meter_id=8), errors=1)
    assert len(series(text, "emm_meter_up")) == 2 and len(series(text, "emm_meter_errors_total")) == 2
    # meter 7 moved to another gateway, then to another unit id, then got another type
    for changed in (meter(host="10.0.0.6"), meter(host="10.0.0.6", unit=3), meter(host="10.0.0.6", unit=3,
                                                                                  type_name="sdm630")):
        text = polled(monitor, changed, errors=2)
        for name in ("emm_meter_up", "emm_meter_errors_total"):
            mine = [s for s in series(text, name) if 'meter="7"' in s]
            assert mine == [f'host="{changed.host}",meter="7",slave_address="{changed.slave_address}",'
                            f'type="{changed.device_type.name}"'], text
        assert any('meter="8"' in s for s in series(text, "emm_meter_up"))  # the other meter is left alone
    assert re.search(r'^emm_meter_errors_total\{host="10.0.0.6",meter="7",slave_address="3",type="sdm630"\} 2.0$',
                     text, re.M)


def test_a_configuration_change_drops_changed_and_removed_meters_at_once() -> None:
    monitor = Monitor(stale_after_s=60)
    polled(monitor, meter(), meter(meter_id=8), meter(meter_id=9))
    monitor.forget_meters_except([meter(host="10.0.0.6"), meter(meter_id=8)])  # 7 changed, 9 removed
    text = generate_latest(monitor.registry).decode()
    assert series(text, "emm_meter_up") == ['host="10.0.0.5",meter="8",slave_address="1",type="sdm"']
    monitor.forget_meters_except({8})  # ids only, as before
    assert len(series(generate_latest(monitor.registry).decode(), "emm_meter_up")) == 1
    monitor.forget_meters_except(set())
    assert series(generate_latest(monitor.registry).decode(), "emm_meter_up") == []



def up_values(text: str) -> dict[str, float]:
    return {labels: float(v) for labels, v in re.findall(r"^emm_meter_up\{(.*?)\} (\S+)$", text, re.M)}


# a step: poll these meters (id, host, ok), or keep only these ids (forget_meters_except)
STEP = st.one_of(
    st.lists(st.tuples(st.integers(1, 4), st.sampled_from(["10.0.0.5", "10.0.0.6"]), st.booleans()),
             min_size=1, max_size=4, unique_by=lambda t: t[0]).map(lambda polls: ("poll", polls)),
    st.sets(st.integers(1, 4)).map(lambda ids: ("keep", ids)))


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(STEP, max_size=12))
def test_each_meters_up_series_says_its_last_poll(steps: list[tuple[str, object]]) -> None:
    """emm_meter_up is set only when it changes (a thousand meters a cycle): whatever the order of
    successes, failures, moves to another host and configuration changes, each series present
    holds its meter's last outcome, under its meter's current labels."""
    monitor = Monitor(stale_after_s=60)
    expected: dict[str, float] = {}  # labels -> value
    current: dict[int, str] = {}  # meter id -> its labels now
    configured: set[int] | None = None  # the last forget_meters_except's: others' results are not shown
    for kind, arg in steps:
        if kind == "poll":
            results = []
            for meter_id, host, ok in arg:  # type: ignore[attr-defined]
                m = meter(host=host, meter_id=meter_id)
                results.append(MeterResult(meter=m, error=None if ok else ModbusError("no answer")))
                if configured is not None and meter_id not in configured:
                    continue
                labels = f'host="{host}",meter="{meter_id}",slave_address="1",type="sdm"'
                if current.get(meter_id) not in (None, labels):
                    expected.pop(current[meter_id])
                current[meter_id] = labels
                expected[labels] = 1.0 if ok else 0.0
            monitor.cycle_done(CycleReport(results=results))
        else:
            for meter_id in [i for i in current if i not in arg]:  # type: ignore[operator]
                expected.pop(current.pop(meter_id))
            configured = set(arg)  # type: ignore[call-overload]
            monitor.forget_meters_except(arg)  # type: ignore[arg-type]
        assert up_values(generate_latest(monitor.registry).decode()) == expected

def test_healthz_goes_stale_when_cycles_stop_after_the_first_one() -> None:
    """200 while cycles complete; 503 once none completed for stale_after_s, also after a first cycle
    (issue 14: a /healthz that never went stale after the first cycle passed the suite)."""
    server = Served()
    try:
        server.monitor.stale_after_s = 0.6
        assert status(healthz(server.port)) == 200  # starting: within the grace
        for _ in range(3):
            server.monitor.cycle_done(None)
            answer = healthz(server.port)
            assert status(answer) == 200 and b"ok: last cycle completed" in answer
            time.sleep(0.2)
        time.sleep(0.8)  # no cycle for longer than stale_after_s
        answer = healthz(server.port)
        assert status(answer) == 503 and b"no cycle completed for" in answer, answer
        server.monitor.cycle_done(None)
        assert status(healthz(server.port)) == 200  # a cycle again: healthy again
    finally:
        server.close()


def test_a_bus_still_busy_at_a_tick_is_counted_in_metrics() -> None:
    """Regression: the counter README lists (emm_endpoint_ticks_skipped_total) stayed 0 after the
    service was rewired: nothing handed it the buses a cycle left out."""
    monitor = Monitor(stale_after_s=60)
    monitor.cycle_done(CycleReport(buses_busy=2))
    monitor.cycle_done(None)
    monitor.cycle_done(CycleReport(results=[MeterResult(meter=meter())], buses_busy=1))
    text = generate_latest(monitor.registry).decode()
    assert re.search(r"^emm_endpoint_ticks_skipped_total 3\.0$", text, re.M), text
