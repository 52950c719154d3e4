"""A peer on the bench's fleet: Node-RED with node-red-contrib-modbus, the idiomatic flow.

    python -m bench --peer nodered

Installs Node-RED and node-red-contrib-modbus (versions pinned below) from npm into a
cache directory (`--nodered-dir`, else $EMM_BENCH_NODERED_DIR, else
~/.cache/emm-bench/nodered; reused while it holds the pinned versions), then runs, on
the same fleet as the poller, the flow a Node-RED user would build:

    inject (every --every-s s) -> round (function, one output per gateway)
        -> modbus-flex-getter (one per gateway, on its own modbus-client: TCP, queueing on,
           unit ids in parallel, the package's defaults) -> decode (function: float32 ABCD,
           Buffer.readFloatBE) -> count (function: replies per round; at the round's last
           reply, one JSON line on stdout)
    catch (every node of the flow) -> error (function: one JSON line on stdout)

Each round sends, per unit of each gateway, the requests `poller.plan.plan_device` gives
the poller for that meter (for the bench's map: fc 4, address 0, 2 x values registers,
one request per unit). Round time = the tick (the round node, just before its messages go
to the flex-getters) -> the round's last reply decoded, the counterpart of the poller's
`since_tick` (cron tick -> last reading handed over), both on a 1 s schedule. Node-RED
runs headless (no editor, no admin API, no HTTP server; bench/nodered/settings.js) from a
throwaway user directory; the bench reads its stdout, and at each round line the node
process's utime+stime and VmRSS/VmHWM from /proc, as it does for the poller.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import re
import shutil
import signal
import statistics
import struct
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from poller.model import DeviceType, Meter
from poller.plan import plan_device
from tests.servers import free_port

from .fleet import DEVICE_TYPE, FleetSpec, register_map
from .proc import proc_cpu_s, proc_mem_kb, say

# The newest releases that install from the npm registry and run on Node 20 (2026-11-27):
# node-red 5.x needs Node >= 22.9; node-red-contrib-modbus 5.45.2 and later fetch a
# dependency (@openp4nr/modbus-serial) from dl.cloudsmith.io, not from the npm registry
# (5.60.2 also needs Node >= 22), so 5.23.3 is the newest that installs from npm alone.
NODE_RED_VERSION = "4.1.15"
MODBUS_VERSION = "5.23.3"
PACKAGES = {"node-red": NODE_RED_VERSION, "node-red-contrib-modbus": MODBUS_VERSION}
MIN_NODE = (18, 5)  # node-red 4.1's engines
CACHE_ENV = "EMM_BENCH_NODERED_DIR"
TEMPLATES = Path(__file__).with_name("nodered")
STAMP = "emm-bench-installed.json"
LINE_PREFIX = "EMMBENCH "

Request = tuple[int, int, int, int]  # unit id, function code, address, quantity (registers)
Gateway = tuple[str, int, list[Request]]  # host, port, its requests in the poller's order


class NodeRedError(RuntimeError):
    """The peer could not be installed, started or run; the message says why and what to do."""


# ---------------------------------------------------------------------------
# install


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "emm-bench" / "nodered"


def node_version(node: str) -> str:
    try:
        done = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NodeRedError(f"`{node} --version` failed: {e}") from e
    version = done.stdout.strip()
    m = re.fullmatch(r"v(\d+)\.(\d+)\.\d+.*", version)
    if done.returncode != 0 or m is None:
        raise NodeRedError(f"`{node} --version` gave {version!r} {done.stderr.strip()!r}")
    if (int(m[1]), int(m[2])) < MIN_NODE:
        raise NodeRedError(f"Node.js {version} is too old for Node-RED {NODE_RED_VERSION} "
                           f"(needs >= {'.'.join(map(str, MIN_NODE))})")
    return version


def installed_versions(cache: Path) -> dict[str, str | None]:
    """The version of each pinned package under `cache`/node_modules (None: not there)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = json.loads((cache / "node_modules" / name / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            out[name] = None
    return out


@contextlib.contextmanager
def _locked(path: Path, timeout_s: float) -> Iterator[None]:
    """An exclusive lock on `path` (two bench runs do not install into one cache at once)."""
    with open(path, "a") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise NodeRedError(f"{path} is locked by another install for over {timeout_s:g} s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_installed(cache: Path | None = None, timeout_s: float = 900.0) -> dict[str, str]:
    """Node-RED and node-red-contrib-modbus at the pinned versions in `cache`; npm install if not.

    Returns the versions: node, node-red, node-red-contrib-modbus, and `dir`.
    """
    cache = (cache or default_cache_dir()).expanduser().resolve()
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise NodeRedError("the Node-RED peer needs `node` and `npm` on PATH (Node.js >= 18.5; on Debian: "
                           "apt-get install nodejs npm)")
    versions = {"node": node_version(node), **PACKAGES, "dir": str(cache)}
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NodeRedError(f"cannot create the Node-RED cache {cache}: {e} (set --nodered-dir or ${CACHE_ENV})") from e
    with _locked(cache / ".lock", timeout_s):
        stamp = cache / STAMP
        if installed_versions(cache) == PACKAGES and stamp.exists():
            say(f"nodered: Node-RED {NODE_RED_VERSION}, node-red-contrib-modbus {MODBUS_VERSION} in {cache}")
            return versions
        stamp.unlink(missing_ok=True)
        (cache / "package.json").write_text(json.dumps(
            {"name": "emm-bench-nodered", "private": True, "description": "bench/nodered.py's install",
             "dependencies": PACKAGES}, indent=1) + "\n")
        say(f"nodered: npm install node-red@{NODE_RED_VERSION} node-red-contrib-modbus@{MODBUS_VERSION} "
            f"into {cache}")
        # --ignore-scripts: nothing to build (serial port bindings are not used; TCP only)
        cmd = [npm, "install", "--no-audit", "--no-fund", "--omit=dev", "--ignore-scripts", "--no-update-notifier",
               "--loglevel=error"]
        started = time.monotonic()
        try:
            done = subprocess.run(cmd, cwd=cache, capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise NodeRedError(f"npm install in {cache} took over {timeout_s:g} s; gave up") from e
        if done.returncode != 0:
            lines = [ln for ln in (done.stdout + done.stderr).strip().splitlines() if not re.search(r"^\S*\s+at ", ln)
                     and not ln.startswith("npm error     at ")]
            tail = "\n".join(lines[:12])
            raise NodeRedError(f"npm install in {cache} failed (exit {done.returncode}):\n{tail}")
        got = installed_versions(cache)
        if got != PACKAGES:
            raise NodeRedError(f"npm install in {cache} left {got}, not {PACKAGES}")
        stamp.write_text(json.dumps(versions) + "\n")
        say(f"nodered: installed in {time.monotonic() - started:.0f} s")
    return versions


# ---------------------------------------------------------------------------
# the requests and the flow


def gateways_of(meters: Iterable[Meter]) -> list[Gateway]:
    """The enabled meters' planned requests by host:port, in the configuration's order."""
    by: dict[tuple[str, int], list[Request]] = {}
    for meter in meters:
        if meter.enabled:
            reqs = by.setdefault((meter.host, meter.port), [])
            reqs.extend((meter.slave_address, int(b.function_code), b.address, b.count)
                        for b in plan_device(meter.device_type))
    return [(host, port, reqs) for (host, port), reqs in by.items()]


def spec_gateways(spec: FleetSpec, ports: Sequence[int], host: str = "127.0.0.1") -> list[Gateway]:
    """The fleet's requests from its spec alone (bench.fleet's map, the device type's defaults)."""
    blocks = plan_device(DeviceType(DEVICE_TYPE, register_map(spec.values)))
    return [(host, port, [(unit, int(b.function_code), b.address, b.count)
                          for unit in range(1, spec.units + 1) for b in blocks]) for port in ports]


def _template(name: str, **subs: Any) -> str:
    text = (TEMPLATES / name).read_text()
    for key, value in subs.items():
        text = text.replace(f"__{key}__", json.dumps(value))
    if re.search(r"__[A-Z_]+__", text):
        raise ValueError(f"{name}: a placeholder is left: {re.findall(r'__[A-Z_]+__', text)}")
    return text


def _function(node_id: str, name: str, func: str, outputs: int, wires: list[list[str]], x: int, y: int,
              initialize: str = "") -> dict[str, Any]:
    return {"id": node_id, "type": "function", "z": TAB, "name": name, "func": func, "outputs": outputs,
            "timeout": 0, "noerr": 0, "initialize": initialize, "finalize": "", "libs": [],
            "x": x, "y": y, "wires": wires}


TAB = "emm.bench.tab"
PLAN_LINE = re.compile(r"^const PLAN = (.*);$", re.MULTILINE)  # in the round node's On Start code


def round_plan(flow: list[dict[str, Any]]) -> list[list[Request]]:
    """The requests the round node sends each round, by output (gateway), from a built flow."""
    node = next(n for n in flow if n.get("name") == "round")
    m = PLAN_LINE.search(node["initialize"])
    if m is None:
        raise ValueError("the round node has no PLAN")
    return [[(int(q[0]), int(q[1]), int(q[2]), int(q[3])) for q in reqs] for reqs in json.loads(m[1])]


def build_flow(gateways: Sequence[Gateway], every_s: float = 1.0, start_delay_s: float = 2.0) -> list[dict[str, Any]]:
    """The flow (Node-RED's flows.json): one modbus-client and one modbus-flex-getter per gateway."""
    if not gateways:
        raise ValueError("no gateways")
    replies = sum(len(reqs) for _, _, reqs in gateways)
    clients = [f"emm.client.{i}" for i in range(len(gateways))]
    getters = [f"emm.getter.{i}" for i in range(len(gateways))]
    plan = [[list(q) for q in reqs] for _, _, reqs in gateways]
    flow: list[dict[str, Any]] = [
        {"id": TAB, "type": "tab", "label": "emm bench", "disabled": False,
         "info": "bench/nodered.py: the fleet's requests every round, decoded, counted, nothing stored"},
        {"id": "emm.tick", "type": "inject", "z": TAB, "name": "tick",
         "props": [{"p": "payload"}], "repeat": f"{every_s:g}", "crontab": "", "once": True,
         "onceDelay": f"{start_delay_s:g}", "topic": "", "payload": "", "payloadType": "date",
         "x": 100, "y": 100, "wires": [["emm.round"]]},
        _function("emm.round", "round", _template("round.js"), len(gateways), [[g] for g in getters], 260, 100,
                  initialize=f"const PLAN = {json.dumps(plan, separators=(',', ':'))};\n"
                             "context.set(\"plan\", PLAN);\n"
                             "flow.set(\"bench\", { round: 0, open: {} });\n"),
        _function("emm.decode", "decode", _template("decode.js"), 1, [["emm.count"]], 700, 100),
        _function("emm.count", "count", _template("count.js", REPLIES_PER_ROUND=replies), 1, [[]], 860, 100),
        {"id": "emm.catch", "type": "catch", "z": TAB, "name": "errors", "scope": None, "uncaught": False,
         "x": 100, "y": 40, "wires": [["emm.error"]]},
        _function("emm.error", "error", _template("error.js"), 1, [[]], 260, 40),
    ]
    for i, (host, port, _reqs) in enumerate(gateways):
        flow.append({
            "id": getters[i], "type": "modbus-flex-getter", "z": TAB, "name": f"gateway {i}",
            "showStatusActivities": False, "showErrors": True, "showWarnings": True, "logIOActivities": False,
            "server": clients[i], "useIOFile": False, "ioFile": "", "useIOForPayload": False,
            "emptyMsgOnFail": False, "keepMsgProperties": True, "delayOnStart": False, "startDelayTime": "",
            "x": 480, "y": 160 + 40 * i, "wires": [["emm.decode"], []]})
        # the package's defaults for TCP (modbus-client.html): queueing on, unit ids in parallel,
        # 1 ms queue delay, 1 s timeout, reconnect after 2 s
        flow.append({
            "id": clients[i], "type": "modbus-client", "name": f"gateway {i} {host}:{port}",
            "clienttype": "tcp", "bufferCommands": True, "stateLogEnabled": False, "queueLogEnabled": False,
            "failureLogEnabled": True, "tcpHost": host, "tcpPort": str(port), "tcpType": "DEFAULT",
            "serialPort": "/dev/ttyUSB", "serialType": "RTU-BUFFERD", "serialBaudrate": "9600",
            "serialDatabits": "8", "serialStopbits": "1", "serialParity": "none", "serialConnectionDelay": "100",
            "serialAsciiResponseStartDelimiter": "0x3A", "unit_id": "1", "commandDelay": "1",
            "clientTimeout": "1000", "reconnectOnTimeout": True, "reconnectTimeout": "2000",
            "parallelUnitIdsAllowed": True})
    return flow


# ---------------------------------------------------------------------------
# the run


def _read_stdout(proc: subprocess.Popen[bytes], events: queue.Queue[dict[str, Any]], log: IO[bytes],
                 tail: deque[str]) -> None:
    """Node-RED's stdout: our flow's JSON lines (with /proc readings at round lines), its log to `log`."""
    assert proc.stdout is not None
    for raw in proc.stdout:
        t = time.monotonic()
        log.write(raw)
        line = raw.decode(errors="replace").rstrip("\n")
        tail.append(line)
        if line.startswith(LINE_PREFIX):
            try:
                ev = dict(json.loads(line[len(LINE_PREFIX):]))
            except ValueError:
                ev = {"ev": "error", "source": "bench", "message": f"unreadable line {line!r}"}
            if ev.get("ev") == "round":
                with contextlib.suppress(OSError):
                    ev["cpu_s"] = proc_cpu_s(proc.pid)
                    ev["rss_kb"], ev["hwm_kb"] = proc_mem_kb(proc.pid)
            ev["t"] = t
            events.put(ev)
        elif "Started flows" in line:
            events.put({"ev": "started", "t": t})
        elif "[error]" in line:
            events.put({"ev": "error", "source": "node-red", "message": line, "t": t})
    log.flush()
    events.put({"ev": "eof", "t": time.monotonic()})


def fleet_sample(spec: FleetSpec, gateway: int, seed: int = 1) -> list[float]:
    """The float32 values one unit of `gateway` serves (bench.fleet's frozen values, same seed)."""
    from virtual_server.device import make_device

    regs = register_map(spec.values)
    words = make_device(f"{DEVICE_TYPE}-{gateway}", regs, seed).words()
    fc = int(regs[0].function_code)
    return [struct.unpack(">f", struct.pack(">HH", words[(fc, r.address)], words[(fc, r.address + 1)]))[0]
            for r in regs]


def run_nodered(gateways: Sequence[Gateway], *, cycles: int, warmup: int, every_s: float, work: Path,
                versions: dict[str, str], cache: Path | None = None,
                expected_sample: Callable[[int], list[float]] | None = None,
                start_timeout_s: float = 60.0, start_delay_s: float = 2.0) -> dict[str, Any]:
    """Run the flow for `cycles` rounds on the fleet; the figures over the rounds after `warmup`.

    Raises NodeRedError (Node-RED stopped first) when it does not start, a node reports an
    error, a round's replies do not all arrive, or a round's readings are not all there.
    """
    cache = Path(versions["dir"]) if cache is None else cache
    red = cache / "node_modules" / "node-red" / "red.js"
    node = shutil.which("node")
    if node is None or not red.exists():
        raise NodeRedError(f"Node-RED is not installed in {cache} (no {red})")
    user = work / "nodered-user"
    shutil.rmtree(user, ignore_errors=True)
    user.mkdir(parents=True)
    flow = build_flow(gateways, every_s, start_delay_s)
    (user / "flows.json").write_text(json.dumps(flow))
    (user / "settings.js").write_text(_template("settings.js", FLOW_FILE="flows.json"))
    replies_per_round = sum(len(reqs) for _, _, reqs in gateways)
    readings_per_round = sum(q[3] // 2 for _, _, reqs in gateways for q in reqs)  # float32: 2 registers each
    log_path = work / "nodered.log"
    # headless (settings.js): no HTTP server; a free --port all the same, never another's 1880
    cmd = [node, str(red), "--userDir", str(user), "--settings", str(user / "settings.js"),
           "--port", str(free_port()), "--title", "emm-bench-nodered"]
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_OPTIONS", "NODE_PATH")}
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    tail: deque[str] = deque(maxlen=40)
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, cwd=user, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        reader = threading.Thread(target=_read_stdout, args=(proc, events, logf, tail), daemon=True)
        reader.start()
        say(f"[nodered] pid {proc.pid}: Node-RED {versions['node-red']}, node-red-contrib-modbus "
            f"{versions['node-red-contrib-modbus']} on {versions['node']}, {len(gateways)} gateways, "
            f"{replies_per_round} requests a round, every {every_s:g} s, {cycles} rounds")
        rounds: dict[int, dict[str, Any]] = {}
        order: list[dict[str, Any]] = []  # round events as they came
        sample_checked = expected_sample is None
        samples_ok = 0
        hwm_kb = 0
        try:
            now = time.monotonic()
            start_deadline = now + start_timeout_s
            deadline = now + start_timeout_s + start_delay_s + cycles * every_s * 4 + 60
            stall_s = max(30.0, 10 * every_s)
            started_at: float | None = None
            last_progress = now
            while len(rounds) < cycles or not sample_checked:
                try:
                    ev: dict[str, Any] | None = events.get(timeout=0.5)
                except queue.Empty:
                    ev = None
                now = time.monotonic()
                if (ev is not None and ev["ev"] == "eof") or proc.poll() is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(10)
                    raise NodeRedError(f"Node-RED exited with {proc.returncode}" + _tail(tail))
                if ev is None:
                    pass
                elif ev["ev"] == "started":
                    started_at = last_progress = now
                    say(f"[nodered] flows started; the first round in {start_delay_s:g} s")
                elif ev["ev"] == "error":
                    raise NodeRedError(f"the flow reported an error ({ev.get('source')}"
                                       f"{', round ' + str(ev['round']) if ev.get('round') else ''}): "
                                       f"{ev.get('message')}" + _tail(tail))
                elif ev["ev"] == "sample" and expected_sample is not None:
                    # the first reply of each gateway in round 1, decoded by the flow, against the fleet's values
                    start = int(ev["address"]) // 2
                    got, want = ev["values"], expected_sample(int(ev["gateway"]))[start:start + len(ev["values"])]
                    if got != want:
                        raise NodeRedError(f"gateway {ev['gateway']} unit {ev['unitid']} decoded as {got[:3]}..., "
                                           f"the fleet serves {want[:3]}...")
                    samples_ok += 1
                    sample_checked = samples_ok == len(gateways)
                elif ev["ev"] == "round":
                    last_progress = now
                    r = int(ev["round"])
                    if r <= cycles:
                        rounds[r] = ev
                        order.append(ev)
                        if len(rounds) % 10 == 0 or len(rounds) <= 3:
                            say(f"[nodered] round {r}: {ev['ms']:.1f} ms, {ev['readings']} readings")
                # never a hang: Node-RED must start, and then complete a round every so often
                if started_at is None and now > start_deadline:
                    raise NodeRedError(f"Node-RED did not start its flows within {start_timeout_s:g} s" + _tail(tail))
                if started_at is not None and now - last_progress > stall_s + (0 if rounds else start_delay_s):
                    missing = [r for r in range(1, cycles + 1) if r not in rounds]
                    what = f"round {missing[0]}" if missing else "round 1's samples"
                    raise NodeRedError(f"{what}: not every reply arrived within {stall_s:g} s "
                                       f"({len(rounds)} rounds complete)" + _tail(tail))
                if now > deadline:
                    raise NodeRedError(f"only {len(rounds)} of {cycles} rounds within the time limit" + _tail(tail))
            hwm_kb = proc_mem_kb(proc.pid)[1]
        finally:
            rc = _stop(proc)
            reader.join(10)
    bad_rounds = [(r, e["readings"]) for r, e in sorted(rounds.items()) if e["readings"] != readings_per_round]
    if bad_rounds:
        raise NodeRedError(f"rounds with readings missing (want {readings_per_round} each): {bad_rounds[:10]}")
    bad_values = sum(int(e["bad"]) for e in order)
    if bad_values:
        raise NodeRedError(f"{bad_values} decoded values were not finite numbers")

    w = order[warmup:] if len(order) > warmup + 1 else order
    first = order[warmup - 1] if warmup and len(w) < len(order) else w[0]
    last = w[-1]
    window = [e for e in w if e is not first]
    readings = sum(int(e["readings"]) for e in window) or 1
    times = sorted(float(e["ms"]) / 1000 for e in window)
    cpu = last.get("cpu_s", 0.0) - first.get("cpu_s", 0.0)
    result: dict[str, Any] = {
        "peer": "Node-RED + node-red-contrib-modbus",
        "versions": {k: versions[k] for k in ("node", "node-red", "node-red-contrib-modbus")},
        "flow": (f"{len(gateways)} modbus-client (tcp, queueing, unit ids in parallel) + flex-getter; "
                 f"inject every {every_s:g} s; decode + count in function nodes"),
        "exit_code": rc,
        "rounds": len(rounds),
        "rounds_measured": len(window),
        "requests_per_round": replies_per_round,
        "readings_per_round": readings_per_round,
        "round_s": statistics.median(times),
        "round_p95_s": times[min(len(times) - 1, int(0.95 * len(times)))],
        "round_max_s": times[-1],
        "overlapped_rounds": sum(int(e["overlapped"]) > 0 for e in window),
        "decoding_checked_gateways": samples_ok,  # round 1's first reply of each, against the fleet's values
        "readings": sum(int(e["readings"]) for e in order),
        "readings_expected": cycles * readings_per_round,
        "cpu_us_per_reading": cpu / readings * 1e6,
        "cpu_s_per_round": cpu / max(1, len(window)),
        "readings_per_s": readings / max(1e-9, last["t"] - first["t"]),
        "rss_mb": hwm_kb / 1024,
        "rss_start_mb": first.get("rss_kb", 0) / 1024,
        "rss_end_mb": last.get("rss_kb", 0) / 1024,
        "rss_growth_pct": (100.0 * (last["rss_kb"] - first["rss_kb"]) / first["rss_kb"]
                           if first.get("rss_kb") and last.get("rss_kb") else None),
        "log": str(log_path),
    }
    say(f"[nodered] {len(rounds)} rounds, {result['readings']} readings decoded of {result['readings_expected']}, "
        f"exit {rc}")
    return result


def _tail(tail: Iterable[str]) -> str:
    lines = list(tail)[-15:]
    return ("\nlast lines of Node-RED's output:\n  " + "\n  ".join(lines)) if lines else ""


def _stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    """SIGTERM (Node-RED stops its flows and closes its connections), SIGKILL after `timeout`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10)
    return proc.returncode
