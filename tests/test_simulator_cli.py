"""python -m virtual_server's command line (issue 9 item 17): loopback by default, a bad
--port is a usage error, a busy port one clear ERROR line; exit 2 and no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ROOT, free_port, postgres_cluster, project_env, start_module, stop_process, wait_for_port


@pytest.fixture(scope="module")
def pg_env() -> Iterator[dict[str, str]]:
    with postgres_cluster() as pg:
        pg.create_database("simulator_cli")
        yield pg.env("simulator_cli")


def run_simulator(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "virtual_server", "--env-file", "/nonexistent", *args], cwd=ROOT,
                          env=project_env(env or {}), capture_output=True, text=True, timeout=60)


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
    assert run.returncode == 2, run.stderr
    lines = run.stderr.splitlines()
    errors = [line for line in lines if " ERROR " in line]
    assert len(errors) == 1 and f"cannot listen on 127.0.0.1:{port}" in errors[0], run.stderr
    assert "choose another --port" in errors[0]
    assert "Traceback" not in run.stderr and all(" virtual_server: " in line for line in lines), run.stderr


def test_compose_listens_on_every_address() -> None:
    """In its container the simulator must be reachable from the poller's: compose says --host 0.0.0.0."""
    import yaml

    from virtual_server.__main__ import parse_args

    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["virtual_server"]["command"]
    assert parse_args(command[command.index("virtual_server") + 1:]).host == "0.0.0.0"
    assert parse_args([]).host == "127.0.0.1"
