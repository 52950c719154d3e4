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
from .schedule import Schedule
from .settings import Settings, SettingsError, from_env, load_env_file
from .sink import InfluxSink, StdoutSink

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
    parser.add_argument("--env-file", default=".dev.env",
                        help="settings file to load when present (default: .dev.env)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def make_sink(settings: Settings, dry_run: bool) -> InfluxSink | StdoutSink:
    if dry_run:
        return StdoutSink()
    return InfluxSink(settings.influxdb_url, settings.influxdb_token,
                      settings.influxdb_org, settings.influxdb_bucket)


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
    source = ConfigSource(settings)
    sink = make_sink(settings, dry_run)
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

    running: asyncio.Task[None] | None = None
    running_since = ""

    async def cycle(tick: datetime, fired: frozenset[str]) -> None:
        nonlocal config
        config = await asyncio.to_thread(source.load)
        poller.forget_except(config.meters)
        due = schedule.due(config.meters, fired)
        if due:
            report = await poller.run_cycle(due)
            # since_tick: from the scheduled instant to the last reading written
            since_tick = (datetime.now(UTC) - tick).total_seconds()
            log.info("%s since_tick=%.3fs", report.summary(), since_tick)

    while not stop.is_set():
        now = datetime.now(UTC)
        tick = schedule.next_tick(config.meters if config else (), now)
        if await _sleep_or_stop(stop, (tick - now).total_seconds()):
            break
        fired = schedule.fire(tick, datetime.now(UTC))
        if running is not None and not running.done():
            log.warning("tick %s skipped: the cycle started at %s is still running",
                        tick.strftime("%H:%M:%S"), running_since)
            continue
        if running is not None and running.exception() is not None:
            log.error("cycle crashed: %r", running.exception())
        running_since = tick.strftime("%H:%M:%S")
        running = asyncio.create_task(cycle(tick, fired))

    log.info("stopping: waiting for the running cycle to finish")
    if running is not None:
        try:
            await asyncio.wait_for(running, timeout=30)
        except Exception as exc:  # noqa: BLE001 - we are exiting; say what happened
            log.error("last cycle did not finish cleanly: %r", exc)
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
    runner = run_once if args.once else run_forever
    return asyncio.run(runner(settings, args.dry_run))


if __name__ == "__main__":
    sys.exit(main())
