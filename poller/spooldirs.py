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
    """

    def __init__(self, settings: Settings, own: Path) -> None:
        self.root = Path(settings.spool_dir)
        self.max_bytes = settings.spool_max_mb * MIB
        self.own = own.resolve()
        self._nothing: dict[Path, frozenset[tuple[str, int, int]]] = {}  # looked at, nothing to send: its files
        self._said: set[Path] = set()  # could not be opened: said once

    def find(self) -> list[Spool]:
        """Those with readings waiting, opened: their locks are the caller's now (it closes them)."""
        found: list[Spool] = []
        try:
            slots = sorted(p for p in self.root.glob("instance-*") if p.is_dir())
        except OSError as exc:
            log.warning("spool: cannot look for readings left under %s (%s)", self.root, exc.strerror)
            return found
        for where in [self.root, *slots]:
            try:
                if where.resolve() == self.own or not (files := self._segment_files(where)):
                    continue
                if self._nothing.get(where) == files:
                    continue
                other = Spool(where, self.max_bytes)
            except SpoolInUse:
                continue
            except (SpoolError, OSError) as exc:
                if where not in self._said:
                    self._said.add(where)
                    log.warning("spool: readings may wait in %s, but it cannot be opened (%s); they are sent once "
                                "an instance can open it", where, exc)
                continue
            self._said.discard(where)
            if other.pending_points:
                self._nothing.pop(where, None)
                found.append(other)
            else:
                other.close()
                self._nothing[where] = self._segment_files(where)
        return found

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
