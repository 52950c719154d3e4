"""python -m virtual_server's command line (issue 9 item 17): loopback by default, a bad
--port is a usage error, a busy port one clear ERROR line; exit 2 and no traceback.
Issue 10: it also serves RTU over TCP (--framer rtu), UDP (--udp) and serial RTU (--serial)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import (
    ROOT,
    Postgres,
    free_port,
    postgres_cluster,
    project_env,
    pty_pair,
    start_module,
    stop_process,
    wait_for_port,
)
from tests.test_simulator import (
    mbap,
    mbpoll,
    parse_mbap_reply,
    parse_rtu_reply,
    read_pdu,
    recv_exactly,
    rtu_request,
)
from virtual_server.device import make_device


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with postgres_cluster() as cluster:
        cluster.create_database("simulator_cli")
        yield cluster


@pytest.fixture(scope="module")
def pg_env(pg: Postgres) -> dict[str, str]:
    return pg.env("simulator_cli")


def run_simulator(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "virtual_server", "--env-file", "/nonexistent", *args], cwd=ROOT,
                          env=project_env(env or {}), capture_output=True, text=True, timeout=60)


def the_one_error_line(run: subprocess.CompletedProcess[str]) -> str:
    """A start that cannot serve: exit 2, one ERROR line (returned), every line the simulator's, no traceback."""
    assert run.returncode == 2, run.stderr
    lines = run.stderr.splitlines()
    errors = [line for line in lines if " ERROR " in line]
    assert len(errors) == 1, run.stderr
    assert "Traceback" not in run.stderr and all(" virtual_server: " in line for line in lines), run.stderr
    return errors[0]


@pytest.mark.parametrize("port", ["abc", "70000", "-1", "65536", "", "5e2", "0x1f6"])
def test_a_bad_port_is_a_usage_error(port: str) -> None:
    run = run_simulator(["--port", port])
    assert run.returncode == 2, run.stderr
    assert "usage: python -m virtual_server" in run.stderr
    assert "error: argument --port:" in run.stderr and "Traceback" not in run.stderr, run.stderr


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket LISTENing on `port` (/proc/net/tcp, state 0A)."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, _, hexport = local.partition(":")
        if state == "0A" and int(hexport, 16) == port:
            out.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return out


def test_listens_on_loopback_unless_told(pg_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    proc = start_module("virtual_server", ["--port", str(port)], pg_env, tmp_path / "sim.log")
    try:
        wait_for_port(port, proc=proc)
        assert listening_addresses(port) == {"127.0.0.1"}, (tmp_path / "sim.log").read_text()
    finally:
        assert stop_process(proc) == 0
    assert f"on 127.0.0.1:{port}" in (tmp_path / "sim.log").read_text()


def test_a_busy_port_is_one_error_line(pg_env: dict[str, str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = run_simulator(["--port", str(port)], pg_env)
    error = the_one_error_line(run)
    assert f"cannot listen on 127.0.0.1:{port}" in error, error
    assert "choose another --port" in error


def test_compose_listens_on_every_address() -> None:
    """In its container the simulator must be reachable from the poller's: compose says --host 0.0.0.0."""
    import yaml

    from virtual_server.__main__ import parse_args

    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["virtual_server"]["command"]
    assert parse_args(command[command.index("virtual_server") + 1:]).host == "0.0.0.0"
    assert parse_args([]).host == "127.0.0.1"


def test_the_default_is_still_modbus_tcp_on_port_502() -> None:
    from virtual_server.__main__ import parse_args

    args = parse_args([])
    assert (args.port, args.framer, args.udp, args.serial) == (502, None, False, None)
    assert (args.baudrate, args.parity, args.stopbits, args.bytesize) == (9600, "N", 1, 8)
    assert parse_args(["--parity", "even"]).parity == "E" and parse_args(["--parity", "o"]).parity == "O"


@pytest.mark.parametrize("args", [["--serial", "/dev/null", "--framer", "socket"], ["--udp", "--serial", "/dev/null"],
                                  ["--parity", "mark"], ["--framer", "ascii"], ["--stopbits", "3"]])
def test_contradictory_or_unknown_wire_options_are_usage_errors(args: list[str]) -> None:
    run = run_simulator(args)
    assert run.returncode == 2, run.stderr
    assert "usage: python -m virtual_server" in run.stderr and "Traceback" not in run.stderr, run.stderr


def wait_for_log(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = path.read_text() if path.exists() else ""
        if text in log:
            return log
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {log}")
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} not in {path}")


@pytest.mark.parametrize("wire", ["rtu-over-tcp", "udp", "serial"])
def test_every_wire_serves_the_seeded_meter(pg: Postgres, pg_env: dict[str, str], tmp_path: Path, wire: str) -> None:
    """The seed's virtual meter, --seed 3 --frozen, read over each wire by a peer that shares no
    code with the simulator (frames built by hand, mbpoll on the pty): the words its device makes."""
    registers = pg.configuration("simulator_cli").device_types["virtual_meter"].registers
    served = make_device("virtual_meter", registers, 3).words()
    blocks = [(4, 0, 16), (3, 100, 6)]  # the seed's map: float32 input registers, holding registers
    expected = [[served[(fc, a)] for a in range(start, start + n)] for fc, start, n in blocks]
    port = free_port()
    with pty_pair(tmp_path) as (server_end, client_end):
        wire_args = {"rtu-over-tcp": ["--port", str(port), "--framer", "rtu"], "udp": ["--port", str(port), "--udp"],
                     "serial": ["--serial", server_end, "--baudrate", "19200", "--stopbits", "2"]}[wire]
        log_path = tmp_path / "sim.log"
        proc = start_module("virtual_server", [*wire_args, "--seed", "3", "--frozen"], pg_env, log_path)
        try:
            log = wait_for_log(log_path, "serving virtual_meter over", proc)
            got = []
            if wire == "rtu-over-tcp":
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    for fc, start, n in blocks:
                        sock.sendall(rtu_request(1, fc, start, n))
                        got.append(parse_rtu_reply(recv_exactly(sock, 5 + 2 * n))[2])
            elif wire == "udp":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(5)
                    for tid, (fc, start, n) in enumerate(blocks):
                        sock.sendto(mbap(tid, 1, read_pdu(fc, start, n)), ("127.0.0.1", port))
                        got.append(parse_mbap_reply(sock.recvfrom(512)[0])[3])
            else:
                target = ["-m", "rtu", "-b", "19200", "-s", "2", "-P", "none", client_end]
                for fc, start, n in blocks:  # mbpoll's table 3 is fc 4, its table 4 fc 3
                    read = mbpoll(target, 1, 7 - fc, start, n)
                    got.append([read[a] for a in range(start, start + n)])
        finally:
            assert stop_process(proc) == 0
    assert got == expected
    where = {"rtu-over-tcp": f"RTU over TCP on 127.0.0.1:{port}", "udp": f"Modbus UDP on 127.0.0.1:{port}",
             "serial": f"serial RTU on {server_end} 19200 8N2"}[wire]
    assert f"serving virtual_meter over {where} (frozen values)" in log, log


def test_a_missing_serial_device_is_one_error_line(pg_env: dict[str, str], tmp_path: Path) -> None:
    run = run_simulator(["--serial", str(tmp_path / "ttyUSB9")], pg_env)
    error = the_one_error_line(run)
    assert f"cannot open serial device {tmp_path / 'ttyUSB9'}" in error, error
    assert "No such file or directory" in error


def test_line_settings_the_device_refuses_are_one_error_line(pg_env: dict[str, str], tmp_path: Path) -> None:
    """A pty takes no parity: as a USB adapter refusing a setting, one ERROR line naming the settings."""
    with pty_pair(tmp_path) as (server_end, _):
        run = run_simulator(["--serial", server_end, "--parity", "even"], pg_env)
    error = the_one_error_line(run)
    assert f"cannot open serial device {server_end}" in error, error
    assert "refuses 9600 8E1" in error, error


def test_a_busy_udp_port_is_one_error_line(pg_env: dict[str, str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        run = run_simulator(["--udp", "--port", str(port)], pg_env)
    error = the_one_error_line(run)
    assert f"cannot listen on 127.0.0.1:{port} (udp)" in error, error
    assert "choose another --port" in error
