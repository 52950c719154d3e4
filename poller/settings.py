"""Settings from the environment (names shared with the official images)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from . import loop
from .schedule import CronError, validate_cron

DEFAULT_POLL_CRON = "* * * * * */10"  # every 10 seconds (sixth field = seconds)


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    postgres_host: str = "localhost"
    postgres_port: int = 5432
    postgres_db: str = "energy"
    postgres_user: str = "postgres"
    postgres_password: str = ""
    influxdb_url: str = "http://localhost:8086"
    influxdb_token: str = ""
    influxdb_org: str = ""
    influxdb_bucket: str = "energy"
    poll_cron: str = DEFAULT_POLL_CRON
    max_parallel_endpoints: int = 256
    workers: int = 0  # POLL_WORKERS: worker processes polling the buses; 0: in the main process
    event_loop: str = "auto"  # POLL_EVENT_LOOP (poller/loop.py): auto = uvloop when installed, else asyncio
    # --- health and metrics (poller/monitor.py) ---
    http_host: str = "127.0.0.1"
    http_port: int = 9108  # 0: no HTTP endpoint
    health_stale_s: float = 0.0  # 0: three schedule intervals, at least 60 s
    # --- durable spool (poller/spool.py, README: When InfluxDB is away) ---
    spool_dir: str = "spool"  # relative to the working directory; compose: /var/lib/emm/spool
    spool_max_mb: int = 512
    spool_retry_max_s: int = 60
    write_buffer_points: int = 100_000  # readings held in memory before they go to the spool
    # --- several pollers sharing one fleet (poller/lease.py, README: Several pollers) ---
    coordination: str = "none"  # "postgres": each bus polled by the one instance holding its lease
    lease_s: float = 10.0

    def postgres_dsn(self) -> dict[str, object]:
        return {
            "host": self.postgres_host,
            "port": self.postgres_port,
            "dbname": self.postgres_db,
            "user": self.postgres_user,
            "password": self.postgres_password,
            "connect_timeout": 10,
            "application_name": "emm-poller",
        }

    def __repr__(self) -> str:  # never print credentials
        return (f"Settings(postgres={self.postgres_user}@{self.postgres_host}:{self.postgres_port}/"
                f"{self.postgres_db}, influxdb={self.influxdb_url} org={self.influxdb_org} "
                f"bucket={self.influxdb_bucket}, poll_cron={self.poll_cron!r})")


def load_env_file(path: str | os.PathLike[str] = ".dev.env") -> bool:
    """Load `.dev.env` when present; variables already in the environment win."""
    if not Path(path).is_file():
        return False
    from dotenv import load_dotenv

    return load_dotenv(path, override=False)


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env

    def get(name: str, default: str) -> str:
        value = env.get(name)
        return default if value is None or value.strip() == "" else value.strip()

    def get_int(name: str, default: int, low: int, high: int) -> int:
        raw = get(name, str(default))
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a whole number") from None
        if not low <= value <= high:
            raise SettingsError(f"{name}={value} outside {low}..{high}")
        return value

    url = get("INFLUXDB_URL", Settings.influxdb_url)
    if not url.startswith(("http://", "https://")):
        raise SettingsError(f"INFLUXDB_URL={url!r} must start with http:// or https://")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number in 0..65535
    except ValueError as exc:
        raise SettingsError(f"INFLUXDB_URL={url!r} is not a URL InfluxDB can be reached at ({exc})") from None
    if not parts.hostname:
        raise SettingsError(f"INFLUXDB_URL={url!r} names no host")
    try:  # schedule.py owns cron: 5 or 6 fields, croniter-valid, and it must fire
        poll_cron = validate_cron(get("POLL_CRON", DEFAULT_POLL_CRON), "POLL_CRON")
    except CronError as exc:
        raise SettingsError(str(exc)) from None
    coordination = get("POLL_COORDINATION", Settings.coordination).lower()
    if coordination not in ("none", "postgres"):
        raise SettingsError(f"POLL_COORDINATION={coordination!r} must be 'none' (one poller) or 'postgres' "
                            "(several pollers share the fleet through PostgreSQL)")
    event_loop = get("POLL_EVENT_LOOP", Settings.event_loop).lower()
    if event_loop not in loop.CHOICES:
        raise SettingsError(f"POLL_EVENT_LOOP={event_loop!r} must be one of {', '.join(loop.CHOICES)}")
    if event_loop == "uvloop" and not loop.available():
        raise SettingsError("POLL_EVENT_LOOP=uvloop, but uvloop is not installed here (pip install uvloop, "
                            "or POLL_EVENT_LOOP=auto)")
    return Settings(
        postgres_host=get("POSTGRES_HOST", Settings.postgres_host),
        postgres_port=get_int("POSTGRES_PORT", Settings.postgres_port, 1, 65535),
        postgres_db=get("POSTGRES_DB", Settings.postgres_db),
        postgres_user=get("POSTGRES_USER", Settings.postgres_user),
        postgres_password=env.get("POSTGRES_PASSWORD", ""),
        influxdb_url=url.rstrip("/"),
        influxdb_token=env.get("INFLUXDB_TOKEN", ""),
        influxdb_org=get("INFLUXDB_ORG", Settings.influxdb_org),
        influxdb_bucket=get("INFLUXDB_BUCKET", Settings.influxdb_bucket),
        poll_cron=poll_cron,
        max_parallel_endpoints=get_int("POLL_MAX_PARALLEL", Settings.max_parallel_endpoints, 1, 10000),
        workers=get_int("POLL_WORKERS", Settings.workers, 0, 64),
        event_loop=event_loop,
        http_host=get("POLL_HTTP_HOST", Settings.http_host),
        http_port=get_int("POLL_HTTP_PORT", Settings.http_port, 0, 65535),
        health_stale_s=float(get_int("POLL_HEALTH_STALE_S", 0, 0, 7 * 86400)),
        # --- durable spool ---
        spool_dir=get("POLL_SPOOL_DIR", Settings.spool_dir),
        spool_max_mb=get_int("POLL_SPOOL_MAX_MB", Settings.spool_max_mb, 1, 1_000_000),
        spool_retry_max_s=get_int("POLL_SPOOL_RETRY_MAX_S", Settings.spool_retry_max_s, 1, 3600),
        write_buffer_points=get_int("POLL_WRITE_BUFFER", Settings.write_buffer_points, 1000, 10_000_000),
        coordination=coordination,
        lease_s=float(get_int("POLL_LEASE_S", int(Settings.lease_s), 2, 3600)),
    )
