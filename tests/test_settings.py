"""Settings from the environment (README "Settings reference"), and every way a bad
setting or an unusable dependency at start makes `python -m poller` exit 2 with a
message naming what to fix."""

from __future__ import annotations

import fcntl
import gc
import os
import platform
import re
import subprocess
import sys

import pytest

from poller import loop as event_loop
from poller.settings import Settings, SettingsError, from_env, load_env_file
from tests.servers import free_port
from tests.test_end_to_end import run_poller

# README "Settings reference", written out: what an empty environment gives.
DEFAULTS = {
    "postgres_host": "localhost", "postgres_port": 5432, "postgres_db": "energy", "postgres_user": "postgres",
    "postgres_password": "", "influxdb_url": "http://localhost:8086", "influxdb_token": "", "influxdb_org": "",
    "influxdb_bucket": "energy", "poll_cron": "* * * * * */10", "max_parallel_endpoints": 256, "workers": 0,
    "http_host": "127.0.0.1", "http_port": 9108, "health_stale_s": 0.0, "spool_dir": "spool",
    "spool_max_mb": 512, "spool_retry_max_s": 60, "coordination": "none", "lease_s": 10.0, "event_loop": "auto",
}
# variable -> Settings field, for the plain text settings
TEXT = {
    "POSTGRES_HOST": "postgres_host", "POSTGRES_DB": "postgres_db", "POSTGRES_USER": "postgres_user",
    "INFLUXDB_ORG": "influxdb_org", "INFLUXDB_BUCKET": "influxdb_bucket", "POLL_HTTP_HOST": "http_host",
    "POLL_SPOOL_DIR": "spool_dir",
}
# variable -> (Settings field, lowest, highest accepted)
WHOLE_NUMBERS = {
    "POSTGRES_PORT": ("postgres_port", 1, 65535),
    "POLL_MAX_PARALLEL": ("max_parallel_endpoints", 1, 10000),
    "POLL_WORKERS": ("workers", 0, 64),
    "POLL_HTTP_PORT": ("http_port", 0, 65535),
    "POLL_HEALTH_STALE_S": ("health_stale_s", 0, 7 * 86400),
    "POLL_SPOOL_MAX_MB": ("spool_max_mb", 1, 1_000_000),
    "POLL_SPOOL_RETRY_MAX_S": ("spool_retry_max_s", 1, 3600),
    "POLL_LEASE_S": ("lease_s", 2, 3600),
}
EVERY_VARIABLE = [*TEXT, *WHOLE_NUMBERS, "POSTGRES_PASSWORD", "INFLUXDB_URL", "INFLUXDB_TOKEN", "POLL_CRON",
                  "POLL_COORDINATION", "POLL_EVENT_LOOP"]


def fields(settings: Settings) -> dict[str, object]:
    return {name: getattr(settings, name) for name in DEFAULTS}


def test_an_empty_environment_gives_the_documented_defaults():
    assert fields(from_env({})) == DEFAULTS


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_a_blank_variable_means_its_default(blank):
    settings = from_env({name: blank for name in EVERY_VARIABLE if name not in ("POSTGRES_PASSWORD", "INFLUXDB_TOKEN")})
    assert fields(settings) == DEFAULTS


def test_every_variable_is_read_and_trimmed():
    env = {name: f"  {name.lower()}-value " for name in TEXT}
    env |= {"POSTGRES_PORT": " 6543 ", "POLL_MAX_PARALLEL": "16", "POLL_HTTP_PORT": "0", "POLL_HEALTH_STALE_S": "90",
            "POLL_SPOOL_MAX_MB": "64", "POLL_SPOOL_RETRY_MAX_S": "5", "INFLUXDB_URL": " https://influx.example:8086/ ",
            "POLL_CRON": " */5 * * * * ", "POSTGRES_PASSWORD": " pass word ", "INFLUXDB_TOKEN": " tok en "}
    settings = from_env(env)
    assert {f: getattr(settings, f) for f in TEXT.values()} == {f: f"{n.lower()}-value" for n, f in TEXT.items()}
    assert (settings.postgres_port, settings.max_parallel_endpoints, settings.http_port, settings.health_stale_s,
            settings.spool_max_mb, settings.spool_retry_max_s) == (6543, 16, 0, 90.0, 64, 5)
    assert settings.influxdb_url == "https://influx.example:8086"  # the trailing / goes, the client adds its path
    assert settings.poll_cron == "*/5 * * * *"
    # secrets are taken as given: a space can be part of a password
    assert settings.postgres_password == " pass word " and settings.influxdb_token == " tok en "


def test_secrets_never_appear_in_the_settings_printed():
    settings = from_env({"POSTGRES_PASSWORD": "pg-secret", "INFLUXDB_TOKEN": "influx-secret"})
    assert "secret" not in repr(settings) and "secret" not in str(settings)
    assert settings.postgres_dsn()["password"] == "pg-secret"


@pytest.mark.parametrize("name", sorted(WHOLE_NUMBERS))
@pytest.mark.parametrize("raw", ["abc", "1.5", "0x10", "1e3", "5 000"])
def test_a_whole_number_that_is_not_one_is_named(name, raw):
    with pytest.raises(SettingsError, match=rf"^{name}={re.escape(repr(raw))} is not a whole number$"):
        from_env({name: raw})


@pytest.mark.parametrize("name", sorted(WHOLE_NUMBERS))
def test_a_whole_number_outside_its_range_is_named_with_the_range(name):
    field, low, high = WHOLE_NUMBERS[name]
    for accepted in (low, high):
        assert getattr(from_env({name: str(accepted)}), field) == accepted
    for refused in (low - 1, high + 1):
        with pytest.raises(SettingsError, match=rf"^{name}={refused} outside {low}\.\.{high}$"):
            from_env({name: str(refused)})


@pytest.mark.parametrize("url", ["localhost:8086", "ftp://influx.example", "influx.example", "HTTP//x"])
def test_an_influxdb_url_without_http_is_named(url):
    with pytest.raises(SettingsError, match=rf"^INFLUXDB_URL={re.escape(repr(url))} must start with http:// or "
                                            r"https://$"):
        from_env({"INFLUXDB_URL": url})


@pytest.mark.parametrize(("url", "why"), [("http://influxdb:80x", "Port could not be cast"),
                                          ("https://influxdb:99999", "Port out of range"),
                                          ("http://", "names no host"), ("https://:8086/influx", "names no host")])
def test_an_influxdb_url_with_a_bad_port_or_no_host_is_named(url, why):
    """Said at the start as a setting, not a traceback from the sink (nor an outage for ever)."""
    with pytest.raises(SettingsError, match=rf"^INFLUXDB_URL={re.escape(repr(url))} .*{why}"):
        from_env({"INFLUXDB_URL": url})


@pytest.mark.parametrize("url", ["http://[::1]:8086/influx", "https://[2001:db8::1]", "http://influxdb"])
def test_an_influxdb_url_with_a_host_and_a_port_or_none_is_taken(url):
    assert from_env({"INFLUXDB_URL": url}).influxdb_url == url


@pytest.mark.parametrize("cron", ["every minute", "* * *", "61 * * * *", "* * * * * * * *"])
def test_a_malformed_poll_cron_is_named(cron):
    with pytest.raises(SettingsError, match=rf"^POLL_CRON {re.escape(repr(cron))} "):
        from_env({"POLL_CRON": cron})


def test_the_process_environment_is_read_by_default(monkeypatch):
    monkeypatch.setenv("POSTGRES_HOST", "db.example")
    monkeypatch.setenv("POLL_SPOOL_MAX_MB", "7")
    settings = from_env()
    assert (settings.postgres_host, settings.spool_max_mb) == ("db.example", 7)


def test_the_connection_carries_the_settings_a_timeout_and_a_name():
    settings = from_env({"POSTGRES_HOST": "db.example", "POSTGRES_PORT": "6543", "POSTGRES_DB": "meters",
                         "POSTGRES_USER": "reader", "POSTGRES_PASSWORD": "pw"})
    # psycopg2.connect(**dsn): a dead server fails within 10 s instead of hanging, and an admin
    # sees who is connected in pg_stat_activity
    assert settings.postgres_dsn() == {"host": "db.example", "port": 6543, "dbname": "meters", "user": "reader",
                                       "password": "pw", "connect_timeout": 10, "application_name": "emm-poller"}


def test_the_env_file_is_loaded_when_present_and_the_environment_wins(monkeypatch, tmp_path):
    env_file = tmp_path / ".dev.env"
    env_file.write_text("POSTGRES_DB=from_file\nPOSTGRES_USER=from_file\n")
    monkeypatch.delenv("POSTGRES_DB", raising=False)
    monkeypatch.setenv("POSTGRES_USER", "from_environment")
    assert load_env_file(tmp_path / "missing.env") is False
    assert "POSTGRES_DB" not in os.environ
    assert load_env_file(env_file) is True
    assert os.environ["POSTGRES_DB"] == "from_file"
    assert os.environ["POSTGRES_USER"] == "from_environment"


# --------------------------------------------------------------------------- exit 2, real processes


@pytest.fixture
def poller_process():
    """`python -m poller ...` as an operator starts it (no .dev.env), with no PostgreSQL
    listening where the settings point unless a test says otherwise."""
    nobody = free_port()  # bound and released: nothing listens there

    def run(args, **env):
        base = {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(nobody), "POSTGRES_DB": "energy",
                "POSTGRES_USER": "u", "POSTGRES_PASSWORD": "p", "INFLUXDB_URL": "http://127.0.0.1:9"}
        return run_poller(args, {**base, **env}, timeout=60)
    return run


@pytest.mark.parametrize("mode", [["--once"], ["--check"], [], ["--once", "--dry-run"]],
                         ids=["once", "check", "service", "dry-run"])
@pytest.mark.parametrize(("variable", "value"), [("POSTGRES_PORT", "five"), ("POLL_CRON", "every minute"),
                                                 ("INFLUXDB_URL", "localhost:8086")])
def test_a_bad_setting_exits_2_naming_it(poller_process, mode, variable, value):
    done = poller_process(mode, **{variable: value})
    assert done.returncode == 2, done.stderr
    assert f"setting: {variable}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("mode", [["--once"], ["--check"]], ids=["once", "check"])
def test_postgres_unreachable_exits_2_for_a_one_shot_run(poller_process, mode):
    # the service waits for PostgreSQL instead (test_resilience); a one-shot run cannot
    done = poller_process(mode)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "127.0.0.1" in done.stderr  # says where it tried


def test_a_spool_directory_that_cannot_be_made_exits_2(postgres, database, poller_process, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    done = poller_process([], **postgres.env(database), POLL_SPOOL_DIR=str(not_a_dir / "spool"), POLL_HTTP_PORT="0")
    assert done.returncode == 2, done.stderr
    assert f"POLL_SPOOL_DIR={not_a_dir / 'spool'} cannot be created or opened" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_spool_directory_in_use_by_another_poller_exits_2(postgres, database, poller_process, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    fd = os.open(spool, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running poller holds it
        done = poller_process([], **postgres.env(database), POLL_SPOOL_DIR=str(spool), POLL_HTTP_PORT="0")
    finally:
        os.close(fd)
    assert done.returncode == 2, done.stderr
    assert f"POLL_SPOOL_DIR={spool} is in use by another poller process" in done.stderr
    assert "Traceback" not in done.stderr



@pytest.mark.parametrize("raw, expected", [("postgres", "postgres"), (" Postgres ", "postgres"), ("none", "none")])
def test_coordination_is_none_or_postgres(raw, expected):
    assert from_env({"POLL_COORDINATION": raw}).coordination == expected


@pytest.mark.parametrize("raw", ["postgresql", "redis", "on", "1"])
def test_an_unknown_coordination_is_refused_naming_the_choices(raw):
    with pytest.raises(SettingsError, match=r"POLL_COORDINATION=.*'none'.*'postgres'"):
        from_env({"POLL_COORDINATION": raw})


@pytest.mark.parametrize("raw, expected", [("auto", "auto"), (" uvloop ", "uvloop"), ("AsyncIO", "asyncio")])
def test_the_event_loop_is_auto_uvloop_or_asyncio(raw, expected):
    assert from_env({"POLL_EVENT_LOOP": raw}).event_loop == expected


@pytest.mark.parametrize("choice", ["auto", "asyncio"])
def test_the_poller_runs_with_a_larger_young_generation_and_gives_it_back(choice):
    """poller/loop.py: the service and its workers collect young objects every GC_YOUNG allocations."""
    before = gc.get_threshold()

    async def inside() -> tuple[int, ...]:
        return gc.get_threshold()

    assert event_loop.run(inside(), choice) == (event_loop.GC_YOUNG, *before[1:]) != before
    assert gc.get_threshold() == before


# A process that makes a batch's body 40 times as the outbox's sender does (its lines joined, then
# encoded: two blocks of 780 KB): the page faults it took, after one round to warm up. In its own
# interpreter: the setting is for the process's life.
_BLOCKS = """
import resource, sys
from poller import loop
took = loop.keep_freed_blocks() if sys.argv[1] == "keep" else None
lines = ["energy,meter=%d,host=10.0.0.1:502,slave_address=1,type=float32,unit=V value=230.5 1700000000000" % i
         for i in range(5000)] * 2
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
body = "\\n".join(lines).encode()
del body
before = faults()
for _ in range(40):
    body = "\\n".join(lines).encode()
    del body
print(took, faults() - before)
"""


def blocks_faults(how: str, **env: str) -> tuple[str, int]:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's malloc only")
    mine = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", _BLOCKS, how], capture_output=True, text=True, timeout=60,
                          env={**mine, **env})
    assert done.returncode == 0, done.stderr
    took, faults = done.stdout.split()
    return took, int(faults)


def test_a_big_block_freed_is_kept_for_the_next_not_faulted_in_again():
    """poller/loop.py: the poller's processes keep the big blocks they free. Without it each body is
    fresh pages from the kernel (about 200 page faults each time); with it, the same blocks again."""
    took, faults = blocks_faults("keep")
    assert took == "True" and faults < 40, faults
    took, faults = blocks_faults("leave")
    assert took == "None" and faults > 40 * 100, faults


@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_glibcs_own_malloc_setting_is_left_as_the_operator_set_it(env):
    took, faults = blocks_faults("keep", **env)
    assert took == "False" and faults > 40 * 100, faults  # glibc's: an explicit setting keeps 128 KB for mmap


@pytest.mark.parametrize("raw", ["uv", "trio", "1"])
def test_an_unknown_event_loop_is_refused_naming_the_choices(raw):
    with pytest.raises(SettingsError, match=r"POLL_EVENT_LOOP=.* must be one of auto, uvloop, asyncio"):
        from_env({"POLL_EVENT_LOOP": raw})


def test_uvloop_asked_for_where_it_is_not_installed_is_refused_and_auto_falls_back(monkeypatch):
    from poller import loop

    monkeypatch.setattr(loop, "available", lambda: False)
    with pytest.raises(SettingsError, match=r"POLL_EVENT_LOOP=uvloop, but uvloop is not installed"):
        from_env({"POLL_EVENT_LOOP": "uvloop"})
    assert loop.chosen(from_env({}).event_loop) == "asyncio" and loop.describe("auto") == "asyncio"
