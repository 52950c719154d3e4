"""python -m bench: the poller, run as in production, against a simulated fleet.

Builds the fleet on this machine (bench.fleet: gateways on loopback, one
process), puts its configuration in a throwaway PostgreSQL cluster, starts
VictoriaMetrics as the InfluxDB write API, measures the bare-pymodbus floor
(bench.floor), runs `python -m poller` on a seconds schedule for --cycles
cycles, checks every reading arrived, runs the original sequential design over
a subset (bench.naive) and prints a table, then one line of JSON.

--framer rtu does all of it with an RTU-over-TCP fleet (energy_meters.transport
'rtuovertcp'); --framer both runs the Modbus TCP fleet and then the RTU one in
the same run, and reports them side by side (the RTU results under `variants`).

--peer nodered then runs Node-RED with node-red-contrib-modbus (bench.nodered) on
the same Modbus TCP fleet after the poller, its figures beside the poller's (under
`peers`).
"""

from __future__ import annotations

import argparse
import sys

from .fleet import FleetSpec
from .run import Options, run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    fleet = p.add_argument_group("fleet")
    fleet.add_argument("--gateways", type=int, default=FleetSpec.gateways, help="simulated gateways (host:ports)")
    fleet.add_argument("--units", type=int, default=FleetSpec.units, help="unit ids behind each gateway")
    fleet.add_argument("--values", type=int, default=FleetSpec.values,
                       help="float32 values per unit (2 registers each)")
    fleet.add_argument("--latency-ms", type=float, default=FleetSpec.latency_ms,
                       help="injected device latency before every reply")
    fleet.add_argument("--framer", choices=("socket", "rtu", "both"), default="socket",
                       help="socket: Modbus TCP gateways (energy_meters.transport 'tcp'); rtu: RTU over TCP "
                            "(transparent serial servers, transport 'rtuovertcp'), floor and original design "
                            "with pymodbus's RTU framer; both: the Modbus TCP fleet, then the RTU one, each with "
                            "its floor, poller and original design, the RTU results under `variants`")
    run_ = p.add_argument_group("run")
    run_.add_argument("--cycles", type=int, default=100, help="poller cycles to run (warm-up included)")
    run_.add_argument("--warmup", type=int, default=3, help="first cycles left out of the timings")
    run_.add_argument("--every-s", type=int, default=1, help="POLL_CRON interval in seconds")
    run_.add_argument("--floor-rounds", type=int, default=5, help="rounds of the bare-pymodbus floor")
    run_.add_argument("--floor-beside", action="store_true",
                      help="also run the floor beside each poller run, in the gaps between its cycles, and report "
                           "the poller's CPU against it (bench/README.md, \"What it does\", 3.)")
    run_.add_argument("--naive-gateways", type=int, default=2,
                      help="gateways whose meters the original sequential design polls (0 = skip)")
    run_.add_argument("--profile-s", type=float, default=0.0,
                      help="after the measured cycles, profile the poller with py-spy for this long")
    run_.add_argument("--poller-patch", default=None,
                      help="run the poller from a copy of poller/ with this patch applied (instead of poller/)")
    run_.add_argument("--compare-patch", default=None,
                      help="run poller/ and then a copy with this patch applied, side by side (with --workers: "
                           "both with its first value)")
    run_.add_argument("--peer", action="append", choices=("nodered",), default=[],
                      help="after the poller, run this peer on the same fleet and report it side by side: nodered = "
                           "Node-RED with node-red-contrib-modbus (installed from npm into --nodered-dir), one "
                           "modbus-client + flex-getter per gateway, the same requests, every --every-s s, the "
                           "same --cycles and --warmup; Modbus TCP fleet only")
    run_.add_argument("--nodered-dir", default=None,
                      help="where --peer nodered installs Node-RED (reused while it holds the pinned versions); "
                           "default $EMM_BENCH_NODERED_DIR, else ~/.cache/emm-bench/nodered")
    run_.add_argument("--workers", default=None,
                      help="POLL_WORKERS for the poller; a list (0,2) runs the poller once with each, side by side "
                           "(CPU per reading counts the worker processes too)")
    run_.add_argument("--instances", type=int, default=0,
                      help="instead of the run above: this many pollers with POLL_COORDINATION=postgres share the "
                           "fleet, one is SIGKILLed (python -m bench.failover with this fleet; its own options there)")
    run_.add_argument("--out", default=None, help="directory for logs and profiles (default: a temp dir)")
    run_.add_argument("--json-out", default=None, help="also write the final JSON to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.instances:
        from . import failover

        return failover.main(["--instances", str(a.instances), "--gateways", str(a.gateways), "--units",
                              str(a.units), "--values", str(a.values), "--latency-ms", str(a.latency_ms),
                              *(["--out", a.out] if a.out else [])])
    spec = FleetSpec(a.gateways, a.units, a.values, a.latency_ms)
    opts = Options(cycles=a.cycles, warmup=a.warmup, every_s=a.every_s, floor_rounds=a.floor_rounds,
                   floor_beside=a.floor_beside,
                   naive_gateways=a.naive_gateways, profile_s=a.profile_s, poller_patch=a.poller_patch,
                   compare_patch=a.compare_patch, out=a.out, json_out=a.json_out,
                   framers=("socket", "rtu") if a.framer == "both" else (a.framer,),
                   peers=tuple(dict.fromkeys(a.peer)), nodered_dir=a.nodered_dir,
                   workers=tuple(int(n) for n in a.workers.split(",")) if a.workers else ())
    return run(spec, opts)


if __name__ == "__main__":
    sys.exit(main())
