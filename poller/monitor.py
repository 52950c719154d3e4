"""The poller's own health: Prometheus metrics on /metrics and a liveness check on /healthz.

/healthz answers 200 while cycles keep completing, and 503 when none has
completed for `stale_after_s` seconds (a hung poller, a dead event loop), or, with
leases (POLL_COORDINATION=postgres), when no heartbeat was answered for a lease's time
(every lease has run out: nothing is polled); the container's healthcheck calls it.
/metrics is prometheus-client's text format.

The HTTP side is deliberately small and bounded: one request per connection, a
request line and each header line of at most 8 KiB, at most 100 header lines, the
whole request within 5 s, at most 64 connections at once. Anything else is answered
400/414/431 or closed, and logged at DEBUG only: a port scanner or a slow client is
no event in the poller's log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .counters import REASONS
from .cycle import CycleReport
from .lease import Leases
from .model import Meter
from .outbox import OutboxStats

if TYPE_CHECKING:
    from .workers import WorkerPool

log = logging.getLogger("poller.monitor")

MAX_LINE = 8 * 1024  # bytes of the request line, and of each header line
MAX_HEADERS = 100
MAX_CONNECTIONS = 64

MeterLabels = tuple[str, str, str, str]  # meter, host, slave_address, type


def meter_labels(meter: Meter) -> MeterLabels:
    return (str(meter.id), meter.host, str(meter.slave_address), meter.device_type.name)


def _reader(stats: Callable[[], OutboxStats], field: str) -> Callable[[], float]:
    return lambda: float(getattr(stats(), field))


class Monitor:
    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = stale_after_s
        self.started = time.monotonic()
        self._leases: Leases | None = None  # POLL_COORDINATION=postgres: /healthz also asks for a working heartbeat
        self.last_cycle: float | None = None  # monotonic time the last tick was handled
        r = self.registry = CollectorRegistry()
        self.cycles = Counter("emm_cycles", "Poll cycles completed", registry=r)
        self.ticks_skipped = Counter("emm_endpoint_ticks_skipped",  # named before buses: kept for dashboards
                                     "Ticks a bus sat out: still busy with an earlier cycle", registry=r)
        self.ticks_late_skipped = Counter("emm_meter_ticks_late_skipped",
                                          "Meter ticks skipped because their tick came late (the event loop "
                                          "stalled, the wall clock stepped forward)", registry=r)
        self.cycle_seconds = Gauge("emm_cycle_duration_seconds", "Duration of the last cycle", registry=r)
        self.last_cycle_ts = Gauge("emm_last_cycle_timestamp_seconds", "Unix time the last cycle completed",
                                   registry=r)
        self.readings = Counter("emm_readings", "Readings taken and handed to the sink", registry=r)
        self.invalid = Counter("emm_invalid_readings",
                               "Values not written (NaN, not available, refused, counters held back)", registry=r)
        self.counter_rejects = Counter("emm_counter_readings_rejected",
                                       "Counter readings held back by the counter guard, by reason "
                                       "(backwards, zero, too_fast)", ["reason"], registry=r)
        for reason in REASONS:  # each reason's series from the start, at 0
            self.counter_rejects.labels(reason)
        self.requests = Counter("emm_modbus_requests", "Modbus requests sent", registry=r)
        self.config_problems = Gauge("emm_configuration_problems", "Rows skipped in the configuration",
                                     registry=r)
        labels = ["meter", "host", "slave_address", "type"]
        self.meter_up = Gauge("emm_meter_up", "1 when the meter's last poll succeeded", labels, registry=r)
        self.meter_errors = Counter("emm_meter_errors", "Failed Modbus requests per meter", labels, registry=r)
        # each meter's one label set in the two series above, and its two series (children), kept with
        # the Meter object they were made for: looked up once per meter and cycle, not by labels each time
        self._labels: dict[int, tuple[Meter, MeterLabels, Any, Any]] = {}
        self._up: dict[int, int] = {}  # the value each meter's up series holds: set only when it changes
        self._current: set[int] | None = None  # the meters with series (forget_meters_except); None: all
        self._server: asyncio.Server | None = None
        self._connections = 0
        self.request_timeout_s = 5.0  # for the whole request: a slow client is cut off

    def watch_outbox(self, stats: Callable[[], OutboxStats]) -> None:
        """Export the outbox's counters: memory, spool, and every way a reading can be lost
        (read when /metrics is asked)."""
        r = self.registry
        for name, doc, field in (
            ("emm_write_queue_points", "Readings waiting in memory for InfluxDB (in flight included)",
             "memory_points"),
            ("emm_spool_points", "Readings waiting in the spool for InfluxDB", "spool_points"),
            ("emm_spool_bytes", "Size of the spool on disk", "spool_bytes"),
            ("emm_written_points_total", "Readings InfluxDB accepted since start", "written_points"),
            ("emm_spooled_points_total", "Readings put in the spool since start", "spooled_points"),
            ("emm_replayed_points_total", "Spooled readings written to InfluxDB since start", "replayed_points"),
            ("emm_dead_lettered_points_total", "Readings InfluxDB rejected for good (dead-letter file)",
             "dead_lettered_points"),
            ("emm_dropped_points_total", "Readings lost, all reasons (the four emm_dropped_*_points_total)",
             "dropped_points"),
            ("emm_dropped_spool_full_points_total", "Readings evicted for room: POLL_SPOOL_MAX_MB or a full disk",
             "dropped_spool_full_points"),
            ("emm_dropped_disk_error_points_total", "Readings lost to a damaged or unreadable spool",
             "dropped_disk_error_points"),
            ("emm_dropped_dead_letter_points_total", "Rejected readings the dead-letter file could not take",
             "dropped_dead_letter_points"),
            ("emm_dropped_memory_points_total", "Readings dropped from memory: neither InfluxDB nor the spool "
             "could take them", "dropped_memory_points"),
            ("emm_points_not_written_total", "Readings not written with no spool to keep them (--dry-run)",
             "failed_points"),
            ("emm_spool_damaged_records_total", "Spool records found damaged, cut short or unreadable",
             "damaged_records"),
            ("emm_spool_skipped_files", "Entries in the spool directory left alone (not a readable segment)",
             "skipped_spool_files"),
        ):
            Gauge(name, doc, registry=r).set_function(_reader(stats, field))

    def watch_leases(self, leases: Leases) -> None:
        """Export this instance's share of the fleet (POLL_COORDINATION=postgres)."""
        self._leases = leases
        r = self.registry
        Gauge("emm_buses_leased", "Buses this instance holds the lease of (polls)", registry=r).set_function(
            lambda: float(len(leases.held())))
        Gauge("emm_bus_takeovers_total", "Buses claimed after another instance's lease expired",
              registry=r).set_function(lambda: float(leases.takeovers))
        Gauge("emm_lease_heartbeats_failed_total", "Lease heartbeats PostgreSQL did not answer",
              registry=r).set_function(lambda: float(leases.beats_failed))
        Gauge("emm_meter_ticks_missed_total", "Meter ticks no instance polled (fully) because their bus changed "
              "instance, counted by the instance that polls the bus next (README, \"Several pollers\")",
              registry=r).set_function(lambda: float(leases.ticks_missed))

    def watch_workers(self, pool: WorkerPool) -> None:
        """Export the worker processes' restarts (POLL_WORKERS > 0)."""
        Gauge("emm_worker_restarts_total", "Worker processes that died and were replaced",
              registry=self.registry).set_function(lambda: float(pool.restarts))

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
        self.ticks_skipped.inc(report.buses_busy)
        current = self._current
        for res in report.results:
            for reason in res.counter_rejects:
                self.counter_rejects.labels(reason).inc()
            if res.handed_off:
                continue  # another instance holds its bus's lease now: up or not is its to say
            if current is not None and res.meter.id not in current:
                continue  # forgotten while this cycle polled it (deleted, disabled, its bus given back)
            meter_id = res.meter.id
            _, _, up, errors = self._meter_series(res.meter)
            value = 1 if res.ok else 0
            if self._up.get(meter_id) != value:
                up.set(value)
                self._up[meter_id] = value
            if res.errors:
                errors.inc(res.errors)

    def _meter_series(self, meter: Meter) -> tuple[Meter, MeterLabels, Any, Any]:
        """The meter's label set and its two series; a meter has one label set, so when its
        host, unit id or type changed, the series under the old labels go (they would stay frozen)."""
        cached = self._labels.get(meter.id)
        if cached is not None and cached[0] is meter:
            return cached
        key = meter_labels(meter)
        if cached is not None and cached[1] != key:
            self._remove(meter.id)
        cached = self._labels[meter.id] = (meter, key, self.meter_up.labels(*key), self.meter_errors.labels(*key))
        return cached

    def _remove(self, meter_id: int) -> None:
        key = self._labels.pop(meter_id)[1]
        self._up.pop(meter_id, None)
        for metric in (self.meter_up, self.meter_errors):
            try:
                metric.remove(*key)
            except KeyError:
                pass

    def forget_meters_except(self, meters: Iterable[Meter | int]) -> None:
        """A new configuration: drop the series of meters it no longer has, and of those
        whose labels it changed (their next poll starts the new series). Takes the
        configuration's meters, or only their ids."""
        current: dict[int, MeterLabels | None] = {}
        for m in meters:
            if isinstance(m, int):
                current[m] = None
            else:
                current[m.id] = meter_labels(m)
        self._current = set(current)
        for meter_id, (_, key, _, _) in list(self._labels.items()):
            if meter_id not in current or current[meter_id] not in (None, key):
                self._remove(meter_id)

    def health(self) -> tuple[bool, str]:
        now = time.monotonic()
        leases = self._leases
        if leases is not None:  # with no heartbeat answered for a lease's time, no bus is held: nothing is polled
            since = leases.beat_ok_at or self.started
            if now - since > leases.effective_lease_s:
                return False, (f"no lease heartbeat answered for {now - since:.0f} s ({leases.where}): this instance "
                               "holds no bus and polls nothing")
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
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_LINE)
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("health and metrics on http://%s:%d/healthz and /metrics", host, bound)
        return bound

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= MAX_CONNECTIONS:
            log.debug("health server: %d connections open, one more closed", self._connections)
            writer.close()
            return
        self._connections += 1
        try:
            async with asyncio.timeout(self.request_timeout_s):
                head = await self._read_head(reader)
                writer.write(self._response(head) if isinstance(head, list) else head)
                await writer.drain()
        except (TimeoutError, OSError, EOFError) as exc:  # slow, gone or reset: nothing to answer
            log.debug("health server: request dropped (%s)", type(exc).__name__)
        except Exception:  # a bug here must not look like a client's fault, nor kill the server
            log.exception("health server: answering a request failed")
        finally:
            self._connections -= 1
            writer.close()

    async def _read_head(self, reader: asyncio.StreamReader) -> list[str] | bytes:
        """The request line split in words, or the error response to send instead."""
        lines: list[bytes] = []
        while len(lines) <= MAX_HEADERS + 1:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                return _error("414 URI Too Long" if not lines else "431 Request Header Fields Too Large")
            except asyncio.IncompleteReadError as exc:
                if not lines and not exc.partial:
                    raise EOFError from None  # connected and closed: a port check
                return _error("400 Bad Request")
            if line in (b"\r\n", b"\n"):
                break
            lines.append(line)
        else:
            return _error("431 Request Header Fields Too Large")
        if not lines:
            return _error("400 Bad Request")
        parts = lines[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _error("400 Bad Request")
        return parts

    def _response(self, parts: list[str]) -> bytes:
        method, target = parts[0], parts[1]
        path = target.split("?")[0]
        if method not in ("GET", "HEAD"):
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
        return head if method == "HEAD" else head + body


def _error(status: str) -> bytes:
    body = status.encode() + b"\n"
    log.debug("health server: answered %s", status)
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body
