"""The configuration as the poller sees it: reloaded every cycle, last good kept.

If PostgreSQL is away, polling goes on with the last configuration that loaded;
the connection is reopened at the next cycle. A change counter kept by triggers
(config_version, db/init.sql) makes an unchanged configuration cost one tiny
query; unchanged rows give back the very same objects, so plans and series keys
cached per meter stay valid.
"""

from __future__ import annotations

import logging
from typing import Any

from .settings import Settings
from .store import Configuration, build_configuration, config_version, load_rows

log = logging.getLogger("poller.config")


class ConfigError(Exception):
    """The configuration could not be read and there is no earlier one to use."""


class ConfigSource:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: Any = None
        self._rows: Any = None
        self._version: int | None = None
        self.current: Configuration | None = None
        self._reported: set[str] = set()
        self._down = False

    def _connect(self) -> Any:
        import psycopg2

        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(**self.settings.postgres_dsn())
        return self._conn

    def load(self) -> Configuration:
        """A fresh configuration, or the last good one when PostgreSQL fails."""
        import psycopg2

        s = self.settings
        where = f"PostgreSQL {s.postgres_user}@{s.postgres_host}:{s.postgres_port}/{s.postgres_db}"
        try:
            conn = self._connect()
            version = config_version(conn)
            unchanged = version is not None and version == self._version and self.current is not None
            rows = None if unchanged else load_rows(conn)
            self._version = version
        except psycopg2.Error as exc:
            self.close()
            reason = " ".join(str(exc).split()) or type(exc).__name__
            if self.current is None:
                raise ConfigError(f"cannot read the configuration from {where}: {reason}") from None
            if not self._down:
                log.error("cannot read the configuration from %s: %s; polling goes on with the last "
                          "configuration loaded", where, reason)
            self._down = True
            return self.current
        if self._down:
            log.info("configuration readable again from %s", where)
            self._down = False
        if self.current is not None and (rows is None or rows == self._rows):
            return self.current  # nothing changed: the very same objects
        assert rows is not None  # rows are only skipped once a configuration is loaded
        config = build_configuration(*rows)
        for problem in config.problems:
            if problem not in self._reported:
                log.warning("configuration: %s", problem)
        self._reported = set(config.problems)
        if self.current is not None:
            log.info("configuration changed: %d meters", len(config.meters))
        self._rows, self.current = rows, config
        return config

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass
            self._conn = None
