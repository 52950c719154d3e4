"""Which meters are due when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from poller.model import DataType, DeviceType, FunctionCode, Meter, Register
from poller.schedule import Schedule
from poller.settings import DEFAULT_POLL_CRON

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
DTYPE = DeviceType("t", (Register(1, "t", 0, "v", "V", DataType.INT16, FunctionCode.READ_HOLDING_REGISTERS),))


def meter(mid: int, cron: str | None = None, enabled: bool = True) -> Meter:
    return Meter(mid, "h", 502, 1, DTYPE, poll_cron=cron, enabled=enabled)


def run(schedule: Schedule, meters, start: datetime, until: datetime):
    """Simulate the loop: [(tick, [meter ids due])] with no time lost."""
    out, now = [], start
    while True:
        tick = schedule.next_tick(meters, now)
        if tick > until:
            return out
        out.append((tick, [m.id for m in schedule.due(meters, schedule.fire(tick, tick))]))
        now = tick


def test_default_is_every_ten_seconds():
    ticks = run(Schedule(DEFAULT_POLL_CRON), [meter(1)], T0, T0 + timedelta(seconds=30))
    assert ticks == [(T0 + timedelta(seconds=s), [1]) for s in (10, 20, 30)]


def test_per_meter_schedules_and_disabled_meters():
    meters = [meter(1), meter(2, "* * * * * */15"), meter(3, "*/1 * * * *"), meter(4, enabled=False)]
    ticks = dict(run(Schedule(DEFAULT_POLL_CRON), meters, T0, T0 + timedelta(seconds=60)))
    assert ticks[T0 + timedelta(seconds=10)] == [1]
    assert ticks[T0 + timedelta(seconds=15)] == [2]
    assert ticks[T0 + timedelta(seconds=30)] == [1, 2]
    assert ticks[T0 + timedelta(seconds=60)] == [1, 2, 3]  # the minute schedule fires once a minute
    assert all(4 not in due for due in ticks.values())
    assert sum(3 in due for due in ticks.values()) == 1


def test_missed_ticks_are_not_replayed():
    s = Schedule("* * * * * *")
    tick = s.next_tick([meter(1)], T0)
    late = tick + timedelta(seconds=5, milliseconds=300)  # the process stalled for 5 s
    s.fire(tick, late)
    assert s.next_tick([meter(1)], late) == tick + timedelta(seconds=6)
