"""db/upgrade.sql brings a database made by any earlier db/init.sql to today's schema.

tests/schemas/ holds every earlier init.sql that shipped (named by the commit that last
changed it). Upgraded, each must dump (pg_dump --schema-only) exactly as a database made
by today's init.sql; running the upgrade again changes nothing; the rows survive and mean
what they meant (a meter of the first release is Modbus TCP).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.servers import ROOT, find_pg_bin

EARLIER = sorted((ROOT / "tests" / "schemas").glob("init-*.sql"))


def schema(postgres, dbname: str) -> str:
    env = {**os.environ, "PGPASSWORD": postgres.password}
    out = subprocess.run([str(find_pg_bin() / "pg_dump"), "--schema-only", "--no-owner", "-h", "127.0.0.1",
                          "-p", str(postgres.port), "-U", postgres.user, dbname],
                         env=env, capture_output=True, text=True, check=True, timeout=60)
    # comments, and the random key of pg_dump's \restrict guard, differ from dump to dump
    return "\n".join(ln for ln in out.stdout.splitlines() if not ln.startswith(("--", "\\restrict", "\\unrestrict")))


@pytest.fixture
def fresh(postgres, database) -> str:
    """Today's schema, dumped."""
    return schema(postgres, database)


def test_there_is_an_earlier_schema_to_upgrade():
    assert len(EARLIER) >= 2, EARLIER


@pytest.mark.parametrize("earlier", EARLIER, ids=lambda p: p.stem)
def test_an_earlier_database_upgraded_is_todays_and_keeps_its_rows(postgres, fresh, earlier: Path):
    name = f"emm_upgrade_{os.getpid()}_{earlier.stem.replace('-', '_')}"
    postgres.create_database(name, init=False)
    try:
        postgres.psql(name, "-f", str(earlier))
        postgres.psql(name, "-c", "INSERT INTO energy_meters (host, port, slave_address, type) "
                                  "VALUES ('192.0.2.10', 502, 3, 'virtual_meter')")
        for _ in range(2):  # idempotent
            done = postgres.psql(name, "-f", str(ROOT / "db" / "upgrade.sql"), check=False)
            assert done.returncode == 0, done.stderr
        assert schema(postgres, name) == fresh
        rows = postgres.psql(name, "-At", "-c", "SELECT host, port, transport, baudrate, parity, stopbits, bytesize "
                                               "FROM energy_meters ORDER BY id").stdout.split()
        assert rows == ["virtual_modbustcp_server|502|tcp|9600|N|1|8", "192.0.2.10|502|tcp|9600|N|1|8"]
        config = postgres.configuration(name)
        assert not config.problems and [str(m.bus) for m in config.meters] == ["virtual_modbustcp_server:502",
                                                                               "192.0.2.10:502"]
    finally:
        postgres.drop_database(name)


def test_upgrading_todays_database_changes_nothing(postgres, database, fresh):
    done = postgres.psql(database, "-f", str(ROOT / "db" / "upgrade.sql"), check=False)
    assert done.returncode == 0, done.stderr
    assert schema(postgres, database) == fresh
