"""Read py-spy's raw (collapsed) stacks: top functions and where the CPU went.

A raw line is `frame;frame;...;frame COUNT`, root first, each frame
`function (path:line)`. Self time is the leaf's; total time counts a function
once per stack it appears in.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")

# (component, path fragment), first match from the leaf up wins; stdlib frames
# are skipped so that http.client under the sink counts as the write, and
# asyncio's transport under pymodbus as pymodbus.
COMPONENTS = [
    ("pymodbus (requests, framing)", "pymodbus/"),
    ("config load (psycopg2, store)", "psycopg2/"),
    ("config load (psycopg2, store)", "poller/store.py"),
    ("config load (psycopg2, store)", "poller/config.py"),
    ("decode", "poller/decode.py"),
    ("line protocol and the InfluxDB write", "poller/sink.py"),
    ("planning", "poller/plan.py"),
    ("poller cycle/modbus glue", "poller/cycle.py"),
    ("poller cycle/modbus glue", "poller/modbus.py"),
    ("poller schedule/main", "poller/schedule.py"),
    ("poller schedule/main", "croniter/"),
]
_STDLIB = re.compile(r"(^|/)lib/python3\.\d+/(?!site-packages)|^<frozen|^\.\./")


def short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/lib/python3.12/", "/lib/python3.13/"):
        if marker in path:
            return path.split(marker, 1)[1]
    for marker in ("/poller/", "/bench/", "/virtual_server/"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return path


def parse(text: str) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw or " " not in raw:
            continue
        body, _, count = raw.rpartition(" ")
        if not count.isdigit():
            continue
        frames = []
        for part in body.split(";"):
            m = _FRAME.match(part)
            if m:
                frames.append((m["func"], short(m["file"])))
        if frames:
            stacks.append((frames, int(count)))
    return stacks


def component(frames: list[tuple[str, str]]) -> str:
    for _, path in reversed(frames):
        for name, fragment in COMPONENTS:
            if fragment in path:
                return name
        if not _STDLIB.search(path) and not path.startswith(("asyncio/", "threading", "concurrent/",
                                                             "selectors", "socket", "ssl", "gzip", "zlib",
                                                             "http/", "json/", "logging/")):
            if path.startswith("poller/"):
                return "event loop (asyncio) and other"
            return f"other ({path.split('/')[0]})"
    return "event loop (asyncio) and other"


def summarise(path: Path, top: int = 15) -> dict[str, object]:
    stacks = parse(path.read_text(errors="replace"))
    total = sum(c for _, c in stacks) or 1
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    comps: Counter[str] = Counter()
    for frames, count in stacks:
        func, file = frames[-1]
        self_t[f"{func} ({file})"] += count
        for key in {f"{fn} ({fl})" for fn, fl in frames}:
            incl[key] += count
        comps[component(frames)] += count

    def pct(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, 100.0 * v / total) for k, v in counter.most_common(top)]

    return {"samples": total, "self": pct(self_t), "total": pct(incl), "components": pct(comps)}


def render(summary: dict[str, object], title: str) -> str:
    lines = [f"### {title} ({summary['samples']} samples)", "", "| component | % of CPU samples |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in summary["components"]]  # type: ignore[attr-defined]
    lines += ["", "| top functions, self | % |", "|---|---:|"]
    lines += [f"| `{k}` | {v:.1f} |" for k, v in summary["self"]]  # type: ignore[attr-defined]
    return "\n".join(lines)
