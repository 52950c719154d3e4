"""python -m poller [--once] [--dry-run] [--check]: read every meter on the schedule, store every reading."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from . import loop as event_loop
from .config import ConfigError, ConfigSource, ConfigWatcher
from .cycle import Poller
from .lease import Leases, bus_key, heartbeat_s, wanted_buses
from .logsafe import setup_logging
from .model import DeviceType, Meter
from .monitor import Monitor
from .outbox import Outbox
from .plan import plan_device
from .schedule import Schedule, cron_interval_s, fires_between
from .settings import Settings, SettingsError, from_env, load_env_file
from .sink import InfluxSink, StdoutSink
from .spool import SpoolError
from .spooldirs import Stranded, open_spool, spool_dirs
from .store import Configuration
from .workers import WorkerPool, close_poller, counter_files, make_poller, retire_counter_files

log = logging.getLogger("poller")

# On SIGTERM: requests under way get this long to finish (what they read is kept either
# way), then the outbox gets Outbox.close_timeout_s to send; compose allows 20 s in all.
STOP_CYCLES_S = 5.0
HOLD_WRITES_S = 1.0  # the longest a cycle keeps its readings from InfluxDB (Outbox.hold), at most half an interval
SLEEP_PIECE_S = 1.0  # the tick loop re-reads the wall clock at least this often: a step is noticed
LATE_COUNT_SPAN = timedelta(days=1)  # skipped ticks are counted over at most this much of a late tick's delay
STRANDED_EVERY_S = 60.0  # how often spool directories no instance holds are looked for (and when leases change)
STRANDED_FIRST_S = 15.0  # the first look, after the start: replicas started together take their own slots first


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m poller",
        description="Read energy meters over Modbus TCP on a cron schedule and write every reading "
                    "to InfluxDB. Settings come from the environment (POSTGRES_*, INFLUXDB_*, "
                    "POLL_CRON); .dev.env in the working directory is loaded when present.")
    parser.add_argument("--once", action="store_true",
                        help="run exactly one cycle over every enabled meter, then exit "
                             "(0 when the cycle ran, even if devices failed)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the readings as InfluxDB line protocol to stdout instead of writing "
                             "them (the poller_status points are left out)")
    parser.add_argument("--check", action="store_true",
                        help="read the configuration, print every meter with its read plan and every "
                             "skipped row with the reason, then exit (1 when a row is skipped); no device "
                             "is contacted")
    parser.add_argument("--env-file", default=".dev.env",
                        help="settings file to load when present (default: .dev.env)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def make_outbox(settings: Settings, dry_run: bool, spool: bool) -> Outbox:
    """Where readings go: stdout (--dry-run), InfluxDB (--once), or InfluxDB with the durable spool.

    Raises SpoolError when the spool directory cannot be used.
    """
    if dry_run:
        return Outbox(StdoutSink(), None)
    sink = InfluxSink(settings.influxdb_url, settings.influxdb_token,
                      settings.influxdb_org, settings.influxdb_bucket)
    if not spool:  # --once: no spool, its exit code tells the caller (README, "When InfluxDB is away")
        return Outbox(sink, None)
    try:
        disk = open_spool(settings)
    except SpoolError:
        sink.close()
        raise
    return Outbox(sink, disk, memory_points=settings.write_buffer_points,
                  retry_max_s=settings.spool_retry_max_s)


def device_quirks(dtype: DeviceType) -> list[str]:
    """A device type's quirks as --check names them (the settings of README's "Device quirks")."""
    quirks = []
    if dtype.connect_pause_s:
        quirks.append(f"connect_pause_ms={dtype.connect_pause_s * 1000:g}")
    if dtype.request_pause_s:
        quirks.append(f"request_pause_ms={dtype.request_pause_s * 1000:g}")
    if dtype.close_after_poll:
        quirks.append("close_after_poll")
    if dtype.single_value_reads:
        quirks.append("single_value_reads")
    return quirks


def check(settings: Settings) -> int:
    """--check: what the poller would read, and which rows it would skip and why."""
    logging.getLogger("poller.config").setLevel(logging.ERROR)  # the problems are printed below
    source = ConfigSource(settings)
    try:
        config = source.load()
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    finally:
        source.close()
    for meter in config.meters:
        dtype = meter.device_type
        blocks = plan_device(dtype)
        state = "" if meter.enabled else " [disabled]"
        quirks = device_quirks(dtype)
        print(f"{meter}{state}: {len(dtype.registers)} registers in {len(blocks)} requests "
              f"({', '.join(str(b) for b in blocks)}), schedule {meter.poll_cron or settings.poll_cron!r}"
              + (f", quirks: {', '.join(quirks)}" if quirks else ""))
    for problem in config.problems:
        print(f"SKIPPED {problem}")
    print(f"{len(config.meters)} meters, {len(config.problems)} rows skipped")
    return 1 if config.problems else 0


async def run_once(settings: Settings, dry_run: bool) -> int:
    source = ConfigSource(settings)
    try:
        config = await asyncio.to_thread(source.load)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    finally:
        source.close()
    outbox = make_outbox(settings, dry_run, spool=False)
    # the counter guard's history: the service's, when this machine runs one (POLL_SPOOL_DIR)
    counters = None if dry_run or not Path(settings.spool_dir).is_dir() else settings.spool_dir
    poller = make_poller(outbox, replace(settings, workers=0), status_points=not dry_run, counters_dir=counters)
    try:
        report = await poller.run_cycle([m for m in config.meters if m.enabled])
        await asyncio.to_thread(outbox.flush)
    finally:
        poller.close()
        await asyncio.to_thread(outbox.close)
    stats = outbox.stats()
    failed = stats.failed_points + stats.dropped_points
    log.info("%s%s", report.summary(), f" NOT WRITTEN={failed}" if failed else "")
    return 1 if failed else 0


def hold_seconds(schedule: Schedule, meters: tuple[Meter, ...]) -> float:
    """How long a cycle keeps its readings from InfluxDB (Outbox.hold): HOLD_WRITES_S, or half the
    interval of the fastest schedule among the enabled meters (POLL_CRON with none), if shorter."""
    exprs = {schedule.cron_of(m) for m in meters if m.enabled} or {schedule.default_cron}
    return min(HOLD_WRITES_S, min(cron_interval_s(e) for e in exprs) / 2)


class Service:
    """`python -m poller`: the schedule, the configuration, the cycles, the outbox, /healthz.

    Each tick starts a cycle over the meters due; a host:port still busy with an
    earlier cycle sits the tick out (Poller.run_cycle), so cycles never poll one
    device twice at once and never pile up behind a slow device. The configuration
    is watched off the poll path: a slow or locked database never delays a tick.
    """

    def __init__(self, settings: Settings, dry_run: bool) -> None:
        self.settings = settings
        self.dry_run = dry_run
        self.interval_s = cron_interval_s(settings.poll_cron)
        # Outbox.hold's seconds: half the fastest interval of the meters' schedules (_configuration_changed)
        self.hold_s = min(HOLD_WRITES_S, self.interval_s / 2)
        self.late_streak = False  # ticks are coming late (skipping slots): said once, until one is on time
        stale_after = settings.health_stale_s or max(60.0, 3 * self.interval_s)
        self.monitor = Monitor(stale_after)
        self.schedule = Schedule(settings.poll_cron)
        self.watcher = ConfigWatcher(ConfigSource(settings))
        self.stop = asyncio.Event()
        self.running: dict[asyncio.Task[None], tuple[Meter, ...]] = {}  # the cycles, each with its meters
        self.counting: set[asyncio.Future[int]] = set()  # ticks missed by buses that changed instance
        self.outbox: Outbox | None = None
        self.look_for_stranded = asyncio.Event()  # leases changed: a replica may be gone, its spool free
        self.poller: Poller | WorkerPool | None = None  # WorkerPool: POLL_WORKERS > 0
        # several pollers (POLL_COORDINATION=postgres): the buses this instance holds the lease of
        self.leases: Leases | None = None
        if settings.coordination == "postgres":
            heartbeat = heartbeat_s(settings.lease_s, self.interval_s)
            self.leases = Leases(settings, settings.lease_s, heartbeat)

    async def run(self) -> int:
        if not await self._start_monitor():
            return 2
        try:
            self.outbox = make_outbox(self.settings, self.dry_run, spool=not self.dry_run)
        except SpoolError as exc:
            log.error("setting: %s", exc)
            await self.monitor.stop()
            return 2
        self.monitor.watch_outbox(self.outbox.stats)
        spool = self.outbox.spool
        if spool is not None:  # this instance's own directory (what a --once run left there is merged too)
            retire_counter_files(spool.dir, self.settings.workers)
        self.poller = make_poller(self.outbox, self.settings, status_points=not self.dry_run, leases=self.leases,
                                  counters_dir=None if spool is None else spool.dir)
        if isinstance(self.poller, WorkerPool):
            self.monitor.watch_workers(self.poller)
        if self.leases is not None:
            self.monitor.watch_leases(self.leases)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        watching: asyncio.Task[None] | None = None
        leasing: asyncio.Task[None] | None = None
        stranded = None  # spool directories no running instance holds: sent too (--dry-run has no spool)
        if spool is not None:
            stranded = asyncio.create_task(self._send_stranded(Stranded(self.settings, spool.dir)))
        try:
            config = await self.watcher.first(self.stop)
            if config is not None:
                self._configuration_changed(config)
                log.info("polling %d meters, schedule %r (POLL_CRON), writing to %s, event loop %s",
                         len(config.meters), self.settings.poll_cron, self.outbox.url,
                         event_loop.describe(self.settings.event_loop))
                watching = asyncio.create_task(self.watcher.run(self.stop))
                if self.leases is not None:
                    leases = self.leases
                    log.info("sharing the fleet through PostgreSQL as instance %s: lease %g s, heartbeat %g s",
                             leases.instance, leases.lease_s, leases.heartbeat_s)
                    leases.on_change = self._leases_changed
                    leasing = asyncio.create_task(leases.run(self.stop, self._wanted_buses))
                await self._tick_loop()
        finally:
            await self._shut_down(watching, leasing, stranded)
        return 0

    def _wanted_buses(self) -> dict[str, float]:
        """The configuration's buses with their graces; a cycle still polling under an earlier
        configuration may have a request out with a timeout since lowered: its buses keep that
        longer grace until it ends (a bus given back stays leased until its reply is due)."""
        config = self.watcher.current
        if config is None:
            return {}
        wanted = wanted_buses(config.meters)
        for meters in {id(m): m for m in self.running.values() if m is not config.meters}.values():
            for key, grace in wanted_buses(meters).items():
                if grace > wanted.get(key, grace):
                    wanted[key] = grace
        return wanted

    def _leases_changed(self) -> None:
        """Buses came or went: connections and per-meter state of buses no longer held go."""
        assert self.poller is not None and self.leases is not None and self.watcher.current is not None
        mine = [m for m in self.watcher.current.meters if self.leases.owns(m.bus)]
        self.poller.forget_except(mine)
        self.monitor.forget_meters_except(m for m in mine if m.enabled)
        self.look_for_stranded.set()

    async def _send_stranded(self, stranded: Stranded) -> None:
        """Spool directories no running instance holds (a replica gone, POLL_COORDINATION changed)
        go to the outbox, which sends them beside its own: looked for STRANDED_FIRST_S after the start
        (replicas started together take their own slots first), then every STRANDED_EVERY_S and when
        the leases change (a replica gone leaves its buses, and its slot)."""
        assert self.outbox is not None
        await asyncio.sleep(STRANDED_FIRST_S)
        while True:
            self.look_for_stranded.clear()
            looking = asyncio.ensure_future(asyncio.to_thread(stranded.find))
            try:
                found = await asyncio.shield(looking)
            except asyncio.CancelledError:  # stopping: what it opened is closed, left for the next
                stranded.stop()
                for other in await looking:
                    other.close()
                raise
            except Exception:  # noqa: BLE001 - a bug: said, and looked for again later
                log.exception("spool: looking for spool directories no running instance holds failed")
                found = []
            for other in found:
                if not self.outbox.adopt(other):
                    other.close()
            try:
                await asyncio.wait_for(self.look_for_stranded.wait(), STRANDED_EVERY_S)
            except TimeoutError:
                pass

    async def _start_monitor(self) -> bool:
        """First: a port in use stops the service before anything else starts."""
        s = self.settings
        if not s.http_port:
            return True
        try:
            await self.monitor.start(s.http_host, s.http_port)
        except OSError as exc:
            log.error("cannot serve /healthz and /metrics on %s:%d: %s (POLL_HTTP_PORT=0 turns them off)",
                      s.http_host, s.http_port, exc)
            return False
        return True

    def _configuration_changed(self, config: Configuration) -> None:
        assert self.poller is not None
        meters = config.meters
        if self.leases is not None:
            meters = tuple(m for m in meters if self.leases.owns(m.bus))
        self.poller.forget_except(meters)
        self.monitor.forget_meters_except(m for m in meters if m.enabled)  # a disabled meter is not polled
        self.monitor.config_problems.set(len(config.problems))
        self.hold_s = hold_seconds(self.schedule, config.meters)

    async def _tick_loop(self) -> None:
        """Sleep until the next tick, start its cycle; a configuration change re-plans the sleep,
        and so does the wall clock going back (Schedule.next_tick re-plans, with a WARNING)."""
        while not self.stop.is_set():
            config = self.watcher.current
            assert config is not None
            tick = self.schedule.next_tick(config.meters, datetime.now(UTC))
            woke, now = await self._sleep_until(tick)
            if woke == "stop":
                return
            if woke == "changed":
                self.watcher.changed.clear()
                assert self.watcher.current is not None
                self._configuration_changed(self.watcher.current)
                continue  # a new or changed meter schedule is due from its first slot after now
            if woke == "clock":
                continue  # the wall clock went back: next_tick re-plans from it
            fired = self.schedule.fire(tick, now)  # now >= tick: never before its time
            self._count_late(tick, now, fired, config.meters)
            task = asyncio.create_task(self._cycle(tick, fired, config.meters))
            self.running[task] = config.meters
            task.add_done_callback(self._cycle_done)

    async def _sleep_until(self, tick: datetime) -> tuple[str, datetime]:
        """('tick', the wall clock) once the wall clock reads `tick` or later, or earlier 'stop',
        'changed' (the configuration was replaced) or 'clock' (the wall clock went back).

        The event loop's timers run on the monotonic clock, not the wall clock (and uvloop's may
        wake up to a millisecond early): the wall clock is read again after each piece of at most
        SLEEP_PIECE_S, so a step either way moves the wake-up with it."""
        waiters = {asyncio.ensure_future(self.stop.wait()): "stop",
                   asyncio.ensure_future(self.watcher.changed.wait()): "changed"}
        try:
            while True:
                now = datetime.now(UTC)
                if now >= tick:
                    return "tick", now
                if self.schedule.went_back(now):
                    return "clock", now
                # at least a millisecond: a timer rounded down to 0 would spin until the tick
                wait_s = min(SLEEP_PIECE_S, max(0.001, (tick - now).total_seconds()))
                done, _ = await asyncio.wait(waiters, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                if done:
                    return ("stop" if self.stop.is_set() else "changed"), now
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _count_late(self, tick: datetime, now: datetime, fired: frozenset[str], meters: tuple[Meter, ...]) -> None:
        """Ticks `fire` skipped because `tick` came late (a stalled event loop, the wall clock stepped
        forward): their meter-ticks are counted (emm_meter_ticks_late_skipped_total), in a thread (a
        day of an every-second schedule is many croniter steps), and said once per streak."""
        late = self.schedule.late(tick, now, fired)  # [] at once when the tick is on time
        if not late:
            self.late_streak = False
            return
        first = not self.late_streak
        self.late_streak = True
        due: dict[str, int] = dict.fromkeys(late, 0)
        for meter in meters:
            if meter.enabled and (expr := self.schedule.cron_of(meter)) in due and (
                    self.leases is None or self.leases.owns(meter.bus)):
                due[expr] += 1
        until = min(now, tick + LATE_COUNT_SPAN)

        def count() -> int:
            return sum(fires_between(expr, tick, until) * n for expr, n in due.items() if n)

        def counted(skipped: int) -> None:
            self.monitor.ticks_late_skipped.inc(skipped)
            log.log(logging.WARNING if first else logging.DEBUG,
                    "the tick at %s came %.1f s late (the event loop stalled or the wall clock stepped forward): "
                    "%d meter-tick(s) of %d schedule(s) in between were skipped, not polled "
                    "(emm_meter_ticks_late_skipped_total)%s", tick.isoformat(), (now - tick).total_seconds(),
                    skipped, len(late), "; further late ticks are logged at DEBUG until one is on time" if first
                    else "")

        self._count_off_the_loop(count, counted, f"the meter-ticks skipped by the tick at {tick.isoformat()}")

    def _count_off_the_loop(self, count: Callable[[], int], counted: Callable[[int], None], what: str) -> None:
        """`count()` in a thread (croniter steps: a day of an every-second schedule takes seconds),
        then `counted(n)` in the event loop; a failure is a bug, said, and the service goes on."""
        counting = asyncio.ensure_future(asyncio.to_thread(count))
        self.counting.add(counting)

        def done(task: asyncio.Future[int]) -> None:
            self.counting.discard(task)
            if task.cancelled():
                return
            if (exc := task.exception()) is not None:
                log.error("counting %s failed", what, exc_info=exc)
            else:
                counted(task.result())

        counting.add_done_callback(done)

    def _cycle_done(self, task: asyncio.Task[None]) -> None:
        self.running.pop(task, None)

    async def _cycle(self, tick: datetime, fired: frozenset[str], meters: tuple[Meter, ...]) -> None:
        assert self.poller is not None
        due = self.schedule.due(meters, fired)
        assert self.outbox is not None
        if self.leases is not None:  # another instance polls the rest
            due, gaps = self.leases.take(tick, due)
            if gaps:
                self._count_gaps(tick, gaps, meters)
                if self.outbox.spool is not None:
                    await self._counter_history([m.id for m in meters if m.enabled and bus_key(m.bus) in gaps])
        # the readings go to InfluxDB once the cycle is over (or after HOLD_WRITES_S): writing them
        # meanwhile would compete with the reading for the CPU (this process's, and InfluxDB's)
        self.outbox.hold(self.hold_s)
        try:
            report = await self.poller.run_cycle(due) if due else None
        except Exception:  # a bug must not stop the service: say so loudly, go on next tick
            log.exception("cycle at %s failed", tick.strftime("%H:%M:%S"))
            return
        finally:
            self.outbox.release()
        # since_tick: from the scheduled instant to the end of the cycle (its last reading handed over),
        # not counting the bookkeeping after it (/metrics)
        since_tick = (datetime.now(UTC) - tick).total_seconds()
        self.monitor.cycle_done(report)
        if report is not None:
            log.info("%s since_tick=%.3fs", report.summary(), since_tick)
            if report.meters_handed_off and self.leases is not None:
                self.leases.missed(report.meters_handed_off)

    async def _counter_history(self, meter_ids: list[int]) -> None:
        """Meters on buses polled here for the first time since another instance (or an earlier run
        in another spool slot) polled them: their counters' last values, from the state files every
        instance keeps on this POLL_SPOOL_DIR (at most a minute old: still a lower bound)."""
        assert self.poller is not None
        root = Path(self.settings.spool_dir)

        def files() -> list[Path]:
            return [f for where in spool_dirs(root) for f in counter_files(where)]

        try:
            found = await asyncio.to_thread(files)
        except OSError as exc:
            log.warning("counter state under %s cannot be listed (%s): the counters of %d meter(s) new here start "
                        "without history", root, exc.strerror, len(meter_ids))
            return
        self.poller.load_counter_history(found, meter_ids)

    def _count_gaps(self, tick: datetime, gaps: dict[str, datetime], meters: tuple[Meter, ...]) -> None:
        """Buses polled here for the first time since another instance (or this one, before a pause)
        polled them: the ticks their meters had in between are counted, in a thread (a gap of hours
        is many steps of croniter), and said once."""
        assert self.leases is not None
        crons: dict[str, list[str]] = {}
        for meter in meters:
            if meter.enabled and (key := bus_key(meter.bus)) in gaps:
                crons.setdefault(key, []).append(self.schedule.cron_of(meter))
        leases = self.leases

        def counted(missed: int) -> None:
            if missed:
                log.info("%d bus(es) changed instance, polled here from %s on: %d meter-tick(s) since %s had no "
                         "poll (emm_meter_ticks_missed_total)", len(gaps), tick.strftime("%H:%M:%S"), missed,
                         min(gaps.values()).strftime("%H:%M:%S"))

        self._count_off_the_loop(lambda: leases.count_gaps(tick, gaps, crons), counted,
                                 f"the ticks missed on {len(gaps)} bus(es)")

    async def _shut_down(self, watching: asyncio.Task[None] | None, leasing: asyncio.Task[None] | None,
                         stranded: asyncio.Task[None] | None) -> None:
        pending: set[asyncio.Task[None]] = set()
        if self.running:
            log.info("stopping: waiting up to %.0f s for %d running cycle(s)", STOP_CYCLES_S, len(self.running))
            _, pending = await asyncio.wait(set(self.running), timeout=STOP_CYCLES_S)
            for task in pending:
                task.cancel()  # what a cancelled meter read so far is still handed over
            if pending:
                await asyncio.wait(pending)
                log.warning("%d cycle(s) still reading after %.0f s were stopped; what they had read is kept",
                            len(pending), STOP_CYCLES_S)
        for background in (watching, leasing, stranded):
            if background is not None:
                background.cancel()
                await asyncio.gather(background, return_exceptions=True)
        await self.monitor.stop()
        if self.poller is not None:
            await close_poller(self.poller)  # worker processes: stopped and joined, their last lines read
        if self.leases is not None:  # the others may take over now, or once a cut-short request's reply is due
            await asyncio.to_thread(self.leases.release_all, bool(pending))
        if self.outbox is not None:
            await asyncio.to_thread(self.outbox.close)
        self.watcher.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    event_loop.keep_freed_blocks()  # before the env file: glibc's own settings are read at the start
    load_env_file(args.env_file)
    try:
        settings = from_env()
    except SettingsError as exc:
        log.error("setting: %s", exc)
        return 2
    if args.check:
        return check(settings)
    if args.once:
        return event_loop.run(run_once(settings, args.dry_run), settings.event_loop)
    return event_loop.run(Service(settings, args.dry_run).run(), settings.event_loop)


if __name__ == "__main__":
    sys.exit(main())
