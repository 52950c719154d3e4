"""python -m bench.failover: several pollers share one fleet; one is SIGKILLed mid-run.

    .venv/bin/python -m bench.failover                         # 3 instances, 30 gateways, lease 10 s
    .venv/bin/python -m bench.failover --instances 3 --lease-s 5 --gateways 100

Starts the simulated fleet (bench.fleet), a throwaway PostgreSQL with the fleet's
configuration and the poller's least-privilege login, VictoriaMetrics, and
`--instances` pollers with POLL_COORDINATION=postgres on a 1 s schedule. Once the
buses are shared (each instance at most its fair share), it runs `--steady-s`,
SIGKILLs the instance holding the most buses, runs until the others have polled
every one of its buses again and `--after-s` more, then stops the rest with SIGTERM.

Measured from what was stored (each poll of a meter writes one `poller_status` point,
timestamped at the poll): per meter and tick (second), the number of polls. Reported:
the takeover time (SIGKILL to the last of the victim's buses polled again) against the
documented bound (lease + 2 poll intervals), meter-ticks lost (no poll) inside and
outside the takeover window, meter-ticks doubled (two polls), the CPU per reading of
all instances together, and how the buses were shared before and after. The last line
of output is JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from poller.lease import GRACE_MARGIN_S, effective_lease_s, heartbeat_s
from tests.servers import ROOT, free_port, instance_pid, postgres_cluster, project_env, scraped, stop_process

from .fleet import FleetSpec, seed_sql
from .proc import proc_cpu_s, say
from .run import DB, BenchVictoriaMetrics, _start_fleet, _stop_fleet

READER, READER_PASSWORD = "emm_bench_poller", "bench-only-poller"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--instances", type=int, default=3, help="poller instances sharing the fleet")
    p.add_argument("--gateways", type=int, default=30)
    p.add_argument("--units", type=int, default=10)
    p.add_argument("--values", type=int, default=30)
    p.add_argument("--latency-ms", type=float, default=10.0)
    p.add_argument("--lease-s", type=int, default=10, help="POLL_LEASE_S")
    p.add_argument("--steady-s", type=float, default=15.0, help="seconds of shared polling before the kill")
    p.add_argument("--after-s", type=float, default=10.0, help="seconds after the takeover before the stop")
    p.add_argument("--out", default=None, help="directory for logs (default: a temp dir)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    spec = FleetSpec(a.gateways, a.units, a.values, a.latency_ms)
    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="emm-failover-"))
    work.mkdir(parents=True, exist_ok=True)
    # README "Several pollers": lease + heartbeat (<= 1 interval) + the next tick; the lease is longer than
    # POLL_LEASE_S when the device type's timeout (3 s, +1 s margin) needs it
    lease_s = effective_lease_s(a.lease_s, heartbeat_s(a.lease_s, 1.0), 3.0 + GRACE_MARGIN_S)
    bound_s = lease_s + 2
    say(f"fleet: {spec.describe()}; {a.instances} instances, lease {lease_s:g} s; logs in {work}")
    vm = BenchVictoriaMetrics()
    fleet_proc = None
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with postgres_cluster() as pg:
            pg.create_database(DB)
            fleet_proc, ports = _start_fleet(spec, "socket")
            pg.psql(DB, input=seed_sql(spec, ports, "socket"))
            pg.psql(DB, "-c", f"CREATE ROLE {READER} LOGIN PASSWORD '{READER_PASSWORD}'; "
                              f"GRANT emm_reader TO {READER}; "
                              f"ALTER ROLE {READER} SET default_transaction_read_only = on;")
            vm.start()
            env = project_env({**pg.env(DB), **vm.env(), "POSTGRES_USER": READER,
                               "POSTGRES_PASSWORD": READER_PASSWORD, "POLL_CRON": "* * * * * *",
                               "POLL_COORDINATION": "postgres", "POLL_LEASE_S": str(a.lease_s),
                               "POLL_SPOOL_DIR": str(work / "spool")})
            http: dict[int, int] = {}  # pid -> its /metrics port
            for i in range(a.instances):
                with open(work / f"poller-{i}.log", "wb") as log:
                    http_port = free_port()
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "poller", "--env-file", "/nonexistent"], cwd=ROOT,
                        env={**env, "POLL_HTTP_PORT": str(http_port)}, stdout=log, stderr=subprocess.STDOUT))
                    http[procs[-1].pid] = http_port
            share = math.ceil(spec.gateways / a.instances)
            deadline = time.monotonic() + 60
            while True:
                owners = pg.lease_owners(DB)
                counts = Counter(instance_pid(o) for o in owners.values())
                if len(owners) == spec.gateways and None not in counts and len(counts) == a.instances \
                        and max(counts.values()) <= share:
                    break
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise SystemExit(f"the buses were not shared within 60 s: {dict(counts)}")
                time.sleep(0.2)
            shared_from = time.time()
            say(f"shared: {sorted(counts.values())} buses per instance; steady for {a.steady_s:g} s")
            cpu_start = {p.pid: proc_cpu_s(p.pid) for p in procs}
            time.sleep(a.steady_s)
            victim = max(procs, key=lambda p: counts[p.pid])
            victim_buses = {bus for bus, owner in owners.items() if instance_pid(owner) == victim.pid}
            cpu_victim = proc_cpu_s(victim.pid) - cpu_start[victim.pid]
            counted_before = sum(ticks_missed(http[p.pid]) for p in procs if p is not victim)
            killed = time.time()
            victim.kill()
            victim.wait()
            say(f"SIGKILLed pid {victim.pid} holding {len(victim_buses)} buses")
            survivors = [p for p in procs if p is not victim]
            deadline = time.monotonic() + bound_s + 30
            while True:
                owners = pg.lease_owners(DB)
                if all(instance_pid(owners.get(bus)) in {p.pid for p in survivors} for bus in victim_buses):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("the victim's buses were not taken over")
                time.sleep(0.2)
            time.sleep(a.after_s)
            ended = time.time()
            cpu = cpu_victim + sum(proc_cpu_s(p.pid) - cpu_start[p.pid] for p in survivors)
            after = Counter(instance_pid(o) for o in pg.lease_owners(DB).values())
            counted = sum(ticks_missed(http[p.pid]) for p in survivors) - counted_before
            rcs = [stop_process(p, timeout=30) for p in survivors]
            series = vm.export('{__name__="poller_status_up"}', min_samples=1, timeout=20)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if fleet_proc is not None:
            _stop_fleet(fleet_proc)
        vm.close()

    # per meter and tick: polls stored
    victim_ports = {int(bus.rsplit(":", 1)[1]) for bus in victim_buses}
    first, last = int(shared_from) + 1, int(ended) - 1
    lost_in = lost_out = doubled = polled = 0
    takeover_at: dict[int, float] = {}
    for s in series:
        port = ports[int(s["metric"]["description"].split()[2])]  # 'bench gateway G unit U' (seed_sql)
        ticks = Counter(t // 1000 for t in s["timestamps"])
        stamps = sorted(t / 1000 for t in s["timestamps"])
        if port in victim_ports:
            after_kill = [t for t in stamps if t > killed]
            if after_kill:
                takeover_at[port] = min(takeover_at.get(port, math.inf), after_kill[0])
        for tick in range(first, last):
            n = ticks.get(tick, 0)
            polled += n
            doubled += n > 1
            if n == 0:
                if port in victim_ports and killed - 1 <= tick <= killed + bound_s + 1:
                    lost_in += 1
                else:
                    lost_out += 1
    takeover_s = (max(takeover_at.values()) - killed) if len(takeover_at) == len(victim_ports) else None
    readings = polled * spec.values
    result = {
        "instances": a.instances, "gateways": spec.gateways, "meters": spec.meters, "lease_s": lease_s,
        "shared_before": sorted(counts.values()), "shared_after": sorted(after.values()),
        "victim_buses": len(victim_buses), "takeover_s": takeover_s, "takeover_bound_s": bound_s,
        "meter_ticks": len(series) * (last - first), "meter_ticks_polled": polled,
        "meter_ticks_lost_in_takeover_window": lost_in, "meter_ticks_lost_elsewhere": lost_out,
        "meter_ticks_doubled": doubled, "meter_ticks_missed_counted": counted,
        "cpu_us_per_reading_all_instances": cpu / max(1, readings) * 1e6,
        "exit_codes": rcs, "logs": str(work),
    }
    print(f"\nFailover: {a.instances} instances share {spec.gateways} buses ({spec.meters} meters), "
          f"lease {lease_s:g} s, 1 s schedule.\n"
          f"- shared before the kill: {result['shared_before']} buses per instance; after: {result['shared_after']}\n"
          f"- SIGKILL of the instance holding {len(victim_buses)} buses: all polled again after "
          f"{'-' if takeover_s is None else f'{takeover_s:.1f}'} s (bound {bound_s:g} s)\n"
          f"- meter-ticks lost (no reading stored: not polled, or read by the victim and lost with its memory): "
          f"{lost_in} inside the takeover window, {lost_out} elsewhere; doubled: {doubled}\n"
          f"- counted by the survivors (emm_meter_ticks_missed_total, from the kill on): {counted:g} (an upper "
          f"bound after a death: the ticks the victim polled after its last heartbeat count too)\n"
          f"- CPU per reading, all instances together: {result['cpu_us_per_reading_all_instances']:.2f} us")
    print(json.dumps(result), flush=True)
    ok = takeover_s is not None and takeover_s <= bound_s + 1 and lost_out == 0 and doubled == 0 \
        and rcs == [0] * len(survivors)
    return 0 if ok else 1


def ticks_missed(port: int) -> float:
    """An instance's emm_meter_ticks_missed_total (README, "Several pollers")."""
    counted = scraped(port, "emm_meter_ticks_missed_total")
    return math.nan if counted is None else counted


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
