"""Which meters are due at which tick. Pure: no clock, no sleeping.

Each distinct crontab expression (POLL_CRON and every energy_meters.poll_cron)
has its own next fire time; the next tick is the earliest of them, and the
meters due then are those whose expression fires at that instant. A tick that
was missed (the process was busy or asleep) is not replayed: the next fire time
is always computed from the later of the tick and "now".
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from croniter import croniter

from .model import Meter


class Schedule:
    def __init__(self, default_cron: str) -> None:
        self.default_cron = default_cron
        self._next: dict[str, datetime] = {}

    def cron_of(self, meter: Meter) -> str:
        return meter.poll_cron or self.default_cron

    def next_tick(self, meters: Iterable[Meter], now: datetime) -> datetime:
        """The next instant at which any enabled meter (or the default schedule) is due."""
        exprs = {self.default_cron} | {self.cron_of(m) for m in meters if m.enabled}
        for expr in list(self._next):
            if expr not in exprs:
                del self._next[expr]
        for expr in exprs:
            if expr not in self._next:
                self._next[expr] = croniter(expr, now).get_next(datetime)
        return min(self._next.values())

    def fire(self, tick: datetime, now: datetime) -> frozenset[str]:
        """The expressions that fire at `tick`; each is advanced past `tick` and `now`."""
        fired = frozenset(e for e, t in self._next.items() if t <= tick)
        after = max(tick, now)
        for expr in fired:
            self._next[expr] = croniter(expr, after).get_next(datetime)
        return fired

    def due(self, meters: Iterable[Meter], fired: frozenset[str]) -> list[Meter]:
        """The enabled meters whose schedule is among the fired expressions."""
        return [m for m in meters if m.enabled and self.cron_of(m) in fired]
