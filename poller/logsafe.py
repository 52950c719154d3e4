"""Log lines that no value from a row, a reply or a request can forge.

A meter's host or description, a device's reply or an HTTP request line ends up in
log messages. A newline in one of them would start what looks like a new log
record (`...\\n2025-01-01 12:00:00,000 ERROR poller: forged`); an escape sequence
would drive the terminal. The formatter here writes every control character of a
record's line as a visible escape, `\\n` for a newline, `\\x1b` for ESC, so one
record is one line; a traceback stays multi-line (its frames come from the source
files), but the exception's own message, which may quote a row, is escaped too.

Both mains call `setup_logging(level)`.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Iterator
from types import TracebackType

# What counts as a control character, for the logs and for line protocol (poller/sink.py):
# Unicode category Cc (C0, DEL, C1, among them NEL U+0085) and the line and paragraph
# separators U+2028/U+2029, which Python's str.splitlines() and JavaScript treat as line breaks.
CONTROL_CHARACTERS = frozenset([*map(chr, range(0x00, 0x20)), *map(chr, range(0x7F, 0xA0)), "\u2028", "\u2029"])

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES = str.maketrans({c: _NAMED.get(c, f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                          for c in CONTROL_CHARACTERS})

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape: 'a\\nb' -> 'a\\\\nb' (one line).

    Backslashes are left alone (a Windows path stays readable), so the escape is for
    reading, not for parsing back.
    """
    return text.translate(_ESCAPES)


class SafeFormatter(logging.Formatter):
    """logging.Formatter whose records are one line each, bar a traceback's frames."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: tuple[type[BaseException], BaseException, TracebackType | None]  # noqa: N802
                        | tuple[None, None, None]) -> str:
        if ei[1] is None:
            return super().formatException(ei)
        te = traceback.TracebackException(type(ei[1]), ei[1], ei[2])
        for part in _chain(te):
            _escape_message(part)
        return "".join(te.format()).rstrip("\n")

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return stack_info  # frames and source lines of our own files


def _chain(te: traceback.TracebackException) -> Iterator[traceback.TracebackException]:
    """Every exception shown in a traceback: causes, contexts and the members of groups."""
    todo, seen = [te], set()
    while todo:
        part = todo.pop()
        if id(part) in seen:
            continue
        seen.add(id(part))
        yield part
        todo += [p for p in (part.__cause__, part.__context__) if p is not None]
        todo += getattr(part, "exceptions", None) or []


def _escape_message(te: traceback.TracebackException) -> None:
    # The message is kept in the private `_str` (CPython 3.11-3.13, 3.14); tests/test_logsafe.py
    # fails when a Python version stores it elsewhere.
    message = getattr(te, "_str", None)
    if isinstance(message, str):
        setattr(te, "_str", escape_controls(message))  # noqa: B010 (a private attribute, on purpose)
    notes = getattr(te, "__notes__", None)
    if isinstance(notes, list):
        te.__notes__ = [escape_controls(str(n)) for n in notes]


def setup_logging(level: int | str = logging.INFO, stream: object = None) -> None:
    """Log to stderr (or `stream`), one line per record, times in UTC.

    Replaces the root logger's handlers, so calling it again (tests) changes the level
    and the stream rather than adding a second handler.
    """
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    formatter = SafeFormatter(FORMAT)
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
