"""The event loop the poller runs on (POLL_EVENT_LOOP): uvloop where it is installed, else asyncio's.

uvloop (libuv under asyncio's API) costs less per request: on the bench's reference fleet
11-15 % less CPU per reading, in one process and with worker processes (bench/README.md).
The poller behaves the same on both: the tests run it on both (the in-process tests on
asyncio's unless they say, `python -m poller` on the default). Two differences mattered, both
handled in poller/transport.py and tested on both loops: uvloop runs the timers that fell due
before it polls the sockets (after the loop was held up, a reply that came in time lost to its
timeout: a reply window's end now gives the sockets one look first, EXPIRY_GRACE_S), and its
timers may fire a millisecond early (a pause, a connect pause and a reply window are least
times: their waits check the clock). `asyncio` is the way back should uvloop ever misbehave on
some platform; `uvloop` insists on it.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

CHOICES = ("auto", "uvloop", "asyncio")

T = TypeVar("T")


def available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def chosen(choice: str) -> str:
    """The loop `choice` gives here: 'uvloop' or 'asyncio'."""
    return "uvloop" if choice == "uvloop" or (choice == "auto" and available()) else "asyncio"


def describe(choice: str) -> str:
    if chosen(choice) == "uvloop":
        import uvloop

        return f"uvloop {uvloop.__version__}"
    return "asyncio"


def _factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if chosen(choice) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None  # asyncio's default


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """asyncio.run(main) on the chosen loop."""
    with asyncio.Runner(loop_factory=_factory(choice)) as runner:
        return runner.run(main)
