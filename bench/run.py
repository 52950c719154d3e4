"""The benchmark run: servers up, floor, poller as in production, check, naive, report."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from tests.servers import ROOT, VictoriaMetrics, free_port, postgres_cluster, project_env, stop_process
from virtual_server.server import Framer

from . import profile
from .fleet import TRANSPORTS, FleetSpec, seed_sql
from .floor import PACED_AT
from .naive import run_naive
from .proc import proc_children, proc_cpu_s, proc_mem_kb, say

# The poller's per-cycle line, read as key=value pairs so that fields added
# later (backed_off=, busy_endpoints_skipped=) do not break the parse:
#   cycle: meters ok=N failed=N readings=N ... duration=X.XXXs [NOT WRITTEN=N] since_tick=X.XXXs
_PAIR = re.compile(r"(\w+)=([\d.]+)s?\b")


def parse_cycle(line: str) -> dict[str, float] | None:
    if "cycle: meters " not in line or "since_tick=" not in line:
        return None
    fields = {k: float(v) for k, v in _PAIR.findall(line.split("cycle: meters ", 1)[1])}
    fields["not_written"] = fields.pop("WRITTEN", 0.0)
    fields.setdefault("busy_endpoints_skipped", 0.0)
    return fields


DB = "emm_bench"
FRAMER_TITLES = {"socket": "Modbus TCP", "rtu": "RTU over TCP"}


@dataclass
class Options:
    cycles: int = 100
    warmup: int = 3
    every_s: int = 1
    floor_rounds: int = 5
    floor_beside: bool = False
    naive_gateways: int = 2
    profile_s: float = 0.0
    poller_patch: str | None = None
    compare_patch: str | None = None
    framers: tuple[Framer, ...] = ("socket",)  # fleets, one after the other: "socket" (Modbus TCP), "rtu"
    out: str | None = None
    json_out: str | None = None
    peers: tuple[str, ...] = ()  # other pollers run on the same fleet after ours: "nodered"
    nodered_dir: str | None = None  # the Node-RED install cache (default: bench.nodered.default_cache_dir())
    workers: tuple[int, ...] = ()  # POLL_WORKERS of each poller run, side by side (empty: the poller's default)


def variant_label(framer: str, base: str) -> str:
    """The label of a poller run: `poller`/`patched` on the Modbus TCP fleet, `rtu`/`patched-rtu` on RTU."""
    if framer == "socket":
        return base
    return framer if base == "poller" else f"{base}-{framer}"


class BenchVictoriaMetrics(VictoriaMetrics):
    """The tests' VictoriaMetrics, with queries that see points the moment they are flushed."""

    # queries see points the moment they are flushed
    extra_args = ("-search.latencyOffset=0s",)

    def samples(self) -> int:
        """Stored readings: samples of `<measurement>_value` series (not the poller's own status points)."""
        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=30).read()
        q = urllib.parse.urlencode({"query": 'sum(count_over_time({__name__=~".+_value"}[3650d]))',
                                    "time": f"{time.time() + 60:.3f}", "nocache": "1"})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=120) as r:
            result = json.loads(r.read())["data"]["result"]
        return int(float(result[0]["value"][1])) if result else 0

    def settled_samples(self, expected: int, timeout: float = 90.0, quiet_s: float = 10.0) -> int:
        """The stored sample count once it reaches `expected`, or has not changed for `quiet_s`.

        VictoriaMetrics makes series it has not seen before searchable a few seconds
        after their first points (the next fleet's meters are new series: 2-4 s here),
        so a count that stands still for a second is not yet a final one.
        """
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while True:
            now = self.samples()
            if now != last:
                last, since = now, time.monotonic()
            if now == expected or time.monotonic() - since >= quiet_s or time.monotonic() > deadline:
                return now
            time.sleep(1.0)


# ---------------------------------------------------------------------------
# the poller, as in production


def poller_tree(patch: str | None, work: Path) -> Path:
    """The directory to run `python -m poller` from: the project, or a patched copy of poller/."""
    if patch is None:
        return ROOT
    tree = work / "patched"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    shutil.copytree(ROOT / "poller", tree / "poller", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(["patch", "-p1", "-d", str(tree), "-i", str(Path(patch).resolve())],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"patch {patch} does not apply to poller/: {done.stdout}{done.stderr}")
    return tree


def _beside(floor: dict[str, Any], since: float, until: float) -> dict[str, Any]:
    """The floor beside a poller run, from its rounds that started within the poller's measured
    cycles (wall clock `since`..`until`); all its rounds should none have."""
    per_round = float(floor["readings_per_round"]) / 1e6
    rounds = [(at, cpu) for at, cpu in zip(floor["round_starts"], floor["cpu_s_rounds"], strict=True)
              if since <= at <= until] or list(zip(floor["round_starts"], floor["cpu_s_rounds"], strict=True))
    cpus = [cpu for _, cpu in rounds]
    return {"floor_beside_cpu_us_per_reading": sum(cpus) / len(cpus) / per_round if per_round else 0.0,
            "floor_beside_rounds": len(cpus), "floor_beside_wall_s": floor["wall_s"],
            "floor_beside_late_rounds": floor["late_rounds"],
            "floor_beside_rounds_us": [round(cpu / per_round, 3) for cpu in cpus] if per_round else []}


def run_poller(label: str, tree: Path, env: dict[str, str], spec: FleetSpec, opts: Options,
               work: Path, vm: BenchVictoriaMetrics, stored_before: int, workers: int | None = None) -> dict[str, Any]:
    log_path = work / f"poller-{label}.log"
    cron = "* * * * * *" if opts.every_s == 1 else f"* * * * * */{opts.every_s}"
    # spool and /metrics as the service has them, in the bench's own places
    penv = project_env({**env, "POLL_CRON": cron, "POLL_SPOOL_DIR": str(work / f"spool-{label}"),
                        "POLL_HTTP_PORT": str(free_port())})
    if tree != ROOT:
        penv["PYTHONPATH"] = f"{tree}{os.pathsep}{ROOT}"
    if workers is not None:
        penv["POLL_WORKERS"] = str(workers)
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "poller", "--env-file", "/nonexistent"],
                                cwd=tree, env=penv, stdout=logf, stderr=subprocess.STDOUT)
    say(f"[{label}] poller pid {proc.pid} from {tree}, POLL_CRON {cron!r}, {opts.cycles} cycles")
    samples: list[dict[str, Any]] = []  # one per cycle line: parsed fields + /proc readings
    deadline = time.monotonic() + opts.cycles * opts.every_s * 4 + 60
    pos = 0
    profile_file = None
    beside: subprocess.Popen[str] | None = None
    try:
        # the floor beside it: its rounds in the gaps between the poller's cycles, so that the two are
        # measured on the machine as it was at the same time (bench/README.md, "What it does", 3.)
        if opts.floor_beside:
            beside = subprocess.Popen([sys.executable, "-m", "bench.floor", "--paced-s", str(opts.every_s),
                                       "--rounds", str(opts.cycles + 3)], cwd=ROOT, env=project_env(env),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while len(samples) < opts.cycles:
            if proc.poll() is not None:
                raise RuntimeError(f"poller exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            if beside is not None and beside.poll() not in (None, 0):
                raise RuntimeError(f"bench.floor --paced-s failed: {beside.communicate()[1][-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(samples)} cycles in time:\n{log_path.read_text()[-3000:]}")
            with open(log_path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
            cut = chunk.rfind(b"\n") + 1
            pos += cut
            for raw in chunk[:cut].decode(errors="replace").splitlines():
                fields = parse_cycle(raw)
                if fields is not None:
                    rss, hwm = proc_mem_kb(proc.pid)
                    samples.append({"t": time.monotonic(), "wall": time.time(), "cpu_s": proc_cpu_s(proc.pid),
                                    "cpu_main_s": proc_cpu_s(proc.pid, children=False), "rss_kb": rss,
                                    "hwm_kb": hwm, **fields})
                    if len(samples) % 10 == 0 or len(samples) <= 3:
                        say(f"[{label}] cycle {len(samples)}: {raw.split('cycle: ', 1)[1]}")
            time.sleep(0.02)
        floor_beside = None
        if beside is not None:
            out, err = beside.communicate(timeout=opts.every_s * 6 + 60)
            if beside.returncode != 0:
                raise RuntimeError(f"bench.floor --paced-s failed: {err[-3000:]}")
            floor_beside = json.loads(out.strip().splitlines()[-1])
        hwm_kb = proc_mem_kb(proc.pid)[1]
        tree_kb = sum(proc_mem_kb(c)[0] for c in [proc.pid, *proc_children(proc.pid)])
        if opts.profile_s > 0:
            profile_file = work / f"profile-{label}.txt"
            say(f"[{label}] profiling with py-spy for {opts.profile_s:g} s")
            py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
            if py_spy is None:
                raise SystemExit("py-spy is not installed (pip install py-spy)")
            subprocess.run([py_spy, "record", "--pid", str(proc.pid), "--duration", f"{int(opts.profile_s)}",
                            "--rate", "250", "--nonblocking", "--subprocesses", "--format", "raw",
                            "-o", str(profile_file)],
                           check=True, capture_output=True, timeout=opts.profile_s + 60)
    finally:
        if beside is not None and beside.poll() is None:  # the run failed before the floor was done
            beside.kill()
            beside.communicate()
        rc = stop_process(proc, timeout=60)
    text = log_path.read_text(errors="replace")
    all_cycles = [c for c in map(parse_cycle, text.splitlines()) if c is not None]
    # a tick skipped whole (older poller), or host:ports sitting a tick out because still busy (newer poller)
    skipped_all = text.count("skipped: the cycle started") + sum(c["busy_endpoints_skipped"] > 0 for c in all_cycles)
    logged = sum(int(c["readings"]) for c in all_cycles)
    not_written = sum(int(c["not_written"]) for c in all_cycles)
    stored = vm.settled_samples(stored_before + logged) - stored_before

    w = samples[opts.warmup:] if len(samples) > opts.warmup + 1 else samples
    first, last = (samples[opts.warmup - 1] if opts.warmup and len(w) < len(samples) else w[0]), w[-1]
    window = [s for s in w if s is not first]
    readings = sum(s["readings"] for s in window) or 1
    since = sorted(s["since_tick"] for s in window)
    result: dict[str, Any] = {
        "label": label,
        "exit_code": rc,
        "cycles": len(all_cycles),
        "cycles_measured": len(window),
        "cycle_s": statistics.median(since),
        "cycle_p95_s": since[min(len(since) - 1, int(0.95 * len(since)))],
        "cycle_max_s": since[-1],
        "duration_s": statistics.median(s["duration"] for s in window),
        "requests_per_cycle": statistics.median(s["requests"] for s in window),
        "readings_logged": logged,
        "readings": stored,
        "not_written": not_written,
        "failed_meters": sum(int(c.get("failed", 0)) for c in all_cycles),
        "invalid": sum(int(c.get("invalid", 0)) for c in all_cycles),
        "skipped_ticks": sum(s["busy_endpoints_skipped"] > 0 for s in window),
        "skipped_ticks_all": skipped_all,
        "cpu_us_per_reading": (last["cpu_s"] - first["cpu_s"]) / readings * 1e6,
        "cpu_s_per_cycle": (last["cpu_s"] - first["cpu_s"]) / max(1, len(window)),
        # with worker processes: the main process's own share (schedule, hand-over, outbox, InfluxDB write)
        "cpu_main_us_per_reading": (last["cpu_main_s"] - first["cpu_main_s"]) / readings * 1e6,
        "readings_per_s": readings / max(1e-9, last["t"] - first["t"]),
        "rss_mb": hwm_kb / 1024,
        "rss_tree_mb": tree_kb / 1024,  # the poller's process and its children (worker processes), at the end
        "workers": workers,
        "rss_start_mb": first["rss_kb"] / 1024,
        "rss_end_mb": last["rss_kb"] / 1024,
        "rss_growth_pct": 100.0 * (last["rss_kb"] - first["rss_kb"]) / first["rss_kb"],
        "log": str(log_path),
        **(_beside(floor_beside, first["wall"], last["wall"]) if floor_beside is not None else {}),
        "cpu_cycles_us": [round((b["cpu_s"] - a["cpu_s"]) / max(1, b["readings"]) * 1e6, 3)
                          for a, b in pairwise(w)],
    }
    if profile_file is not None and profile_file.exists():
        result["profile"] = profile.summarise(profile_file)
        result["profile_file"] = str(profile_file)
    say(f"[{label}] {len(all_cycles)} cycles, {logged} readings logged, {stored} stored, exit {rc}")
    return result


# ---------------------------------------------------------------------------


def run(spec: FleetSpec, opts: Options) -> int:
    if opts.cycles < 2:
        raise SystemExit("--cycles must be at least 2")
    opts.warmup = max(0, min(opts.warmup, opts.cycles - 2))
    work = Path(opts.out) if opts.out else Path(tempfile.mkdtemp(prefix="emm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"fleet: {spec.describe()}; framing {', '.join(FRAMER_TITLES[f] for f in opts.framers)}; logs in {work}")
    peer_setup = _install_peers(opts)  # before anything runs: a missing npm fails the run at once
    fleet_proc: subprocess.Popen[str] | None = None
    vm = BenchVictoriaMetrics()
    per_framer: list[dict[str, Any]] = []
    try:
        with postgres_cluster() as pg:
            pg.create_database(DB)
            vm.start()
            env = {**pg.env(DB), **vm.env()}
            stored = 0  # readings in VictoriaMetrics so far (earlier fleets' pollers and naive runs)
            # one fleet at a time, the same size, on fresh ports; energy_meters rows replaced for each
            for framer in opts.framers:
                fleet_proc, ports = _start_fleet(spec, framer)
                pg.psql(DB, input=seed_sql(spec, ports, framer))
                result, stored = _measure(spec, opts, work, env, pg, vm, framer, stored, ports, peer_setup)
                fleet_stats = _stop_fleet(fleet_proc)
                fleet_proc = None
                result["fleet_requests_served"] = fleet_stats.get("requests")
                per_framer.append(result)
    finally:
        if fleet_proc is not None:
            _stop_fleet(fleet_proc)
        vm.close()
    result = _combine(per_framer)
    print(report(spec, opts, result))
    line = json.dumps({k: v for k, v in result.items() if k not in ("profile", "variants")}
                      | {"variants": {k: {kk: vv for kk, vv in v.items() if kk != "profile"}
                                      for k, v in result.get("variants", {}).items()}})
    if opts.json_out:
        Path(opts.json_out).write_text(json.dumps(result, indent=1) + "\n")
    print(line, flush=True)
    fleets = [result, *result.get("variants", {}).values()]
    ok = all(r["readings"] == r["readings_logged"] and not r["not_written"] for r in fleets)
    peer_errors = [f"{name} ({FRAMER_TITLES[r.get('framer', 'socket')]} fleet): {p['error']}"
                   for r in fleets for name, p in r.get("peers", {}).items() if p.get("error")]
    for err in peer_errors:
        say(f"bench: peer {err}")
    return 0 if ok and not peer_errors else 1


def _install_peers(opts: Options) -> dict[str, Any]:
    """Each asked-for peer's installation (versions, where), done before the run; SystemExit if it fails."""
    setup: dict[str, Any] = {}
    if "nodered" in opts.peers:
        from . import nodered

        try:
            setup["nodered"] = nodered.ensure_installed(Path(opts.nodered_dir) if opts.nodered_dir else None)
        except nodered.NodeRedError as e:
            raise SystemExit(f"bench: --peer nodered: {e}") from None
    return setup


def _run_nodered(spec: FleetSpec, opts: Options, work: Path, pg: Any, ports: list[int], versions: dict[str, str],
                 planned_requests: int) -> dict[str, Any]:
    """Node-RED's flow on this fleet, the requests the poller plans for the meters in energy_meters."""
    from poller.store import load_configuration

    from . import nodered
    from .fleet import DEVICE_TYPE

    with pg.connect(DB) as conn:
        config = load_configuration(conn)
    conn.close()
    gateways = nodered.gateways_of(m for m in config.meters if m.device_type.name == DEVICE_TYPE)
    try:
        requests = sum(len(reqs) for _, _, reqs in gateways)
        if requests != planned_requests:
            raise nodered.NodeRedError(f"the flow would send {requests} requests a round, the floor sends "
                                       f"{planned_requests}")
        fleet_index = {port: i for i, port in enumerate(ports)}  # the fleet's gateway g serves its values
        return nodered.run_nodered(
            gateways, cycles=opts.cycles, warmup=opts.warmup, every_s=opts.every_s, work=work, versions=versions,
            expected_sample=lambda g: nodered.fleet_sample(spec, fleet_index[gateways[g][1]]))
    except nodered.NodeRedError as e:
        say(f"[nodered] FAILED: {e}")
        return {"peer": "Node-RED + node-red-contrib-modbus", "error": str(e).split("\n", 1)[0],
                "versions": {k: versions[k] for k in ("node", "node-red", "node-red-contrib-modbus")}}


def peer_ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    """ours / theirs for the figures both have (below 1: ours is faster, leaner)."""
    pairs = {"cycle": ("cycle_s", "round_s"), "cycle_p95": ("cycle_p95_s", "round_p95_s"),
             "cpu_per_reading": ("cpu_us_per_reading", "cpu_us_per_reading"), "rss": ("rss_mb", "rss_mb")}
    return {name: (ours[a] / theirs[b] if ours.get(a) is not None and theirs.get(b) else None)
            for name, (a, b) in pairs.items()}


def _start_fleet(spec: FleetSpec, framer: Framer) -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.fleet", "--gateways", str(spec.gateways), "--units", str(spec.units),
         "--values", str(spec.values), "--latency-ms", str(spec.latency_ms), "--framer", framer],
        cwd=ROOT, env=project_env({}), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready = proc.stdout.readline()
    if not ready:
        raise RuntimeError(f"the fleet ({framer}) exited with {proc.wait()} before listening")
    say(f"fleet: {FRAMER_TITLES[framer]} on {spec.gateways} loopback ports, pid {proc.pid}")
    return proc, list(json.loads(ready)["ports"])


def _combine(per_framer: list[dict[str, Any]]) -> dict[str, Any]:
    """The first fleet's result at the top level (as ever); the others' under `variants`, by label."""
    main = per_framer[0]
    variants: dict[str, Any] = main.pop("variants", {})
    for other in per_framer[1:]:
        others = other.pop("variants", {})
        variants[variant_label(other["framer"], "poller")] = other
        variants.update(others)
    if variants:
        main["variants"] = variants
    return main


def _stop_fleet(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    for line in reversed((out or "").splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    return {}


def _measure(spec: FleetSpec, opts: Options, work: Path, env: dict[str, str], pg: Any,
             vm: BenchVictoriaMetrics, framer: Framer = "socket", stored: int = 0, ports: list[int] | None = None,
             peer_setup: dict[str, Any] | None = None) -> tuple[dict[str, Any], int]:
    """Floor, poller (and patched copy), peers, naive, against the fleet now in energy_meters.

    `stored`: readings already in VictoriaMetrics; returned with this fleet's added.
    `ports`: the fleet's (for the peers); `peer_setup`: the peers to run and their installations.
    """
    # 1. floor: the same planned requests, bare pymodbus, its own process
    say(f"floor: {opts.floor_rounds} rounds of bare pymodbus, {FRAMER_TITLES[framer]}")
    done = subprocess.run([sys.executable, "-m", "bench.floor", "--rounds", str(opts.floor_rounds)],
                          cwd=ROOT, env=project_env(env), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"bench.floor failed: {done.stderr[-3000:]}")
    floor = json.loads(done.stdout.strip().splitlines()[-1])
    say(f"floor: {floor}")
    # the lean client (bench/floor.py --lean): what the fleet allows any client on this machine
    done = subprocess.run([sys.executable, "-m", "bench.floor", "--lean", "--rounds", str(opts.floor_rounds)],
                          cwd=ROOT, env=project_env(env), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"bench.floor --lean failed: {done.stderr[-3000:]}")
    lean = json.loads(done.stdout.strip().splitlines()[-1])
    say(f"lean client: {lean}")

    # network bound: the busiest gateway's planned requests x device latency
    requests_per_gateway = floor["requests_per_round"] / spec.gateways  # every gateway serves the same units
    network_bound = requests_per_gateway * spec.latency_ms / 1000.0
    # the computed network bound assumes a fleet that answers in exactly its latency however many requests
    # come at once; the lean client's round measures what this fleet, on this machine, allows any client
    lower_bound = max(network_bound, floor["cpu_s_per_round"], lean["wall_s"])

    # 2. the poller as in production, then a patched copy when asked
    variants: list[tuple[str, str | None]] = [(variant_label(framer, "poller"), opts.poller_patch)]
    # --workers 0,2: the poller with each POLL_WORKERS, side by side (the first is `poller`)
    workers_of = {variant_label(framer, "poller" if i == 0 else f"workers-{n}"): n for i, n in enumerate(opts.workers)}
    variants += [(label, opts.poller_patch) for label in list(workers_of)[1:]]
    if opts.compare_patch:  # with the first --workers value, as the `poller` run beside it
        variants.append((variant_label(framer, "patched"), opts.compare_patch))
        if opts.workers:
            workers_of[variant_label(framer, "patched")] = opts.workers[0]
    results = []
    for label, patch in variants:
        res = run_poller(label, poller_tree(patch, work), env, spec, opts, work, vm, stored, workers_of.get(label))
        stored += res["readings"]
        res["cycle_vs_bound"] = res["cycle_s"] / lower_bound
        res["cycle_vs_network_bound"] = res["cycle_s"] / network_bound
        res["cpu_vs_floor"] = res["cpu_us_per_reading"] / floor["cpu_us_per_reading"]
        if opts.floor_beside:
            beside = res["floor_beside_cpu_us_per_reading"]
            res["cpu_vs_floor_beside"] = res["cpu_us_per_reading"] / beside if beside > 0 else None
            # a cycle (p95) running past PACED_AT of the interval, or a round into the next slot, may have
            # shared the machine with it
            res["floor_beside_overlap"] = (res["cycle_p95_s"] > PACED_AT * opts.every_s
                                           or res["floor_beside_late_rounds"] > 0)
        res["cycle_vs_lean"] = res["cycle_s"] / lean["wall_s"]
        res["patch"] = patch
        res["framer"] = framer
        results.append(res)

    # 3. peers: other pollers on the same fleet, after ours (the same fleet process)
    peers: dict[str, Any] = {}
    for name, setup in (peer_setup or {}).items():
        if name != "nodered":
            continue
        if framer != "socket":
            say(f"[nodered] the Node-RED peer runs on the Modbus TCP fleet only; not on {FRAMER_TITLES[framer]}")
            continue
        peer = _run_nodered(spec, opts, work, pg, ports or [], setup, floor["requests_per_round"])
        if "error" not in peer:
            peer["ours_vs_theirs"] = peer_ratios(results[0], peer)
        peers[name] = peer

    # 4. the original design over a subset, after the stored counts are checked
    naive: dict[str, Any] = {}
    if opts.naive_gateways > 0:
        import psycopg2

        from poller.sink import InfluxSink
        from poller.store import load_configuration

        with pg.connect(DB) as conn:
            config = load_configuration(conn)
        conn.close()
        gws = sorted({(m.host, m.port) for m in config.meters})[: opts.naive_gateways]
        subset = [m for m in config.meters if (m.host, m.port) in gws]
        say(f"naive: sequential, one request per register, {len(subset)} meters of {len(config.meters)}")
        sink = InfluxSink(vm.url, "test-token", "emm", "energy")
        try:
            naive = run_naive(subset, sink)
        finally:
            sink.close()
        naive["naive_s"] = naive["wall_s"] * len(config.meters) / len(subset)
        stored = vm.settled_samples(stored + int(naive["readings"]))  # the next fleet's runs count from here
        del psycopg2

    main = results[0]
    out: dict[str, Any] = {
        "fleet": spec.describe(),
        "framer": framer,
        "transport": TRANSPORTS[framer],
        "gateways": spec.gateways, "units": spec.units, "values": spec.values, "latency_ms": spec.latency_ms,
        "readings_per_cycle": spec.readings_per_cycle,
        **{k: v for k, v in main.items() if k != "label"},
        "lower_bound_s": lower_bound,
        "network_bound_s": network_bound,
        "floor_wall_s": floor["wall_s"],
        "floor_cpu_s": floor["cpu_s_per_round"],
        "floor_cpu_us_per_reading": floor["cpu_us_per_reading"],
        "planned_requests": floor["requests_per_round"],
        "lean_wall_s": lean["wall_s"],
        "lean_cpu_us_per_reading": lean["cpu_us_per_reading"],
        "naive_s": naive.get("naive_s"),
        "naive_measured_s": naive.get("wall_s"),
        "naive_meters": naive.get("meters"),
        "naive_registers": naive.get("registers"),
        "naive_vs_cycle": (naive["naive_s"] / main["cycle_s"]) if naive else None,
    }
    if peers:
        out["peers"] = peers
    if len(results) > 1:
        out["variants"] = {r["label"]: {k: v for k, v in r.items() if k != "label"} for r in results[1:]}
    return out, stored


def report(spec: FleetSpec, opts: Options, r: dict[str, Any]) -> str:
    """The tables: one per fleet (Modbus TCP, RTU over TCP), each with its own bounds, then the comparison."""
    variants = r.get("variants", {})
    fleets = [r] + [v for v in variants.values() if "network_bound_s" in v]  # a fleet's own measurement
    parts = [f"\nFleet: {spec.describe()}; {r['cycles']} cycles, every {opts.every_s} s, first {opts.warmup} "
             "left out of timings."]
    for f in fleets:
        patched = [(f"{k} ({v['patch'] or 'POLL_WORKERS=' + str(v.get('workers'))})", v) for k, v in variants.items()
                   if "network_bound_s" not in v and v.get("framer", "socket") == f.get("framer", "socket")]
        main_col = "poller/" if f.get("workers") is None else f"poller/ (POLL_WORKERS={f['workers']})"
        parts.append(_fleet_report(spec, f, [(main_col, f), *patched], title=len(fleets) > 1))
    if len(fleets) > 1:
        parts.append("\nSide by side (same fleet size, same network bound, one run):")
        for f in fleets:
            parts.append(f"- {FRAMER_TITLES[f['framer']]}: cycle {f['cycle_s']:.3f} s = "
                         f"{f['cycle_vs_network_bound']:.2f} x network bound {f['network_bound_s']:.3f} s "
                         f"({f['cycle_vs_bound']:.2f} x lower bound {f['lower_bound_s']:.3f} s); "
                         f"CPU {f['cpu_us_per_reading']:.2f} us per reading = {f['cpu_vs_floor']:.2f} x "
                         f"its floor {f['floor_cpu_us_per_reading']:.2f} us")
    return "\n".join(parts)


def _fleet_report(spec: FleetSpec, r: dict[str, Any], cols: list[tuple[str, dict[str, Any]]],
                  title: bool) -> str:
    head = "| measure | " + " | ".join(c for c, _ in cols) + " | bound / floor | target |"
    rows = [head, "|---|" + "---:|" * len(cols) + "---:|---|"]

    def row(name: str, key: str, fmt: str, bound: str = "", target: str = "") -> None:
        vals = [(fmt.format(v[key]) if v.get(key) is not None else "-") for _, v in cols]
        rows.append(f"| {name} | " + " | ".join(vals) + f" | {bound} | {target} |")

    row("cycle time, tick to last reading stored (median)", "cycle_s", "{:.3f} s",
        f"{r['lower_bound_s']:.3f} s", "<= 1.25 x bound")
    row("cycle time p95", "cycle_p95_s", "{:.3f} s")
    row("cycle time max", "cycle_max_s", "{:.3f} s")
    row("cycle / lower bound", "cycle_vs_bound", "{:.2f} x", "", "<= 1.25")
    row("cycle / network bound", "cycle_vs_network_bound", "{:.2f} x", f"{r['network_bound_s']:.3f} s")
    row("cycle / the lean client's round", "cycle_vs_lean", "{:.2f} x", f"{r['lean_wall_s']:.3f} s")
    row("CPU per reading (poller process)", "cpu_us_per_reading", "{:.2f} us",
        f"{r['floor_cpu_us_per_reading']:.2f} us", "<= 1.5 x floor")
    row("CPU / bare-pymodbus floor", "cpu_vs_floor", "{:.2f} x", "", "<= 1.5")
    if any("floor_beside_cpu_us_per_reading" in v for _, v in cols):  # --floor-beside
        overlap = any(v.get("floor_beside_overlap") for _, v in cols)
        row("bare-pymodbus floor beside it, between its cycles" + (" (MAY OVERLAP: cycles past "
            f"{PACED_AT:g} of the interval, or its rounds into the next)" if overlap else ""),
            "floor_beside_cpu_us_per_reading", "{:.2f} us")
        row("CPU / the floor beside it", "cpu_vs_floor_beside", "{:.2f} x")
    row("CPU per reading, main process alone", "cpu_main_us_per_reading", "{:.2f} us")
    row("CPU per cycle", "cpu_s_per_cycle", "{:.3f} s", f"{r['floor_cpu_s']:.3f} s")
    row("readings per second sustained", "readings_per_s", "{:,.0f}", "", ">= 25,000")
    row("ticks skipped", "skipped_ticks", "{}", "", "0")
    row("readings stored (VictoriaMetrics) / logged", "readings", "{}")
    row("readings logged", "readings_logged", "{}")
    row("peak RSS (VmHWM)", "rss_mb", "{:.1f} MB")
    row("RSS with worker processes (end)", "rss_tree_mb", "{:.1f} MB")
    row("RSS growth after warm-up", "rss_growth_pct", "{:+.2f} %", "", "< 5 %")
    framer = r.get("framer", "socket")
    naive = ""
    if r.get("naive_s"):
        naive = (f"\nOriginal design (sequential, one request per register) over {r['naive_meters']} meters "
                 f"({r['naive_registers']} requests): {r['naive_measured_s']:.2f} s, i.e. "
                 f"{r['naive_s']:.1f} s for the whole fleet = {r['naive_vs_cycle']:.0f} x the poller's cycle "
                 f"({r['cycle_s']:.3f} s).")
    pymodbus = "bare pymodbus" if framer == "socket" else "bare pymodbus, RTU framer"
    return "\n".join([
        *([f"\n## {FRAMER_TITLES[framer]} (energy_meters.transport '{r.get('transport', 'tcp')}')"] if title else []),
        f"Lower bound {r['lower_bound_s']:.3f} s = max(network bound {r['network_bound_s']:.3f} s "
        f"[{r['planned_requests'] // spec.gateways} requests on the busiest gateway x {spec.latency_ms:g} ms], "
        f"CPU floor {r['floor_cpu_s']:.3f} s [{pymodbus}, {r['planned_requests']} requests; its wall time "
        f"{r['floor_wall_s']:.3f} s], the lean client's round {r['lean_wall_s']:.3f} s [the same requests on a "
        f"bare protocol, bench/floor.py --lean, at {r['lean_cpu_us_per_reading']:.2f} us of CPU per reading: "
        f"what this fleet allows any client on this machine]).",
        "", *rows, naive,
        *[_peer_report(r, name, p) for name, p in r.get("peers", {}).items()],
        *[("\n" + profile.render(v["profile"], f"profile: {c}")) for c, v in cols if "profile" in v],
    ])


def _peer_report(r: dict[str, Any], name: str, p: dict[str, Any]) -> str:
    """Our poller beside a peer on the same fleet: cycle (tick -> last reading) against its round time."""
    if p.get("error"):
        return f"\nPeer {name}: FAILED: {p['error']}"
    v = p["versions"]
    head = (f"\nPeer {name}: Node-RED {v['node-red']} + node-red-contrib-modbus {v['node-red-contrib-modbus']} "
            f"on Node.js {v['node']} ({p['flow']}; nothing stored), {p['rounds']} rounds, "
            f"{p['rounds_measured']} measured.\n")
    rows = ["| measure | poller/ | " + name + " | ours / theirs |", "|---|---:|---:|---:|"]
    ratio = p.get("ours_vs_theirs", {})

    def row(label: str, ours: str, theirs: str, fmt: str, key: str | None = None) -> None:
        a, b = r.get(ours), p.get(theirs)
        x = ratio.get(key) if key else None
        rows.append(f"| {label} | {fmt.format(a) if a is not None else '-'} | "
                    f"{fmt.format(b) if b is not None else '-'} | {f'{x:.2f} x' if x is not None else ''} |")

    row("cycle, tick to last reading stored / decoded (median)", "cycle_s", "round_s", "{:.3f} s", "cycle")
    row("cycle p95", "cycle_p95_s", "round_p95_s", "{:.3f} s", "cycle_p95")
    row("cycle max", "cycle_max_s", "round_max_s", "{:.3f} s")
    row("CPU per reading (its process)", "cpu_us_per_reading", "cpu_us_per_reading", "{:.2f} us", "cpu_per_reading")
    row("CPU per cycle", "cpu_s_per_cycle", "cpu_s_per_round", "{:.3f} s")
    row("readings per second sustained", "readings_per_s", "readings_per_s", "{:,.0f}")
    row("readings stored / decoded, all cycles", "readings", "readings", "{}")
    row("peak RSS (VmHWM)", "rss_mb", "rss_mb", "{:.1f} MB", "rss")
    row("RSS growth after warm-up", "rss_growth_pct", "rss_growth_pct", "{:+.2f} %")
    return head + "\n".join(rows)
