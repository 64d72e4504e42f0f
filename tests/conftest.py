"""Shared fixtures: a real Azurite and a real Postgres database for integration tests.

Postgres: the server POSTGRES_HOST/PORT/USER/PASSWORD name (default 127.0.0.1:5432, user postgres)
when it lets us in; otherwise the project's own, started for this run in .stack/pg-test-<pid> and
stopped and deleted at its end. Every test reaches the server through the ``postgres_database``
fixture, so all of them use the one chosen here.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.azurite import AzuriteProcess, start_azurite
from devstack.postgres import PostgresDatabase, PostgresServer, drop_database, ensure_database, usable_server

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STACK_DIR = PROJECT_ROOT / ".stack"


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteProcess]:
    """A private Azurite on free ports for the whole test session, persisting to a temp folder:
    in-memory Azurite pauses for seconds in its periodic queue GC after thousands of messages
    (see bench/README.md), which would make timing-sensitive tests flaky."""
    location = tmp_path_factory.mktemp("azurite")
    handle = start_azurite(location=location / "data", in_memory=False, log_file=location / "azurite.log")
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def azurite_connection_string(azurite: AzuriteProcess) -> str:
    return azurite.connection_string


@pytest.fixture(scope="session")
def postgres_server(pytestconfig: pytest.Config) -> Iterator[PostgresServer]:
    """The machine's Postgres when it lets us in, else the project's own for this run (see the module doc)."""
    plugins = pytestconfig.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")

    def announce(line: str) -> None:  # on the terminal, past pytest's output capture
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"\n{line}")

    with usable_server(os.environ, STACK_DIR, "pg-test", say=announce) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_database(postgres_server: PostgresServer) -> Iterator[PostgresDatabase]:
    """A fresh, empty database for this test session on the chosen server; dropped afterwards."""
    database = PostgresDatabase(postgres_server, f"geoetl_test_{os.getpid()}_{secrets.token_hex(3)}")
    ensure_database(postgres_server, database.name)
    try:
        yield database
    finally:
        drop_database(postgres_server, database.name)
