"""Smoke test of the benchmark: a tiny fleet through `python -m bench`, as a user runs it.

Checks the benchmark works end to end (its own PostgreSQL, VictoriaMetrics,
simulated gateways and the poller as a process) and that its JSON is complete;
no timing is asserted. One run with `--framer both`: the Modbus TCP fleet first
(the default run's keys, at the top level), then the RTU-over-TCP one (under
`variants`, "rtu"), each with its floor, poller and original design.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.servers import ROOT

REQUIRED = ["cycle_s", "lower_bound_s", "naive_s", "network_bound_s", "naive_registers", "cpu_us_per_reading",
            "floor_cpu_us_per_reading", "lean_wall_s", "lean_cpu_us_per_reading", "readings", "readings_per_s",
            "rss_mb", "rss_growth_pct", "floor_beside_cpu_us_per_reading"]


def test_small_fleet_runs_and_reports_complete_json_for_tcp_and_rtu_over_tcp(tmp_path):
    gateways, units, values, cycles = 3, 2, 5, 3
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--gateways", str(gateways), "--units", str(units), "--values", str(values),
         "--cycles", str(cycles), "--warmup", "1", "--floor-rounds", "2", "--naive-gateways", "1",
         "--framer", "both", "--floor-beside", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    top = json.loads(done.stdout.strip().splitlines()[-1])
    assert top["framer"] == "socket" and top["transport"] == "tcp"
    assert set(top["variants"]) == {"rtu"}
    rtu = top["variants"]["rtu"]
    assert rtu["framer"] == "rtu" and rtu["transport"] == "rtuovertcp"
    for result in (top, rtu):
        _check_fleet(result, gateways, units, values, cycles)
    assert rtu["network_bound_s"] == top["network_bound_s"]  # the same bound for both framings
    assert "| cycle time" in done.stdout  # the tables are printed before the JSON line
    assert "## RTU over TCP" in done.stdout and "Side by side" in done.stdout


def test_the_floor_beside_starts_late_in_each_slot_of_the_pollers_schedule():
    """bench/floor.py --paced-s: a round goes as late in a slot as it fits with its margin, never
    before PACED_AT of it; slots follow cron's */N, which starts again at each minute."""
    from bench.floor import PACED_AT, paced_start, slot_bounds

    minute = 1_700_000_040.0  # a whole minute
    assert slot_bounds(minute + 3.5, 1) == (minute + 3, minute + 4)
    assert slot_bounds(minute + 57.0, 7) == (minute + 56, minute + 60)  # */7: 56 s, then 0 s of the next minute
    assert paced_start(minute + 0.1, 1, 0.13) == pytest.approx(minute + 1 - 1.3 * 0.13 - 0.02)
    assert paced_start(minute + 0.9, 1, 0.13) == pytest.approx(minute + 2 - 1.3 * 0.13 - 0.02)  # too late: the next
    assert paced_start(minute + 0.1, 1, 0.9) == pytest.approx(minute + PACED_AT)  # a long round: not before 0.6
    assert paced_start(minute + 56.5, 7, 0.5) == pytest.approx(minute + 60 - 1.3 * 0.5 - 0.02)  # the short slot


def _check_fleet(result, gateways, units, values, cycles):
    missing = [k for k in REQUIRED if result.get(k) is None]
    assert not missing, f"JSON lacks {missing}: {result}"
    # every reading of every cycle the poller ran is stored, no more, no fewer
    assert result["cycles"] >= cycles
    assert result["readings"] == result["readings_logged"] == gateways * units * values * result["cycles"]
    assert result["not_written"] == 0 and result["failed_meters"] == 0
    assert result["planned_requests"] == gateways * units  # one request per unit: its values are contiguous
    assert result["naive_registers"] == units * values  # one gateway, one request per register
    assert result["network_bound_s"] == pytest.approx(units * 0.010)
    assert result["lower_bound_s"] >= max(result["network_bound_s"], result["lean_wall_s"])
    # the lean client got every reply of its rounds (a short one would hang it), in about the network bound
    assert result["lean_wall_s"] >= result["network_bound_s"] * 0.9
    for key in ("cycle_s", "readings_per_s", "rss_mb", "naive_s"):
        assert result[key] > 0, key
    # CPU is read from /proc in clock ticks (10 ms): a tiny fleet may use less than one
    for key in ("cpu_us_per_reading", "floor_cpu_us_per_reading", "floor_beside_cpu_us_per_reading"):
        assert isinstance(result[key], (int, float)) and result[key] >= 0, key
    # --floor-beside: the rounds taken are those within the poller's measured cycles, one a cycle at most
    assert 1 <= result["floor_beside_rounds"] <= result["cycles_measured"] + 1


# ---------------------------------------------------------------------------
# --peer nodered: Node-RED with node-red-contrib-modbus on the same fleet


def test_nodered_flow_has_one_queueing_client_and_flex_getter_per_gateway_and_the_planned_requests():
    from bench.fleet import FleetSpec
    from bench.nodered import build_flow, round_plan, spec_gateways

    spec = FleetSpec(gateways=3, units=4, values=30)
    ports = [5021, 5022, 5023]
    gateways = spec_gateways(spec, ports)
    # the poller's plan for the bench map: one request per unit, fc 4 from address 0, 2 registers per value
    assert [reqs for _, _, reqs in gateways] == [[(unit, 4, 0, 60) for unit in range(1, 5)]] * 3
    flow = build_flow(gateways, every_s=1)
    json.dumps(flow)  # a flows.json

    by_type: dict[str, list[dict]] = {}
    for node in flow:
        by_type.setdefault(node["type"], []).append(node)
    clients, getters = by_type["modbus-client"], by_type["modbus-flex-getter"]
    assert len(clients) == len(getters) == spec.gateways
    assert sorted(int(c["tcpPort"]) for c in clients) == ports
    for c in clients:
        assert c["clienttype"] == "tcp" and c["tcpType"] == "DEFAULT" and c["tcpHost"] == "127.0.0.1"
        assert c["bufferCommands"] is True and c["parallelUnitIdsAllowed"] is True  # queueing on
    ids = {n["id"]: n for n in flow}
    assert sorted(g["server"] for g in getters) == sorted(c["id"] for c in clients)  # one getter per client
    for g in getters:
        assert g["keepMsgProperties"] is True and g["showErrors"] is True and not g["emptyMsgOnFail"]
        assert [ids[w]["name"] for w in g["wires"][0]] == ["decode"]

    # the round node: one output per gateway, wired to that gateway's getter, sending its units' requests
    (inject,) = by_type["inject"]
    rnd = ids[inject["wires"][0][0]]
    assert rnd["name"] == "round" and inject["repeat"] == "1" and inject["once"] is True
    assert rnd["outputs"] == spec.gateways
    plan = round_plan(flow)
    for out, (wires, reqs) in enumerate(zip(rnd["wires"], plan, strict=True)):
        (getter,) = wires
        port = int(ids[ids[getter]["server"]]["tcpPort"])
        assert port == ports[out]
        assert reqs == [(unit, 4, 0, 2 * spec.values) for unit in range(1, spec.units + 1)]
    # the count node expects every request's reply each round; errors of any node are caught
    assert f"=== {spec.gateways * spec.units})" in ids["emm.count"]["func"]
    (catch,) = by_type["catch"]
    assert catch["scope"] is None and ids[catch["wires"][0][0]]["name"] == "error"
    assert "readFloatBE" in ids["emm.decode"]["func"]


def test_nodered_function_nodes_and_settings_are_valid_javascript(tmp_path):
    from bench.fleet import FleetSpec
    from bench.nodered import _template, build_flow, spec_gateways

    flow = build_flow(spec_gateways(FleetSpec(2, 2, 5), [1, 2]))
    sources = {"settings.js": _template("settings.js", FLOW_FILE="flows.json")}
    for node in flow:
        if node["type"] == "function":
            for part in ("initialize", "func"):
                sources[f"{node['name']}-{part}.js"] = f"async function f(msg) {{\n{node[part]}\n}}\n"
    for name, text in sources.items():
        (tmp_path / name).write_text(text)
        done = subprocess.run(["node", "--check", str(tmp_path / name)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{name}: {done.stderr}"


@pytest.mark.slow  # ~16 s with Node-RED in its cache, ~34 s the first time (npm install)
def test_small_fleet_with_the_nodered_peer_gets_every_reading_to_both(tmp_path):
    gateways, units, values, cycles = 2, 2, 5, 3
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--gateways", str(gateways), "--units", str(units), "--values", str(values),
         "--cycles", str(cycles), "--warmup", "1", "--floor-rounds", "2", "--naive-gateways", "0",
         "--peer", "nodered", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    top = json.loads(done.stdout.strip().splitlines()[-1])
    # our poller: every reading of every cycle stored
    assert top["cycles"] >= cycles
    assert top["readings"] == top["readings_logged"] == gateways * units * values * top["cycles"]
    assert top["not_written"] == 0 and top["failed_meters"] == 0
    # Node-RED: every reading of every round decoded, its figures and the ratios in the JSON
    red = top["peers"]["nodered"]
    assert "error" not in red, red
    assert red["versions"]["node-red"] and red["versions"]["node-red-contrib-modbus"]
    assert red["rounds"] == cycles and red["rounds_measured"] == cycles - 1
    assert red["requests_per_round"] == top["planned_requests"] == gateways * units
    assert red["readings"] == red["readings_expected"] == gateways * units * values * cycles
    assert red["decoding_checked_gateways"] == gateways  # values as the fleet serves them
    for key in ("round_s", "round_p95_s", "rss_mb", "readings_per_s"):
        assert red[key] > 0, key
    assert red["round_s"] >= units * 0.010 * 0.9  # the units' replies, 10 ms each, one at a time per gateway
    assert red["cpu_us_per_reading"] >= 0
    assert set(red["ours_vs_theirs"]) == {"cycle", "cycle_p95", "cpu_per_reading", "rss"}
    assert "Peer nodered: Node-RED" in done.stdout and "| CPU per reading (its process) |" in done.stdout
