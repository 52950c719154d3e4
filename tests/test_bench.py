"""Smoke test of the benchmark: a tiny fleet through `python -m bench`, as a user runs it.

Checks the benchmark works end to end (its own PostgreSQL, VictoriaMetrics,
simulated gateways and the poller as a process) and that its JSON is complete;
no timing is asserted. One run with `--framer both`: the Modbus TCP fleet first
(the default run's keys, at the top level), then the RTU-over-TCP one (under
`variants`, "rtu"), each with its floor, poller and original design.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.servers import ROOT

REQUIRED = ["cycle_s", "lower_bound_s", "naive_s", "network_bound_s", "naive_registers", "cpu_us_per_reading",
            "floor_cpu_us_per_reading", "readings", "readings_per_s", "rss_mb", "rss_growth_pct"]


@pytest.mark.skipif(shutil.which("victoria-metrics") is None, reason="needs Debian's victoria-metrics package")
def test_small_fleet_runs_and_reports_complete_json_for_tcp_and_rtu_over_tcp(tmp_path):
    gateways, units, values, cycles = 3, 2, 5, 3
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--gateways", str(gateways), "--units", str(units), "--values", str(values),
         "--cycles", str(cycles), "--warmup", "1", "--floor-rounds", "2", "--naive-gateways", "1",
         "--framer", "both", "--out", str(tmp_path)],
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
    assert result["lower_bound_s"] >= result["network_bound_s"]
    for key in ("cycle_s", "readings_per_s", "rss_mb", "naive_s"):
        assert result[key] > 0, key
    # CPU is read from /proc in clock ticks (10 ms): a tiny fleet may use less than one
    for key in ("cpu_us_per_reading", "floor_cpu_us_per_reading"):
        assert isinstance(result[key], (int, float)) and result[key] >= 0, key
