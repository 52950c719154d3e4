"""What the bench reads of its processes: CPU time and memory from /proc, and its progress lines.

Shared by bench.run (the poller), bench.nodered (the Node-RED peer) and bench.failover.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def proc_cpu_s(pid: int, children: bool = True) -> float:
    """utime + stime of the process and (children) of its live children: the poller's worker
    processes (POLL_WORKERS); cutime/cstime would count only the children already reaped."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    if not children:
        return own
    for child in proc_children(pid):
        try:
            own += proc_cpu_s(child, children=False)
        except OSError:  # it just exited
            pass
    return own


def proc_children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            pass
    return kids


def proc_mem_kb(pid: int) -> tuple[int, int]:
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm
