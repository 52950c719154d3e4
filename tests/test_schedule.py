"""Which meters are due when, and which crontab expressions are accepted at all."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone

import pytest
from croniter import CroniterBadDateError, croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.model import DataType, DeviceType, FunctionCode, Meter, Register
from poller.schedule import CRON_FORMAT, IDLE, CronError, Schedule, cron_interval_s, fires_between, validate_cron
from poller.settings import DEFAULT_POLL_CRON, SettingsError, from_env

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


# --- cron owned by one module: validate_cron -------------------------------------------------

@pytest.mark.parametrize(("expr", "normalised"), [
    ("*/5 * * * *", "*/5 * * * *"),
    ("  * * * * * */10 ", "* * * * * */10"),
    ("0  12 * *\t1-5", "0 12 * * 1-5"),
    ("0 0 29 2 *", "0 0 29 2 *"),  # fires in leap years: rare, not never
    ("0 0 L 2 *", "0 0 L 2 *"),
])
def test_crons_that_fire_are_accepted_and_normalised(expr, normalised):
    assert validate_cron(expr, "POLL_CRON") == normalised


@pytest.mark.parametrize(("expr", "reason"), [
    ("0 0 30 2 *", "never fires: no date matches it"),  # 30 February
    ("0 0 31 4 *", "never fires: no date matches it"),  # 31 April
    ("0 0 31 2,4,6 *", "never fires"),
    ("0 0 1 1 1#5", "never fires"),  # a fifth Monday on 1 January
    ("* * * * * * *", "it has 7 fields (a year field is not supported)"),
    ("0 0 1 1 * 0 2099", "it has 7 fields"),
    ("@daily", "it has 1 field"),
    ("", "it has 0 fields"),
    ("every minute", "it has 2 fields"),
    ("* * * * * 61", "is not a crontab expression (5 fields, or 6 with seconds last"),
    ("*/0 * * * *", "is not a crontab expression"),
    ("* * * * mon#6", "is not a crontab expression"),
])
def test_crons_that_cannot_be_used_are_refused_with_a_message(expr, reason):
    with pytest.raises(CronError) as info:
        validate_cron(expr, "poll_cron")
    message = str(info.value)
    assert message.startswith(f"poll_cron {' '.join(expr.split())!r} ") and reason in message
    if "never fires" in reason:
        assert "choose a day that exists" in message  # says what to do


def test_croniter_s_validity_check_raising_is_a_no(monkeypatch):
    """croniter.is_valid raising instead of answering (a croniter bug) refuses the expression with
    the usual message; nothing but a CronError reaches settings.py or store.py."""
    def choke(cls, expression, *args, **kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr(croniter, "is_valid", classmethod(choke))
    with pytest.raises(CronError) as info:
        validate_cron("*/5 * * * *", "poll_cron")
    assert str(info.value) == f"poll_cron '*/5 * * * *' is not a crontab expression ({CRON_FORMAT})"


def test_croniter_failing_to_compute_the_next_fire_time_is_refused_with_its_reason(monkeypatch):
    """Any other error croniter raises for the first fire time (not "no date matches") is a
    CronError too, with croniter's words."""
    def overflow(self, *args, **kwargs):
        raise OverflowError("date value out of range")

    monkeypatch.setattr(croniter, "get_next", overflow)
    with pytest.raises(CronError) as info:
        validate_cron("*/5 * * * *", "poll_cron")
    assert str(info.value) == (f"poll_cron '*/5 * * * *' is not a crontab expression ({CRON_FORMAT}): "
                               "date value out of range")


@pytest.mark.parametrize("expr", ["0 0 30 2 *", "* * * * * * *", "nope"])
def test_poll_cron_that_cannot_be_used_is_a_settings_error(expr):
    with pytest.raises(SettingsError, match=r"^POLL_CRON '.*' (never fires|is not a crontab expression)"):
        from_env({"POLL_CRON": expr})
    assert from_env({"POLL_CRON": " */2  * * * * "}).poll_cron == "*/2 * * * *"


def test_cron_interval():
    assert cron_interval_s("* * * * * */10") == 10
    assert cron_interval_s("*/15 * * * *") == 900
    assert cron_interval_s("0 0 30 2 *") == float("inf")  # never validated: no interval, no exception


# --- Schedule never raises; what stops firing is dropped, said once ---------------------------

NEVER = "0 0 30 2 *"


def test_an_expression_that_never_fires_is_dropped_once_and_the_rest_goes_on(caplog):
    s = Schedule(DEFAULT_POLL_CRON)
    meters = [meter(1), meter(2, NEVER), meter(3, "* * * * * */15")]
    with caplog.at_level(logging.ERROR, logger="poller.schedule"):
        ticks = run(s, meters, T0, T0 + timedelta(seconds=30))
    assert ticks == [(T0 + timedelta(seconds=10), [1]), (T0 + timedelta(seconds=15), [3]),
                     (T0 + timedelta(seconds=20), [1]), (T0 + timedelta(seconds=30), [1, 3])]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and repr(NEVER) in errors[0] and "not polled until" in errors[0]


def test_a_dropped_expression_is_tried_again_once_it_was_out_of_the_configuration(caplog):
    s = Schedule(DEFAULT_POLL_CRON)
    with caplog.at_level(logging.ERROR, logger="poller.schedule"):
        s.next_tick([meter(2, NEVER)], T0)
        s.next_tick([meter(2, NEVER)], T0)
        s.next_tick([], T0)  # the meter's cron was changed away ...
        s.next_tick([meter(2, NEVER)], T0)  # ... and back: a new configuration, said again
    assert sum(r.levelno == logging.ERROR for r in caplog.records) == 2


def test_an_expression_that_stops_firing_later_is_dropped_in_fire(monkeypatch, caplog):
    import poller.schedule as schedule_module

    real = schedule_module._next_fire
    calls = {"n": 0}

    def next_fire(expr, after):
        if expr == "* * * * * */15":
            calls["n"] += 1
            if calls["n"] > 1:  # fires once, then croniter finds nothing more
                raise CroniterBadDateError("failed to find next date")
        return real(expr, after)

    monkeypatch.setattr(schedule_module, "_next_fire", next_fire)
    meters = [meter(1), meter(3, "* * * * * */15")]
    with caplog.at_level(logging.ERROR, logger="poller.schedule"):
        ticks = run(Schedule(DEFAULT_POLL_CRON), meters, T0, T0 + timedelta(seconds=40))
    assert ticks == [(T0 + timedelta(seconds=10), [1]), (T0 + timedelta(seconds=15), [3]),
                     (T0 + timedelta(seconds=20), [1]), (T0 + timedelta(seconds=30), [1]),
                     (T0 + timedelta(seconds=40), [1])]
    assert sum(r.levelno == logging.ERROR for r in caplog.records) == 1


def test_with_nothing_left_that_fires_the_schedule_idles_instead_of_raising():
    s = Schedule(NEVER)
    tick = s.next_tick([meter(1)], T0)
    assert tick == T0 + IDLE
    assert s.fire(tick, tick) == frozenset()
    assert s.due([meter(1)], frozenset()) == []


CRON_TOKENS = st.sampled_from(["*", "*/0", "*/7", "0", "1", "29", "30", "31", "2", "4", "L", "1#5", "mon#6",
                               "61", "-1", "1-5", "5-1", "a", "?", "H", "W", "15W", "", "@daily", "@reboot",
                               "1,2", "0-59/15", "\n", "Infinity"])
CRONS = st.one_of(st.lists(CRON_TOKENS, min_size=0, max_size=8).map(" ".join), st.text(max_size=30))


@settings(max_examples=300, deadline=None)
@given(default=CRONS, crons=st.lists(st.one_of(st.none(), CRONS), max_size=5),
       steps=st.lists(st.integers(0, 4000), min_size=1, max_size=6))
def test_schedule_never_raises_whatever_it_is_given(default, crons, steps):
    s = Schedule(default)
    meters = [meter(i, cron) for i, cron in enumerate(crons)]
    now = last = T0
    for step in steps:
        tick = s.next_tick(meters, now)
        # ticks only move forward (none fired twice); a caller that comes late (`now` past the next
        # fire time, as after a stall) gets that tick, fired at once, and the slots missed are skipped
        assert tick > last
        due = s.due(meters, s.fire(tick, max(tick, now)))
        assert all(m.enabled for m in due)
        last, now = tick, max(tick, now) + timedelta(milliseconds=step)
    # and whatever validate_cron accepts, it keeps firing
    for expr in [default, *[c for c in crons if c]]:
        try:
            ok = validate_cron(expr, "x")
        except CronError:
            continue
        t = Schedule(ok).next_tick([], T0)
        assert T0 < t < T0 + IDLE * 60 * 24 * 366 * 30


# --- a new or changed per-meter cron is due at its first slot after it is introduced ---------

def test_a_new_per_meter_cron_is_due_at_its_first_slot_after_the_change_is_seen():
    s = Schedule("*/1 * * * *")  # POLL_CRON: once a minute
    old = [meter(1)]
    assert s.next_tick(old, T0) == T0 + timedelta(minutes=1)
    # 12:00:26.5: the configuration changes (meter 2 every 3 s); the loop asks again with it
    seen = T0 + timedelta(seconds=26, milliseconds=500)
    new = [meter(1), meter(2, "* * * * * */3")]
    tick = s.next_tick(new, seen)
    assert tick == T0 + timedelta(seconds=27)
    assert [m.id for m in s.due(new, s.fire(tick, tick))] == [2]
    # its cron changed again at 12:00:28.2 (every 5 s): the first slot of the new one is 12:00:30
    seen = T0 + timedelta(seconds=28, milliseconds=200)
    changed = [meter(1), meter(2, "* * * * * */5")]
    tick = s.next_tick(changed, seen)
    assert tick == T0 + timedelta(seconds=30)
    assert [m.id for m in s.due(changed, s.fire(tick, tick))] == [2]
    assert s.next_tick(changed, tick) == T0 + timedelta(seconds=35)


# --- the whole messages an operator reads ------------------------------------------------------

FORMAT = "5 fields, or 6 with seconds last, e.g. '* * * * * */10' = every 10 s"


@pytest.mark.parametrize(("expr", "message"), [
    ("* * * *", f"POLL_CRON '* * * *' is not a crontab expression ({FORMAT}): it has 4 fields"),
    ("@daily", f"POLL_CRON '@daily' is not a crontab expression ({FORMAT}): it has 1 field"),
    ("0 0 1 1 * 0 2099", f"POLL_CRON '0 0 1 1 * 0 2099' is not a crontab expression ({FORMAT}): it has 7 fields "
                         "(a year field is not supported)"),
    ("* * * * * 61", f"POLL_CRON '* * * * * 61' is not a crontab expression ({FORMAT})"),
    ("0 0 31 4 *", "POLL_CRON '0 0 31 4 *' never fires: no date matches it (such as 30 February or 31 April); "
                   "choose a day that exists in the month(s) given"),
])
def test_a_refused_cron_gets_the_whole_message_with_what_to_change(expr, message):
    with pytest.raises(CronError) as info:
        validate_cron(expr, "POLL_CRON")
    assert str(info.value) == message


def test_the_error_line_of_a_dropped_expression_says_which_since_when_why_and_what_to_do(caplog):
    with caplog.at_level(logging.ERROR, logger="poller.schedule"):
        Schedule(DEFAULT_POLL_CRON).next_tick([meter(2, NEVER)], T0)
    assert [r.getMessage() for r in caplog.records] == [
        "schedule '0 0 30 2 *' has no next fire time after 2026-01-01T12:00:00+00:00 (no date matches it any "
        "more): its meters are not polled until their poll_cron (or POLL_CRON) changes"]


def test_an_expression_croniter_cannot_read_is_dropped_with_croniter_s_own_reason(caplog):
    """Schedule is total: an expression that never passed validate_cron costs its meters, with why."""
    with pytest.raises(Exception) as croniter_says:  # noqa: B017 - whatever croniter raises is the reason
        croniter("every minute", T0)
    with caplog.at_level(logging.ERROR, logger="poller.schedule"):
        s = Schedule("every minute")
        assert s.next_tick([meter(1)], T0) == T0 + IDLE
    assert [r.getMessage() for r in caplog.records] == [
        f"schedule 'every minute' has no next fire time after 2026-01-01T12:00:00+00:00 ({croniter_says.value}): "
        "its meters are not polled until their poll_cron (or POLL_CRON) changes"]
    assert not isinstance(croniter_says.value, CroniterBadDateError)  # so not "no date matches it"


# --------------------------------------------------------------------------- counting the ticks in a span

SPAN_START = datetime(2026, 3, 28, 22, 0, 0, tzinfo=UTC)  # the span crosses midnight and a month's end


@settings(max_examples=200, deadline=None)
@given(start_ms=st.integers(0, 3 * 3600 * 1000), length_ms=st.integers(0, 3600 * 1000),
       expr=st.sampled_from(["* * * * * *", "* * * * * */7", "*/5 * * * *", "0 * * * *", "0 0 * * *", "0 0 30 2 *"]))
def test_fires_between_counts_every_tick_strictly_inside_the_span(start_ms, length_ms, expr):
    """Against the ticks written out second by second (what `lease.Leases.count_gaps` relies on:
    neither end counted, the previous owner polled the first, the new one polls the last)."""
    after = SPAN_START + timedelta(milliseconds=start_ms)
    before = after + timedelta(milliseconds=length_ms)
    fields = expr.split()
    second = int(fields[5].removeprefix("*/")) if len(fields) == 6 and fields[5] != "*" else 1
    expected = 0
    t = after.replace(microsecond=0) + timedelta(seconds=1)
    while t < before:
        if len(fields) == 6:
            expected += t.second % second == 0
        elif expr == "*/5 * * * *":
            expected += t.second == 0 and t.minute % 5 == 0
        elif expr == "0 * * * *":
            expected += (t.minute, t.second) == (0, 0)
        elif expr == "0 0 * * *":
            expected += (t.hour, t.minute, t.second) == (0, 0, 0)
        t += timedelta(seconds=1)
    assert fires_between(expr, after, before) == expected
    # the same instants written in another zone (as a database in another TimeZone hands them back)
    assert fires_between(expr, after.astimezone(timezone(timedelta(hours=5, minutes=30))), before) == expected


# --- the wall clock steps: back (re-planned, said once), forward (slots skipped, named) ------

def test_a_backward_step_re_plans_every_schedule_from_now_and_says_so_once(caplog):
    s = Schedule("* * * * * */10")
    meters = [meter(1), meter(2, "*/1 * * * *")]
    tick = s.next_tick(meters, T0)
    s.fire(tick, tick)
    now = tick - timedelta(hours=1)  # the VM's clock corrected one hour back
    with caplog.at_level(logging.WARNING, logger="poller.schedule"):
        nxt = s.next_tick(meters, now)
        assert nxt == now + timedelta(seconds=10)  # not an hour of no polling
        assert s.next_tick(meters, now + timedelta(seconds=1)) == nxt  # re-planned once, not at every call
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "went back by 3600.0 s" in caplog.records[0].getMessage()
    # the instants between come round again: tick itself fires a second time, an hour on
    assert tick in [t for t, _ in run(s, meters, nxt, tick)]


def test_a_step_back_within_the_tolerance_is_waited_for_not_re_planned(caplog):
    s = Schedule("* * * * * */10")
    tick = s.next_tick([meter(1)], T0)
    s.fire(tick, tick + timedelta(milliseconds=500))
    with caplog.at_level(logging.WARNING, logger="poller.schedule"):
        assert s.next_tick([meter(1)], tick - timedelta(seconds=1)) == tick + timedelta(seconds=10)
    assert not caplog.records and not s.went_back(tick - timedelta(seconds=1))
    assert s.went_back(tick - timedelta(seconds=3))


def test_late_names_the_fired_expressions_that_skipped_a_slot():
    tick = T0
    fired = ["* * * * * *", "* * * * *"]  # every second, every minute
    assert Schedule.late(tick, tick + timedelta(milliseconds=999), fired) == []
    assert Schedule.late(tick, tick + timedelta(seconds=1), fired) == []  # the next slot is now: fired next
    assert Schedule.late(tick, tick + timedelta(seconds=5, milliseconds=300), fired) == ["* * * * * *"]
    assert sorted(Schedule.late(tick, tick + timedelta(minutes=2), fired)) == sorted(fired)
