"""python -m poller [--once] [--dry-run]: read every meter on the schedule, store every reading."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from datetime import UTC, datetime

from .config import ConfigError, ConfigSource
from .cycle import Poller
from .monitor import Monitor, cron_interval_s
from .plan import plan_reads
from .schedule import Schedule
from .settings import Settings, SettingsError, from_env, load_env_file
from .sink import InfluxSink, StdoutSink
from .spool import MIB, Spool, SpoolError, SpoolingSink

log = logging.getLogger("poller")


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


def make_sink(settings: Settings, dry_run: bool, spool: bool = False) -> InfluxSink | StdoutSink | SpoolingSink:
    if dry_run:
        return StdoutSink()
    sink = InfluxSink(settings.influxdb_url, settings.influxdb_token,
                      settings.influxdb_org, settings.influxdb_bucket)
    # --- durable spool: the service spools what InfluxDB cannot take; --once does not
    # (its exit code tells the caller). See README, "When InfluxDB is away".
    if not spool:
        return sink
    try:
        disk = Spool(settings.spool_dir, settings.spool_max_mb * MIB)
    except SpoolError as exc:
        sink.close()
        log.error("setting: %s", exc)
        raise SystemExit(2) from None
    return SpoolingSink(sink, disk, retry_max_s=settings.spool_retry_max_s)
    # --- end durable spool


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
        blocks = plan_reads(dtype.registers, dtype.max_block, dtype.max_gap)
        state = "" if meter.enabled else " [disabled]"
        print(f"{meter}{state}: {len(dtype.registers)} registers in {len(blocks)} requests "
              f"({', '.join(str(b) for b in blocks)}), schedule {meter.poll_cron or settings.poll_cron!r}")
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
    sink = make_sink(settings, dry_run)
    poller = Poller(sink, settings.max_parallel_endpoints, status_points=not dry_run)
    try:
        report = await poller.run_cycle([m for m in config.meters if m.enabled])
    finally:
        poller.close()
        sink.close()
    log.info("%s", report.summary())
    return 1 if report.not_written else 0


async def run_forever(settings: Settings, dry_run: bool) -> int:
    stale_after = settings.health_stale_s or max(60.0, 3 * cron_interval_s(settings.poll_cron))
    monitor = Monitor(stale_after)
    if settings.http_port:  # first: a port in use stops the service before anything else starts
        try:
            await monitor.start(settings.http_host, settings.http_port)
        except OSError as exc:
            log.error("cannot serve /healthz and /metrics on %s:%d: %s (POLL_HTTP_PORT=0 turns them off)",
                      settings.http_host, settings.http_port, exc)
            return 2
    source = ConfigSource(settings)
    sink = make_sink(settings, dry_run, spool=True)  # durable spool
    poller = Poller(sink, settings.max_parallel_endpoints, status_points=not dry_run)
    schedule = Schedule(settings.poll_cron)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    config = None
    while config is None and not stop.is_set():
        try:
            config = await asyncio.to_thread(source.load)
        except ConfigError as exc:
            log.error("%s; trying again in 5 s", exc)
            await _sleep_or_stop(stop, 5)
    log.info("polling %d meters, schedule %r (POLL_CRON), writing to %s",
             len(config.meters) if config else 0, settings.poll_cron, sink.url)

    running: set[asyncio.Task[None]] = set()

    if isinstance(sink, SpoolingSink):
        monitor.watch_spool(sink.stats)

    async def cycle(tick: datetime, fired: frozenset[str]) -> None:
        nonlocal config
        try:
            config = await asyncio.to_thread(source.load)
            poller.forget_except(config.meters)
            monitor.forget_meters_except({m.id for m in config.meters})
            monitor.config_problems.set(len(config.problems))
            due = schedule.due(config.meters, fired)
            report = await poller.run_cycle(due) if due else None
        except Exception:  # a bug must not stop the service: say so loudly, go on next tick
            log.exception("cycle at %s failed", tick.strftime("%H:%M:%S"))
            return
        monitor.cycle_done(report)
        if report is not None and report.endpoints_busy:
            monitor.ticks_skipped.inc(report.endpoints_busy)
        if report is not None:
            # since_tick: from the scheduled instant to the last reading written
            since_tick = (datetime.now(UTC) - tick).total_seconds()
            log.info("%s since_tick=%.3fs", report.summary(), since_tick)

    while not stop.is_set():
        now = datetime.now(UTC)
        tick = schedule.next_tick(config.meters if config else (), now)
        if await _sleep_or_stop(stop, (tick - now).total_seconds()):
            break
        fired = schedule.fire(tick, datetime.now(UTC))
        # Each tick starts a cycle. A host:port still busy with an earlier
        # cycle sits this one out (Poller.run_cycle), so cycles never poll one
        # device twice at once and never pile up behind a slow device.
        task = asyncio.create_task(cycle(tick, fired))
        running.add(task)
        task.add_done_callback(running.discard)

    if running:
        log.info("stopping: waiting for %d running cycle(s) to finish", len(running))
        _, pending = await asyncio.wait(running, timeout=30)
        for task in pending:
            task.cancel()
        if pending:
            log.error("%d cycle(s) did not finish within 30 s and were cancelled", len(pending))
    await monitor.stop()
    poller.close()
    sink.close()
    source.close()
    return 0


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep; True when asked to stop meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
        return True
    except TimeoutError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.Formatter.converter = time.gmtime
    load_env_file(args.env_file)
    try:
        settings = from_env()
    except SettingsError as exc:
        log.error("setting: %s", exc)
        return 2
    if args.check:
        return check(settings)
    runner = run_once if args.once else run_forever
    return asyncio.run(runner(settings, args.dry_run))


if __name__ == "__main__":
    sys.exit(main())
