"""The poller's own health: Prometheus metrics on /metrics and a liveness check on /healthz.

/healthz answers 200 while cycles keep completing, and 503 when none has
completed for `stale_after_s` seconds (a hung poller, a dead event loop); the
container's healthcheck calls it. /metrics is prometheus-client's text format.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from croniter import croniter
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .cycle import CycleReport
from .spool import SpoolStats

log = logging.getLogger("poller.monitor")


def cron_interval_s(expr: str) -> float:
    """Seconds between two ticks of a crontab expression (the first two from now)."""
    it = croniter(expr, datetime.now(UTC))
    first = it.get_next(datetime)
    return (it.get_next(datetime) - first).total_seconds()


def _reader(stats: Callable[[], SpoolStats], field: str) -> Callable[[], float]:
    return lambda: float(getattr(stats(), field))


class Monitor:
    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = stale_after_s
        self.started = time.monotonic()
        self.last_cycle: float | None = None  # monotonic time the last tick was handled
        r = self.registry = CollectorRegistry()
        self.cycles = Counter("emm_cycles", "Poll cycles completed", registry=r)
        self.ticks_skipped = Counter("emm_endpoint_ticks_skipped",
                                     "Ticks a host:port sat out: still busy with an earlier cycle", registry=r)
        self.cycle_seconds = Gauge("emm_cycle_duration_seconds", "Duration of the last cycle", registry=r)
        self.last_cycle_ts = Gauge("emm_last_cycle_timestamp_seconds", "Unix time the last cycle completed",
                                   registry=r)
        self.readings = Counter("emm_readings", "Readings taken and handed to the sink", registry=r)
        self.invalid = Counter("emm_invalid_readings", "Values not written (NaN, not available, refused)",
                               registry=r)
        self.requests = Counter("emm_modbus_requests", "Modbus requests sent", registry=r)
        self.not_written = Counter("emm_points_not_written", "Points the sink could not take", registry=r)
        self.config_problems = Gauge("emm_configuration_problems", "Rows skipped in the configuration",
                                     registry=r)
        labels = ["meter", "host", "slave_address", "type"]
        self.meter_up = Gauge("emm_meter_up", "1 when the meter's last poll succeeded", labels, registry=r)
        self.meter_errors = Counter("emm_meter_errors", "Failed Modbus requests per meter", labels, registry=r)
        self._labelled: set[tuple[str, ...]] = set()
        self._server: asyncio.Server | None = None

    def watch_spool(self, stats: Callable[[], SpoolStats]) -> None:
        """Export the spool's counters (read when /metrics is asked)."""
        r = self.registry
        for name, doc, field in (
            ("emm_spool_points", "Readings waiting in the spool for InfluxDB", "spool_points"),
            ("emm_spool_bytes", "Size of the spool on disk", "spool_bytes"),
            ("emm_spooled_points_total", "Readings put in the spool since start", "spooled_points"),
            ("emm_replayed_points_total", "Spooled readings written to InfluxDB since start", "replayed_points"),
            ("emm_dropped_points_total", "Readings dropped: the spool was full (POLL_SPOOL_MAX_MB)",
             "dropped_points"),
            ("emm_dead_lettered_points_total", "Readings InfluxDB rejected for good (dead-letter file)",
             "dead_lettered_points"),
        ):
            Gauge(name, doc, registry=r).set_function(_reader(stats, field))

    def cycle_done(self, report: CycleReport | None) -> None:
        """A tick was handled (report None: no meter was due)."""
        self.last_cycle = time.monotonic()
        self.cycles.inc()
        self.last_cycle_ts.set(time.time())
        if report is None:
            return
        self.cycle_seconds.set(report.duration_s)
        self.readings.inc(report.readings)
        self.invalid.inc(report.invalid)
        self.requests.inc(report.requests)
        self.not_written.inc(report.not_written)
        for res in report.results:
            m = res.meter
            key = (str(m.id), m.host, str(m.slave_address), m.device_type.name)
            self.meter_up.labels(*key).set(1 if res.ok else 0)
            self.meter_errors.labels(*key).inc(res.errors)
            self._labelled.add(key)

    def forget_meters_except(self, meter_ids: set[int]) -> None:
        for key in [k for k in self._labelled if int(k[0]) not in meter_ids]:
            self.meter_up.remove(*key)
            self.meter_errors.remove(*key)
            self._labelled.discard(key)

    def health(self) -> tuple[bool, str]:
        now = time.monotonic()
        if self.last_cycle is None:
            waited = now - self.started
            if waited <= self.stale_after_s:
                return True, f"starting: no cycle yet ({waited:.0f} s)"
            return False, f"no cycle completed in the {waited:.0f} s since start"
        age = now - self.last_cycle
        if age > self.stale_after_s:
            return False, f"no cycle completed for {age:.0f} s (limit {self.stale_after_s:.0f} s)"
        return True, f"ok: last cycle completed {age:.1f} s ago"

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("health and metrics on http://%s:%d/healthz and /metrics", host, bound)
        return bound

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            parts = request.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
            elif path == "/healthz":
                ok, text = self.health()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = "text/plain; charset=utf-8", (text + "\n").encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"/metrics or /healthz\n"
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            writer.write(head if parts and parts[0] == "HEAD" else head + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeError):
            pass
        finally:
            writer.close()
