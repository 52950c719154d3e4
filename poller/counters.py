"""The counter guard: a cumulative counter's reading is written only when it can be true.

A register declared `registers.kind = 'counter'` (an energy total) only ever grows. A
reading of it is held back, not written, when it

- goes backwards (below the last value written),
- drops to zero (a momentary 0, a garbled or empty reply), or
- rises faster than `registers.counter_max_rate` (units per second), when set: a
  spike such as +10 GWh in one poll.

Such a reading is counted (MeterResult.counter_rejects: "backwards", "zero",
"too_fast"; /metrics emm_counter_readings_rejected_total{reason}), its text goes
with the meter's invalid values, and it is logged once per streak: a WARNING when
a streak starts, an INFO when a good reading ends it.

A genuine reset (a replaced meter, a counter cleared on purpose) is told apart by
consistency: when RESET_READINGS readings in a row are each consistent with the
one before (not lower, and within the rate limit over the time between them), and
the last is above zero, the last becomes the new baseline and is written, with a
WARNING. So a replaced meter costs RESET_READINGS - 1 readings, and a counter
stuck at 0 is never taken as a reset.

The first reading ever seen of a counter is taken as it is, except 0 (taken only as
a reset would be). The last value written of every counter is kept across restarts
(`save`/`load`: a small JSON file in the poller's spool directory), so the first
reading after a restart is checked like any other. A stale file is still a valid
check: an older value is a lower bound, and the rate is measured over the real time
since.

Without counter_max_rate, a rise cannot be told from a spike: the spike is written,
and the readings after it count as "backwards" until they are consistent again.
The library's maps set a limit from each device's rating (db/maps/README.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .model import Meter, Register

log = logging.getLogger("poller.counters")

RESET_READINGS = 3  # consistent readings in a row that make a reset genuine
MIN_INTERVAL_S = 1.0  # the rate check's shortest interval (two readings in the same second, a clock step back)
SAVE_EVERY_S = 60.0  # the state file is rewritten at most this often (and at every stop)
STATE_VERSION = 1

REASONS = ("backwards", "zero", "too_fast")
_TEXT = {"backwards": "went backwards", "zero": "dropped to zero", "too_fast": "rose faster than counter_max_rate"}

Key = tuple[int, str, str]  # meter id, measurement, unit: a register's series, as InfluxDB keys it


@dataclass
class _Counter:
    value: float  # the last value written
    time_ms: int  # when it was first read (a device that updates its total every few minutes repeats it)
    streak: list[tuple[float, int]] = field(default_factory=list)  # held back since, consistent with each other
    held: int = 0  # readings held back since the last one written


def describe(reason: str) -> str:
    """A reason code in words: 'went backwards' ..."""
    return _TEXT[reason]


def key_of(meter: Meter, register: Register) -> Key:
    return (meter.id, register.measurement, register.unit or "")


def _consistent(before: float, before_ms: int, value: float, time_ms: int, max_rate: float | None) -> str | None:
    """Why `value` cannot follow `before`, or None when it can."""
    if value < before:
        return "zero" if value == 0 else "backwards"
    if max_rate is not None:
        seconds = max((time_ms - before_ms) / 1000.0, MIN_INTERVAL_S)
        if value - before > max_rate * seconds + 4 * math.ulp(value):  # ulps: the subtraction's rounding
            return "too_fast"
    return None


class CounterGuard:
    """The last written value of every counter, and the check of each new reading."""

    def __init__(self, path: Path | None = None, reset_readings: int = RESET_READINGS) -> None:
        self.path = path  # where the state is kept across restarts; None: not kept
        self.reset_readings = reset_readings
        self._counters: dict[Key, _Counter] = {}
        self._zero_first: set[Key] = set()  # read 0 before any value was written (said once)
        self._saved_at = 0.0
        self._dirty = False
        self._writing = threading.Lock()
        self._write_failed = False

    def __len__(self) -> int:
        return len(self._counters)

    def check(self, meter: Meter, register: Register, value: float, time_ms: int) -> str | None:
        """None when the reading is to be written (and becomes the last value), else the reason
        code it is held back for (REASONS)."""
        key = key_of(meter, register)
        state = self._counters.get(key)
        if state is None:
            return self._first_reading(meter, register, key, value, time_ms)
        reason = _consistent(state.value, state.time_ms, value, time_ms, register.counter_max_rate)
        if reason is None:
            if state.held:
                log.info("%s: counter %s consistent again (%r %s) after %d reading(s) not written", meter,
                         register.measurement, value, register.unit or "", state.held)
            self._write(state, value, time_ms)
            return None
        if not state.held:
            log.warning("%s: counter %s %s (%r -> %r %s): not written until it is consistent again", meter,
                        register.measurement, _TEXT[reason], state.value, value, register.unit or "")
        state.held += 1
        if self._continues(state.streak, value, time_ms, register.counter_max_rate):
            state.streak.append((value, time_ms))
            del state.streak[:-self.reset_readings]  # only its length up to reset_readings counts
        else:
            state.streak = [(value, time_ms)]
        if len(state.streak) >= self.reset_readings and value > 0:
            log.warning("%s: counter %s taken as reset (a replaced or cleared meter): %d consistent readings "
                        "in a row, %r -> %r %s; %d reading(s) not written", meter, register.measurement,
                        len(state.streak), state.value, value, register.unit or "", state.held - 1)
            self._write(state, value, time_ms)
            return None
        return reason

    def _continues(self, streak: list[tuple[float, int]], value: float, time_ms: int, max_rate: float | None) -> bool:
        if not streak:
            return False
        before, before_ms = streak[-1]
        return _consistent(before, before_ms, value, time_ms, max_rate) is None

    def _first_reading(self, meter: Meter, register: Register, key: Key, value: float, time_ms: int) -> str | None:
        if value != 0:
            self._counters[key] = _Counter(value, time_ms)
            self._zero_first.discard(key)
            self._dirty = True
            return None
        if key not in self._zero_first:
            self._zero_first.add(key)
            log.warning("%s: counter %s reads 0 with no earlier value: not written until it moves", meter,
                        register.measurement)
        return "zero"

    def _write(self, state: _Counter, value: float, time_ms: int) -> None:
        if value != state.value:  # the rate runs from when a value was first read: devices count in steps
            state.value, state.time_ms = value, time_ms
        state.streak.clear()
        state.held = 0
        self._dirty = True

    def forget_except(self, meter_ids: set[int]) -> None:
        """Drop the counters of meters no longer configured."""
        for key in [k for k in self._counters if k[0] not in meter_ids]:
            del self._counters[key]
            self._dirty = True
        self._zero_first = {k for k in self._zero_first if k[0] in meter_ids}

    # --- kept across restarts -------------------------------------------------------------

    def load(self, paths: Iterable[Path] | None = None, meters: Collection[int] | None = None) -> None:
        """Read the last values written (of `paths`, default this guard's file; of `meters` only,
        when given): per counter, the newest one, here or there. A missing file is a first start; a
        damaged one is set aside, logged, and costs only the history (the first readings are then
        taken as they come)."""
        for path in list(paths) if paths is not None else ([self.path] if self.path else []):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot read the counter state %s: %s; counters start without history", path, exc)
                continue
            try:
                entries = _parse(data)
            except ValueError as exc:
                aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
                with contextlib.suppress(OSError):
                    path.rename(aside)
                log.warning("counter state %s is damaged (%s); set aside as %s, counters start without history",
                            path, exc, aside.name)
                continue
            for key, value, time_ms in entries:
                if meters is not None and key[0] not in meters:
                    continue
                known = self._counters.get(key)
                if known is None or time_ms > known.time_ms:
                    self._counters[key] = _Counter(value, time_ms)
                    self._dirty = self._dirty or path != self.path  # newer than its own file holds

    def save(self, force: bool = False) -> None:
        """`snapshot` and `write` in one: for a stop, or a caller off the event loop."""
        body = self.snapshot(force)
        if body is not None:
            self.write(body)

    def snapshot(self, force: bool = False) -> bytes | None:
        """The state file's new content when it is due (at most every SAVE_EVERY_S unless `force`,
        and only after a change), else None. Cheap: the event loop calls it; `write` may then run
        in a thread, since its fsync can take a while."""
        if self.path is None or not self._dirty:
            return None
        now = time.monotonic()
        if not force and now - self._saved_at < SAVE_EVERY_S:
            return None
        self._saved_at, self._dirty = now, False
        entries = [[*key, state.value, state.time_ms] for key, state in sorted(self._counters.items())]
        return json.dumps({"version": STATE_VERSION, "counters": entries}, separators=(",", ":")).encode()

    def write(self, body: bytes) -> bool:
        """Replace the file with `body` atomically (a crash leaves the old or the new file). Never
        raises: a failed write is logged once, and tried again with the next snapshot (False)."""
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        with self._writing:  # one writer at a time: writes may run in several threads
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as handle:
                    handle.write(body)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            except OSError as exc:
                self._dirty = True
                if not self._write_failed:  # once per streak of failures; tried again each minute
                    self._write_failed = True
                    log.warning("cannot write the counter state %s: %s (counters keep working; a restart would "
                                "take their first readings without history)", self.path, exc)
                return False
            if self._write_failed:
                self._write_failed = False
                log.info("counter state %s written again", self.path)
            return True


def _parse(raw: bytes) -> list[tuple[Key, float, int]]:
    """The entries of a state file; ValueError says what is wrong."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION or not isinstance(data.get("counters"), list):
        raise ValueError(f"not a version {STATE_VERSION} counter state")
    entries = []
    for i, row in enumerate(data["counters"]):
        ok = (isinstance(row, list) and len(row) == 5 and isinstance(row[0], int) and not isinstance(row[0], bool)
              and isinstance(row[1], str) and isinstance(row[2], str)
              and isinstance(row[3], (int, float)) and not isinstance(row[3], bool) and math.isfinite(row[3])
              and isinstance(row[4], int) and not isinstance(row[4], bool))
        if not ok:
            raise ValueError(f"entry {i} is not [meter id, measurement, unit, value, time ms]")
        entries.append(((row[0], row[1], row[2]), float(row[3]), row[4]))
    return entries
