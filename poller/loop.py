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

While it runs, the garbage collector looks at young objects every GC_YOUNG allocations instead of
CPython's 700. A cycle makes and drops tens of thousands of small containers (requests, replies,
decoded values); at 700 the collector kept walking the ones still in flight, promoted them, and
every few cycles walked the whole heap (the configuration, the caches: 50 ms at 100 gateways, more
the bigger the fleet). Side by side at 1000 gateways: 4.51 vs 4.87 us per reading, the cycle's p95
1.85 vs 2.62 s; at 100 gateways the same CPU, p95 0.158 vs 0.181 s (bench/README.md). Objects
without cycles are freed by their reference counts as before; cyclic garbage waits at most
GC_YOUNG allocations longer (a few MB at most).

The poller's processes keep the big blocks they free for the next ones (`keep_freed_blocks`).
Each cycle they make and drop blocks of hundreds of KB: a worker's message of lines, its copy as
the main process receives it, a batch's body for InfluxDB. glibc's malloc gives a block of 128 KB
or more its own pages from the kernel and hands them back when it is freed; it raises that limit
after such a free, but gives the top of its heap back beyond twice it, and a batch's body is two
such blocks at once (the joined text, then its bytes). So each was first touched page by page:
270 page faults for a 5,000-line batch's `"\n".join(...).encode()`, 0.76 ms where the copying
itself takes 0.07 ms (bench/README.md). Blocks up to MMAP_MAX now come from the heap, and each of
malloc's arenas (the main thread's, one a busy thread) keeps up to TRIM_MAX free before it gives
memory back: after a burst (a backlog sent after an outage) a process may hold a few such
TRIM_MAX more than before, never more. Left as they are: an operator's own setting of glibc's
(MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, or glibc.malloc in GLIBC_TUNABLES, in the
process's environment: glibc reads them before the env file is), and C libraries other than
glibc (musl) or a 32-bit glibc, which refuse these sizes.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import importlib.util
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

CHOICES = ("auto", "uvloop", "asyncio")
GC_YOUNG = 50_000  # allocations between two collections of the young generation (CPython: 700)
MMAP_MAX = 4 << 20  # blocks up to this size come from the heap (glibc: from 128 KB their own pages)
TRIM_MAX = 8 << 20  # free memory at the top of an arena's heap kept before it goes back to the kernel
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (glibc's malloc.h)

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
    """asyncio.run(main) on the chosen loop, the young generation collected every GC_YOUNG allocations."""
    thresholds = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, *thresholds[1:])
    try:
        with asyncio.Runner(loop_factory=_factory(choice)) as runner:
            return runner.run(main)
    finally:
        gc.set_threshold(*thresholds)


def keep_freed_blocks() -> bool:
    """In this process, big blocks freed stay for the next ones (the module's docstring). True when
    glibc's malloc took the setting; False where it is not glibc's, or the operator set glibc's own."""
    if (os.environ.keys() & {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}
            or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_MAX))
