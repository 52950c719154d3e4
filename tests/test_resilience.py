"""Never stall: bad devices next to good ones, random replies, live configuration,
PostgreSQL restarts, and the poller's own /healthz and /metrics."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.modbus import BadReply, ExceptionReply, ModbusError
from poller.model import BusAddress, FunctionCode, ReadBlock, Transport
from poller.transport import open_bus
from tests.servers import GarbageServer, ModbusServerThread, free_port, start_module, stop_process
from tests.test_faults import seed_registers
from tests.test_modbus import AsyncioTrouble
from virtual_server.device import make_device
from virtual_server.server import SimulatedServer


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")



def test_healthy_meters_arrive_every_cycle_on_time_next_to_broken_ones(postgres, database, victoria, hung_port,
                                                                      tmp_path):
    words = make_device("virtual_meter", seed_registers(postgres, database), 3).words()
    gateways = [ModbusServerThread(SimulatedServer(units={}, default=lambda: words)) for _ in range(4)]
    garbage = ModbusServerThread(GarbageServer())
    refused = free_port()
    rows = [f"({gw.port}, {unit})" for gw in gateways for unit in range(1, 6)]
    postgres.psql(database, "-c", f"""
        DELETE FROM energy_meters;
        INSERT INTO energy_meters (host, port, slave_address, type)
            SELECT '127.0.0.1', p, u, 'virtual_meter' FROM (VALUES {", ".join(rows)}) AS t(p, u);
        INSERT INTO energy_meters (id, host, port, slave_address, type) VALUES
            (1001, '127.0.0.1', {hung_port}, 1, 'virtual_meter'),
            (1002, '127.0.0.1', {refused}, 1, 'virtual_meter'),
            (1003, '127.0.0.1', {garbage.port}, 1, 'virtual_meter');""")
    log = tmp_path / "poller.log"
    env = {**postgres.env(database), **victoria.env(), "POLL_CRON": "* * * * * *", "POLL_HTTP_PORT": "0"}
    proc = start_module("poller", [], env, log)
    started_s = time.time()
    try:
        time.sleep(8.5)
    finally:
        stop_process(proc)
        for server in (*gateways, garbage):
            server.close()
    text = log.read_text()
    assert "Traceback" not in text
    # the ticks surely polled: from the first whole second after the service said it started (on a
    # loaded machine starting takes seconds) to the last one before the stop
    (start_line,) = [line for line in text.splitlines() if "INFO poller: polling 23 meters" in line]
    ready_s = datetime.strptime(start_line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    ticks = list(range(max(int(started_s) + 2, int(ready_s) + 1), int(started_s) + 8))
    assert len(ticks) >= 3, f"the service took {ready_s - started_s:.1f} s to start: too few ticks left to judge"
    series = victoria.export('{__name__="voltage_l1_value"}', min_samples=20 * len(ticks))
    healthy = [s for s in series if int(s["metric"]["meter"]) < 1000]
    assert len(healthy) == 20 and not [s for s in series if int(s["metric"]["meter"]) >= 1000]
    for s in healthy:
        seconds = [t // 1000 for t in s["timestamps"]]
        assert set(ticks) <= set(seconds), f"meter {s['metric']['meter']} missed a tick"
        late = [t % 1000 for t in s["timestamps"] if t // 1000 in ticks and t % 1000 > 500]
        assert not late, f"meter {s['metric']['meter']} read late: {late} ms after the tick"
    # the broken devices are reported for themselves, once at ERROR
    for meter_id, reason in ((1001, "no reply"), (1002, "cannot connect"), (1003, "")):
        lines = re.findall(rf"ERROR poller: meter {meter_id} .* failed: (.*)", text)
        assert len(lines) == 1 and reason in lines[0], (meter_id, lines)
    assert re.search(r"skipping \d+ cycles", text) is None  # repeats are DEBUG, not in an INFO log
    # the hung device keeps its host:port busy past the next ticks: said once, not every tick
    busy = re.findall(rf"WARNING poller: \d+ bus\(es\) still busy .*127.0.0.1:{hung_port}", text)
    assert len(busy) == 1, text
    (up,) = [s for s in victoria.export('{__name__="poller_status_up", meter="1001"}')]
    assert set(up["values"]) == {0.0}


class ScriptedReplies:
    """A Modbus TCP peer that answers a request with its correct reply changed by `corrupt`,
    then closes the connection (so a reply cut short fails at once, not at the timeout).
    `sent` is the bytes it sent, `good` the correct reply they were made from."""

    def __init__(self, words, corrupt):
        self.words = words
        self.corrupt = corrupt
        self.good = self.sent = None
        self.handlers = set()

    async def serve(self, reader, writer):
        self.handlers.add(asyncio.current_task())
        try:
            tid, _, _, unit, fc, _address, count = struct.unpack(">HHHBBHH", await reader.readexactly(12))
            self.good = struct.pack(f">HHHBBB{count}H", tid, 0, 3 + 2 * count, unit, fc, 2 * count,
                                    *self.words[:count])
            self.sent = self.corrupt(self.good)
            writer.write(self.sent)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def corruptions():
    """Mostly none: each is a function of the correct reply."""
    def at(reply, p):
        return p % max(len(reply), 1)

    return st.one_of(
        st.just(lambda good: good),  # as sent by a healthy device (with one_of, about half of all)
        st.one_of(
            st.builds(lambda p, mask: lambda g: g[:at(g, p)] + bytes([g[at(g, p)] ^ mask]) + g[at(g, p) + 1:],
                      st.integers(0, 300), st.integers(1, 255)),  # a flipped byte, header or words
            st.builds(lambda p, v: lambda g: g[:p] + bytes([v]) + g[p + 1:],
                      st.integers(0, 8), st.integers(0, 255)),  # a header byte set to any value
            st.builds(lambda p: lambda g: g[:at(g, p)], st.integers(0, 300)),  # cut short
            st.builds(lambda b: lambda g: g + b, st.binary(min_size=1, max_size=20)),  # bytes after it
            st.builds(lambda p, b: lambda g: g[:at(g, p)] + b + g[at(g, p):],
                      st.integers(0, 300), st.binary(min_size=1, max_size=4)),  # bytes inside it
            st.builds(lambda p: lambda g: g[:at(g, p)] + g[at(g, p) + 1:], st.integers(0, 300)),  # a byte lost
            st.builds(lambda b: lambda g: b, st.binary(max_size=40)),  # no reply at all, just bytes
            st.builds(lambda code: lambda g: g[:4] + b"\x00\x03" + g[6:7] + bytes([g[7] | 0x80, code]),
                      st.integers(0, 255)),  # an exception reply
        ),
    )


def expected_outcome(sent, good):
    """What a strict client must make of `sent`, worked out from the MBAP layout alone."""
    if len(sent) == len(good) and sent[:9] == good[:9]:
        return "accepted"
    if len(sent) == 9 and sent[:4] == good[:4] and sent[4:6] == b"\x00\x03" and sent[6:8] == bytes(
            [good[6], good[7] | 0x80]):
        return "exception"
    return "bad_reply"


def test_random_replies_never_crash_the_poller():
    """Replies, mostly correct and otherwise corrupted at random, to a read: every reply is
    either accepted with exactly the words it carried (when it is a well-formed reply to that
    request), an exception reply, or refused as a bad reply; never anything else."""
    outcomes = Counter()

    @settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(list(FunctionCode)), st.integers(0, 255),
           st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=12), corruptions())
    def one_reply(fc, unit, words, corrupt):
        peer = ScriptedReplies(words, corrupt)
        block = ReadBlock(fc, 100, len(words), ())

        async def exchange():
            with AsyncioTrouble(collect=False) as trouble:  # nothing logged, whatever the reply
                server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
                endpoint = open_bus(BusAddress(Transport.TCP, "127.0.0.1", server.sockets[0].getsockname()[1]))
                try:
                    got = await endpoint.read(block, unit, timeout=5)  # long: a complete reply is never late
                except ModbusError as exc:
                    got = exc
                finally:
                    endpoint.close()
                    server.close()
                    await asyncio.wait(peer.handlers, timeout=1)  # the peer sees the close and ends
                    await server.wait_closed()
            trouble.check()
            return got

        got = asyncio.run(exchange())
        expected = expected_outcome(peer.sent, peer.good)
        if expected == "accepted":
            assert got == list(struct.unpack(f">{len(words)}H", peer.sent[9:])), (peer.sent, got)
        elif expected == "exception":
            assert isinstance(got, ExceptionReply) and got.code == peer.sent[8], (peer.sent, got)
        else:
            assert isinstance(got, BadReply), (peer.sent, got)  # at once: never a timeout
        outcomes[expected] += 1
        outcomes["changed"] += peer.sent != peer.good

    one_reply()
    total = sum(outcomes[k] for k in ("accepted", "exception", "bad_reply"))
    # the assertions above were reached: most replies were accepted and checked word for word
    assert outcomes["accepted"] >= total / 3, outcomes
    assert outcomes["bad_reply"] >= total / 5, outcomes
    assert outcomes["exception"] >= 10, outcomes
    # flipped bytes among the words are still well-formed replies: accepted with what was sent
    assert outcomes["changed"] > outcomes["bad_reply"] + outcomes["exception"], outcomes


def test_configuration_changes_take_effect_within_a_cycle_and_survive_a_postgres_restart(
        postgres, database, victoria, tmp_path):
    words = make_device("virtual_meter", seed_registers(postgres, database), 5).words()
    gw = ModbusServerThread(SimulatedServer(units={}, default=lambda: words))
    postgres.psql(database, "-c", f"UPDATE energy_meters SET host = '127.0.0.1', port = {gw.port}")
    log = tmp_path / "poller.log"
    env = {**postgres.env(database), **victoria.env(), "POLL_CRON": "* * * * * *", "POLL_HTTP_PORT": "0"}
    proc = start_module("poller", [], env, log)

    def meters_seen_since(t_ms):
        series = victoria._export_now('{__name__="voltage_l1_value"}')
        return {(s["metric"]["meter"], s["metric"].get("description")) for s in series
                if max(s["timestamps"]) >= t_ms}

    try:
        wait_until(lambda: "cycle: meters ok=1" in log.read_text(), 15, "the first cycle")
        # insert
        postgres.psql(database, "-c", "INSERT INTO energy_meters (id, host, port, slave_address, type) "
                                      f"VALUES (50, '127.0.0.1', {gw.port}, 7, 'virtual_meter')")
        t = int(time.time() * 1000)
        wait_until(lambda: ("50", None) in meters_seen_since(t), 4, "the inserted meter's readings")
        # change
        postgres.psql(database, "-c", "UPDATE energy_meters SET description = 'moved' WHERE id = 50")
        t = int(time.time() * 1000)
        wait_until(lambda: ("50", "moved") in meters_seen_since(t), 4, "the changed description")
        # delete
        postgres.psql(database, "-c", "DELETE FROM energy_meters WHERE id = 50")
        time.sleep(2.5)
        t = int(time.time() * 1000)
        time.sleep(2.5)
        assert "50" not in {m for m, _ in meters_seen_since(t)}
        # PostgreSQL goes away: polling goes on with the last configuration
        postgres.stop()
        try:
            t = int(time.time() * 1000)
            time.sleep(3.5)
            assert ("1", "Virtual meter (simulator)") in meters_seen_since(t)
            assert "polling goes on with the last configuration loaded" in log.read_text()
        finally:
            postgres.start()
        # back: the next change is seen
        postgres.psql(database, "-c", "INSERT INTO energy_meters (id, host, port, slave_address, type) "
                                      f"VALUES (51, '127.0.0.1', {gw.port}, 8, 'virtual_meter')")
        t = int(time.time() * 1000)
        wait_until(lambda: ("51", None) in meters_seen_since(t), 8, "a meter inserted after the restart")
    finally:
        rc = stop_process(proc)
        gw.close()
    text = log.read_text()
    assert rc == 0, text
    assert "configuration readable again" in text
    assert "Traceback" not in text


def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_healthz_and_metrics_reflect_a_dead_meter(postgres, database, tmp_path):
    words = make_device("virtual_meter", seed_registers(postgres, database), 5).words()
    gw = ModbusServerThread(SimulatedServer(units={}, default=lambda: words))
    refused = free_port()
    postgres.psql(database, "-c", f"""
        UPDATE energy_meters SET host = '127.0.0.1', port = {gw.port};
        INSERT INTO energy_meters (id, host, port, slave_address, type)
            VALUES (9, '127.0.0.1', {refused}, 1, 'virtual_meter');""")
    port = free_port()
    env = {**postgres.env(database), "POLL_CRON": "* * * * * *", "POLL_HTTP_PORT": str(port),
           "INFLUXDB_URL": "http://127.0.0.1:9"}
    proc = start_module("poller", ["--dry-run"], env, tmp_path / "poller.log")
    try:
        wait_until(lambda: "cycle: meters" in (tmp_path / "poller.log").read_text(), 15, "a cycle")
        time.sleep(1.2)
        status, body = http_get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and body.startswith("ok: last cycle completed")
        status, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
    finally:
        stop_process(proc)
        gw.close()
    assert status == 200
    assert re.search(r'emm_meter_up\{host="127.0.0.1",meter="1",slave_address="1",type="virtual_meter"\} 1.0',
                     metrics)
    assert re.search(r'emm_meter_up\{host="127.0.0.1",meter="9",slave_address="1",type="virtual_meter"\} 0.0',
                     metrics)
    assert re.search(r"emm_cycles_total [1-9]", metrics)
    assert re.search(r"emm_readings_total [1-9]", metrics)
    # the outbox's counters (--dry-run: written to stdout, no spool)
    assert re.search(r"emm_written_points_total [1-9]", metrics), metrics
    assert re.search(r"^emm_write_queue_points \d", metrics, re.M)
    for name in ("emm_spool_points", "emm_dropped_points_total",
                 "emm_points_not_written_total", "emm_spool_damaged_records_total"):
        assert re.search(rf"^{name} 0\.0$", metrics, re.M), name


def test_healthz_turns_unhealthy_when_no_cycle_completes(postgres, database, tmp_path):
    port = free_port()
    env = {**postgres.env(database), "POLL_CRON": "0 0 1 1 *", "POLL_HTTP_PORT": str(port),
           "POLL_HEALTH_STALE_S": "2", "INFLUXDB_URL": "http://127.0.0.1:9"}
    proc = start_module("poller", ["--dry-run"], env, tmp_path / "poller.log")
    try:
        wait_until(lambda: "health and metrics on" in (tmp_path / "poller.log").read_text(), 15, "the endpoint")
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200  # still within the start grace
        time.sleep(2.5)
        status, body = http_get(f"http://127.0.0.1:{port}/healthz")
    finally:
        stop_process(proc)
    assert status == 503
    assert "no cycle completed" in body


def test_a_health_port_in_use_stops_the_service_with_a_message(postgres, database):
    from tests.test_end_to_end import run_poller

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = run_poller([], {**postgres.env(database), "POLL_HTTP_PORT": str(port)}, timeout=30)
    assert done.returncode == 2
    assert f"cannot serve /healthz and /metrics on 127.0.0.1:{port}" in done.stderr


def test_the_service_waits_for_postgres_at_start_and_stops_cleanly(tmp_path):
    port = free_port()
    log = tmp_path / "poller.log"
    env = {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(port), "POSTGRES_USER": "u", "POSTGRES_DB": "d",
           "INFLUXDB_URL": "http://127.0.0.1:9"}
    proc = start_module("poller", [], env, log)
    try:
        wait_until(lambda: "trying again in 5 s" in log.read_text(), 15, "the retry message")
        assert proc.poll() is None  # still running, waiting for the database
    finally:
        rc = stop_process(proc)
    text = log.read_text()
    assert rc == 0, text
    assert f"cannot read the configuration from PostgreSQL u@127.0.0.1:{port}/d" in text
    assert "Traceback" not in text
