"""An independent Modbus slave (libmodbus, C) serves known values in every byte order;
the poller, reading it over TCP, must store exactly those numbers."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.servers import ROOT, free_port, wait_for_port
from tests.test_end_to_end import run_poller

PEER_SOURCE = ROOT / "tests" / "peers" / "libmodbus_slave.c"

PEER_TYPE = """
INSERT INTO device_types (name, max_gap) VALUES ('libmodbus_peer', 0);
INSERT INTO registers (type, register_address, measurement_name, data_type, function_code, byte_order) VALUES
    ('libmodbus_peer',  0, 'f_abcd', 3, 3, 'ABCD'),
    ('libmodbus_peer',  2, 'f_cdab', 3, 4, 'CDAB'),
    ('libmodbus_peer',  4, 'f_badc', 3, 3, 'BADC'),
    ('libmodbus_peer',  6, 'f_dcba', 3, 4, 'DCBA'),
    ('libmodbus_peer',  8, 'i16',    1, 3, 'ABCD'),
    ('libmodbus_peer',  9, 'i32',    2, 3, 'ABCD'),
    ('libmodbus_peer', 11, 'u32',    5, 4, 'CDAB'),
    ('libmodbus_peer', 13, 'f64',    8, 3, 'ABCD');
"""
FLOAT32_230_1 = 230.10000610351562  # 230.1 as the nearest float32, which is what a meter sends
EXPECTED = {"f_abcd": FLOAT32_230_1, "f_cdab": FLOAT32_230_1, "f_badc": FLOAT32_230_1,
            "f_dcba": FLOAT32_230_1, "i16": -1234.0, "i32": -123456789.0, "u32": 4000000000.0,
            "f64": -12345.678}


@pytest.fixture(scope="module")
def peer_binary(tmp_path_factory):
    gcc = shutil.which("gcc")
    assert gcc, "gcc is missing (scripts/test installs it)"
    out = tmp_path_factory.mktemp("peer") / "libmodbus_slave"
    build = subprocess.run([gcc, "-O2", "-Wall", "-o", str(out), str(PEER_SOURCE), "-lmodbus"],
                           capture_output=True, text=True)
    assert build.returncode == 0, f"building the libmodbus slave failed (libmodbus-dev?): {build.stderr}"
    return out


def test_values_from_a_libmodbus_slave_in_every_order(postgres, database, peer_binary):
    port = free_port()
    postgres.psql(database, "-c", PEER_TYPE + "DELETE FROM energy_meters; INSERT INTO energy_meters "
                                  f"(host, port, slave_address, type) VALUES ('127.0.0.1', {port}, 1, "
                                  "'libmodbus_peer')")
    peer = subprocess.Popen([str(peer_binary), str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc=peer)
        done = run_poller(["--once", "--dry-run"], postgres.env(database))
    finally:
        peer.kill()
        peer.wait()
    assert done.returncode == 0, done.stderr
    assert "meters ok=1 failed=0" in done.stderr, done.stderr
    got = {m: float(v) for m, v in re.findall(r"^(\w+),\S* value=(\S+) \d+$", done.stdout, re.M)}
    assert got == EXPECTED
