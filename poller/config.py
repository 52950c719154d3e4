"""The configuration as the poller sees it: loaded off the poll path, last good kept.

`ConfigSource` reads PostgreSQL (blocking: the service calls it from one worker
thread, `--check`, `--once` and the simulator call `load()` directly). Every wait
has a bound: a connect timeout; per session `statement_timeout`, and a short
`lock_timeout`, so an admin's open `BEGIN; ALTER TABLE registers ...` makes our
read fail fast and be retried rather than queue behind it; TCP keepalives and
`tcp_user_timeout` for a server that is gone. A server that is there but does not
answer (SIGSTOPped, wedged) acknowledges every packet, which no socket option
notices, so the session runs psycopg2 in its asynchronous mode and gives up
itself when no answer came within statement_timeout plus a margin. The session is
read-only. A change counter kept by triggers (config_version, db/init.sql) makes
an unchanged configuration cost one tiny query; a change costs what changed
(store.Loader), and unchanged rows give back the very same objects, so plans,
learned splits and series keys cached per meter stay valid.

`ConfigWatcher` is the asyncio side: it checks every `interval_s` in ONE worker
thread (loads never overlap), swaps `current` and sets `changed` when the
configuration changed. A load that hangs never blocks the event loop or a tick;
it only delays the next check. If PostgreSQL is away, locked or hung, polling goes
on with the last configuration that loaded, said once per streak at ERROR, and
the recovery once at INFO.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import selectors
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .settings import Settings
from .store import Configuration, Loader, Row

log = logging.getLogger("poller.config")

CONNECT_TIMEOUT_S = 5.0
STATEMENT_TIMEOUT_S = 10.0  # the longest read: 250,000 registers take ~1 s
LOCK_TIMEOUT_S = 2.0  # an admin's lock: fail fast, try again at the next check
ANSWER_MARGIN_S = 5.0  # no answer within statement_timeout + this: the server is hung
HANG_REPORT_S = 10.0  # a check unanswered this long is reported (polling goes on regardless)
RETRY_S = 5.0  # at start, with no configuration yet

T = TypeVar("T")


class ConfigError(Exception):
    """The configuration could not be read (and, from `load()`, there is no earlier one to use)."""


class NoAnswer(Exception):
    """PostgreSQL did not answer in time (hung, stopped, or a network that drops packets)."""


class _Session:
    """One read-only PostgreSQL session whose every wait has a deadline (psycopg2's async mode)."""

    def __init__(self, dsn: dict[str, Any], connect_timeout_s: float, answer_timeout_s: float) -> None:
        import psycopg2

        self.answer_timeout_s = answer_timeout_s
        self.conn = psycopg2.connect(**dsn, async_=True)
        try:
            self._wait(connect_timeout_s, "connecting")
        except BaseException:
            self.close()
            raise

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cur = self.conn.cursor()
        try:
            cur.execute(sql, params or None)
            self._wait(self.answer_timeout_s, "waiting for an answer")
            return list(cur.fetchall()) if cur.description is not None else []
        finally:
            cur.close()

    def _wait(self, seconds: float, doing: str) -> None:
        from psycopg2.extensions import POLL_OK, POLL_READ

        deadline = time.monotonic() + seconds
        with selectors.DefaultSelector() as selector:
            registered = False
            while True:
                state = self.conn.poll()
                if state == POLL_OK:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NoAnswer(f"no answer within {seconds:g} s while {doing} (is the server hung or stopped?)")
                events = selectors.EVENT_READ if state == POLL_READ else selectors.EVENT_WRITE
                if registered:
                    selector.modify(self.conn.fileno(), events)
                else:
                    selector.register(self.conn.fileno(), events)
                    registered = True
                selector.select(left)

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass


def session_dsn(settings: Settings, *, connect_timeout_s: float, statement_timeout_s: float, lock_timeout_s: float,
                answer_timeout_s: float, read_only: bool) -> dict[str, Any]:
    """Connection parameters for a session whose every wait is bounded (the lease session of
    poller/lease.py writes; the configuration's is read-only)."""
    def ms(seconds: float) -> int:
        return max(1, math.ceil(seconds * 1000))

    options = (f"-c statement_timeout={ms(statement_timeout_s)} -c lock_timeout={ms(lock_timeout_s)} "
               f"-c idle_in_transaction_session_timeout={ms(answer_timeout_s)} "
               # the poller's login is read-only by default (db/10-poller-role.sh); the lease session
               # turns that off to write its coordination tables, the only ones it is granted
               f"-c default_transaction_read_only={'on' if read_only else 'off'}")
    return {
        **settings.postgres_dsn(),
        "connect_timeout": max(1, math.ceil(connect_timeout_s)),
        "options": options,
        # a server that is gone (host down, cable cut): the kernel gives up on the socket
        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
        "tcp_user_timeout": ms(answer_timeout_s),
    }


class ConfigSource:
    """Reads the configuration from PostgreSQL; blocking, to be used from one thread at a time."""

    def __init__(self, settings: Settings, *, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 statement_timeout_s: float = STATEMENT_TIMEOUT_S, lock_timeout_s: float = LOCK_TIMEOUT_S,
                 answer_timeout_s: float | None = None) -> None:
        self.settings = settings
        s = settings
        self.where = f"PostgreSQL {s.postgres_user}@{s.postgres_host}:{s.postgres_port}/{s.postgres_db}"
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_s = statement_timeout_s
        self.lock_timeout_s = lock_timeout_s
        self.answer_timeout_s = answer_timeout_s or statement_timeout_s + ANSWER_MARGIN_S
        self.current: Configuration | None = None
        self._loader = Loader()
        self._session: _Session | None = None
        self._version: int | None = None
        self._reported: set[str] = set()
        self._down = False
        self._lock = threading.Lock()

    def dsn(self) -> dict[str, Any]:
        """Connection parameters: the settings', with the timeouts and a read-only session."""
        return session_dsn(self.settings, connect_timeout_s=self.connect_timeout_s,
                           statement_timeout_s=self.statement_timeout_s, lock_timeout_s=self.lock_timeout_s,
                           answer_timeout_s=self.answer_timeout_s, read_only=True)

    def refresh(self) -> Configuration:
        """The configuration as it is now: `current` itself when nothing changed.

        Blocking, bounded (connect timeout, statement and lock timeouts, answer
        deadline); raises ConfigError saying why when PostgreSQL cannot be read.
        """
        import psycopg2

        with self._lock:
            try:
                config = self._read()
            except (psycopg2.Error, NoAnswer, OSError) as exc:
                self._drop_session()
                reason = " ".join(str(exc).split()) or type(exc).__name__
                raise ConfigError(f"cannot read the configuration from {self.where}: {reason}") from None
            except BaseException:
                self._drop_session()  # a bug while loading: never leave a transaction open
                raise
            if config is not self.current:
                for problem in config.problems:
                    if problem not in self._reported:
                        log.warning("configuration: %s", problem)
                self._reported = set(config.problems)
                if self.current is not None:
                    log.info("configuration changed: %d meters", len(config.meters))
                self.current = config
            return config

    def _read(self) -> Configuration:
        import psycopg2

        if self._session is None:
            self._session = _Session(self.dsn(), self.connect_timeout_s, self.answer_timeout_s)
        session = self._session
        try:
            rows = session.query("SELECT version FROM config_version")
            version = int(rows[0][0]) if rows else None
        except (psycopg2.errors.UndefinedTable, psycopg2.errors.InsufficientPrivilege):
            version = None  # an older database: read the fingerprints at every check
        if version is not None and version == self._version and self.current is not None:
            return self.current
        session.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        config = self._loader.load(session.query)
        session.query("ROLLBACK")
        self._version = version  # read before the snapshot: a change in between only costs a check
        return config

    def load(self) -> Configuration:
        """A fresh configuration, or the last good one when PostgreSQL fails.

        ConfigError when it cannot be read and there is no earlier one. For
        `--check`, `--once` and the simulator; the service uses ConfigWatcher.
        """
        try:
            config = self.refresh()
        except ConfigError as exc:
            if self.current is None:
                raise
            if not self._down:
                log.error("%s; polling goes on with the last configuration loaded", exc)
            self._down = True
            return self.current
        if self._down:
            log.info("configuration readable again from %s", self.where)
            self._down = False
        return config

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def close(self) -> None:
        """Close the connection (from the thread that uses the source)."""
        self._drop_session()


class _Worker:
    """One daemon thread running blocking jobs in order; results come back as asyncio futures.

    Daemon: a load stuck on a hung server must not hold up the process's exit.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Any, Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        future.add_done_callback(_retrieve)  # an abandoned load's error is not "never retrieved"
        self._start()
        self._jobs.put((job, loop, future))
        return future

    def stop(self, last: Callable[[], Any] | None = None) -> None:
        """Run `last` after the jobs queued (in the thread), then end the thread."""
        if self._thread is None:
            if last is not None:
                last()
            return
        if last is not None:
            self._jobs.put((last, None, None))
        self._jobs.put(None)

    def join(self, timeout: float | None = None) -> bool:
        """True when the thread has ended (or never started)."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
            self._thread.start()

    def _main(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, loop, future = item
            try:
                outcome: tuple[str, Any] = ("result", job())
            except Exception as exc:  # noqa: BLE001 - handed to the awaiting side
                outcome = ("exception", exc)
            if future is None:
                continue
            try:
                loop.call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:  # the event loop is closed: nobody waits for this load any more
                pass


def _settle(future: asyncio.Future[Any], kind: str, value: Any) -> None:
    if future.done():
        return
    if kind == "result":
        future.set_result(value)
    else:
        future.set_exception(value)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _wait(future: asyncio.Future[Any], stop: asyncio.Event, timeout: float | None) -> str:
    """'done' when `future` is, 'stop' when `stop` is set first, 'timeout' after `timeout` s."""
    if not future.done():
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({future, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
    if future.done():
        return "done"
    return "stop" if stop.is_set() else "timeout"


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep; True when asked to stop meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
        return True
    except TimeoutError:
        return False


class ConfigWatcher:
    """Keeps `current` up to date from a ConfigSource, off the event loop.

    `changed` is set whenever `run()` replaces `current` by a different
    configuration (the caller clears it). Nothing here ever waits on PostgreSQL in
    the event loop: loads run in one worker thread, one at a time.
    """

    def __init__(self, source: ConfigSource, interval_s: float = 1.0, *, hang_report_s: float = HANG_REPORT_S,
                 retry_s: float = RETRY_S) -> None:
        self.source = source
        self.interval_s = interval_s
        self.hang_report_s = hang_report_s
        self.retry_s = retry_s
        self.current: Configuration | None = source.current
        self.changed = asyncio.Event()
        self._worker = _Worker("emm-config")
        self._inflight: asyncio.Future[Configuration] | None = None
        self._down = False  # a failure streak is under way (reported once)

    def _load(self) -> asyncio.Future[Configuration]:
        """The load under way, or a new one: never two at once."""
        if self._inflight is None or self._inflight.done():
            self._inflight = self._worker.submit(self.source.refresh)
        return self._inflight

    async def first(self, stop: asyncio.Event) -> Configuration | None:
        """The first configuration, trying again every `retry_s`; None when `stop` is set first."""
        reported = False
        while not stop.is_set():
            future = self._load()
            if await _wait(future, stop, None) != "done":
                return None
            try:
                config = future.result()
            except ConfigError as exc:
                message = str(exc)
            except Exception as exc:  # noqa: BLE001 - a bug while loading: say so, keep trying
                log.error("configuration load failed (a bug; please report it)", exc_info=exc)
                message = f"cannot read the configuration from {self.source.where}: {type(exc).__name__}: {exc}"
            else:
                if reported:
                    log.info("configuration readable again from %s", self.source.where)
                self.current = config
                return config
            log.log(logging.DEBUG if reported else logging.ERROR, "%s; trying again in %g s", message, self.retry_s)
            reported = True
            if await _sleep_or_stop(stop, self.retry_s):
                return None
        return None

    async def run(self, stop: asyncio.Event) -> None:
        """Check for changes every `interval_s` until `stop` is set."""
        while not stop.is_set():
            future = self._load()
            outcome = await _wait(future, stop, self.hang_report_s)
            if outcome == "timeout":
                if not self._down:
                    log.error("%s has not answered for %g s; polling goes on with the last configuration loaded",
                              self.source.where, self.hang_report_s)
                    self._down = True
                outcome = await _wait(future, stop, None)
            if outcome != "done":
                return
            self._take(future)
            if await _sleep_or_stop(stop, self.interval_s):
                return

    def _take(self, future: asyncio.Future[Configuration]) -> None:
        try:
            config = future.result()
        except ConfigError as exc:
            if not self._down:
                log.error("%s; polling goes on with the last configuration loaded", exc)
            else:
                log.debug("%s", exc)
            self._down = True
            return
        except Exception as exc:  # noqa: BLE001 - a bug while loading: the last configuration stays
            if not self._down:
                log.error("configuration reload failed (a bug; please report it); polling goes on with the "
                          "last configuration loaded", exc_info=exc)
            self._down = True
            return
        if self._down:
            log.info("configuration readable again from %s", self.source.where)
            self._down = False
        if config is not self.current:
            self.current = config
            self.changed.set()

    def close(self) -> None:
        """Close the source's connection once the load under way (if any) is over; end the worker."""
        self._worker.stop(self.source.close)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker thread to end (tests); True when it has."""
        return self._worker.join(timeout)
