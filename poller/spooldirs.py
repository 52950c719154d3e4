"""Which spool directory under POLL_SPOOL_DIR is this instance's, and which wait for no one.

With POLL_COORDINATION=postgres each instance takes the first free slot `instance-N`, so
replicas sharing one volume (`docker compose up --scale poller=3`) never share a spool.
Readings can be left where no running instance looks: in the slots of replicas gone after
scaling down, at the top level after switching to POLL_COORDINATION=postgres, in slots
after switching back. `stranded` finds and opens them (each under its own lock, so a
directory a running instance holds is never touched); the outbox sends them (Outbox.adopt).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from .settings import Settings
from .spool import MIB, SEGMENT_PREFIX, SEGMENT_SUFFIX, Spool, SpoolError, SpoolInUse

log = logging.getLogger(__name__)

SPOOL_SLOTS = 64  # POLL_COORDINATION=postgres: instances sharing one POLL_SPOOL_DIR


def open_spool(settings: Settings) -> Spool:
    """The spool; with POLL_COORDINATION=postgres, the first free slot `instance-N` under
    POLL_SPOOL_DIR. Raises SpoolError when none can be used."""
    if settings.coordination != "postgres":
        return Spool(settings.spool_dir, settings.spool_max_mb * MIB)
    for n in range(SPOOL_SLOTS):
        try:
            spool = Spool(Path(settings.spool_dir) / f"instance-{n}", settings.spool_max_mb * MIB)
        except SpoolInUse:
            continue
        log.info("spool: %s (slot %d of POLL_SPOOL_DIR)", spool.dir, n)
        return spool
    raise SpoolError(f"POLL_SPOOL_DIR={settings.spool_dir}: all {SPOOL_SLOTS} instance slots are in use")


class Stranded:
    """Finds the spool directories under POLL_SPOOL_DIR, other than this instance's own, that no
    running poller holds and that have readings waiting (`find`, called again and again).

    The top level and every slot are looked at, each opened under its own lock: one a running
    instance holds is skipped (it sends its own). A directory without a segment file is not
    opened; one opened with nothing to send (only files the spool skips, said by Spool once) is
    not opened again until its segment files change, and one that cannot be opened is said once.
    One with damage found on opening is handed over even with nothing left to send, so that
    what it lost is counted where the rest is (Outbox.stats).
    """

    def __init__(self, settings: Settings, own: Path) -> None:
        self.root = Path(settings.spool_dir)
        self.max_bytes = settings.spool_max_mb * MIB
        self.own = own.resolve()
        self._nothing: dict[Path, frozenset[tuple[str, int, int]]] = {}  # looked at, nothing to send: its files
        self._said: set[Path] = set()  # could not be opened: said once
        self._stop = threading.Event()

    def stop(self) -> None:
        """A `find` under way returns after the directory it is opening (the service stops)."""
        self._stop.set()

    def find(self) -> list[Spool]:
        """Those with readings waiting, opened: their locks are the caller's now (it closes them)."""
        found: list[Spool] = []
        try:
            where_all = spool_dirs(self.root)
        except OSError as exc:
            log.warning("spool: cannot look for readings left under %s (%s)", self.root, exc.strerror)
            return found
        try:
            for where in where_all:
                if self._stop.is_set():
                    break
                if (other := self._open(where)) is not None:
                    found.append(other)
        except BaseException:  # a bug, or MemoryError: the locks taken so far are not kept
            for other in found:
                other.close()
            raise
        return found

    def _open(self, where: Path) -> Spool | None:
        """`where` opened when it has readings waiting (or damage to count), else None."""
        try:
            if where.resolve() == self.own or not (files := self._segment_files(where)):
                return None
            if self._nothing.get(where) == files:
                return None
            other = Spool(where, self.max_bytes, taken_over=True)
        except SpoolInUse:
            return None
        except (SpoolError, OSError) as exc:
            if where not in self._said:
                self._said.add(where)
                log.warning("spool: readings may wait in %s, but it cannot be opened (%s); they are sent once "
                            "an instance can open it", where, exc)
            return None
        self._said.discard(where)
        if other.pending_points or other.damaged_records:
            self._nothing.pop(where, None)
            return other
        other.close()
        self._nothing[where] = self._segment_files(where)
        return None

    @staticmethod
    def _segment_files(where: Path) -> frozenset[tuple[str, int, int]]:
        """The segment files in `where`, each with its size and change time."""
        files = set()
        for path in where.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"):
            try:
                st = path.lstat()
            except OSError:  # gone meanwhile (its instance sent it), or unreadable: Spool says which
                continue
            files.add((path.name, st.st_size, st.st_mtime_ns))
        return frozenset(files)


def spool_dirs(root: Path) -> list[Path]:
    """POLL_SPOOL_DIR and its slots (instance-0, instance-1, ... in their numbers' order), whichever
    exist: every directory a poller on this volume keeps its spool and counter state in."""
    return [root, *sorted((p for p in root.glob("instance-*") if p.is_dir()), key=_slot_number)]


def _slot_number(path: Path) -> tuple[int, str]:
    """instance-2 before instance-10; a name that is no slot number after them all."""
    digits = path.name[len("instance-"):]
    return (int(digits), "") if digits.isascii() and digits.isdigit() else (1 << 62, path.name)
