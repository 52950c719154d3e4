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

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.modbus import Endpoint, ModbusError
from poller.model import DataType, FunctionCode, ReadBlock, Register
from tests.servers import GarbageServer, ModbusServerThread, free_port, start_module, stop_process
from tests.test_faults import seed_registers
from virtual_server.device import make_device
from virtual_server.server import ModbusTcpServer


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
    gateways = [ModbusServerThread(ModbusTcpServer(units={}, default=lambda: words)) for _ in range(4)]
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
    ticks = [int(t) for t in range(int(started_s) + 2, int(started_s) + 8)]  # seconds surely polled
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
    busy = re.findall(rf"WARNING poller: \d+ host:port\(s\) still busy .*127.0.0.1:{hung_port}", text)
    assert len(busy) == 1, text
    (up,) = [s for s in victoria.export('{__name__="poller_status_up", meter="1001"}')]
    assert set(up["values"]) == {0.0}


class ScriptedReplies:
    """A Modbus TCP peer that answers each request with bytes a test chooses."""

    def __init__(self):
        self.reply = b""
        self.mode = "raw"
        self.handlers = set()

    async def serve(self, reader, writer):
        self.handlers.add(asyncio.current_task())
        try:
            while True:
                header = await reader.readexactly(7)
                tid, _, length, unit = struct.unpack(">HHHB", header)
                await reader.readexactly(length - 1)
                if self.mode == "raw":
                    writer.write(self.reply)
                else:
                    tid = tid if self.mode == "framed" else (tid + 1) & 0xFFFF
                    writer.write(struct.pack(">HHHB", tid, 0, len(self.reply) + 1, unit) + self.reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


BLOCK = ReadBlock(FunctionCode.READ_HOLDING_REGISTERS, 0, 2,
                  (Register(1, "t", 0, "v", None, DataType.FLOAT32, FunctionCode.READ_HOLDING_REGISTERS),))


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(["raw", "framed", "wrong_tid"]),
       st.one_of(st.binary(max_size=40), st.builds(lambda n, b: bytes([3, n]) + b, st.integers(0, 255),
                                                   st.binary(max_size=12))))
def test_random_replies_never_crash_the_poller(mode, reply):
    peer = ScriptedReplies()
    peer.mode, peer.reply = mode, reply

    async def exchange():
        server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
        endpoint = Endpoint("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            try:
                words = await endpoint.read(BLOCK, 1, timeout=0.01)
            except ModbusError:
                return
            # accepted only a reply of the right transaction with the words asked for
            # (pymodbus reads byte_count // 2 registers, so a count of 5 passes as 2 registers)
            assert mode == "framed" and reply[0] == 3 and reply[1] // 2 == 2 and len(reply) >= 6
            assert words == list(struct.unpack(">2H", reply[2:6]))
        finally:
            endpoint.close()
            server.close()
            await asyncio.wait(peer.handlers, timeout=1)  # the peer sees the close and ends
            await server.wait_closed()

    asyncio.run(exchange())


def test_configuration_changes_take_effect_within_a_cycle_and_survive_a_postgres_restart(
        postgres, database, victoria, tmp_path):
    words = make_device("virtual_meter", seed_registers(postgres, database), 5).words()
    gw = ModbusServerThread(ModbusTcpServer(units={}, default=lambda: words))
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
    gw = ModbusServerThread(ModbusTcpServer(units={}, default=lambda: words))
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
