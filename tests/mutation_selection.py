"""pytest plugin for scripts/mutation: keep only the fast, server-free tests.

Mutation testing runs the tests once per mutant, so it uses the tests that need no
server and start no process: those of the modules in FAST_MODULES (the files of the pure
core's tests; a file not there yet is simply absent), less any test using a fixture that
starts something (SERVER_FIXTURES: PostgreSQL, VictoriaMetrics, InfluxDB, the simulator or
the poller as a process), directly or through another fixture. Loaded only by
`pytest -p tests.mutation_selection` (pyproject.toml, [tool.mutmut]); the normal run never
loads it.

Hypothesis runs derandomized here (the examples of a test are the same in every run): every
mutant meets the same examples as the unmutated copy, so a score does not depend on luck, and a
new example found at random cannot fail the clean run that mutmut needs first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

FAST_MODULES = frozenset({
    "test_decode.py", "test_plan.py", "test_sink.py", "test_schedule.py", "test_store.py", "test_settings.py",
    "test_devices.py", "test_register_maps.py", "test_cycle.py", "test_counters.py",
})
SERVER_FIXTURES = frozenset({
    "postgres", "database", "victoria", "influx", "hung_port", "simulator", "fleet", "line_protocol",
    "image_context", "poller_process",
})


def pytest_configure(config: pytest.Config) -> None:
    from hypothesis import settings

    settings.register_profile("mutation", derandomize=True, database=None)
    settings.load_profile("mutation")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Other test files are not even imported: a module being rewritten elsewhere cannot stop the run."""
    name = collection_path.name
    if collection_path.suffix == ".py" and name.startswith("test_") and name not in FAST_MODULES:
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        fast = Path(str(item.path)).name in FAST_MODULES
        needs = SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        (keep if fast and not needs else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
