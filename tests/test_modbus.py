"""The poller's Modbus framings (MBAP and RTU) against the specifications and pymodbus, and its
Modbus TCP bus against devices that misbehave on purpose (real sockets, one event loop).
The other kinds of bus (RTU over TCP, UDP, serial) are in tests/test_transport.py."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import socket
import struct
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
)

from poller.modbus import (
    MBAP,
    RTU,
    BadReply,
    BadRequest,
    ConnectError,
    ExceptionReply,
    FrameError,
    ModbusError,
    Reply,
    Request,
    ResponseTimeout,
    crc16,
)
from poller.model import BusAddress, FunctionCode, ReadBlock, Transport
from poller.transport import TcpBus
from tests.servers import GarbageServer
from virtual_server.server import SimulatedServer

HOLDING, INPUT = FunctionCode.READ_HOLDING_REGISTERS, FunctionCode.READ_INPUT_REGISTERS


def tcp_bus(host: str, port: int, connect_timeout: float = 3.0) -> TcpBus:
    """The Modbus TCP bus of host:port (what transport.open_bus makes for it)."""
    return TcpBus(BusAddress(Transport.TCP, host, port), connect_timeout)


def reply_bytes(tid: int, unit: int, fc: int, words: list[int] | tuple[int, ...]) -> bytes:
    """A correct reply, written out from the MBAP layout (not with the code under test)."""
    return struct.pack(f">HHHBBB{len(words)}H", tid, 0, 3 + 2 * len(words), unit, fc, 2 * len(words), *words)


# ---------------------------------------------------------------------------------------------
# Framing, pure


def test_requests_and_replies_of_the_specification_examples():
    # Modbus Application Protocol V1.1b3, 6.3: read holding registers 108-110 (address 0x6B, 3)
    # -> 03 00 6B 00 03; answer 03 06 02 2B 00 00 00 64. 6.4: read input register 9 (address 8, 1)
    # -> 04 00 08 00 01; answer 04 02 00 0A. Messaging on TCP/IP 3.1.3: MBAP = transaction id,
    # protocol id 0, length of the rest, unit id.
    holding = Request(0x1234, 0x11, 3, 0x6B, 3)
    assert MBAP.encode(holding) == bytes.fromhex("1234 0000 0006 11 03 006B 0003")
    assert MBAP.decode(bytes.fromhex("1234 0000 0009 11 03 06 022B 0000 0064"), holding) == Reply((0x22B, 0, 100))
    inputs = Request(1, 0xFF, 4, 8, 1)
    assert MBAP.encode(inputs) == bytes.fromhex("0001 0000 0006 FF 04 0008 0001")
    assert MBAP.decode(bytes.fromhex("0001 0000 0005 FF 04 02 000A"), inputs) == Reply((10,))
    # 7: exception responses, function code + 0x80 and one code byte
    assert MBAP.decode(bytes.fromhex("1234 0000 0003 11 83 02"), holding) == Reply(exception=2)
    assert MBAP.decode(bytes.fromhex("0001 0000 0003 FF 84 0B"), inputs) == Reply(exception=11)


reads = st.builds(
    lambda tid, unit, fc, count, start: Request(tid, unit, fc, min(start, 0x10000 - count), count),
    st.integers(1, 0xFFFF), st.integers(0, 255), st.sampled_from([3, 4]), st.integers(1, 125),
    st.integers(0, 0xFFFF))


@given(reads)
@example(Request(0xFFFF, 255, 4, 0xFFFF, 1)).via("the highest ids and address")
def test_requests_are_the_bytes_pymodbus_frames(read):
    message = ReadHoldingRegistersRequest if read.function_code == 3 else ReadInputRegistersRequest
    pdu = message(address=read.address, count=read.count, dev_id=read.unit, transaction_id=read.transaction)
    assert MBAP.encode(read) == FramerSocket(DecodePDU(False)).buildFrame(pdu)


@given(reads, st.data())
def test_replies_framed_by_pymodbus_decode_to_their_words(read, data):
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=read.count, max_size=read.count))
    message = ReadHoldingRegistersResponse if read.function_code == 3 else ReadInputRegistersResponse
    frame = FramerSocket(DecodePDU(True)).buildFrame(
        message(registers=words, dev_id=read.unit, transaction_id=read.transaction))
    assert frame == reply_bytes(read.transaction, read.unit, read.function_code, words)
    assert MBAP.decode(frame, read) == Reply(tuple(words))


@pytest.mark.parametrize("request_, reason", [
    (Request(1, 1, 6, 0, 1), "refusing to send function code 6"),
    (Request(1, 1, 16, 0, 1), "refusing to send function code 16"),
    (Request(1, 1, 0x83, 0, 1), "refusing to send function code 131"),
    (Request(0, 1, 3, 0, 1), "transaction id 0 outside 1..65535"),
    (Request(0x10000, 1, 3, 0, 1), "transaction id 65536"),
    (Request(1, 256, 3, 0, 1), "unit id 256 outside 0..255"),
    (Request(1, -1, 3, 0, 1), "unit id -1"),
    (Request(1, 1, 3, 0, 0), "0 registers"),
    (Request(1, 1, 3, 0, 126), "126 registers"),
    (Request(1, 1, 3, 0xFFFF, 2), "registers 65535..65536 outside 0..65535"),
    (Request(1, 1, 3, -1, 1), "outside 0..65535"),
])
def test_requests_that_must_never_be_sent(request_, reason):
    with pytest.raises(ValueError, match=reason):
        MBAP.encode(request_)


REQ = Request(0x0102, 7, 3, 100, 2)
GOOD = reply_bytes(0x0102, 7, 3, [0xAAAA, 0x5555])


@pytest.mark.parametrize("frame, reason", [
    (GOOD[:0] + b"\x00\x00" + GOOD[2:], "reply to transaction 0, not to the one asked"),
    (b"\x01\x01" + GOOD[2:], "reply to transaction 257"),
    (GOOD[:2] + b"\x00\x01" + GOOD[4:], "protocol id 1, not 0"),
    (GOOD[:4] + b"\x00\x02" + GOOD[6:], "MBAP length 2 outside 3..254"),
    (GOOD[:4] + b"\x00\xFF" + GOOD[6:], "MBAP length 255 outside 3..254"),
    (GOOD[:4] + b"\x00\x06" + GOOD[6:], "MBAP length 6 for 2 registers"),
    (GOOD[:4] + b"\x00\x08" + GOOD[6:], "MBAP length 8 for 2 registers"),
    (GOOD[:6] + b"\x08" + GOOD[7:], "reply from unit 8, not from the unit asked"),
    (GOOD[:7] + b"\x04" + GOOD[8:], "function code 4 in the reply to function 3"),
    (GOOD[:7] + b"\x17" + GOOD[8:], "function code 23"),
    (GOOD[:7] + b"\x84" + GOOD[8:], "function code 132"),
    (GOOD[:7] + b"\x83" + GOOD[8:], "exception reply with MBAP length 7, not 3"),
    (bytes.fromhex("0102 0000 0004 07 83 02 00"), "exception reply with MBAP length 4"),
    (bytes.fromhex("0102 0000 0002 07 83"), "MBAP length 2"),
    (GOOD[:8] + b"\x05" + GOOD[9:], "byte count 5 for 2 registers"),
    (GOOD[:8] + b"\x03" + GOOD[9:], "byte count 3"),
    (GOOD[:8] + b"\x06" + GOOD[9:], "byte count 6"),
    (reply_bytes(0x0102, 7, 3, [1]), "MBAP length 5 for 2 registers"),
    (reply_bytes(0x0102, 7, 3, [1, 2, 3]), "MBAP length 9 for 2 registers"),
    (GOOD[:-1], "reply cut short after 12 byte"),
    (GOOD[:5], "reply cut short after 5 byte"),
    (b"", "reply cut short after 0 byte"),
    (GOOD + b"\x00", "1 byte(s) after the end of the reply"),
    (GOOD + GOOD, "13 byte(s) after the end"),
])
def test_every_echo_of_a_reply_is_checked(frame, reason):
    with pytest.raises(FrameError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        MBAP.decode(frame, REQ)
    assert MBAP.decode(GOOD, REQ) == Reply((0xAAAA, 0x5555))


@given(reads, st.data())
def test_any_change_to_a_reply_header_or_length_is_refused(read, data):
    """All 9 bytes before the words echo the request; a reply of any other length is not one."""
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=read.count, max_size=read.count))
    good = reply_bytes(read.transaction, read.unit, read.function_code, words)
    at = data.draw(st.integers(0, 8))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != good[at]))
    with pytest.raises(FrameError):
        MBAP.decode(good[:at] + bytes([value]) + good[at + 1:], read)
    only_the_whole_reply_decodes(MBAP, good, read, words, data)


def only_the_whole_reply_decodes(framing, good: bytes, read: Request, words: list[int], data) -> None:
    """`good` is the reply to `read`: cut short or with bytes after it, it is none; a reply arriving
    in pieces: every prefix either needs more bytes or knows the full size."""
    cut = data.draw(st.integers(0, len(good) - 1))
    with pytest.raises(FrameError):
        framing.decode(good[:cut], read)
    with pytest.raises(FrameError):
        framing.decode(good + data.draw(st.binary(min_size=1, max_size=300)), read)
    for n in range(len(good)):
        assert framing.frame_size(good[:n], read) in (None, len(good))
    assert framing.decode(good, read) == Reply(tuple(words))


# ---------------------------------------------------------------------------------------------
# RTU framing, pure


def rtu_frame(body: bytes) -> bytes:
    """`body` and its CRC as pymodbus computes it (not with the code under test)."""
    return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")


def rtu_reply(unit: int, fc: int, words: list[int] | tuple[int, ...]) -> bytes:
    """A correct RTU reply, written out from the RTU layout: unit, function code, byte count, words, CRC."""
    return rtu_frame(struct.pack(f">BBB{len(words)}H", unit, fc, 2 * len(words), *words))


def test_rtu_frames_of_the_specification_examples():
    # Modbus Application Protocol 6.3 read by unit 17 (0x11) over a serial line (Modbus over
    # Serial Line 2.5.1): the PDU 03 00 6B 00 03 behind the unit id, then CRC-16 0x8776 low
    # byte first. Every CRC here is also pymodbus' (FramerRTU.compute_CRC).
    holding = Request(1, 0x11, 3, 0x6B, 3)
    assert RTU.encode(holding) == bytes.fromhex("11 03 006B 0003 7687")
    assert crc16(bytes.fromhex("11 03 006B 0003")) == 0x8776
    assert RTU.encode(Request(1, 1, 3, 0, 10)) == bytes.fromhex("01 03 0000 000A C5CD")  # the textbook frame
    assert RTU.decode(bytes.fromhex("11 03 06 022B 0000 0064 C8BA"), holding) == Reply((0x22B, 0, 100))
    assert RTU.decode(bytes.fromhex("11 83 02 C134"), holding) == Reply(exception=2)
    for frame in ("11 03 006B 0003 7687", "01 03 0000 000A C5CD", "11 03 06 022B 0000 0064 C8BA", "11 83 02 C134"):
        data = bytes.fromhex(frame)
        assert data[-2:] == FramerRTU.compute_CRC(data[:-2]).to_bytes(2, "big")
    # no transaction id on the wire: any request id gives the same bytes
    assert RTU.encode(Request(0xFFFF, 0x11, 3, 0x6B, 3)) == RTU.encode(holding)


rtu_reads = reads.filter(lambda r: r.unit != 0)


@given(rtu_reads)
@example(Request(1, 255, 4, 0xFFFF, 1)).via("the highest unit id and address")
@example(Request(1, 1, 3, 0, 125)).via("the longest read")
def test_rtu_requests_are_the_bytes_pymodbus_frames(read):
    message = ReadHoldingRegistersRequest if read.function_code == 3 else ReadInputRegistersRequest
    pdu = message(address=read.address, count=read.count, dev_id=read.unit)
    assert RTU.encode(read) == FramerRTU(DecodePDU(False)).buildFrame(pdu)


@given(st.binary(max_size=300))
@example(b"").via("the initial value")
def test_crc16_is_pymodbus_crc(data):
    assert crc16(data).to_bytes(2, "little") == FramerRTU.compute_CRC(data).to_bytes(2, "big")


@given(rtu_reads, st.data())
def test_rtu_replies_framed_by_pymodbus_decode_to_their_words(read, data):
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=read.count, max_size=read.count))
    message = ReadHoldingRegistersResponse if read.function_code == 3 else ReadInputRegistersResponse
    frame = FramerRTU(DecodePDU(True)).buildFrame(message(registers=words, dev_id=read.unit))
    assert frame == rtu_reply(read.unit, read.function_code, words)
    assert RTU.decode(frame, read) == Reply(tuple(words))
    code = data.draw(st.integers(1, 255))
    refused = FramerRTU(DecodePDU(True)).buildFrame(ExceptionResponse(read.function_code, code, device_id=read.unit))
    assert RTU.decode(refused, read) == Reply(exception=code)


def test_requests_rtu_must_never_send():
    with pytest.raises(ValueError, match="unit id 0 is the broadcast address of a serial line"):
        RTU.encode(Request(1, 0, 3, 0, 1))
    for bad in (Request(1, 1, 6, 0, 1), Request(1, 1, 16, 0, 1), Request(1, 1, 3, 0, 126), Request(1, 256, 3, 0, 1)):
        with pytest.raises(ValueError):
            RTU.encode(bad)


RREQ = Request(99, 7, 3, 100, 2)
RGOOD = rtu_reply(7, 3, [0xAAAA, 0x5555])


@pytest.mark.parametrize("frame, reason", [
    (rtu_reply(8, 3, [0xAAAA, 0x5555]), "reply from unit 8, not from the unit asked (7)"),
    (rtu_reply(0, 3, [0xAAAA, 0x5555]), "reply from unit 0"),
    (rtu_reply(7, 4, [0xAAAA, 0x5555]), "function code 4 in the reply to function 3"),
    (rtu_reply(7, 23, [0xAAAA, 0x5555]), "function code 23"),
    (rtu_frame(bytes([7, 0x84, 2])), "function code 132"),
    (rtu_frame(bytes([7, 3, 5]) + RGOOD[3:-2] + b"\x00"), "byte count 5 for 2 registers (4 expected)"),
    (rtu_frame(bytes([7, 3, 3]) + RGOOD[3:-3]), "byte count 3"),
    (rtu_frame(bytes([7, 3, 0])), "byte count 0"),
    (rtu_reply(7, 3, [1]), "byte count 2 for 2 registers"),
    (rtu_reply(7, 3, [1, 2, 3]), "byte count 6 for 2 registers"),
    (RGOOD[:-2] + bytes([RGOOD[-2] ^ 1]) + RGOOD[-1:], "CRC .* does not match the frame's"),
    (RGOOD[:-1] + bytes([RGOOD[-1] ^ 0x80]), "does not match"),
    (RGOOD[:3] + bytes([RGOOD[3] ^ 0x01]) + RGOOD[4:], "damaged on the line"),
    (RGOOD[:-2] + RGOOD[-1:] + RGOOD[-2:-1], "does not match"),  # the CRC sent high byte first
    (RGOOD[:-1], "reply cut short after 8 byte"),
    (RGOOD[:2], "reply cut short after 2 byte"),
    (RGOOD[:1], "reply cut short after 1 byte"),
    (b"", "reply cut short after 0 byte"),
    (RGOOD + b"\x00", "1 byte(s) after the end of the reply"),
    (RGOOD + RGOOD, "9 byte(s) after the end"),
    (rtu_frame(bytes([7, 0x83, 2, 0])), "1 byte(s) after the end"),  # an exception reply is 5 bytes
    (bytes([7, 0x83, 2]), "cut short after 3"),
    (bytes([7, 0x83, 2, 0, 0]), "does not match"),
])
def test_every_echo_of_an_rtu_reply_is_checked(frame, reason):
    with pytest.raises(FrameError, match=reason.replace("(", r"\(").replace(")", r"\)").replace(r".\*", ".*")):
        RTU.decode(frame, RREQ)
    assert RTU.decode(RGOOD, RREQ) == Reply((0xAAAA, 0x5555))


@given(rtu_reads, st.data())
def test_any_change_to_an_rtu_reply_is_refused(read, data):
    """The CRC covers every byte: any change to one byte (CRC-16 catches every error within 16
    bits), any cut and any extension is refused; a reply arriving in pieces never looks whole early."""
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=read.count, max_size=read.count))
    good = rtu_reply(read.unit, read.function_code, words)
    at = data.draw(st.integers(0, len(good) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != good[at]))
    with pytest.raises(FrameError):
        RTU.decode(good[:at] + bytes([value]) + good[at + 1:], read)
    # two bytes changed anywhere within 16 bits of each other: still a burst the CRC catches
    at = data.draw(st.integers(0, len(good) - 2))
    burst = data.draw(st.binary(min_size=2, max_size=2).filter(lambda b: b != good[at:at + 2]))
    with pytest.raises(FrameError):
        RTU.decode(good[:at] + burst + good[at + 2:], read)
    only_the_whole_reply_decodes(RTU, good, read, words, data)


# ---------------------------------------------------------------------------------------------
# The Modbus TCP bus against real sockets

CLIENT_LOGGERS = ("poller.modbus", "poller.transport")


class AsyncioTrouble(logging.Handler):
    """Collects what asyncio reports (its exception handler, its logger) and what the client
    logs above DEBUG, inside a running event loop: `with AsyncioTrouble() as trouble: ...`."""

    def __init__(self, collect=True):
        super().__init__(logging.INFO)
        self.collect = collect  # gc.collect() at the end: slow in a test of thousands of examples
        self.contexts: list[dict] = []
        self.records: list[logging.LogRecord] = []
        self.client_levels: dict[str, int] = {}

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: self.contexts.append(context))
        self.client_levels = {name: logging.getLogger(name).level for name in CLIENT_LOGGERS}
        for name in CLIENT_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)  # so that an INFO record would be made, and seen here
        for name in ("asyncio", *CLIENT_LOGGERS):
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc):
        if self.collect:
            gc.collect()  # a future whose exception nobody retrieved says so when collected
        for name in ("asyncio", *CLIENT_LOGGERS):
            logging.getLogger(name).removeHandler(self)
        for name, level in self.client_levels.items():
            logging.getLogger(name).setLevel(level)

    def check(self):
        assert not self.contexts, [c.get("message") for c in self.contexts]
        assert not self.records, [r.getMessage() for r in self.records]


MUST_SUCCEED = ("ok", "split", "trickle")
FAIL_AT_ONCE = ("fc_swapped", "fc23", "exception_long", "tid0", "previous", "other_tid", "odd_count",
                "short_count", "long_count", "count_lie", "length_short", "length_long", "pid", "unit",
                "garbage_before", "flood", "reset", "close")
SILENT = ("silence", "partial_silence")
EITHER = ("garbage_after", "duplicate")  # a good reply, then bytes that make the stream untrustworthy
MODES = (*MUST_SUCCEED, "exception", *FAIL_AT_ONCE, *SILENT, *EITHER)


def peer_reset(writer):
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


class Adversary:
    """A Modbus TCP device that answers each request it receives in the next mode of a script.

    `served[address]` is the words of the correct reply to a read from `address`; `modes_seen`
    records the mode applied to each address, in the order the requests arrived.
    """

    def __init__(self, modes, served, seed):
        self.modes = list(modes)
        self.served = served
        self.rng = random.Random(seed)
        self.modes_seen: dict[int, str] = {}
        self.previous: bytes | None = None
        self.tasks: set[asyncio.Task] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def serve(self, reader, writer):
        self.tasks.add(asyncio.current_task())
        self.writers.add(writer)
        try:
            while True:
                tid, _, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                fc, address, count = struct.unpack(">BHH", await reader.readexactly(length - 1))
                mode = self.modes.pop(0) if self.modes else "ok"
                self.modes_seen[address] = mode
                good = reply_bytes(tid, unit, fc, self.served[address])
                if await self.answer(mode, writer, good, tid, unit, fc, count) == "closed":
                    return
                self.previous = good
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()
            try:  # the poller resetting the connection is its right: that error is taken here, not left
                await writer.wait_closed()  # to the loop ("Future exception was never retrieved")
            except ConnectionError:
                pass

    async def answer(self, mode, writer, good, tid, unit, fc, count):
        rng = self.rng
        header = struct.pack(">HHHBB", tid, 0, 3 + 2 * count, unit, fc)
        data = good[9:]

        def frame(tid=tid, pid=0, unit=unit, fc=fc, pdu=good[7:]):
            return struct.pack(">HHHB", tid, pid, len(pdu) + 1, unit) + pdu

        match mode:
            case "ok" | "duplicate" | "garbage_after":
                extra = good if mode == "duplicate" else rng.randbytes(rng.randint(1, 20))
                writer.write(good)
                if mode != "ok":
                    if rng.random() < 0.5:
                        await writer.drain()
                        await asyncio.sleep(0.002)
                    writer.write(extra)
            case "split":
                cut = rng.randint(1, len(good) - 1)
                writer.write(good[:cut])
                await writer.drain()
                await asyncio.sleep(0.005)
                writer.write(good[cut:])
            case "trickle" | "partial_silence" | "reset" | "close":
                stop = len(good) if mode == "trickle" else rng.randint(0 if mode != "partial_silence" else 1,
                                                                       len(good) - 1)
                for byte in good[:stop]:
                    if writer.is_closing():
                        return "closed"
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.001)
                if mode == "reset":
                    peer_reset(writer)
                    return "closed"
                if mode == "close":
                    writer.close()
                    return "closed"
            case "exception":
                writer.write(frame(pdu=bytes([fc | 0x80, rng.choice([1, 2, 3, 4, 5, 6, 10, 11])])))
            case "exception_long":
                writer.write(frame(pdu=bytes([fc | 0x80, 2, rng.randint(0, 255)])))
            case "fc_swapped":
                writer.write(frame(pdu=bytes([7 - fc]) + good[8:]))
            case "fc23":
                writer.write(frame(pdu=bytes([23]) + good[8:]))
            case "tid0":
                writer.write(frame(tid=0))
            case "previous":
                writer.write(self.previous or frame(tid=(tid - 2) % 0xFFFF + 1))
            case "other_tid":
                writer.write(frame(tid=(tid + rng.randint(1, 0xFFFF)) % 0x10000))
            case "odd_count":
                writer.write(frame(pdu=bytes([fc, 2 * count - 1]) + data[:-1]))
            case "short_count":
                writer.write(frame(pdu=bytes([fc, 2 * count - 2]) + data[:-2]))
            case "long_count":
                writer.write(frame(pdu=bytes([fc, 2 * count + 2]) + data + b"\x00\x01"))
            case "count_lie":  # the MBAP length fits the words; the byte count does not
                writer.write(header + bytes([rng.choice([b for b in range(256) if b != 2 * count])]) + data)
            case "length_short" | "length_long":
                delta = rng.randint(1, 2 * count + 1) if mode == "length_short" else rng.randint(1, 40)
                length = 3 + 2 * count + (delta if mode == "length_long" else -delta)
                writer.write(struct.pack(">HHHB", tid, 0, length, unit) + good[7:])
            case "pid":
                writer.write(frame(pid=rng.randint(1, 0xFFFF)))
            case "unit":
                writer.write(frame(unit=(unit + rng.randint(1, 255)) % 256))
            case "garbage_before":
                garbage = bytearray(rng.randbytes(rng.randint(1, 20)))
                garbage[0] = (garbage[0] + 1) % 256 if garbage[0] == tid >> 8 else garbage[0]
                writer.write(bytes(garbage) + good)
            case "flood":
                writer.write(rng.randbytes(200_000))
            case "silence":
                pass
            case _:
                raise AssertionError(mode)
        await writer.drain()
        return None

    async def stop(self, server):
        server.close()
        for writer in list(self.writers):
            writer.close()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)
        await server.wait_closed()


# Bound and never listening, for the whole run: a host that resolves to this machine is refused
# there, and no other test's server can take the port meanwhile.
_REFUSING = socket.socket()
_REFUSING.bind(("127.0.0.1", 0))
REFUSING_PORT = _REFUSING.getsockname()[1]
TIMEOUT = 0.5  # the adversary's; silence costs this much per request


@st.composite
def scripted_reads(draw):
    return (draw(st.sampled_from(MODES)), draw(st.sampled_from([HOLDING, INPUT])),
            tuple(draw(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=16))))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(scripted_reads(), min_size=1, max_size=10), seed=st.integers(0, 2**32 - 1),
       unit=st.integers(0, 255))
def test_an_adversarial_device_never_gets_a_wrong_value_through_nor_delays_its_neighbour(script, seed, unit):
    served = {1000 + 128 * i: words for i, (_, _, words) in enumerate(script)}
    adversary = Adversary([mode for mode, _, _ in script], served, seed)
    neighbour_words = {(3, a): (a * 7919) & 0xFFFF for a in range(10)}
    neighbour_block = ReadBlock(HOLDING, 0, 10, ())

    async def run():
        with AsyncioTrouble() as trouble:
            server = await asyncio.start_server(adversary.serve, "127.0.0.1", 0)
            good = SimulatedServer(units={}, default=lambda: neighbour_words)
            good_port = await good.start()
            bus = tcp_bus("127.0.0.1", server.sockets[0].getsockname()[1])
            neighbour = tcp_bus("127.0.0.1", good_port)
            done = asyncio.Event()
            neighbour_reads: list[float] = []

            async def poll_neighbour():
                while not done.is_set():
                    started = time.monotonic()
                    words = await neighbour.read(neighbour_block, 1, timeout=5)
                    neighbour_reads.append(time.monotonic() - started)
                    assert words == [neighbour_words[(3, a)] for a in range(10)]
                    await asyncio.sleep(0.002)

            async def poll_adversary():
                outcomes = []
                try:
                    for i, (_, fc, words) in enumerate(script):
                        block = ReadBlock(fc, 1000 + 128 * i, len(words), ())
                        try:
                            outcomes.append(await bus.read(block, unit, TIMEOUT))
                        except ModbusError as exc:
                            outcomes.append(exc)
                    return outcomes
                finally:
                    done.set()

            try:
                outcomes, _ = await asyncio.gather(poll_adversary(), poll_neighbour())
            finally:
                bus.close()
                neighbour.close()
                await adversary.stop(server)
                await good.stop()
        trouble.check()
        return outcomes, neighbour_reads

    outcomes, neighbour_reads = asyncio.run(run())
    previous = "ok"
    for i, ((_, _, words), outcome) in enumerate(zip(script, outcomes, strict=True)):
        mode = adversary.modes_seen.get(1000 + 128 * i, "never received")
        # the property: the words of the correct reply to this very request, or a ModbusError
        assert outcome == list(words) or isinstance(outcome, ModbusError), (mode, outcome)
        if previous in EITHER:  # bytes after the previous reply may have failed this read
            pass
        elif mode in MUST_SUCCEED:
            assert outcome == list(words), (mode, outcome)
        elif mode == "exception":
            assert isinstance(outcome, ExceptionReply), (mode, outcome)
        elif mode in FAIL_AT_ONCE:
            assert isinstance(outcome, BadReply), (mode, outcome)
        elif mode in SILENT:
            assert isinstance(outcome, ResponseTimeout), (mode, outcome)
        previous = mode
    # the neighbour on the same event loop went on as if the adversary were not there
    assert neighbour_reads
    assert max(neighbour_reads) < TIMEOUT / 2, max(neighbour_reads)


@pytest.mark.parametrize("pieces", ["split at every byte", "trickled"])
def test_a_reply_arriving_in_pieces_is_reassembled(pieces):
    words = list(range(0x1000, 0x1000 + 40))

    async def device(reader, writer):
        try:
            while True:
                tid, _, _, unit, fc, _, count = struct.unpack(">HHHBBHH", await reader.readexactly(12))
                good = reply_bytes(tid, unit, fc, words[:count])
                cut = tid % len(good)  # each read splits the reply somewhere else
                chunks = [good[i:i + 1] for i in range(len(good))] if pieces == "trickled" else [good[:cut], good[cut:]]
                for chunk in chunks:
                    writer.write(chunk)
                    await writer.drain()
                    await asyncio.sleep(0.001)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def run():
        with AsyncioTrouble() as trouble:
            server = await asyncio.start_server(device, "127.0.0.1", 0)
            bus = tcp_bus("127.0.0.1", server.sockets[0].getsockname()[1])
            try:
                for n in range(1, 41):  # replies of 11..89 bytes, cut at 1..88
                    assert await bus.read(ReadBlock(INPUT, 0, n, ()), 9, timeout=10) == words[:n]
            finally:
                bus.close()
                server.close()
                await server.wait_closed()
        trouble.check()

    asyncio.run(run())


@pytest.mark.parametrize("how", ["reset", "close"])
@pytest.mark.parametrize("sent", [1, 7, 9, 12])
def test_a_device_dropping_the_connection_mid_reply_fails_the_read_at_once(how, sent):
    async def device(reader, writer):
        tid, _, _, unit, fc, _, count = struct.unpack(">HHHBBHH", await reader.readexactly(12))
        writer.write(reply_bytes(tid, unit, fc, [1, 2])[:sent])
        await writer.drain()
        await asyncio.sleep(0.05)
        if how == "reset":
            peer_reset(writer)
        else:
            writer.close()

    async def run():
        with AsyncioTrouble() as trouble:
            server = await asyncio.start_server(device, "127.0.0.1", 0)
            bus = tcp_bus("127.0.0.1", server.sockets[0].getsockname()[1])
            started = time.monotonic()
            try:
                with pytest.raises(BadReply, match="connection closed by the device"):
                    await bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=30)
            finally:
                bus.close()
                server.close()
                await server.wait_closed()
        trouble.check()
        return time.monotonic() - started

    assert asyncio.run(run()) < 5  # not the 30 s timeout


def test_bytes_after_a_reply_are_never_taken_as_the_next_one():
    """After a correct reply the device sends what would be a correct-looking reply to the
    next transaction, with other values, before that request is even sent: the connection
    is dropped, and the next read gets its own reply over a new connection."""
    connections = []
    forged_sent, first_closed = asyncio.Event(), asyncio.Event()

    async def device(reader, writer):
        connections.append(writer)
        try:
            while True:
                tid, _, _, unit, fc, _, count = struct.unpack(">HHHBBHH", await reader.readexactly(12))
                writer.write(reply_bytes(tid, unit, fc, [111] * count))
                await writer.drain()
                if len(connections) == 1:
                    await asyncio.sleep(0.01)
                    writer.write(reply_bytes(tid % 0xFFFF + 1, unit, fc, [666] * count))
                    await writer.drain()
                    forged_sent.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if len(connections) == 1:
                first_closed.set()
            writer.close()

    async def run():
        with AsyncioTrouble() as trouble:
            server = await asyncio.start_server(device, "127.0.0.1", 0)
            bus = tcp_bus("127.0.0.1", server.sockets[0].getsockname()[1])
            block = ReadBlock(HOLDING, 0, 3, ())
            try:
                first = await bus.read(block, 1, timeout=5)
                await forged_sent.wait()
                await asyncio.wait_for(first_closed.wait(), 5)  # the poller hung up on the stray bytes
                second = await bus.read(block, 1, timeout=5)
            finally:
                bus.close()
                server.close()
                await server.wait_closed()
        trouble.check()
        return first, second

    assert asyncio.run(run()) == ([111] * 3, [111] * 3)
    assert len(connections) == 2


def test_bytes_after_a_reply_in_the_same_chunk_fail_the_read():
    """The reply and one byte more arrive together: which of them would the next read get?
    The read fails instead, and the next one gets its reply over a new connection."""
    connections = []

    async def device(reader, writer):
        connections.append(writer)
        try:
            while True:
                tid, _, _, unit, fc, _, count = struct.unpack(">HHHBBHH", await reader.readexactly(12))
                surplus = b"\x00" if len(connections) == 1 else b""
                writer.write(reply_bytes(tid, unit, fc, [5] * count) + surplus)  # one write, one segment
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def run():
        with AsyncioTrouble() as trouble:
            server = await asyncio.start_server(device, "127.0.0.1", 0)
            bus = tcp_bus("127.0.0.1", server.sockets[0].getsockname()[1])
            try:
                with pytest.raises(BadReply, match=r"1 byte\(s\) after the end of the reply"):
                    await bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=5)
                second = await bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=5)
            finally:
                bus.close()
                server.close()
                await server.wait_closed()
        trouble.check()
        return second

    assert asyncio.run(run()) == [5, 5]
    assert len(connections) == 2


def test_a_flooding_device_fails_the_read_at_once_and_is_hung_up_on():
    """A device that sends without end: the read fails on the first bytes that cannot be
    its reply, the buffer never grows past one reply, and the poller hangs up."""
    hung_up = asyncio.Event()

    async def device(reader, writer):
        await reader.readexactly(12)
        try:
            while True:  # 64 KB at a time until the poller hangs up
                writer.write(b"\x00\x01" * 32768)
                await writer.drain()
        except ConnectionError:
            hung_up.set()
        writer.close()

    async def run():
        with AsyncioTrouble() as trouble:
            server = await asyncio.start_server(device, "127.0.0.1", 0)
            bus = tcp_bus("127.0.0.1", server.sockets[0].getsockname()[1])
            try:
                with pytest.raises(BadReply) as failed:
                    await bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=30)
                await asyncio.wait_for(hung_up.wait(), 5)
            finally:
                bus.close()
                server.close()
                await server.wait_closed()
        trouble.check()
        return failed.value

    started = time.monotonic()
    error = asyncio.run(run())
    assert time.monotonic() - started < 5
    # 00 01 00 01 ...: transaction 1 matches, protocol id 1 does not
    assert "protocol id 1, not 0" in str(error) or "more than a reply can hold" in str(error)


def test_garbled_replies_fail_as_bad_replies_and_asyncio_logs_nothing():
    garbage = GarbageServer(seed=3)
    kinds = Counter()

    async def run():
        with AsyncioTrouble() as trouble:
            port = await garbage.start()
            bus = tcp_bus("127.0.0.1", port)
            try:
                for _ in range(200):
                    with pytest.raises(ModbusError) as failed:
                        await bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=0.3)
                    kinds[type(failed.value).__name__] += 1
            finally:
                bus.close()
                await garbage.stop()
        trouble.check()

    asyncio.run(run())
    # a byte or two that could still begin a reply waits for the rest: a timeout, rarely
    assert set(kinds) <= {"BadReply", "ResponseTimeout"} and kinds["BadReply"] >= 180, kinds


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(max_size=80), st.from_regex(r"[a-z0-9.\-]{0,70}", fullmatch=True)))
@example("192.168..10").via("issue 9")
@example(".meter").via("issue 9")
@example("a" * 64).via("issue 9: a label over 63 characters")
@example("a" * 64 + ".example").via("issue 9")
@example("\ud800").via("a lone surrogate")
@example("bad\x00host").via("a NUL")
@example("").via("empty")
@example("no-such-host.invalid").via("does not resolve")
def test_any_host_that_cannot_be_reached_is_a_connect_error(host):
    port = REFUSING_PORT

    async def run():
        with AsyncioTrouble() as trouble:
            bus = tcp_bus(host, port, connect_timeout=0.5)  # a lost DNS answer would cost 5 s
            try:
                with pytest.raises(ConnectError) as failed:
                    await bus.read(ReadBlock(HOLDING, 0, 1, ()), 1, timeout=0.1)
            finally:
                bus.close()
        trouble.check()
        return failed.value

    assert str(asyncio.run(run())).startswith(f"cannot connect to {host}:{port}: ")


def test_a_device_that_does_not_accept_the_connection_is_a_connect_error_after_the_connect_timeout():
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)  # one connection waits in the queue, never accepted; the next SYNs are dropped
        port = full.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):

            async def run():
                bus = tcp_bus("127.0.0.1", port, connect_timeout=0.3)
                with pytest.raises(ConnectError) as failed:
                    await bus.read(ReadBlock(HOLDING, 0, 1, ()), 1, timeout=0.1)
                return failed.value

            started = time.monotonic()
            error = asyncio.run(run())
    assert str(error) == f"cannot connect to 127.0.0.1:{port}: no answer within 0.3 s"
    assert 0.3 <= time.monotonic() - started < 3


def test_a_block_no_request_can_carry_is_refused_before_anything_is_sent(hung_port):
    async def run():
        bus = tcp_bus("127.0.0.1", hung_port)
        try:
            with pytest.raises(BadRequest, match="unit id 256 outside 0..255") as failed:
                await bus.read(ReadBlock(HOLDING, 0, 1, ()), 256, timeout=5)
            return failed.value, bus._connection
        finally:
            bus.close()

    error, connection = asyncio.run(run())
    assert connection is None and not error.breaks_connection


def test_a_cancelled_read_leaves_no_reply_behind_for_the_next_one():
    """The cycle is cancelled (the service stops) while a request is in flight: its reply,
    arriving later, must not be taken as the reply to the next read."""
    received = asyncio.Event()
    connections = []

    async def device(reader, writer):
        connections.append(writer)
        try:
            while True:
                tid, _, _, unit, fc, address, count = struct.unpack(">HHHBBHH", await reader.readexactly(12))
                received.set()
                if address == 1:
                    await asyncio.sleep(0.1)  # slow: the read is cancelled meanwhile
                writer.write(reply_bytes(tid, unit, fc, [address] * count))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def run():
        with AsyncioTrouble() as trouble:
            server = await asyncio.start_server(device, "127.0.0.1", 0)
            bus = tcp_bus("127.0.0.1", server.sockets[0].getsockname()[1])
            try:
                slow = asyncio.create_task(bus.read(ReadBlock(HOLDING, 1, 2, ()), 1, timeout=5))
                await received.wait()
                slow.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await slow
                words = await bus.read(ReadBlock(HOLDING, 2, 2, ()), 1, timeout=5)
            finally:
                bus.close()
                server.close()
                await server.wait_closed()
        trouble.check()
        return words

    assert asyncio.run(run()) == [2, 2]
    assert len(connections) == 2  # the cancelled request's connection was dropped


def test_concurrent_reads_on_one_bus_go_one_at_a_time_over_one_connection():
    """Whatever the callers do, one request is in flight per bus (the lock): 50 reads
    started at once reach the device one after the other, over one connection."""
    bank = {(4, a): a + 1 for a in range(100)}
    server = SimulatedServer(units={}, default=lambda: bank, latency_s=0.002)

    async def run():
        port = await server.start()
        bus = tcp_bus("127.0.0.1", port)
        try:
            blocks = [ReadBlock(INPUT, i, 1 + i % 20, ()) for i in range(50)]
            results = await asyncio.gather(*(bus.read(b, 1, timeout=10) for b in blocks),
                                           return_exceptions=True)
        finally:
            bus.close()
            await server.stop()
        return blocks, results

    blocks, results = asyncio.run(run())
    assert results == [[a + 1 for a in range(b.address, b.address + b.count)] for b in blocks]
    assert server.stats.requests == 50
    assert server.stats.max_in_flight == 1
    assert server.stats.connections == 1


def test_pause_is_the_least_time_between_the_end_of_one_request_and_the_start_of_the_next():
    events: list[tuple[str, float]] = []

    async def device(reader, writer):
        try:
            while True:
                tid, _, _, unit, fc, _, count = struct.unpack(">HHHBBHH", await reader.readexactly(12))
                events.append(("request", time.monotonic()))
                writer.write(reply_bytes(tid, unit, fc, [7] * count))
                await writer.drain()
                events.append(("reply", time.monotonic()))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def run():
        server = await asyncio.start_server(device, "127.0.0.1", 0)
        bus = tcp_bus("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            for _ in range(3):
                assert await bus.read(ReadBlock(HOLDING, 0, 2, ()), 1, timeout=5, pause=0.2) == [7, 7]
        finally:
            bus.close()
            server.close()
            await server.wait_closed()

    asyncio.run(run())
    assert [kind for kind, _ in events] == ["request", "reply"] * 3
    gaps = [events[i + 1][1] - events[i][1] for i in range(1, len(events) - 1, 2)]  # reply -> next request
    assert len(gaps) == 2 and min(gaps) >= 0.2, gaps
    assert max(gaps) < 0.5, gaps  # and not much more
