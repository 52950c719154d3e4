"""Several pollers, one fleet: each bus is polled by the one instance that holds its lease.

With POLL_COORDINATION=postgres, instances share the fleet through two tables
(db/init.sql): `poller_instances` (one row per live instance, renewed at every
heartbeat) and `bus_leases` (one row per bus: its owner, an epoch that grows with
every change of owner, and when the lease expires). Every `heartbeat_s` an instance
runs one short transaction (`Leases.beat`):

1. it renews its own row and counts the live instances; its fair share is
   ceil(buses / live instances);
2. it renews the leases it holds (expires_at = now() + lease_s), but only those that
   have not expired: a lease that ran out while the instance was stopped, partitioned
   or cut off from PostgreSQL is gone, whoever holds it now;
3. it gives back the buses beyond its share (a joining instance takes them) and
   those no longer configured;
4. it claims free or expired buses up to its share (INSERT ... ON CONFLICT DO UPDATE
   WHERE the lease expired: two instances claiming one bus serialise on its row, and
   the second finds it taken).

The beats of all instances take turns: each transaction first takes one advisory lock
(pg_advisory_xact_lock(BEAT_LOCK), held to its end). A beat lasts milliseconds, so the
turns cost nothing, and two beats never lock rows in opposite orders: without them, one
instance giving back a bus it no longer has configured while another claims it, and the
other way round on a second bus, was a deadlock PostgreSQL ended by failing one of the
beats (tests/test_lease.py found it, five instances beating at once).

Fencing, the rule that makes a stopped instance harmless when it comes back: an
instance polls a bus only while its *local* view of the lease is valid, and that
view ends before the lease in PostgreSQL does. The local deadline is the monotonic
clock read *before* the transaction began, plus lease_s; PostgreSQL's expires_at is
its now() (the transaction's start, later) plus lease_s. A request is sent only if
its whole reply window ends before the local deadline (transport.py reads the fence
just before the bytes go out, nothing yields in between), so every request of the
old owner is over before another instance can claim the bus, and an instance that
wakes from SIGSTOP after its lease ran out sends nothing, not even once: its
deadline is past by its own clock, and a renewal finds the lease expired or taken.
What no lease can fence (Modbus devices check no token): a pause that lands in the
microseconds between that check and the write() itself.

A bus given back keeps its lease until the in-flight request of the old owner could
still be answered: expires_at = least(expires_at, now() + grace), grace = the
longest reply window its meters have (their timeout, plus the frames' time on the
wire for serial) plus one second. The giver stops sending part-way through the
transaction (after its turn and the renewal), while now() is the transaction's start:
the grace is lengthened by the time from the beat's start to that stop. A bus whose
meters' timeouts were just lowered keeps the longer grace while a cycle polls it with
the old ones (poller/__main__.py `_wanted_buses`). A clean stop that had to cancel
cycles gives the buses back with their graces too: a request cut short may still be
answered (`release_all`).

The lease lasts POLL_LEASE_S, or longer when a meter's reply window needs it: a renewed
lease has at least lease_s - heartbeat_s left, and the slowest meter's window (its grace)
must fit in that, so lease >= longest grace + 2 heartbeats (`effective_lease_s`).

Takeover bound: an instance that dies has renewed last at most `heartbeat_s`
before; its leases expire lease_s after that renewal, the others claim them at
their next heartbeat (<= heartbeat_s later) and poll them from the next tick: at
most lease_s + heartbeat_s + one poll interval after the death, and heartbeat_s is
at most one poll interval (`heartbeat_s()`), so within lease_s + 2 poll intervals.

The ticks a change of instance costs (`take`, `count_gaps`): bus_leases.polled_through is
the latest tick the owner polled the bus at, written at every heartbeat, when the bus is
given back (under a lock with the tick's check, so no tick is polled after the value given
back) and at a clean stop; a claim keeps the previous owner's, or sets the claim's time on a
bus nobody polled yet. The claimer, at its first tick on the bus, counts each meter's ticks
strictly between the two. Exact for a bus given back; after a death, the ticks polled after
the last heartbeat are counted too (an upper bound, by at most one heartbeat's ticks).

Buses are identified by `bus_key`: the transport kind, host and port (serial: the
device path). A serial bus is only meaningful across instances that see the same
device, i.e. on one host.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .config import NoAnswer, _Session, session_dsn
from .model import BusAddress, Meter, SerialLine, Transport
from .schedule import fires_between
from .settings import Settings

log = logging.getLogger("poller.lease")

GRACE_MARGIN_S = 1.0  # on top of the longest reply window, before a given-back bus may be claimed
RETRY_S = 1.0  # after a failed heartbeat (PostgreSQL away): try again this soon
KEEP_DEAD_S = 86400  # rows of instances and buses gone this long are deleted


def bus_key(address: BusAddress) -> str:
    """The bus's name in bus_leases: `tcp host:502`, `udp host:502`, `serial /dev/ttyUSB0`."""
    kind, host, port = address.wire
    return f"serial {host}" if kind == "serial" else f"{kind} {host}:{port}"


def grace_s(meters: list[Meter]) -> float:
    """How long a request on these meters' bus may still be answered after its owner stopped
    sending: the longest timeout, plus the longest request and reply on the wire for serial."""
    longest = 0.0
    for meter in meters:
        window = meter.device_type.timeout_s
        if meter.transport is Transport.SERIAL:
            # a read request (8 bytes) and the largest reply (5 + 250 bytes) on the wire
            window += (8 + 255) * (meter.line or SerialLine()).char_time_s
        longest = max(longest, window)
    return longest + GRACE_MARGIN_S


def wanted_buses(meters: list[Meter] | tuple[Meter, ...]) -> dict[str, float]:
    """The buses of the enabled meters, each with its grace (`grace_s`)."""
    by_bus: dict[str, list[Meter]] = {}
    for meter in meters:
        if meter.enabled:
            by_bus.setdefault(bus_key(meter.bus), []).append(meter)
    return {key: grace_s(group) for key, group in by_bus.items()}


# the advisory lock the beats take turns by (any bigint that nothing else in the database uses)
BEAT_LOCK = int.from_bytes(b"emm-beat", "big") & 0x7FFF_FFFF_FFFF_FFFF


def heartbeat_s(lease_s: float, interval_s: float) -> float:
    """A quarter of the lease, at most one poll interval (the takeover bound needs it), at least 0.5 s."""
    return max(0.5, min(lease_s / 4, interval_s))


def effective_lease_s(lease_s: float, heartbeat: float, longest_grace_s: float) -> float:
    """POLL_LEASE_S, or longer when the slowest meter's reply window needs it (Leases._set_lease)."""
    return max(lease_s, longest_grace_s + 2 * heartbeat)


def instance_name() -> str:
    """This instance's row in poller_instances: host, process id and a random part (a restarted
    container may reuse both)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass
class BeatResult:
    live: int  # live instances, this one included
    share: int  # the most buses this instance holds
    owned: int  # buses held after the beat
    claimed: list[str]
    released: list[str]
    lost: list[str]  # held before, expired or taken by now


class SharedFences:
    """The lease deadlines in shared memory, so worker processes (workers.py) fence their
    requests with the very deadlines the main process keeps. One slot per bus key, given
    out in the main process (`slot`); a slot holds a monotonic time (CLOCK_MONOTONIC is one
    clock for every process on the host), 0.0 when the bus is not held. Only the main
    process writes; an aligned 8-byte double is read whole. Slots are never reused, so a
    worker that reads a slot while the main process grows the table reads a right value."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        import multiprocessing

        self.capacity = capacity
        self.values: Any = multiprocessing.get_context("spawn").RawArray("d", capacity)
        self.slots: dict[str, int] = {}

    def slot(self, key: str) -> int:
        slot = self.slots.get(key)
        if slot is None:
            if len(self.slots) >= self.capacity:
                raise RuntimeError(f"more than {self.capacity} buses: SharedFences capacity exceeded")
            slot = self.slots[key] = len(self.slots)
        return slot

    def set(self, key: str, until: float) -> None:
        self.values[self.slot(key)] = until


# Where a bus's missed ticks are counted from: its latest tick polled (or the claim), or the latest
# change of the configuration when that is later (poller/lease.py, README "Several pollers")
_COUNTED_FROM = "greatest(l.polled_through, (SELECT max(changed_at) FROM config_version))"


class Leases:
    """This instance's leases: `until(bus)` for the fence, `beat()` (blocking) to keep them."""

    def __init__(self, settings: Settings, lease_s: float, heartbeat_s: float, instance: str | None = None,
                 answer_timeout_s: float | None = None) -> None:
        self.settings = settings
        self.lease_s = lease_s  # POLL_LEASE_S; a beat may use a longer one (effective_lease_s)
        self.effective_lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self.instance = instance or instance_name()
        self.answer_timeout_s = answer_timeout_s or max(2.0, heartbeat_s)
        self.where = f"PostgreSQL {settings.postgres_user}@{settings.postgres_host}:{settings.postgres_port}"
        self._until: dict[str, float] = {}  # bus key -> monotonic time the right to poll it ends
        self.shared = SharedFences()  # the same deadlines, for worker processes (workers.py)
        self._session: _Session | None = None
        self._down = False
        self.takeovers = 0  # buses claimed from an instance whose lease had expired
        self.beats_failed = 0
        self.beat_ok_at: float | None = None  # time.monotonic() of the latest heartbeat PostgreSQL answered
        self._lock = threading.Lock()  # one transaction at a time: a beat, or the release at stop
        self.on_change: Callable[[], None] = lambda: None  # the buses held changed (called in the event loop)
        # the ticks (README, "Several pollers": what a change of instance costs, counted)
        self._ticks_lock = threading.Lock()  # a tick's check and record against a bus given back meanwhile
        self._polled: dict[str, datetime] = {}  # bus key -> the latest tick it was polled at, here or before
        self._gaps: dict[str, datetime] = {}  # claimed, not polled here yet -> the previous owner's latest tick
        self._tracked: bool | None = None  # bus_leases.polled_through exists (None: not asked yet)
        self._graces: dict[str, float] = {}  # the latest beat's: bus key -> its grace (`wanted_buses`)
        self.ticks_missed = 0  # meter-ticks no instance polled while their bus changed instance (`count_gaps`)

    # --- read by the poll path (any thread or the event loop; a dict lookup) ---

    def until(self, address: BusAddress) -> float:
        """The monotonic time this instance's right to poll `address` ends (0: it holds no lease)."""
        return self.until_key(bus_key(address))

    def until_key(self, key: str) -> float:
        return self._until.get(key, 0.0)

    def owns(self, address: BusAddress) -> bool:
        return self.until_key(bus_key(address)) > time.monotonic()

    def take(self, tick: datetime, due: Iterable[Meter]) -> tuple[list[Meter], dict[str, datetime]]:
        """The due meters whose bus this instance holds, and the buses it polls at `tick` for the
        first time since it claimed them, each with the tick their ticks are counted from (the
        previous owner's latest, or the claim's time, or the latest change of the configuration
        when that is later: `_COUNTED_FROM`): the ticks in between had no poll (`gaps`).
        Each bus held is recorded as polled at `tick` (bus_leases.polled_through at the next
        heartbeat)."""
        mine: list[Meter] = []
        held: dict[BusAddress, bool] = {}
        gaps: dict[str, datetime] = {}
        with self._ticks_lock:  # a bus given back meanwhile is either not polled or recorded as polled
            now = time.monotonic()
            for meter in due:
                owned = held.get(meter.bus)
                if owned is None:
                    key = bus_key(meter.bus)
                    owned = held[meter.bus] = self._until.get(key, 0.0) > now
                    if owned:
                        self._polled[key] = tick
                        if (since := self._gaps.pop(key, None)) is not None:
                            gaps[key] = since
                if owned:
                    mine.append(meter)
        return mine, gaps

    def count_gaps(self, tick: datetime, gaps: Mapping[str, datetime], crons: Mapping[str, list[str]]) -> int:
        """The meter-ticks `take`'s gaps cost: for each bus, the ticks each of its meters' schedules
        (`crons`, one per meter) had strictly between the previous owner's latest tick and `tick`.
        Blocking (croniter, one step per tick: call it off the event loop); added to ticks_missed."""
        missed = 0
        memo: dict[tuple[str, datetime], int] = {}
        for key, since in gaps.items():
            for expr in crons.get(key, ()):
                if (expr, since) not in memo:
                    memo[expr, since] = fires_between(expr, since, tick)
                missed += memo[expr, since]
        self.missed(missed)
        return missed

    def missed(self, meter_ticks: int) -> None:
        """Meter-ticks not (fully) polled because a bus changed instance: the gaps, and the meters a
        poll left when its lease ended (CycleReport.meters_handed_off)."""
        with self._ticks_lock:
            self.ticks_missed += meter_ticks

    def held(self) -> set[str]:
        now = time.monotonic()  # copy(): atomic, while the beat's thread may change the dict
        return {key for key, until in self._until.copy().items() if until > now}

    def _set(self, key: str, until: float | None) -> None:
        """The one place a deadline changes: here and, for worker processes, in shared memory."""
        if until is None:
            self._until.pop(key, None)
        else:
            self._until[key] = until
        self.shared.set(key, until or 0.0)

    # --- the heartbeat ---

    def _query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        assert self._session is not None
        return self._session.query(sql, params or ())  # type: ignore[arg-type]

    def beat(self, wanted: Mapping[str, float]) -> BeatResult:
        """One heartbeat: renew, give back, claim (one transaction). Blocking and bounded;
        raises psycopg2.Error, NoAnswer or OSError when PostgreSQL cannot be reached."""
        with self._lock:
            return self._beat(wanted)

    def _beat(self, wanted: Mapping[str, float]) -> BeatResult:
        started = time.monotonic()  # before the transaction: PostgreSQL's now() is later still
        before = set(self._until)  # expired ones too: after a pause they are lost, and said so
        self._set_lease(wanted)
        self._graces = dict(wanted)
        live, renewed = self._count_and_renew(wanted)
        held_sorted = sorted(renewed)
        share = math.ceil(len(wanted) / live) if wanted else 0
        keep = set(held_sorted[:share])
        give_back = [k for k in held_sorted if k not in keep] + [k for k in before if k not in wanted]
        with self._ticks_lock:  # stop sending first: nothing goes out on them from now on
            for key in give_back:
                self._set(key, None)
            polled = self._polled.copy()  # their latest ticks: none comes after this
        # now() is the transaction's start, this long before sending stopped at most (the beats'
        # turn, the renewal): a grace counted from now() must last that much longer
        late = time.monotonic() - started
        params: dict[str, Any] = {"me": self.instance, "lease": self.effective_lease_s}
        try:
            # the buses lost (their leases ran out, or were taken) and not taken yet: their latest
            # ticks here, so that the instance taking them counts the ticks from there (`take`)
            gone = set(held_sorted).union(give_back)
            self._record_ticks({k: t for k, t in polled.items() if k not in gone})
            if give_back:
                graces = [wanted.get(k, self.effective_lease_s) + late for k in give_back]
                self._query(
                    "UPDATE bus_leases AS l SET owner = NULL, "
                    "expires_at = least(l.expires_at, now() + g.grace * interval '1 second')"
                    f"{self._ticks_set()} "
                    "FROM unnest(%(buses)s::text[], %(graces)s::float8[]) AS g(bus, grace) "
                    f"{self._ticks_join('g')} "
                    "WHERE l.bus = g.bus AND l.owner = %(me)s",
                    {**params, "buses": give_back, "graces": graces, **self._ticks_params(polled)})
            claimed: list[tuple[str, str | None, datetime | None]] = []
            deficit = share - len(keep)
            if deficit > 0:
                free = [row[0] for row in self._query(
                    "SELECT w.bus FROM unnest(%(wanted)s::text[]) AS w(bus) LEFT JOIN bus_leases l USING (bus) "
                    "WHERE l.bus IS NULL OR l.expires_at <= now()", {"wanted": list(wanted)})]
                random.shuffle(free)  # instances claiming at once mostly go for different buses
                if free:
                    # polled_through: the previous owner's latest tick, or (a bus no instance has polled
                    # yet) the claim: the ticks after it are this instance's to poll, or to count
                    column = value = update = ""
                    latest = "NULL::timestamptz"
                    if self._tracked:
                        column, value, update = ", polled_through", ", now()", \
                            ", polled_through = coalesce(l.polled_through, now())"
                        # a meter or schedule that came with a change of the configuration (a meter
                        # added, enabled again, its cron changed) has no ticks from before it: the
                        # count starts at the change when that is later
                        latest = _COUNTED_FROM
                    claimed = [(row[0], row[1], row[2]) for row in self._query(
                        "WITH old AS (SELECT bus, owner FROM bus_leases WHERE bus = ANY(%(free)s)) "
                        f"INSERT INTO bus_leases AS l (bus, owner, epoch, expires_at{column}) "
                        f"SELECT bus, %(me)s, 1, now() + %(lease)s * interval '1 second'{value} "
                        "FROM unnest(%(free)s::text[]) AS f(bus) "
                        "ON CONFLICT (bus) DO UPDATE SET owner = excluded.owner, epoch = l.epoch + 1, "
                        f"expires_at = excluded.expires_at{update} WHERE l.expires_at <= now() "
                        f"RETURNING l.bus, (SELECT owner FROM old WHERE old.bus = l.bus), {latest}",
                        {**params, "free": free[:deficit]})]
            self._query("COMMIT")
        except BaseException:
            self._rollback()
            raise
        deadline = started + self.effective_lease_s
        for key in keep:
            self._set(key, deadline)
        with self._ticks_lock:
            for key in keep:
                if key not in before and (since := renewed[key]) is not None:
                    # still this instance's in PostgreSQL, but not polled here since an earlier beat gave
                    # it back and could not commit: its ticks since then had no poll
                    self._polled[key] = self._gaps[key] = since
            for key, _previous, since in claimed:
                # polled_through stays the previous owner's until this instance polls the bus
                if since is None:
                    self._polled.pop(key, None)
                    self._gaps.pop(key, None)
                else:
                    self._polled[key] = self._gaps[key] = since
                self._set(key, deadline)
            for key in [k for k in self._polled if k not in self._until]:  # recorded in the database now
                del self._polled[key]
                self._gaps.pop(key, None)
        for key, previous, _ in claimed:
            if previous == self.instance:  # back from a pause before any other instance took it
                log.warning("lease on bus %s had expired (this instance was held up): claimed again", key)
            elif previous is not None:
                self.takeovers += 1
                log.warning("took over bus %s from instance %s (its lease had expired)", key, previous)
        lost = sorted(k for k in before if k in wanted and k not in self._until and k not in give_back)
        for key in lost:
            log.warning("lease on bus %s lost (expired before it could be renewed): another instance polls it",
                        key)
        return BeatResult(live, share, len(self._until), sorted(k for k, _, _ in claimed), sorted(give_back), lost)

    # --- the ticks each bus was polled at (bus_leases.polled_through) ---

    def _ticks_set(self) -> str:
        return ", polled_through = coalesce(p.t, l.polled_through)" if self._tracked else ""

    def _ticks_join(self, alias: str) -> str:
        """The latest ticks (`_ticks_params`) beside the buses of `alias`, as p(bus, t)."""
        if not self._tracked:
            return ""
        return (f"LEFT JOIN unnest(%(ticked)s::text[], %(ticks)s::timestamptz[]) AS p(bus, t) "
                f"ON p.bus = {alias}.bus")

    @staticmethod
    def _ticks_params(polled: Mapping[str, datetime]) -> dict[str, Any]:
        return {"ticked": list(polled), "ticks": list(polled.values())}

    def _record_ticks(self, polled: Mapping[str, datetime]) -> None:
        """Write these buses' latest ticks where this instance is still the owner."""
        if polled and self._tracked:
            self._query("UPDATE bus_leases AS l SET polled_through = p.t "
                        "FROM unnest(%(ticked)s::text[], %(ticks)s::timestamptz[]) AS p(bus, t) "
                        "WHERE l.bus = p.bus AND l.owner = %(me)s", {"me": self.instance, **self._ticks_params(polled)})

    def _set_lease(self, wanted: Mapping[str, float]) -> None:
        """A request goes out only if its reply window ends before the lease does, and a renewed
        lease has at least lease - heartbeat left: so the lease is at least the longest grace (reply
        window + margin) plus two heartbeats, or no request of the slowest meter would ever be sent.
        Instances may use different lengths: a claim looks only at expires_at."""
        lease = effective_lease_s(self.lease_s, self.heartbeat_s, max(wanted.values(), default=0.0))
        if lease != self.effective_lease_s and lease > self.lease_s:
            log.warning("POLL_LEASE_S=%g is too short for the longest reply window of a meter (%g s with the "
                        "margin) and two heartbeats: leases last %g s", self.lease_s, max(wanted.values()), lease)
        self.effective_lease_s = lease

    def _count_and_renew(self, wanted: Mapping[str, float]) -> tuple[int, dict[str, datetime | None]]:
        """BEGIN; this instance alive; live instances; the leases it still holds, renewed, each with
        where its missed ticks would count from (`_COUNTED_FROM`; None when not tracked)."""
        self._open()
        params: dict[str, Any] = {"me": self.instance, "lease": self.effective_lease_s, "keep_dead": KEEP_DEAD_S,
                                  **self._ticks_params(self._polled.copy())}
        try:
            self._query("BEGIN")
            self._query("SELECT pg_advisory_xact_lock(%(turn)s)", {"turn": BEAT_LOCK})  # beats take turns
            self._query(
                "INSERT INTO poller_instances (instance, expires_at) "
                "VALUES (%(me)s, now() + %(lease)s * interval '1 second') "
                "ON CONFLICT (instance) DO UPDATE SET seen_at = now(), expires_at = excluded.expires_at", params)
            live = int(self._query("SELECT count(*) FROM poller_instances WHERE expires_at > now()")[0][0])
            self._query("DELETE FROM poller_instances WHERE expires_at < now() - %(keep_dead)s * interval '1 second'",
                        params)
            self._query("DELETE FROM bus_leases WHERE expires_at < now() - %(keep_dead)s * interval '1 second'",
                        params)
            held: dict[str, datetime | None] = {row[0]: row[1] for row in self._query(
                "UPDATE bus_leases AS l SET expires_at = now() + %(lease)s * interval '1 second'"
                f"{self._ticks_set()} FROM unnest(%(wanted)s::text[]) AS w(bus) {self._ticks_join('w')} "
                "WHERE l.bus = w.bus AND l.owner = %(me)s AND l.expires_at > now() "
                f"RETURNING l.bus, {_COUNTED_FROM if self._tracked else 'NULL::timestamptz'}",
                {**params, "wanted": list(wanted)})}
        except BaseException:
            self._rollback()
            raise
        # the buses kept: the ones held longest first would need a column; sorted keeps the choice stable
        for key in [k for k in self._until if k not in held]:
            self._set(key, None)
        return max(1, live), held

    def _open(self) -> None:
        """A session, and whether bus_leases has polled_through (a database older than db/upgrade.sql
        has not: the leases work, the ticks a change of instance costs are not counted, said once;
        asked again at each heartbeat until db/upgrade.sql has run)."""
        if self._session is None:
            self._session = self._connect()
        if not self._tracked:
            try:
                # the table the statements resolve to (search_path), not a namesake in another schema
                rows = self._query("SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('bus_leases') "
                                   "AND attname = 'polled_through' AND NOT attisdropped")
            except BaseException:
                self._rollback()
                raise
            tracked, self._tracked = self._tracked, bool(rows)
            if tracked is None and not self._tracked:
                log.warning("the database predates db/upgrade.sql (no bus_leases.polled_through): the ticks a bus "
                            "misses while it changes instance are not counted (emm_meter_ticks_missed_total); "
                            "run db/upgrade.sql")

    def _connect(self) -> _Session:
        t = self.answer_timeout_s
        dsn = session_dsn(self.settings, connect_timeout_s=t, statement_timeout_s=t, lock_timeout_s=t,
                          answer_timeout_s=t, read_only=False)
        dsn["application_name"] = "emm-poller-lease"
        # timestamps (polled_through) come back in UTC, as the schedule's ticks are: cron maths in
        # another zone would count other ticks (an hourly cron in +05:30)
        dsn["options"] += " -c TimeZone=UTC"
        return _Session(dsn, t, t + 1.0)

    def _rollback(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                session.query("ROLLBACK")
            except Exception:  # noqa: BLE001 - the session is dropped either way
                pass
            session.close()

    def release_all(self, cut_short: bool = False) -> None:
        """At a clean stop, once the cycles are over: give every lease back, so the others take the
        buses over at their next heartbeat. At once, unless cycles were cancelled (`cut_short`): then
        a request may have been out, its reply still due, and each bus stays leased for its grace as
        a bus given back does. Blocking, bounded; errors are logged."""
        with self._lock:  # a beat still running in its thread (the task awaiting it was cancelled)
            self._release_all(cut_short)

    def _release_all(self, cut_short: bool) -> None:
        with self._ticks_lock:
            held = list(self._until)
            for key in held:
                self._set(key, None)
            polled = self._polled.copy()
        try:
            self._open()
            self._query("BEGIN")
            self._record_ticks(polled)  # the instances taking the buses count the ticks from there
            graces = self._graces if cut_short else {}  # a bus not in the latest beat's: the whole lease
            self._query("UPDATE bus_leases AS l SET owner = NULL, expires_at = least(l.expires_at, now() + coalesce("
                        "(SELECT g.grace FROM unnest(%(buses)s::text[], %(graces)s::float8[]) AS g(bus, grace) "
                        "WHERE g.bus = l.bus), %(otherwise)s) * interval '1 second') WHERE l.owner = %(me)s",
                        {"me": self.instance, "buses": list(graces), "graces": list(graces.values()),
                         "otherwise": self.effective_lease_s if cut_short else 0.0})
            self._query("DELETE FROM poller_instances WHERE instance = %(me)s", {"me": self.instance})
            self._query("COMMIT")
            log.info("gave back the leases on %d buses%s", len(held),
                     " (each claimable once a reply to a request cut short could no longer come)" if cut_short else "")
        except Exception as exc:  # noqa: BLE001 - they expire by themselves
            self._rollback()
            log.warning("could not give back the leases (%s); they expire within %g s", _reason(exc),
                        self.effective_lease_s)
        finally:
            self.close()

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()

    async def run(self, stop: asyncio.Event, wanted: Callable[[], Mapping[str, float]]) -> None:
        """Beat every heartbeat_s until `stop`; a failed beat is retried after RETRY_S (the leases
        held run out by themselves meanwhile: polling those buses stops at their deadline)."""
        import psycopg2

        announced: set[str] = set()  # the buses held when on_change was last called
        while not stop.is_set():
            try:
                result = await asyncio.to_thread(self.beat, wanted())
            except (psycopg2.Error, NoAnswer, OSError) as exc:
                self.beats_failed += 1
                if not self._down:
                    self._down = True
                    log.error("lease heartbeat failed: %s (%s); the buses held are polled until their leases "
                              "end, then left to other instances", self.where, _reason(exc))
                delay = RETRY_S
            else:
                self.beat_ok_at = time.monotonic()
                if self._down:
                    self._down = False
                    log.info("lease heartbeat works again: %d buses held", result.owned)
                if result.claimed or result.released or result.lost:
                    log.info("buses held: %d (claimed %d, gave back %d, lost %d); %d live instance(s), share %d",
                             result.owned, len(result.claimed), len(result.released), len(result.lost),
                             result.live, result.share)
                delay = self.heartbeat_s
            # buses come and go at a beat, and also go when their leases run out while beats fail
            # (PostgreSQL away): their connections and per-meter series go with them
            if (held := self.held()) != announced:
                announced = held
                self.on_change()
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
