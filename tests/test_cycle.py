"""The cycle's promises, each pinned: readings taken before a failure are kept, busy
devices get exactly three more tries, failing meters back off, a bug in one meter
stays in that meter, and a stop in the middle of a meter keeps what it read.

The bus is faked through the Poller's `connect` seam (fault injection); the main
paths run against real sockets in test_faults.py, test_devices.py and the end-to-end tests.
"""

from __future__ import annotations

import asyncio

import pytest

from poller.cycle import MAX_BACKOFF_CYCLES, Poller
from poller.modbus import ExceptionReply, NotOwner, ResponseTimeout
from poller.model import DataType, DeviceType, FunctionCode, Meter, ReadBlock, Register

HOLDING = FunctionCode.READ_HOLDING_REGISTERS


def register(rid: int, address: int) -> Register:
    return Register(rid, "t", address, f"m{rid}", "V", DataType.UINT16, HOLDING)


# Two blocks: 0..1 and 100..101 (max_gap 0 keeps them apart).
DTYPE = DeviceType("t", (register(1, 0), register(2, 1), register(3, 100), register(4, 101)), max_gap=0,
                   timeout_s=0.5)


def meter(mid: int = 1, unit: int = 1) -> Meter:
    return Meter(mid, "bus.test", 502, unit, DTYPE)


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def put(self, lines):
        self.lines.extend(lines)


class FakeBus:
    """A bus stand-in: answers `block.address + i` for each word, or what `script` says."""

    def __init__(self, script=None) -> None:
        self.script = script or (lambda n, block, unit: None)
        self.requests: list[tuple[int, int]] = []  # (unit, address)
        self.closed = 0

    def __call__(self, address):
        return self

    async def read(self, block: ReadBlock, unit: int, timeout: float, pause: float = 0.0,
                   connect_pause: float = 0.0, fence=None) -> list[int]:
        self.requests.append((unit, block.address))
        action = self.script(len(self.requests), block, unit)
        if isinstance(action, BaseException):
            raise action
        if action == "hang":
            await asyncio.sleep(3600)
        return [block.address + i for i in range(block.count)]

    def close(self) -> None:
        self.closed += 1


def values(lines: list[str]) -> dict[str, float]:
    return {ln.split(",")[0]: float(ln.split(" value=")[1].split()[0]) for ln in lines}


def test_readings_taken_before_a_mid_way_failure_are_kept():
    bus = FakeBus(lambda n, block, unit: ResponseTimeout("no reply") if block.address == 100 else None)
    out = Lines()
    report = asyncio.run(Poller(out, status_points=False, connect=bus).run_cycle([meter()]))
    assert report.meters_failed == 1 and report.readings == 2
    assert values(out.lines) == {"m1": 0.0, "m2": 1.0}


@pytest.mark.parametrize("busy_replies, ok", [(3, True), (4, False)])
def test_a_busy_device_is_asked_three_more_times(busy_replies, ok):
    def script(n, block, unit):
        if block.address == 0 and n <= busy_replies:
            return ExceptionReply(6, block, unit)
        return None

    bus = FakeBus(script)
    report = asyncio.run(Poller(Lines(), status_points=False, connect=bus).run_cycle([meter()]))
    first_block = [r for r in bus.requests if r[1] == 0]
    assert len(first_block) == min(busy_replies + 1, 4)
    assert (report.meters_ok == 1) is ok
    assert report.results[0].errors == min(busy_replies, 4)


def test_a_failing_meter_backs_off_exponentially_and_the_others_do_not():
    dead = 9
    bus = FakeBus(lambda n, block, unit: ResponseTimeout("no reply") if unit == dead else None)
    poller = Poller(Lines(), status_points=False, connect=bus)
    cycles = 40

    async def run():
        return [await poller.run_cycle([meter(1, 1), meter(2, dead)]) for _ in range(cycles)]

    reports = asyncio.run(run())
    tried = [i for i, r in enumerate(reports) if not r.results[1].backed_off]
    # failures in a row n = 1, 2, 3 ... sit out 0, 1, 3, 7, 15, 31, 32 cycles
    expected, cycle, n = [], 0, 1
    while cycle < cycles:
        expected.append(cycle)
        cycle += 1 + min(2 ** (n - 1) - 1, MAX_BACKOFF_CYCLES)
        n += 1
    assert tried == expected == [0, 1, 3, 7, 15, 31]
    assert all(r.results[0].ok for r in reports)  # the healthy neighbour is read every cycle
    assert [r.meters_backed_off for r in reports].count(1) == cycles - len(expected)


def test_a_recovered_meter_is_read_every_cycle_again():
    down = {"now": True}
    bus = FakeBus(lambda n, block, unit: ResponseTimeout("no reply") if down["now"] else None)
    poller = Poller(Lines(), status_points=False, connect=bus)

    async def run():
        for _ in range(4):  # failures 1 and 2 (0 and 1 cycles out), 3rd try at cycle 3
            await poller.run_cycle([meter()])
        down["now"] = False
        return [await poller.run_cycle([meter()]) for _ in range(8)]

    reports = asyncio.run(run())
    # it may still sit out what the last failure earned, then it is read every cycle
    states = ["ok" if r.meters_ok else "out" if r.meters_backed_off else "failed" for r in reports]
    first_ok = states.index("ok")
    assert states[first_ok:] == ["ok"] * (len(states) - first_ok) and first_ok <= 3


def test_a_bug_in_one_meter_fails_that_meter_only_and_is_logged_once(caplog):
    def script(n, block, unit):
        if unit == 2:
            return ZeroDivisionError("boom")
        return None

    bus = FakeBus(script)
    out = Lines()
    poller = Poller(out, status_points=True, connect=bus)

    async def run():
        return [await poller.run_cycle([meter(1, 1), meter(2, 2)]) for _ in range(2)]

    with caplog.at_level("DEBUG", logger="poller"):
        reports = asyncio.run(run())
    first = reports[0]
    assert first.meters_ok == 1 and first.meters_failed == 1 and first.readings == 4
    assert "internal error: ZeroDivisionError: boom" in str(first.results[1].error)
    tracebacks = [r for r in caplog.records if r.exc_info and "internal error while polling" in r.getMessage()]
    assert len(tracebacks) == 1
    # the failed meter still gets its poller_status point, with up=0
    status = [ln for ln in out.lines if ln.startswith("poller_status") and "meter=2" in ln]
    assert status and all(" up=0.0," in ln for ln in status)


def test_the_next_meters_request_goes_out_before_the_last_reply_is_decoded(monkeypatch):
    """A bus's next request is sent the moment a reply is in; decoding that reply fills the wait
    for the next one (what makes a cycle about as short as its slowest bus)."""
    import poller.cycle as cycle

    class WireBus(FakeBus):
        async def read(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            words = await super().read(*args, **kwargs)  # the request is sent ...
            await asyncio.sleep(0)  # ... and the reply waited for, as on a wire
            return words

    bus = WireBus()
    seen_at_decode: list[int] = []
    real = cycle.Poller._decode

    def decode(self, meter, result, read):  # type: ignore[no-untyped-def]
        seen_at_decode.append(len(bus.requests))
        return real(self, meter, result, read)

    monkeypatch.setattr(cycle.Poller, "_decode", decode)
    out = Lines()
    report = asyncio.run(Poller(out, status_points=True, connect=bus).run_cycle([meter(1, 1), meter(2, 2),
                                                                                  meter(3, 3)]))
    per_meter = len(bus.requests) // 3
    assert report.meters_ok == 3 and report.readings == 12 and len(out.lines) == 15
    # meter 1 decoded once meter 2's first request was out, meter 2 once meter 3's was
    assert seen_at_decode[:2] == [per_meter + 1, 2 * per_meter + 1], (seen_at_decode, per_meter)


def test_a_bug_in_decoding_fails_that_meter_only_and_the_report_counts_it(monkeypatch, caplog):
    import poller.cycle as cycle

    real = cycle.Poller._decode

    def decode(self, meter, result, read):  # type: ignore[no-untyped-def]
        if len(decode.calls) == 1:  # the second meter of the cycle
            decode.calls.append(1)
            raise ZeroDivisionError("boom")
        decode.calls.append(1)
        return real(self, meter, result, read)

    decode.calls = []  # type: ignore[attr-defined]
    monkeypatch.setattr(cycle.Poller, "_decode", decode)
    out = Lines()
    with caplog.at_level("DEBUG", logger="poller"):
        report = asyncio.run(Poller(out, status_points=True, connect=FakeBus()).run_cycle([meter(1, 1), meter(2, 2)]))
    assert (report.meters_ok, report.meters_failed, report.readings) == (1, 1, 4), report
    assert "internal error: ZeroDivisionError: boom" in str(report.results[1].error)
    assert [r for r in caplog.records if r.exc_info and "internal error while polling" in r.getMessage()]
    status = [ln for ln in out.lines if ln.startswith("poller_status") and "meter=2" in ln]
    assert len(status) == 1 and " up=0.0," in status[0]


def test_a_stop_in_the_middle_of_a_meter_keeps_what_it_read():
    bus = FakeBus(lambda n, block, unit: "hang" if block.address == 100 else None)
    out = Lines()
    poller = Poller(out, status_points=False, connect=bus)

    async def run():
        task = asyncio.create_task(poller.run_cycle([meter()]))
        while len(bus.requests) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert values(out.lines) == {"m1": 0.0, "m2": 1.0}


@pytest.mark.parametrize("sent", [False, True])
def test_a_meter_whose_bus_lease_ended_is_handed_off_with_the_requests_that_reached_the_device(sent):
    """A request held back by the lease (NotOwner) is no request made; one the process wrote late
    (paused as it sent it, transport.py) reached the device and counts, though its reply is
    thrown away. Either way the meter is handed off, not failed, and what was read is kept."""
    bus = FakeBus(lambda n, block, unit: NotOwner("lease over", sent=sent) if block.address == 100 else None)
    out = Lines()
    report = asyncio.run(Poller(out, status_points=False, connect=bus).run_cycle([meter()]))
    (result,) = report.results
    assert result.handed_off and not result.error and report.meters_failed == 0
    assert result.requests == (2 if sent else 1) and len(bus.requests) == 2
    assert values(out.lines) == {"m1": 0.0, "m2": 1.0}


def test_a_host_port_busy_with_an_earlier_cycle_sits_the_tick_out():
    release = asyncio.Event()

    class Slow(FakeBus):
        async def read(self, block, unit, timeout, pause=0.0, connect_pause=0.0, fence=None):
            self.requests.append((unit, block.address))
            if unit == 1:
                await release.wait()
            return [0] * block.count

    bus = Slow()
    poller = Poller(Lines(), status_points=False, connect=bus)
    other = Meter(2, "other.test", 502, 2, DTYPE)

    async def run():
        first = asyncio.create_task(poller.run_cycle([meter()]))
        await asyncio.sleep(0.05)
        second = await poller.run_cycle([meter(), other])
        release.set()
        return await first, second

    first, second = asyncio.run(run())
    assert second.buses_busy == 1 and second.meters_ok == 1  # the other bus was read
    assert first.meters_ok == 1
    assert bus.requests.count((1, 0)) == 1  # never asked twice at once


def test_status_point_fields():
    out = Lines()
    asyncio.run(Poller(out, connect=FakeBus()).run_cycle([meter()]))
    (status,) = [ln for ln in out.lines if ln.startswith("poller_status")]
    fields = dict(kv.split("=") for kv in status.split(" ")[1].split(","))
    assert fields["up"] == "1.0" and fields["requests"] == "2.0" and fields["readings"] == "4.0"
    assert fields["errors"] == "0.0" and float(fields["duration_s"]) >= 0
