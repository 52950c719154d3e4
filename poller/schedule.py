"""Cron, in one place: which expressions are accepted, and which meters are due at which tick.

`validate_cron` is the only gate an expression passes (POLL_CRON in settings.py,
energy_meters.poll_cron in store.py): 5 fields, or 6 with seconds last, that
croniter reads and that fire at least once. `0 0 30 2 *` is a valid crontab line
that never fires (there is no 30 February); it is refused here, with a message.

`Schedule` is pure (no clock, no sleeping) and total: it never raises, whatever
expression it is given. Each distinct expression (POLL_CRON and every
energy_meters.poll_cron) has its own next fire time; the next tick is the earliest
of them, and the meters due then are those whose expression fires at that instant.
A tick that was missed (the process was busy or asleep) is not replayed: the next
fire time is always computed from the later of the tick and "now". An expression
seen for the first time (a meter added, or its poll_cron set or changed) is due at
its first slot after the `now` it is first seen with, so the caller asks again
with the new meters as soon as the configuration changes. An expression that
stops firing is dropped with one ERROR line, and its meters wait for a new one.

The wall clock may step (NTP, a VM resumed, an admin). Forward, the ticks it jumps
over are not replayed either (`late` says which fired expressions had slots skipped).
Back by more than BACKWARD_TOLERANCE behind the latest instant the schedule has
seen, every expression is re-planned from the new `now`, with one WARNING: waiting
for the old plan would leave every meter unpolled for the length of the step. The
instants between the new `now` and the old one come again, so a tick instant already
fired may fire a second time (its readings carry the time they were read at).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from croniter import CroniterBadDateError, croniter

from .model import Meter

log = logging.getLogger("poller.schedule")

CRON_FORMAT = "5 fields, or 6 with seconds last, e.g. '* * * * * */10' = every 10 s"

# With no expression left that fires (all dropped), the schedule still answers:
# "nothing before this long from now"; a configuration change asks again sooner.
IDLE = timedelta(minutes=1)

# A wall clock earlier than the latest instant seen by more than this is a step back (re-planned);
# less is left alone (a tick is then only waited for, never fired early).
BACKWARD_TOLERANCE = timedelta(seconds=2)

# cron's finest slot: two slots are at least this far apart, so a tick fired less than this
# late cannot have skipped one (`late` stays cheap when nothing is late)
SLOT = timedelta(seconds=1)


class CronError(ValueError):
    """A crontab expression that cannot be used; the message says what to change."""


def validate_cron(expr: str, what: str) -> str:
    """`expr` with its fields separated by single spaces, or CronError naming `what`.

    Accepted: exactly 5 fields (minute hour day month weekday) or 6 (seconds last,
    as croniter reads a sixth field), that croniter parses, and that fire at least
    once from now: `0 0 31 4 *` (31 April) is refused.
    """
    fields = str(expr).split()
    shown = " ".join(fields)
    if len(fields) not in (5, 6):
        extra = " (a year field is not supported)" if len(fields) == 7 else ""
        raise CronError(f"{what} {shown!r} is not a crontab expression ({CRON_FORMAT}): "
                        f"it has {len(fields)} field{'s' if len(fields) != 1 else ''}{extra}")
    try:
        valid = croniter.is_valid(shown)
    except Exception:  # noqa: BLE001 - croniter's own checks raising is a "no" too
        valid = False
    if not valid:
        raise CronError(f"{what} {shown!r} is not a crontab expression ({CRON_FORMAT})")
    try:
        croniter(shown, datetime.now(UTC)).get_next(datetime)
    except CroniterBadDateError:
        raise CronError(f"{what} {shown!r} never fires: no date matches it (such as 30 February or "
                        "31 April); choose a day that exists in the month(s) given") from None
    except Exception as exc:  # noqa: BLE001 - whatever croniter cannot compute is not usable
        raise CronError(f"{what} {shown!r} is not a crontab expression ({CRON_FORMAT}): {exc}") from None
    return shown


def _next_fire(expr: str, after: datetime) -> datetime:
    """The first instant after `after` at which `expr` fires; croniter's error when there is none."""
    return croniter(expr, after).get_next(datetime)


def fires_between(expr: str, after: datetime, before: datetime) -> int:
    """How often `expr` fires strictly between `after` and `before` (0 when it cannot say: an
    expression validate_cron refused). One step per fire: a day of a once-a-second schedule
    takes about 2 s, so callers count off the event loop (lease.py's gaps)."""
    count = 0
    try:
        it = croniter(expr, after.astimezone(UTC))  # the schedule's zone: another would fire at other times
        while it.get_next(datetime) < before:
            count += 1
    except Exception:  # noqa: BLE001 - a validated expression never gets here; one that stops firing does
        pass
    return count


def cron_interval_s(expr: str) -> float:
    """Seconds between the next two ticks of a crontab expression (infinite if it fires once or never)."""
    try:
        it = croniter(expr, datetime.now(UTC))
        first = it.get_next(datetime)
        return float((it.get_next(datetime) - first).total_seconds())
    except Exception:  # noqa: BLE001 - a validated expression never gets here
        return float("inf")


class Schedule:
    def __init__(self, default_cron: str) -> None:
        self.default_cron = default_cron
        self._next: dict[str, datetime] = {}
        self._dropped: set[str] = set()  # expressions that stopped firing, reported once
        self._latest: datetime | None = None  # the latest `now` or fired tick seen: a step back is below it

    def cron_of(self, meter: Meter) -> str:
        return meter.poll_cron or self.default_cron

    def _advance(self, expr: str, after: datetime) -> None:
        """Set the next fire time of `expr` after `after`, or drop it with one ERROR line."""
        try:
            self._next[expr] = _next_fire(expr, after)
        except Exception as exc:  # noqa: BLE001 - no expression may stop the schedule
            self._next.pop(expr, None)
            self._dropped.add(expr)
            reason = "no date matches it any more" if isinstance(exc, CroniterBadDateError) else str(exc)
            log.error("schedule %r has no next fire time after %s (%s): its meters are not polled until "
                      "their poll_cron (or POLL_CRON) changes", expr, after.isoformat(), reason)

    def next_tick(self, meters: Iterable[Meter], now: datetime) -> datetime:
        """The next instant at which any enabled meter (or the default schedule) is due.

        An expression not seen before is due at its first slot after `now`; after the clock
        went back (`went_back`), every expression is re-planned from `now`, with one WARNING.
        """
        if self.went_back(now):
            assert self._latest is not None
            log.warning("the wall clock went back by %.1f s (from %s to %s): every schedule is re-planned from "
                        "now, so meters are polled again from their next slot; the tick instants between the "
                        "two come round again, a meter may be polled twice for one tick instant (each reading "
                        "carries the time it was read at)", (self._latest - now).total_seconds(),
                        self._latest.isoformat(), now.isoformat())
            self._next.clear()
            self._latest = None
        self._latest = now if self._latest is None else max(self._latest, now)
        exprs = {self.default_cron} | {self.cron_of(m) for m in meters if m.enabled}
        for expr in list(self._next):
            if expr not in exprs:
                del self._next[expr]
        self._dropped &= exprs  # an expression given up on and then removed may come back
        for expr in exprs:
            if expr not in self._next and expr not in self._dropped:
                self._advance(expr, now)
        if not self._next:
            return now + IDLE
        return min(self._next.values())

    def fire(self, tick: datetime, now: datetime) -> frozenset[str]:
        """The expressions that fire at `tick`; each is advanced past `tick` and `now`."""
        fired = frozenset(e for e, t in self._next.items() if t <= tick)
        after = max(tick, now)
        self._latest = after if self._latest is None else max(self._latest, after)
        for expr in fired:
            self._advance(expr, after)
        return fired

    def went_back(self, now: datetime) -> bool:
        """The wall clock (`now`) is earlier than the latest instant seen by more than the tolerance."""
        return self._latest is not None and now < self._latest - BACKWARD_TOLERANCE

    @staticmethod
    def late(tick: datetime, now: datetime, fired: Iterable[str]) -> list[str]:
        """The fired expressions with at least one slot strictly between `tick` and `now` (skipped:
        `fire` jumps past `now`). Free when `tick` is less than a slot late; one croniter step per
        expression otherwise."""
        if now - tick <= SLOT:
            return []
        late = []
        for expr in fired:
            try:
                if _next_fire(expr, tick) < now:
                    late.append(expr)
            except Exception:  # noqa: BLE001 - an expression that stops firing skipped nothing
                pass
        return late

    def due(self, meters: Iterable[Meter], fired: frozenset[str]) -> list[Meter]:
        """The enabled meters whose schedule is among the fired expressions."""
        return [m for m in meters if m.enabled and self.cron_of(m) in fired]
