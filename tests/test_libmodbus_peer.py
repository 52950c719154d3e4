"""An independent Modbus slave (libmodbus, C) serves known values in every byte order;
the poller, reading it over TCP and over a serial line (RTU on a socat pty pair), must get
exactly those numbers; and mbpoll, an independent master, reads the same words over RTU."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from poller.decode import decode_block_values
from poller.modbus import ResponseTimeout
from poller.model import ByteOrder, DataType, DeviceType, FunctionCode, ReadBlock, Register
from poller.plan import plan_device
from tests.servers import ROOT, PtyPair, free_port, wait_for_port
from tests.test_end_to_end import run_poller
from tests.test_transport import serial_bus

PEER_SOURCE = ROOT / "tests" / "peers" / "libmodbus_slave.c"

# The slave's table (tests/peers/libmodbus_slave.c): address, measurement, data type, function code, order
PEER_MAP = [
    (0, "f_abcd", 3, 3, "ABCD"),
    (2, "f_cdab", 3, 4, "CDAB"),
    (4, "f_badc", 3, 3, "BADC"),
    (6, "f_dcba", 3, 4, "DCBA"),
    (8, "i16", 1, 3, "ABCD"),
    (9, "i32", 2, 3, "ABCD"),
    (11, "u32", 5, 4, "CDAB"),
    (13, "f64", 8, 3, "ABCD"),
]
PEER_TYPE = ("INSERT INTO device_types (name, max_gap) VALUES ('libmodbus_peer', 0);\n"
             "INSERT INTO registers (type, register_address, measurement_name, data_type, function_code, "
             "byte_order) VALUES\n"
             + ",\n".join(f"    ('libmodbus_peer', {a}, '{m}', {dt}, {fc}, '{bo}')" for a, m, dt, fc, bo in PEER_MAP)
             + ";\n")
FLOAT32_230_1 = 230.10000610351562  # 230.1 as the nearest float32, which is what a meter sends
EXPECTED = {"f_abcd": FLOAT32_230_1, "f_cdab": FLOAT32_230_1, "f_badc": FLOAT32_230_1,
            "f_dcba": FLOAT32_230_1, "i16": -1234.0, "i32": -123456789.0, "u32": 4000000000.0,
            "f64": -12345.678}
RTU_UNIT = 5  # the RTU slave answers this unit id only, as a device on a bus does


@pytest.fixture(scope="module")
def peer_binary(tmp_path_factory):
    gcc = shutil.which("gcc")
    assert gcc, "gcc is missing (scripts/test installs it)"
    out = tmp_path_factory.mktemp("peer") / "libmodbus_slave"
    build = subprocess.run([gcc, "-O2", "-Wall", "-Werror", "-o", str(out), str(PEER_SOURCE), "-lmodbus"],
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


def test_a_serial_meter_row_stores_what_the_libmodbus_rtu_slave_serves(postgres, database, peer_binary, tmp_path):
    """The whole path for a meter on a USB-RS485 adapter: an energy_meters row with transport
    serial, `python -m poller --once`, the libmodbus slave in RTU mode at the other end of the line."""
    pair = PtyPair(tmp_path).start()
    try:
        postgres.psql(database, "-c", PEER_TYPE + "DELETE FROM energy_meters; INSERT INTO energy_meters "
                                      "(host, port, slave_address, type, transport, baudrate) VALUES "
                                      f"('{pair.poller}', 502, {RTU_UNIT}, 'libmodbus_peer', 'serial', 9600)")
        peer = start_rtu_slave(peer_binary, pair)
        try:
            done = run_poller(["--once", "--dry-run"], postgres.env(database))
        finally:
            peer.kill()
            peer.wait()
    finally:
        pair.stop()
    assert done.returncode == 0, done.stderr
    assert "meters ok=1 failed=0" in done.stderr, done.stderr
    got = {m: float(v) for m, v in re.findall(r"^(\w+),\S* value=(\S+) \d+$", done.stdout, re.M)}
    assert got == EXPECTED


def peer_device_type() -> DeviceType:
    """The rows of PEER_TYPE as the poller's store makes them."""
    registers = tuple(Register(i, "libmodbus_peer", a, m, None, DataType(dt), FunctionCode(fc), ByteOrder(bo))
                      for i, (a, m, dt, fc, bo) in enumerate(PEER_MAP, 1))
    return DeviceType("libmodbus_peer", registers, max_gap=0)


def start_rtu_slave(peer_binary: Path, pair: PtyPair) -> subprocess.Popen[bytes]:
    peer = subprocess.Popen([str(peer_binary), "rtu", pair.device, "9600", str(RTU_UNIT)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert peer.stdout is not None
    line = peer.stdout.readline()
    assert line == b"ready\n", (line, peer.stderr.read() if peer.poll() is not None and peer.stderr else "")
    return peer


def mbpoll_words(path: str, table: int, count: int) -> list[int]:
    """`count` registers from address 0 of `table` (4 holding, 3 input), read by mbpoll over RTU."""
    mbpoll = shutil.which("mbpoll")
    assert mbpoll, "mbpoll is missing (scripts/test installs it)"
    done = subprocess.run([mbpoll, "-m", "rtu", "-a", str(RTU_UNIT), "-b", "9600", "-P", "none", "-d", "8",
                           "-s", "1", "-t", f"{table}:hex", "-r", "1", "-c", str(count), "-o", "2", "-1", path],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.findall(r"^\[(\d+)\]:\s+0x([0-9A-F]{4})$", done.stdout, re.M)
    assert [int(ref) for ref, _ in found] == list(range(1, count + 1)), done.stdout
    return [int(word, 16) for _, word in found]


def test_a_serial_bus_reads_the_libmodbus_rtu_slave_exactly_and_mbpoll_agrees(peer_binary, tmp_path):
    """The libmodbus slave in RTU mode on one end of a pty pair, the poller's serial bus on the
    other: its plan, read and decoded as a cycle does, gives every type in every order; a unit
    the slave does not answer costs one timeout; then mbpoll reads both tables over the same
    line and gets the very words the bus got."""
    dtype = peer_device_type()
    blocks = plan_device(dtype)
    assert {int(b.function_code) for b in blocks} == {3, 4}

    async def read_all(path: str):
        bus = serial_bus(path, 9600)
        try:
            read = [(block, await bus.read(block, RTU_UNIT, timeout=2)) for block in blocks]
            # No such unit on this line. (libmodbus, a polite bus citizen, then ignores the next
            # frame it hears for up to its 0.5 s response timeout, taking it for that unit's
            # reply: a timeout longer than that keeps our next request from being swallowed.)
            with pytest.raises(ResponseTimeout):
                await bus.read(blocks[0], RTU_UNIT + 1, timeout=0.8)
            tables = {fc: await bus.read(ReadBlock(FunctionCode(fc), 0, 17, ()), RTU_UNIT, timeout=2) for fc in (3, 4)}
        finally:
            bus.close()
        return read, tables

    pair = PtyPair(tmp_path).start()
    try:
        peer = start_rtu_slave(peer_binary, pair)
        try:
            read, tables = asyncio.run(read_all(pair.poller))
            by_mbpoll = {3: mbpoll_words(pair.poller, 4, 17), 4: mbpoll_words(pair.poller, 3, 17)}
            assert peer.poll() is None, "the slave died"
        finally:
            peer.kill()
            peer.wait()
    finally:
        pair.stop()
    values, invalid = decode_block_values(read)
    assert not invalid
    assert {reg.measurement: value for _, reg, value in values} == EXPECTED
    assert tables == by_mbpoll
    assert tables[3] == tables[4]  # the slave holds the same words in both tables
