"""Shared fixtures: real PostgreSQL, real VictoriaMetrics, a fresh database per test."""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator

import pytest

from tests.servers import Postgres, VictoriaMetrics, postgres_cluster

_db_names = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with postgres_cluster() as pg:
        yield pg


@pytest.fixture
def database(postgres: Postgres) -> Iterator[str]:
    """A fresh database loaded from db/init.sql, dropped afterwards."""
    name = f"emm_test_{os.getpid()}_{next(_db_names)}"
    postgres.create_database(name)
    try:
        yield name
    finally:
        postgres.drop_database(name)


@pytest.fixture
def victoria() -> Iterator[VictoriaMetrics]:
    """A VictoriaMetrics of the test's own, so its export holds only this test's points."""
    vm = VictoriaMetrics()
    vm.start()
    try:
        yield vm
    finally:
        vm.close()


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock.getsockname()[1]
    sock.close()
