"""`emm maps list | load`: the library of register maps in db/maps/.

Each file there creates or updates one device_types row, replaces its registers (and
its device_signatures rows) inside one transaction (BEGIN ... COMMIT): loading it
twice changes nothing, and a file that fails changes nothing. `load` runs the file as
`psql -v ON_ERROR_STOP=1 -f FILE` would: the whole text in one go, stopping at the
first error; the files use no psql meta-commands (a line starting with a backslash is
refused here, so one never goes to the server as SQL).

Where the library is: --maps-dir, else db/maps next to the poller package (the
repository, an editable install), else db/maps in the working directory (the compose
image's /app).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..logsafe import escape_controls
from .probe import table

__all__ = ["MapFile", "MapsError", "default_maps_dir", "find_map", "format_list", "library", "parse_map",
           "run_sql_file"]

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent  # the directory holding poller/


class MapsError(Exception):
    """The library or a map cannot be used; the message says what to do."""


@dataclass(frozen=True)
class MapFile:
    path: Path
    types: tuple[str, ...]  # the device types the file defines (one, as a rule)
    description: str  # device_types.description in the file, or the header comment's first paragraph

    @property
    def name(self) -> str:
        return self.path.stem


def default_maps_dir(cwd: Path | None = None) -> Path:
    """db/maps next to the poller package, else in the working directory (the first that exists)."""
    candidates = [_PACKAGE_ROOT / "db" / "maps", (cwd or Path.cwd()) / "db" / "maps"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise MapsError("no map library found (looked in " + ", ".join(str(c) for c in candidates)
                    + "); give its directory with --maps-dir")


def library(maps_dir: Path) -> list[MapFile]:
    if not maps_dir.is_dir():
        raise MapsError(f"{maps_dir} is not a directory (--maps-dir)")
    return [parse_map(path) for path in sorted(maps_dir.glob("*.sql"))]


def find_map(maps: Sequence[MapFile], name: str) -> MapFile:
    """A map by its file name (with or without .sql) or by the device type it defines."""
    stem = name[:-4] if name.endswith(".sql") else name
    for m in maps:
        if m.name == stem:
            return m
    by_type = [m for m in maps if name in m.types]
    if len(by_type) == 1:
        return by_type[0]
    if len(by_type) > 1:
        raise MapsError(f"device type {name!r} is defined by several files: "
                        + ", ".join(m.path.name for m in by_type) + "; name the file")
    known = ", ".join(m.name for m in maps) or "none"
    raise MapsError(f"no map {name!r} in the library (known: {known}); `emm maps list` shows them")


# --- reading a map file without running it ------------------------------------------------

_INSERT_TYPES = re.compile(r"INSERT\s+INTO\s+device_types\s*\(([^)]*)\)\s*VALUES\s*", re.IGNORECASE)


def parse_map(path: Path) -> MapFile:
    """The device types a map file defines (from its device_types INSERT) and their description."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MapsError(f"{path}: cannot be read ({exc})") from None
    types: list[str] = []
    description = ""
    for match in _INSERT_TYPES.finditer(_without_comments(text)):
        columns = [c.strip().strip('"').lower() for c in match.group(1).split(",")]
        for values in _tuples(_without_comments(text), match.end()):
            row = dict(zip(columns, values, strict=False))
            name = _string(row.get("name"))
            if name is not None:
                types.append(name)
                description = description or (_string(row.get("description")) or "")
    return MapFile(path, tuple(types), description or _header(text))


def _header(text: str) -> str:
    """The first paragraph of the file's leading comment, as one line."""
    words: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("--"):
            break
        content = stripped[2:].strip()
        if not content:
            if words:
                break
            continue
        words.append(content)
    return " ".join(words)


def _literal_end(sql: str, start: int) -> int:
    """The index of the quote that ends the string literal opening at `start` ('' inside is a
    quote), or the last index when it never ends."""
    end, n = start + 1, len(sql)
    while end < n:
        if sql[end] == "'" and (end + 1 >= n or sql[end + 1] != "'"):
            return end
        end += 2 if sql[end] == "'" else 1
    return end


def _without_comments(sql: str) -> str:
    """`--` comments blanked out (string literals kept), positions unchanged."""
    out = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch == "'":
            end = _literal_end(sql, i)
            out.append(sql[i:end + 1])
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(" " * (end - i))
            i = end
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _tuples(sql: str, start: int) -> Iterable[list[str]]:
    """The VALUES tuples from `start`: each a list of its items' SQL text (strings still quoted)."""
    i, n = start, len(sql)
    while True:
        while i < n and sql[i].isspace():
            i += 1
        if i >= n or sql[i] != "(":
            return
        items, current, depth = [], [], 0
        i += 1
        while i < n:
            ch = sql[i]
            if ch == "'":
                end = _literal_end(sql, i)
                current.append(sql[i:end + 1])
                i = end + 1
                continue
            if ch == "(":
                depth += 1
            elif ch == ")":
                if depth == 0:
                    i += 1
                    break
                depth -= 1
            elif ch == "," and depth == 0:
                items.append("".join(current).strip())
                current = []
                i += 1
                continue
            current.append(ch)
            i += 1
        items.append("".join(current).strip())
        yield items
        while i < n and sql[i].isspace():
            i += 1
        if i >= n or sql[i] != ",":
            return
        i += 1


def _string(item: str | None) -> str | None:
    """An SQL string literal's value ('it''s' -> it's); None for anything else."""
    if item is None or len(item) < 2 or item[0] != "'" or item[-1] != "'":
        return None
    return item[1:-1].replace("''", "'")


# --- the database -------------------------------------------------------------------------

Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]

LOADED_SQL = """SELECT t.name, count(r.id) FROM device_types t LEFT JOIN registers r ON r.type = t.name
                GROUP BY t.name"""
SIGNATURE_COUNT_SQL = "SELECT type, count(*) FROM device_signatures GROUP BY type"


def meta_command(text: str) -> tuple[int, str] | None:
    """The first psql meta-command line (a backslash at its start), which only psql understands."""
    for number, line in enumerate(_without_comments(text).splitlines(), 1):
        if line.lstrip().startswith("\\"):
            return number, line.strip()
    return None


def run_sql_file(connection: Any, path: Path) -> None:
    """Run a map file as `psql -v ON_ERROR_STOP=1 -f` would; MapsError saying where it failed
    (a login that may not write gets psycopg2's own error, for the caller to explain).

    The whole text goes to the server as one simple query, in autocommit mode: the file's
    own BEGIN ... COMMIT is the transaction, and the server stops at the first error.
    """
    import psycopg2

    text = path.read_text(encoding="utf-8")
    meta = meta_command(text)
    if meta is not None:
        raise MapsError(f"{path.name} line {meta[0]}: {meta[1][:40]!r} is a psql meta-command; load this file "
                        "with psql -v ON_ERROR_STOP=1 -f")
    connection.autocommit = True
    try:
        with connection.cursor() as cur:
            cur.execute(text)  # no parameters: the text goes as it is ('%' included)
    except (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.ReadOnlySqlTransaction):
        raise  # the login's business, not the file's: the caller says which login to use
    except psycopg2.Error as exc:
        diag = getattr(exc, "diag", None)
        primary = (diag.message_primary if diag is not None else None) or str(exc).splitlines()[0]
        where = ""
        position = diag.statement_position if diag is not None else None
        if position and str(position).isdigit():
            where = f" at line {text.count(chr(10), 0, int(position) - 1) + 1}"
        raise MapsError(f"{path.name}{where}: {primary}; the file's transaction was rolled back") from None


def loaded(query: Query) -> tuple[dict[str, int], dict[str, int]]:
    """Registers per device type in the database, and signature rows per type (empty when the
    database has no device_signatures table yet)."""
    import psycopg2

    registers = {str(name): int(n) for name, n in query(LOADED_SQL, ())}
    try:
        signatures = {str(name): int(n) for name, n in query(SIGNATURE_COUNT_SQL, ())}
    except psycopg2.errors.UndefinedTable:
        signatures = {}
    return registers, signatures


def format_list(maps: Sequence[MapFile], registers: Mapping[str, int] | None,
                signatures: Mapping[str, int] | None) -> str:
    """The library as a table; LOADED says whether each type is in the database (? when unknown)."""
    lines = []
    for m in maps:
        for name in m.types or ("?",):
            if registers is None:
                state = "?"
            elif name not in registers:
                state = "no"
            else:
                sigs = (signatures or {}).get(name, 0)
                state = f"yes: {registers[name]} registers" + (f", {sigs} signature rows" if sigs else "")
            lines.append((m.path.name, name, state, escape_controls(m.description)))
    return table(("FILE", "DEVICE TYPE", "LOADED", "DESCRIPTION"), lines)
