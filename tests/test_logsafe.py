"""poller/logsafe.py: no value in a log message can forge a log line (issue 9 item 17)."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poller.logsafe import escape_controls, setup_logging
from tests.servers import ROOT, free_port, project_env

RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")
FORGED = "\n2025-01-01 00:00:00,000 ERROR poller: forged\r\x1b[2K"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    setup_logging(logging.DEBUG, stream)
    yield stream
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def records(text: str) -> list[str]:
    return [line for line in text.splitlines() if RECORD.match(line)]


def test_a_message_with_a_newline_stays_one_line(captured: io.StringIO) -> None:
    logging.getLogger("poller.cycle").warning("meter 3 (%s:502) failed: %s", "gw" + FORGED, "no reply")
    text = captured.getvalue()
    assert text.count("\n") == 1 and len(records(text)) == 1, text
    assert "gw\\n2025-01-01 00:00:00,000 ERROR poller: forged\\r\\x1b[2K:502) failed: no reply" in text
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING poller.cycle: meter 3", text)


@given(st.text(st.characters(blacklist_categories=("Cs",))))
def test_any_text_is_one_line(text: str) -> None:
    escaped = escape_controls(text)
    assert len(escaped.splitlines()) <= 1 and not any(c < " " or "\x7f" <= c < "\xa0" for c in escaped)
    if not any(c < " " or "\x7f" <= c < "\xa0" or c in "\u2028\u2029" for c in text):
        assert escaped == text  # what needs no escape is left as it is (backslashes too)


def test_tracebacks_stay_multi_line_with_their_messages_escaped(captured: io.StringIO) -> None:
    log = logging.getLogger("poller")
    try:
        try:
            raise KeyError("first" + FORGED)
        except KeyError as exc:
            raise ValueError("host 'gw" + FORGED + "' does not encode") from exc
    except ValueError:
        log.exception("cycle failed for %s", "meter" + FORGED)
    try:
        raise ExceptionGroup("group" + FORGED, [OSError("member" + FORGED)])
    except ExceptionGroup:
        log.exception("group")
    text = captured.getvalue()
    assert len(records(text)) == 2, text
    assert len(re.findall(r"^Traceback \(most recent call last\):$", text, re.M)) == 2, text  # the chain, kept
    assert "The above exception was the direct cause of the following exception:" in text
    assert "  File " in text and len(text.splitlines()) > 8
    for message in ("KeyError: 'first\\n2025", "ValueError: host 'gw\\n2025", "group\\n2025", "member\\n2025"):
        assert message in text, text
    assert "forged\r" not in text and "\x1b" not in text


def test_the_simulators_log_is_one_line_per_record(tmp_path: Path) -> None:
    """python -m virtual_server: a newline in a setting its log quotes (here the database host,
    in psycopg2's 'could not translate host name' warning) forges nothing."""
    log_path = tmp_path / "sim.log"
    env = project_env({"POSTGRES_HOST": "bad.invalid" + FORGED, "POSTGRES_PORT": "5432"})
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "virtual_server", "--env-file", "/nonexistent",
                                 "--port", str(free_port())], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while "trying again" not in log_path.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log_path.read_text()
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(15)
    text = log_path.read_text()
    assert "trying again" in text, text
    lines = text.splitlines()
    assert lines and all(RECORD.match(line) for line in lines), text
    assert "bad.invalid\\n2025" in text and "Traceback" not in text
    assert os.linesep == "\n"
