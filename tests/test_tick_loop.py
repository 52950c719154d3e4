"""Service._tick_loop against a wall clock that steps and an event loop that stalls, and the outbox hold.

The loop runs on a bare Service (the real Schedule, a fake watcher, a recording `_cycle`); the wall
clock is faked by replacing `poller.__main__.datetime` with one running at real time plus an offset
the test steps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

import poller.__main__ as main_mod
from poller.__main__ import Service, hold_seconds
from poller.model import DataType, DeviceType, FunctionCode, Meter, Register
from poller.monitor import Monitor
from poller.outbox import Outbox
from poller.schedule import Schedule

DTYPE = DeviceType("t", (Register(1, "t", 0, "v", "V", DataType.INT16, FunctionCode.READ_HOLDING_REGISTERS),))


def meter(mid: int, cron: str | None = None, enabled: bool = True) -> Meter:
    return Meter(mid, "h", 502, 1, DTYPE, poll_cron=cron, enabled=enabled)


class Clock:
    offset = timedelta(0)


class FakeDatetime(datetime):
    @classmethod
    def now(cls, tz=None):  # noqa: ANN001, ANN206
        return datetime.now(tz) + Clock.offset


@pytest.fixture
def wall(monkeypatch):
    monkeypatch.setattr(main_mod, "datetime", FakeDatetime)
    Clock.offset = timedelta(0)
    yield Clock
    Clock.offset = timedelta(0)


def service(cron: str, meters: tuple[Meter, ...], stop_after: int = 0):
    """A Service with what _tick_loop touches; its cycles record (tick, wall clock at start)."""
    svc = object.__new__(Service)
    svc.stop = asyncio.Event()
    svc.schedule = Schedule(cron)
    svc.running = {}
    svc.counting = set()
    svc.leases = None
    svc.late_streak = False
    svc.monitor = Monitor(60)
    svc.watcher = SimpleNamespace(current=SimpleNamespace(meters=meters), changed=asyncio.Event())
    starts: list[tuple[datetime, datetime]] = []

    async def cycle(tick, fired, meters):  # noqa: ANN001, ANN202
        starts.append((tick, FakeDatetime.now(UTC)))
        if stop_after and len(starts) >= stop_after:
            svc.stop.set()

    svc._cycle = cycle
    svc._configuration_changed = lambda config: None
    return svc, starts


async def run_for(svc: Service, seconds: float) -> None:
    asyncio.get_running_loop().call_later(seconds, svc.stop.set)
    await svc._tick_loop()
    await asyncio.gather(*svc.counting)


@pytest.mark.parametrize("step_s", [-1.5, +1.5])
def test_a_clock_step_during_the_sleep_neither_fires_a_tick_early_nor_late(wall, step_s):
    async def scenario():
        svc, starts = service("* * * * * */3", (meter(1),), stop_after=1)
        now = datetime.now(UTC)
        # the wall clock at 0.4 s past a multiple of 3 s: the first tick is 2.6 s away
        wall.offset = now.replace(second=now.second - now.second % 3, microsecond=400_000) - now

        def step():  # NTP steps the clock, 0.3 s into the sleep
            wall.offset += timedelta(seconds=step_s)

        asyncio.get_running_loop().call_later(0.3, step)
        await run_for(svc, 5.0)
        return starts

    starts = asyncio.run(scenario())
    assert starts, "no tick fired at all"
    tick, at = starts[0]
    late = (at - tick).total_seconds()
    assert 0 <= late < 0.5, f"tick {tick.time()} started at {at.time()}: {late:+.3f} s"


def test_a_timer_that_wakes_early_does_not_fire_a_tick_before_its_time(wall, monkeypatch):
    """uvloop's timers may wake up to a millisecond early: here every wait ends 5 ms early."""
    real_wait = asyncio.wait

    async def early_wait(fs, timeout=None, return_when=asyncio.ALL_COMPLETED):  # noqa: ANN001, ANN202
        return await real_wait(fs, timeout=None if timeout is None else max(0.0, timeout - 0.005),
                               return_when=return_when)

    monkeypatch.setattr(main_mod.asyncio, "wait", early_wait)

    async def scenario():
        svc, starts = service("* * * * * *", (meter(1),), stop_after=3)
        await run_for(svc, 5.0)
        return starts

    starts = asyncio.run(scenario())
    assert len(starts) == 3
    assert all(at >= tick for tick, at in starts), [(at - tick).total_seconds() for tick, at in starts]


def test_a_backward_step_during_the_sleep_re_plans_instead_of_waiting_the_step_out(wall, caplog):
    caplog.set_level(logging.WARNING, logger="poller.schedule")

    async def scenario():
        svc, starts = service("* * * * * */2", (meter(1),))

        def step():
            wall.offset -= timedelta(hours=1)

        asyncio.get_running_loop().call_later(2.3, step)  # after the first tick, during the next sleep
        await run_for(svc, 5.0)
        return starts

    starts = asyncio.run(scenario())
    assert starts, "no tick fired"
    after = [(t, at) for t, at in starts if t < starts[0][0] - timedelta(minutes=30)]
    assert len(after) >= 1, f"after the clock went back 1 h no tick fired within 2.7 s: {starts}"
    assert all(at >= t for t, at in after)
    warnings = [r.getMessage() for r in caplog.records if "went back" in r.getMessage()]
    assert len(warnings) == 1, warnings


def test_ticks_skipped_by_a_stalled_loop_are_counted_and_said_once(wall, caplog):
    caplog.set_level(logging.DEBUG, logger="poller")

    async def scenario():
        # two every-second meters; an every-minute one skips nothing in a 2.5 s stall
        svc, starts = service("* * * * * *", (meter(1), meter(2), meter(3, "* * * * *")))
        asyncio.get_running_loop().call_later(1.2, time.sleep, 2.5)  # GC, a slow synchronous call
        await run_for(svc, 5.0)
        return svc, starts

    svc, starts = asyncio.run(scenario())
    ticks = [t for t, _ in starts]
    lost = sum(int((b - a).total_seconds()) - 1 for a, b in zip(ticks, ticks[1:], strict=False))
    assert lost > 0, "the stall lost no tick: the test does not exercise the path"
    assert svc.monitor.ticks_late_skipped._value.get() == 2 * lost
    said = [r for r in caplog.records if "emm_meter_ticks_late_skipped_total" in r.getMessage()]
    assert [r.levelno for r in said][:1] == [logging.WARNING]
    assert all(r.levelno == logging.DEBUG for r in said[1:])
    assert not svc.late_streak, "the ticks after the stall were on time again"


def test_the_hold_is_half_the_fastest_meter_schedule():
    s = Schedule("* * * * * */10")  # POLL_CRON: every 10 s
    assert hold_seconds(s, ()) == 1.0
    assert hold_seconds(s, (meter(1), meter(2, "* * * * * *"))) == 0.5
    assert hold_seconds(s, (meter(1), meter(2, "* * * * * *", enabled=False))) == 1.0
    assert hold_seconds(Schedule("* * * * *"), (meter(1, "* * * * * */4"),)) == 1.0


def test_overlapping_cycles_do_not_extend_the_hold():
    """A hung device keeps one cycle running while every tick starts another: the readings of the
    first wait at most one hold, not until the overlap ends."""
    written: list[float] = []

    class Sink:
        url = "memory://"

        def write(self, lines):  # noqa: ANN001, ANN202
            written.append(time.monotonic())

        def close(self):  # noqa: ANN202
            pass

    box = Outbox(Sink(), None)
    try:
        start = time.monotonic()
        box.hold(0.5)  # the hung cycle: released after 1.5 s
        box.put(["m,k=0 v=1 0"])
        for k in range(1, 7):  # a short cycle every 0.2 s
            time.sleep(0.2)
            box.hold(0.5)
            box.put([f"m,k={k} v=1 {k}"])
            box.release()
        time.sleep(1.5 - (time.monotonic() - start))
        box.release()
        box.flush(5)
    finally:
        box.close()
    assert written and written[0] - start < 0.8, f"first write {written[0] - start:.2f} s after the first put"


def test_a_count_that_fails_is_said_and_the_service_goes_on(caplog):
    """The thread counting missed or late ticks raises (a bug): one ERROR with its traceback,
    nothing counted, nothing left waiting; the tick loop is not involved."""
    svc = object.__new__(Service)
    svc.counting = set()
    counted: list[int] = []

    def count() -> int:
        raise RuntimeError("croniter broke")

    async def scenario() -> None:
        svc._count_off_the_loop(count, counted.append, "the test's ticks")
        svc._count_off_the_loop(lambda: 3, counted.append, "the next ones")
        await asyncio.gather(*svc.counting, return_exceptions=True)
        await asyncio.sleep(0)  # the done callbacks

    with caplog.at_level(logging.ERROR, "poller"):
        asyncio.run(scenario())
    assert counted == [3] and svc.counting == set()
    assert [(r.getMessage(), r.exc_info is not None) for r in caplog.records] == [
        ("counting the test's ticks failed", True)]
